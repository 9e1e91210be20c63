//! The one error type of the HTTP surface: every way a request can fail, each mapped to one
//! status (STYLE.md "Errors") and rendered as an RFC 9457 problem details document, with the
//! headers its status calls for (`WWW-Authenticate`, `Accept-Post`/`Accept-Patch`,
//! `Retry-After`).

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::config::SpecError;
use crate::rtc::answer::AnswerError;
use crate::rtc::ice::PatchError;
use crate::rtc::offer::OfferError;
use crate::session::{CreateError, JoinError, PublishError};

/// Every way a request can fail, mapped to one status (STYLE.md "Errors"), grouped by whose
/// it is to fix: the client's (4xx), the moment's (the session or the gateway cannot take it
/// now: 409, 503 with `Retry-After`), or ours (5xx).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // The client's.
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    NotFound(#[from] NotFound),
    #[error("Content-Type must be {expected}, not {got}")]
    UnsupportedMediaType { expected: &'static str, got: String },
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(
        "a PATCH needs If-Match with the ICE session's entity-tag (or \"*\" for an ICE \
         restart): RFC 9725 §4.3.1"
    )]
    IfMatchRequired,
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Egress(#[from] crate::egress::SpecError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    // The moment's.
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    EgressStart(#[from] crate::egress::StartError),
    #[error(transparent)]
    HlsNotReady(#[from] HlsNotReady),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Unreachable),
    #[error(transparent)]
    Placement(#[from] Placement),
    #[error(transparent)]
    Extension(#[from] crate::http::extensions::ExtError),
    #[error("the gateway is shutting down")]
    Draining,
    // Ours.
    /// Asked of a gateway set up without it.
    #[error(
        "this gateway verifies tokens with public keys and holds no private key: mint tokens \
         where the private key is (wisp token --jwt-private-key)"
    )]
    NoSigningKey,
    #[error(transparent)]
    Internal(#[from] Internal),
}

/// What a URL names that is not there (404).
#[derive(Debug, thiserror::Error)]
pub enum NotFound {
    #[error("no such path")]
    Path,
    #[error("no session named {0:?}")]
    Session(String),
    #[error("{0:?} is not a session name (1-64 of A-Z a-z 0-9 . _ -)")]
    BadSessionName(String),
    /// No resource by that id (`what`: WHEP or WHIP).
    #[error("no such {0} resource")]
    Resource(&'static str),
    /// The resource ended a while ago, and why.
    #[error("this {what} resource ended {ago_s} s ago: {reason}")]
    Ended {
        what: &'static str,
        ago_s: u64,
        reason: String,
    },
    /// The resource ended while the request was on its way.
    #[error("the {0} resource has ended")]
    EndedNow(&'static str),
    #[error("session {session:?} has no egress {id:?}")]
    Egress { session: String, id: String },
    #[error("no such HLS file for session {0:?}")]
    HlsFile(String),
    /// No event stream by that URL (never made, deleted, or gone with its resource).
    #[error("no such event stream")]
    EventStream,
    #[error("HLS is off for session {0:?} (its hls setting)")]
    HlsOff(String),
}

/// A request body or field that cannot be used: 400 when it cannot be read, 422 when what it
/// asks is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The connection broke while the body was read (hyper's words).
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("session definition: {0}")]
    SessionDefinition(serde_json::Error),
    #[error("egress[{index}]: {why}")]
    EgressDefinition { index: usize, why: String },
    #[error("token request: {0}")]
    TokenRequest(serde_json::Error),
    /// The session's video codec is one the egress or HLS cannot take (the refusal's words).
    #[error("{0}")]
    Codec(String),
    #[error("sessions: name at least one session, or \"*\"")]
    NoSessions,
    #[error("sessions: {0:?} is not a session name (1-64 of A-Z a-z 0-9 . _ -, or *)")]
    TokenSession(String),
    /// A word that names no scope (the parser's sentence).
    #[error("scope: {0}")]
    Scope(String),
    #[error("scope: give at least one of view publish playback audio chat admin")]
    NoScope,
    #[error("sub: {0:?} starts the subjects of the cluster's relays, which only nodes mint")]
    ReservedSub(&'static str),
    #[error("ttl: {ttl} s is out of range: 1 to {max} (30 days)")]
    Ttl { ttl: u64, max: u64 },
}

/// Where the cluster cannot put or find a session now.
#[derive(Debug, thiserror::Error)]
pub enum Placement {
    /// 503: every node is full.
    #[error(
        "no node of the cluster has room for a VOD session ({cost} cores; {nodes} live nodes, \
         their capacity less their load): try again later, or add nodes"
    )]
    NoRoom { cost: f64, nodes: usize },
    /// 503, soon: the session's node is gone and another is about to make it again.
    #[error(
        "session {0:?} is moving: its node is gone and another node is making it again at \
         its last position"
    )]
    Moving(String),
    /// 409: the name is another node's.
    #[error("a session named {session:?} exists on node {node}")]
    Taken { session: String, node: String },
    /// 502: the node a request was sent on to (the session's, or the one placement chose)
    /// did not answer.
    #[error("node {node}, where the request was sent on to, did not answer: {why}")]
    Unanswered { node: String, why: String },
}

/// HLS for a session cannot be served yet (503, try again).
#[derive(Debug, thiserror::Error)]
pub enum HlsNotReady {
    #[error("HLS for this session stopped: {0}")]
    Stopped(String),
    #[error("HLS for this session is starting; try again shortly")]
    Starting,
}

/// The gateway's own fault (500).
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("cannot make the session's ring: {0}")]
    Ring(rtp_ring::OpenError),
    /// A task that checks a session's inputs did not finish (it panicked).
    #[error("checking the inputs: {0}")]
    InputCheck(tokio::task::JoinError),
    /// A page in `assets` cannot be read (the log says where it was looked for).
    #[error("the page {0} cannot be read (the gateway's log says where it was looked for)")]
    Page(&'static str),
    #[error("writing JSON: {0}")]
    Json(serde_json::Error),
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
            ApiError::IfMatchRequired => StatusCode::PRECONDITION_REQUIRED,
            ApiError::Spec(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Invalid(e) => match e {
                Invalid::Body(_)
                | Invalid::SessionDefinition(_)
                | Invalid::EgressDefinition { .. }
                | Invalid::TokenRequest(_) => StatusCode::BAD_REQUEST,
                Invalid::Codec(_)
                | Invalid::NoSessions
                | Invalid::TokenSession(_)
                | Invalid::Scope(_)
                | Invalid::NoScope
                | Invalid::ReservedSub(_)
                | Invalid::Ttl { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::HlsNotReady(_) | ApiError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Extension(e) => e.status(),
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
            ApiError::Placement(e) => match e {
                Placement::NoRoom { .. } | Placement::Moving(_) => StatusCode::SERVICE_UNAVAILABLE,
                Placement::Taken { .. } => StatusCode::CONFLICT,
                Placement::Unanswered { .. } => StatusCode::BAD_GATEWAY,
            },
            ApiError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoSigningKey => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn title(status: StatusCode) -> &'static str {
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
            | ApiError::HlsNotReady(_)
            | ApiError::Cluster(_)
            | ApiError::Placement(Placement::NoRoom { .. })
            | ApiError::Draining
            | ApiError::Publish(PublishError::Stopping | PublishError::GatewayFull(_)) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Placement(Placement::Moving(_)) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// An RFC 9457 problem details document.
pub(crate) fn problem_body(status: StatusCode, detail: &str) -> String {
    json!({
        "type": "about:blank",
        "title": ApiError::title(status),
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string()
}
