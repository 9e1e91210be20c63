//! WHEP (draft-ietf-wish-whep): the endpoint `POST /whep/{session}` that answers a viewer's
//! offer and creates its resource; the resource's PATCH (trickle ICE, ICE restart) and DELETE
//! are the ones publishers have (`resource.rs`).
//!
//! Owns the request-level rules of watching: the `view` scope, which sessions can be joined
//! (and `[live] wait`), the viewer's entity-tag. The offer policy is `rtc/offer.rs`'s, the
//! viewer is `rtc/viewer.rs`'s (driven by `rtc/worker.rs`), and statuses come from
//! `http::ApiError`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::auth::{Scope, valid_session_name};
use crate::cluster::Owner;
use crate::config::VideoFormat;
use crate::http::error::NotFound;
use crate::http::headers::SDP;
use crate::http::resource::{Role, created, delete_resource, elsewhere, patch_resource, register};
use crate::http::{ApiError, Shared, authorize, require_type};
use crate::ids::random_id;
use crate::rtc::Clock;
use crate::rtc::answer::answer;
use crate::rtc::ice::{IceSession, new_etag};
use crate::rtc::offer::{Offer, Served};
use crate::rtc::viewer::{Params, Viewer};
use crate::rtc::worker::Joining;
use crate::session::{JoinError, Kind, Session, Source};

/// `GET`/`HEAD /whep/{session}`: 200, no content, `Content-Type: application/sdp`
/// (draft-ietf-wish-whep §4.1, §4.2). 404 for an unknown session; in a cluster, 307 to the
/// node that holds it.
pub async fn endpoint_get(State(s): State<Shared>, Path(session): Path<String>) -> Response {
    if s.sessions.get(&session).is_none() {
        // In a cluster, the endpoint is where the session is.
        if valid_session_name(&session) {
            match elsewhere(&s, &session, &format!("/whep/{session}"), false).await {
                Ok(Some(to)) => return to,
                Err(e) => return e.into_response(),
                Ok(None) => {}
            }
        }
        return ApiError::from(NotFound::Session(session)).into_response();
    }
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    resp
}

/// `GET`/`HEAD` on a resource: 200, no content (RFC 9725 §4.1).
pub async fn resource_get(
    State(s): State<Shared>,
    Path((session, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.resources.find(&session, &id, Role::Viewer)?;
    Ok(StatusCode::OK)
}

/// `POST /whep/{session}`: answer the offer, 201 with the answer and the resource's URL.
pub async fn post(
    State(s): State<Shared>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    let wait = s.config.live.wait;
    let mut known = s.sessions.get(&name);
    let path = format!("/whep/{name}");
    // Sent here as an edge by the session's node (`?relay`), or an edge by configuration.
    let relay_asked = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "relay" || p.starts_with("relay="))
    });
    let relaying = relay_asked || s.config.cluster.as_ref().is_some_and(|c| c.relay);
    // A session this node does not hold may be another node's: served here through a relay
    // (for a viewer with a valid token), or redirected there.
    if known.is_none() && !wait && valid_session_name(&name) {
        if relaying {
            match owner_elsewhere(&s, &name).await? {
                Some(owner) => {
                    authorize(&s, &headers, &name, Scope::View)?;
                    require_type(&headers, SDP)?;
                    known = Some(crate::ingest::relay::serve(&s, &name, &owner).await?);
                }
                // Nobody holds it; one moving to another node is a 503 to retry.
                None => {
                    elsewhere(&s, &name, &path, false).await?;
                }
            }
        } else if let Some(to) = elsewhere(&s, &name, &path, false).await? {
            return Ok(to);
        }
    }
    if known.is_none() && !(wait && valid_session_name(&name)) {
        return Err(NotFound::Session(name).into());
    }
    // A busy session's viewers past `relay_above` go to an edge.
    if let Some(session) = &known
        && !relay_asked
        && let Some(to) = to_edge(&s, session, &headers).await
    {
        return Ok(to);
    }
    let grant = authorize(&s, &headers, &name, Scope::View)?;
    require_type(&headers, SDP)?;
    // With `[live] wait` the POST makes the session here (below), unless another node holds
    // it: the name is claimed first, so that its publisher is sent here too.
    if known.is_none()
        && let Some(to) = elsewhere(&s, &name, &path, true).await?
    {
        return Ok(to);
    }
    let offer = Offer::parse(&body)?.one_way("recvonly");
    let video_index = offer
        .sections
        .iter()
        .position(|s| s.kind == crate::rtc::offer::Kind::Video && !s.rejected);
    // With `[live] wait`, a viewer may come before the first publisher: the name becomes a
    // live session waiting for one.
    let session = match known {
        Some(session) => session,
        None => s.sessions.live(&name)?,
    };
    let served = match session.kind {
        // The first of the session's codecs the viewer takes (the main one unless it lacks
        // it); none: the main one, and the 422 says what it needs.
        Kind::Vod => Served {
            video: offer
                .first_video_format(&session.spec.served_codecs())
                .unwrap_or(VideoFormat::transcoded(session.spec.codec())),
            audio: true,
        },
        // A live session sends what its publisher sends.
        Kind::Live => match &*session.source().borrow() {
            Source::Ready(r) => Served {
                video: r.video_format,
                audio: r.audio_track.is_some(),
            },
            // A pulled session's transcoder makes what VOD sessions send.
            _ if session.pulled() => Served {
                video: VideoFormat::transcoded(crate::config::VideoCodec::H264),
                audio: true,
            },
            // A waiting viewer gets the first codec of the preference that it offers; if the
            // publisher then sends another, the viewer is told and disconnected.
            _ if wait => {
                let codecs = &s.config.live.video_codecs;
                Served {
                    video: offer
                        .first_video_format(codecs)
                        .unwrap_or(VideoFormat::transcoded(codecs[0])),
                    audio: true,
                }
            }
            _ => return Err(JoinError::NoPublisher(name).into()),
        },
    };
    let format = served.video;
    let plan = offer.plan_whep(served)?;
    let slot = session.join(&s.config.limits, wait, &s.metrics)?;
    // The layers are the main codec's; a viewer of the main picture in another codec has
    // nothing to choose from.
    let bwe =
        session.layered() && (session.kind != Kind::Vod || format.codec == session.spec.codec());
    let answered = answer(
        &offer,
        plan,
        format,
        &s.cert,
        &s.port.candidates(),
        false,
        bwe,
    )?;
    let id = random_id();
    let etag = new_etag();
    let at = s.workers.place();
    let on_end = register(&s, &name, &id, Role::Viewer, s.workers.inbox(at));
    s.resources.set_video_index(&id, video_index);
    let viewer = Viewer::new(
        Params {
            id: id.clone(),
            session: name.clone(),
            live: session.kind == Kind::Live,
            rtc: answered.rtc,
            ice: IceSession {
                offer,
                ufrag: answered.ufrag,
                etag: etag.clone(),
            },
            tracks: answered.tracks,
            video_format: format,
            grant: grant.clone(),
            connect_timeout: s.config.connect_timeout,
            metrics: s.metrics.clone(),
            clock: Clock::read(),
            bwe,
        },
        Instant::now(),
    );
    s.workers.add(
        at,
        Joining {
            viewer,
            slot,
            on_end,
        },
    );
    tracing::info!(
        session = %name,
        resource = %id,
        sub = grant.sub.as_deref().unwrap_or("-"),
        "viewer created"
    );
    let mut resp = created(
        &s,
        &headers,
        &format!("/whep/{name}/{id}"),
        &etag,
        answered.answer,
        grant.sub.as_deref(),
    );
    // The WHEP core extensions: server-sent events and layer selection.
    let url = format!(
        "{}/whep/{name}/{id}",
        crate::http::api::own_url(&s, &headers)
    );
    for link in crate::http::extensions::links(&url) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    Ok(resp)
}

/// In a cluster, the node that holds `name` if it is another.
async fn owner_elsewhere(s: &Shared, name: &str) -> Result<Option<String>, ApiError> {
    let Some(cluster) = &s.cluster else {
        return Ok(None);
    };
    Ok(match cluster.owner(name).await? {
        Owner::There(node) => Some(node),
        Owner::Here => None,
    })
}

/// With `[cluster] relay_above`, a 307 to an edge for a viewer of a session held here that
/// has that many viewers already: the other node with the most room, which relays the
/// session (`?relay`). None when no other node has room or Redis cannot say: the viewer is
/// served here. A relay's own pull is always served here.
async fn to_edge(s: &Shared, session: &Session, headers: &HeaderMap) -> Option<Response> {
    let cluster = s.cluster.as_ref()?;
    let above = s.config.cluster.as_ref()?.relay_above?;
    if session.relay().is_some() || session.viewer_count() < above {
        return None;
    }
    let relay = crate::http::grant(s, headers).is_ok_and(|g| {
        g.sub
            .as_deref()
            .is_some_and(|sub| sub.starts_with(crate::ingest::relay::SUB))
    });
    if relay {
        return None;
    }
    let nodes = cluster.nodes().await.ok()?;
    let viewer = s.config.cluster.as_ref()?.costs.viewer;
    let edge = crate::cluster::rank(nodes, viewer)
        .into_iter()
        .find(|n| n.url != cluster.node_url())?;
    let location = format!("{}/whep/{}?relay", edge.url, session.name);
    tracing::debug!(session = %session.name, edge = %edge.url, "viewer sent to an edge");
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).ok()?);
    Some(resp)
}

/// `PATCH /whep/{session}/{resource}`.
pub async fn patch(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    patch_resource(&s, &name, &id, Role::Viewer, &headers, &body).await
}

/// `DELETE /whep/{session}/{resource}`.
pub async fn delete(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    delete_resource(&s, &name, &id, Role::Viewer, &headers)
}
