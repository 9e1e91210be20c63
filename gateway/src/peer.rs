//! One WHEP viewer: a str0m `Rtc` in RTP mode and the task that drives it.
//!
//! Owns the viewer's WebRTC state: building the `Rtc` from the offer (ICE-lite, the session's
//! codecs only, the shared DTLS certificate), reading the session ring with its own cursor and
//! writing the shared payloads with the viewer's header fields (`fanout.rs`), keyframe requests,
//! trickle ICE and ICE restarts (with the resource's ETag), the viewer's control channel
//! (requests through `control.rs`, session events out, token expiry), and teardown. It follows str0m's
//! run-loop rule: after every input, poll until `Timeout`. HTTP statuses are the HTTP layer's;
//! this module reports outcomes as enums.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rtp_ring::{AsyncReader, Flags, RtpHeaderView};
use serde_json::{Map, json};
use str0m::change::SdpOffer;
use str0m::channel::{ChannelData, ChannelId};
use str0m::config::DtlsCert;
use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::auth::{Grant, Scope, Verifier, now_secs};
use crate::config::{VideoCodec, VideoFormat};
use crate::control::{self, Action, Code, Refusal, Steering};
use crate::fanout::{Catchup, Step, TrackMap, payload_range};
use crate::metrics::Metrics;
use crate::offer::{Kind, Offer, Plan};
use crate::resource::{IceSession, PeerMsg, PortLink, receive};
use crate::session::{
    Capture, ControlReply, Kind as SessionKind, ReadySource, Session, Source, ViewerSlot,
};
use crate::udp::RtcPort;

/// A VOD keyframe older than this is not worth starting from: ask for a fresh one instead.
const MAX_START_AGE_US: u64 = 1_000_000;
/// A live session's keyframe up to this old is started from (catching up on the backlog).
const MAX_LIVE_BACKLOG_US: u64 = 10_000_000;
/// Packets str0m may queue between write and poll, per viewer (a keyframe's worth).
const SEND_BUFFER_VIDEO: usize = 256;
/// Sent video packets kept to answer NACKs, and for how long.
const RESEND_VIDEO: usize = 256;
const RESEND_AGE: Duration = Duration::from_secs(1);
/// Audio is not retransmitted; str0m needs a little room between write and poll.
const SEND_BUFFER_AUDIO: usize = 16;
/// Records drained from the ring per wakeup before polling str0m again.
const DRAIN_BATCH: usize = 64;

/// Why an offer could not be answered. The client's, except `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("str0m refused the offer: {0}")]
    Refused(String),
    #[error("the offer has nothing in common with this session: {0}")]
    NothingInCommon(String),
}

/// The result of answering an offer: the answer and what the peer task needs.
#[derive(Debug)]
pub struct Answered {
    pub answer: String,
    pub rtc: Rtc,
    pub ufrag: String,
    pub tracks: Tracks,
}

/// The viewer's media sections and payload types, read from the answer.
#[derive(Debug, Clone, Default)]
pub struct Tracks {
    pub video: Option<(Mid, Pt, u32)>,
    pub audio: Option<(Mid, Pt, u32)>,
}

/// Builds an `Rtc` for one viewer (or, with `publisher`, a WHIP publisher) and answers its
/// offer.
pub fn answer(
    offer: &Offer,
    plan: Plan,
    video: VideoFormat,
    cert: &DtlsCert,
    candidates: &[std::net::SocketAddr],
    publisher: bool,
) -> Result<Answered, AnswerError> {
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .set_dtls_cert(cert.clone())
        // Only the MID extension (BUNDLE demultiplexing). Without bandwidth estimation,
        // transport-wide CC would only cost: a sequence number per packet, and a feedback
        // packet every ~50 ms from every viewer to decrypt and parse.
        .clear_extension_map()
        .set_extension(4, Extension::RtpMid)
        // str0m's queue between write and poll (default 1000 packets per viewer).
        .set_send_buffer_video(SEND_BUFFER_VIDEO)
        .set_send_buffer_audio(SEND_BUFFER_AUDIO);
    if publisher {
        // A publisher's sender-side bandwidth estimation (Chromium's) works from transport-wide
        // CC feedback, which str0m sends; without it, it has only receiver reports' loss.
        config = config.set_extension(3, Extension::TransportSequenceNumber);
        // Simulcast layers are told apart by RID (RFC 8852); their repair streams by
        // repaired RID.
        config = config
            .set_extension(10, Extension::RtpStreamId)
            .set_extension(11, Extension::RepairedRtpStreamId);
    }
    if plan.audio {
        config = config.enable_opus(true, false);
    }
    if plan.video {
        match video.codec {
            // Payload types are placeholders: accept_offer renumbers to the offer's. A viewer
            // always gets packetization mode 1 (it carries single NAL units too); a publisher
            // gets the mode it offered.
            VideoCodec::H264 => {
                let mode1 = video.mode1 || !publisher;
                config.codec_config().add_h264(
                    102.into(),
                    Some(103.into()),
                    mode1,
                    video.profile_level_id,
                );
            }
            VideoCodec::Vp8 => config = config.enable_vp8(true),
        }
    }
    let mut rtc = config.build(Instant::now());
    for addr in candidates {
        match Candidate::host(*addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::warn!(%addr, "unusable local candidate: {e}"),
        }
    }
    let answer = accept_offer(&mut rtc, &offer.text).map_err(AnswerError::Refused)?;
    let answer = finish_answer(&answer);
    let tracks = tracks_of(&answer);
    if (plan.video && tracks.video.is_none()) || (plan.audio && tracks.audio.is_none()) {
        return Err(AnswerError::NothingInCommon(format!(
            "no common {} format",
            if plan.video && tracks.video.is_none() {
                video.describe()
            } else {
                "opus".into()
            }
        )));
    }
    let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
    Ok(Answered {
        answer,
        rtc,
        ufrag,
        tracks,
    })
}

/// Has `rtc` accept the offer `text`; the answer, or why not. str0m has asserted on offers
/// the gateway's own checks let through (see `offer.rs`, found by fuzzing): a panic in it
/// refuses this offer instead of dropping the client's connection with no answer.
pub fn accept_offer(rtc: &mut Rtc, text: &str) -> Result<String, String> {
    let run = std::panic::AssertUnwindSafe(|| {
        let sdp = SdpOffer::from_sdp_string(text).map_err(|e| e.to_string())?;
        rtc.sdp_api()
            .accept_offer(sdp)
            .map(|a| a.to_sdp_string())
            .map_err(|e| e.to_string())
    });
    std::panic::catch_unwind(run).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        tracing::error!("str0m panicked on an offer (refused; a str0m bug to report): {what}");
        Err(format!("the offer could not be read ({what})"))
    })
}

/// Final touches str0m does not make: one msid stream for every media section
/// (draft-ietf-wish-whep §4.6.2; str0m invents one per section), and `a=end-of-candidates`
/// after the full candidate list (RFC 9725 §4.3.2: the server cannot trickle).
fn finish_answer(answer: &str) -> String {
    let stream_ids: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:"))
        .filter_map(|v| v.split_whitespace().next())
        .collect();
    let mut out = String::with_capacity(answer.len() + 64);
    let mut ended = false;
    let mut lines = answer.lines().peekable();
    while let Some(line) = lines.next() {
        let mut line = line.to_string();
        if let Some(first) = stream_ids.first() {
            if line.starts_with("a=msid-semantic:") {
                line = format!("a=msid-semantic: WMS {first}");
            } else {
                for other in stream_ids.iter().skip(1).filter(|s| *s != first) {
                    line = line.replace(other, first);
                }
            }
        }
        out.push_str(&line);
        out.push_str("\r\n");
        let next_is_candidate = lines.peek().is_some_and(|n| n.starts_with("a=candidate:"));
        if line.starts_with("a=candidate:") && !next_is_candidate && !ended {
            out.push_str("a=end-of-candidates\r\n");
            ended = true;
        }
    }
    out
}

/// Reads the negotiated sections from our answer: the first media format of each active
/// section (sending to a viewer, receiving from a publisher) that is not a repair format
/// (rtx, red, ulpfec).
fn tracks_of(answer: &str) -> Tracks {
    let mut tracks = Tracks::default();
    let Ok(parsed) = Offer::parse(answer.as_bytes()) else {
        return tracks;
    };
    for s in parsed.sections.iter().filter(|s| !s.rejected) {
        if !matches!(
            s.direction.as_deref(),
            Some("sendonly" | "sendrecv" | "recvonly")
        ) {
            continue;
        }
        let Some(mid) = &s.mid else { continue };
        let Some(f) = s.formats.iter().find(|f| {
            !["rtx", "red", "ulpfec", "flexfec-03"]
                .iter()
                .any(|n| f.name.eq_ignore_ascii_case(n))
        }) else {
            continue;
        };
        let entry = Some((Mid::from(mid.as_str()), Pt::from(f.pt), f.clock));
        match s.kind {
            Kind::Video if tracks.video.is_none() => tracks.video = entry,
            Kind::Audio if tracks.audio.is_none() => tracks.audio = entry,
            _ => {}
        }
    }
    tracks
}

/// Everything a peer task owns.
#[derive(Debug)]
pub struct Peer {
    pub id: String,
    pub rtc: Rtc,
    pub ice: IceSession,
    pub tracks: Tracks,
    /// The video format negotiated with the viewer.
    pub video_format: VideoFormat,
    pub slot: ViewerSlot,
    pub port: Arc<RtcPort>,
    pub metrics: Arc<Metrics>,
    pub inbox: mpsc::Receiver<PeerMsg>,
    pub outbox: crate::udp::Outbox,
    /// The viewer's token: what it may do on the control channel, and when it expires.
    pub grant: Grant,
    /// Checks tokens sent with the `auth` op.
    pub verifier: Arc<Verifier>,
    /// Called once when the task ends (removes the resource from the HTTP registry).
    pub on_end: OnEnd,
    /// Not connected (ICE and DTLS) within this: the resource is removed.
    pub connect_timeout: Duration,
}

/// A callback run once when a peer ends, with why.
pub struct OnEnd(pub Box<dyn FnOnce(&str) + Send>);

impl OnEnd {
    /// Runs the callback; later calls do nothing.
    pub fn run(&mut self, reason: &str) {
        let f = std::mem::replace(&mut self.0, Box::new(|_| {}));
        f(reason);
    }
}

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnd")
    }
}

impl Peer {
    /// Why this viewer cannot play `ready`: a live session's publisher (the next one, or the
    /// first for a viewer that waited) may send another codec than the viewer negotiated, and
    /// the viewer has to connect again.
    fn cannot_play(&self, ready: &ReadySource) -> Option<String> {
        (self.tracks.video.is_some() && !self.video_format.plays(&ready.video_format)).then(|| {
            format!(
                "the source sends {} video; this viewer negotiated {}",
                ready.video_format.describe(),
                self.video_format.describe()
            )
        })
    }

    /// Starts the peer's task.
    pub fn spawn(self) {
        let span = tracing::info_span!(
            "viewer",
            session = %self.slot.session().name,
            resource = %self.id
        );
        tokio::spawn(self.run().instrument(span));
    }

    async fn run(mut self) {
        let mut link = PortLink::new(self.port.clone(), &self.ice.ufrag);
        let session = self.slot.session().clone();
        // As of the join: a failure from before it is history (the join restarts the
        // transcoder); one since then ends this viewer, even if it came before this task ran.
        let mut source = self.slot.source();
        let mut feed = Feed::new(&self.tracks);
        let mut reader: Option<(AsyncReader, Arc<ReadySource>)> = None;
        let mut connected = false;
        let mut buf = Vec::with_capacity(1600);
        let created = Instant::now();
        session.request_keyframe();
        // Made once and re-armed, not re-created every turn of the loop (a timer-wheel entry
        // and a waker registration per wakeup, for every viewer).
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let stopped = session.cancelled();
        tokio::pin!(stopped);
        // A record read while catching up that is not due yet, and when it is.
        let mut held = Held::default();
        let pace = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(pace);
        // Session events, subscribed while the viewer has a control channel: a player
        // without one is not woken for them (position events alone come 5 times a second).
        let mut events: Option<broadcast::Receiver<Arc<str>>> = None;
        let mut events_open = true;
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<ControlReply>();
        let mut ctl = ControlState {
            channel: None,
            steering: Steering::new(Instant::now()),
            warned_for: None,
        };
        let mut channel_events = Vec::new();
        let expiry = tokio::time::sleep_until(ctl.deadline(&self.grant));
        tokio::pin!(expiry);
        let reason = loop {
            let deadline = match self.drive(&mut channel_events) {
                Ok(t) => t,
                Err(reason) => break reason,
            };
            // What was written is on the wire now (most wakeups wrote nothing: no clock read).
            if feed.wrote() {
                let now = rtp_ring::now_us();
                self.metrics
                    .forward_latency
                    .observe(feed.take_written().map(|c| now.saturating_sub(c)));
                self.metrics
                    .ingest_latency
                    .0
                    .observe(feed.take_frames().map(|c| now.saturating_sub(c)));
            }
            if !channel_events.is_empty() {
                for ev in std::mem::take(&mut channel_events) {
                    if self.on_channel(ev, &mut ctl, &session, &reply_tx) {
                        expiry.as_mut().reset(ctl.deadline(&self.grant));
                    }
                }
                match (ctl.channel.is_some(), events.is_some()) {
                    (true, false) if events_open => events = Some(session.events()),
                    (false, true) => events = None,
                    _ => {}
                }
                // Poll str0m again: replies were written.
                continue;
            }
            // str0m reports the connection while polled (in `drive`): look right after it.
            if !connected && self.rtc.is_connected() {
                connected = true;
                self.size_resend_caches();
                tracing::info!(
                    after_ms = created.elapsed().as_millis() as u64,
                    "viewer connected"
                );
            }
            if !connected && created.elapsed() >= self.connect_timeout {
                break format!(
                    "no ICE/DTLS connection within {} s",
                    self.connect_timeout.as_secs_f64()
                );
            }
            // The cursor is placed when the viewer can receive, so it starts at a fresh keyframe.
            // Reading the source here marks it seen, so a failure not yet seen ends the viewer
            // here too (else `changed()` below would never report it).
            if connected && reader.is_none() {
                let news = source.has_changed().unwrap_or(false);
                match &*source.borrow_and_update() {
                    Source::Ready(ready) => {
                        if let Some(why) = self.cannot_play(ready) {
                            break why;
                        }
                        reader = open_reader(ready, &mut feed, &session);
                    }
                    Source::Failed(reason) if news => {
                        break format!("session source failed: {reason}");
                    }
                    _ => {}
                }
            }
            // Not connected yet: the connect timeout fires on time, whatever str0m waits for
            // (an ICE-lite agent that never heard from its peer has nothing to time).
            let deadline = match connected {
                false => deadline.min(created + self.connect_timeout),
                true => deadline,
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                dg = link.rx.recv() => {
                    let Some(dg) = dg else { break "datagram channel closed".into() };
                    if let Err(e) = receive(&mut self.rtc, &dg) {
                        tracing::debug!("datagram refused: {e}");
                    }
                }
                msg = self.inbox.recv() => {
                    if let Some(why) = self.ice.on_message(&mut self.rtc, msg, &mut link) {
                        break why.to_string();
                    }
                }
                rec = next_record(&mut reader, &mut buf), if connected && held.meta.is_none() => match rec {
                    Ok(Ok(meta)) => {
                        if let Some((r, _)) = reader.as_mut()
                            && let Some(due) = self.deliver(&mut feed, &session, r, meta, &mut buf, &mut held)
                        {
                            pace.as_mut().reset(tokio::time::Instant::now() + Duration::from_micros(due));
                        }
                    }
                    Ok(Err(overrun)) => {
                        if let Some((r, _)) = reader.as_mut() {
                            on_overrun(r, &mut feed, &self.metrics, overrun.lost);
                        }
                    }
                    Err(e) => break format!("reading the session ring: {e}"),
                },
                _ = &mut pace, if held.meta.is_some() => {
                    let meta = held.take(&mut buf);
                    if let Some((r, _)) = reader.as_mut()
                        && let Some(due) = self.deliver(&mut feed, &session, r, meta, &mut buf, &mut held)
                    {
                        pace.as_mut().reset(tokio::time::Instant::now() + Duration::from_micros(due));
                    }
                }
                changed = source.changed() => {
                    if changed.is_err() {
                        break "session ended".into();
                    }
                    let next = source.borrow_and_update().clone();
                    match next {
                        Source::Ready(ready) => {
                            if let Some(why) = self.cannot_play(&ready) {
                                break why;
                            }
                            let same = reader.as_ref().is_some_and(|(_, r)| r.generation == ready.generation);
                            if connected && !same {
                                held.meta = None;
                                reader = open_reader(&ready, &mut feed, &session);
                            }
                        }
                        Source::Failed(reason) => break format!("session source failed: {reason}"),
                        Source::Idle | Source::Starting => {}
                    }
                }
                _ = &mut timer => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        break format!("str0m: {e}");
                    }
                }
                _ = &mut stopped => break "the session was stopped".into(),
                ev = async { events.as_mut().expect("guarded").recv().await }, if events.is_some() => match ev {
                    Ok(text) => self.send_control(&ctl, &text),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(n, "viewer skipped session events");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        events_open = false;
                        events = None;
                    }
                },
                Some(r) = reply_rx.recv() => {
                    let text = match &r.result {
                        Ok(()) => control::reply_ok(&r.id, Map::new()),
                        Err(refusal) => control::reply_error(&r.id, refusal),
                    };
                    self.send_control(&ctl, &text);
                }
                _ = &mut expiry => {
                    let now = now_secs();
                    if ctl.warned_for != Some(self.grant.exp) {
                        ctl.warned_for = Some(self.grant.exp);
                        let left = self.grant.exp.saturating_sub(now);
                        self.send_control(
                            &ctl,
                            &control::event("auth_expiring", json!({ "in_seconds": left })),
                        );
                        expiry.as_mut().reset(ctl.deadline(&self.grant));
                    } else {
                        let why = format!(
                            "the token expired {} s ago and no fresh one came with \"auth\"",
                            now.saturating_sub(self.grant.exp)
                        );
                        self.send_control(
                            &ctl,
                            &control::event(
                                "error",
                                json!({"code": Code::TokenExpired.as_str(), "message": why}),
                            ),
                        );
                        // Let the event leave before the connection closes.
                        let _ = self.drive(&mut channel_events);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break why;
                    }
                }
            }
        };
        tracing::info!(packets = feed.sent(), "viewer ended: {reason}");
        // The resource is gone, with its reason kept, before the viewer can hear of the end:
        // a client that DELETEs on close_notify then gets the 404 that says why.
        self.on_end.run(&reason);
        // Whatever ended it, the viewer hears at once (RTCP BYE, DTLS close_notify) rather
        // than when its consent checks go unanswered.
        crate::resource::close(&mut self.rtc);
        let _ = self.drive(&mut channel_events);
    }

    /// Writes `first` and then what else waits in the ring (up to a batch). A record that is
    /// not due yet (the viewer is catching up) is held instead; the return value is then how
    /// long until it is due, in µs.
    fn deliver(
        &mut self,
        feed: &mut Feed,
        session: &Session,
        r: &mut AsyncReader,
        first: rtp_ring::RecordMeta,
        buf: &mut Vec<u8>,
        held: &mut Held,
    ) -> Option<u64> {
        let mut next = Some(first);
        for _ in 0..=DRAIN_BATCH {
            let meta = match next.take() {
                Some(m) => m,
                None => match r.reader().try_next_into(buf) {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        // Everything written so far was sent: the viewer is at the live edge,
                        // whatever the capture times say (a transcoded live source stamps its
                        // frames with their arrival, a transcode earlier than their writing).
                        if feed.reached_live_edge() {
                            tracing::debug!("caught up: at the live edge");
                        }
                        break;
                    }
                    Err(overrun) => {
                        on_overrun(r, feed, &self.metrics, overrun.lost);
                        break;
                    }
                },
            };
            if feed.catching_up() {
                let now = rtp_ring::now_us();
                if let Some(due) = feed.due(meta.capture_us, now) {
                    held.hold(meta, buf);
                    return Some(due - now);
                }
                if !feed.catching_up() {
                    tracing::debug!("caught up: live from here");
                }
            }
            self.send_record(feed, session, &meta, buf);
        }
        None
    }

    /// Polls str0m until it wants a timeout; sends what it transmits. `Err` ends the peer.
    fn drive(&mut self, channel: &mut Vec<ChannelEvent>) -> Result<Instant, String> {
        // After a write str0m asks for a timeout at once (its send queue moves on time);
        // handling it here saves a timer wakeup per batch of records.
        let mut due_now = 4;
        let result = loop {
            if !self.rtc.is_alive() {
                break Err("the connection closed".into());
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    let now = Instant::now();
                    if t > now || due_now == 0 {
                        break Ok(t);
                    }
                    due_now -= 1;
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        break Err(format!("str0m: {e}"));
                    }
                }
                Ok(Output::Transmit(t)) => self.outbox.transmit(&self.port, &t),
                Ok(Output::Event(e)) => {
                    if let Err(reason) = self.on_event(e, channel) {
                        break Err(reason);
                    }
                }
                Err(e) => break Err(format!("str0m: {e}")),
            }
        };
        self.outbox.flush_to(&self.port);
        result
    }

    fn on_event(&mut self, e: Event, channel: &mut Vec<ChannelEvent>) -> Result<(), String> {
        match e {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Err("ICE disconnected (consent expired)".into());
            }
            Event::KeyframeRequest(_) => self.slot.session().request_keyframe(),
            Event::ChannelOpen(id, label) => channel.push(ChannelEvent::Open(id, label)),
            Event::ChannelData(d) => channel.push(ChannelEvent::Data(d)),
            Event::ChannelClose(id) => channel.push(ChannelEvent::Close(id)),
            _ => {}
        }
        Ok(())
    }

    /// A data-channel event: the `control` channel opening (it gets the current state),
    /// a request on it, or its closing. Returns whether the viewer's token changed.
    fn on_channel(
        &mut self,
        ev: ChannelEvent,
        ctl: &mut ControlState,
        session: &Arc<Session>,
        reply_tx: &mpsc::UnboundedSender<ControlReply>,
    ) -> bool {
        let d = match ev {
            ChannelEvent::Open(id, label) => {
                if label != control::LABEL {
                    tracing::debug!(%label, "data channel ignored: only \"control\" is served");
                    return false;
                }
                tracing::debug!("control channel open");
                ctl.channel = Some(id);
                if let Some(state) = session.playback().state_event() {
                    self.send_control(ctl, &state);
                }
                let count = session.viewer_count();
                self.send_control(ctl, &control::event("viewers", json!({ "count": count })));
                // A warning that fell due before the channel opened.
                let left = self.grant.exp.saturating_sub(now_secs());
                if left <= control::EXPIRY_WARNING.as_secs() {
                    ctl.warned_for = Some(self.grant.exp);
                    let ev = control::event("auth_expiring", json!({ "in_seconds": left }));
                    self.send_control(ctl, &ev);
                    return true; // re-arm the expiry timer for the end of the grace
                }
                return false;
            }
            ChannelEvent::Close(id) => {
                if ctl.channel == Some(id) {
                    ctl.channel = None;
                }
                return false;
            }
            ChannelEvent::Data(d) if ctl.channel == Some(d.id) => d,
            ChannelEvent::Data(_) => return false,
        };
        let now = now_secs();
        let action =
            ctl.steering
                .on_message(&d.data, Instant::now(), &self.grant, &session.name, now);
        let reply = match action {
            Action::Reply(text) => text,
            Action::Command { id, command } => {
                session.control(id, command, reply_tx.clone());
                return false;
            }
            Action::Chat { id, text } => {
                let from = self
                    .grant
                    .sub
                    .clone()
                    .unwrap_or_else(|| format!("viewer-{}", &self.id[..8.min(self.id.len())]));
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as f64 / 1000.0)
                    .unwrap_or(0.0);
                session.publish(control::event(
                    "chat",
                    json!({"from": from, "text": text, "at": at}),
                ));
                control::reply_ok(&id, Map::new())
            }
            Action::Status { id } => {
                let mut f = match serde_json::to_value(session.playback()) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => Map::new(),
                };
                f.insert("viewers".into(), json!(session.viewer_count()));
                // What a player shows: live controls or VOD ones, and whether to say the
                // publisher is away.
                f.insert("kind".into(), json!(session.kind));
                if session.kind == crate::session::Kind::Live {
                    let on = if session.has_media() {
                        "active"
                    } else {
                        "inactive"
                    };
                    f.insert("publisher".into(), json!(on));
                }
                f.extend(token_fields(&self.grant));
                control::reply_ok(&id, f)
            }
            Action::Auth { id, token } => match self.reauthorize(&token, &session.name) {
                Ok(grant) => {
                    let f = token_fields(&grant);
                    tracing::info!(scope = %scope_string(&grant), exp = grant.exp, "viewer token replaced");
                    self.grant = grant;
                    ctl.warned_for = None;
                    self.send_control(ctl, &control::reply_ok(&id, f));
                    return true;
                }
                Err(refusal) => control::reply_error(&id, &refusal),
            },
        };
        self.send_control(ctl, &reply);
        false
    }

    /// Checks a token sent with `auth`: valid, for this session, allowing playback at all.
    fn reauthorize(&self, token: &str, session: &str) -> Result<Grant, Refusal> {
        let grant = self
            .verifier
            .verify(token.trim())
            .map_err(|e| Refusal::new(Code::Forbidden, e.to_string()))?;
        if !grant.covers(session) {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("the new token does not name session {session:?}"),
            ));
        }
        if !grant.scopes.contains(&Scope::View) {
            return Err(Refusal::new(
                Code::Forbidden,
                "the new token lacks scope 'view'",
            ));
        }
        Ok(grant)
    }

    /// Writes a text message on the control channel, if the viewer opened one.
    fn send_control(&mut self, ctl: &ControlState, text: &str) {
        let Some(id) = ctl.channel else { return };
        let Some(mut ch) = self.rtc.channel(id) else {
            return;
        };
        if let Err(e) = ch.write(false, text.as_bytes()) {
            tracing::debug!("control message not sent: {e}");
        }
    }

    /// str0m keeps 3 s of sent video (up to 1024 packets, ~400 bytes of bookkeeping each,
    /// per viewer) to answer NACKs; a second is plenty, and audio is not retransmitted.
    fn size_resend_caches(&mut self) {
        let tracks = [
            (self.tracks.video.as_ref().map(|t| t.0), RESEND_VIDEO),
            (self.tracks.audio.as_ref().map(|t| t.0), 1),
        ];
        for (mid, packets) in tracks {
            let Some(mid) = mid else { continue };
            let mut api = self.rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                tx.set_rtx_cache(packets, RESEND_AGE, Some(0.15));
            }
        }
    }

    fn send_record(
        &mut self,
        feed: &mut Feed,
        session: &crate::session::Session,
        meta: &rtp_ring::RecordMeta,
        packet: &[u8],
    ) {
        match feed.write(&mut self.rtc, &self.tracks, meta, packet) {
            Written::Sent { first, video } => {
                if first {
                    tracing::debug!(video, "first packet sent");
                }
                self.metrics.packets_out.fetch_add(1, Ordering::Relaxed);
            }
            Written::Waiting {
                request_keyframe: true,
            } => session.request_keyframe(),
            Written::Waiting { .. } | Written::Skipped => {}
        }
    }
}

/// A data-channel event, taken out of `drive` to be handled with the session at hand.
#[derive(Debug)]
enum ChannelEvent {
    Open(ChannelId, String),
    Data(ChannelData),
    Close(ChannelId),
}

/// The viewer's control channel and token-expiry bookkeeping.
#[derive(Debug)]
struct ControlState {
    channel: Option<ChannelId>,
    steering: Steering,
    /// The `exp` an `auth_expiring` went out for.
    warned_for: Option<u64>,
}

impl ControlState {
    /// When the expiry timer fires next: the warning before `exp`, else the end of the grace.
    fn deadline(&self, grant: &Grant) -> tokio::time::Instant {
        let at = if self.warned_for == Some(grant.exp) {
            grant.exp + control::EXPIRY_GRACE.as_secs()
        } else {
            grant.exp.saturating_sub(control::EXPIRY_WARNING.as_secs())
        };
        tokio::time::Instant::now() + Duration::from_secs(at.saturating_sub(now_secs()))
    }
}

fn scope_string(grant: &Grant) -> String {
    let scopes: Vec<&str> = grant.scopes.iter().map(|s| s.as_str()).collect();
    scopes.join(" ")
}

/// What `status` and `auth` replies say of the viewer's token.
fn token_fields(grant: &Grant) -> Map<String, serde_json::Value> {
    let mut f = Map::new();
    f.insert("scope".into(), json!(scope_string(grant)));
    f.insert("exp".into(), json!(grant.exp));
    f
}

/// What became of one ring record for one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Handed to str0m; `first` for the viewer's first packet.
    Sent { first: bool, video: bool },
    /// Dropped while the viewer waits for a keyframe; ask the source for one if told to.
    Waiting { request_keyframe: bool },
    /// Not for this viewer (a track it did not negotiate, or not RTP).
    Skipped,
}

/// One viewer's feed from the current source: per-track rewriting (`fanout::TrackMap`) and
/// the hand-over of shared payloads to str0m. Sans-IO: the caller reads the ring and drives
/// str0m.
#[derive(Debug)]
pub struct Feed {
    ready: Option<Arc<ReadySource>>,
    video: Option<TrackMap>,
    audio: Option<TrackMap>,
    sent: u64,
    /// Set while the viewer catches up on a backlog (video only; audio resumes when live).
    catchup: Option<Catchup>,
    /// Capture times of the records written since [`Feed::take_written`], for the
    /// forwarding latency.
    written: Vec<u64>,
    /// Capture times of the live video frames whose last packet was written since
    /// [`Feed::take_frames`], for the ingest latency (sources stamped at the gateway's ingest).
    frames: Vec<u64>,
}

impl Feed {
    /// Random starting sequence numbers and timestamps per track (RFC 3550 §5.1).
    pub fn new(tracks: &Tracks) -> Self {
        let mut rnd = [0u8; 12];
        let _ = rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty());
        let r16 = |i: usize| u16::from_be_bytes([rnd[i], rnd[i + 1]]) & 0x7fff;
        let r32 = |i: usize| u32::from_be_bytes([rnd[i], rnd[i + 1], rnd[i + 2], rnd[i + 3]]);
        Self {
            ready: None,
            video: tracks
                .video
                .as_ref()
                .map(|(_, pt, clock)| TrackMap::new(**pt, *clock, true, r16(0), r32(4))),
            audio: tracks
                .audio
                .as_ref()
                .map(|(_, pt, clock)| TrackMap::new(**pt, *clock, false, r16(2), r32(8))),
            sent: 0,
            catchup: None,
            written: Vec::with_capacity(DRAIN_BATCH + 1),
            frames: Vec::new(),
        }
    }

    /// Follows a (new) source: timing re-anchors, and video waits for a keyframe.
    pub fn attach(&mut self, ready: Arc<ReadySource>) {
        self.discontinuity();
        self.ready = Some(ready);
    }

    /// Sends what follows as a backlog, paced by `catchup` (see [`Feed::due`]).
    pub fn begin_catchup(&mut self, catchup: Catchup) {
        if let Some(v) = self.video.as_mut() {
            v.compress(catchup.speed());
        }
        self.catchup = Some(catchup);
    }

    /// Whether the viewer is still catching up on a backlog.
    pub fn catching_up(&self) -> bool {
        self.catchup.is_some()
    }

    /// When to write the record captured at `capture_us`: `None` now, else at the returned
    /// time (µs, `rtp_ring::now_us` clock). The first record that needs no wait ends the
    /// catching up.
    pub fn due(&mut self, capture_us: u64, now_us: u64) -> Option<u64> {
        let c = self.catchup?;
        if c.caught_up(capture_us) {
            self.end_catchup();
            return None;
        }
        let due = c.due_us(capture_us);
        (due > now_us).then_some(due)
    }

    /// The viewer has sent everything in the ring: it is live. Returns whether it was still
    /// catching up.
    pub fn reached_live_edge(&mut self) -> bool {
        let was = self.catchup.is_some();
        self.end_catchup();
        was
    }

    fn end_catchup(&mut self) {
        if self.catchup.take().is_some()
            && let Some(v) = self.video.as_mut()
        {
            v.end_compress();
        }
    }

    /// A break in what this viewer read (an overrun).
    pub fn discontinuity(&mut self) {
        self.end_catchup();
        if let Some(v) = self.video.as_mut() {
            v.discontinuity();
        }
        if let Some(a) = self.audio.as_mut() {
            a.discontinuity();
        }
    }

    /// Whether live records were written since [`Feed::take_written`].
    pub fn wrote(&self) -> bool {
        !self.written.is_empty() || !self.frames.is_empty()
    }

    /// The capture times of the live records written since the last call (a backlog sent
    /// while catching up is late on purpose and not among them).
    pub fn take_written(&mut self) -> std::vec::Drain<'_, u64> {
        self.written.drain(..)
    }

    /// The capture times of the live video frames finished since the last call, from a
    /// source stamped at the gateway's ingest (none otherwise).
    pub fn take_frames(&mut self) -> std::vec::Drain<'_, u64> {
        self.frames.drain(..)
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Writes one ring record to the viewer's `rtc` with the viewer's header fields.
    pub fn write(
        &mut self,
        rtc: &mut Rtc,
        tracks: &Tracks,
        meta: &rtp_ring::RecordMeta,
        packet: &[u8],
    ) -> Written {
        let Some(ready) = &self.ready else {
            return Written::Skipped;
        };
        let (map, mid, video) = if Some(meta.track) == ready.video_track {
            match (&mut self.video, &tracks.video) {
                (Some(m), Some((mid, _, _))) => (m, *mid, true),
                _ => return Written::Skipped,
            }
        } else if Some(meta.track) == ready.audio_track {
            match (&mut self.audio, &tracks.audio) {
                // Sound cannot be sped up: audio joins once the viewer is live.
                _ if self.catchup.is_some() => return Written::Skipped,
                (Some(m), Some((mid, _, _))) => (m, *mid, false),
                _ => return Written::Skipped,
            }
        } else {
            return Written::Skipped;
        };
        let (Some(hdr), Some(payload)) = (RtpHeaderView::parse(packet), payload_range(packet))
        else {
            return Written::Skipped;
        };
        match map.step(&hdr, meta.flags, meta.capture_us) {
            Step::WaitKeyframe { request_keyframe } => Written::Waiting { request_keyframe },
            Step::Send {
                pt,
                seq,
                timestamp,
                marker,
            } => {
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    return Written::Skipped;
                };
                tx.write_rtp(
                    RtpWrite::new(
                        Pt::from(pt),
                        seq.into(),
                        timestamp,
                        Instant::now(),
                        ready.payloads.get(meta.index, &packet[payload]),
                    )
                    .marker(marker)
                    .nackable(video),
                );
                self.sent += 1;
                if self.catchup.is_none() {
                    if ready.capture != Capture::Ingested {
                        self.written.push(meta.capture_us);
                    }
                    if video
                        && ready.capture != Capture::Written
                        && meta.flags.contains(Flags::END_OF_FRAME)
                    {
                        self.frames.push(meta.capture_us);
                    }
                }
                Written::Sent {
                    first: self.sent == 1,
                    video,
                }
            }
        }
    }
}

/// A cursor on a (new) source's ring: at its newest keyframe if there is one young enough
/// to start from, else at the newest record (and a keyframe is requested). A VOD transcoder
/// makes a keyframe on request at once, so a keyframe older than `MAX_START_AGE_US` is not
/// worth it; a live publisher may ignore requests and have a GOP of seconds, so any keyframe
/// up to `MAX_LIVE_BACKLOG_US` old is. Starting from an older keyframe, the viewer catches up
/// on the backlog (`fanout::Catchup`).
fn open_reader(
    ready: &Arc<ReadySource>,
    feed: &mut Feed,
    session: &crate::session::Session,
) -> Option<(AsyncReader, Arc<ReadySource>)> {
    let mut reader = ready.ring.reader();
    feed.attach(ready.clone());
    if let Some(track) = ready.video_track {
        let mut probe = ready.ring.reader();
        let mut scratch = Vec::new();
        let now = rtp_ring::now_us();
        let keyframe_us = match probe.resync_to_keyframe(track) {
            true => match probe.try_next_into(&mut scratch) {
                Ok(Some(m)) => Some(m.capture_us),
                _ => None,
            },
            false => None,
        };
        let max_age = match session.kind {
            SessionKind::Live => MAX_LIVE_BACKLOG_US,
            SessionKind::Vod => MAX_START_AGE_US,
        };
        match keyframe_us.filter(|&k| now.saturating_sub(k) < max_age) {
            Some(k) => {
                reader.resync_to_keyframe(track);
                let catchup = Catchup::new(now, k);
                tracing::debug!(
                    keyframe_age_ms = now.saturating_sub(k) / 1000,
                    speed = catchup.map_or(1.0, |c| c.speed()),
                    "reader opened at a keyframe"
                );
                if let Some(c) = catchup {
                    feed.begin_catchup(c);
                }
            }
            None => {
                tracing::debug!("reader opened at the newest record; keyframe requested");
                session.request_keyframe();
            }
        }
    }
    match reader.into_async() {
        Ok(r) => Some((r, ready.clone())),
        Err(e) => {
            tracing::error!("cannot wait on the session ring: {e}");
            None
        }
    }
}

/// A record read from the ring and kept until it is due.
#[derive(Debug, Default)]
struct Held {
    meta: Option<rtp_ring::RecordMeta>,
    buf: Vec<u8>,
}

impl Held {
    fn hold(&mut self, meta: rtp_ring::RecordMeta, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.buf, buf);
        self.meta = Some(meta);
    }

    /// The held record, its bytes put back into `buf`.
    fn take(&mut self, buf: &mut Vec<u8>) -> rtp_ring::RecordMeta {
        std::mem::swap(&mut self.buf, buf);
        self.meta.take().expect("a record is held")
    }
}

fn on_overrun(r: &mut AsyncReader, feed: &mut Feed, metrics: &Metrics, lost: u64) {
    metrics.ring_overruns.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        lost,
        "viewer fell a ring lap behind; resyncing at a keyframe"
    );
    if let Some(track) = feed.ready.as_ref().and_then(|r| r.video_track) {
        r.reader().resync_to_keyframe(track);
    }
    feed.discontinuity();
}

async fn next_record(
    reader: &mut Option<(AsyncReader, Arc<ReadySource>)>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<rtp_ring::RecordMeta, rtp_ring::Overrun>> {
    match reader {
        Some((r, _)) => r.next_into(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! A sans-IO scenario (DESIGN.md tests, level 2): a viewer's `Rtc` built by [`answer`] and
    //! a str0m client exchange datagrams in memory on a virtual clock; records go through a
    //! real ring and [`Feed`] to the client, which depacketizes them.

    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use rtp_ring::{RecordRef, Ring};
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

    use super::*;
    use crate::config::{VideoCodec, VideoFormat};
    use crate::fanout::PayloadCache;
    use crate::offer::{Offer, Served};
    use crate::session::ReadySource;

    const SERVER: &str = "10.0.0.1:8443";
    const CLIENT: &str = "10.0.0.2:5000";

    /// What the client saw.
    #[derive(Default, Debug)]
    struct Seen {
        connected: bool,
        frames: Vec<(bool, Vec<u8>)>,
        audio: usize,
    }

    /// Polls both peers to their timeouts, delivering datagrams between them; returns the
    /// earliest timeout.
    fn pump(server: &mut Rtc, client: &mut Rtc, now: Instant, seen: &mut Seen) -> Instant {
        let (s_addr, c_addr): (SocketAddr, SocketAddr) =
            (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
        loop {
            let (ts, sent) = deliver(server, client, (s_addr, c_addr), now, |_| {});
            let (tc, replied) = deliver(client, server, (c_addr, s_addr), now, |e| match e {
                Event::Connected => seen.connected = true,
                Event::MediaData(d) if d.params.spec().codec.is_video() => {
                    seen.frames.push((d.is_keyframe(), d.data.to_vec()));
                }
                Event::MediaData(_) => seen.audio += 1,
                _ => {}
            });
            if !sent && !replied {
                return ts.min(tc);
            }
        }
    }

    /// Polls `from` to its timeout, handing what it transmits to `to` and its events to
    /// `on_event`; returns the timeout and whether anything was transmitted.
    fn deliver(
        from: &mut Rtc,
        to: &mut Rtc,
        (from_addr, to_addr): (SocketAddr, SocketAddr),
        now: Instant,
        mut on_event: impl FnMut(Event),
    ) -> (Instant, bool) {
        let mut moved = false;
        loop {
            match from.poll_output().expect("poll") {
                Output::Timeout(t) => return (t, moved),
                Output::Transmit(t) => {
                    let r = Receive::new(Protocol::Udp, from_addr, to_addr, &t.contents).unwrap();
                    to.handle_input(Input::Receive(now, r)).unwrap();
                    moved = true;
                }
                Output::Event(e) => on_event(e),
            }
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

    #[test]
    fn a_panic_in_str0m_refuses_the_offer_instead_of_the_connection() {
        // This offer passes str0m's own parsing and then trips an assertion in it (the
        // gateway's offer checks refuse it earlier; this is the net behind them).
        let text = include_str!("../tests/offers/fuzz-pt-reused-across-sections.sdp");
        let mut rtc = RtcConfig::new().set_ice_lite(true).build(Instant::now());
        let e = accept_offer(&mut rtc, text).expect_err("refused");
        assert!(e.contains("Pt locked multiple times"), "{e}");
        // The good offer after it is answered by a fresh connection as before.
        let mut rtc = RtcConfig::new().set_ice_lite(true).build(Instant::now());
        let good = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
                    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
                    a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
                    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
                    a=setup:actpass\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(accept_offer(&mut rtc, good).is_ok());
    }

    #[test]
    fn a_viewer_catching_up_is_live_once_it_has_sent_everything_written() {
        let tracks = Tracks {
            video: Some((Mid::from("0"), Pt::from(96), 90_000)),
            audio: None,
        };
        let mut feed = Feed::new(&tracks);
        // A keyframe two seconds old: records are paced by their capture times, and one
        // stamped 100 ms before it was written (a transcoded live source's arrival stamp)
        // would not count as caught up yet.
        let now = 10_000_000;
        feed.begin_catchup(Catchup::new(now, now - 2_000_000).expect("old enough"));
        assert!(feed.due(now + 500_000 - 100_000, now + 500_000).is_some());
        assert!(feed.catching_up());
        // The ring drained: nothing written is left to send, so it is live.
        assert!(feed.reached_live_edge());
        assert!(!feed.catching_up());
        assert_eq!(feed.due(now + 600_000, now + 600_000), None);
        assert!(!feed.reached_live_edge(), "already live");
    }

    #[test]
    fn a_viewer_receives_the_ring_from_its_first_keyframe_with_its_own_numbering() {
        let mut now = Instant::now();
        let mut client = RtcConfig::new().build(now);
        client.add_local_candidate(Candidate::host(CLIENT.parse().unwrap(), "udp").unwrap());
        let mut api = client.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let offer = Offer::parse(offer.to_sdp_string().as_bytes()).unwrap();
        let plan = offer
            .plan_whep(Served {
                video: VideoFormat::transcoded(VideoCodec::H264),
                audio: true,
            })
            .unwrap();
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .unwrap();
        let answered = answer(
            &offer,
            plan,
            VideoFormat::transcoded(VideoCodec::H264),
            &cert,
            &[SERVER.parse().unwrap()],
            false,
        )
        .unwrap();
        let mut server = answered.rtc;
        client
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answered.answer).unwrap(),
            )
            .unwrap();
        let mut seen = Seen::default();
        for _ in 0..200 {
            let next = pump(&mut server, &mut client, now, &mut seen);
            if seen.connected && server.is_connected() {
                break;
            }
            now = next.max(now + Duration::from_millis(1));
            server.handle_input(Input::Timeout(now)).unwrap();
            client.handle_input(Input::Timeout(now)).unwrap();
        }
        assert!(
            seen.connected && server.is_connected(),
            "ICE and DTLS in memory"
        );

        // The source: a real ring with the transcoder's numbering (video PT 96 on track 0,
        // Opus PT 111 on track 1). A frame before the first keyframe must not reach the viewer.
        let ring = Ring::create_memfd("peer-test", 1 << 20).unwrap();
        let mut writer = ring.writer();
        let mut reader = ring.reader();
        let sps = [
            0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40, 0x00, 0x00, 0x03, 0x00,
            0x40, 0x00, 0x00, 0x0f, 0x03, 0xc6, 0x0c, 0xa8,
        ];
        let pps = [0x68, 0xce, 0x0f, 0xc8];
        let mut records: Vec<(u8, Flags, Vec<u8>)> = Vec::new();
        let (vs, as_) = (0x1111_1111, 0x2222_2222);
        records.push((
            0,
            Flags::END_OF_FRAME,
            rtp(96, 40, 0, vs, true, &[0x41, 0x9a, 1]),
        ));
        let mut seq = 41u16;
        let mut next_seq = || {
            seq += 1;
            seq - 1
        };
        let idr = [0x65, 0x88, 0x84, 0x00, 0x33];
        for f in 0..5u16 {
            let ts = 3000 * (f as u32 + 1);
            if f == 0 {
                records.push((0, Flags::KEYFRAME, rtp(96, next_seq(), ts, vs, false, &sps)));
                records.push((0, Flags::empty(), rtp(96, next_seq(), ts, vs, false, &pps)));
                records.push((
                    0,
                    Flags::END_OF_FRAME,
                    rtp(96, next_seq(), ts, vs, true, &idr),
                ));
            } else {
                let p = [0x41, 0x9a, f as u8];
                records.push((
                    0,
                    Flags::END_OF_FRAME,
                    rtp(96, next_seq(), ts, vs, true, &p),
                ));
            }
            let opus = rtp(111, f, 960 * f as u32, as_, false, &[0xfc, 0xff, 0xfe]);
            records.push((1, Flags::END_OF_FRAME, opus));
        }
        for (track, flags, packet) in &records {
            writer
                .write(RecordRef {
                    track: *track,
                    flags: *flags,
                    capture_us: rtp_ring::now_us(),
                    packet,
                })
                .unwrap();
        }
        let ready = Arc::new(ReadySource {
            ring: ring.clone(),
            payloads: PayloadCache::new(64),
            generation: 1,
            video_track: Some(0),
            audio_track: Some(1),
            width: 1280,
            height: 720,
            fps: 30.0,
            duration: None,
            video_format: VideoFormat::transcoded(VideoCodec::H264),
            capture: Capture::Ingested,
        });
        let mut feed = Feed::new(&answered.tracks);
        feed.attach(ready);
        let mut buf = Vec::new();
        let mut outcomes = Vec::new();
        while let Some(meta) = reader.try_next_into(&mut buf).unwrap() {
            outcomes.push(feed.write(&mut server, &answered.tracks, &meta, &buf));
        }
        assert_eq!(
            outcomes[0],
            Written::Waiting {
                request_keyframe: true
            },
            "the P-frame before the keyframe is held back, and a keyframe is asked for once"
        );
        assert_eq!(feed.sent(), (records.len() - 1) as u64, "{outcomes:?}");
        // Stamped at the ingest: each video frame sent counts once, for the ingest latency,
        // and no packet for the forwarding latency (it would include the transcoding).
        assert!(feed.wrote());
        assert_eq!(feed.take_frames().count(), 5);
        assert_eq!(feed.take_written().count(), 0);
        assert!(!feed.wrote());
        for _ in 0..50 {
            let next = pump(&mut server, &mut client, now, &mut seen);
            if seen.frames.len() >= 5 && seen.audio >= 5 {
                break;
            }
            now = next.max(now + Duration::from_millis(1));
            server.handle_input(Input::Timeout(now)).unwrap();
            client.handle_input(Input::Timeout(now)).unwrap();
        }
        assert_eq!(seen.frames.len(), 5, "{seen:?}");
        assert!(seen.audio >= 4, "{seen:?}");
        let (key, first) = &seen.frames[0];
        assert!(*key, "the viewer starts at the keyframe");
        // SPS, PPS and IDR arrive byte for byte, as one access unit.
        for nal in [&sps[..], &pps[..], &idr[..]] {
            assert!(first.windows(nal.len()).any(|w| w == nal), "{first:?}");
        }
        for (i, (_, frame)) in seen.frames.iter().enumerate().skip(1) {
            assert!(
                frame.ends_with(&[0x41, 0x9a, i as u8]),
                "frame {i}: {frame:?}"
            );
        }
    }
}
