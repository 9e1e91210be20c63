//! WHIP (RFC 9725): the endpoint `POST /whip/{session}` that answers a publisher's offer,
//! makes (or takes over) the live session, and creates the publisher's resource; the
//! resource's PATCH and DELETE are the ones viewers have (`resource.rs`).
//!
//! Owns the request-level rules of publishing: the `publish` scope, one publisher per session
//! (409), codecs chosen from the gateway's preference. The publisher itself (its core and
//! the task that drives it) is `rtc/publisher.rs`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use rtp_ring::Ring;

use crate::auth::Scope;
use crate::auth::valid_session_name;
use crate::http::error::{Internal, NotFound};
use crate::http::headers::SDP;
use crate::http::resource::{Role, created, delete_resource, elsewhere, patch_resource, register};
use crate::http::{ApiError, Shared, authorize, require_type};
use crate::ids::random_id;
use crate::rtc::Clock;
use crate::rtc::answer::answer;
use crate::rtc::ice::{IceSession, Inbox, new_etag};
use crate::rtc::offer::Offer;
use crate::rtc::publisher::{self, Publisher};
use crate::session::{Ingest, PublishError};

/// `GET /whip/{session}`: 200, no content, `Content-Type: application/sdp`. Any valid name
/// is a WHIP endpoint (publishing creates the session).
pub async fn endpoint_get(Path(session): Path<String>) -> Response {
    if !valid_session_name(&session) {
        return ApiError::from(NotFound::BadSessionName(session)).into_response();
    }
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    resp
}

/// `POST /whip/{session}`: answer the publisher's offer, 201 with the answer and the
/// resource's URL.
pub async fn post(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    if !valid_session_name(&name) {
        return Err(NotFound::BadSessionName(name).into());
    }
    let grant = authorize(&s, &headers, &name, Scope::Publish)?;
    require_type(&headers, SDP)?;
    // Publishing makes the session here, unless another node holds it. (A publish refused
    // after this leaves the claim to expire with the heartbeat's time to live.)
    if s.sessions.get(&name).is_none()
        && let Some(to) = elsewhere(&s, &name, &format!("/whip/{name}"), true).await?
    {
        return Ok(to);
    }
    let offer = Offer::parse(&body)?.one_way("sendonly");
    // The operator's order (`[live] video_codecs`); by default H.264 first, which plays
    // everywhere (Safari included).
    let (plan, video) = offer.plan_whip(&s.config.live.video_codecs)?;
    // Answered before the session is made, so that an offer str0m refuses leaves nothing.
    let answered = answer(
        &offer,
        plan,
        video,
        &s.cert,
        &s.port.candidates(),
        true,
        false,
    )?;
    // Each publish writes a fresh ring (viewers of the last one see it end).
    let ring = Ring::create_memfd(&format!("wisp-live-{name}"), crate::session::RING_BYTES)
        .map_err(Internal::Ring)?;
    let id = random_id();
    let max = s.config.limits.max_publishers;
    let claim = match s
        .sessions
        .live(&name)?
        .claim_publisher(&id, Ingest::Whip, max, &s.metrics)
    {
        // The session was removed as unused between the lookup and the claim: a new one.
        Err(PublishError::Stopping) => {
            s.sessions
                .live(&name)?
                .claim_publisher(&id, Ingest::Whip, max, &s.metrics)?
        }
        other => other?,
    };
    // RFC 8853: the layers we agreed to receive are in our answer's a=simulcast:recv.
    let layers = answered
        .answer
        .lines()
        .find_map(|l| l.strip_prefix("a=simulcast:recv "))
        .map(|v| {
            v.split([';', ','])
                .map(|r| r.trim().trim_start_matches('~').to_string())
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
        });
    if let Some(l) = &layers {
        tracing::info!(session = %name, layers = ?l, "simulcast publisher: each viewer gets one layer");
    }
    claim
        .session()
        .set_simulcast(layers.clone().map(crate::session::SimulcastInfo::new));
    let etag = new_etag();
    let (tx, inbox) = tokio::sync::mpsc::channel(8);
    let on_end = register(&s, &name, &id, Role::Publisher, Inbox::Task(tx));
    let publisher = Publisher::new(
        publisher::Params {
            id: id.clone(),
            rtc: answered.rtc,
            ice: IceSession {
                offer,
                ufrag: answered.ufrag,
                etag: etag.clone(),
            },
            tracks: answered.tracks,
            video,
            ring,
            rids: layers.unwrap_or_default(),
            generation: claim.generation,
            max_bitrate: s.config.limits.max_ingest_bitrate,
            connect_timeout: s.config.connect_timeout,
            clock: Clock::read(),
        },
        Instant::now(),
    );
    publisher::spawn(publisher, claim, s.port.clone(), inbox, on_end);
    tracing::info!(
        session = %name,
        resource = %id,
        video = %video.describe(),
        sub = grant.sub.as_deref().unwrap_or("-"),
        "publisher created"
    );
    Ok(created(
        &s,
        &headers,
        &format!("/whip/{name}/{id}"),
        &etag,
        answered.answer,
        grant.sub.as_deref(),
    ))
}

/// `GET`/`HEAD` on a publisher's resource: 200, no content.
pub async fn resource_get(
    State(s): State<Shared>,
    Path((session, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.resources.find(&session, &id, Role::Publisher)?;
    Ok(StatusCode::OK)
}

/// `PATCH /whip/{session}/{resource}`: as for viewers.
pub async fn patch(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    patch_resource(&s, &name, &id, Role::Publisher, &headers, &body).await
}

/// `DELETE /whip/{session}/{resource}`: ends publishing; viewers stay and wait.
pub async fn delete(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    delete_resource(&s, &name, &id, Role::Publisher, &headers)
}
