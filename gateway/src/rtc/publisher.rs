//! One WHIP publisher's whole policy, sans-IO, as a viewer's is (`rtc/viewer.rs`): inputs go
//! in through [`Publisher::handle`] (and [`Publisher::patch`]) with the time they happen at;
//! what it wants done comes out of [`Publisher::poll_output`] as a datagram to send, an event
//! for its driver, or the time it next needs to be woken. It owns no socket, no task and no
//! clock. [`spawn`] is its driver: a task with the publisher's datagrams, its resource's
//! messages, the session's keyframe requests and a timer.
//!
//! What it decides (DESIGN.md "Data path" 1): what goes into the session's ring, a fresh one
//! per publish, with each record's track and flags (a keyframe's start, read from the payload
//! since a publisher's packets carry no such mark, and a frame's end); which simulcast layer is
//! forwarded; keyframe requests turned into PLI; the ingest bitrate and REMB to keep under the
//! limit; the connect timeout; how it ends (DELETE, ICE consent expiry, DTLS close, the
//! session's stop), after which the driver frees the session's publisher slot. Viewers read
//! the ring exactly as they read a transcoder's.
//!
//! str0m's run-loop rule holds: after every input, [`Publisher::poll_output`] is called until
//! it returns a timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtp_ring::{Flags, RecordRef, Ring, Writer};
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, Rid};
use str0m::net::Transmit;
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Event as RtcEvent, IceConnectionState, Input as RtcInput, Output as RtcOutput, Rtc};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::{VideoCodec, VideoFormat};
use crate::rtc::Clock;
use crate::rtc::answer::Tracks;
use crate::rtc::ice::{Closed, IceSession, OnEnd, PatchError, Patched, PeerMsg, PortLink};
use crate::rtc::offer::Fragment;
use crate::rtc::udp::{Datagram, Outbox, RtcPort};
use crate::session::layers::Layer;
use crate::session::{Capture, PublisherClaim, ReadySource};

/// Recent records whose payloads viewers share.
const PAYLOAD_CACHE_SLOTS: usize = 2048;
/// Ring track numbers of a live source.
const VIDEO_TRACK: u8 = 0;
const AUDIO_TRACK: u8 = 1;
/// The fixed RTP header, counted with the payload in a publisher's bitrate.
const RTP_HEADER: usize = 12;
/// How often a publisher's bitrate is measured and REMB sent.
const INGEST_WINDOW: Duration = Duration::from_secs(1);
/// A video packet that does not end its frame wakes the ring's readers at most this late (a
/// frame's last packet, and audio, wake them at once): viewers' workers then send a frame's
/// packets in one turn, one segmented message per viewer, instead of one turn per packet.
const WAKE_HOLD: Duration = Duration::from_millis(5);
/// Opus's share of the ingest limit (at most ~64 kb/s for stereo speech and music): it comes
/// off the video budget that REMB asks for.
const AUDIO_SHARE: u64 = 64_000;

/// A publisher's received bitrate, measured over [`INGEST_WINDOW`]s.
#[derive(Debug, Default)]
struct IngestMeter {
    start: Option<(Instant, u64)>,
    /// The last window was over the limit (to log changes only).
    over: bool,
}

impl IngestMeter {
    /// Given the bytes received so far, the bits/s of the window that just ended, if one did.
    fn tick(&mut self, bytes: u64, now: Instant) -> Option<u64> {
        let Some((t0, b0)) = self.start else {
            self.start = Some((now, bytes));
            return None;
        };
        let elapsed = now.duration_since(t0);
        if elapsed < INGEST_WINDOW {
            return None;
        }
        self.start = Some((now, bytes));
        Some(((bytes - b0) as f64 * 8.0 / elapsed.as_secs_f64()) as u64)
    }
}

/// Something that happened to the publisher, for [`Publisher::handle`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram from the publisher's address on the RTC port.
    Datagram(&'a Datagram),
    /// The time passed; whatever was due is done.
    Timeout,
    /// The session wants a keyframe (it throttles how often): a PLI for the simulcast layer
    /// on this ring track, or for every layer.
    KeyframeWanted(Option<u8>),
    /// The publisher is to end: its resource's DELETE, the gateway's drain.
    Close(Closed),
    /// The session was stopped.
    SessionStopped,
}

/// What the publisher wants from its driver, from [`Publisher::poll_output`].
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
#[derive(Debug)]
pub enum Event {
    /// ICE and DTLS are up: hand the session its source (viewers start reading its ring).
    Connected {
        after: Duration,
        source: Arc<ReadySource>,
    },
    /// The bits/s received over the last second (the session's `ingest_bitrate`).
    IngestBitrate(u64),
    /// A keyframe said the picture is this size.
    PictureSize { width: u32, height: u32 },
    /// The publisher ended for this reason. Its closing datagrams still come out of
    /// [`Publisher::poll_output`]; after them, [`Publisher::is_done`].
    Ended(String),
}

/// What a publisher is made from (its resource's answered offer).
#[derive(Debug)]
pub struct Params {
    /// The resource id.
    pub id: String,
    pub rtc: Rtc,
    pub ice: IceSession,
    pub tracks: Tracks,
    /// What the publisher sends (its offer's format that we answered).
    pub video: VideoFormat,
    /// The ring this publish writes (a fresh one), and its publisher slot's generation.
    pub ring: Ring,
    /// The simulcast layers (RIDs) the answer accepted; empty without simulcast.
    pub rids: Vec<String>,
    pub generation: u64,
    /// The most bits/s it may send (`limits.max_ingest_bitrate`).
    pub max_bitrate: u64,
    /// Not connected (ICE and DTLS) within this: the publisher ends.
    pub connect_timeout: Duration,
    pub clock: Clock,
}

/// How the publisher is ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Running,
    /// Ended; str0m's closing datagrams are drained.
    Closed,
    /// Nothing left to send.
    Done,
}

/// One publisher (see the module's description).
#[derive(Debug)]
pub struct Publisher {
    id: String,
    rtc: Rtc,
    ice: IceSession,
    tracks: Tracks,
    video: VideoFormat,
    max_bitrate: u64,
    connect_timeout: Duration,
    clock: Clock,
    created: Instant,
    connected: bool,
    sink: Sink,
    meter: IngestMeter,
    /// When the datagram being taken in was read from the socket (µs on the ring's clock).
    arrived_us: Option<u64>,
    /// When str0m wants its next timeout.
    rtc_due: Instant,
    ending: Ending,
    events: VecDeque<Event>,
}

impl Publisher {
    pub fn new(p: Params, now: Instant) -> Self {
        Self {
            sink: Sink::new(p.ring, &p.tracks, p.video, p.generation, &p.rids),
            id: p.id,
            rtc: p.rtc,
            ice: p.ice,
            tracks: p.tracks,
            video: p.video,
            max_bitrate: p.max_bitrate,
            connect_timeout: p.connect_timeout,
            clock: p.clock,
            created: now,
            connected: false,
            meter: IngestMeter::default(),
            arrived_us: None,
            rtc_due: now,
            ending: Ending::Running,
            events: VecDeque::new(),
        }
    }

    /// The resource id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The publisher's current local ICE ufrag (STUN for it is routed to this publisher).
    pub fn ufrag(&self) -> &str {
        &self.ice.ufrag
    }

    /// Packets written to the ring, and keyframes among them.
    pub fn written(&self) -> (u64, u64) {
        (self.sink.packets, self.sink.keyframes)
    }

    /// Whether it ended and sent its last datagram: drop it.
    pub fn is_done(&self) -> bool {
        self.ending == Ending::Done
    }

    /// Handles one input at `now`; then poll.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Datagram(dg) => {
                if self.ending != Ending::Running {
                    return;
                }
                // What str0m hands out before the next poll came in this datagram.
                self.arrived_us = Some(dg.at_us);
                crate::rtc::ice::receive(&mut self.rtc, dg, now);
            }
            Input::Timeout => {
                if self.ending == Ending::Running
                    && now >= self.rtc_due
                    && let Err(e) = self.rtc.handle_input(RtcInput::Timeout(now))
                {
                    self.end(format!("str0m: {e}"));
                }
            }
            Input::KeyframeWanted(track) => {
                if self.ending == Ending::Running {
                    self.request_keyframe(track);
                }
            }
            Input::Close(why) => self.end(why.to_string()),
            Input::SessionStopped => self.end("the session was stopped".into()),
        }
    }

    /// A trickle-ICE or ICE-restart PATCH (RFC 9725 §4.3); after a restart, STUN for the new
    /// [`Publisher::ufrag`] must reach this publisher too.
    pub fn patch(
        &mut self,
        fragment: Fragment,
        if_match: Option<&str>,
    ) -> Result<Patched, PatchError> {
        if self.ending != Ending::Running {
            return Err(PatchError::Gone);
        }
        self.ice.patch(&mut self.rtc, fragment, if_match)
    }

    /// What to do next (see [`Output`]); call until it returns a timeout.
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
                Ending::Running => {}
            }
            if !self.rtc.is_alive() {
                self.end("the connection closed".into());
                continue;
            }
            match self.rtc.poll_output() {
                Ok(RtcOutput::Transmit(t)) => return Output::Transmit(t),
                Ok(RtcOutput::Event(RtcEvent::RtpPacket(p))) => {
                    let capture_us = self.arrived_us.unwrap_or_else(|| self.clock.ring_us(now));
                    self.sink.write(&p, &self.tracks, capture_us, now);
                    continue;
                }
                Ok(RtcOutput::Event(RtcEvent::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => {
                    self.end("ICE disconnected (consent expired)".into());
                    continue;
                }
                Ok(RtcOutput::Event(_)) => continue,
                Ok(RtcOutput::Timeout(t)) => self.rtc_due = t,
                Err(e) => {
                    self.end(format!("str0m: {e}"));
                    continue;
                }
            }
            // str0m is idle: what it handed out is in the ring.
            self.arrived_us = None;
            if self.follow(now) {
                continue;
            }
            return Output::Timeout(self.deadline());
        }
    }

    /// What follows from what was received, and the clock; whether anything did (str0m may
    /// have something to send, or the driver an event).
    fn follow(&mut self, now: Instant) -> bool {
        if self.sink.unwoken.is_some_and(|t| now >= t + WAKE_HOLD) {
            self.sink.wake();
        }
        if let Some((width, height)) = self.sink.picture_size.take() {
            self.events.push_back(Event::PictureSize { width, height });
            return true;
        }
        if self.connected
            && let Some(bps) = self.meter.tick(self.sink.bytes, now)
        {
            self.sink.measure_layers(now);
            self.events.push_back(Event::IngestBitrate(bps));
            self.on_ingest_rate(bps);
            return true;
        }
        if !self.connected {
            if self.rtc.is_connected() {
                // Viewers are handed the source once media can flow.
                self.connected = true;
                let after = now.saturating_duration_since(self.created);
                tracing::info!(
                    after_ms = after.as_millis() as u64,
                    video = %self.video.describe(),
                    audio = self.tracks.audio.is_some(),
                    "publisher connected"
                );
                self.events.push_back(Event::Connected {
                    after,
                    source: self.sink.source.clone(),
                });
                return true;
            }
            if now >= self.created + self.connect_timeout {
                self.end(format!(
                    "no ICE/DTLS connection within {} s",
                    self.connect_timeout.as_secs_f64()
                ));
                return true;
            }
        }
        false
    }

    /// The earliest time something is due.
    fn deadline(&self) -> Instant {
        let mut t = self.rtc_due;
        if !self.connected {
            // The connect timeout fires on time, whatever str0m waits for.
            t = t.min(self.created + self.connect_timeout);
        }
        if let Some((start, _)) = self.meter.start {
            t = t.min(start + INGEST_WINDOW);
        }
        if let Some(since) = self.sink.unwoken {
            t = t.min(since + WAKE_HOLD);
        }
        t
    }

    /// Ends the publisher for `reason`: the driver hears first (the resource is gone with its
    /// reason kept, so a client that DELETEs on close_notify gets the 404 that says why), then
    /// the publisher does (RTCP BYE, DTLS close_notify), whatever ended it.
    fn end(&mut self, reason: String) {
        if self.ending != Ending::Running {
            return;
        }
        tracing::info!(
            packets = self.sink.packets,
            keyframes = self.sink.keyframes,
            ring_wakeups = self.sink.wakes,
            "publisher ended: {reason}"
        );
        self.events.push_back(Event::Ended(reason));
        crate::rtc::ice::close(&mut self.rtc);
        self.ending = Ending::Closed;
        // What a frame cut short left in the ring is the readers' to see now.
        if self.sink.unwoken.is_some() {
            self.sink.wake();
        }
    }

    /// Once a second: asks the publisher by REMB to stay under the limit, and logs when it
    /// does not (it is not cut off: a publisher that ignores REMB is a misconfigured encoder,
    /// and its viewers still play).
    fn on_ingest_rate(&mut self, bps: u64) {
        let audio = if self.tracks.audio.is_some() {
            AUDIO_SHARE
        } else {
            0
        };
        let video_cap = self.max_bitrate.saturating_sub(audio).max(50_000);
        for ssrc in &self.sink.video_ssrcs {
            if let Some(rx) = self.rtc.direct_api().stream_rx(ssrc) {
                rx.request_remb(Bitrate::bps(video_cap));
            }
        }
        // A second over the limit by more than a tenth (bursts at keyframes are normal).
        let over = bps > self.max_bitrate + self.max_bitrate / 10;
        if over && !self.meter.over {
            tracing::warn!(
                bitrate = bps,
                limit = self.max_bitrate,
                "publisher sends over the ingest limit (asked by REMB to stay under it)"
            );
        } else if !over && self.meter.over {
            tracing::info!(bitrate = bps, "publisher back under the ingest limit");
        }
        self.meter.over = over;
    }

    /// A PLI to the publisher for the simulcast layer on ring track `track`, or for every
    /// layer (`None`; without simulcast, the only stream).
    fn request_keyframe(&mut self, track: Option<u8>) {
        let Some((mid, _, _)) = self.tracks.video else {
            return;
        };
        let rids: Vec<Option<Rid>> = self
            .sink
            .video_layers
            .iter()
            .filter(|l| track.is_none_or(|t| t == l.track))
            .map(|l| l.rid)
            .collect();
        for rid in rids {
            match self.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                Some(rx) => {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    tracing::debug!(rid = rid.as_deref(), "PLI to the publisher");
                }
                None => tracing::debug!(
                    rid = rid.as_deref(),
                    "no video from the publisher yet: no PLI"
                ),
            }
        }
    }
}

/// Drives `publisher` in a task of its own until it ends: its datagrams (routed to it by its
/// ufrag on the shared port), its resource's messages (PATCH, DELETE), the session's keyframe
/// requests, its timer and the session's stop. Its events become the session's news;
/// `on_end` runs when it ends, and dropping `claim` then frees the session's publisher slot.
pub fn spawn(
    mut publisher: Publisher,
    claim: PublisherClaim,
    port: Arc<RtcPort>,
    mut inbox: mpsc::Receiver<PeerMsg>,
    mut on_end: OnEnd,
) {
    let session = claim.session().clone();
    let span = tracing::info_span!(
        "publisher",
        session = %session.name,
        resource = %publisher.id()
    );
    let task = async move {
        let (mut link, mut datagrams) = PortLink::with_channel(port.clone(), publisher.ufrag());
        let (keyframe_tx, mut keyframe_rx) = mpsc::unbounded_channel::<Option<u8>>();
        let mut keyframe_tx = Some(keyframe_tx);
        let mut outbox = Outbox::default();
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let stopped = session.cancelled();
        tokio::pin!(stopped);
        let mut stop_heard = false;
        loop {
            let deadline = loop {
                match publisher.poll_output(Instant::now()) {
                    Output::Transmit(t) => outbox.transmit(&port, &t),
                    Output::Timeout(t) => break t,
                    Output::Event(e) => match e {
                        Event::Connected { source, .. } => {
                            if let Some(tx) = keyframe_tx.take() {
                                claim.announce(source, tx);
                            }
                        }
                        Event::IngestBitrate(bps) => session.set_ingest_bitrate(bps),
                        Event::PictureSize { width, height } => {
                            session.set_picture_size(width, height)
                        }
                        // Gone, with its reason kept, before the publisher can hear of the end.
                        Event::Ended(reason) => on_end.run(&reason),
                    },
                }
            };
            outbox.flush_to(&port);
            if publisher.is_done() {
                break;
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                dg = datagrams.recv() => match dg {
                    Some((_, dg)) => publisher.handle(Input::Datagram(&dg), Instant::now()),
                    None => publisher.handle(Input::Close(Closed::Dropped), Instant::now()),
                },
                msg = inbox.recv() => match msg {
                    None => publisher.handle(Input::Close(Closed::Dropped), Instant::now()),
                    Some(PeerMsg::Close(why)) => publisher.handle(Input::Close(why), Instant::now()),
                    // A publisher has no layers to choose (the route is a viewer's).
                    Some(PeerMsg::Layer { reply, .. }) => {
                        let _ = reply.send(Err(crate::rtc::viewer::LayerError::NoLayers));
                    }
                    Some(PeerMsg::Patch { fragment, if_match, reply }) => {
                        let result = publisher.patch(fragment, if_match.as_deref());
                        if let Ok(Patched::Restarted { .. }) = &result {
                            link.add(publisher.ufrag());
                        }
                        let _ = reply.send(result);
                    }
                },
                Some(track) = keyframe_rx.recv() => publisher.handle(Input::KeyframeWanted(track), Instant::now()),
                _ = &mut timer => publisher.handle(Input::Timeout, Instant::now()),
                _ = &mut stopped, if !stop_heard => {
                    stop_heard = true;
                    publisher.handle(Input::SessionStopped, Instant::now());
                }
            }
        }
        // Dropping the claim tells the session its publisher is gone.
        drop(claim);
    };
    tokio::spawn(task.instrument(span));
}

/// The ring a publish writes and what viewers are told about it.
#[derive(Debug)]
struct Sink {
    writer: Writer,
    source: Arc<ReadySource>,
    codec: VideoCodec,
    /// The video streams: one, or one per simulcast layer (each on its own ring track).
    video_layers: Vec<SinkLayer>,
    /// The simulcast layer (index in `video_layers`) of each SSRC seen with a RID.
    ssrcs: Vec<(Ssrc, usize)>,
    /// When the layers' bitrates were last measured.
    measured_at: Option<Instant>,
    /// A packet rebuilt from str0m's parsed header and payload.
    packet: Vec<u8>,
    packets: u64,
    keyframes: u64,
    /// A new picture size not yet told (without simulcast; layers keep theirs).
    picture_size: Option<(u32, u32)>,
    /// Media bytes received (RTP header and payload, every layer).
    bytes: u64,
    /// The SSRCs video has come on (one, or one per simulcast layer): where REMB goes.
    video_ssrcs: Vec<Ssrc>,
    /// Since when records were written that the ring's readers were not woken for.
    unwoken: Option<Instant>,
    /// How many times they were woken.
    wakes: u64,
}

/// One video stream of a publisher, as the sink follows it.
#[derive(Debug)]
struct SinkLayer {
    /// Its simulcast RID (`None`: the only stream).
    rid: Option<Rid>,
    track: u8,
    /// The RTP timestamp of the last packet flagged as a keyframe start, so that only the
    /// first packet of a keyframe is flagged.
    key_ts: Option<u32>,
    /// The picture size its keyframes carry.
    size: Option<(u32, u32)>,
    /// Bytes since the last measurement.
    bytes: u64,
}

/// The ring track of simulcast layer `k` (audio keeps its track).
fn layer_track(k: usize) -> u8 {
    match k {
        0 => VIDEO_TRACK,
        k => (k + 1) as u8,
    }
}

/// The most simulcast layers written (the ring indexes keyframes of 8 tracks, one is audio's).
const MAX_LAYERS: usize = rtp_ring::MAX_TRACKS - 1;

impl Sink {
    fn new(
        ring: Ring,
        tracks: &Tracks,
        video: VideoFormat,
        generation: u64,
        rids: &[String],
    ) -> Self {
        let writer = ring.writer();
        if rids.len() > MAX_LAYERS {
            tracing::warn!(
                offered = rids.len(),
                "simulcast: only the first {MAX_LAYERS} layers are taken"
            );
        }
        let rids = &rids[..rids.len().min(MAX_LAYERS)];
        let video_layers: Vec<SinkLayer> = match rids.len() {
            0 => vec![SinkLayer::new(None, VIDEO_TRACK)],
            _ => rids
                .iter()
                .enumerate()
                .map(|(k, r)| SinkLayer::new(Some(Rid::from(r.as_str())), layer_track(k)))
                .collect(),
        };
        let source = Arc::new(ReadySource {
            ring,
            payloads: crate::session::fanout::PayloadCache::new(PAYLOAD_CACHE_SLOTS),
            generation,
            video_track: tracks.video.as_ref().map(|_| VIDEO_TRACK),
            audio_track: tracks.audio.as_ref().map(|_| AUDIO_TRACK),
            layers: rids
                .iter()
                .enumerate()
                .map(|(k, r)| Layer::new(layer_track(k), r.as_str()))
                .collect(),
            alternates: Vec::new(),
            width: 0,
            height: 0,
            fps: 0.0,
            duration: None,
            video_format: video,
            capture: Capture::Received,
        });
        Self {
            writer,
            source,
            codec: video.codec,
            video_layers,
            ssrcs: Vec::new(),
            measured_at: None,
            packet: Vec::with_capacity(1500),
            packets: 0,
            keyframes: 0,
            bytes: 0,
            video_ssrcs: Vec::new(),
            picture_size: None,
            unwoken: None,
            wakes: 0,
        }
    }

    /// Which video stream a packet is on: the only one, or its simulcast layer. Senders put
    /// the RID only on a stream's first packets (until they see it acknowledged); after that
    /// the SSRC says which layer a packet is. `None`: a layer not known (yet).
    fn video_layer(&mut self, p: &RtpPacket) -> Option<usize> {
        if self.video_layers.len() == 1 && self.video_layers[0].rid.is_none() {
            return Some(0);
        }
        if let Some((_, k)) = self.ssrcs.iter().find(|(s, _)| *s == p.header.ssrc) {
            return Some(*k);
        }
        let rid = p.header.ext_vals.rid?;
        let k = self.video_layers.iter().position(|l| l.rid == Some(rid))?;
        self.ssrcs.push((p.header.ssrc, k));
        Some(k)
    }

    /// Writes one received packet into the ring with its track and flags, stamped `capture_us`.
    fn write(&mut self, p: &RtpPacket, tracks: &Tracks, capture_us: u64, now: Instant) {
        // Padding-only packets (bandwidth probes) carry no media.
        if p.payload.is_empty() {
            return;
        }
        let mid = p.header.ext_vals.mid;
        let is = |t: &Option<(str0m::media::Mid, str0m::media::Pt, u32)>| {
            t.as_ref()
                .is_some_and(|(m, pt, _)| mid.map_or(*pt == p.header.payload_type, |x| x == *m))
        };
        let size = (RTP_HEADER + p.payload.len()) as u64;
        self.bytes += size;
        let (track, flags) = if is(&tracks.video) {
            if !self.video_ssrcs.contains(&p.header.ssrc) {
                self.video_ssrcs.push(p.header.ssrc);
            }
            let Some(k) = self.video_layer(p) else {
                return;
            };
            let codec = self.codec;
            let layer = &mut self.video_layers[k];
            layer.bytes += size;
            let mut flags = Flags::empty();
            if starts_keyframe(codec, &p.payload) && layer.key_ts != Some(p.header.timestamp) {
                layer.key_ts = Some(p.header.timestamp);
                self.keyframes += 1;
                flags |= Flags::KEYFRAME;
                // A keyframe's first packet carries the picture size (H.264 SPS, VP8 header).
                if let Some(size) = picture_size(codec, &p.payload)
                    && layer.size != Some(size)
                {
                    layer.size = Some(size);
                    match self.source.layers.get(k) {
                        Some(l) => l.set_size(size.0, size.1),
                        None => self.picture_size = Some(size),
                    }
                }
            }
            if p.header.marker {
                flags |= Flags::END_OF_FRAME;
            }
            if let Some(l) = self.source.layers.get(k) {
                l.saw(capture_us);
            }
            (layer.track, flags)
        } else if is(&tracks.audio) {
            (AUDIO_TRACK, Flags::empty())
        } else {
            return;
        };
        match append(
            &mut self.writer,
            &mut self.packet,
            p,
            track,
            flags,
            capture_us,
        ) {
            Ok(_) => {
                self.packets += 1;
                if track == AUDIO_TRACK || flags.contains(Flags::END_OF_FRAME) {
                    self.wake();
                } else {
                    self.unwoken.get_or_insert(now);
                }
            }
            Err(e) => tracing::debug!("packet not written to the ring: {e}"),
        }
    }

    /// Each simulcast layer's bits/s, for the viewers' choice: this window's rate averaged
    /// with the last (a keyframe's burst in one window is not the layer's rate).
    fn measure_layers(&mut self, now: Instant) {
        let Some(since) = self.measured_at.replace(now) else {
            // The bytes so far came before the first window began.
            for l in &mut self.video_layers {
                l.bytes = 0;
            }
            return;
        };
        let secs = now.duration_since(since).as_secs_f64().max(0.001);
        for (l, shared) in self.video_layers.iter_mut().zip(&self.source.layers) {
            let rate = (std::mem::take(&mut l.bytes) as f64 * 8.0 / secs) as u64;
            let smoothed = match shared.bitrate() {
                0 => rate,
                old => (old + rate) / 2,
            };
            shared.set_bitrate(smoothed);
        }
    }

    /// Wakes the ring's readers for what was written since the last time.
    fn wake(&mut self) {
        self.writer.wake();
        self.unwoken = None;
        self.wakes += 1;
    }
}

impl SinkLayer {
    fn new(rid: Option<Rid>, track: u8) -> Self {
        Self {
            rid,
            track,
            key_ts: None,
            size: None,
            bytes: 0,
        }
    }
}

/// Appends a received packet to the ring as a record of `track` with `flags`, through `buf`:
/// the fixed RTP header (marker, payload type, sequence number, timestamp, SSRC; no CSRCs or
/// extensions, which viewers' senders write their own of) and the payload. The caller wakes
/// the readers.
pub fn append(
    writer: &mut Writer,
    buf: &mut Vec<u8>,
    p: &RtpPacket,
    track: u8,
    flags: Flags,
    capture_us: u64,
) -> Result<u64, rtp_ring::WriteError> {
    ring_packet(buf, p);
    writer.append(RecordRef {
        track,
        flags,
        capture_us,
        packet: buf,
    })
}

fn ring_packet(out: &mut Vec<u8>, p: &RtpPacket) {
    out.clear();
    out.push(0x80);
    out.push((u8::from(p.header.marker) << 7) | (*p.header.payload_type & 0x7f));
    out.extend_from_slice(&p.header.sequence_number.to_be_bytes());
    out.extend_from_slice(&p.header.timestamp.to_be_bytes());
    out.extend_from_slice(&(*p.header.ssrc).to_be_bytes());
    out.extend_from_slice(&p.payload);
}

/// Whether an RTP payload begins a frame a decoder can start from: for H.264 (RFC 6184) one
/// holding an SPS or an IDR slice (a single NAL unit, inside a STAP-A, or the first fragment
/// of an FU-A); for VP8 (RFC 7741) the first packet of a key frame.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => h264_starts_keyframe(payload),
        VideoCodec::Vp8 => vp8_starts_keyframe(payload),
    }
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;

fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let is_key = |t: u8| matches!(t & 0x1f, H264_IDR | H264_SPS);
    match payload.first().map(|b| b & 0x1f) {
        // FU-A: the start bit and the fragmented unit's type in the FU header.
        Some(28) => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(*fu)),
        _ => h264_whole_nal_units(payload).any(|nal| is_key(nal[0])),
    }
}

/// The whole NAL units of an H.264 RTP payload: the payload itself (a single NAL unit), or
/// the units of a STAP-A (16-bit size, then the unit, repeated; a cut-off one ends the walk).
/// None for fragments (FU-A) and other aggregates. Every unit yielded has its header byte.
fn h264_whole_nal_units(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (single, mut rest) = match payload.first().map(|b| b & 0x1f) {
        Some(1..=23) => (Some(payload), &[][..]),
        Some(24) => (None, &payload[1..]),
        _ => (None, &[][..]),
    };
    let stap = std::iter::from_fn(move || {
        let size = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let nal = rest.get(2..2 + size).filter(|n| !n.is_empty())?;
        rest = &rest[2 + size..];
        Some(nal)
    });
    single.into_iter().chain(stap)
}

fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    // The VP8 frame header's P bit: 0 for a key frame (RFC 6386 §9.1).
    vp8_frame_start(payload).is_some_and(|f| f.first().is_some_and(|b| b & 0x01 == 0))
}

/// The VP8 frame's first bytes, if this payload starts a frame: after the payload descriptor
/// (RFC 7741 §4.2), with S set and partition index 0.
fn vp8_frame_start(payload: &[u8]) -> Option<&[u8]> {
    let &d = payload.first()?;
    if d & 0x10 == 0 || d & 0x07 != 0 {
        return None;
    }
    let mut i = 1;
    if d & 0x80 != 0 {
        let &x = payload.get(1)?;
        i = 2;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            i += if payload.get(i).is_some_and(|b| b & 0x80 != 0) {
                2
            } else {
                1
            };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    payload.get(i..)
}

/// Width and height from a keyframe's first packet, if it carries them: an H.264 SPS (a single
/// NAL unit or inside a STAP-A), or a VP8 key frame header.
pub fn picture_size(codec: VideoCodec, payload: &[u8]) -> Option<(u32, u32)> {
    match codec {
        VideoCodec::H264 => {
            let sps = h264_whole_nal_units(payload).find(|nal| nal[0] & 0x1f == H264_SPS)?;
            let rbsp = h264_reader::rbsp::decode_nal(sps).ok()?;
            let sps = h264_reader::nal::sps::SeqParameterSet::from_bits(
                h264_reader::rbsp::BitReader::new(&rbsp[..]),
            )
            .ok()?;
            sps.pixel_dimensions().ok()
        }
        // Frame tag (3 bytes), start code 9d 01 2a, 14-bit width and height (RFC 6386 §9.1).
        VideoCodec::Vp8 => {
            let f = vp8_frame_start(payload)?;
            if f.len() < 10 || f[0] & 1 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
            let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
            Some((w.into(), h.into()))
        }
    }
}

#[cfg(test)]
mod scenarios {
    //! Scenarios on a virtual clock (DESIGN.md tests, level 2): a publisher made by
    //! [`crate::rtc::answer::answer`] and a str0m client exchange datagrams in memory; what the
    //! publisher writes goes into a real ring. No test sleeps: time is what the test says it is.

    use std::net::SocketAddr;

    use rtp_ring::Reader;
    use str0m::bwe::BweKind;
    use str0m::change::SdpAnswer;
    use str0m::format::Codec;
    use str0m::media::{Direction, MediaKind, MediaTime, Mid};
    use str0m::{Candidate, RtcConfig};

    use str0m::net::{Protocol, Receive};

    use super::*;
    use crate::rtc::offer::Offer;

    const SERVER: &str = "10.0.0.1:8443";
    const CLIENT: &str = "10.0.0.2:5000";
    /// The capture time the "socket" stamps each datagram with (µs on the ring's clock).
    const ARRIVED_US: u64 = 77_000_000;

    /// SPS of a 1280x720 constrained-baseline stream (x264), and a PPS.
    const SPS: [u8; 22] = [
        0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0f, 0x03, 0xc6, 0x0c, 0xa8,
    ];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

    /// A publisher and its client (a WHIP sender), and what each side saw.
    struct Pair {
        publisher: Publisher,
        client: Rtc,
        video: Mid,
        audio: Mid,
        now: Instant,
        events: Vec<Event>,
        /// Keyframe requests and REMB estimates (bits/s) the client got.
        plis: usize,
        remb: Vec<u64>,
        client_connected: bool,
        client_alive: bool,
        /// Whether datagrams reach the publisher at all.
        linked: bool,
        ring: Reader,
    }

    impl Pair {
        fn new() -> Self {
            let start = Instant::now();
            let mut client = RtcConfig::new().build(start);
            client.add_local_candidate(Candidate::host(CLIENT.parse().unwrap(), "udp").unwrap());
            let mut api = client.sdp_api();
            let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            let offer = Offer::parse(offer.to_sdp_string().as_bytes()).unwrap();
            let (plan, format) = offer.plan_whip(&[VideoCodec::H264]).unwrap();
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
                true,
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
            let ring = Ring::create_memfd("publisher-test", 1 << 20).unwrap();
            let reader = ring.reader();
            let publisher = Publisher::new(
                Params {
                    id: "0123456789abcdef".into(),
                    rtc: answered.rtc,
                    ice: IceSession {
                        offer,
                        ufrag: answered.ufrag,
                        etag: "\"1\"".into(),
                    },
                    tracks: answered.tracks,
                    video: format,
                    ring,
                    rids: Vec::new(),
                    generation: 1,
                    max_bitrate: 1_000_000,
                    connect_timeout: Duration::from_secs(30),
                    clock: Clock::at(start, 50_000_000, 1_800_000_000_000),
                },
                start,
            );
            Self {
                publisher,
                client,
                video,
                audio,
                now: start,
                events: Vec::new(),
                plis: 0,
                remb: Vec::new(),
                client_connected: false,
                client_alive: true,
                linked: true,
                ring: reader,
            }
        }

        /// Moves datagrams both ways until both sides wait; the earlier of their timeouts.
        fn pump(&mut self) -> Instant {
            let c: SocketAddr = CLIENT.parse().unwrap();
            let s: SocketAddr = SERVER.parse().unwrap();
            let mut to_publisher = Vec::new();
            loop {
                let (mut moved, pt) = self.drain_publisher();
                let ct = self.drain_client(&mut to_publisher);
                for data in to_publisher.drain(..) {
                    moved = true;
                    if !self.linked {
                        continue;
                    }
                    let dg = Datagram {
                        source: c,
                        destination: s,
                        data,
                        at_us: ARRIVED_US,
                    };
                    self.publisher.handle(Input::Datagram(&dg), self.now);
                    // str0m's rule: poll after every input (in RTP mode it holds one packet).
                    self.drain_publisher();
                }
                if !moved {
                    return pt.min(ct);
                }
            }
        }

        /// Polls the publisher to its timeout, handing the client what it sends; whether it
        /// sent anything, and its timeout.
        fn drain_publisher(&mut self) -> (bool, Instant) {
            let (s, c): (SocketAddr, SocketAddr) =
                (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
            let mut moved = false;
            loop {
                match self.publisher.poll_output(self.now) {
                    Output::Transmit(t) => {
                        moved = true;
                        if self.client_alive && self.linked {
                            let r = Receive::new(Protocol::Udp, s, c, &t.contents).unwrap();
                            let _ = self.client.handle_input(RtcInput::Receive(self.now, r));
                        }
                    }
                    Output::Event(e) => self.events.push(e),
                    Output::Timeout(t) => return (moved, t),
                }
            }
        }

        /// Polls the client to its timeout, keeping what it sends the publisher.
        fn drain_client(&mut self, to_publisher: &mut Vec<Vec<u8>>) -> Instant {
            loop {
                if !self.client_alive || !self.client.is_alive() {
                    self.client_alive = false;
                    return self.now + Duration::from_secs(3600);
                }
                let Ok(out) = self.client.poll_output() else {
                    self.client_alive = false;
                    continue;
                };
                match out {
                    RtcOutput::Timeout(t) => return t,
                    RtcOutput::Transmit(t) => to_publisher.push(t.contents.to_vec()),
                    RtcOutput::Event(RtcEvent::Connected) => self.client_connected = true,
                    RtcOutput::Event(RtcEvent::KeyframeRequest(_)) => self.plis += 1,
                    RtcOutput::Event(RtcEvent::EgressBitrateEstimate(BweKind::Remb {
                        estimate,
                        ..
                    })) => self.remb.push(estimate.as_u64()),
                    RtcOutput::Event(_) => {}
                }
            }
        }

        /// Runs the clock on to `until`, waking each side when it asked to be.
        fn run_until(&mut self, until: Instant) {
            while self.now < until {
                let next = self.pump().min(until);
                self.now = next.max(self.now + Duration::from_millis(1)).min(until);
                self.publisher.handle(Input::Timeout, self.now);
                if self.client_alive {
                    let _ = self.client.handle_input(RtcInput::Timeout(self.now));
                }
            }
            self.pump();
        }

        fn run_for(&mut self, d: Duration) {
            let until = self.now + d;
            self.run_until(until);
        }

        fn connect(&mut self) {
            let end = self.now + Duration::from_secs(5);
            while !(self.client_connected && self.connected()) && self.now < end {
                self.run_for(Duration::from_millis(10));
            }
            assert!(self.connected(), "not connected: {:?}", self.events);
        }

        fn connected(&self) -> bool {
            self.events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. }))
        }

        fn ended(&self) -> Option<&str> {
            self.events.iter().find_map(|e| match e {
                Event::Ended(r) => Some(r.as_str()),
                _ => None,
            })
        }

        /// The client sends one video frame (Annex B) at RTP time `ts` (90 kHz).
        fn send_video(&mut self, ts: u64, frame: Vec<u8>) {
            let w = self.client.writer(self.video).unwrap();
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::H264)
                .unwrap()
                .pt();
            w.write(pt, self.now, MediaTime::from_90khz(ts), frame)
                .unwrap();
        }

        fn send_audio(&mut self, ts: u64) {
            let w = self.client.writer(self.audio).unwrap();
            let pt = w.payload_params().next().unwrap().pt();
            w.write(
                pt,
                self.now,
                MediaTime::new(ts, str0m::media::Frequency::FORTY_EIGHT_KHZ),
                vec![0xfc; 80],
            )
            .unwrap();
        }

        /// Every record written to the ring since the last call.
        fn records(&mut self) -> Vec<rtp_ring::Record> {
            let mut out = Vec::new();
            while let Some(r) = self.ring.try_next().unwrap() {
                out.push(r);
            }
            out
        }
    }

    fn annex_b(units: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for u in units {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(u);
        }
        out
    }

    fn keyframe() -> Vec<u8> {
        let mut idr = vec![0x65, 0x88];
        idr.extend(std::iter::repeat_n(0x11, 3000));
        annex_b(&[&SPS, &PPS, &idr])
    }

    fn delta() -> Vec<u8> {
        let mut p = vec![0x41, 0x9a];
        p.extend(std::iter::repeat_n(0x22, 2000));
        annex_b(&[&p])
    }

    #[test]
    fn what_a_publisher_sends_reaches_the_ring_flagged_and_stamped_with_its_arrival() {
        let mut p = Pair::new();
        p.connect();
        let Some(Event::Connected { source, .. }) = p
            .events
            .iter()
            .find(|e| matches!(e, Event::Connected { .. }))
        else {
            unreachable!()
        };
        assert_eq!(
            (source.video_track, source.audio_track, source.capture),
            (Some(VIDEO_TRACK), Some(AUDIO_TRACK), Capture::Received)
        );
        p.send_video(0, keyframe());
        p.send_audio(0);
        p.run_for(Duration::from_millis(33));
        p.send_video(3000, delta());
        p.run_for(Duration::from_millis(33));
        let records = p.records();
        let video: Vec<_> = records
            .iter()
            .filter(|r| r.meta.track == VIDEO_TRACK)
            .collect();
        let audio = records
            .iter()
            .filter(|r| r.meta.track == AUDIO_TRACK)
            .count();
        assert_eq!(audio, 1);
        // The keyframe's first packet alone is flagged a keyframe; each frame's last packet
        // ends it.
        let keys: Vec<bool> = video
            .iter()
            .map(|r| r.meta.flags.contains(Flags::KEYFRAME))
            .collect();
        assert!(keys[0] && keys[1..].iter().all(|k| !k), "{keys:?}");
        let ends = video
            .iter()
            .filter(|r| r.meta.flags.contains(Flags::END_OF_FRAME))
            .count();
        assert_eq!(ends, 2, "two frames");
        assert!(video.len() >= 4, "a 3 kB keyframe takes several packets");
        assert!(records.iter().all(|r| r.meta.capture_us == ARRIVED_US));
        // The records are RTP packets whose payloads came through unchanged.
        let first = rtp_ring::RtpHeaderView::parse(&video[0].packet).unwrap();
        assert_eq!(first.timestamp, 0);
        assert!(p.events.iter().any(|e| matches!(
            e,
            Event::PictureSize {
                width: 1280,
                height: 720
            }
        )));
        assert_eq!(p.publisher.written(), (records.len() as u64, 1));
        // The readers were woken once per frame and once per audio packet, not per packet.
        assert_eq!(p.publisher.sink.wakes, 3);
    }

    #[test]
    fn records_short_of_a_frames_end_wake_the_readers_after_the_hold() {
        let mut p = Pair::new();
        p.connect();
        let wakes = p.publisher.sink.wakes;
        // As if a frame's first packets came and its last one is late.
        let t = p.now;
        p.publisher.sink.unwoken = Some(t);
        let due = loop {
            match p.publisher.poll_output(t + Duration::from_millis(4)) {
                Output::Timeout(due) => break due,
                _ => continue,
            }
        };
        assert!(due <= t + WAKE_HOLD, "woken in time: {:?}", due - t);
        assert_eq!(p.publisher.sink.wakes, wakes);
        while !matches!(p.publisher.poll_output(t + WAKE_HOLD), Output::Timeout(_)) {}
        assert_eq!(p.publisher.sink.wakes, wakes + 1);
        assert_eq!(p.publisher.sink.unwoken, None);
    }

    #[test]
    fn the_sessions_keyframe_request_reaches_the_publisher_as_a_pli() {
        let mut p = Pair::new();
        p.connect();
        p.send_video(0, keyframe());
        p.run_for(Duration::from_millis(50));
        let before = p.plis;
        p.publisher.handle(Input::KeyframeWanted(None), p.now);
        p.run_for(Duration::from_millis(50));
        assert_eq!(p.plis, before + 1);
    }

    #[test]
    fn the_ingest_bitrate_is_measured_each_second_and_remb_asks_for_the_limit_less_audio() {
        let mut p = Pair::new();
        p.connect();
        // 30 frames of ~2 kB in a second: ~0.5 Mb/s.
        for i in 0..45u64 {
            p.send_video(i * 3000, delta());
            p.run_for(Duration::from_millis(33));
        }
        let rates: Vec<u64> = p
            .events
            .iter()
            .filter_map(|e| match e {
                Event::IngestBitrate(b) => Some(*b),
                _ => None,
            })
            .collect();
        assert!(!rates.is_empty(), "no bitrate in 1.5 s: {:?}", p.events);
        assert!(
            rates.iter().any(|b| (400_000..700_000).contains(b)),
            "{rates:?}"
        );
        assert_eq!(p.remb.last(), Some(&(1_000_000 - AUDIO_SHARE)));
    }

    #[test]
    fn no_connection_within_the_connect_timeout_ends_it() {
        let mut p = Pair::new();
        p.linked = false;
        // Shorter than str0m's own give-up (its ICE agent says disconnected after ~16 s
        // without a check).
        p.publisher.connect_timeout = Duration::from_secs(5);
        p.run_for(Duration::from_millis(4900));
        assert_eq!(p.ended(), None);
        p.run_for(Duration::from_millis(100));
        assert_eq!(p.ended(), Some("no ICE/DTLS connection within 5 s"));
        assert!(p.publisher.is_done());
        assert!(!p.connected());
    }

    #[test]
    fn a_delete_ends_it_and_the_publisher_hears_at_once() {
        let mut p = Pair::new();
        p.connect();
        p.send_video(0, keyframe());
        p.run_for(Duration::from_millis(50));
        p.publisher.handle(Input::Close(Closed::Deleted), p.now);
        p.run_for(Duration::from_millis(10));
        assert_eq!(p.ended(), Some("closed by DELETE"));
        assert!(p.publisher.is_done());
        assert!(!p.client_alive, "the client got DTLS close_notify");
        // Nothing more reaches the ring, and a PATCH is refused.
        p.records();
        let frag = Fragment::parse(b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n");
        assert!(matches!(
            p.publisher.patch(frag.unwrap(), None),
            Err(PatchError::Gone)
        ));
    }

    #[test]
    fn a_stopped_session_ends_its_publisher() {
        let mut p = Pair::new();
        p.connect();
        p.publisher.handle(Input::SessionStopped, p.now);
        p.run_for(Duration::from_millis(10));
        assert_eq!(p.ended(), Some("the session was stopped"));
        assert!(p.publisher.is_done());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_meter_reports_bits_per_second_once_a_window() {
        let mut m = IngestMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.tick(0, t0), None, "the first call starts the window");
        assert_eq!(m.tick(50_000, t0 + Duration::from_millis(500)), None);
        // 250 000 bytes in 2 s: 1 Mb/s.
        assert_eq!(
            m.tick(250_000, t0 + Duration::from_secs(2)),
            Some(1_000_000)
        );
        assert_eq!(m.tick(260_000, t0 + Duration::from_millis(2100)), None);
        assert_eq!(
            m.tick(375_000, t0 + Duration::from_secs(3)),
            Some(1_000_000),
            "the next window starts where the last ended"
        );
    }

    #[test]
    fn h264_keyframes_are_found_in_single_stap_a_and_fu_a_packets() {
        let h = VideoCodec::H264;
        assert!(starts_keyframe(h, &[0x67, 0x42, 0xe0, 0x1f])); // SPS
        assert!(starts_keyframe(h, &[0x65, 0x88])); // IDR slice
        assert!(!starts_keyframe(h, &[0x41, 0x9a])); // non-IDR slice
        assert!(!starts_keyframe(h, &[0x68, 0xce])); // PPS alone
        // STAP-A holding SPS and PPS.
        assert!(starts_keyframe(
            h,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]
        ));
        // STAP-A holding an SEI and a PPS only.
        assert!(!starts_keyframe(
            h,
            &[0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x68, 0xce]
        ));
        // FU-A: first fragment of an IDR; a middle fragment of it; first of a P slice.
        assert!(starts_keyframe(h, &[0x7c, 0x85, 0x88]));
        assert!(!starts_keyframe(h, &[0x7c, 0x05, 0x88]));
        assert!(!starts_keyframe(h, &[0x7c, 0x81, 0x9a]));
        assert!(!starts_keyframe(h, &[]));
    }

    #[test]
    fn vp8_keyframes_are_read_past_the_payload_descriptor() {
        let v = VideoCodec::Vp8;
        // S=1, PID=0, no extension; frame header P=0 (key) and P=1 (inter).
        assert!(starts_keyframe(v, &[0x10, 0x50, 0x2a]));
        assert!(!starts_keyframe(v, &[0x10, 0x51, 0x2a]));
        // X=1 with a 15-bit PictureID (as browsers send), then a key frame.
        assert!(starts_keyframe(v, &[0x90, 0x80, 0x81, 0x23, 0x50]));
        assert!(!starts_keyframe(v, &[0x90, 0x80, 0x81, 0x23, 0x51]));
        // X=1 with PictureID (7 bit), TL0PICIDX and TID: five descriptor bytes before it.
        assert!(starts_keyframe(v, &[0x90, 0xe0, 0x12, 0x05, 0x40, 0x50]));
        // Not the start of partition 0.
        assert!(!starts_keyframe(v, &[0x00, 0x50]));
        assert!(!starts_keyframe(v, &[0x11, 0x50]));
    }

    #[test]
    fn picture_size_comes_from_the_sps_alone_or_in_a_stap_a_and_from_the_vp8_header() {
        let h = VideoCodec::H264;
        // SPS of a 1280x720 constrained-baseline stream (x264).
        let sps = [
            0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40, 0x00, 0x00, 0x03, 0x00,
            0x40, 0x00, 0x00, 0x0f, 0x03, 0xc6, 0x0c, 0xa8,
        ];
        assert_eq!(picture_size(h, &sps), Some((1280, 720)));
        // STAP-A: an SEI, the SPS, the PPS (as browsers send a keyframe's first packet).
        let mut stap = vec![0x78, 0x00, 0x02, 0x06, 0x05];
        stap.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        stap.extend_from_slice(&sps);
        stap.extend_from_slice(&[0x00, 0x02, 0x68, 0xce]);
        assert_eq!(picture_size(h, &stap), Some((1280, 720)));
        // No SPS: an IDR slice; a STAP-A with a PPS only; a cut-off STAP-A; a broken SPS.
        assert_eq!(picture_size(h, &[0x65, 0x88]), None);
        assert_eq!(picture_size(h, &[0x78, 0x00, 0x02, 0x68, 0xce]), None);
        assert_eq!(picture_size(h, &stap[..10]), None);
        assert_eq!(picture_size(h, &sps[..4]), None);
        let v = VideoCodec::Vp8;
        // Descriptor with a 15-bit PictureID, then a 1280x720 key frame header.
        let key = [
            0x90, 0x80, 0x81, 0x23, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02,
        ];
        assert_eq!(picture_size(v, &key), Some((1280, 720)));
        let mut inter = key;
        inter[4] = 0x51;
        assert_eq!(picture_size(v, &inter), None);
        assert_eq!(picture_size(v, &key[..12]), None);
    }
}
