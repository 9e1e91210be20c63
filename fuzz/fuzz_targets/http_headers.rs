//! Request headers the gateway reads (`Authorization`, `Content-Type`, `Host` and
//! `X-Forwarded-Proto` for absolute `Location`s) and the `Link` headers whep-client reads from a
//! 201. The input is `name: value` lines.
#![no_main]

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use wisp::auth::Verifier;

static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::hs256(b"a-fuzzing-secret-of-at-least-32-bytes!!").expect("a key"));

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut links = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        if name == "link"
            && let Ok(v) = value.to_str()
        {
            links.push(v.to_string());
        }
        headers.append(name, value);
    }
    if let Ok(token) = wisp::http::bearer_token(&headers) {
        let _ = VERIFIER.verify(token);
    }
    let _ = wisp::http::media_type(&headers);
    let _ = wisp::http::base_url(&headers, "127.0.0.1:8080".parse().expect("an address"));
    let _ = whep_client::link::ice_servers(links.iter().map(String::as_str));
});
