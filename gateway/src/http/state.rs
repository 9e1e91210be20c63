//! What every handler shares ([`AppState`]), and the checks of a request's bearer token
//! against it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::http::header::{self, HeaderMap};
use str0m::config::DtlsCert;

use crate::auth::{AuthError, Grant, Scope, Verifier};
use crate::config::Config;
use crate::http::ApiError;
use crate::http::resource::Resources;
use crate::metrics::Metrics;
use crate::rtc::udp::RtcPort;
use crate::session::Registry;

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
    /// Viewers' server-sent event streams (the WHEP extension).
    pub streams: crate::http::extensions::EventStreams,
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
    /// The nodes this one shares sessions with (`None`: a node of its own).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// A session's HLS setting: its own, else the gateway's.
    pub fn hls_mode(&self, session: &crate::session::Session) -> crate::config::HlsMode {
        session.spec.hls.unwrap_or(self.config.hls)
    }
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
