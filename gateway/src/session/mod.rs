//! Sessions: the registry, and one task per session that runs its transcoder just in time.
//!
//! Owns a VOD session's lifecycle (DESIGN.md "Sessions"): the transcoder starts when the first
//! viewer joins, stops after an idle timeout with none, is restarted a bounded number of times
//! when it dies, and turns failures into a state the API shows and the viewers see. Keyframe
//! requests from viewers are throttled here (one per 500 ms per session). The source's state
//! is published on a `watch` channel that the fan-out workers follow; the session task never
//! touches a peer. HTTP status codes are not chosen here (see `http/mod.rs`).
//!
//! # Layout
//! - `mod.rs`: the registry, the session handle, the VOD and live session tasks.
//! - `slots.rs`: who holds one of `max_transcoders` slots; idle holders give way.
//! - `transcoder.rs`: one `wisp-transcoder` child: spawn with the ring, commands, events, stop.
//! - `fanout.rs`: per-viewer payload type, sequence and timestamp rebasing, keyframe start.
//! - `layers.rs`: a source's video layers (simulcast, a VOD ladder) and what is known of each.
//! - `news.rs`: what a session tells its viewers' control channels: events and refusals.

pub mod fanout;
pub mod layers;
pub mod news;
pub mod slots;
pub mod transcoder;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rtp_ring::Ring;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Limits, SessionSpec, VideoCodec, VideoFormat};
use crate::metrics::Metrics;
use crate::session::news::{Code, Refusal};
use crate::session::slots::TranscoderSlots;
use crate::session::transcoder::{Command, Event, TranscoderProcess};
use wisp_control::{InputInfo, PlayState};

/// The size of every session ring (a VOD or ingest transcoder's, a WHIP publisher's): about
/// 10 s of 8 Mb/s video at 1536-byte slots.
pub const RING_BYTES: u64 = 16 << 20;
/// Recent records whose payloads viewers share (a few seconds of video at 2 Mb/s).
const PAYLOAD_CACHE_SLOTS: usize = 2048;
/// At most one keyframe request to a source per this interval.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// Unexpected exits tolerated in `RESTART_WINDOW` before the session is marked failed.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long after its first, second and third exit in the window a transcoder is restarted:
/// at once after one crash, with time for a passing fault (an input URL that is briefly
/// unreachable) to clear after more.
const RESTART_DELAYS: [Duration; MAX_RESTARTS] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(1500),
];
/// Grace for `stop` then SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(4);
/// Viewers' commands kept while a transcoder starts; more are refused as `unavailable`.
const MAX_HELD: usize = 64;
/// Events a slow viewer may fall behind by before it skips some (positions mostly).
const EVENT_BACKLOG: usize = 256;

/// What viewers can read right now.
#[derive(Debug, Clone)]
pub enum Source {
    /// No transcoder running (no viewers yet, or idle).
    Idle,
    /// Started, not ready yet.
    Starting,
    /// Producing into this ring. A new `generation` means a new source (restart): viewers
    /// take a new cursor and wait for a keyframe.
    Ready(Arc<ReadySource>),
    /// Gave up: the reason, for the API and the viewers.
    Failed(String),
}

#[derive(Debug)]
pub struct ReadySource {
    pub ring: Ring,
    /// Payloads shared by the viewers of this source.
    pub payloads: crate::session::fanout::PayloadCache,
    pub generation: u64,
    /// The video track (with layers, the first layer's).
    pub video_track: Option<u8>,
    pub audio_track: Option<u8>,
    /// The video layers, each on its own track, when there are several (simulcast, a VOD
    /// ladder); empty for one video track.
    pub layers: Vec<layers::Layer>,
    /// The main picture in other codecs (a VOD session's `codecs`), each on its track, for
    /// viewers that do not take the main one's.
    pub alternates: Vec<(VideoFormat, u8)>,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration: Option<f64>,
    /// What the video track carries (a live session's is the publisher's).
    pub video_format: VideoFormat,
    /// What its records' capture times are, and so which latency they measure.
    pub capture: Capture,
}

impl ReadySource {
    /// Whether `track` carries video (the video track, or one of the layers).
    pub fn is_video(&self, track: u8) -> bool {
        Some(track) == self.video_track
            || self.layers.iter().any(|l| l.track == track)
            || self.alternates.iter().any(|a| a.1 == track)
    }

    /// Whether a viewer that negotiated `format` gets the main video (its layers, if any).
    pub fn main_for(&self, format: &VideoFormat) -> bool {
        format.plays(&self.video_format)
    }

    /// The video track for a viewer that negotiated `format`: the main one, or the main
    /// picture in its codec; `None` if the source has no video it plays.
    pub fn track_for(&self, format: &VideoFormat) -> Option<u8> {
        if self.main_for(format) {
            return self.video_track;
        }
        self.alternates
            .iter()
            .find(|a| format.plays(&a.0))
            .map(|a| a.1)
    }

    /// The layer on `track`.
    pub fn layer(&self, track: u8) -> Option<&layers::Layer> {
        self.layers.iter().find(|l| l.track == track)
    }

    /// The video track one-track readers (recordings, HLS) take: the best layer sending now
    /// (any layer's best, before one sends). They keep the track they started with.
    pub fn main_video_track(&self) -> Option<u8> {
        let now_us = rtp_ring::now_us();
        self.layers
            .iter()
            .filter(|l| l.active(now_us))
            .max_by_key(|l| l.rank())
            .map(|l| l.track)
            .or_else(|| layers::top_track(&self.layers))
            .or(self.video_track)
    }
}

/// A transcoder's video tracks in codecs other than the main one's (`--alt-codec`).
fn alternates(tracks: &[wisp_control::TrackInfo], main: VideoCodec) -> Vec<(VideoFormat, u8)> {
    tracks
        .iter()
        .filter(|t| t.kind == "video")
        .filter_map(|t| {
            let codec = VideoCodec::from_name(&t.codec).filter(|c| *c != main)?;
            Some((VideoFormat::transcoded(codec), t.index))
        })
        .collect()
}

/// A transcoder's renditions as layers, when it encodes more than one (each always
/// sending: the transcoder keeps them all going).
fn ladder(tracks: &[wisp_control::TrackInfo]) -> Vec<layers::Layer> {
    let renditions: Vec<layers::Layer> = tracks
        .iter()
        .filter(|t| t.kind == "video")
        .filter_map(|t| {
            let l = t.layer.as_ref()?;
            Some(
                layers::Layer::with(t.index, l.rid.clone(), l.width, l.height, l.bitrate)
                    .always_active(),
            )
        })
        .collect();
    if renditions.len() > 1 {
        renditions
    } else {
        Vec::new()
    }
}

/// What the capture time of a source's records says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// When a transcoder wrote the record (VOD and pulled sources): forwarding latency.
    Written,
    /// When its datagram came from a WHIP publisher: forwarding latency, and for a video
    /// frame's last packet, ingest latency.
    Received,
    /// When the input it was made from reached the gateway (RTMP, SRT; the transcoder's
    /// `--timed-input`): ingest latency.
    Ingested,
}

impl Source {
    pub fn state_name(&self) -> &'static str {
        match self {
            Source::Idle => "idle",
            Source::Starting => "starting",
            Source::Ready(_) => "running",
            Source::Failed(_) => "failed",
        }
    }
}

/// Messages to a session task.
#[derive(Debug)]
enum Msg {
    /// A viewer, or with `egress` an egress, came or left: both keep the source running.
    Join {
        egress: bool,
    },
    Leave {
        egress: bool,
    },
    /// A keyframe for this video track (a layer), or for whichever the source sends.
    KeyframeRequest(Option<u8>),
    Control {
        id: Value,
        command: Command,
        reply: ReplyTo,
    },
    /// A live session's publisher is connected and writes into this source's ring; keyframe
    /// requests (for a track, or any) go to `keyframes`.
    Published {
        source: Arc<ReadySource>,
        keyframes: mpsc::UnboundedSender<Option<u8>>,
    },
    /// The publisher with this generation is gone.
    Unpublished {
        generation: u64,
    },
    /// The session named `taker` took this session's transcoder slot (held under `lease`)
    /// while its transcoder idled: stop it.
    GiveWay {
        taker: String,
        lease: u64,
    },
}

/// How a live session's publisher reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ingest {
    /// WebRTC (a WHIP publisher): its RTP goes into the ring as it is.
    Whip,
    /// RTMP (OBS, FFmpeg, encoders), transcoded into the ring.
    Rtmp,
    /// SRT with MPEG-TS, transcoded into the ring.
    Srt,
    /// A URL the gateway's transcoder pulls while the session has viewers.
    Pull,
    /// Another node of the cluster, which holds the session: this node relays it over WHEP
    /// to its own viewers (`ingest/relay.rs`).
    Relay,
}

/// Where a session's media comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A transcoder started just in time for viewers.
    Vod,
    /// A WHIP publisher.
    Live,
}

/// Where a command's outcome goes: the channel of the viewer's worker, and the viewer's key
/// on it.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub tx: mpsc::UnboundedSender<(u64, ControlReply)>,
    pub viewer: u64,
}

impl ReplyTo {
    /// Sends the outcome; false if the viewer's worker is gone.
    pub fn send(&self, reply: ControlReply) -> bool {
        self.tx.send((self.viewer, reply)).is_ok()
    }
}

/// The outcome of a viewer's command, for its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlReply {
    pub id: Value,
    pub result: Result<(), Refusal>,
}

/// The session's shared playback, as its viewers see it (DESIGN.md: every viewer of a session
/// sees the same frame).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Playback {
    /// `None` until the source reported a state.
    pub state: Option<PlayState>,
    /// Seconds.
    pub position: f64,
    /// Seconds; `None` for endless sources.
    pub duration: Option<f64>,
    pub fps: Option<f64>,
    pub inputs: Vec<InputInfo>,
    pub audio_input: Option<String>,
    pub audio_channels: Vec<u32>,
}

impl Playback {
    /// The `state` event for this playback, if there is a state yet.
    pub fn state_event(&self) -> Option<String> {
        Some(news::event(
            "state",
            json!({
                "state": self.state?,
                "position": news::seconds(self.position),
                "duration": self.duration.map(news::seconds),
                "fps": self.fps,
            }),
        ))
    }
}

/// A handle on a session, shared by HTTP handlers and its viewers.
#[derive(Debug)]
pub struct Session {
    /// Unique for the gateway's life (a name may be reused after a session is removed).
    id: u64,
    pub name: String,
    pub kind: Kind,
    /// A VOD session's inputs and encoding (empty for a live session).
    pub spec: SessionSpec,
    pub created: SystemTime,
    tx: mpsc::UnboundedSender<Msg>,
    source: watch::Receiver<Source>,
    viewers: AtomicUsize,
    /// Egresses reading the session (recordings, ...): consumers that are not viewers.
    egresses: AtomicUsize,
    restarts: AtomicUsize,
    last_error: Mutex<Option<String>>,
    pid: AtomicUsize,
    cancel: CancellationToken,
    /// Events for every viewer (JSON text, as sent on the control channel).
    events: broadcast::Sender<Arc<str>>,
    playback: Mutex<Playback>,
    /// A live session's publisher: its resource id and generation, while one holds the claim.
    publisher: Mutex<Option<(String, u64)>>,
    /// Publishers so far (each one's source is a new generation for the viewers).
    publishes: std::sync::atomic::AtomicU64,
    /// How the current (or last) publisher reached the gateway.
    ingest: Mutex<Option<Ingest>>,
    /// The current publisher's simulcast layers, if it sends simulcast.
    simulcast: Mutex<Option<SimulcastInfo>>,
    /// The current publisher's bits/s over the last second (0: none measured).
    ingest_bps: std::sync::atomic::AtomicU64,
    /// What the source sends, as its transcoder described it.
    source_desc: Mutex<Option<SourceDesc>>,
    /// The current publisher's picture, width << 32 | height (0: not seen yet).
    picture_size: std::sync::atomic::AtomicU64,
    /// The gateway's transcoder slots (a VOD session holds one while it has viewers or a
    /// running transcoder).
    slots: Arc<TranscoderSlots>,
    /// Viewers and egresses, for whoever must act on its changes (a pulled session's source).
    viewers_tx: watch::Sender<usize>,
    /// An edge relay's link to the session's node, while it runs.
    relay: Mutex<Option<RelayLink>>,
    /// Each viewer's layer, by resource id, while the source has layers.
    viewer_layers: Mutex<BTreeMap<String, ViewerLayer>>,
}

/// How a relayed session (`ingest/relay.rs`) reaches the node that holds it.
#[derive(Debug, Clone)]
pub struct RelayLink {
    /// That node's URL.
    pub owner: String,
    /// Viewers' commands, sent on over the relay's control channel.
    pub commands: mpsc::UnboundedSender<Forwarded>,
    /// Viewers' chat (`chat` events), sent on the same way.
    pub chats: mpsc::UnboundedSender<String>,
    /// What the session's node last said of its playback (its `status` reply's fields):
    /// this node's viewers get it as their `status`.
    pub status: Map<String, Value>,
}

/// A viewer's command on its way to the session's node.
#[derive(Debug)]
pub struct Forwarded {
    pub id: Value,
    pub command: Command,
    pub reply: ReplyTo,
}

/// A live session's one publisher slot, held by the publisher's task; dropping it frees the
/// slot and tells the session (viewers see `publisher` `inactive` and wait).
#[derive(Debug)]
pub struct PublisherClaim {
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    pub generation: u64,
}

impl PublisherClaim {
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The publisher is connected: viewers read `source` from now on.
    pub fn announce(&self, source: Arc<ReadySource>, keyframes: mpsc::UnboundedSender<Option<u8>>) {
        let _ = self.session.tx.send(Msg::Published { source, keyframes });
    }
}

impl Drop for PublisherClaim {
    fn drop(&mut self) {
        self.metrics.publishers.fetch_sub(1, Ordering::Relaxed);
        self.session.ingest_bps.store(0, Ordering::Relaxed);
        self.session.picture_size.store(0, Ordering::Relaxed);
        self.session.set_source_desc(None);
        let mut p = self.session.publisher.lock().expect("not poisoned");
        if p.as_ref().is_some_and(|(_, g)| *g == self.generation) {
            *p = None;
        }
        let _ = self.session.tx.send(Msg::Unpublished {
            generation: self.generation,
        });
    }
}

/// Why a publisher cannot take a session. The HTTP layer picks 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("session {0:?} already has a publisher; DELETE its resource first")]
    Busy(String),
    #[error("session {0:?} plays files (VOD); publish to another name")]
    NotLive(String),
    #[error("session {0:?} pulls its media from a URL; publish to another name")]
    Pulled(String),
    #[error("the session is stopping")]
    Stopping,
    #[error("the gateway has its maximum of {0} publishers")]
    GatewayFull(usize),
}

/// A viewer's place in a session; leaving (drop) is counted and tells the session.
#[derive(Debug)]
pub struct ViewerSlot {
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    /// An egress's slot: not a viewer in the counts, limits and events.
    egress: bool,
    /// The session's source as of the join.
    source: watch::Receiver<Source>,
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        if self.session.kind == Kind::Vod {
            self.session.slots.leave(self.session.id, Instant::now());
        }
        if self.egress {
            self.session.egresses.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.session.viewers.fetch_sub(1, Ordering::Relaxed);
            self.metrics.viewers.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.session.tx.send(Msg::Leave {
            egress: self.egress,
        });
        self.session
            .viewers_tx
            .send_replace(self.session.consumers());
    }
}

impl ViewerSlot {
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The session's source, with what changed since the join still unseen.
    pub fn source(&self) -> watch::Receiver<Source> {
        self.source.clone()
    }
}

/// Why a viewer cannot join. Capacity is ours; the HTTP layer picks 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("this session has its maximum of {0} viewers")]
    SessionFull(usize),
    #[error("the gateway has its maximum of {0} viewers")]
    GatewayFull(usize),
    #[error("the gateway runs its maximum of {0} transcoders")]
    NoTranscoder(usize),
    #[error("the session is stopping")]
    Stopping,
    #[error("live session {0:?} has no publisher yet; try again when it publishes")]
    NoPublisher(String),
}

/// What `GET /api/sessions` shows of a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub name: String,
    pub kind: Kind,
    pub state: &'static str,
    pub viewers: usize,
    /// Egresses reading the session (recordings, ...).
    #[serde(skip_serializing_if = "is_zero")]
    pub egresses: usize,
    pub uptime_seconds: u64,
    pub restarts: usize,
    /// A VOD session's media position, seconds (once its transcoder reported one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<f64>,
    /// A VOD session's media duration, seconds (`None` for endless or unknown inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcoder_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// What the video track carries once media flows: "H264 (constrained baseline)",
    /// "H264 (high)" (a live session's publisher decides), "VP8". Viewers need its profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
    /// A live session's publisher's protocol: `whip`, `rtmp`, `srt`, `pull`, or `relay` (from
    /// the node in `relayed_from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<Ingest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed_from: Option<String>,
    /// A live session whose publisher sends simulcast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<SimulcastInfo>,
    /// The source's video layers (simulcast, a VOD ladder), lowest quality first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<layers::LayerInfo>,
    /// Each viewer's layer and bandwidth estimate, when the source has layers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub viewer_layers: Vec<ViewerLayer>,
    /// A live session's publisher's bits/s over the last second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest_bitrate: Option<u64>,
    /// What the source sends (an RTMP/SRT publisher's or a file's codecs, size and rate),
    /// before the transcoder makes it what viewers get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceDesc>,
    pub spec: SessionSpec,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The description a `ready` event gives, if it gives one.
pub fn source_desc(video: Option<String>, audio: Option<String>) -> Option<SourceDesc> {
    (video.is_some() || audio.is_some()).then_some(SourceDesc { video, audio })
}

/// A source's streams as its transcoder named them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceDesc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
}

/// The layer one viewer gets, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewerLayer {
    /// The viewer's resource id.
    pub viewer: String,
    /// Its layer's RID.
    pub layer: String,
    /// Pinned to that layer by the viewer, rather than chosen.
    pub pinned: bool,
    /// Its send bandwidth estimate, bits/s (none without transport-wide CC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<u64>,
    /// Layer switches so far.
    pub switches: u64,
}

/// A simulcast publisher's layers (what each carries is in [`SessionInfo::layers`]).
#[derive(Debug, Clone, Serialize)]
pub struct SimulcastInfo {
    /// The layers' RIDs, as offered.
    pub layers: Vec<String>,
}

impl SimulcastInfo {
    pub fn new(layers: Vec<String>) -> Self {
        Self { layers }
    }
}

impl Session {
    pub fn source(&self) -> watch::Receiver<Source> {
        self.source.clone()
    }

    /// Takes a viewer slot within `limits`, and tells the session (which starts its
    /// transcoder if it is not running). With `wait`, a live session's viewer may join before
    /// its publisher.
    pub fn join(
        self: &Arc<Self>,
        limits: &Limits,
        wait: bool,
        metrics: &Arc<Metrics>,
    ) -> Result<ViewerSlot, JoinError> {
        if self.cancel.is_cancelled() {
            return Err(JoinError::Stopping);
        }
        let running = matches!(&*self.source.borrow(), Source::Starting | Source::Ready(_));
        // A pulled session's viewer is what starts its source.
        if self.kind == Kind::Live && !running && !wait && !self.pulled() {
            return Err(JoinError::NoPublisher(self.name.clone()));
        }
        if self.viewers.fetch_add(1, Ordering::Relaxed) >= limits.max_viewers_per_session {
            self.viewers.fetch_sub(1, Ordering::Relaxed);
            return Err(JoinError::SessionFull(limits.max_viewers_per_session));
        }
        if metrics.viewers.fetch_add(1, Ordering::Relaxed) >= limits.max_viewers {
            metrics.viewers.fetch_sub(1, Ordering::Relaxed);
            self.viewers.fetch_sub(1, Ordering::Relaxed);
            return Err(JoinError::GatewayFull(limits.max_viewers));
        }
        // Last, so that a viewer refused above takes no slot.
        if !self.admit_transcoder() {
            metrics.viewers.fetch_sub(1, Ordering::Relaxed);
            self.viewers.fetch_sub(1, Ordering::Relaxed);
            return Err(JoinError::NoTranscoder(self.slots.max()));
        }
        Ok(self.slot(metrics, false))
    }

    /// Takes a slot for an egress (a recording, ...): like a viewer's, it starts the
    /// session's transcoder and keeps it running, but it is not counted or limited as a
    /// viewer, and a live session's egress may wait for a publisher.
    pub fn join_egress(self: &Arc<Self>, metrics: &Arc<Metrics>) -> Result<ViewerSlot, JoinError> {
        if self.cancel.is_cancelled() {
            return Err(JoinError::Stopping);
        }
        if !self.admit_transcoder() {
            return Err(JoinError::NoTranscoder(self.slots.max()));
        }
        self.egresses.fetch_add(1, Ordering::Relaxed);
        Ok(self.slot(metrics, true))
    }

    /// A VOD session needs a transcoder slot for its consumers (an idle transcoder elsewhere
    /// may give its own); a live one needs none.
    fn admit_transcoder(self: &Arc<Self>) -> bool {
        let tx = self.tx.clone();
        self.kind == Kind::Live
            || self.slots.admit(self.id, &self.name, move |taker, lease| {
                let _ = tx.send(Msg::GiveWay {
                    taker: taker.to_string(),
                    lease,
                });
            })
    }

    /// The slot of a consumer already counted, and the session told of it.
    fn slot(self: &Arc<Self>, metrics: &Arc<Metrics>, egress: bool) -> ViewerSlot {
        // The consumer's view of the source starts here, before the session hears of the
        // join: a failure from before is history (this join restarts the transcoder), one
        // after is news to it however late its task starts.
        let mut source = self.source.clone();
        source.mark_unchanged();
        let _ = self.tx.send(Msg::Join { egress });
        self.viewers_tx.send_replace(self.consumers());
        ViewerSlot {
            session: self.clone(),
            metrics: metrics.clone(),
            egress,
            source,
        }
    }

    /// Viewers and egresses: what keeps the source running.
    fn consumers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed) + self.egresses.load(Ordering::Relaxed)
    }

    /// Takes the live session's publisher slot for resource `id`, within the gateway's
    /// `max_publishers`.
    pub fn claim_publisher(
        self: &Arc<Self>,
        id: &str,
        ingest: Ingest,
        max_publishers: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<PublisherClaim, PublishError> {
        if self.kind != Kind::Live {
            return Err(PublishError::NotLive(self.name.clone()));
        }
        if self.cancel.is_cancelled() {
            return Err(PublishError::Stopping);
        }
        if self.pulled() != (ingest == Ingest::Pull) {
            return Err(PublishError::Pulled(self.name.clone()));
        }
        let mut p = self.publisher.lock().expect("not poisoned");
        if p.is_some() {
            return Err(PublishError::Busy(self.name.clone()));
        }
        if metrics.publishers.fetch_add(1, Ordering::Relaxed) >= max_publishers {
            metrics.publishers.fetch_sub(1, Ordering::Relaxed);
            return Err(PublishError::GatewayFull(max_publishers));
        }
        let generation = self.publishes.fetch_add(1, Ordering::Relaxed) + 1;
        *p = Some((id.to_string(), generation));
        *self.ingest.lock().expect("not poisoned") = Some(ingest);
        Ok(PublisherClaim {
            session: self.clone(),
            metrics: metrics.clone(),
            generation,
        })
    }

    /// A viewer asks for a keyframe (PLI/FIR, or it just joined) of the video layer on
    /// `track`, or of whatever the source sends.
    pub fn request_keyframe(&self, track: Option<u8>) {
        let _ = self.tx.send(Msg::KeyframeRequest(track));
    }

    /// Unique for the gateway's life (a name may be reused after a session is removed).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Hands a viewer's command to the source; the outcome comes back on `reply`.
    pub fn control(&self, id: Value, command: Command, reply: ReplyTo) {
        let _ = self.tx.send(Msg::Control { id, command, reply });
    }

    /// Events for the viewers of this session, from now on.
    pub fn events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Sends an event to every viewer of the session.
    pub fn publish(&self, event: String) {
        let _ = self.events.send(event.into());
    }

    pub fn playback(&self) -> Playback {
        self.playback.lock().expect("not poisoned").clone()
    }

    /// Whether the source has media to send now (a live session: a publisher is on).
    pub fn has_media(&self) -> bool {
        matches!(*self.source.borrow(), Source::Ready(_))
    }

    pub fn viewer_count(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// The viewer count, as it changes.
    pub fn viewers_watch(&self) -> watch::Receiver<usize> {
        self.viewers_tx.subscribe()
    }

    /// Whether this live session pulls a URL (`spec.live`) rather than waits for a publisher.
    pub fn pulled(&self) -> bool {
        self.spec.live.is_some()
    }

    /// What the session info says went wrong (`None`: nothing now).
    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("not poisoned") = error;
    }

    /// Stops the session's task (and transcoder); its viewers see `Failed`.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn info(&self) -> SessionInfo {
        let source = self.source.borrow().clone();
        let live_size = self.picture_size.load(Ordering::Relaxed);
        let top = match &source {
            Source::Ready(r) => r
                .main_video_track()
                .and_then(|t| r.layer(t))
                .map(|l| l.size())
                .filter(|s| s.0 > 0),
            _ => None,
        };
        let (width, height) = match &source {
            _ if top.is_some() => (top.map(|s| s.0), top.map(|s| s.1)),
            Source::Ready(r) if r.width > 0 => (Some(r.width), Some(r.height)),
            // A publisher's, from its last keyframe.
            Source::Ready(_) if live_size > 0 => {
                (Some((live_size >> 32) as u32), Some(live_size as u32))
            }
            _ => (None, None),
        };
        let pid = self.pid.load(Ordering::Relaxed);
        let playback = self.playback();
        SessionInfo {
            name: self.name.clone(),
            kind: self.kind,
            state: match (self.kind, &source) {
                (Kind::Live, Source::Idle) => "waiting",
                (Kind::Live, Source::Ready(_)) => "live",
                // The transcoder waits at the end of its media (viewers may seek back).
                (Kind::Vod, Source::Ready(_)) if playback.state == Some(PlayState::Ended) => {
                    "ended"
                }
                _ => source.state_name(),
            },
            position: (self.kind == Kind::Vod && playback.state.is_some())
                .then(|| news::seconds(playback.position)),
            duration: playback.duration,
            viewers: self.viewers.load(Ordering::Relaxed),
            egresses: self.egresses.load(Ordering::Relaxed),
            uptime_seconds: self.created.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            restarts: self.restarts.load(Ordering::Relaxed),
            error: match &source {
                Source::Failed(reason) => Some(reason.clone()),
                _ => self.last_error.lock().expect("not poisoned").clone(),
            },
            transcoder_pid: (pid != 0).then_some(pid as u32),
            width,
            height,
            video: match &source {
                Source::Ready(r) if r.video_track.is_some() => Some(r.video_format.describe()),
                _ => None,
            },
            ingest: *self.ingest.lock().expect("not poisoned"),
            relayed_from: self.relay().map(|l| l.owner),
            simulcast: self.simulcast.lock().expect("not poisoned").clone(),
            layers: self.layer_infos(),
            viewer_layers: self
                .viewer_layers
                .lock()
                .expect("not poisoned")
                .values()
                .cloned()
                .collect(),
            ingest_bitrate: Some(self.ingest_bps.load(Ordering::Relaxed)).filter(|b| *b > 0),
            source: self.source_desc.lock().expect("not poisoned").clone(),
            spec: self.spec.clone(),
        }
    }

    /// Links the session to its node through a relay (`None`: the relay ended).
    pub fn set_relay(&self, link: Option<RelayLink>) {
        *self.relay.lock().expect("not poisoned") = link;
    }

    /// The relay's link, while this session is relayed from another node.
    pub fn relay(&self) -> Option<RelayLink> {
        self.relay.lock().expect("not poisoned").clone()
    }

    /// The session's node's latest `status` fields, as the relay heard them.
    pub fn set_relay_status(&self, status: Map<String, Value>) {
        if let Some(link) = self.relay.lock().expect("not poisoned").as_mut() {
            link.status = status;
        }
    }

    /// Whether the session's video comes in layers to choose from (a simulcast publisher),
    /// so that its viewers' bandwidth is worth estimating.
    pub fn layered(&self) -> bool {
        if let Source::Ready(r) = &*self.source.borrow() {
            return r.layers.len() > 1;
        }
        // Not up yet: what the session's ladder or its publisher's offer promise.
        self.spec.layers.len() > 1
            || self
                .simulcast
                .lock()
                .expect("not poisoned")
                .as_ref()
                .is_some_and(|s| s.layers.len() > 1)
    }

    /// The source's layers as the API shows them, lowest first (none without layers).
    pub fn layer_infos(&self) -> Vec<layers::LayerInfo> {
        match &*self.source.borrow() {
            Source::Ready(r) if !r.layers.is_empty() => {
                let now_us = rtp_ring::now_us();
                layers::by_quality(&r.layers)
                    .into_iter()
                    .map(|i| r.layers[i].info(now_us))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// A viewer's layer changed (`None`: it left, or gets the only video there is).
    pub fn set_viewer_layer(&self, viewer: &str, layer: Option<ViewerLayer>) {
        let mut m = self.viewer_layers.lock().expect("not poisoned");
        match layer {
            Some(l) => {
                m.insert(viewer.to_string(), l);
            }
            None => {
                m.remove(viewer);
            }
        }
    }

    /// What the session info says about the publisher's simulcast (`None`: it sends none).
    /// What the source sends, from its transcoder's `ready` (`None` clears it).
    pub fn set_source_desc(&self, desc: Option<SourceDesc>) {
        *self.source_desc.lock().expect("not poisoned") = desc;
    }

    /// The publisher's measured bits/s (0 clears it).
    pub fn set_ingest_bitrate(&self, bps: u64) {
        self.ingest_bps.store(bps, Ordering::Relaxed);
    }

    /// The picture size the publisher's last keyframe announced.
    pub fn set_picture_size(&self, width: u32, height: u32) {
        self.picture_size.store(
            (u64::from(width) << 32) | u64::from(height),
            Ordering::Relaxed,
        );
    }

    pub fn set_simulcast(&self, info: Option<SimulcastInfo>) {
        *self.simulcast.lock().expect("not poisoned") = info;
    }
}

/// Settings every session task needs.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub transcoder: PathBuf,
    pub idle_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub slots: Arc<TranscoderSlots>,
}

/// Why a session could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("a session named {0:?} exists")]
    Exists(String),
}

/// All sessions by name. Clones share the sessions.
#[derive(Debug, Clone)]
pub struct Registry {
    sessions: Arc<Mutex<BTreeMap<String, Arc<Session>>>>,
    /// Numbers sessions for the gateway's life: a name may be reused after a removal, and the
    /// transcoder slots must not confuse the two.
    next_id: Arc<std::sync::atomic::AtomicU64>,
    runtime: Runtime,
    cancel: CancellationToken,
}

impl Registry {
    pub fn new(runtime: Runtime, cancel: CancellationToken) -> Self {
        Self {
            sessions: Arc::default(),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            runtime,
            cancel,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .expect("not poisoned")
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates a session and its task. The transcoder waits for a viewer.
    /// Creates a session and its task. A VOD session's transcoder waits for a viewer; a
    /// pulled one (`spec.live`) is a live session whose source the caller drives
    /// (`ingest::pull`).
    pub fn create(&self, name: String, spec: SessionSpec) -> Result<Arc<Session>, CreateError> {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        if sessions.contains_key(&name) {
            return Err(CreateError::Exists(name));
        }
        if spec.live.is_some() {
            let session = self.spawn_live(&name, spec);
            sessions.insert(name, session.clone());
            return Ok(session);
        }
        let (session, rx, source_tx) = self.new_session(name.clone(), Kind::Vod, spec);
        sessions.insert(name.clone(), session.clone());
        let task = SessionTask {
            session: session.clone(),
            runtime: self.runtime.clone(),
            rx,
            source_tx,
            transcoder: None,
            generation: 0,
            viewers: 0,
            egresses: 0,
            idle_since: None,
            keyframes: KeyframeThrottle::default(),
            exits: VecDeque::new(),
            restart_at: None,
            position: None,
            pending: HashMap::new(),
            next_request: 1,
            held: Vec::new(),
            lease: None,
        };
        tokio::spawn(
            task.run()
                .instrument(tracing::info_span!("session", session = %name)),
        );
        Ok(session)
    }

    /// The live session `name`, created (waiting for its publisher) if there is none.
    pub fn live(&self, name: &str) -> Result<Arc<Session>, PublishError> {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        if let Some(s) = sessions.get(name) {
            return match s.kind {
                Kind::Live => Ok(s.clone()),
                Kind::Vod => Err(PublishError::NotLive(name.to_string())),
            };
        }
        let session = self.spawn_live(name, SessionSpec::default());
        sessions.insert(name.to_string(), session.clone());
        Ok(session)
    }

    /// A live session and its task (the caller puts it in the map).
    fn spawn_live(&self, name: &str, spec: SessionSpec) -> Arc<Session> {
        let (session, rx, source_tx) = self.new_session(name.to_string(), Kind::Live, spec);
        let task = LiveTask {
            session: session.clone(),
            metrics: self.runtime.metrics.clone(),
            registry: Arc::downgrade(&self.sessions),
            idle_timeout: self.runtime.idle_timeout,
            idle_since: None,
            rx,
            source_tx,
            viewers: 0,
            egresses: 0,
            keyframes: None,
            keyframe_throttle: Throttles::default(),
        };
        tracing::info!(session = %name, "live session created");
        tokio::spawn(
            task.run()
                .instrument(tracing::info_span!("session", session = %name)),
        );
        session
    }

    #[allow(clippy::type_complexity)]
    fn new_session(
        &self,
        name: String,
        kind: Kind,
        spec: SessionSpec,
    ) -> (
        Arc<Session>,
        mpsc::UnboundedReceiver<Msg>,
        watch::Sender<Source>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (source_tx, source) = watch::channel(Source::Idle);
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            kind,
            spec,
            created: SystemTime::now(),
            tx,
            source,
            viewers: AtomicUsize::new(0),
            egresses: AtomicUsize::new(0),
            restarts: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            pid: AtomicUsize::new(0),
            cancel: self.cancel.child_token(),
            events: broadcast::channel(EVENT_BACKLOG).0,
            playback: Mutex::new(Playback::default()),
            publisher: Mutex::new(None),
            simulcast: Mutex::new(None),
            viewer_layers: Mutex::new(BTreeMap::new()),
            ingest: Mutex::new(None),
            publishes: std::sync::atomic::AtomicU64::new(0),
            ingest_bps: std::sync::atomic::AtomicU64::new(0),
            source_desc: Mutex::new(None),
            picture_size: std::sync::atomic::AtomicU64::new(0),
            slots: self.runtime.slots.clone(),
            viewers_tx: watch::channel(0).0,
            relay: Mutex::new(None),
        });
        (session, rx, source_tx)
    }

    /// Removes and stops a session; its viewers are disconnected by their tasks.
    pub fn remove(&self, name: &str) -> Option<Arc<Session>> {
        let s = self.sessions.lock().expect("not poisoned").remove(name)?;
        s.stop();
        Some(s)
    }
}

struct SessionTask {
    session: Arc<Session>,
    runtime: Runtime,
    rx: mpsc::UnboundedReceiver<Msg>,
    source_tx: watch::Sender<Source>,
    transcoder: Option<TranscoderProcess>,
    generation: u64,
    /// Viewers as this task counts them (joins minus leaves, in message order). Not read from
    /// `Session::viewers`: an admission that fails a limit raises that counter for a moment
    /// without a message, and a `Leave` seen then would never start the idle timer.
    viewers: usize,
    /// Egresses, counted the same way; with viewers, what keeps the transcoder running.
    egresses: usize,
    idle_since: Option<tokio::time::Instant>,
    keyframes: KeyframeThrottle,
    exits: VecDeque<Instant>,
    /// When the transcoder that exited is started again (`None`: no restart waits).
    restart_at: Option<tokio::time::Instant>,
    /// Last reported media position, seconds: where a restarted transcoder resumes.
    position: Option<f64>,
    /// Viewers' commands sent to the transcoder, by request id, waiting for `done`/`error`.
    pending: HashMap<u64, (Value, ReplyTo)>,
    next_request: u64,
    /// Viewers' commands that came while the transcoder was starting, sent once it is ready.
    held: Vec<(Value, Command, ReplyTo)>,
    /// The transcoder slot lease the transcoder runs under (`None`: none running or waiting
    /// for a restart).
    lease: Option<u64>,
}

impl SessionTask {
    async fn run(mut self) {
        loop {
            let idle_at = self.idle_since.map(|t| t + self.runtime.idle_timeout);
            let keyframe_at = self.keyframes.deferred_until();
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg).await,
                    None => break,
                },
                event = next_event(&mut self.transcoder) => match event {
                    Some(event) => {
                        self.on_event(event);
                        if !self.held.is_empty() && matches!(&*self.source_tx.borrow(), Source::Ready(_)) {
                            self.release_held().await;
                        }
                    }
                    None => self.on_exit().await,
                },
                _ = sleep_until(idle_at) => {
                    tracing::info!(
                        "no viewers for {:?}: stopping the transcoder",
                        self.runtime.idle_timeout
                    );
                    self.idle_since = None;
                    self.stop_transcoder().await;
                    self.source_tx.send_replace(Source::Idle);
                }
                _ = sleep_until(keyframe_at) => {
                    self.keyframes.due();
                    self.send_keyframe_request().await;
                }
                _ = sleep_until(self.restart_at) => {
                    self.restart_at = None;
                    if self.viewers + self.egresses == 0 {
                        tracing::info!("no viewers left: the transcoder is not restarted");
                        self.release_slot();
                        self.source_tx.send_replace(Source::Idle);
                    } else {
                        tracing::warn!(
                            position = self.position.unwrap_or(0.0),
                            "restarting the transcoder for {} viewers",
                            self.viewers
                        );
                        self.start_transcoder();
                    }
                }
                _ = self.session.cancel.cancelled() => break,
            }
        }
        self.stop_transcoder().await;
        self.source_tx
            .send_replace(Source::Failed("the session was stopped".into()));
        tracing::info!("session ended");
    }

    async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Join { egress } => {
                match egress {
                    true => self.egresses += 1,
                    false => {
                        self.viewers += 1;
                        self.publish_viewers();
                    }
                }
                self.idle_since = None;
                if self.transcoder.is_none() && self.restart_at.is_none() {
                    // A viewer after a failure tries again.
                    self.exits.clear();
                    self.start_transcoder();
                }
            }
            Msg::Leave { egress } => {
                match egress {
                    true => self.egresses = self.egresses.saturating_sub(1),
                    false => {
                        self.viewers = self.viewers.saturating_sub(1);
                        self.publish_viewers();
                    }
                }
                if self.viewers + self.egresses == 0 && self.transcoder.is_some() {
                    self.idle_since = Some(tokio::time::Instant::now());
                }
            }
            Msg::GiveWay { taker, lease } => self.give_way(&taker, lease).await,
            // A transcoder's layers have their keyframes together: one request for all.
            Msg::KeyframeRequest(_) => {
                self.runtime
                    .metrics
                    .keyframe_requests
                    .fetch_add(1, Ordering::Relaxed);
                if self.keyframes.request() {
                    self.send_keyframe_request().await;
                }
            }
            Msg::Control { id, command, reply } => self.on_control(id, command, reply).await,
            // Only live sessions have publishers (`claim_publisher` refuses VOD ones).
            Msg::Published { .. } | Msg::Unpublished { .. } => {}
        }
    }

    /// Another session took this one's slot (its `lease`) while its transcoder idled: the
    /// transcoder stops now rather than at the end of the idle timeout. An order for a lease
    /// this session no longer runs under comes too late and is ignored.
    async fn give_way(&mut self, taker: &str, lease: u64) {
        if self.lease != Some(lease) || self.transcoder.is_none() {
            return;
        }
        tracing::info!("stopping the idle transcoder: session {taker:?} needs its slot");
        self.lease = None;
        self.idle_since = None;
        self.stop_transcoder().await;
        self.source_tx.send_replace(Source::Idle);
    }

    fn publish_viewers(&self) {
        self.session
            .publish(news::event("viewers", json!({ "count": self.viewers })));
    }

    /// The transcoder is gone for good (not restarting): its slot is freed unless viewers wait.
    fn release_slot(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.runtime.slots.stopped(self.session.id, lease);
        }
    }

    /// A viewer's command: to the transcoder when it is ready, else refused at once.
    async fn on_control(&mut self, id: Value, command: Command, reply: ReplyTo) {
        let refuse = |message: &str| ControlReply {
            id: id.clone(),
            result: Err(Refusal::new(Code::Unavailable, message)),
        };
        let (ready, starting) = match &*self.source_tx.borrow() {
            Source::Ready(_) => (true, false),
            Source::Starting => (false, true),
            Source::Idle | Source::Failed(_) => (false, false),
        };
        if starting && self.transcoder.is_some() && self.held.len() < MAX_HELD {
            self.held.push((id, command, reply));
            return;
        }
        let Some(t) = self.transcoder.as_mut().filter(|_| ready) else {
            let why = match &*self.source_tx.borrow() {
                Source::Failed(reason) => format!("the session failed: {reason}"),
                Source::Idle | Source::Starting | Source::Ready(_) => {
                    "the transcoder is not ready; try again in a moment".into()
                }
            };
            let _ = reply.send(refuse(&why));
            return;
        };
        let request = self.next_request;
        self.next_request += 1;
        tracing::debug!(request, ?command, "viewer command");
        match t.request(Some(request), &command).await {
            Ok(()) => {
                self.pending.insert(request, (id, reply));
            }
            Err(e) => {
                let _ = reply.send(refuse(&format!("the transcoder is not listening: {e}")));
            }
        }
    }

    /// Answers a pending viewer command.
    fn answer(&mut self, request: u64, result: Result<(), Refusal>) {
        if let Some((id, reply)) = self.pending.remove(&request) {
            let _ = reply.send(ControlReply { id, result });
        }
    }

    /// Sends the commands held while the transcoder was starting.
    async fn release_held(&mut self) {
        for (id, command, reply) in std::mem::take(&mut self.held) {
            self.on_control(id, command, reply).await;
        }
    }

    /// The transcoder went away: commands in flight will never be answered by it.
    fn abandon_pending(&mut self, why: &str) {
        for (id, _, reply) in self.held.drain(..) {
            let _ = reply.send(ControlReply {
                id,
                result: Err(Refusal::new(Code::Unavailable, why)),
            });
        }
        for (_, (id, reply)) in self.pending.drain() {
            let _ = reply.send(ControlReply {
                id,
                result: Err(Refusal::new(Code::Unavailable, why)),
            });
        }
    }

    fn set_playback<R>(&self, change: impl FnOnce(&mut Playback) -> R) -> R {
        change(&mut self.session.playback.lock().expect("not poisoned"))
    }

    async fn send_keyframe_request(&mut self) {
        let Some(t) = &mut self.transcoder else {
            return;
        };
        self.keyframes.sent();
        tracing::debug!("keyframe request to the transcoder");
        if t.send(&Command::Keyframe).await.is_ok() {
            self.runtime
                .metrics
                .keyframe_requests_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start_transcoder(&mut self) {
        if self.lease.is_none() {
            match self.runtime.slots.started(self.session.id, Instant::now()) {
                Some(lease) => self.lease = Some(lease),
                None => {
                    // Its viewers all left (and freed the slot) before it could start.
                    self.source_tx.send_replace(Source::Idle);
                    return;
                }
            }
        }
        let mut spec = self.session.spec.clone();
        if let Some(pos) = self.position {
            // Resume where the previous transcoder was.
            spec.start = Some(pos);
        }
        let args = spec.transcoder_args();
        match TranscoderProcess::spawn(
            &self.runtime.transcoder,
            &args,
            RING_BYTES,
            &self.session.name,
        ) {
            Ok(t) => {
                self.session.pid.store(t.pid() as usize, Ordering::Relaxed);
                self.runtime
                    .metrics
                    .transcoders
                    .fetch_add(1, Ordering::Relaxed);
                self.transcoder = Some(t);
                self.source_tx.send_replace(Source::Starting);
            }
            Err(e) => {
                let reason = format!("cannot start the transcoder: {e}");
                tracing::error!("{reason}");
                self.fail(reason);
            }
        }
    }

    fn fail(&mut self, reason: String) {
        self.release_slot();
        *self.session.last_error.lock().expect("not poisoned") = Some(reason.clone());
        self.session.publish(news::event(
            "error",
            json!({"code": "unavailable", "message": reason}),
        ));
        self.source_tx.send_replace(Source::Failed(reason));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready {
                tracks,
                duration,
                fps,
                width,
                height,
                inputs,
                audio_input,
                audio_channels,
                source_video,
                source_audio,
            } => {
                self.session
                    .set_source_desc(source_desc(source_video, source_audio));
                let Some(t) = &self.transcoder else { return };
                self.set_playback(|p| {
                    p.duration = duration;
                    p.fps = Some(fps);
                    p.inputs = inputs;
                    p.audio_input = audio_input;
                    p.audio_channels = audio_channels;
                });
                // A later `ready` from the same transcoder (after an audio change) updates the
                // playback only: same ring, viewers keep their cursors.
                if matches!(&*self.source_tx.borrow(), Source::Ready(_)) {
                    tracing::info!("transcoder changed its audio selection");
                    return;
                }
                self.generation += 1;
                // A new transcoder is up: what failed before is history, not the state now.
                *self.session.last_error.lock().expect("not poisoned") = None;
                let find = |kind: &str| tracks.iter().find(|t| t.kind == kind).map(|t| t.index);
                tracing::info!(
                    width,
                    height,
                    fps,
                    generation = self.generation,
                    "transcoder ready"
                );
                self.source_tx
                    .send_replace(Source::Ready(Arc::new(ReadySource {
                        ring: t.ring().clone(),
                        payloads: crate::session::fanout::PayloadCache::new(PAYLOAD_CACHE_SLOTS),
                        generation: self.generation,
                        video_track: find("video"),
                        audio_track: find("audio"),
                        layers: ladder(&tracks),
                        alternates: alternates(&tracks, self.session.spec.codec()),
                        width,
                        height,
                        fps,
                        duration,
                        video_format: VideoFormat::transcoded(self.session.spec.codec()),
                        capture: Capture::Written,
                    })));
            }
            Event::Position { position, .. } => {
                self.position = Some(position);
                self.set_playback(|p| p.position = position);
                self.session.publish(news::event(
                    "position",
                    json!({ "position": news::seconds(position) }),
                ));
            }
            Event::State {
                state, position, ..
            } => {
                self.position = Some(position);
                let event = self.set_playback(|p| {
                    p.state = Some(state);
                    p.position = position;
                    p.state_event()
                });
                if let Some(ev) = event {
                    self.session.publish(ev);
                }
            }
            Event::Done { id } => self.answer(id, Ok(())),
            Event::Error {
                id: Some(id),
                code,
                message,
            } => {
                tracing::info!(%code, "transcoder refused a viewer's command: {message}");
                self.answer(id, Err(Refusal::new(Code::from_transcoder(&code), message)));
            }
            Event::Error {
                id: None,
                code,
                message,
            } => {
                tracing::warn!(%code, "transcoder error: {message}");
                *self.session.last_error.lock().expect("not poisoned") =
                    Some(format!("{code}: {message}"));
                self.session.publish(news::event(
                    "error",
                    json!({"code": code, "message": message}),
                ));
            }
            Event::Stats { .. } | Event::Unknown => {}
        }
    }

    /// The transcoder's stdout closed: it exited without being asked.
    async fn on_exit(&mut self) {
        let Some(t) = self.transcoder.take() else {
            return;
        };
        let pid = t.pid();
        self.abandon_pending("the transcoder exited before answering");
        let (status, last_log) = t.stop_with_last_log(STOP_GRACE).await;
        self.session.pid.store(0, Ordering::Relaxed);
        self.runtime
            .metrics
            .transcoders
            .fetch_sub(1, Ordering::Relaxed);
        self.runtime
            .metrics
            .transcoder_exits
            .fetch_add(1, Ordering::Relaxed);
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        // What it reported, else the last thing it logged (a process that died before it
        // could report, such as one whose shared libraries are missing, says why there).
        let last_error = self
            .session
            .last_error
            .lock()
            .expect("not poisoned")
            .clone()
            .or_else(|| last_log.map(|line| format!("its last log line: {line}")));
        tracing::error!(
            pid,
            %status,
            last_error = last_error.as_deref().unwrap_or("none"),
            "transcoder exited unexpectedly"
        );
        let now = Instant::now();
        self.exits
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        self.exits.push_back(now);
        if self.viewers + self.egresses == 0 {
            self.release_slot();
            self.source_tx.send_replace(Source::Idle);
            return;
        }
        if self.exits.len() > MAX_RESTARTS {
            let reason = format!(
                "the transcoder exited {} times within {:?} (last: {status}; {})",
                self.exits.len(),
                RESTART_WINDOW,
                last_error.as_deref().unwrap_or("no error reported")
            );
            tracing::error!("{reason}; giving up until a new viewer arrives");
            self.fail(reason);
            return;
        }
        self.session.restarts.fetch_add(1, Ordering::Relaxed);
        let delay = RESTART_DELAYS[self.exits.len() - 1];
        self.session.publish(news::event(
            "error",
            json!({
                "code": "unavailable",
                "message": format!(
                    "the transcoder exited ({status}); restarting in {:.1} s at {:.1} s",
                    delay.as_secs_f64(),
                    self.position.unwrap_or(0.0)
                ),
            }),
        ));
        // Viewers wait (their connections stay); the API shows the session starting.
        self.source_tx.send_replace(Source::Starting);
        self.restart_at = Some(tokio::time::Instant::now() + delay);
    }

    async fn stop_transcoder(&mut self) {
        self.abandon_pending("the transcoder was stopped");
        if let Some(t) = self.transcoder.take() {
            let pid = t.pid();
            match t.stop(STOP_GRACE).await {
                Ok(status) => tracing::info!(pid, %status, "transcoder stopped"),
                Err(e) => tracing::warn!(pid, "stopping the transcoder: {e}"),
            }
            self.session.pid.store(0, Ordering::Relaxed);
            self.runtime
                .metrics
                .transcoders
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.release_slot();
        self.position = None;
        self.set_playback(|p| *p = Playback::default());
    }
}

/// A live session's task: counts viewers, hands the publisher's source to them, and forwards
/// their keyframe requests to the publisher (throttled like a transcoder's).
struct LiveTask {
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    /// The registry's map, to remove this session from when nobody uses it.
    registry: std::sync::Weak<Mutex<BTreeMap<String, Arc<Session>>>>,
    /// A session with no publisher and no viewer for this long is removed.
    idle_timeout: Duration,
    /// Since when nobody uses the session (`None`: in use).
    idle_since: Option<tokio::time::Instant>,
    rx: mpsc::UnboundedReceiver<Msg>,
    source_tx: watch::Sender<Source>,
    viewers: usize,
    egresses: usize,
    /// The connected publisher's keyframe requests.
    keyframes: Option<mpsc::UnboundedSender<Option<u8>>>,
    keyframe_throttle: Throttles,
}

impl LiveTask {
    async fn run(mut self) {
        self.update_idle();
        loop {
            let deferred = self.keyframe_throttle.next_deferred();
            let keyframe_at = deferred.map(|d| d.1);
            let idle_at = self.idle_since.map(|t| t + self.idle_timeout);
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => {
                        self.on_msg(msg);
                        self.update_idle();
                    }
                    None => break,
                },
                _ = sleep_until(keyframe_at) => {
                    let track = deferred.map(|d| d.0).unwrap_or_default();
                    self.keyframe_throttle.get(track).due();
                    self.send_keyframe_request(track);
                }
                _ = sleep_until(idle_at) => {
                    if self.remove_if_unused() {
                        tracing::info!(
                            idle_s = self.idle_timeout.as_secs(),
                            "live session removed: no publisher and no viewer"
                        );
                        break;
                    }
                    self.idle_since = Some(tokio::time::Instant::now());
                }
                _ = self.session.cancel.cancelled() => break,
            }
        }
        self.source_tx
            .send_replace(Source::Failed("the session was stopped".into()));
        tracing::info!("session ended");
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Join { egress: true } => self.egresses += 1,
            Msg::Leave { egress: true } => self.egresses = self.egresses.saturating_sub(1),
            Msg::Join { egress: false } => {
                self.viewers += 1;
                self.publish_viewers();
            }
            Msg::Leave { egress: false } => {
                self.viewers = self.viewers.saturating_sub(1);
                self.publish_viewers();
            }
            Msg::KeyframeRequest(track) => {
                self.metrics
                    .keyframe_requests
                    .fetch_add(1, Ordering::Relaxed);
                // Without layers there is one stream: one throttle for every request.
                let layered = matches!(&*self.source_tx.borrow(),
                    Source::Ready(r) if r.layers.len() > 1);
                let track = track.filter(|_| layered);
                if self.keyframe_throttle.get(track).request() {
                    self.send_keyframe_request(track);
                }
            }
            Msg::Control { id, command, reply } => {
                // A relayed session is steered where it is held.
                if let Some(link) = self.session.relay() {
                    let _ = link.commands.send(Forwarded { id, command, reply });
                    return;
                }
                let _ = reply.send(ControlReply {
                    id,
                    result: Err(Refusal::new(
                        Code::NotSupported,
                        "a live session plays what its publisher sends; it cannot be steered",
                    )),
                });
            }
            Msg::Published { source, keyframes } => {
                tracing::info!(generation = source.generation, "publisher is live");
                self.keyframes = Some(keyframes);
                self.source_tx.send_replace(Source::Ready(source));
                self.session
                    .publish(news::event("publisher", json!({ "state": "active" })));
            }
            // A live session holds no transcoder slot.
            Msg::GiveWay { .. } => {}
            Msg::Unpublished { generation } => {
                let current = matches!(&*self.source_tx.borrow(),
                    Source::Ready(r) if r.generation == generation);
                if current {
                    tracing::info!(generation, "publisher left; viewers wait for the next one");
                    self.keyframes = None;
                    self.session.set_simulcast(None);
                    self.source_tx.send_replace(Source::Idle);
                    self.session
                        .publish(news::event("publisher", json!({ "state": "inactive" })));
                }
            }
        }
    }

    fn publish_viewers(&self) {
        self.session
            .publish(news::event("viewers", json!({ "count": self.viewers })));
    }

    /// Starts the idle clock when the last user left, stops it when one came. A pulled
    /// session is defined (file or API) and stays.
    fn update_idle(&mut self) {
        let unused =
            self.viewers + self.egresses == 0 && self.keyframes.is_none() && !self.session.pulled();
        match (unused, self.idle_since) {
            (true, None) => self.idle_since = Some(tokio::time::Instant::now()),
            (false, Some(_)) => self.idle_since = None,
            _ => {}
        }
    }

    /// Removes the session from the registry if, under the registry's lock, it still has no
    /// publisher (claimed or connected) and no viewer (admitted or joining).
    fn remove_if_unused(&self) -> bool {
        let Some(registry) = self.registry.upgrade() else {
            return true;
        };
        let mut sessions = registry.lock().expect("not poisoned");
        let unused = self.session.consumers() == 0
            && self
                .session
                .publisher
                .lock()
                .expect("not poisoned")
                .is_none();
        if !unused {
            return false;
        }
        if sessions
            .get(&self.session.name)
            .is_some_and(|s| Arc::ptr_eq(s, &self.session))
        {
            sessions.remove(&self.session.name);
        }
        self.session.stop();
        true
    }

    fn send_keyframe_request(&mut self, track: Option<u8>) {
        let Some(k) = &self.keyframes else { return };
        match track {
            Some(_) => self.keyframe_throttle.get(track).sent(),
            // A request for any goes to every layer.
            None => self.keyframe_throttle.sent_all(),
        }
        if k.send(track).is_ok() {
            self.metrics
                .keyframe_requests_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// At most one keyframe request to a source per [`KEYFRAME_INTERVAL`]; a request within the
/// interval is deferred to its end, not dropped.
#[derive(Debug, Default)]
struct KeyframeThrottle {
    last: Option<Instant>,
    /// A request arrived within the interval; send it when the interval ends.
    deferred: bool,
}

impl KeyframeThrottle {
    /// A viewer asks: `true` if the request may go now, else it is deferred.
    fn request(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= KEYFRAME_INTERVAL);
        self.deferred |= !due;
        due
    }

    /// The deferred request's time came (it goes now, or is dropped if there is no source).
    fn due(&mut self) {
        self.deferred = false;
    }

    /// A request went to the source.
    fn sent(&mut self) {
        self.last = Some(Instant::now());
    }

    /// When the deferred request is due, if there is one.
    fn deferred_until(&self) -> Option<tokio::time::Instant> {
        self.deferred
            .then(|| self.last.map(|t| t + KEYFRAME_INTERVAL))
            .flatten()
            .map(tokio::time::Instant::from_std)
    }
}

/// A [`KeyframeThrottle`] per video layer of a live source (a layer's keyframe does nothing
/// for the others' viewers), and one for requests for any.
#[derive(Debug, Default)]
struct Throttles(Vec<(Option<u8>, KeyframeThrottle)>);

impl Throttles {
    fn get(&mut self, track: Option<u8>) -> &mut KeyframeThrottle {
        let i = match self.0.iter().position(|(t, _)| *t == track) {
            Some(i) => i,
            None => {
                self.0.push((track, KeyframeThrottle::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    /// A request went to every layer.
    fn sent_all(&mut self) {
        self.get(None);
        for (_, k) in &mut self.0 {
            k.sent();
        }
    }

    /// The deferred request due first: its track and when.
    fn next_deferred(&self) -> Option<(Option<u8>, tokio::time::Instant)> {
        self.0
            .iter()
            .filter_map(|(t, k)| k.deferred_until().map(|at| (*t, at)))
            .min_by_key(|(_, at)| *at)
    }
}

async fn next_event(t: &mut Option<TranscoderProcess>) -> Option<Event> {
    match t {
        Some(t) => t.next_event().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
