//! WHEP (draft-ietf-wish-whep): the endpoint `POST /whep/{session}` that answers a viewer's
//! offer and creates its resource, and the resource's PATCH (trickle ICE, ICE restart) and
//! DELETE.
//!
//! Owns the request-level rules (content types, entity-tags, headers of the 201) and the
//! registry of live resources. The offer policy is `rtc/offer.rs`'s, the viewer is
//! `rtc/viewer.rs`'s (driven by `rtc/worker.rs`), and statuses come from `http::ApiError`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use crate::auth::{Scope, valid_session_name};
use crate::config::VideoFormat;
use crate::http::{ApiError, Shared, authorize, base_url, ice_server_links, require_type};
use crate::ids::random_id;
use crate::rtc::Clock;
use crate::rtc::answer::answer;
use crate::rtc::ice::{Closed, IceSession, Inbox, OnEnd, Patched, PeerMsg, new_etag};
use crate::rtc::offer::{Fragment, Offer, Served};
use crate::rtc::viewer::{Params, Viewer};
use crate::rtc::worker::Joining;
use crate::session::{JoinError, Kind, Source};

pub const SDP: &str = "application/sdp";
pub const TRICKLE: &str = "application/trickle-ice-sdpfrag";

/// Who a resource belongs to: its URL prefix and the scope its PATCH and DELETE need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A WHEP viewer (`/whep/...`).
    Viewer,
    /// A WHIP publisher (`/whip/...`).
    Publisher,
}

impl Role {
    fn scope(self) -> Scope {
        match self {
            Role::Viewer => Scope::View,
            Role::Publisher => Scope::Publish,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Role::Viewer => "WHEP",
            Role::Publisher => "WHIP",
        }
    }
}

/// A live WHEP or WHIP resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub session: String,
    pub role: Role,
    pub tx: Inbox,
}

/// All live resources by id, and why recent ones ended.
#[derive(Debug, Default)]
pub struct Resources {
    map: Mutex<HashMap<String, Resource>>,
    ended: Mutex<VecDeque<Ended>>,
}

/// A resource that ended, kept for a while so that its client can learn why: a peer ended
/// before ICE connected (its session failed, say) has no other way to tell its client.
#[derive(Debug)]
struct Ended {
    id: String,
    session: String,
    role: Role,
    at: Instant,
    reason: String,
}

/// Ended resources are remembered this long, and this many at most.
const ENDED_KEPT: Duration = Duration::from_secs(600);
const MAX_ENDED: usize = 1024;

impl Resources {
    pub fn get(&self, id: &str) -> Option<Resource> {
        self.map.lock().expect("not poisoned").get(id).cloned()
    }

    /// The resource `id` if it is `role`'s in `session` (else 404: the URL names no resource;
    /// the problem detail says why if it ended in the last ten minutes).
    pub fn find(&self, session: &str, id: &str, role: Role) -> Result<Resource, ApiError> {
        match self.get(id) {
            Some(r) if r.session == session && r.role == role => Ok(r),
            _ => Err(ApiError::NotFound(
                self.why_ended(session, id, role)
                    .unwrap_or_else(|| format!("no such {} resource", role.what())),
            )),
        }
    }

    fn why_ended(&self, session: &str, id: &str, role: Role) -> Option<String> {
        let ended = self.ended.lock().expect("not poisoned");
        let e = ended
            .iter()
            .rev()
            .find(|e| e.id == id && e.session == session && e.role == role)?;
        Some(format!(
            "this {} resource ended {} s ago: {}",
            role.what(),
            e.at.elapsed().as_secs(),
            e.reason
        ))
    }

    /// The peer of resource `id` ended for `reason`: it is gone, and the reason is kept.
    pub fn end(&self, id: &str, session: &str, role: Role, reason: &str) {
        self.remove(id);
        let mut ended = self.ended.lock().expect("not poisoned");
        while ended
            .front()
            .is_some_and(|e| ended.len() >= MAX_ENDED || e.at.elapsed() > ENDED_KEPT)
        {
            ended.pop_front();
        }
        ended.push_back(Ended {
            id: id.to_string(),
            session: session.to_string(),
            role,
            at: Instant::now(),
            reason: reason.to_string(),
        });
    }

    pub fn insert(&self, id: String, r: Resource) {
        self.map.lock().expect("not poisoned").insert(id, r);
    }

    pub fn remove(&self, id: &str) -> Option<Resource> {
        self.map.lock().expect("not poisoned").remove(id)
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every peer to close (shutdown).
    pub fn close_all(&self) {
        for r in self.map.lock().expect("not poisoned").values() {
            r.tx.try_send(PeerMsg::Close(Closed::Shutdown));
        }
    }
}

/// `GET`/`HEAD /whep/{session}`: 200, no content, `Content-Type: application/sdp`
/// (draft-ietf-wish-whep §4.1, §4.2). 404 for an unknown session.
pub async fn endpoint_get(State(s): State<Shared>, Path(session): Path<String>) -> Response {
    if s.sessions.get(&session).is_none() {
        return ApiError::NotFound(format!("no session named {session:?}")).into_response();
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    let wait = s.config.live.wait;
    let known = s.sessions.get(&name);
    if known.is_none() && !(wait && valid_session_name(&name)) {
        return Err(ApiError::NotFound(format!("no session named {name:?}")));
    }
    let grant = authorize(&s, &headers, &name, Scope::View)?;
    require_type(&headers, SDP)?;
    let offer = Offer::parse(&body)?.one_way("recvonly");
    // With `[live] wait`, a viewer may come before the first publisher: the name becomes a
    // live session waiting for one.
    let session = match known {
        Some(session) => session,
        None => s.sessions.live(&name)?,
    };
    let served = match session.kind {
        Kind::Vod => Served {
            video: VideoFormat::transcoded(session.spec.codec()),
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
    let answered = answer(&offer, plan, format, &s.cert, &s.port.candidates(), false)?;
    let id = random_id();
    let etag = new_etag();
    let at = s.workers.place();
    let on_end = register(&s, &name, &id, Role::Viewer, s.workers.inbox(at));
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
    Ok(created(
        &s,
        &headers,
        &format!("/whep/{name}/{id}"),
        &etag,
        answered.answer,
        grant.sub.as_deref(),
    ))
}

/// Registers a new resource `id` of `role` in `session` with the inbox its messages go to;
/// returns the callback that removes it when it ends.
pub fn register(s: &Shared, session: &str, id: &str, role: Role, tx: Inbox) -> OnEnd {
    s.resources.insert(
        id.to_string(),
        Resource {
            session: session.to_string(),
            role,
            tx,
        },
    );
    s.metrics.peers_created.fetch_add(1, Ordering::Relaxed);
    let state = s.clone();
    let id = id.to_string();
    let session = session.to_string();
    OnEnd(Box::new(move |reason: &str| {
        state.resources.end(&id, &session, role, reason);
    }))
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

/// `PATCH` a resource: trickle → 204; ICE restart → 200 with a fragment and a new ETag
/// (RFC 9725 §4.3, draft-ietf-wish-whep §4.5). The same for WHIP and WHEP resources.
pub async fn patch_resource(
    s: &Shared,
    name: &str,
    id: &str,
    role: Role,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let resource = s.resources.find(name, id, role)?;
    authorize(s, headers, name, role.scope())?;
    require_type(headers, TRICKLE)?;
    let fragment = Fragment::parse(body)?;
    // RFC 9725 §4.3.1: a PATCH without If-Match gets 428. `require_if_match = false` accepts
    // it, for browser clients that omit it on trickle PATCHes (whip-whep 1.2.0's WHEPClient).
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    if if_match.is_none() && s.config.require_if_match {
        return Err(ApiError::PreconditionRequired(
            "a PATCH needs If-Match with the ICE session's entity-tag (or \"*\" for an ICE \
             restart): RFC 9725 §4.3.1"
                .into(),
        ));
    }
    let gone = || ApiError::NotFound(format!("the {} resource has ended", role.what()));
    let (reply, rx) = oneshot::channel();
    let sent = resource
        .tx
        .send(PeerMsg::Patch {
            fragment,
            if_match,
            reply,
        })
        .await;
    if !sent {
        return Err(gone());
    }
    let patched = rx.await.map_err(|_| gone())??;
    Ok(match patched {
        Patched::Trickled => StatusCode::NO_CONTENT.into_response(),
        Patched::Restarted { fragment, etag } => {
            let mut resp = (StatusCode::OK, fragment).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(TRICKLE));
            h.insert(
                header::ETAG,
                HeaderValue::from_str(&etag).expect("hex is header-safe"),
            );
            resp
        }
    })
}

/// `DELETE` a resource: 200, and its peer is closed (RFC 9725 §4.2: OBS wants 200).
/// Entity-tags are ignored (RFC 9725 §4.3.1).
pub fn delete_resource(
    s: &Shared,
    name: &str,
    id: &str,
    role: Role,
    headers: &HeaderMap,
) -> Result<StatusCode, ApiError> {
    s.resources.find(name, id, role)?;
    authorize(s, headers, name, role.scope())?;
    if let Some(r) = s.resources.remove(id) {
        r.tx.try_send(PeerMsg::Close(Closed::Deleted));
        tracing::info!(session = %name, resource = %id, "{} resource deleted", role.what());
    }
    Ok(StatusCode::OK)
}

/// The headers of a 201 that created a resource: `Content-Type`, absolute `Location`, `ETag`,
/// `Accept-Patch` and the ICE servers' `Link`s (RFC 9725 §4.2).
pub fn created(
    s: &Shared,
    headers: &HeaderMap,
    path: &str,
    etag: &str,
    answer: String,
    sub: Option<&str>,
) -> Response {
    let location = format!("{}{path}", base_url(headers, s.config.http));
    let mut resp = (StatusCode::CREATED, answer).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("host was checked to be header-safe"),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex is header-safe"),
    );
    h.insert(
        HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(TRICKLE),
    );
    for link in ice_server_links(&s.config.ice_servers, sub) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(header::LINK, v);
        }
    }
    resp
}
