//! The session API (`/api/sessions`, admin scope): create VOD sessions from inputs and encode
//! options, list and inspect them, stop them; start, list and stop their egresses
//! (`/api/sessions/{session}/egress`).
//!
//! Owns request handling; sessions themselves are `session.rs`'s, egresses `egress/`'s.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{Scope, valid_session_name};
use crate::config::SessionSpec;
use crate::egress::{EgressInfo, EgressSpec};
use crate::http::{ApiError, Shared, authorize, base_url, random_id, require_type};
use crate::session::SessionInfo;

/// `GET /api/sessions`.
pub async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    authorize(&s, &headers, "*", Scope::Admin)?;
    Ok(Json(s.sessions.list().iter().map(|x| x.info()).collect()))
}

/// `GET /api/sessions/{session}`.
pub async fn show(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SessionInfo>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let session = s
        .sessions
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no session named {name:?}")))?;
    Ok(Json(session.info()))
}

/// `POST /api/sessions`: 201 `{"name", "whep_url"}`. The transcoder starts with the first
/// viewer.
pub async fn create(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    require_type(&headers, "application/json")?;
    let spec: SessionSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("session definition: {e}")))?;
    let name = match &spec.name {
        Some(n) if !valid_session_name(n) || n == "*" => {
            return Err(ApiError::Unprocessable(format!(
                "session name {n:?} is not allowed: use 1-64 of [A-Za-z0-9._-]"
            )));
        }
        Some(n) => n.clone(),
        None => random_id()[..12].to_string(),
    };
    authorize(&s, &headers, &name, Scope::Admin)?;
    spec.validate()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let egresses = crate::egress::specs_of(&spec.egress)
        .map_err(|(i, e)| ApiError::BadRequest(format!("egress[{i}]: {e}")))?;
    let spec = SessionSpec {
        name: Some(name.clone()),
        ..spec
    };
    let session = s.sessions.create(name.clone(), spec)?;
    for egress in egresses {
        if let Err(e) = s.egresses.start(&session, egress, false) {
            tracing::warn!(session = %name, "egress not started: {e}");
        }
    }
    if s.hls_mode(&session) == crate::config::HlsMode::Always {
        crate::serve::start_hls(&s.egresses, &session);
    }
    crate::ingest::pull::spawn(session, s.ingest.clone(), s.config.idle_timeout);
    let base = base_url(&headers, s.config.http);
    tracing::info!(session = %name, "session created through the API");
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "name": name,
            "whep_url": format!("{base}/whep/{name}"),
            "player_url": format!("{base}/play/{name}"),
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/api/sessions/{name}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `DELETE /api/sessions/{session}`: stops it; its viewers are disconnected.
pub async fn remove(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    s.sessions
        .remove(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no session named {name:?}")))?;
    tracing::info!(session = %name, "session deleted through the API");
    Ok(StatusCode::OK)
}

/// `POST /api/sessions/{session}/egress`: 201 with the egress (its `id`, state, file), and
/// `Location` for GET and DELETE. It starts at once: a VOD session's transcoder starts for it.
pub async fn egress_start(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    require_type(&headers, "application/json")?;
    let spec = EgressSpec::parse(&body)?;
    let session = s
        .sessions
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no session named {name:?}")))?;
    // A VOD session's codec is known before it runs: refuse a container that cannot hold it
    // now rather than fail later. (A live session's is the publisher's, known at publish.)
    if session.kind == crate::session::Kind::Vod {
        let codec = session
            .spec
            .video
            .as_ref()
            .and_then(|v| v.codec)
            .unwrap_or_default();
        let refusal = match &spec {
            EgressSpec::Record { format, .. } => format.refuses(codec),
            EgressSpec::Websocket { .. } => None,
            EgressSpec::Hls { .. } | EgressSpec::Rtmp { .. } | EgressSpec::Srt { .. } => {
                (codec != crate::config::VideoCodec::H264).then(|| {
                    "HLS and restreams take H.264 video, and this session's video is VP8"
                        .to_string()
                })
            }
        };
        if let Some(why) = refusal {
            return Err(ApiError::Unprocessable(why));
        }
    }
    let egress = s.egresses.start(&session, spec, false)?;
    let base = base_url(&headers, s.config.http);
    let mut resp = (StatusCode::CREATED, Json(egress.info())).into_response();
    let location = format!("{base}/api/sessions/{name}/egress/{}", egress.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /api/sessions/{session}/egress`: the session's egresses, running and recently
/// finished, oldest first.
pub async fn egress_list(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<EgressInfo>>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let egresses = s.egresses.of(&name);
    if egresses.is_empty() && s.sessions.get(&name).is_none() {
        return Err(ApiError::NotFound(format!("no session named {name:?}")));
    }
    Ok(Json(egresses.iter().map(|e| e.info()).collect()))
}

/// `GET /api/sessions/{session}/egress/{id}`.
pub async fn egress_show(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<EgressInfo>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let egress = egress_of(&s, &name, &id)?;
    Ok(Json(egress.info()))
}

/// `DELETE /api/sessions/{session}/egress/{id}`: stops it and answers once its output is
/// finished (the file closed), with its final state.
pub async fn egress_stop(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<EgressInfo>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let egress = egress_of(&s, &name, &id)?;
    let info = egress.stop(EGRESS_STOP_WAIT).await;
    tracing::info!(session = %name, egress = %id, "egress stopped through the API");
    Ok(Json(info))
}

/// The session's egress `id`, or the 404.
fn egress_of(
    s: &Shared,
    name: &str,
    id: &str,
) -> Result<std::sync::Arc<crate::egress::Egress>, ApiError> {
    s.egresses
        .get(name, id)
        .ok_or_else(|| ApiError::NotFound(format!("session {name:?} has no egress {id:?}")))
}

/// How long DELETE waits for an egress to finish its output.
const EGRESS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
