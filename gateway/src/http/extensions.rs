//! The WHEP core extensions a viewer's resource serves (`specs/whep-core-extensions.md`):
//! server-sent events (`urn:ietf:params:whep:ext:core:server-sent-events`: `POST …/sse` with
//! the event types wanted, 201 with the stream's URL, `GET` it as `text/event-stream`,
//! `DELETE` it) and video layer selection (`urn:ietf:params:whep:ext:core:layer`: `POST
//! …/layer` with a layer or limits, `DELETE` for automatic again).
//!
//! Owns the request rules and the events' JSON; the layer choice itself is the viewer's
//! (`rtc/viewer.rs`, reached through its worker like a PATCH), and the session's state is
//! read, never changed. An event stream's URL is a capability (a browser's `EventSource`
//! cannot send a token): unguessable, and gone with its resource.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::auth::Scope;
use crate::http::error::NotFound;
use crate::http::resource::Role;
use crate::http::{ApiError, Shared, authorize};
use crate::ids::random_id;
use crate::rtc::ice::PeerMsg;
use crate::rtc::layering::Wish;
use crate::rtc::viewer::LayerError;
use crate::session::Session;

/// The extensions' link relations.
pub const SSE_REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";
pub const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";
/// The event types served, as advertised (no spaces: clients split on ",").
pub const EVENTS: [&str; 5] = ["active", "inactive", "layers", "reconnect", "viewercount"];
/// Event streams one resource may have.
const MAX_STREAMS: usize = 8;
/// How often a stream looks at the session (its events are at most this late).
const TICK: Duration = Duration::from_millis(250);
/// `layers` is sent when it changed, at most this often (bitrates move every second).
const LAYERS_EVERY: Duration = Duration::from_secs(1);

/// Why an extension request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ExtError {
    /// 400: the body is not what the extension takes.
    #[error("{0}")]
    BadRequest(String),
    /// 400: event types that are not served (the spec's MUST).
    #[error("unsupported event types {0:?}; this resource serves {EVENTS:?}")]
    UnknownEvents(Vec<String>),
    /// 429: too many event streams on one resource.
    #[error("this resource has its maximum of {MAX_STREAMS} event streams; DELETE one first")]
    TooManyStreams,
    /// 409: nothing to choose from.
    #[error("{0}")]
    NoLayers(String),
    /// 422: a layer or media section that is not there.
    #[error("{0}")]
    Unknown(String),
}

impl ExtError {
    pub fn status(&self) -> StatusCode {
        match self {
            ExtError::BadRequest(_) | ExtError::UnknownEvents(_) => StatusCode::BAD_REQUEST,
            ExtError::TooManyStreams => StatusCode::TOO_MANY_REQUESTS,
            ExtError::NoLayers(_) => StatusCode::CONFLICT,
            ExtError::Unknown(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// The event streams of every viewer resource.
#[derive(Debug, Default)]
pub struct EventStreams {
    map: Mutex<HashMap<String, StreamDef>>,
}

/// One event stream: whose, and which event types it wants.
#[derive(Debug, Clone)]
struct StreamDef {
    session: String,
    resource: String,
    types: Vec<String>,
    /// The WHEP endpoint as the player reached it (`reconnect` sends it back there).
    endpoint: String,
}

impl EventStreams {
    /// Forgets the streams of resource `id`, which ended (the spec: they go with it).
    pub fn forget(&self, id: &str) {
        self.map
            .lock()
            .expect("not poisoned")
            .retain(|_, d| d.resource != id);
    }

    fn get(&self, id: &str) -> Option<StreamDef> {
        self.map.lock().expect("not poisoned").get(id).cloned()
    }
}

/// The `Link`s a viewer's 201 carries for the extensions, absolute like its `Location`.
pub fn links(resource_url: &str) -> [String; 2] {
    [
        format!(
            "<{resource_url}/sse>; rel=\"{SSE_REL}\"; events=\"{}\"",
            EVENTS.join(",")
        ),
        format!("<{resource_url}/layer>; rel=\"{LAYER_REL}\""),
    ]
}

/// The viewer resource `id` of `session` (else 404 with why), with its token checked.
fn viewer(
    s: &Shared,
    session: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<crate::http::resource::Resource, ApiError> {
    let r = s.resources.find(session, id, Role::Viewer)?;
    authorize(s, headers, session, Scope::View)?;
    Ok(r)
}

/// `POST /whep/{session}/{resource}/sse`: a new event stream for the event types in the body
/// (a JSON array; none or empty: every type served), 201 with its URL in `Location`.
pub async fn sse_create(
    State(s): State<Shared>,
    Path((session, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    viewer(&s, &session, &id, &headers)?;
    let types = event_types(&body)?;
    let stream = random_id();
    let base = crate::http::api::own_url(&s, &headers);
    {
        let mut map = s.streams.map.lock().expect("not poisoned");
        if map.values().filter(|d| d.resource == id).count() >= MAX_STREAMS {
            return Err(ExtError::TooManyStreams.into());
        }
        map.insert(
            stream.clone(),
            StreamDef {
                session: session.clone(),
                resource: id.clone(),
                types: types.clone(),
                endpoint: format!("{base}/whep/{session}"),
            },
        );
    }
    tracing::info!(%session, resource = %id, ?types, "event stream created");
    let location = format!("{base}/whep/{session}/{id}/sse/{stream}");
    let mut resp = StatusCode::CREATED.into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("host was checked to be header-safe"),
    );
    Ok(resp)
}

/// The event types a stream POST asks for: a JSON array of served type names.
fn event_types(body: &[u8]) -> Result<Vec<String>, ExtError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(EVENTS.iter().map(|e| e.to_string()).collect());
    }
    let asked: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        ExtError::BadRequest(format!("the body is a JSON array of event types: {e}"))
    })?;
    let mut types = Vec::new();
    let mut unknown = Vec::new();
    for v in asked {
        match v.as_str() {
            Some(t) if EVENTS.contains(&t) => {
                if !types.iter().any(|x| x == t) {
                    types.push(t.to_string());
                }
            }
            Some(t) => unknown.push(t.to_string()),
            None => unknown.push(v.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(ExtError::UnknownEvents(unknown));
    }
    if types.is_empty() {
        types = EVENTS.iter().map(|e| e.to_string()).collect();
    }
    Ok(types)
}

/// `GET /whep/{session}/{resource}/sse/{stream}`: the event stream (`text/event-stream`),
/// until the resource or the stream is gone. No token: the URL is the capability.
pub async fn sse_get(
    State(s): State<Shared>,
    Path((session, id, stream)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let def = s
        .streams
        .get(&stream)
        .filter(|d| d.session == session && d.resource == id)
        .ok_or(NotFound::EventStream)?;
    s.resources.find(&session, &id, Role::Viewer)?;
    let sess = s
        .sessions
        .get(&session)
        .ok_or_else(|| NotFound::Session(session.clone()))?;
    let video_index = s
        .resources
        .get(&id)
        .and_then(|r| r.video_index)
        .unwrap_or(0);
    let endpoint = def.endpoint.clone();
    let state = Stream {
        s: s.clone(),
        session: sess,
        stream,
        def,
        video_index,
        endpoint,
        active: None,
        viewers: None,
        layers: None,
        layers_at: None,
        queue: VecDeque::new(),
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        let e = st.next().await?;
        Some((Ok::<_, Infallible>(e), st))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `DELETE /whep/{session}/{resource}/sse/{stream}`: 200; the stream ends, and a later `GET`
/// of it gets 404.
pub async fn sse_delete(
    State(s): State<Shared>,
    Path((session, id, stream)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    viewer(&s, &session, &id, &headers)?;
    let mut map = s.streams.map.lock().expect("not poisoned");
    match map.get(&stream) {
        Some(d) if d.session == session && d.resource == id => {
            map.remove(&stream);
            Ok(StatusCode::OK)
        }
        _ => Err(NotFound::EventStream.into()),
    }
}

/// One open event stream's state.
struct Stream {
    s: Shared,
    session: Arc<Session>,
    stream: String,
    def: StreamDef,
    video_index: usize,
    /// The endpoint a `reconnect` sends the player back to.
    endpoint: String,
    /// What was last said (`None`: nothing yet).
    active: Option<bool>,
    viewers: Option<usize>,
    layers: Option<String>,
    layers_at: Option<tokio::time::Instant>,
    queue: VecDeque<SseEvent>,
    ended: bool,
}

impl Stream {
    fn wants(&self, t: &str) -> bool {
        self.def.types.iter().any(|x| x == t)
    }

    /// The next event, waiting for one; `None` ends the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            self.look();
            if self.queue.is_empty() && !self.ended {
                tokio::time::sleep(TICK).await;
            }
        }
    }

    /// Queues what changed since the last look.
    fn look(&mut self) {
        let alive = self.s.streams.get(&self.stream).is_some()
            && self.s.resources.get(&self.def.resource).is_some();
        if !alive {
            self.ended = true;
            return;
        }
        if self.s.draining.load(Ordering::Relaxed) {
            // The gateway is going away: the player is to start again (on another node).
            if self.wants("reconnect") {
                self.push("reconnect", json!({ "url": self.endpoint }));
            }
            self.ended = true;
            return;
        }
        let active = self.session.has_media();
        // No first "inactive": only a change to it is news (the spec's MUST NOT).
        if self.active != Some(active) && (active || self.active.is_some()) {
            let t = if active { "active" } else { "inactive" };
            if self.wants(t) {
                self.push(t, json!({}));
            }
        }
        self.active = Some(active);
        let viewers = self.session.viewer_count();
        if self.viewers != Some(viewers) && self.wants("viewercount") {
            self.push("viewercount", json!({ "viewercount": viewers }));
        }
        self.viewers = Some(viewers);
        let now = tokio::time::Instant::now();
        if self.wants("layers") && self.layers_at.is_none_or(|t| now >= t + LAYERS_EVERY) {
            let layers = layers_event(&self.session, self.video_index);
            let text = layers.to_string();
            if layers.as_object().is_some_and(|m| !m.is_empty())
                && self.layers.as_deref() != Some(text.as_str())
            {
                self.push("layers", layers);
                self.layers = Some(text);
                self.layers_at = Some(now);
            }
        }
    }

    fn push(&mut self, event: &str, data: Value) {
        // Compact JSON has no newline: one `data:` line, as the spec requires.
        self.queue
            .push_back(SseEvent::default().event(event).data(data.to_string()));
    }
}

/// The `layers` event's data: the video section's layers, lowest first, each with its `rid`,
/// `spatialLayerId` (its place in that order), size and `bitrate` (0: not sending).
fn layers_event(session: &Session, video_index: usize) -> Value {
    let infos = session.layer_infos();
    if infos.is_empty() {
        return json!({});
    }
    let layers: Vec<Value> = infos
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut m = Map::new();
            m.insert("rid".into(), json!(l.rid));
            m.insert("spatialLayerId".into(), json!(i));
            m.insert("temporalLayerId".into(), json!(0));
            m.insert("bitrate".into(), json!(l.bitrate));
            if let (Some(w), Some(h)) = (l.width, l.height) {
                m.insert("width".into(), json!(w));
                m.insert("height".into(), json!(h));
            }
            Value::Object(m)
        })
        .collect();
    json!({ video_index.to_string(): layers })
}

/// `POST /whep/{session}/{resource}/layer`: the viewer's layer (`rid` or `spatialLayerId`)
/// or limits (`maxSpatialLayerId`, `maxWidth`, `maxHeight`); `{}` is automatic. 200 with the
/// layers and the viewer's choice.
pub async fn layer_select(
    State(s): State<Shared>,
    Path((session, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let resource = viewer(&s, &session, &id, &headers)?;
    // The spec's examples say `application/sjon` and write JSON5; the body is what counts.
    let asked: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        _ if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
        _ => {
            return Err(ExtError::BadRequest(
                "the body is a JSON object: mediaId, rid, spatialLayerId, maxSpatialLayerId, \
                 maxWidth, maxHeight"
                    .into(),
            )
            .into());
        }
    };
    let sess = s
        .sessions
        .get(&session)
        .ok_or_else(|| NotFound::Session(session.clone()))?;
    let wish = wish_of(&asked, &sess, resource.video_index.unwrap_or(0))?;
    select(&resource, wish).await
}

/// `DELETE /whep/{session}/{resource}/layer`: automatic again (whip-whep's `unselectLayer`).
pub async fn layer_reset(
    State(s): State<Shared>,
    Path((session, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resource = viewer(&s, &session, &id, &headers)?;
    select(&resource, Wish::default()).await
}

async fn select(
    resource: &crate::http::resource::Resource,
    wish: Wish,
) -> Result<Response, ApiError> {
    let gone = || ApiError::from(NotFound::EndedNow("WHEP"));
    let (reply, rx) = oneshot::channel();
    if !resource.tx.send(PeerMsg::Layer { wish, reply }).await {
        return Err(gone());
    }
    let fields = rx.await.map_err(|_| gone())?.map_err(|e| match e {
        LayerError::NoLayers => ExtError::NoLayers(e.to_string()).into(),
        LayerError::Unknown(..) => ExtError::Unknown(e.to_string()).into(),
        LayerError::Gone => gone(),
    })?;
    Ok(axum::Json(Value::Object(fields)).into_response())
}

/// What a layer request asks, as the viewer's wish: spatial layer numbers are places in the
/// order of quality (as the `layers` event numbers them).
fn wish_of(
    asked: &Map<String, Value>,
    session: &Session,
    video_index: usize,
) -> Result<Wish, ExtError> {
    let number = |k: &str| -> Result<Option<u64>, ExtError> {
        match asked.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ExtError::BadRequest(format!("{k} is a number, 0 or more"))),
        }
    };
    match asked.get("mediaId") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let m = v
                .as_str()
                .map(str::to_string)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
                .ok_or_else(|| ExtError::BadRequest("mediaId is an m-line index".into()))?;
            if m != video_index.to_string() {
                return Err(ExtError::Unknown(format!(
                    "mediaId {m} is not this viewer's video (its video is m-line {video_index})"
                )));
            }
        }
    }
    let mut wish = Wish::default();
    if let Some(v) = asked.get("rid").filter(|v| !v.is_null()) {
        wish.rid = Some(
            v.as_str()
                .ok_or_else(|| ExtError::BadRequest("rid is a string".into()))?
                .to_string(),
        );
    }
    // Places in the order of quality, as the `layers` event numbers them.
    let layers = session.layer_infos();
    let place = |n: u64| -> Result<&crate::session::layers::LayerInfo, ExtError> {
        layers.get(n as usize).ok_or_else(|| {
            ExtError::Unknown(format!(
                "no spatial layer {n}; there are {} (0 is the lowest)",
                layers.len()
            ))
        })
    };
    if let Some(n) = number("spatialLayerId")? {
        wish.rid = Some(place(n)?.rid.clone());
    }
    if let Some(n) = number("maxSpatialLayerId")? {
        wish.max_height = place(n)?.height;
    }
    for (k, slot) in [
        ("maxWidth", &mut wish.max_width),
        ("maxHeight", &mut wish.max_height),
    ] {
        if let Some(n) = number(k)? {
            *slot = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    // Temporal layers: every layer has one; asking for 0 (or a limit) is no constraint.
    number("temporalLayerId")?;
    number("maxTemporalLayerId")?;
    Ok(wish)
}
