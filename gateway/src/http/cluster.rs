//! The admin API across a cluster's nodes: a request about a session another node holds is
//! forwarded there, and its answer is the answer (so the console works on any node, with its
//! token: a browser would not carry the token across a redirect to another origin). WHEP and
//! WHIP POSTs are redirected instead (`resource.rs`, RFC 9725 §4.5).
//!
//! A forwarded request carries [`FORWARDED`]: the node it reaches answers it itself, so a
//! directory that changed on the way cannot bounce a request between nodes.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::cluster::Owner;
use crate::http::error::Placement;
use crate::http::{ApiError, Shared};

/// Marks a request one node forwarded to another.
pub const FORWARDED: HeaderName = HeaderName::from_static("wisp-forwarded");

/// The largest body forwarded (session and egress definitions are small).
const BODY_LIMIT: usize = 1 << 20;
/// How long a forwarded request may take (an egress's DELETE waits up to 15 s for its file).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether this request was forwarded by another node.
pub fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Middleware of `/api/sessions/{session}…`: a session this node does not hold (or only
/// relays) but another node does is that node's to answer; a VOD session whose node is gone
/// and that another node is about to make again is a 503 with a short `Retry-After`.
pub async fn to_owner(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Some(cluster) = s.cluster.clone() else {
        return next.run(req).await;
    };
    let name = req
        .uri()
        .path()
        .strip_prefix("/api/sessions/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_string();
    if name.is_empty() || forwarded(req.headers()) {
        return next.run(req).await;
    }
    if let Some(local) = s.sessions.get(&name) {
        // An edge's relay is a copy: the session is its node's to show, stop and record.
        return match local.relay() {
            Some(link) => forward(&link.owner, req).await.into_response(),
            None => next.run(req).await,
        };
    }
    match cluster.owner(&name).await {
        Ok(Owner::There(node)) => forward(&node, req).await.into_response(),
        Ok(Owner::Here) => match cluster.moving(&name).await {
            Ok(true) => ApiError::from(Placement::Moving(name)).into_response(),
            Ok(false) => next.run(req).await,
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Sends `req` to the same path on `node`, and gives back its answer (status, body and the
/// headers a client uses); 502 if the node does not answer.
pub async fn forward(node: &str, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|e| crate::http::error::Invalid::Body(e.to_string()))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    send(node, parts.method, path, &parts.headers, body.to_vec()).await
}

/// One request to `node` on behalf of a client, with its token and body.
pub async fn send(
    node: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let url = format!("{node}{path}");
    let mut out = client()
        .request(method.clone(), &url)
        .header(FORWARDED, "1");
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let unanswered = |why: String| Placement::Unanswered {
        node: node.to_string(),
        why,
    };
    let answer = out
        .body(body)
        .send()
        .await
        .map_err(|e| unanswered(whep_client::with_causes(&e)))?;
    let status = StatusCode::from_u16(answer.status().as_u16())
        .map_err(|e| unanswered(format!("an invalid status: {e}")))?;
    let mut resp = Response::builder().status(status);
    for name in [
        header::CONTENT_TYPE,
        header::LOCATION,
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(v) = answer
            .headers()
            .get(name.as_str())
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            resp = resp.header(name, v);
        }
    }
    let body = answer
        .bytes()
        .await
        .map_err(|e| unanswered(whep_client::with_causes(&e)))?;
    tracing::debug!(%method, %url, status = status.as_u16(), "forwarded to the session's node");
    resp.body(Body::from(body))
        .map_err(|e| unanswered(e.to_string()).into())
}

/// The HTTP client nodes talk to each other with (no redirects followed: a node answers
/// what it is sent).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("a client without TLS settings builds")
    })
}
