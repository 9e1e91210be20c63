//! The session API (`/api/sessions`, admin scope): create VOD sessions from inputs and encode
//! options, list and inspect them, stop them.
//!
//! Owns request validation and the JSON shapes; sessions themselves are `session.rs`'s.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{Scope, valid_session_name};
use crate::config::SessionSpec;
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
    let spec = SessionSpec {
        name: Some(name.clone()),
        ..spec
    };
    let session = s.sessions.create(name.clone(), spec)?;
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
