//! One WHIP publisher: a str0m `Rtc` in RTP mode receiving a live session's media, and the
//! task that writes each packet into the session's ring as it arrives.
//!
//! Owns the publisher's side of a live session (DESIGN.md "Data path" 1): a fresh ring per
//! publish, records flagged where a keyframe starts (read from the payload, since a
//! publisher's packets carry no such mark) and where a frame ends, keyframe requests from the
//! session turned into PLI, PATCH and DELETE of its resource (`rtc/ice.rs`, shared with
//! viewers), and the end of publishing (DELETE, ICE consent expiry, DTLS close), which frees
//! the session's publisher slot. Viewers read the ring exactly as they read a transcoder's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtp_ring::{Flags, RecordRef, Ring, Writer};
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, Rid};
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::{VideoCodec, VideoFormat};
use crate::metrics::Metrics;
use crate::rtc::answer::Tracks;
use crate::rtc::ice::OnEnd;
use crate::rtc::ice::{IceSession, PeerMsg, PortLink, receive};
use crate::rtc::udp::{Outbox, RtcPort};
use crate::session::{PublisherClaim, ReadySource};

/// Recent records whose payloads viewers share.
const PAYLOAD_CACHE_SLOTS: usize = 2048;
/// Ring track numbers of a live source.
const VIDEO_TRACK: u8 = 0;
const AUDIO_TRACK: u8 = 1;
/// The fixed RTP header, counted with the payload in a publisher's bitrate.
const RTP_HEADER: usize = 12;
/// How often a publisher's bitrate is measured and REMB sent.
const INGEST_WINDOW: Duration = Duration::from_secs(1);

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

/// Everything a publisher task owns.
#[derive(Debug)]
pub struct Publisher {
    pub id: String,
    pub rtc: Rtc,
    pub ice: IceSession,
    pub tracks: Tracks,
    /// What the publisher sends (its offer's format that we answered).
    pub video: VideoFormat,
    pub claim: PublisherClaim,
    /// The most bits/s this publisher may send (`limits.max_ingest_bitrate`).
    pub max_bitrate: u64,
    pub port: Arc<RtcPort>,
    pub metrics: Arc<Metrics>,
    pub inbox: mpsc::Receiver<PeerMsg>,
    /// Called once when the task ends (removes the resource from the HTTP registry).
    pub on_end: OnEnd,
    /// Not connected (ICE and DTLS) within this: the resource is removed.
    pub connect_timeout: Duration,
}

impl Publisher {
    pub fn spawn(self) {
        let span = tracing::info_span!(
            "publisher",
            session = %self.claim.session().name,
            resource = %self.id
        );
        tokio::spawn(self.run().instrument(span));
    }

    async fn run(mut self) {
        let (mut link, mut datagrams) = PortLink::with_channel(self.port.clone(), &self.ice.ufrag);
        let session = self.claim.session().clone();
        let (keyframe_tx, mut keyframe_rx) = mpsc::unbounded_channel::<()>();
        let mut keyframe_tx = Some(keyframe_tx);
        let mut sink = match Sink::new(&session.name, &self.tracks, self.video, &self.claim) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot make the session's ring: {e}");
                tracing::error!("{reason}");
                self.on_end.run(&reason);
                return;
            }
        };
        let mut outbox = Outbox::default();
        let created = Instant::now();
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let stopped = session.cancelled();
        tokio::pin!(stopped);
        let mut forwarding = None;
        let mut meter = IngestMeter::default();
        let reason = loop {
            let deadline = match self.drive(&mut sink, &mut outbox) {
                Ok(t) => t,
                Err(reason) => break reason,
            };
            if let Some(rid) = sink.wants_keyframe.take() {
                self.request_keyframe(Some(rid));
            }
            if let Some(bps) = meter.tick(sink.bytes, Instant::now()) {
                session.set_ingest_bitrate(bps);
                self.on_ingest_rate(bps, &mut meter, &sink);
            }
            if sink.layers.active() != forwarding {
                forwarding = sink.layers.active();
                if let Some(rid) = forwarding {
                    session.set_simulcast_forwarding(&rid);
                }
            }
            // Viewers are handed the source once media can flow.
            if self.rtc.is_connected()
                && let Some(tx) = keyframe_tx.take()
            {
                tracing::info!(
                    after_ms = created.elapsed().as_millis() as u64,
                    video = %self.video.describe(),
                    audio = self.tracks.audio.is_some(),
                    "publisher connected"
                );
                self.claim.announce(sink.source.clone(), tx);
            }
            if keyframe_tx.is_some() && created.elapsed() >= self.connect_timeout {
                break format!(
                    "no ICE/DTLS connection within {} s",
                    self.connect_timeout.as_secs_f64()
                );
            }
            // Not connected yet: the connect timeout fires on time, whatever str0m waits for.
            let deadline = match keyframe_tx {
                Some(_) => deadline.min(created + self.connect_timeout),
                None => deadline,
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                dg = datagrams.recv() => {
                    let Some((_, dg)) = dg else { break "datagram channel closed".into() };
                    // What str0m hands out before the next poll came in this datagram.
                    sink.arrived_us = Some(dg.at_us);
                    if let Err(e) = receive(&mut self.rtc, &dg) {
                        tracing::debug!("datagram refused: {e}");
                    }
                }
                msg = self.inbox.recv() => {
                    if let Some(why) = self.ice.on_message(&mut self.rtc, msg, &mut link) {
                        break why.to_string();
                    }
                }
                Some(()) = keyframe_rx.recv() => self.request_keyframe(sink.layers.active()),
                _ = &mut timer => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        break format!("str0m: {e}");
                    }
                }
                _ = &mut stopped => break "the session was stopped".into(),
            }
        };
        tracing::info!(
            packets = sink.packets,
            keyframes = sink.keyframes,
            "publisher ended: {reason}"
        );
        // Gone, with its reason kept, before the publisher can hear of the end (a DELETE on
        // close_notify then gets the 404 that says why).
        self.on_end.run(&reason);
        // The publisher hears at once (RTCP BYE, DTLS close_notify), whatever ended it.
        crate::rtc::ice::close(&mut self.rtc);
        let _ = self.drive(&mut sink, &mut outbox);
        // Dropping the claim (with `self`) tells the session its publisher is gone.
    }

    /// Polls str0m until it wants a timeout; sends what it transmits, writes what it
    /// receives into the ring. `Err` ends the publisher.
    fn drive(&mut self, sink: &mut Sink, outbox: &mut Outbox) -> Result<Instant, String> {
        let result = loop {
            if !self.rtc.is_alive() {
                break Err("the connection closed".into());
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Ok(t),
                Ok(Output::Transmit(t)) => outbox.transmit(&self.port, &t),
                Ok(Output::Event(Event::RtpPacket(p))) => sink.write(&p, &self.tracks),
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => break Err("ICE disconnected (consent expired)".into()),
                Ok(Output::Event(_)) => {}
                Err(e) => break Err(format!("str0m: {e}")),
            }
        };
        outbox.flush_to(&self.port);
        sink.arrived_us = None;
        result
    }

    /// Once a second: asks the publisher by REMB to stay under the limit, and logs when it
    /// does not (it is not cut off: a publisher that ignores REMB is a misconfigured encoder,
    /// and its viewers still play).
    fn on_ingest_rate(&mut self, bps: u64, meter: &mut IngestMeter, sink: &Sink) {
        // Audio's share (Opus, at most ~64 kb/s for stereo speech and music) comes off the
        // video budget.
        let audio = if self.tracks.audio.is_some() {
            64_000
        } else {
            0
        };
        let video_cap = self.max_bitrate.saturating_sub(audio).max(50_000);
        for ssrc in &sink.video_ssrcs {
            if let Some(rx) = self.rtc.direct_api().stream_rx(ssrc) {
                rx.request_remb(Bitrate::bps(video_cap));
            }
        }
        // A second over the limit by more than a tenth (bursts at keyframes are normal).
        let over = bps > self.max_bitrate + self.max_bitrate / 10;
        if over && !meter.over {
            tracing::warn!(
                bitrate = bps,
                limit = self.max_bitrate,
                "publisher sends over the ingest limit (asked by REMB to stay under it)"
            );
        } else if !over && meter.over {
            tracing::info!(bitrate = bps, "publisher back under the ingest limit");
        }
        meter.over = over;
    }

    /// A PLI to the publisher (the session throttles how often), for simulcast layer `rid`
    /// (`None`: the forwarded layer, or the only stream).
    fn request_keyframe(&mut self, rid: Option<Rid>) {
        let Some((mid, _, _)) = self.tracks.video else {
            return;
        };
        match self.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            Some(rx) => {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                tracing::debug!("PLI to the publisher");
            }
            None => tracing::debug!("no video from the publisher yet: no PLI"),
        }
    }
}

/// The ring a publish writes and what viewers are told about it.
struct Sink {
    writer: Writer,
    session: Arc<crate::session::Session>,
    source: Arc<ReadySource>,
    codec: VideoCodec,
    /// The RTP timestamp of the last video packet flagged as a keyframe start, so that only
    /// the first packet of a keyframe is flagged.
    key_ts: Option<u32>,
    /// A packet rebuilt from str0m's parsed header and payload.
    packet: Vec<u8>,
    packets: u64,
    keyframes: u64,
    /// Simulcast layer choice (unused without simulcast).
    layers: Layers,
    /// The simulcast layer of each SSRC seen with a RID.
    rids: Vec<(Ssrc, Rid)>,
    /// A layer that needs a keyframe before it is forwarded (a PLI for the publisher task).
    wants_keyframe: Option<Rid>,
    /// Media bytes received (RTP header and payload, every layer).
    bytes: u64,
    /// The SSRCs video has come on (one, or one per simulcast layer): where REMB goes.
    video_ssrcs: Vec<Ssrc>,
    /// When the datagram being processed was read from the socket: the records' capture
    /// time, so that the forwarding latency viewers observe starts at the socket.
    arrived_us: Option<u64>,
}

impl Sink {
    fn new(
        name: &str,
        tracks: &Tracks,
        video: VideoFormat,
        claim: &PublisherClaim,
    ) -> Result<Self, rtp_ring::OpenError> {
        let ring = Ring::create_memfd(&format!("wisp-live-{name}"), crate::session::RING_BYTES)?;
        let writer = ring.writer();
        let source = Arc::new(ReadySource {
            ring,
            payloads: crate::session::fanout::PayloadCache::new(PAYLOAD_CACHE_SLOTS),
            generation: claim.generation,
            video_track: tracks.video.as_ref().map(|_| VIDEO_TRACK),
            audio_track: tracks.audio.as_ref().map(|_| AUDIO_TRACK),
            width: 0,
            height: 0,
            fps: 0.0,
            duration: None,
            video_format: video,
            capture: crate::session::Capture::Received,
        });
        Ok(Self {
            writer,
            session: claim.session().clone(),
            source,
            codec: video.codec,
            key_ts: None,
            packet: Vec::with_capacity(1500),
            packets: 0,
            keyframes: 0,
            bytes: 0,
            video_ssrcs: Vec::new(),
            arrived_us: None,
            layers: Layers::default(),
            rids: Vec::new(),
            wants_keyframe: None,
        })
    }

    /// Writes one received packet into the ring with its track and flags.
    fn write(&mut self, p: &RtpPacket, tracks: &Tracks) {
        // Padding-only packets (bandwidth probes) carry no media.
        if p.payload.is_empty() {
            return;
        }
        let mid = p.header.ext_vals.mid;
        let is = |t: &Option<(str0m::media::Mid, str0m::media::Pt, u32)>| {
            t.as_ref()
                .is_some_and(|(m, pt, _)| mid.map_or(*pt == p.header.payload_type, |x| x == *m))
        };
        self.bytes += (RTP_HEADER + p.payload.len()) as u64;
        let (track, flags) = if is(&tracks.video) {
            if !self.video_ssrcs.contains(&p.header.ssrc) {
                self.video_ssrcs.push(p.header.ssrc);
            }
            let mut flags = Flags::empty();
            let keyframe = starts_keyframe(self.codec, &p.payload);
            // Senders put the RID only on a stream's first packets (until they see it
            // acknowledged); after that the SSRC says which layer a packet is.
            let rid = match p.header.ext_vals.rid {
                Some(rid) => {
                    if !self.rids.iter().any(|(s, _)| *s == p.header.ssrc) {
                        self.rids.push((p.header.ssrc, rid));
                    }
                    Some(rid)
                }
                None => self
                    .rids
                    .iter()
                    .find(|(s, _)| *s == p.header.ssrc)
                    .map(|(_, r)| *r),
            };
            if let Some(rid) = rid {
                let (forward, ask) =
                    self.layers
                        .on_packet(rid, p.payload.len(), keyframe, Instant::now());
                if ask.is_some() {
                    self.wants_keyframe = ask;
                }
                if !forward {
                    return;
                }
            } else if !self.rids.is_empty() {
                // A simulcast stream whose layer is not known yet.
                return;
            }
            if keyframe && self.key_ts != Some(p.header.timestamp) {
                self.key_ts = Some(p.header.timestamp);
                self.keyframes += 1;
                flags |= Flags::KEYFRAME;
                // A keyframe's first packet carries the picture size (H.264 SPS, VP8 header).
                if let Some((w, h)) = picture_size(self.codec, &p.payload) {
                    self.session.set_picture_size(w, h);
                }
            }
            if p.header.marker {
                flags |= Flags::END_OF_FRAME;
            }
            (VIDEO_TRACK, flags)
        } else if is(&tracks.audio) {
            (AUDIO_TRACK, Flags::empty())
        } else {
            return;
        };
        self.packet.clear();
        self.packet.push(0x80);
        self.packet
            .push((u8::from(p.header.marker) << 7) | (*p.header.payload_type & 0x7f));
        self.packet
            .extend_from_slice(&p.header.sequence_number.to_be_bytes());
        self.packet
            .extend_from_slice(&p.header.timestamp.to_be_bytes());
        self.packet
            .extend_from_slice(&(*p.header.ssrc).to_be_bytes());
        self.packet.extend_from_slice(&p.payload);
        let record = RecordRef {
            track,
            flags,
            capture_us: self.arrived_us.unwrap_or_else(rtp_ring::now_us),
            packet: &self.packet,
        };
        match self.writer.write(record) {
            Ok(_) => self.packets += 1,
            Err(e) => tracing::debug!("packet not written to the ring: {e}"),
        }
    }
}

/// Simulcast: which of the publisher's video layers (RIDs) goes into the ring. Until layer
/// choice per viewer exists, the one with the most bytes over the last second is forwarded
/// (the highest a publisher currently sends; a sender drops its top layers when its bandwidth
/// estimate falls). A switch happens at the new layer's next keyframe, asked for with a PLI, so
/// viewers go on without a break.
#[derive(Debug, Default)]
pub struct Layers {
    /// Bytes per layer since `window_start`.
    bytes: Vec<(Rid, u64)>,
    window_start: Option<Instant>,
    /// The layer written to the ring, and the one to switch to at its next keyframe.
    active: Option<Rid>,
    pending: Option<Rid>,
}

/// How often the forwarded layer is reconsidered.
const LAYER_WINDOW: Duration = Duration::from_secs(1);

impl Layers {
    /// One video packet of layer `rid`. Returns whether it goes into the ring, and a layer
    /// to ask for a keyframe (the one to switch to).
    pub fn on_packet(
        &mut self,
        rid: Rid,
        bytes: usize,
        keyframe: bool,
        now: Instant,
    ) -> (bool, Option<Rid>) {
        match self.bytes.iter_mut().find(|(r, _)| *r == rid) {
            Some((_, n)) => *n += bytes as u64,
            None => self.bytes.push((rid, bytes as u64)),
        }
        let start = *self.window_start.get_or_insert(now);
        let mut ask = None;
        if now.duration_since(start) >= LAYER_WINDOW {
            let best = self.bytes.iter().max_by_key(|(_, n)| *n).map(|(r, _)| *r);
            for (_, n) in &mut self.bytes {
                *n = 0;
            }
            self.window_start = Some(now);
            if best.is_some() && best != self.active && best != self.pending {
                self.pending = best;
                ask = best;
            }
        }
        // The first layer to show a keyframe starts the ring; later, the pending one takes
        // over at its keyframe.
        if keyframe && (self.active.is_none() || self.pending == Some(rid)) {
            if self.active.is_some() {
                tracing::info!(from = ?self.active, to = %rid, "simulcast: forwarding another layer");
            }
            self.active = Some(rid);
            self.pending = None;
        }
        (self.active == Some(rid), ask)
    }

    /// The layer being forwarded.
    pub fn active(&self) -> Option<Rid> {
        self.active
    }
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
    fn simulcast_forwards_the_layer_with_the_most_bytes_switching_at_its_keyframe() {
        let (q, f) = (Rid::from("q"), Rid::from("f"));
        let mut l = Layers::default();
        let t0 = Instant::now();
        // Before any keyframe nothing is forwarded; the first layer to show one starts.
        assert_eq!(l.on_packet(f, 1000, false, t0), (false, None));
        assert_eq!(l.on_packet(q, 100, true, t0), (true, None));
        assert_eq!(l.on_packet(f, 1000, false, t0), (false, None));
        // A second on, "f" carried more: ask it for a keyframe, and keep "q" until it comes.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(l.on_packet(f, 1000, false, t1), (false, Some(f)));
        assert_eq!(l.on_packet(q, 100, false, t1), (true, None));
        assert_eq!(l.on_packet(f, 1000, true, t1), (true, None));
        assert_eq!(l.on_packet(q, 100, true, t1), (false, None));
        assert_eq!(l.active(), Some(f));
        // "f" stops (the sender's estimate fell): after a second without it, "q" is the best.
        let t2 = t1 + Duration::from_millis(1000);
        assert_eq!(l.on_packet(q, 100, false, t2), (false, None));
        let t3 = t2 + Duration::from_millis(1000);
        assert_eq!(l.on_packet(q, 100, false, t3), (false, Some(q)));
        assert_eq!(l.on_packet(q, 100, true, t3), (true, None));
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
