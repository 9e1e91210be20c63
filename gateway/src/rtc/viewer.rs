//! One WHEP viewer's whole policy, sans-IO, as str0m's `Rtc` is: inputs go in through
//! [`Viewer::handle`] (and [`Viewer::patch`]) with the time they happen at, and everything it
//! wants done comes out of [`Viewer::poll_output`] as a datagram to send, an event for its
//! driver, or the time it next needs to be woken. It owns no socket, no task and no clock.
//!
//! What it decides: where its cursor on the session's ring starts (a young keyframe, or the
//! newest record and a keyframe request) and how a backlog is caught up on; the viewer's own
//! header fields (`feed.rs`); which sources it can play; the connect timeout; the control
//! channel's requests and replies, token expiry (a warning, a grace, then the end) and token
//! replacement; trickle ICE and ICE restarts; how it ends (str0m's RTCP BYE and DTLS
//! close_notify go out first). Its driver (`worker.rs`) moves datagrams, ring wakeups, session
//! news and the requests it cannot answer itself (commands, status, token checks).
//!
//! str0m's run-loop rule holds: after every input, [`Viewer::poll_output`] is called until it
//! returns a timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rtp_ring::{Overrun, Reader, RecordMeta};
use serde_json::{Map, Value, json};
use str0m::bwe::{Bitrate, BweKind};
use str0m::channel::ChannelId;
use str0m::media::Mid;
use str0m::net::Transmit;
use str0m::{Event as RtcEvent, IceConnectionState, Input as RtcInput, Output as RtcOutput, Rtc};

use crate::auth::{Grant, Scope};
use crate::config::VideoFormat;
use crate::metrics::Metrics;
use crate::rtc::Clock;
use crate::rtc::answer::Tracks;
use crate::rtc::channel::{self, Action, Code, Refusal, Steering};
use crate::rtc::feed::{DRAIN_BATCH, Feed, Written};
use crate::rtc::ice::{Closed, IceSession, PatchError, Patched};
use crate::rtc::layering::{self, Candidate, Chooser, Wish};
use crate::rtc::offer::Fragment;
use crate::rtc::udp::Datagram;
use crate::session::fanout::Catchup;
use crate::session::layers::by_quality;
use crate::session::{ControlReply, ReadySource, Source, ViewerLayer};
use wisp_control::Command;

/// A VOD keyframe older than this is not worth starting from: ask for a fresh one instead.
const MAX_START_AGE_US: u64 = 1_000_000;
/// A live session's keyframe up to this old is started from (catching up on the backlog).
const MAX_LIVE_BACKLOG_US: u64 = 10_000_000;
/// Sent video kept to answer NACKs: as far back as the viewer can use, from its round-trip
/// time (`RESEND_RTTS` of them, within `RESEND_MIN` and str0m's most, `RESEND_MAX`), and at
/// most `RESEND_PACKETS` packets. Audio is not retransmitted.
const RESEND_RTTS: u32 = 4;
const RESEND_MIN: Duration = Duration::from_millis(500);
const RESEND_MAX: Duration = Duration::from_secs(3);
const RESEND_PACKETS: usize = 1024;
/// Immediate str0m timeouts handled in one poll (after a write str0m asks for one at once:
/// its send queue moves on time); handling them here saves a wakeup per batch of records.
const DUE_NOW_BUDGET: u8 = 4;
/// After the token-expired error goes out, the connection stays this long for it to leave.
const EXPIRED_LINGER: Duration = Duration::from_millis(200);
/// How often str0m reports the viewer's round-trip time (from its receiver reports).
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How often str0m reports the loss a viewer whose layer follows its bandwidth sees (from
/// its transport-wide feedback): each second, the loss over that second.
pub const LOSS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a viewer of a source with layers reconsiders its layer (besides each new
/// estimate).
const CHOICE_INTERVAL: Duration = Duration::from_millis(250);
/// A layer switch still waiting for its keyframe after this asks again.
const SWITCH_RETRY: Duration = Duration::from_secs(1);

/// Something that happened to the viewer, for [`Viewer::handle`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram from the viewer's address on the RTC port.
    Datagram(&'a Datagram),
    /// The time passed; whatever was due is done.
    Timeout,
    /// The session's ring has new records.
    RingWritten,
    /// The session's source is now this; `news` if it changed since the viewer joined (a
    /// failure from before the join is history: the join restarts the source).
    Source { source: &'a Source, news: bool },
    /// An event for every viewer of the session (JSON text, as sent on the control channel).
    SessionEvent(&'a str),
    /// The outcome of a [`Event::Command`].
    Reply(ControlReply),
    /// What a freshly opened control channel is told first (after [`Event::ControlOpen`]):
    /// the playback `state` event, if any, and the viewer count.
    Greeting {
        state: Option<String>,
        viewers: usize,
    },
    /// The session's fields for a [`Event::Status`] reply.
    Status {
        id: Value,
        fields: Map<String, Value>,
    },
    /// The verdict on a [`Event::Auth`] token.
    Verified {
        id: Value,
        result: Result<Grant, String>,
    },
    /// The viewer is to end: its resource's DELETE, the gateway's drain.
    Close(Closed),
    /// The session was stopped.
    SessionStopped,
    /// The session is gone.
    SessionGone,
}

/// What the viewer wants from its driver, from [`Viewer::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Act on this.
    Event(Event),
    /// Nothing more until this time (or the next input).
    Timeout(Instant),
}

/// What a driver acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// ICE and DTLS are up.
    Connected { after: Duration },
    /// Ask the source for a keyframe of the video layer on this track, or of whatever it
    /// sends (the session throttles).
    KeyframeWanted(Option<u8>),
    /// The viewer's layer or estimate changed (for the API; `None`: no layers).
    Layer(Option<ViewerLayer>),
    /// The control channel opened: answer with [`Input::Greeting`].
    ControlOpen,
    /// A viewer's command for the session's source; its outcome comes back as [`Input::Reply`].
    Command { id: Value, command: Command },
    /// A chat event to send to every viewer of the session (the viewer's reply went out).
    Chat(String),
    /// A `status` request: answer with [`Input::Status`] and the session's fields.
    Status { id: Value },
    /// An `auth` request: verify the token and answer with [`Input::Verified`].
    Auth { id: Value, token: String },
    /// The viewer ended for this reason. Its closing datagrams still come out of
    /// [`Viewer::poll_output`]; after them, [`Viewer::is_done`].
    Ended(String),
}

/// What a viewer is made from (its resource's answered offer and token).
#[derive(Debug)]
pub struct Params {
    /// The resource id (chat names an anonymous viewer by it).
    pub id: String,
    pub session: String,
    pub live: bool,
    pub rtc: Rtc,
    pub ice: IceSession,
    pub tracks: Tracks,
    /// The video format negotiated with the viewer.
    pub video_format: VideoFormat,
    pub grant: Grant,
    /// Not connected (ICE and DTLS) within this: the viewer ends.
    pub connect_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Its send bandwidth is estimated (see `answer::answer`).
    pub bwe: bool,
}

/// Why a layer wish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("the session's video has one layer; there is nothing to choose")]
    NoLayers,
    #[error("no layer {0:?}; the layers are {1}")]
    Unknown(String, String),
    #[error("the viewer has ended")]
    Gone,
}

/// A record read while catching up that is not due yet.
#[derive(Debug)]
struct Held {
    meta: RecordMeta,
    packet: Vec<u8>,
    due: Instant,
}

/// How the viewer is ending.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Running,
    /// The token expired: the error is out; end at this time.
    Lingering(Instant, String),
    /// Ended; str0m's closing datagrams are drained.
    Closed,
    /// Nothing left to send.
    Done,
}

/// One viewer (see the module's description).
#[derive(Debug)]
pub struct Viewer {
    id: String,
    session: String,
    live: bool,
    rtc: Rtc,
    ice: IceSession,
    tracks: Tracks,
    video_format: VideoFormat,
    grant: Grant,
    metrics: Arc<Metrics>,
    clock: Clock,
    created: Instant,
    connect_timeout: Duration,
    connected: bool,
    /// The `control` channel, once the viewer opened it.
    channel: Option<ChannelId>,
    steering: Steering,
    /// The `exp` an `auth_expiring` went out for.
    warned_for: Option<u64>,
    feed: Feed,
    /// The newest source the viewer can play, and the cursor on its ring (once connected).
    latest: Option<Arc<ReadySource>>,
    cursor: Option<Reader>,
    /// More records may be waiting in the ring.
    ring_pending: bool,
    buf: Vec<u8>,
    held: Option<Held>,
    /// When str0m wants its next timeout.
    rtc_due: Instant,
    due_now: u8,
    ending: Ending,
    events: VecDeque<Event>,
    /// Packets written since the metrics were last told.
    unreported: u64,
    /// The round-trip time the resend cache was last sized for.
    sized_for: Option<Duration>,
    /// Layer choice (sources with layers).
    chooser: Chooser,
    bwe: bool,
    /// str0m's latest send bandwidth estimate, bits/s.
    estimate: Option<u64>,
    /// When the layer is next reconsidered, and since when a switch waits for its keyframe.
    next_choice: Option<Instant>,
    pending_since: Option<Instant>,
    /// The rates last given to str0m's estimator.
    bwe_targets: Option<(u64, u64)>,
    switches: u64,
    /// What the API was last told.
    told: Option<ViewerLayer>,
}

impl Viewer {
    /// A viewer that has not connected yet; it asks for a keyframe at once (the first frame
    /// is ready sooner when the viewer connects).
    pub fn new(p: Params, now: Instant) -> Self {
        let mut v = Self {
            id: p.id,
            session: p.session,
            live: p.live,
            feed: Feed::new(&p.tracks),
            rtc: p.rtc,
            ice: p.ice,
            tracks: p.tracks,
            video_format: p.video_format,
            grant: p.grant,
            metrics: p.metrics,
            clock: p.clock,
            created: now,
            connect_timeout: p.connect_timeout,
            connected: false,
            channel: None,
            steering: Steering::new(now),
            warned_for: None,
            latest: None,
            cursor: None,
            ring_pending: false,
            buf: Vec::new(),
            held: None,
            rtc_due: now,
            due_now: DUE_NOW_BUDGET,
            ending: Ending::Running,
            events: VecDeque::new(),
            unreported: 0,
            sized_for: None,
            chooser: Chooser::default(),
            bwe: p.bwe,
            // str0m's estimate starts there; its first event comes after the first layer is
            // chosen.
            estimate: p.bwe.then_some(crate::rtc::answer::INITIAL_ESTIMATE_BPS),
            next_choice: None,
            pending_since: None,
            bwe_targets: None,
            switches: 0,
            told: None,
        };
        v.events.push_back(Event::KeyframeWanted(None));
        v
    }

    /// The resource id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The viewer's current local ICE ufrag (STUN for it is routed to this viewer).
    pub fn ufrag(&self) -> &str {
        &self.ice.ufrag
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.feed.sent()
    }

    /// Whether the viewer ended and sent its last datagram: drop it.
    pub fn is_done(&self) -> bool {
        self.ending == Ending::Done
    }

    /// Whether the viewer opened its control channel (session events are for it).
    pub fn has_control(&self) -> bool {
        self.channel.is_some()
    }

    /// Whether it may read the ring now (connected, reading, nothing held back).
    pub fn wants_records(&self) -> bool {
        self.ending == Ending::Running && self.cursor.is_some() && self.held.is_none()
    }

    /// The session's ring has new records ([`Input::RingWritten`] without the rest of
    /// [`Viewer::handle`]: the worker's per-frame path).
    pub fn ring_written(&mut self) {
        self.due_now = DUE_NOW_BUDGET;
        self.ring_pending = true;
    }

    /// Handles one input at `now`; then poll.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) {
        self.due_now = DUE_NOW_BUDGET;
        match input {
            Input::Datagram(dg) => self.receive(dg, now),
            Input::Timeout => {}
            Input::RingWritten => self.ring_pending = true,
            Input::Source { source, news } => self.on_source(source, news, now),
            Input::SessionEvent(text) => self.send_control(text),
            Input::Reply(r) => {
                let text = match &r.result {
                    Ok(()) => channel::reply_ok(&r.id, Map::new()),
                    Err(refusal) => channel::reply_error(&r.id, refusal),
                };
                self.send_control(&text);
            }
            Input::Greeting { state, viewers } => self.greet(state, viewers, now),
            Input::Status { id, mut fields } => {
                fields.extend(token_fields(&self.grant));
                self.send_control(&channel::reply_ok(&id, fields));
            }
            Input::Verified { id, result } => self.on_verified(id, result),
            Input::Close(why) => self.end(why.to_string()),
            Input::SessionStopped => self.end("the session was stopped".into()),
            Input::SessionGone => self.end("session ended".into()),
        }
    }

    /// A trickle-ICE or ICE-restart PATCH (RFC 9725 §4.3); after a restart, STUN for the new
    /// [`Viewer::ufrag`] must reach this viewer too.
    pub fn patch(
        &mut self,
        fragment: Fragment,
        if_match: Option<&str>,
    ) -> Result<Patched, PatchError> {
        self.due_now = DUE_NOW_BUDGET;
        if self.ending != Ending::Running {
            return Err(PatchError::Gone);
        }
        self.ice.patch(&mut self.rtc, fragment, if_match)
    }

    /// What to do next; call until it returns [`Output::Timeout`].
    pub fn poll_output(&mut self, now: Instant) -> Output {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Output::Event(e);
            }
            match self.ending {
                Ending::Done => return Output::Timeout(now + Duration::from_secs(3600)),
                // Only str0m's closing datagrams are left to send.
                Ending::Closed => match crate::rtc::ice::closing_datagram(&mut self.rtc) {
                    Some(t) => return Output::Transmit(t),
                    None => {
                        self.ending = Ending::Done;
                        continue;
                    }
                },
                Ending::Running | Ending::Lingering(..) => {}
            }
            if self.run_timers(now) {
                continue;
            }
            if !self.rtc.is_alive() {
                self.end("the connection closed".into());
                continue;
            }
            match self.rtc.poll_output() {
                Ok(RtcOutput::Transmit(t)) => return Output::Transmit(t),
                Ok(RtcOutput::Event(e)) => {
                    self.on_rtc_event(e, now);
                    continue;
                }
                Ok(RtcOutput::Timeout(t)) => {
                    if t <= now && self.due_now > 0 {
                        self.due_now -= 1;
                        if let Err(e) = self.rtc.handle_input(RtcInput::Timeout(now)) {
                            self.end(format!("str0m: {e}"));
                        }
                        continue;
                    }
                    self.rtc_due = t;
                }
                Err(e) => {
                    self.end(format!("str0m: {e}"));
                    continue;
                }
            }
            // str0m is idle: follow the connection, then the ring.
            if !self.connected && self.rtc.is_connected() {
                self.on_connected(now);
                continue;
            }
            if self.ring_pending && self.wants_records() {
                self.read_ring(now);
                continue;
            }
            self.report(now);
            return Output::Timeout(self.deadline());
        }
    }

    /// The earliest time something is due.
    fn deadline(&self) -> Instant {
        let mut t = self.rtc_due;
        if !self.connected {
            t = t.min(self.created + self.connect_timeout);
        }
        if let Some(h) = &self.held {
            t = t.min(h.due);
        }
        if let Ending::Lingering(at, _) = &self.ending {
            t = t.min(*at);
        }
        if self.ending == Ending::Running {
            t = t.min(self.expiry_at());
            if let Some(c) = self.next_choice {
                t = t.min(c);
            }
        }
        t
    }

    /// Does what is due at `now`; whether anything was.
    fn run_timers(&mut self, now: Instant) -> bool {
        if let Ending::Lingering(at, why) = &self.ending {
            if *at <= now {
                let why = why.clone();
                self.end(why);
                return true;
            }
            return false;
        }
        if !self.connected && now >= self.created + self.connect_timeout {
            self.end(format!(
                "no ICE/DTLS connection within {} s",
                self.connect_timeout.as_secs_f64()
            ));
            return true;
        }
        if now >= self.expiry_at() {
            self.on_expiry(now);
            return true;
        }
        if self.next_choice.is_some_and(|c| c <= now) {
            self.choose_layer(now);
            return true;
        }
        if self.held.as_ref().is_some_and(|h| h.due <= now) {
            let h = self.held.take().expect("checked");
            self.send_record(&h.meta, &h.packet, now);
            self.buf = h.packet;
            self.ring_pending = true;
            return true;
        }
        false
    }

    fn receive(&mut self, dg: &Datagram, now: Instant) {
        crate::rtc::ice::receive(&mut self.rtc, dg, now);
    }

    /// Ends the viewer for `reason`: the driver hears first (the resource is gone with its
    /// reason kept, so a client that DELETEs on close_notify gets the 404 that says why), then
    /// the viewer does (RTCP BYE, DTLS close_notify) rather than when its consent checks go
    /// unanswered.
    fn end(&mut self, reason: String) {
        if matches!(self.ending, Ending::Closed | Ending::Done) {
            return;
        }
        self.events.push_back(Event::Ended(reason));
        crate::rtc::ice::close(&mut self.rtc);
        self.ending = Ending::Closed;
        self.cursor = None;
        self.held = None;
    }

    fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        self.size_resend_cache(None);
        let after = now.saturating_duration_since(self.created);
        tracing::info!(after_ms = after.as_millis() as u64, "viewer connected");
        self.events.push_back(Event::Connected { after });
        // The cursor is placed when the viewer can receive, so it starts at a fresh keyframe.
        if let Some(ready) = self.latest.clone() {
            self.open(ready, now);
        }
    }

    fn on_source(&mut self, source: &Source, news: bool, now: Instant) {
        match source {
            Source::Ready(ready) => {
                if let Some(why) = self.cannot_play(ready) {
                    self.end(why);
                    return;
                }
                let same = self
                    .feed
                    .ready()
                    .is_some_and(|r| r.generation == ready.generation);
                self.latest = Some(ready.clone());
                if self.connected && !same && self.ending == Ending::Running {
                    self.open(ready.clone(), now);
                }
            }
            Source::Failed(reason) if news => self.end(format!("session source failed: {reason}")),
            Source::Failed(_) | Source::Idle | Source::Starting => {}
        }
    }

    /// Why this viewer cannot play `ready`: a live session's publisher (the next one, or the
    /// first for a viewer that waited) may send another codec than the viewer negotiated, and
    /// the viewer has to connect again.
    fn cannot_play(&self, ready: &ReadySource) -> Option<String> {
        (self.tracks.video.is_some() && ready.track_for(&self.video_format).is_none()).then(|| {
            format!(
                "the source sends {} video; this viewer negotiated {}",
                ready.video_format.describe(),
                self.video_format.describe()
            )
        })
    }

    /// A cursor on a (new) source's ring: at its newest keyframe if there is one young enough
    /// to start from, else at the newest record (and a keyframe is requested). A VOD
    /// transcoder makes a keyframe on request at once, so a keyframe older than
    /// `MAX_START_AGE_US` is not worth it; a live publisher may ignore requests and have a GOP
    /// of seconds, so any keyframe up to `MAX_LIVE_BACKLOG_US` old is. Starting from an older
    /// keyframe, the viewer catches up on the backlog (`fanout::Catchup`).
    fn open(&mut self, ready: Arc<ReadySource>, now: Instant) {
        self.held = None;
        let mut reader = ready.ring.reader();
        self.feed
            .attach(ready.clone(), ready.track_for(&self.video_format));
        self.start_layer(now);
        if let Some(track) = self.feed.layer() {
            let now_us = self.clock.ring_us(now);
            let keyframe_us = newest_keyframe(&ready, track, &mut self.buf).map(|(_, k)| k);
            let max_age = match self.live {
                true => MAX_LIVE_BACKLOG_US,
                false => MAX_START_AGE_US,
            };
            match keyframe_us.filter(|&k| now_us.saturating_sub(k) < max_age) {
                Some(k) => {
                    reader.resync_to_keyframe(track);
                    let catchup = Catchup::new(now_us, k);
                    tracing::debug!(
                        keyframe_age_ms = now_us.saturating_sub(k) / 1000,
                        speed = catchup.map_or(1.0, |c| c.speed()),
                        "reader opened at a keyframe"
                    );
                    if let Some(c) = catchup {
                        self.feed.begin_catchup(c);
                    }
                }
                None => {
                    tracing::debug!("reader opened at the newest record; keyframe requested");
                    self.events.push_back(Event::KeyframeWanted(Some(track)));
                }
            }
        }
        self.cursor = Some(reader);
        self.ring_pending = true;
    }

    /// Writes up to a batch of waiting records (str0m's send queue holds about a batch
    /// between polls). A record not due yet (catching up) is held instead.
    fn read_ring(&mut self, now: Instant) {
        self.ring_pending = false;
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..DRAIN_BATCH {
            let Some(reader) = self.cursor.as_mut() else {
                break;
            };
            let meta = match reader.try_next_of(&mut buf, self.feed.wanted_tracks()) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    // Everything written so far was sent: the viewer is at the live edge,
                    // whatever the capture times say (a transcoded live source stamps its
                    // frames with their arrival, a transcode earlier than their writing).
                    if self.feed.reached_live_edge() {
                        tracing::debug!("caught up: at the live edge");
                    }
                    self.buf = buf;
                    return;
                }
                Err(Overrun { lost }) => {
                    self.on_overrun(lost);
                    break;
                }
            };
            if self.feed.catching_up() {
                let now_us = self.clock.ring_us(now);
                if let Some(due) = self.feed.due(meta.capture_us, now_us) {
                    self.held = Some(Held {
                        meta,
                        packet: buf,
                        due: self.clock.instant_of_ring_us(due),
                    });
                    return;
                }
                if !self.feed.catching_up() {
                    tracing::debug!("caught up: live from here");
                }
            }
            self.send_record(&meta, &buf, now);
        }
        // A full batch: more may wait (read after str0m sent this one).
        self.ring_pending = true;
        self.buf = buf;
    }

    fn on_overrun(&mut self, lost: u64) {
        self.metrics.ring_overruns.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            lost,
            "viewer fell a ring lap behind; resyncing at a keyframe"
        );
        if let (Some(track), Some(r)) = (self.feed.awaited_layer(), self.cursor.as_mut()) {
            r.resync_to_keyframe(track);
        }
        self.feed.discontinuity();
    }

    fn send_record(&mut self, meta: &RecordMeta, packet: &[u8], now: Instant) {
        match self
            .feed
            .write(&mut self.rtc, &self.tracks, meta, packet, now)
        {
            Written::Sent { first, video } => {
                if first {
                    tracing::debug!(video, "first packet sent");
                }
                self.unreported += 1;
                if video && self.feed.take_switched() {
                    self.on_switched(now);
                }
            }
            Written::Waiting {
                request_keyframe: true,
                track,
            } => self.events.push_back(Event::KeyframeWanted(Some(track))),
            Written::Waiting { .. } | Written::Skipped => {}
        }
    }

    /// Tells the metrics what was written since the last time.
    fn report(&mut self, now: Instant) {
        if self.unreported > 0 {
            self.metrics
                .packets_out
                .fetch_add(std::mem::take(&mut self.unreported), Ordering::Relaxed);
        }
        if self.feed.wrote() {
            let now_us = self.clock.ring_us(now);
            self.metrics
                .forward_latency
                .observe(self.feed.take_written().map(|c| now_us.saturating_sub(c)));
            self.metrics
                .ingest_latency
                .0
                .observe(self.feed.take_frames().map(|c| now_us.saturating_sub(c)));
        }
    }

    fn on_rtc_event(&mut self, e: RtcEvent, now: Instant) {
        match e {
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.end("ICE disconnected (consent expired)".into());
            }
            RtcEvent::KeyframeRequest(_) => self
                .events
                .push_back(Event::KeyframeWanted(self.feed.awaited_layer())),
            RtcEvent::EgressBitrateEstimate(kind) => {
                let estimate = match kind {
                    BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. } => estimate,
                    _ => return,
                };
                self.estimate = Some(estimate.as_u64());
                tracing::trace!(bps = estimate.as_u64(), "send bandwidth estimate");
                if self.layered().is_some() {
                    self.choose_layer(now);
                    self.tell_layer(false);
                }
            }
            RtcEvent::ChannelOpen(id, label) => {
                if label != channel::LABEL {
                    tracing::debug!(%label, "data channel ignored: only \"control\" is served");
                    return;
                }
                tracing::debug!("control channel open");
                self.channel = Some(id);
                self.events.push_back(Event::ControlOpen);
            }
            RtcEvent::ChannelClose(id) if self.channel == Some(id) => self.channel = None,
            RtcEvent::ChannelData(d) if self.channel == Some(d.id) => {
                self.on_request(&d.data, now);
            }
            RtcEvent::PeerStats(s) => {
                if let Some(loss) = s.egress_loss_fraction {
                    tracing::trace!(loss, "egress loss over the last second");
                    self.chooser
                        .note_loss(loss, self.feed.pending_layer().is_some(), now);
                }
            }
            RtcEvent::MediaEgressStats(s)
                if self.tracks.video.as_ref().map(|t| t.0) == Some(s.mid) =>
            {
                if let Some(rtt) = s.rtt {
                    self.size_resend_cache(Some(rtt));
                }
            }
            _ => {}
        }
    }

    fn greet(&mut self, state: Option<String>, viewers: usize, now: Instant) {
        if let Some(state) = state {
            self.send_control(&state);
        }
        self.send_control(&channel::event("viewers", json!({ "count": viewers })));
        // A warning that fell due before the channel opened (and went nowhere).
        let left = self.grant.exp.saturating_sub(self.clock.unix_s(now));
        if left <= channel::EXPIRY_WARNING.as_secs() {
            self.warned_for = Some(self.grant.exp);
            self.send_control(&channel::event(
                "auth_expiring",
                json!({ "in_seconds": left }),
            ));
        }
    }

    /// A request on the control channel.
    fn on_request(&mut self, data: &[u8], now: Instant) {
        let unix_s = self.clock.unix_s(now);
        let action = self
            .steering
            .on_message(data, now, &self.grant, &self.session, unix_s);
        let reply = match action {
            Action::Reply(text) => text,
            Action::Command { id, command } => {
                self.events.push_back(Event::Command { id, command });
                return;
            }
            Action::Chat { id, text, from } => {
                let from = from
                    .or_else(|| self.grant.sub.clone())
                    .unwrap_or_else(|| format!("viewer-{}", &self.id[..8.min(self.id.len())]));
                let at = self.clock.unix_ms(now) as f64 / 1000.0;
                self.events.push_back(Event::Chat(channel::event(
                    "chat",
                    json!({"from": from, "text": text, "at": at}),
                )));
                channel::reply_ok(&id, Map::new())
            }
            Action::Status { id } => {
                self.events.push_back(Event::Status { id });
                return;
            }
            Action::Auth { id, token } => {
                self.events.push_back(Event::Auth { id, token });
                return;
            }
            Action::Layer { id, wish } => match self.select_layer(wish, now) {
                Ok(fields) => channel::reply_ok(&id, fields),
                Err(e) => channel::reply_error(&id, &Refusal::new(Code::BadRequest, e.to_string())),
            },
        };
        self.send_control(&reply);
    }

    /// The viewer's layer wish (its control channel's `layer`, the WHEP layer extension):
    /// a layer pinned by name, or automatic (`rid` none) within a picture size. Acted on at
    /// once; the reply's fields say what the layers are and which one the viewer gets.
    pub fn select_layer(
        &mut self,
        wish: Wish,
        now: Instant,
    ) -> Result<Map<String, Value>, LayerError> {
        if self.ending != Ending::Running {
            return Err(LayerError::Gone);
        }
        let layered = self
            .feed
            .ready()
            .or(self.latest.as_ref())
            .filter(|r| r.layers.len() > 1 && r.main_for(&self.video_format))
            .cloned();
        let Some(ready) = layered else {
            // Automatic with no limit is what a viewer of one layer has: nothing to do. Before
            // the source is up (a VOD transcoder starting), the wish waits for it.
            let no_source = self.feed.ready().is_none() && self.latest.is_none();
            if wish == Wish::default() || no_source {
                if no_source {
                    tracing::info!(wish = ?wish, "viewer's layer wish, kept until the source is up");
                }
                self.chooser.set_wish(wish);
                return Ok(self.layer_fields(now));
            }
            return Err(LayerError::NoLayers);
        };
        if let Some(rid) = &wish.rid
            && ready.layers.iter().all(|l| &l.rid != rid)
        {
            let names: Vec<&str> = ready.layers.iter().map(|l| l.rid.as_str()).collect();
            return Err(LayerError::Unknown(rid.clone(), names.join(", ")));
        }
        tracing::info!(wish = ?wish, "viewer's layer wish");
        self.chooser.set_wish(wish);
        if self.feed.ready().is_some() {
            self.choose_layer(now);
        }
        Ok(self.layer_fields(now))
    }

    /// The source followed, if this viewer chooses among its layers: it has several, in the
    /// codec the viewer takes (a viewer fed the main picture in another codec has one).
    fn layered(&self) -> Option<&Arc<ReadySource>> {
        self.feed
            .ready()
            .filter(|r| r.layers.len() > 1 && r.main_for(&self.video_format))
    }

    /// The layers and the viewer's place among them (a `layer` reply's fields).
    fn layer_fields(&self, now: Instant) -> Map<String, Value> {
        let mut f = Map::new();
        let Some(ready) = self.feed.ready() else {
            return f;
        };
        // A viewer fed the main picture in another codec has none of the layers.
        let own = ready.main_for(&self.video_format);
        let now_us = self.clock.ring_us(now);
        let layers: Vec<_> = by_quality(&ready.layers)
            .into_iter()
            .filter(|_| own)
            .map(|i| ready.layers[i].info(now_us))
            .collect();
        f.insert("layers".into(), json!(layers));
        f.insert("wish".into(), json!(self.chooser.wish()));
        let rid = |t: Option<u8>| {
            t.filter(|_| own)
                .and_then(|t| ready.layer(t))
                .map(|l| l.rid.clone())
        };
        f.insert("layer".into(), json!(rid(self.feed.layer())));
        if let Some(p) = rid(self.feed.pending_layer()) {
            f.insert("switching_to".into(), json!(p));
        }
        f
    }

    /// Active layers of the current source, lowest quality first (all of them while none
    /// has sent yet); empty without layers.
    fn candidates(&self, now: Instant) -> Vec<Candidate> {
        // The layers are the main codec's: a viewer fed another has its one track.
        let Some(ready) = self.layered() else {
            return Vec::new();
        };
        let now_us = self.clock.ring_us(now);
        let order = by_quality(&ready.layers);
        let to_candidate = |i: &usize| {
            let l = &ready.layers[*i];
            let (width, height) = l.size();
            Candidate {
                track: l.track,
                rid: l.rid.clone(),
                width,
                height,
                bitrate: l.bitrate(),
            }
        };
        let active: Vec<Candidate> = order
            .iter()
            .filter(|&&i| ready.layers[i].active(now_us))
            .map(to_candidate)
            .collect();
        match active.is_empty() {
            true => order.iter().map(to_candidate).collect(),
            false => active,
        }
    }

    /// A new source: the layer to start on (a source without layers has its one track).
    fn start_layer(&mut self, now: Instant) {
        let layers = self.candidates(now);
        // A pin made before the source was up (or for the last publisher) is checked now.
        if let Some(rid) = self.chooser.wish().rid.clone()
            && layers.iter().all(|l| l.rid != rid)
        {
            let names: Vec<&str> = layers.iter().map(|l| l.rid.as_str()).collect();
            let why = match names.is_empty() {
                true => format!("no layer {rid:?}: the video this viewer gets has one layer"),
                false => format!(
                    "no layer {rid:?}; the layers are {}: automatic instead",
                    names.join(", ")
                ),
            };
            tracing::warn!("viewer's pinned layer: {why}");
            let mut wish = self.chooser.wish().clone();
            wish.rid = None;
            self.chooser.set_wish(wish);
            self.send_control(&channel::event(
                "error",
                json!({"code": Code::BadRequest.as_str(), "message": why}),
            ));
        }
        if layers.is_empty() {
            self.next_choice = None;
            // A publisher with layers gave way to one without.
            if self.told.is_some() {
                self.tell_layer(true);
            }
            return;
        }
        if let Some((track, reason)) = self.chooser.choose(&layers, None, self.estimate, now) {
            tracing::debug!(track, reason = reason.as_str(), "starting layer");
            self.feed.set_layer(track);
        }
        self.next_choice = Some(now + CHOICE_INTERVAL);
        self.pending_since = None;
        self.tell_layer(true);
    }

    /// Reconsiders the viewer's layer: a switch starts at the new layer's next keyframe
    /// (asked for), and the estimator is told what to probe for.
    fn choose_layer(&mut self, now: Instant) {
        let layers = self.candidates(now);
        if layers.is_empty() {
            self.next_choice = None;
            return;
        }
        self.next_choice = Some(now + CHOICE_INTERVAL);
        let current = self.feed.pending_layer().or(self.feed.layer());
        match self.chooser.choose(&layers, current, self.estimate, now) {
            Some((track, reason)) if Some(track) == self.feed.layer() => {
                tracing::debug!(reason = reason.as_str(), "layer switch called off");
                self.feed.switch_to(None);
                self.pending_since = None;
            }
            Some((track, reason)) => {
                tracing::debug!(
                    track,
                    reason = reason.as_str(),
                    estimate = self.estimate,
                    "layer switch: waiting for the layer's keyframe"
                );
                self.feed.switch_to(Some(track));
                self.pending_since = Some(now);
                self.events.push_back(Event::KeyframeWanted(Some(track)));
                if self.feed.catching_up() {
                    let rank = |t: Option<u8>| layers.iter().position(|c| Some(c.track) == t);
                    let down = rank(Some(track)) < rank(self.feed.layer());
                    self.leave_backlog(now, down);
                }
            }
            None => {
                if let (Some(track), Some(since)) = (self.feed.pending_layer(), self.pending_since)
                    && now.duration_since(since) >= SWITCH_RETRY
                {
                    self.pending_since = Some(now);
                    self.events.push_back(Event::KeyframeWanted(Some(track)));
                }
            }
        }
        if self.bwe
            && let Some(t) = layering::targets(
                &self.chooser.eligible(&layers),
                self.feed.layer(),
                self.chooser.losing(now),
            )
            && self.bwe_targets != Some(t)
        {
            self.bwe_targets = Some(t);
            self.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(t.0), Bitrate::bps(t.1));
        }
    }

    /// A switch decided while catching up on a backlog. If the new layer has a keyframe
    /// further on in the ring, the viewer goes there and catches up from it; the old
    /// layer's backlog up to it is not sent. Otherwise a move down leaves the backlog for
    /// the live edge and waits there for the new layer's (requested) keyframe: sent faster
    /// than real time, the backlog would queue ahead of that keyframe on a path that cannot
    /// carry it. A move up goes on with the backlog until the new layer's next keyframe in
    /// it, so the picture does not hold.
    fn leave_backlog(&mut self, now: Instant, down: bool) {
        let (Some(ready), Some(track), Some(at)) = (
            self.feed.ready().cloned(),
            self.feed.pending_layer(),
            self.cursor.as_ref().map(|c| c.cursor()),
        ) else {
            return;
        };
        let now_us = self.clock.ring_us(now);
        let ahead = newest_keyframe(&ready, track, &mut self.buf).filter(|(index, _)| *index > at);
        // At the live edge unless the new layer's keyframe is ahead.
        let mut reader = ready.ring.reader();
        match ahead {
            Some((_, k)) => {
                reader.resync_to_keyframe(track);
                tracing::debug!(
                    keyframe_age_ms = now_us.saturating_sub(k) / 1000,
                    "layer switch while catching up: on to the new layer's keyframe"
                );
                self.feed.leave_backlog(now_us);
                if let Some(c) = Catchup::new(now_us, k) {
                    self.feed.begin_catchup(c);
                }
            }
            None if down => {
                tracing::debug!("layer switch down while catching up: on to the live edge");
                self.feed.leave_backlog(now_us);
            }
            None => return,
        }
        self.cursor = Some(reader);
        self.held = None;
        self.ring_pending = true;
    }

    /// The viewer's video moved to another layer: counted, logged, and told to the viewer
    /// (a `layer` event) and the API.
    fn on_switched(&mut self, now: Instant) {
        self.chooser.switched(now);
        self.switches += 1;
        self.pending_since = None;
        self.metrics.layer_switches.fetch_add(1, Ordering::Relaxed);
        let fields = self.layer_fields(now);
        tracing::info!(
            layer = ?fields.get("layer"),
            estimate = self.estimate,
            switches = self.switches,
            "viewer switched layer"
        );
        let mut data = Map::new();
        for k in ["layer", "wish"] {
            if let Some(v) = fields.get(k) {
                data.insert(k.into(), v.clone());
            }
        }
        if let Some(info) = self.feed.layer().and_then(|t| self.feed.ready()?.layer(t)) {
            let (w, h) = info.size();
            data.insert("width".into(), json!(w));
            data.insert("height".into(), json!(h));
            data.insert("bitrate".into(), json!(info.bitrate()));
        }
        data.insert("estimate".into(), json!(self.estimate));
        self.send_control(&channel::event("layer", Value::Object(data)));
        self.tell_layer(true);
    }

    /// Tells the API the viewer's layer and estimate: at once with `now_anyway`, else when
    /// the estimate moved by a tenth.
    fn tell_layer(&mut self, now_anyway: bool) {
        let layer = self
            .feed
            .layer()
            .and_then(|t| self.layered()?.layer(t))
            .map(|l| ViewerLayer {
                viewer: self.id.clone(),
                layer: l.rid.clone(),
                pinned: !self.chooser.wish().is_auto(),
                estimate: self.estimate,
                switches: self.switches,
            });
        let moved = match (&self.told, &layer) {
            (Some(a), Some(b)) => {
                let (x, y) = (
                    a.estimate.unwrap_or(0) as f64,
                    b.estimate.unwrap_or(0) as f64,
                );
                a.layer != b.layer || (x - y).abs() > x.max(y) / 10.0
            }
            (None, None) => false,
            _ => true,
        };
        if now_anyway || moved {
            self.told = layer.clone();
            self.events.push_back(Event::Layer(layer));
        }
    }

    /// A token sent with `auth`, verified: it replaces the viewer's if it names the session
    /// and allows playback at all.
    fn on_verified(&mut self, id: Value, result: Result<Grant, String>) {
        let checked = result
            .map_err(|e| Refusal::new(Code::Forbidden, e))
            .and_then(|grant| {
                if !grant.covers(&self.session) {
                    return Err(Refusal::new(
                        Code::Forbidden,
                        format!("the new token does not name session {:?}", self.session),
                    ));
                }
                if !grant.scopes.contains(&Scope::View) {
                    return Err(Refusal::new(
                        Code::Forbidden,
                        "the new token lacks scope 'view'",
                    ));
                }
                Ok(grant)
            });
        match checked {
            Ok(grant) => {
                let f = token_fields(&grant);
                tracing::info!(scope = %scope_string(&grant), exp = grant.exp, "viewer token replaced");
                self.grant = grant;
                self.warned_for = None;
                self.send_control(&channel::reply_ok(&id, f));
            }
            Err(refusal) => self.send_control(&channel::reply_error(&id, &refusal)),
        }
    }

    /// When token expiry next acts: the warning before `exp`, else the end of the grace.
    fn expiry_at(&self) -> Instant {
        let at = if self.warned_for == Some(self.grant.exp) {
            self.grant.exp + channel::EXPIRY_GRACE.as_secs()
        } else {
            self.grant
                .exp
                .saturating_sub(channel::EXPIRY_WARNING.as_secs())
        };
        self.clock.instant_of_unix_s(at)
    }

    fn on_expiry(&mut self, now: Instant) {
        let unix_s = self.clock.unix_s(now);
        if self.warned_for != Some(self.grant.exp) {
            self.warned_for = Some(self.grant.exp);
            let left = self.grant.exp.saturating_sub(unix_s);
            self.send_control(&channel::event(
                "auth_expiring",
                json!({ "in_seconds": left }),
            ));
            return;
        }
        let why = format!(
            "the token expired {} s ago and no fresh one came with \"auth\"",
            unix_s.saturating_sub(self.grant.exp)
        );
        self.send_control(&channel::event(
            "error",
            json!({"code": Code::TokenExpired.as_str(), "message": why}),
        ));
        // Let the event leave before the connection closes.
        self.ending = Ending::Lingering(now + EXPIRED_LINGER, why);
        self.cursor = None;
        self.held = None;
    }

    /// Writes a text message on the control channel, if the viewer opened one.
    fn send_control(&mut self, text: &str) {
        let Some(id) = self.channel else { return };
        let Some(mut ch) = self.rtc.channel(id) else {
            return;
        };
        if let Err(e) = ch.write(false, text.as_bytes()) {
            tracing::debug!("control message not sent: {e}");
        }
    }

    /// Sizes the video resend cache for the viewer's round-trip time: a NACK is answered as
    /// far back as the viewer can use (str0m's default is 3 s and 1024 packets, ~400 bytes of
    /// bookkeeping each, per viewer). Resizing empties the cache, so it follows only changes
    /// that move the age by a quarter or more. Audio is not retransmitted.
    fn size_resend_cache(&mut self, rtt: Option<Duration>) {
        let age = |rtt: Duration| (rtt * RESEND_RTTS).clamp(RESEND_MIN, RESEND_MAX);
        let want = age(rtt.unwrap_or_default());
        if let Some(old) = self.sized_for {
            let had = age(old);
            let (lo, hi) = (had.min(want), had.max(want));
            if hi < lo + lo / 4 {
                return;
            }
        }
        self.sized_for = Some(rtt.unwrap_or_default());
        let tracks = [
            (
                self.tracks.video.as_ref().map(|t| t.0),
                RESEND_PACKETS,
                want,
            ),
            (self.tracks.audio.as_ref().map(|t| t.0), 1, RESEND_MIN),
        ];
        for (mid, packets, age) in tracks {
            let Some(mid): Option<Mid> = mid else {
                continue;
            };
            let mut api = self.rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                tx.set_rtx_cache(packets, age, Some(0.15));
            }
        }
        if rtt.is_some() {
            tracing::debug!(
                rtt_ms = rtt.unwrap_or_default().as_millis() as u64,
                age_ms = want.as_millis() as u64,
                "resend cache sized"
            );
        }
    }
}

fn scope_string(grant: &Grant) -> String {
    let scopes: Vec<&str> = grant.scopes.iter().map(|s| s.as_str()).collect();
    scopes.join(" ")
}

/// What `status` and `auth` replies say of the viewer's token.
fn token_fields(grant: &Grant) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("scope".into(), json!(scope_string(grant)));
    f.insert("exp".into(), json!(grant.exp));
    f
}

/// The newest keyframe of `track` still in `ready`'s ring: its record index and capture
/// time (read into `buf`).
fn newest_keyframe(ready: &ReadySource, track: u8, buf: &mut Vec<u8>) -> Option<(u64, u64)> {
    let mut probe = ready.ring.reader();
    if !probe.resync_to_keyframe(track) {
        return None;
    }
    let index = probe.cursor();
    match probe.try_next_into(buf) {
        Ok(Some(m)) => Some((index, m.capture_us)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! Scenarios on a virtual clock (DESIGN.md tests, level 2): a viewer made by
    //! [`crate::rtc::answer::answer`] and a str0m client exchange datagrams in memory; records
    //! go through a real ring. No test sleeps: time is what the test says it is.

    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use rtp_ring::{Flags, RecordRef, Ring};
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind};
    use str0m::{Candidate, RtcConfig};

    use str0m::net::{Protocol, Receive};

    use super::*;
    use crate::config::VideoCodec;
    use crate::rtc::ice::IceSession;
    use crate::rtc::offer::{Offer, Served};
    use crate::session::Capture;
    use crate::session::fanout::PayloadCache;
    use crate::session::layers::Layer;

    const SERVER: &str = "10.0.0.1:8443";
    const CLIENT: &str = "10.0.0.2:5000";
    const UNIX_AT_START: u64 = 1_800_000_000;

    /// A viewer and its client, and what each side saw.
    struct Pair {
        viewer: Viewer,
        client: Rtc,
        channel: Option<ChannelId>,
        now: Instant,
        start: Instant,
        clock: Clock,
        events: Vec<Event>,
        frames: Vec<(bool, Vec<u8>)>,
        /// Each frame's arrival and RTP time (seconds), in the order of `frames`.
        frame_times: Vec<(Instant, f64)>,
        audio: usize,
        messages: Vec<Value>,
        connected: bool,
        client_alive: bool,
    }

    fn grant(exp: u64, scopes: &[Scope]) -> Grant {
        Grant {
            sub: Some("tester".into()),
            sessions: vec!["demo".into()],
            scopes: scopes.iter().copied().collect::<BTreeSet<_>>(),
            exp,
        }
    }

    impl Pair {
        /// A client offering video, audio and (with `channel`) the control channel, answered
        /// by a viewer of a VOD (or `live`) session.
        fn new(live: bool, channel: bool, grant: Grant) -> Self {
            let start = Instant::now();
            let clock = Clock::at(start, 100_000_000, UNIX_AT_START * 1000);
            let mut client = RtcConfig::new().build(start);
            client.add_local_candidate(Candidate::host(CLIENT.parse().unwrap(), "udp").unwrap());
            let mut api = client.sdp_api();
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            let id = channel.then(|| api.add_channel(channel::LABEL.into()));
            let (offer, pending) = api.apply().unwrap();
            let offer = Offer::parse(offer.to_sdp_string().as_bytes()).unwrap();
            let format = VideoFormat::transcoded(VideoCodec::H264);
            let plan = offer
                .plan_whep(Served {
                    video: format,
                    audio: true,
                })
                .unwrap();
            let cert = str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate()
                .unwrap();
            let answered = crate::rtc::answer::answer(
                &offer,
                plan,
                format,
                &cert,
                &[SERVER.parse().unwrap()],
                false,
                false,
            )
            .unwrap();
            client
                .sdp_api()
                .accept_answer(
                    pending,
                    SdpAnswer::from_sdp_string(&answered.answer).unwrap(),
                )
                .unwrap();
            let viewer = Viewer::new(
                Params {
                    id: "0123456789abcdef".into(),
                    session: "demo".into(),
                    live,
                    rtc: answered.rtc,
                    ice: IceSession {
                        offer,
                        ufrag: answered.ufrag,
                        etag: "\"1\"".into(),
                    },
                    tracks: answered.tracks,
                    video_format: format,
                    grant,
                    connect_timeout: Duration::from_secs(30),
                    metrics: Arc::new(Metrics::default()),
                    bwe: false,
                    clock,
                },
                start,
            );
            Self {
                viewer,
                client,
                channel: id,
                now: start,
                start,
                clock,
                events: Vec::new(),
                frames: Vec::new(),
                frame_times: Vec::new(),
                audio: 0,
                messages: Vec::new(),
                connected: false,
                client_alive: true,
            }
        }

        /// Moves datagrams both ways until both sides wait; the earlier of their timeouts.
        fn pump(&mut self) -> Instant {
            let (s, c): (SocketAddr, SocketAddr) =
                (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
            let mut to_viewer = Vec::new();
            loop {
                let mut moved = false;
                let vt = loop {
                    match self.viewer.poll_output(self.now) {
                        Output::Transmit(t) => {
                            moved = true;
                            if self.client_alive {
                                let r = Receive::new(Protocol::Udp, s, c, &t.contents).unwrap();
                                let _ = self.client.handle_input(RtcInput::Receive(self.now, r));
                                // The client takes in each datagram as it comes, as a
                                // browser does (SRTP keys are ready once DTLS is).
                                self.drain_client(&mut to_viewer);
                            }
                        }
                        Output::Event(e) => self.events.push(e),
                        Output::Timeout(t) => break t,
                    }
                };
                let ct = self.drain_client(&mut to_viewer);
                for data in to_viewer.drain(..) {
                    moved = true;
                    let dg = Datagram {
                        source: c,
                        destination: s,
                        data,
                        at_us: 0,
                    };
                    self.viewer.handle(Input::Datagram(&dg), self.now);
                }
                if !moved {
                    return vt.min(ct);
                }
            }
        }

        /// Polls the client to its timeout, keeping what it sends the viewer.
        fn drain_client(&mut self, to_viewer: &mut Vec<Vec<u8>>) -> Instant {
            loop {
                if !self.client_alive || !self.client.is_alive() {
                    return self.now + Duration::from_secs(3600);
                }
                let Ok(out) = self.client.poll_output() else {
                    // The viewer closed the connection (DTLS close_notify).
                    self.client_alive = false;
                    continue;
                };
                match out {
                    RtcOutput::Timeout(t) => return t,
                    RtcOutput::Transmit(t) => to_viewer.push(t.contents.to_vec()),
                    RtcOutput::Event(e) => match e {
                        RtcEvent::Connected => self.connected = true,
                        RtcEvent::MediaData(d) if d.params.spec().codec.is_video() => {
                            self.frames.push((d.is_keyframe(), d.data.to_vec()));
                            self.frame_times.push((self.now, d.time.as_seconds()));
                        }
                        RtcEvent::MediaData(_) => self.audio += 1,
                        RtcEvent::ChannelData(d) => {
                            self.messages.push(serde_json::from_slice(&d.data).unwrap());
                        }
                        _ => {}
                    },
                }
            }
        }

        /// Runs the clock on to `until`, waking each side when it asked to be.
        fn run_until(&mut self, until: Instant) {
            while self.now < until {
                let next = self.pump().min(until);
                self.now = next.max(self.now + Duration::from_millis(1)).min(until);
                self.viewer.handle(Input::Timeout, self.now);
                if self.client_alive {
                    let _ = self.client.handle_input(RtcInput::Timeout(self.now));
                }
            }
            self.pump();
        }

        /// Runs until `done` holds, for at most `limit` of virtual time.
        fn run_while(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
            let end = self.now + limit;
            while !done(self) && self.now < end {
                let next = self.now + Duration::from_millis(10);
                self.run_until(next);
            }
            assert!(
                done(self),
                "not within {limit:?} (events {:?})",
                self.events
            );
        }

        fn connect(&mut self) {
            self.run_while(Duration::from_secs(5), |p| {
                p.connected && p.viewer.connected
            });
            if self.channel.is_some() {
                self.run_while(Duration::from_secs(5), |p| {
                    p.events.contains(&Event::ControlOpen)
                });
                self.viewer.handle(
                    Input::Greeting {
                        state: None,
                        viewers: 1,
                    },
                    self.now,
                );
                let _ = self.client.handle_input(RtcInput::Timeout(self.now));
                self.run_until(self.now + Duration::from_millis(20));
            }
        }

        /// The session's source as of the join.
        fn follow(&mut self, source: &Source) {
            let input = Input::Source {
                source,
                news: false,
            };
            self.viewer.handle(input, self.now);
        }

        fn request(&mut self, text: &str) {
            let id = self.channel.expect("a control channel");
            self.client
                .channel(id)
                .unwrap()
                .write(false, text.as_bytes())
                .unwrap();
            let _ = self.client.handle_input(RtcInput::Timeout(self.now));
            self.pump();
        }

        fn messages_named(&self, name: &str) -> Vec<&Value> {
            self.messages
                .iter()
                .filter(|m| m["event"] == name)
                .collect()
        }
    }

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend(seq.to_be_bytes());
        p.extend(ts.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.extend(payload);
        p
    }

    const SPS: [u8; 22] = [
        0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0f, 0x03, 0xc6, 0x0c, 0xa8,
    ];
    const PPS: [u8; 4] = [0x68, 0xce, 0x0f, 0xc8];
    const IDR: [u8; 5] = [0x65, 0x88, 0x84, 0x00, 0x33];

    /// A source with the transcoder's numbering (video PT 96 on track 0, Opus PT 111 on
    /// track 1), and its ring.
    fn source(ring: &Ring) -> Source {
        Source::Ready(Arc::new(ReadySource {
            ring: ring.clone(),
            payloads: PayloadCache::new(64),
            generation: 1,
            video_track: Some(0),
            audio_track: Some(1),
            layers: Vec::new(),
            alternates: Vec::new(),
            width: 1280,
            height: 720,
            fps: 30.0,
            duration: None,
            video_format: VideoFormat::transcoded(VideoCodec::H264),
            capture: Capture::Ingested,
        }))
    }

    /// Writes `frames` frames of 30 fps video (the first a keyframe) and Opus, captured from
    /// `first_us` on the ring's clock; `stray` first puts a P-frame before the keyframe.
    fn write_frames(ring: &Ring, frames: u16, first_us: u64, stray: bool) {
        let mut w = ring.writer();
        let (vs, aus) = (0x1111_1111, 0x2222_2222);
        let mut put = |track: u8, flags: Flags, capture_us: u64, packet: Vec<u8>| {
            w.write(RecordRef {
                track,
                flags,
                capture_us,
                packet: &packet,
            })
            .unwrap();
        };
        if stray {
            put(
                0,
                Flags::END_OF_FRAME,
                first_us,
                rtp(96, 40, 0, vs, true, &[0x41, 0x9a, 0]),
            );
        }
        let mut seq = 41u16;
        for f in 0..frames {
            let ts = 3000 * (f as u32 + 1);
            let at = first_us + f as u64 * 33_333;
            if f == 0 {
                put(0, Flags::KEYFRAME, at, rtp(96, seq, ts, vs, false, &SPS));
                put(0, Flags::empty(), at, rtp(96, seq + 1, ts, vs, false, &PPS));
                put(
                    0,
                    Flags::END_OF_FRAME,
                    at,
                    rtp(96, seq + 2, ts, vs, true, &IDR),
                );
                seq += 3;
            } else {
                let p = [0x41, 0x9a, f as u8];
                put(0, Flags::END_OF_FRAME, at, rtp(96, seq, ts, vs, true, &p));
                seq += 1;
            }
            let opus = rtp(111, f, 960 * f as u32, aus, false, &[0xfc, 0xff, 0xfe]);
            put(1, Flags::END_OF_FRAME, at, opus);
        }
    }

    #[test]
    fn a_viewer_receives_the_ring_from_its_first_keyframe_with_its_own_numbering() {
        let mut p = Pair::new(false, false, grant(UNIX_AT_START + 3600, &[Scope::View]));
        assert_eq!(
            p.viewer.poll_output(p.now),
            Output::Event(Event::KeyframeWanted(None))
        );
        let ring = Ring::create_memfd("viewer-test", 1 << 20).unwrap();
        p.follow(&source(&ring));
        p.connect();
        assert!(
            p.events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. })),
            "{:?}",
            p.events
        );
        // No keyframe in the ring yet: a fresh one is asked for.
        assert!(
            p.events.contains(&Event::KeyframeWanted(Some(0))),
            "{:?}",
            p.events
        );
        // A frame before the keyframe must not reach the viewer.
        write_frames(&ring, 6, p.clock.ring_us(p.now), true);
        p.viewer.handle(Input::RingWritten, p.now);
        p.run_while(Duration::from_secs(1), |p| {
            p.frames.len() >= 5 && p.audio >= 4
        });
        let (key, first) = &p.frames[0];
        assert!(*key, "the viewer starts at the keyframe");
        // SPS, PPS and IDR arrive byte for byte, as one access unit.
        for nal in [&SPS[..], &PPS[..], &IDR[..]] {
            assert!(first.windows(nal.len()).any(|w| w == nal), "{first:?}");
        }
        for (i, (_, frame)) in p.frames.iter().enumerate().skip(1) {
            assert!(
                frame.ends_with(&[0x41, 0x9a, i as u8]),
                "frame {i}: {frame:?}"
            );
        }
        assert_eq!(p.viewer.sent(), 3 + 5 + 6, "all but the stray frame");
    }

    #[test]
    fn a_viewer_pinned_to_a_layer_moves_there_at_its_keyframe_without_a_break() {
        let mut p = Pair::new(true, true, grant(UNIX_AT_START + 3600, &[Scope::View]));
        let ring = Ring::create_memfd("viewer-layers", 1 << 20).unwrap();
        let Source::Ready(plain) = source(&ring) else {
            unreachable!()
        };
        // Two layers: "lo" on track 0, "hi" on track 2, each with its own SSRC and clock.
        let layers = vec![Layer::new(0, "lo"), Layer::new(2, "hi")];
        layers[0].set_size(320, 180);
        layers[1].set_size(1280, 720);
        let ready = ReadySource {
            ring: ring.clone(),
            payloads: PayloadCache::new(64),
            layers,
            ..Arc::into_inner(plain).unwrap()
        };
        let ready = Arc::new(ready);
        p.follow(&Source::Ready(ready.clone()));
        p.connect();
        let mut w = ring.writer();
        let mut seq = [100u16, 5000u16];
        // One frame per layer: a keyframe (SPS, PPS, IDR) or a slice whose third byte says
        // its layer (0xa0 lo, 0xb0 hi) and frame.
        let mut frame = |f: u8, key: bool, at: u64| {
            for (i, (track, ssrc, mark)) in [(0u8, 0xaaaa_u32, 0xa0u8), (2, 0xbbbb, 0xb0)]
                .into_iter()
                .enumerate()
            {
                ready.layers[i].saw(at);
                let ts = 3000 * f as u32 + i as u32 * 777_777;
                let units: Vec<(Flags, Vec<u8>)> = match key {
                    true => vec![
                        (Flags::KEYFRAME, SPS.to_vec()),
                        (Flags::empty(), PPS.to_vec()),
                        (Flags::END_OF_FRAME, vec![0x65, 0x88, mark | f]),
                    ],
                    false => vec![(Flags::END_OF_FRAME, vec![0x41, 0x9a, mark | f])],
                };
                for (flags, unit) in units {
                    let end = flags.contains(Flags::END_OF_FRAME);
                    let packet = rtp(96, seq[i], ts, ssrc, end, &unit);
                    seq[i] = seq[i].wrapping_add(1);
                    w.write(RecordRef {
                        track,
                        flags,
                        capture_us: at,
                        packet: &packet,
                    })
                    .unwrap();
                }
            }
        };
        let t0 = p.clock.ring_us(p.now);
        for f in 0..4 {
            frame(f, f == 0, t0 + f as u64 * 33_333);
        }
        p.viewer.handle(Input::RingWritten, p.now);
        p.run_while(Duration::from_secs(1), |p| p.frames.len() >= 4);
        // With no estimate, the best layer.
        assert!(
            p.frames
                .iter()
                .all(|(_, f)| f.last().unwrap() & 0xf0 == 0xb0)
        );
        p.request(r#"{"id":1,"op":"layer","rid":"lo"}"#);
        p.run_until(p.now + Duration::from_millis(30));
        let reply = p.messages.iter().find(|m| m["id"] == 1).expect("a reply");
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["switching_to"], "lo");
        assert!(
            p.events.contains(&Event::KeyframeWanted(Some(0))),
            "a keyframe of the layer asked for: {:?}",
            p.events
        );
        // Until "lo" has a keyframe, "hi" goes on; from it on, only "lo".
        for f in 4..8 {
            frame(f, f == 6, t0 + f as u64 * 33_333);
        }
        p.viewer.handle(Input::RingWritten, p.now);
        p.run_while(Duration::from_secs(1), |p| p.frames.len() >= 8);
        let layers: Vec<(bool, u8)> = p
            .frames
            .iter()
            .map(|(k, f)| (*k, f.last().unwrap() & 0xf0))
            .collect();
        assert_eq!(
            layers[4..],
            [(false, 0xb0), (false, 0xb0), (true, 0xa0), (false, 0xa0)],
            "{layers:?}"
        );
        let switched = p.messages_named("layer");
        assert_eq!(switched.len(), 1, "{switched:?}");
        assert_eq!(switched[0]["layer"], "lo");
        assert_eq!(switched[0]["width"], 320);
        assert!(p.events.iter().any(|e| matches!(
            e,
            Event::Layer(Some(ViewerLayer { layer, pinned: true, switches: 1, .. })) if layer == "lo"
        )));
        // An unknown layer is refused, with the names there are.
        p.request(r#"{"id":2,"op":"layer","rid":"xx"}"#);
        p.run_until(p.now + Duration::from_millis(30));
        let refused = p.messages.iter().find(|m| m["id"] == 2).expect("a reply");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the layers are lo, hi"),
            "{refused}"
        );
    }

    /// A live source of two layers ("lo" on track 0, "hi" on track 2) and audio (track 1),
    /// written frame by frame.
    struct TwoLayers {
        ready: Arc<ReadySource>,
        w: rtp_ring::Writer,
        seq: [u16; 2],
    }

    impl TwoLayers {
        fn new(ring: &Ring) -> Self {
            let Source::Ready(plain) = source(ring) else {
                unreachable!()
            };
            let layers = vec![Layer::new(0, "lo"), Layer::new(2, "hi")];
            layers[0].set_size(320, 180);
            layers[1].set_size(1280, 720);
            let ready = Arc::new(ReadySource {
                ring: ring.clone(),
                payloads: PayloadCache::new(64),
                layers,
                ..Arc::into_inner(plain).unwrap()
            });
            Self {
                ready,
                w: ring.writer(),
                seq: [100, 5000],
            }
        }

        /// Frame `f` of both layers, captured at `at`: its last two bytes say the layer
        /// (0xa0 lo, 0xb0 hi) and the frame. And an audio packet.
        fn frame(&mut self, f: u8, key: bool, at: u64) {
            self.frame_of(f, [key, key], at);
        }

        /// The same, with a keyframe only in the layers `key` says ([lo, hi]).
        fn frame_of(&mut self, f: u8, key: [bool; 2], at: u64) {
            for (i, (track, ssrc, mark)) in [(0u8, 0xaaaa_u32, 0xa0u8), (2, 0xbbbb, 0xb0)]
                .into_iter()
                .enumerate()
            {
                self.ready.layers[i].saw(at);
                let ts = 3000 * f as u32 + i as u32 * 777_777;
                let units: Vec<(Flags, Vec<u8>)> = match key[i] {
                    true => vec![
                        (Flags::KEYFRAME, SPS.to_vec()),
                        (Flags::empty(), PPS.to_vec()),
                        (Flags::END_OF_FRAME, vec![0x65, 0x88, mark, f]),
                    ],
                    false => vec![(Flags::END_OF_FRAME, vec![0x41, 0x9a, mark, f])],
                };
                for (flags, unit) in units {
                    let end = flags.contains(Flags::END_OF_FRAME);
                    let packet = rtp(96, self.seq[i], ts, ssrc, end, &unit);
                    self.seq[i] = self.seq[i].wrapping_add(1);
                    self.put(track, flags, at, &packet);
                }
            }
            let opus = rtp(111, f as u16, 1440 * f as u32, 0xcccc, false, &[0xfc, 0xff]);
            self.put(1, Flags::END_OF_FRAME, at, &opus);
        }

        fn put(&mut self, track: u8, flags: Flags, capture_us: u64, packet: &[u8]) {
            self.w
                .write(RecordRef {
                    track,
                    flags,
                    capture_us,
                    packet,
                })
                .unwrap();
        }
    }

    /// The frames a test client got: (keyframe, layer mark, frame number).
    fn layered_frames(frames: &[(bool, Vec<u8>)]) -> Vec<(bool, u8, u8)> {
        frames
            .iter()
            .map(|(k, f)| (*k, f[f.len() - 2], f[f.len() - 1]))
            .collect()
    }

    #[test]
    fn a_switch_down_while_catching_up_leaves_the_backlog_for_the_live_edge() {
        let mut p = Pair::new(true, true, grant(UNIX_AT_START + 3600, &[Scope::View]));
        let ring = Ring::create_memfd("viewer-leave-backlog", 1 << 22).unwrap();
        let mut src = TwoLayers::new(&ring);
        // Three seconds of a live GOP in the ring, its keyframe at the start.
        let t0 = p.clock.ring_us(p.now) - 3_000_000;
        for f in 0..90 {
            src.frame(f, f == 0, t0 + f as u64 * 33_333);
        }
        p.follow(&Source::Ready(src.ready.clone()));
        p.connect();
        // Catching up on "hi" (no estimate: the best layer), faster than real time.
        p.run_until(p.now + Duration::from_millis(150));
        assert!(p.viewer.feed.catching_up(), "{} frames", p.frames.len());
        assert_eq!(p.audio, 0, "no audio while catching up");
        p.request(r#"{"id":1,"op":"layer","rid":"lo"}"#);
        p.run_until(p.now + Duration::from_millis(30));
        let at_pin = p.frames.len();
        // The requested keyframe comes with the live frames.
        let live = p.clock.ring_us(p.now);
        for f in 90..96 {
            src.frame(f, f == 92, live + (f - 90) as u64 * 33_333);
        }
        p.viewer.handle(Input::RingWritten, p.now);
        p.run_while(Duration::from_secs(1), |p| {
            p.frames
                .iter()
                .filter(|(_, f)| f[f.len() - 2] == 0xa0)
                .count()
                >= 3
        });
        let after = layered_frames(&p.frames[at_pin..]);
        // At most the frame the client's depacketizer still held of "hi"; then "lo" from
        // the live keyframe, never the rest of the backlog.
        let hi = after.iter().take_while(|(_, m, _)| *m == 0xb0).count();
        assert!(hi <= 1, "{after:?}");
        assert_eq!(after[hi], (true, 0xa0, 92), "{after:?}");
        assert!(
            after[hi..].iter().all(|(_, m, f)| *m == 0xa0 && *f >= 92),
            "{after:?}"
        );
        assert!(!p.viewer.feed.catching_up());
        // The video clock moved on by the time that passed, not by the backlog skipped
        // (about 2.7 s of it): a player's jitter buffer would hold frames stamped ahead.
        let last_hi = at_pin + hi - 1;
        let (sent_at, rtp) = p.frame_times[last_hi];
        let (lo_at, lo_rtp) = p.frame_times[last_hi + 1];
        let clock = lo_rtp - rtp;
        let real = (lo_at - sent_at).as_secs_f64();
        assert!(
            clock > 0.0 && (clock - real).abs() < 0.2,
            "RTP time moved {clock:.3} s in {real:.3} s"
        );
        assert_eq!(p.messages_named("layer").len(), 1, "{:?}", p.messages);
        assert!(p.audio > 0, "audio goes on once the backlog is left");
    }

    #[test]
    fn a_switch_while_catching_up_goes_to_the_new_layers_keyframe_further_on() {
        let mut p = Pair::new(true, true, grant(UNIX_AT_START + 3600, &[Scope::View]));
        let ring = Ring::create_memfd("viewer-backlog-keyframe", 1 << 22).unwrap();
        let mut src = TwoLayers::new(&ring);
        // Three seconds in the ring: "hi" has its keyframe at frame 0, "lo" also one at 60
        // (another viewer asked for it).
        let t0 = p.clock.ring_us(p.now) - 3_000_000;
        for f in 0..90 {
            src.frame_of(f, [f == 0 || f == 60, f == 0], t0 + f as u64 * 33_333);
        }
        p.follow(&Source::Ready(src.ready.clone()));
        p.connect();
        p.run_until(p.now + Duration::from_millis(150));
        assert!(p.viewer.feed.catching_up());
        let at_pin = p.frames.len();
        assert!(at_pin < 40, "{at_pin} frames before the pin");
        p.request(r#"{"id":1,"op":"layer","rid":"lo"}"#);
        p.run_while(Duration::from_secs(2), |p| !p.viewer.feed.catching_up());
        p.run_until(p.now + Duration::from_millis(100));
        let after = layered_frames(&p.frames[at_pin..]);
        // "lo" from its keyframe at frame 60 on, to the live edge; the rest of "hi" up to
        // frame 59 was never sent.
        let hi = after.iter().take_while(|(_, m, _)| *m == 0xb0).count();
        assert!(hi <= 1, "{after:?}");
        assert_eq!(after[hi], (true, 0xa0, 60), "{after:?}");
        let lo: Vec<u8> = after[hi..].iter().map(|(_, _, f)| *f).collect();
        assert_eq!(lo, (60..90).collect::<Vec<u8>>(), "{after:?}");
    }

    /// Outputs compared in tests (a transmit's bytes are not).
    impl PartialEq for Output {
        fn eq(&self, other: &Self) -> bool {
            match (self, other) {
                (Output::Event(a), Output::Event(b)) => a == b,
                (Output::Timeout(a), Output::Timeout(b)) => a == b,
                _ => false,
            }
        }
    }

    #[test]
    fn a_viewer_that_never_connects_is_gone_at_its_connect_timeout() {
        let mut p = Pair::new(false, false, grant(UNIX_AT_START + 3600, &[Scope::View]));
        p.client_alive = false;
        assert_eq!(
            p.viewer.poll_output(p.now),
            Output::Event(Event::KeyframeWanted(None))
        );
        let Output::Timeout(t) = p.viewer.poll_output(p.now) else {
            panic!("a timeout")
        };
        assert!(
            t <= p.start + Duration::from_secs(30),
            "woken by the connect timeout at the latest"
        );
        // Nothing else (no datagram from the peer) has to happen for it to end on time.
        p.run_until(p.start + Duration::from_secs(30));
        assert!(
            p.events
                .contains(&Event::Ended("no ICE/DTLS connection within 30 s".into())),
            "{:?}",
            p.events
        );
        assert!(p.viewer.is_done());
        assert!(p.now <= p.start + Duration::from_secs(30));
    }

    #[test]
    fn control_requests_go_to_the_driver_and_their_replies_come_back() {
        let mut p = Pair::new(
            false,
            true,
            grant(UNIX_AT_START + 3600, &[Scope::View, Scope::Playback]),
        );
        p.connect();
        assert_eq!(p.messages_named("viewers").len(), 1, "{:?}", p.messages);
        p.events.clear();
        p.request(r#"{"id": 1, "op": "pause"}"#);
        assert_eq!(
            p.events,
            [Event::Command {
                id: json!(1),
                command: Command::Pause
            }]
        );
        p.viewer.handle(
            Input::Reply(ControlReply {
                id: json!(1),
                result: Ok(()),
            }),
            p.now,
        );
        p.run_while(Duration::from_secs(1), |p| {
            p.messages.iter().any(|m| m["id"] == 1)
        });
        let reply = p.messages.iter().find(|m| m["id"] == 1).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        // Status: the driver's fields and the token's.
        p.events.clear();
        p.request(r#"{"id": "s", "op": "status"}"#);
        assert_eq!(p.events, [Event::Status { id: json!("s") }]);
        let mut fields = Map::new();
        fields.insert("viewers".into(), json!(3));
        p.viewer.handle(
            Input::Status {
                id: json!("s"),
                fields,
            },
            p.now,
        );
        p.run_while(Duration::from_secs(1), |p| {
            p.messages.iter().any(|m| m["id"] == "s")
        });
        let reply = p.messages.iter().find(|m| m["id"] == "s").unwrap();
        assert_eq!(reply["viewers"], 3, "{reply}");
        assert_eq!(reply["scope"], "view playback", "{reply}");
        // Without the scope: refused by the viewer itself, nothing reaches the driver.
        p.events.clear();
        p.request(r#"{"id": 2, "op": "select_audio", "input": 0}"#);
        p.run_while(Duration::from_secs(1), |p| {
            p.messages.iter().any(|m| m["id"] == 2)
        });
        assert!(p.events.is_empty(), "{:?}", p.events);
        let reply = p.messages.iter().find(|m| m["id"] == 2).unwrap();
        assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    }

    #[test]
    fn an_expiring_token_is_warned_of_replaced_or_ends_the_viewer_after_its_grace() {
        let exp = UNIX_AT_START + 100;
        let mut p = Pair::new(false, true, grant(exp, &[Scope::View]));
        p.connect();
        // The warning a minute before `exp`, and not before.
        p.run_until(p.start + Duration::from_secs(39));
        assert!(p.messages_named("auth_expiring").is_empty());
        p.run_until(p.start + Duration::from_secs(41));
        let warned = p.messages_named("auth_expiring");
        assert_eq!(warned.len(), 1, "{:?}", p.messages);
        assert_eq!(warned[0]["in_seconds"], 60);
        // A fresh token for another session is refused; one for this session replaces it.
        p.events.clear();
        p.request(r#"{"id": 7, "op": "auth", "token": "T"}"#);
        assert_eq!(
            p.events,
            [Event::Auth {
                id: json!(7),
                token: "T".into()
            }]
        );
        let mut other = grant(exp + 600, &[Scope::View]);
        other.sessions = vec!["other".into()];
        p.viewer.handle(
            Input::Verified {
                id: json!(7),
                result: Ok(other),
            },
            p.now,
        );
        p.request(r#"{"id": 8, "op": "auth", "token": "T2"}"#);
        p.viewer.handle(
            Input::Verified {
                id: json!(8),
                result: Ok(grant(exp + 600, &[Scope::View])),
            },
            p.now,
        );
        p.run_while(Duration::from_secs(1), |p| {
            p.messages.iter().any(|m| m["id"] == 8)
        });
        let refused = p.messages.iter().find(|m| m["id"] == 7).unwrap();
        assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
        let replaced = p.messages.iter().find(|m| m["id"] == 8).unwrap();
        assert_eq!(replaced["exp"], exp + 600, "{replaced}");
        // The old expiry passes, grace and all: nothing happens.
        p.run_until(p.start + Duration::from_secs(140));
        assert!(
            !p.events.iter().any(|e| matches!(e, Event::Ended(_))),
            "{:?}",
            p.events
        );
        // The new token's warning, then its grace, then the error and the end.
        p.run_until(p.start + Duration::from_secs(700 + 29));
        assert_eq!(p.messages_named("auth_expiring").len(), 2);
        assert!(p.messages_named("error").is_empty());
        p.run_until(p.start + Duration::from_secs(700 + 31));
        let errors = p.messages_named("error");
        assert_eq!(errors.len(), 1, "{:?}", p.messages);
        assert_eq!(errors[0]["code"], "token_expired");
        assert!(
            p.events
                .iter()
                .any(|e| matches!(e, Event::Ended(r) if r.starts_with("the token expired"))),
            "{:?}",
            p.events
        );
        assert!(p.viewer.is_done());
    }

    #[test]
    fn a_token_already_in_its_warning_window_is_warned_of_when_the_channel_opens() {
        let exp = UNIX_AT_START + 3;
        let mut p = Pair::new(false, true, grant(exp, &[Scope::View]));
        p.connect();
        let warned = p.messages_named("auth_expiring");
        assert_eq!(warned.len(), 1, "{:?}", p.messages);
        assert!(warned[0]["in_seconds"].as_u64().unwrap() <= 3);
        // The grace runs from `exp`: the end comes 30 s after it, not 60 s before it.
        p.run_until(p.start + Duration::from_secs(3 + 29));
        assert!(p.messages_named("error").is_empty(), "{:?}", p.messages);
        p.run_until(p.start + Duration::from_secs(3 + 31));
        assert_eq!(p.messages_named("error").len(), 1, "{:?}", p.messages);
        assert!(p.viewer.is_done());
    }

    #[test]
    fn a_live_viewer_catches_up_on_an_old_keyframe_paced_on_the_clock() {
        let mut p = Pair::new(true, false, grant(UNIX_AT_START + 3600, &[Scope::View]));
        let ring = Ring::create_memfd("viewer-catchup", 1 << 20).unwrap();
        // Two seconds of a live GOP, the keyframe at its start.
        let now_us = p.clock.ring_us(p.now);
        write_frames(&ring, 60, now_us - 2_000_000, false);
        p.follow(&source(&ring));
        p.connect();
        let connected_at = p.now;
        // Faster than real time, but not all at once: paced by the capture times.
        p.run_until(connected_at + Duration::from_millis(100));
        let early = p.frames.len();
        assert!((1..30).contains(&early), "{early} frames 100 ms in");
        // Every video packet written (the last frame leaves the client's depacketizer with
        // the next one).
        p.run_while(Duration::from_secs(2), |p| {
            p.viewer.sent() >= 62 && p.frames.len() >= 59
        });
        let took = p.now - connected_at;
        assert!(
            took < Duration::from_millis(1900),
            "two seconds of backlog caught up faster than real time: {took:?}"
        );
        assert!(p.frames[0].0, "from the keyframe: {:?}", &p.frames[..3]);
    }

    #[test]
    fn an_ended_viewer_says_why_first_then_closes_the_connection() {
        let mut p = Pair::new(false, false, grant(UNIX_AT_START + 3600, &[Scope::View]));
        p.connect();
        p.viewer.handle(Input::Close(Closed::Deleted), p.now);
        assert_eq!(
            p.viewer.poll_output(p.now),
            Output::Event(Event::Ended("closed by DELETE".into()))
        );
        // Then the closing datagrams (DTLS close_notify): the client hears it at once.
        p.run_while(Duration::from_millis(100), |p| {
            !p.client.is_alive() || p.viewer.is_done()
        });
        assert!(p.viewer.is_done());
        let ended = p
            .events
            .iter()
            .filter(|e| matches!(e, Event::Ended(_)))
            .count();
        assert_eq!(ended, 0, "the end was told once, above");
        // A PATCH after the end is refused as gone.
        let err = p
            .viewer
            .patch(
                crate::rtc::offer::Fragment::parse(
                    b"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n",
                )
                .unwrap(),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, PatchError::Gone));
    }
}
