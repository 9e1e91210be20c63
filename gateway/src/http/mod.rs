//! The HTTP surface (DESIGN.md "HTTP surface"): the router, shared state, CORS, the error type
//! that renders every failure as `application/problem+json`, and the small endpoints (health,
//! readiness, metrics).
//!
//! Owns status-code choices: every error enum of the other modules is mapped to a status in one
//! exhaustive match here.
//!
//! # Layout
//! - `mod.rs`: the router, shared state, CORS, problem+json errors, health and metrics.
//! - `connections.rs`: the accept loop: connection cap, eviction, timeouts, shutdown.
//! - `whep.rs`: `POST /whep/{session}`; the PATCH and DELETE of WHEP and WHIP resources and
//!   the registry of live resources.
//! - `whip.rs`: `POST /whip/{session}`: publishing makes or takes over a live session.
//! - `api.rs`: the session API, its egress endpoints, share-link tokens and the directory.
//! - `hls.rs`: HLS files for players (`/hls/{session}/…`).
//! - `pages.rs`: the console, player and publish pages.

pub mod api;
pub mod connections;
pub mod hls;
pub mod pages;
pub mod whep;
pub mod whip;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use str0m::config::DtlsCert;

use crate::auth::{AuthError, Grant, Scope, Verifier};
use crate::config::{Config, IceServer, MetricsAt};
use crate::http::whep::Resources;
use crate::metrics::Metrics;
use crate::rtc::answer::AnswerError;
use crate::rtc::ice::PatchError;
use crate::rtc::offer::OfferError;
use crate::rtc::udp::RtcPort;
use crate::session::{CreateError, JoinError, PublishError, Registry};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub verifier: Arc<Verifier>,
    /// Signs the tokens of `POST /api/tokens` (`None`: the gateway verifies with public keys
    /// and holds no private one).
    pub minter: Option<Arc<crate::auth::Minter>>,
    pub sessions: Registry,
    pub resources: Resources,
    pub port: Arc<RtcPort>,
    /// The fan-out workers that drive viewers.
    pub workers: crate::rtc::worker::Workers,
    pub cert: DtlsCert,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM/SIGINT: new sessions and viewers get 503.
    pub draining: AtomicBool,
    /// What pulled sessions and the RTMP and SRT listeners need to start transcoders.
    pub ingest: crate::ingest::publish::IngestContext,
    /// Recordings and other egresses.
    pub egresses: crate::egress::Egresses,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// A session's HLS setting: its own, else the gateway's.
    pub fn hls_mode(&self, session: &crate::session::Session) -> crate::config::HlsMode {
        session.spec.hls.unwrap_or(self.config.hls)
    }
}

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

/// The router of a listener of `/metrics` alone (`metrics = "ADDR:PORT"`).
pub fn metrics_app(state: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such path".into())
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
            return ApiError::BadRequest(format!("reading the request body: {e}")).into_response();
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

/// An RFC 9457 problem details document.
fn problem_body(status: StatusCode, detail: &str) -> String {
    json!({
        "type": "about:blank",
        "title": ApiError::title(status),
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string()
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
        } else {
            h.insert(
                HeaderName::from_static("accept-patch"),
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
        }
    }
    resp
}

/// The bearer token of a request, verified, or why not.
pub fn grant(s: &AppState, headers: &HeaderMap) -> Result<Grant, AuthError> {
    s.verifier.verify(bearer_token(headers)?)
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), unverified.
/// Another scheme counts as no token (a 401 that asks for a bearer one).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

/// `grant` + `check` for a session and scope.
pub fn authorize(
    s: &AppState,
    headers: &HeaderMap,
    session: &str,
    scope: Scope,
) -> Result<Grant, ApiError> {
    let g = grant(s, headers)?;
    g.check(session, scope)?;
    Ok(g)
}

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

/// Every way a request can fail, mapped to one status (STYLE.md "Errors").
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    NotFound(String),
    #[error("Content-Type must be {expected}, not {got}")]
    UnsupportedMediaType { expected: &'static str, got: String },
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Egress(#[from] crate::egress::SpecError),
    #[error(transparent)]
    EgressStart(#[from] crate::egress::StartError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    PreconditionRequired(String),
    #[error("the gateway is shutting down")]
    Draining,
    /// Ours, passing: try again shortly (`Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Asked of a gateway set up without it (minting tokens with public keys only).
    #[error("{0}")]
    NotImplemented(String),
    /// Ours: the gateway's own files or state are wrong (an unreadable page in `assets`).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(e) => match e {
                AuthError::Missing | AuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
                AuthError::WrongSession { .. } | AuthError::MissingScope { .. } => {
                    StatusCode::FORBIDDEN
                }
            },
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Offer(e) => match e {
                OfferError::Malformed(_) => StatusCode::BAD_REQUEST,
                OfferError::Unusable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::Answer(e) => match e {
                AnswerError::Refused(_) => StatusCode::BAD_REQUEST,
                AnswerError::NothingInCommon(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::Patch(e) => match e {
                PatchError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
                PatchError::BadCredentials => StatusCode::BAD_REQUEST,
                PatchError::RestartFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
                PatchError::Gone => StatusCode::NOT_FOUND,
            },
            ApiError::Join(e) => match e {
                JoinError::SessionFull(_)
                | JoinError::GatewayFull(_)
                | JoinError::NoTranscoder(_)
                | JoinError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
                // draft-ietf-wish-whep §4.3.8: no media to play yet.
                JoinError::NoPublisher(_) => StatusCode::CONFLICT,
            },
            ApiError::Publish(e) => match e {
                PublishError::Busy(_) | PublishError::NotLive(_) | PublishError::Pulled(_) => {
                    StatusCode::CONFLICT
                }
                PublishError::Stopping | PublishError::GatewayFull(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            ApiError::Egress(e) => match e {
                crate::egress::SpecError::Invalid(_) => StatusCode::BAD_REQUEST,
            },
            ApiError::EgressStart(e) => match e {
                crate::egress::StartError::Join(j) => ApiError::Join(j.clone()).status(),
                crate::egress::StartError::HlsRunning(_) => StatusCode::CONFLICT,
                crate::egress::StartError::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::Create(e) => match e {
                CreateError::Exists(_) => StatusCode::CONFLICT,
            },
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PreconditionRequired(_) => StatusCode::PRECONDITION_REQUIRED,
            ApiError::Draining | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(status: StatusCode) -> &'static str {
        status.canonical_reason().unwrap_or("Error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/problem+json")
            .body(Body::from(problem_body(status, &self.to_string())))
            .expect("static parts make a valid response");
        let h = resp.headers_mut();
        match &self {
            ApiError::Auth(AuthError::Missing) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wisp\""),
                );
            }
            ApiError::Auth(AuthError::Invalid(_)) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wisp\", error=\"invalid_token\""),
                );
            }
            ApiError::Auth(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wisp\", error=\"insufficient_scope\""),
                );
            }
            ApiError::UnsupportedMediaType { expected, .. } => {
                let name = if *expected == "application/sdp" {
                    "accept-post"
                } else {
                    "accept-patch"
                };
                if let Ok(v) = HeaderValue::from_str(expected) {
                    h.insert(HeaderName::from_static(name), v);
                }
            }
            ApiError::RequestTimeout(_) => {
                // The rest of the body may still come; the connection cannot be reused.
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Join(_)
            | ApiError::EgressStart(
                crate::egress::StartError::Join(_) | crate::egress::StartError::Failed(_),
            )
            | ApiError::Unavailable(_)
            | ApiError::Draining
            | ApiError::Publish(PublishError::Stopping | PublishError::GatewayFull(_)) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        resp
    }
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
