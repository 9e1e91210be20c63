//! The routes, and what every request goes through: CORS and OPTIONS (answered without auth),
//! the body's size and time limits, error responses made problem details, the status count;
//! and the small endpoints (health, readiness, metrics).

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::config::MetricsAt;
use crate::http::error::problem_body;
use crate::http::error::{Invalid, NotFound};
use crate::http::{ApiError, Shared};

/// Builds the router (tests call it with `oneshot`).
pub fn app(state: Shared) -> Router {
    let router = Router::new()
        .route("/", get(crate::http::pages::console))
        .route("/play/{session}", get(crate::http::pages::play))
        .route("/publish/{session}", get(crate::http::pages::publish))
        .route("/api/directory", get(crate::http::api::directory))
        .route("/api/tokens", post(crate::http::api::mint_token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/whep/{session}",
            get(crate::http::whep::endpoint_get).post(crate::http::whep::post),
        )
        .route(
            "/whep/{session}/{resource}",
            get(crate::http::whep::resource_get)
                .patch(crate::http::whep::patch)
                .delete(crate::http::whep::delete),
        )
        .route(
            "/whep/{session}/{resource}/sse",
            post(crate::http::extensions::sse_create),
        )
        .route(
            "/whep/{session}/{resource}/sse/{stream}",
            get(crate::http::extensions::sse_get).delete(crate::http::extensions::sse_delete),
        )
        .route(
            "/whep/{session}/{resource}/layer",
            post(crate::http::extensions::layer_select)
                .delete(crate::http::extensions::layer_reset),
        )
        .route(
            "/whip/{session}",
            get(crate::http::whip::endpoint_get).post(crate::http::whip::post),
        )
        .route(
            "/whip/{session}/{resource}",
            get(crate::http::whip::resource_get)
                .patch(crate::http::whip::patch)
                .delete(crate::http::whip::delete),
        )
        .route(
            "/api/sessions",
            get(crate::http::api::list).post(crate::http::api::create),
        )
        .merge(one_session(state.clone()))
        .route("/hls/{session}/index.m3u8", get(crate::http::hls::master))
        .route(
            "/hls/{session}/{rendition}/{file}",
            get(crate::http::hls::file),
        );
    // Metrics on their own listener (see `metrics_app`), or nowhere, leave this one.
    let router = match state.config.metrics {
        MetricsAt::Main => router.route("/metrics", get(metrics)),
        MetricsAt::Addr(_) | MetricsAt::Off => router,
    };
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cors_and_count,
        ))
        .with_state(state)
}

/// The API's routes about one session: in a cluster, another node's session is that node's
/// to answer (`cluster.rs`).
fn one_session(state: Shared) -> Router<Shared> {
    Router::new()
        .route(
            "/api/sessions/{session}",
            get(crate::http::api::show).delete(crate::http::api::remove),
        )
        .route(
            "/api/sessions/{session}/egress",
            get(crate::http::api::egress_list).post(crate::http::api::egress_start),
        )
        .route(
            "/api/sessions/{session}/egress/{id}",
            get(crate::http::api::egress_show).delete(crate::http::api::egress_stop),
        )
        .route_layer(middleware::from_fn_with_state(
            state,
            crate::http::cluster::to_owner,
        ))
}

/// The router of a listener of `/metrics` alone (`metrics = "ADDR:PORT"`).
pub fn metrics_app(state: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    NotFound::Path.into()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        s.metrics.render(
            s.sessions.len(),
            s.port.kernel_drops(),
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        ),
    )
        .into_response()
}

const ALLOW_HEADERS: &str = "Authorization, Content-Type, If-Match";
const EXPOSE_HEADERS: &str = "Location, ETag, Link, Accept-Post, Accept-Patch";
const ALLOW_METHODS: &str = "OPTIONS, GET, HEAD, POST, PATCH, DELETE";

/// CORS on every response, OPTIONS answered here (preflight or not, without auth: RFC 9725
/// §4.2, Fetch), and a count of every status for `/metrics`.
async fn cors_and_count(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allow_origin = allowed_origin(&s.config.cors_origins, origin.as_ref());
    let mut resp = if req.method() == Method::OPTIONS {
        options_response(req.uri().path())
    } else {
        as_problem(next.run(req).await).await
    };
    let h = resp.headers_mut();
    if let Some(o) = allow_origin {
        if o != "*" {
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Ok(v) = HeaderValue::from_str(&o) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    s.metrics.count_status(resp.status().as_u16());
    resp
}

/// Reads a request's body before the handler runs: within the body timeout (else 408, rather
/// than a connection held open by a client that announced more than it sends) and the size
/// limit (else 413).
async fn read_body(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let limits = s.config.http_limits;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return ApiError::PayloadTooLarge(limits.max_body).into_response();
    }
    let limited = http_body_util::Limited::new(body, limits.max_body);
    let collected = tokio::time::timeout(
        limits.body_timeout,
        http_body_util::BodyExt::collect(limited),
    )
    .await;
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::PayloadTooLarge(limits.max_body).into_response();
        }
        Ok(Err(e)) => {
            return ApiError::from(Invalid::Body(e.to_string())).into_response();
        }
        Err(_) => {
            s.metrics.http_body_timeouts.fetch_add(1, Ordering::Relaxed);
            return ApiError::RequestTimeout(limits.body_timeout).into_response();
        }
    };
    // From here the connection is busy with this request (not evicted for a newer one).
    let _busy = parts
        .extensions
        .get::<crate::http::connections::InFlight>()
        .map(|c| c.begin());
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Error responses not made by [`ApiError`] (axum's own: 405, a rejected path or JSON body)
/// rendered as problem details too, their text as the detail.
async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => "this path does not take that method".into(),
        (true, _) => ApiError::title(status).to_string(),
    };
    let body = problem_body(status, &detail);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

fn allowed_origin(allowed: &[String], origin: Option<&HeaderValue>) -> Option<String> {
    if allowed.iter().any(|a| a == "*") {
        return Some("*".into());
    }
    let origin = origin?.to_str().ok()?;
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin))
        .then(|| origin.to_string())
}

/// 204 for OPTIONS, with what a WHIP/WHEP client or a browser preflight needs.
fn options_response(path: &str) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(ALLOW_METHODS));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    let segments = path.trim_matches('/').split('/').count();
    if path.starts_with("/whep/") || path.starts_with("/whip/") {
        if segments == 2 {
            // RFC 9725 §4.2: the 200/204 to OPTIONS SHOULD carry Accept-Post.
            h.insert(
                HeaderName::from_static("accept-post"),
                HeaderValue::from_static("application/sdp"),
            );
        } else if segments == 3 {
            h.insert(
                HeaderName::from_static("accept-patch"),
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
        }
    }
    resp
}
