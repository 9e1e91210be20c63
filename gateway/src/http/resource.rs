//! What WHEP and WHIP resources share (RFC 9725 §4.2-4.3, draft-ietf-wish-whep §4.4-4.5):
//! the registry of live resources and why recent ones ended, the headers of the 201 that
//! creates one, and their PATCH (trickle ICE, ICE restart) and DELETE, which behave the same
//! for viewers and publishers.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use crate::auth::Scope;
use crate::cluster::Owner;
use crate::http::error::{NotFound, Placement};
use crate::http::headers::{SDP, TRICKLE};
use crate::http::{ApiError, Shared, authorize, ice_server_links, require_type};
use crate::rtc::ice::{Closed, Inbox, OnEnd, Patched, PeerMsg};
use crate::rtc::offer::Fragment;

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
    /// A viewer's video m-line index in its offer (the WHEP extensions' `mediaId`).
    pub video_index: Option<usize>,
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
            _ => Err(self
                .why_ended(session, id, role)
                .unwrap_or(NotFound::Resource(role.what()))
                .into()),
        }
    }

    fn why_ended(&self, session: &str, id: &str, role: Role) -> Option<NotFound> {
        let ended = self.ended.lock().expect("not poisoned");
        let e = ended
            .iter()
            .rev()
            .find(|e| e.id == id && e.session == session && e.role == role)?;
        Some(NotFound::Ended {
            what: role.what(),
            ago_s: e.at.elapsed().as_secs(),
            reason: e.reason.clone(),
        })
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

    /// Notes a viewer's video m-line index.
    pub fn set_video_index(&self, id: &str, index: Option<usize>) {
        if let Some(r) = self.map.lock().expect("not poisoned").get_mut(id) {
            r.video_index = index;
        }
    }

    pub fn remove(&self, id: &str) -> Option<Resource> {
        self.map.lock().expect("not poisoned").remove(id)
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("not poisoned").len()
    }

    /// Live viewers and publishers.
    pub fn counts(&self) -> (u64, u64) {
        let map = self.map.lock().expect("not poisoned");
        let viewers = map.values().filter(|r| r.role == Role::Viewer).count() as u64;
        (viewers, map.len() as u64 - viewers)
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

/// Registers a new resource `id` of `role` in `session` with the inbox its messages go to;
/// returns the callback that removes it when it ends.
pub fn register(s: &Shared, session: &str, id: &str, role: Role, tx: Inbox) -> OnEnd {
    s.resources.insert(
        id.to_string(),
        Resource {
            session: session.to_string(),
            role,
            tx,
            video_index: None,
        },
    );
    s.metrics.peers_created.fetch_add(1, Ordering::Relaxed);
    let state = s.clone();
    let id = id.to_string();
    let session = session.to_string();
    OnEnd(Box::new(move |reason: &str| {
        state.resources.end(&id, &session, role, reason);
        state.streams.forget(&id);
    }))
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
        return Err(ApiError::IfMatchRequired);
    }
    let gone = || ApiError::from(NotFound::EndedNow(role.what()));
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
        s.streams.forget(id);
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
    // In a cluster, the node's own URL: PATCH and DELETE come straight here, whichever node
    // the POST reached first.
    let location = format!("{}{path}", crate::http::api::own_url(s, headers));
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

/// In a cluster, where a POST for `session` goes if another node owns it: a 307 to the same
/// `path` on that node (RFC 9725 §4.5), made before any work; a 503 with a short `Retry-After`
/// for a VOD session on its way to another node (its node died). `claim`: the POST would make
/// the session here (a publish), so this node claims it unless another holds it.
pub async fn elsewhere(
    s: &Shared,
    session: &str,
    path: &str,
    claim: bool,
) -> Result<Option<Response>, ApiError> {
    let Some(cluster) = &s.cluster else {
        return Ok(None);
    };
    let owner = if claim {
        cluster.claim(session).await?
    } else {
        cluster.owner(session).await?
    };
    let Owner::There(node) = owner else {
        // A VOD session whose node is gone is about to be made again by another node.
        if !claim && cluster.moving(session).await? {
            return Err(Placement::Moving(session.to_string()).into());
        }
        return Ok(None);
    };
    let location = format!("{node}{path}");
    tracing::debug!(session, to = %node, "redirected to the owner");
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(|_| NotFound::Session(session.to_string()))?,
    );
    Ok(Some(resp))
}
