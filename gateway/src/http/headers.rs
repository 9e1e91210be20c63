//! What requests and responses say in their headers: media types, the base URL clients
//! reached us at (for absolute `Location`s), and the ICE servers' `Link`s.

use axum::http::header::{self, HeaderMap};

use crate::config::IceServer;
use crate::http::ApiError;

/// SDP offers and answers (RFC 9725 §4.2).
pub const SDP: &str = "application/sdp";
/// Trickle ICE and ICE restart PATCH bodies (RFC 8840).
pub const TRICKLE: &str = "application/trickle-ice-sdpfrag";

/// The base URL clients reached us at, for absolute `Location`s (RFC 9725 §4.2; OBS needs
/// them absolute).
pub fn base_url(headers: &HeaderMap, fallback: std::net::SocketAddr) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '"']))
        .map(String::from)
        .unwrap_or_else(|| fallback.to_string());
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{host}")
}

/// `Link` header values for the configured ICE servers (RFC 9725 §4.6), one per URL.
pub fn ice_server_links(servers: &[IceServer], sub: Option<&str>) -> Vec<String> {
    let mut links = Vec::new();
    for s in servers {
        let (username, credential) = match (&s.rest_secret, &s.username, &s.credential) {
            (Some(secret), _, _) => {
                let (u, c) = rest_credentials(secret, s.rest_ttl.unwrap_or(86400), sub);
                (Some(u), Some(c))
            }
            (None, u, c) => (u.clone(), c.clone()),
        };
        for url in &s.urls {
            let turn = url.starts_with("turn");
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if turn && let (Some(u), Some(c)) = (&username, &credential) {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    u.replace('"', ""),
                    c.replace('"', "")
                ));
            }
            links.push(link);
        }
    }
    links
}

/// Time-limited TURN credentials (draft-uberti-behave-turn-rest, as coturn's
/// `use-auth-secret`): username `expiry:user`, password base64(HMAC-SHA1(secret, username)).
fn rest_credentials(secret: &str, ttl: u64, sub: Option<&str>) -> (String, String) {
    use aws_lc_rs::hmac;
    use base64::Engine;
    let expiry = crate::auth::now_secs() + ttl;
    let user = sub
        .filter(|s| !s.is_empty() && !s.contains(':'))
        .unwrap_or("wisp");
    let username = format!("{expiry}:{user}");
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = hmac::sign(&key, username.as_bytes());
    (
        username,
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
    )
}

/// The media type of a request without parameters, lower-cased (RFC 9110 §8.3.1).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Checks a request's media type.
pub fn require_type(headers: &HeaderMap, expected: &'static str) -> Result<(), ApiError> {
    let got = media_type(headers);
    if got == expected {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            expected,
            got: if got.is_empty() { "none".into() } else { got },
        })
    }
}
