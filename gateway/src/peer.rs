//! One WHEP viewer: a str0m `Rtc` in RTP mode and the task that drives it.
//!
//! Owns the viewer's WebRTC state: building the `Rtc` from the offer (ICE-lite, the session's
//! codecs only, the shared DTLS certificate), reading the session ring with its own cursor and
//! writing the shared payloads with the viewer's header fields (`fanout.rs`), keyframe requests,
//! trickle ICE and ICE restarts (with the resource's ETag), and teardown. It follows str0m's
//! run-loop rule: after every input, poll until `Timeout`. HTTP statuses are the HTTP layer's;
//! this module reports outcomes as enums.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rtp_ring::{AsyncReader, RtpHeaderView};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::config::VideoCodec;
use crate::fanout::{Step, TrackMap, payload_range};
use crate::metrics::Metrics;
use crate::offer::{Fragment, Kind, Offer, Plan, valid_ice_credentials};
use crate::session::{ReadySource, Source, ViewerSlot};
use crate::udp::{Datagram, RtcPort};

/// A viewer that has not connected within this time is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A keyframe older than this is not worth starting from: ask for a fresh one instead.
const MAX_START_AGE_US: u64 = 1_000_000;
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

/// Builds an `Rtc` for one viewer and answers its offer.
pub fn answer(
    offer: &Offer,
    plan: Plan,
    codec: VideoCodec,
    cert: &DtlsCert,
    candidates: &[std::net::SocketAddr],
) -> Result<Answered, AnswerError> {
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .set_dtls_cert(cert.clone())
        // str0m's queue between write and poll (default 1000 packets per viewer).
        .set_send_buffer_video(SEND_BUFFER_VIDEO)
        .set_send_buffer_audio(SEND_BUFFER_AUDIO);
    if plan.audio {
        config = config.enable_opus(true, false);
    }
    if plan.video {
        match codec {
            // Payload types are placeholders: accept_offer renumbers to the offer's.
            VideoCodec::H264 => {
                config
                    .codec_config()
                    .add_h264(102.into(), Some(103.into()), true, 0x42e01f);
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
    let sdp =
        SdpOffer::from_sdp_string(&offer.text).map_err(|e| AnswerError::Refused(e.to_string()))?;
    let answer = rtc
        .sdp_api()
        .accept_offer(sdp)
        .map_err(|e| AnswerError::Refused(e.to_string()))?
        .to_sdp_string();
    let answer = finish_answer(&answer);
    let tracks = tracks_of(&answer);
    if (plan.video && tracks.video.is_none()) || (plan.audio && tracks.audio.is_none()) {
        return Err(AnswerError::NothingInCommon(format!(
            "no common {} format",
            if plan.video && tracks.video.is_none() {
                codec.name()
            } else {
                "opus"
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

/// Reads the negotiated sections from our answer: the first media format of each sending
/// section that is not a repair format (rtx, red, ulpfec).
fn tracks_of(answer: &str) -> Tracks {
    let mut tracks = Tracks::default();
    let Ok(parsed) = Offer::parse(answer.as_bytes()) else {
        return tracks;
    };
    for s in parsed.sections.iter().filter(|s| !s.rejected) {
        if !matches!(s.direction.as_deref(), Some("sendonly" | "sendrecv")) {
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

/// Messages to a peer task from the HTTP layer.
#[derive(Debug)]
pub enum PeerMsg {
    Patch {
        fragment: Fragment,
        if_match: Option<String>,
        reply: oneshot::Sender<Result<Patched, PatchError>>,
    },
    /// DELETE: revoke consent and end (RFC 9725 §4.2, RFC 7675 §5.2).
    Close,
}

#[derive(Debug)]
pub enum Patched {
    /// Candidates added: 204.
    Trickled,
    /// ICE restarted: 200 with this fragment and new ETag.
    Restarted { fragment: String, etag: String },
}

/// Why a PATCH was refused. The client's.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("If-Match {0} does not match the current ICE session's entity-tag")]
    PreconditionFailed(String),
    #[error("the new ICE credentials are invalid (ufrag 4-256, pwd 22-256 ice-chars)")]
    BadCredentials,
    #[error("ICE restart failed: {0}")]
    RestartFailed(String),
    #[error("the session is gone")]
    Gone,
}

/// Everything a peer task owns.
#[derive(Debug)]
pub struct Peer {
    pub id: String,
    pub rtc: Rtc,
    pub offer: Offer,
    pub ufrag: String,
    pub tracks: Tracks,
    pub etag: String,
    pub slot: ViewerSlot,
    pub port: Arc<RtcPort>,
    pub metrics: Arc<Metrics>,
    pub inbox: mpsc::Receiver<PeerMsg>,
    pub outbox: crate::udp::Outbox,
    /// Called once when the task ends (removes the resource from the HTTP registry).
    pub on_end: OnEnd,
}

/// A callback run once when a peer ends.
pub struct OnEnd(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnd")
    }
}

impl Peer {
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
        let (dg_tx, mut dg_rx) = mpsc::channel::<Datagram>(256);
        self.port.register(&self.ufrag, dg_tx.clone());
        let mut ufrags = vec![self.ufrag.clone()];
        let session = self.slot.session().clone();
        let mut source = session.source();
        // A failure that happened before this viewer came is history (its join restarts the
        // transcoder); only failures seen from now on end it.
        source.mark_unchanged();
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
        let reason = loop {
            let deadline = match self.drive() {
                Ok(t) => t,
                Err(reason) => break reason,
            };
            // str0m reports the connection while polled (in `drive`): look right after it.
            if !connected && self.rtc.is_connected() {
                connected = true;
                self.size_resend_caches();
                tracing::info!(
                    after_ms = created.elapsed().as_millis() as u64,
                    "viewer connected"
                );
            }
            if !connected && created.elapsed() > CONNECT_TIMEOUT {
                break "no ICE/DTLS connection within 30 s".to_string();
            }
            // The cursor is placed when the viewer can receive, so it starts at a fresh keyframe.
            if connected
                && reader.is_none()
                && let Source::Ready(ready) = &*source.borrow_and_update()
            {
                reader = open_reader(ready, &mut feed, &session);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                dg = dg_rx.recv() => {
                    let Some(dg) = dg else { break "datagram channel closed".into() };
                    if let Err(e) = self.receive(&dg) {
                        tracing::debug!("datagram refused: {e}");
                    }
                }
                msg = self.inbox.recv() => match msg {
                    None | Some(PeerMsg::Close) => {
                        self.rtc.disconnect();
                        break "closed by DELETE".into();
                    }
                    Some(PeerMsg::Patch { fragment, if_match, reply }) => {
                        let result = self.patch(fragment, if_match.as_deref());
                        if let Ok(Patched::Restarted { .. }) = &result {
                            self.port.register(&self.ufrag, dg_tx.clone());
                            ufrags.push(self.ufrag.clone());
                        }
                        let _ = reply.send(result);
                    }
                },
                rec = next_record(&mut reader, &mut buf), if connected => match rec {
                    Ok(Ok(meta)) => {
                        self.send_record(&mut feed, &session, &meta, &buf);
                        // Drain what else is there before polling str0m again.
                        let Some((r, _)) = reader.as_mut() else { continue };
                        for _ in 0..DRAIN_BATCH {
                            match r.reader().try_next_into(&mut buf) {
                                Ok(Some(m)) => self.send_record(&mut feed, &session, &m, &buf),
                                Ok(None) => break,
                                Err(overrun) => { on_overrun(r, &mut feed, &self.metrics, overrun.lost); break; }
                            }
                        }
                    }
                    Ok(Err(overrun)) => {
                        if let Some((r, _)) = reader.as_mut() {
                            on_overrun(r, &mut feed, &self.metrics, overrun.lost);
                        }
                    }
                    Err(e) => break format!("reading the session ring: {e}"),
                },
                changed = source.changed() => {
                    if changed.is_err() {
                        break "session ended".into();
                    }
                    let next = source.borrow_and_update().clone();
                    match next {
                        Source::Ready(ready) if connected => {
                            let same = reader.as_ref().is_some_and(|(_, r)| r.generation == ready.generation);
                            if !same {
                                reader = open_reader(&ready, &mut feed, &session);
                            }
                        }
                        Source::Failed(reason) => break format!("session source failed: {reason}"),
                        Source::Ready(_) | Source::Idle | Source::Starting => {}
                    }
                }
                _ = &mut timer => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        break format!("str0m: {e}");
                    }
                }
                _ = &mut stopped => {
                    self.rtc.disconnect();
                    break "session stopped".into();
                }
            }
        };
        // Flush what str0m still wants to send (a DTLS close_notify after disconnect).
        let _ = self.drive();
        for u in &ufrags {
            self.port.unregister(u, &dg_tx);
        }
        tracing::info!(packets = feed.sent, "viewer ended: {reason}");
        (self.on_end.0)();
    }

    /// Polls str0m until it wants a timeout; sends what it transmits. `Err` ends the peer.
    fn drive(&mut self) -> Result<Instant, String> {
        let result = loop {
            if !self.rtc.is_alive() {
                break Err("the connection closed".into());
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Ok(t),
                Ok(Output::Transmit(t)) => {
                    let port = &self.port;
                    self.outbox.push(
                        t.source,
                        t.destination,
                        &t.contents,
                        port.max_segments(),
                        &mut |src, dst, data, seg| port.send_segments(src, dst, data, seg),
                    );
                }
                Ok(Output::Event(e)) => {
                    if let Err(reason) = self.on_event(e) {
                        break Err(reason);
                    }
                }
                Err(e) => break Err(format!("str0m: {e}")),
            }
        };
        let port = &self.port;
        self.outbox
            .flush(&mut |src, dst, data, seg| port.send_segments(src, dst, data, seg));
        result
    }

    fn on_event(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Err("ICE disconnected (consent expired)".into());
            }
            Event::KeyframeRequest(_) => self.slot.session().request_keyframe(),
            Event::ChannelOpen(_, label) => tracing::debug!(%label, "data channel open"),
            _ => {}
        }
        Ok(())
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

    fn receive(&mut self, dg: &Datagram) -> Result<(), String> {
        let input = Receive::new(Protocol::Udp, dg.source, dg.destination, &dg.data)
            .map_err(|e| e.to_string())?;
        self.rtc
            .handle_input(Input::Receive(Instant::now(), input))
            .map_err(|e| e.to_string())
    }

    fn send_record(
        &mut self,
        feed: &mut Feed,
        session: &crate::session::Session,
        meta: &rtp_ring::RecordMeta,
        packet: &[u8],
    ) {
        let (track, flags, capture_us) = (meta.track, meta.flags, meta.capture_us);
        let Some(ready) = &feed.ready else { return };
        let (map, mid, video) = if Some(track) == ready.video_track {
            match (&mut feed.video, &self.tracks.video) {
                (Some(m), Some((mid, _, _))) => (m, *mid, true),
                _ => return,
            }
        } else if Some(track) == ready.audio_track {
            match (&mut feed.audio, &self.tracks.audio) {
                (Some(m), Some((mid, _, _))) => (m, *mid, false),
                _ => return,
            }
        } else {
            return;
        };
        let (Some(hdr), Some(payload)) = (RtpHeaderView::parse(packet), payload_range(packet))
        else {
            return;
        };
        match map.step(&hdr, flags, capture_us) {
            Step::WaitKeyframe { request_keyframe } => {
                if request_keyframe {
                    session.request_keyframe();
                }
            }
            Step::Send {
                pt,
                seq,
                timestamp,
                marker,
            } => {
                let mut api = self.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    return;
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
                if feed.sent == 0 {
                    tracing::debug!(video, "first packet sent");
                }
                feed.sent += 1;
                self.metrics.packets_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A trickle-ICE or ICE-restart PATCH (RFC 9725 §4.3).
    fn patch(&mut self, frag: Fragment, if_match: Option<&str>) -> Result<Patched, PatchError> {
        if let Some(tag) = if_match
            && tag != "*"
            && tag != self.etag
        {
            return Err(PatchError::PreconditionFailed(tag.to_string()));
        }
        // RFC 9725 §4.3.3: a changed ufrag (or pwd) is an ICE restart.
        let remote = self.remote_ufrag();
        let restart = frag.ufrag.as_ref().is_some_and(|u| *u != remote);
        if !restart {
            for c in &frag.candidates {
                // Unsupported transports and unresolvable names are skipped (RFC 9725 §4.3.2).
                if let Ok(c) = Candidate::from_sdp_string(c) {
                    self.rtc.add_remote_candidate(c);
                }
            }
            return Ok(Patched::Trickled);
        }
        let (Some(ufrag), Some(pwd)) = (frag.ufrag.as_deref(), frag.pwd.as_deref()) else {
            return Err(PatchError::BadCredentials);
        };
        if !valid_ice_credentials(ufrag, pwd) {
            return Err(PatchError::BadCredentials);
        }
        let text = self.offer.with_ice_credentials(ufrag, pwd);
        let sdp = SdpOffer::from_sdp_string(&text)
            .map_err(|e| PatchError::RestartFailed(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(sdp)
            .map_err(|e| PatchError::RestartFailed(e.to_string()))?
            .to_sdp_string();
        self.offer = Offer {
            sections: self.offer.sections.clone(),
            text,
        };
        for c in &frag.candidates {
            if let Ok(c) = Candidate::from_sdp_string(c) {
                self.rtc.add_remote_candidate(c);
            }
        }
        let creds = self.rtc.direct_api().local_ice_credentials();
        self.ufrag = creds.ufrag.clone();
        self.etag = new_etag();
        tracing::info!("ICE restart");
        Ok(Patched::Restarted {
            fragment: restart_fragment(&answer),
            etag: self.etag.clone(),
        })
    }

    fn remote_ufrag(&self) -> String {
        self.offer
            .text
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// The 200 body of an ICE restart (RFC 9725 §4.3.3): the answer's ICE lines (`ice-lite`,
/// `ice-options`, bundle group, the first media section with its new ufrag, pwd and
/// candidates).
fn restart_fragment(answer: &str) -> String {
    let mut out = String::new();
    let mut in_first_media = false;
    let mut seen_media = false;
    for line in answer.lines() {
        if line.starts_with("m=") {
            if seen_media {
                break;
            }
            seen_media = true;
            in_first_media = true;
            out.push_str(line);
            out.push_str("\r\n");
            continue;
        }
        let keep = if in_first_media {
            line.starts_with("a=mid:")
                || line.starts_with("a=ice-ufrag:")
                || line.starts_with("a=ice-pwd:")
                || line.starts_with("a=candidate:")
                || line.starts_with("a=end-of-candidates")
        } else {
            line.starts_with("a=ice-lite")
                || line.starts_with("a=ice-options:")
                || line.starts_with("a=group:BUNDLE")
                || line.starts_with("a=ice-ufrag:")
                || line.starts_with("a=ice-pwd:")
        };
        if keep {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// A new strong entity-tag for an ICE session (RFC 9725 §4.3.1).
pub fn new_etag() -> String {
    format!("\"{}\"", crate::http::random_id())
}

/// The per-track state of one viewer's feed from the current source.
struct Feed {
    ready: Option<Arc<ReadySource>>,
    video: Option<TrackMap>,
    audio: Option<TrackMap>,
    sent: u64,
}

impl Feed {
    fn new(tracks: &Tracks) -> Self {
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
        }
    }
}

/// A cursor on a (new) source's ring: at its newest keyframe if that is recent, else at the
/// newest record (and a keyframe is requested).
fn open_reader(
    ready: &Arc<ReadySource>,
    feed: &mut Feed,
    session: &crate::session::Session,
) -> Option<(AsyncReader, Arc<ReadySource>)> {
    let mut reader = ready.ring.reader();
    if let Some(track) = ready.video_track {
        let mut probe = ready.ring.reader();
        let mut scratch = Vec::new();
        let fresh = probe.resync_to_keyframe(track)
            && matches!(probe.try_next_into(&mut scratch), Ok(Some(m))
                if rtp_ring::now_us().saturating_sub(m.capture_us) < MAX_START_AGE_US);
        tracing::debug!(fresh, "reader opened");
        if fresh {
            reader.resync_to_keyframe(track);
        } else {
            session.request_keyframe();
        }
    }
    if let Some(v) = feed.video.as_mut() {
        v.discontinuity();
    }
    if let Some(a) = feed.audio.as_mut() {
        a.discontinuity();
    }
    feed.ready = Some(ready.clone());
    match reader.into_async() {
        Ok(r) => Some((r, ready.clone())),
        Err(e) => {
            tracing::error!("cannot wait on the session ring: {e}");
            None
        }
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
    if let Some(v) = feed.video.as_mut() {
        v.discontinuity();
    }
    if let Some(a) = feed.audio.as_mut() {
        a.discontinuity();
    }
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
