//! Edge relays (DESIGN.md "Scale-out"): a node serves a session another node holds by pulling
//! it from that node over WHEP, once, into a ring of its own, and serving its own viewers from
//! that ring. The pull is a WHEP viewer like any other (`whep-client`, with a token this node
//! signs for itself), so the session's node needs nothing special for it.
//!
//! Control goes back the same way: the relay opens the `control` data channel, and this
//! node's viewers' commands (play, pause, seek, step, audio) are sent on it; each reply comes
//! back to the viewer who asked. Their chat goes there too, with the sender's name (`as`,
//! which the session's node takes from relays only), and comes back with everyone's. The
//! session's events (playback, position, publisher, chat) are passed on to this node's
//! viewers; its `status`, asked once at the start and kept up to date from those events, is
//! what this node's viewers get as theirs. So a viewer here sees the same session as a viewer
//! there: shared playback stays shared. The relay's own token is renewed (`auth`) when the
//! session's node says it expires.
//!
//! A relay runs while it has viewers here: [`IDLE`] after the last one left, it DELETEs its
//! pull and the session goes (as a live session without a publisher does). If the pull ends
//! (the session's node stopped the session, or died) or brings no media within
//! [`CONNECT_TIMEOUT`], the session here is removed, and its viewers reconnect (and are
//! redirected again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtp_ring::{Flags, Ring, Writer};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::Claims;
use crate::config::{VideoCodec, VideoFormat};
use crate::http::{ApiError, Shared};
use crate::rtc::Clock;
use crate::rtc::publisher::{append, picture_size, starts_keyframe};
use crate::session::news::{Code, Refusal};
use crate::session::{
    Capture, ControlReply, Forwarded, Ingest, PublisherClaim, ReadySource, RelayLink, Session,
};

/// The start of the `sub` of a relay's token (then the node's URL): a session's node serves
/// a relay itself, never sends it on to an edge.
pub const SUB: &str = "relay:";
/// A relay with no viewer here for this long stops.
pub const IDLE: Duration = Duration::from_secs(10);
/// How long a viewer's POST waits for a new relay's media to start.
pub const START_WAIT: Duration = Duration::from_secs(5);
/// How long the pull may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay's token is valid (it is used once, at the pull's POST, and for the
/// control channel's requests, which the session's node checks against its scopes).
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Ring tracks, as a publisher's (`rtc/publisher.rs`).
const VIDEO_TRACK: u8 = 0;
const AUDIO_TRACK: u8 = 1;
/// Recent records whose payloads viewers share.
const PAYLOAD_CACHE_SLOTS: usize = 2048;

/// Serves `name`, which the node at `owner` holds, from a relay: the session here, once its
/// relay's media started (or [`START_WAIT`] passed). An existing relay is reused.
pub async fn serve(s: &Shared, name: &str, owner: &str) -> Result<Arc<Session>, ApiError> {
    let session = match s.sessions.get(name) {
        Some(session) if session.relay().is_some() => session,
        _ => start(s, name, owner)?,
    };
    let mut source = session.source();
    let _ = tokio::time::timeout(START_WAIT, source.wait_for(|_| session.has_media())).await;
    Ok(session)
}

/// Starts a relay of `name` from `owner` into a fresh live session here.
fn start(s: &Shared, name: &str, owner: &str) -> Result<Arc<Session>, ApiError> {
    let minter = s.minter.clone().ok_or(ApiError::NoSigningKey)?;
    let node = s
        .cluster
        .as_ref()
        .map_or_else(String::new, |c| c.node_url().to_string());
    let (iss, aud, session_name) = (
        s.config.jwt_issuer.clone(),
        s.config.jwt_audience.clone(),
        name.to_string(),
    );
    // A token for the pull, and a fresh one whenever the session's node says it expires.
    let mint = move || {
        minter.mint(&Claims {
            iss: iss.clone(),
            aud: aud.clone(),
            sub: Some(format!("{SUB}{node}")),
            ..Claims::new(
                vec![session_name.clone()],
                "view playback audio chat",
                crate::auth::now_secs() + TOKEN_TTL.as_secs(),
            )
        })
    };
    let token = mint();
    let ring = Ring::create_memfd(&format!("wisp-relay-{name}"), crate::session::RING_BYTES)
        .map_err(crate::http::error::Internal::Ring)?;
    let id = crate::ids::random_id();
    let session = s.sessions.live(name)?;
    let claim = session.claim_publisher(
        &id,
        Ingest::Relay,
        s.config.limits.max_publishers,
        &s.metrics,
    )?;
    let (commands, forwarded) = mpsc::unbounded_channel();
    let (chats, chat) = mpsc::unbounded_channel();
    session.set_relay(Some(RelayLink {
        owner: owner.to_string(),
        commands,
        chats,
        status: Map::new(),
    }));
    tracing::info!(session = %name, from = %owner, "relaying the session from its node");
    let relay = Relay {
        url: format!("{owner}/whep/{name}"),
        token,
        mint: Box::new(mint),
        claim,
        ring: Some(ring),
        forwarded,
        chat,
        clock: Clock::read(),
    };
    let registry = s.sessions.clone();
    let span = tracing::info_span!("relay", session = %name);
    let session_ = session.clone();
    tokio::spawn(
        async move {
            let why = relay.run().await;
            tracing::info!("relay ended: {why}");
            session_.set_relay(None);
            // Its viewers reconnect: to the session's node, or to a new relay.
            if let Some(s) = registry.get(&session_.name)
                && Arc::ptr_eq(&s, &session_)
            {
                registry.remove(&session_.name);
            }
        }
        .instrument(span),
    );
    Ok(session)
}

/// One relay's pull, and what it writes.
struct Relay {
    url: String,
    token: String,
    /// A fresh token for the pull (`auth` on its control channel before the last expires).
    mint: Box<dyn Fn() -> String + Send>,
    claim: PublisherClaim,
    /// Until the answer says what the session sends.
    ring: Option<Ring>,
    forwarded: mpsc::UnboundedReceiver<Forwarded>,
    /// Chat events of viewers here.
    chat: mpsc::UnboundedReceiver<String>,
    clock: Clock,
}

impl Relay {
    /// Pulls until the pull ends or the relay idles: why it ended.
    async fn run(mut self) -> String {
        let session = self.claim.session().clone();
        let (media_tx, mut media) = mpsc::unbounded_channel();
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        let (requests, requests_rx) = mpsc::unbounded_channel::<String>();
        let (messages_tx, mut messages) = mpsc::unbounded_channel::<String>();
        let opts = whep_client::Options {
            url: self.url.clone(),
            token: Some(self.token.clone()),
            timeout: CONNECT_TIMEOUT,
            // Until stopped, or until the pull fails.
            duration: Some(Duration::from_secs(365 * 24 * 3600)),
            rtp_only: true,
            control: Some(whep_client::Control {
                requests: requests_rx,
                messages: messages_tx,
                listen: Duration::ZERO,
            }),
            media_out: Some(media_tx),
            stop: Some(stop),
            ..whep_client::Options::default()
        };
        let pull = tokio::spawn(async move {
            whep_client::watch(&whep_client::http_client(), opts, |_| {}).await
        });
        // Keyframe requests of this node's viewers: the session's node sends each new
        // viewer (this relay's first) a keyframe, and this ring keeps the last one.
        let (keyframes, mut keyframe_requests) = mpsc::unbounded_channel();
        let mut sink: Option<Sink> = None;
        let mut next_id: u64 = 1;
        let mut pending: HashMap<u64, (Value, crate::session::ReplyTo)> = HashMap::new();
        let mut viewers = session.viewers_watch();
        let mut idle_since = Some(tokio::time::Instant::now());
        // No media from the session's node within this: the relay ends (its viewers then
        // reconnect) rather than serve nothing.
        let mut media_due = Some(tokio::time::Instant::now() + CONNECT_TIMEOUT);
        // The session's status now (id 0), so viewers here see its playback from the start.
        let _ = requests.send(json!({"id": 0, "op": "status"}).to_string());
        let why = loop {
            let idle_at = idle_since.map(|t| t + IDLE);
            tokio::select! {
                m = media.recv() => match m {
                    Some(whep_client::Media::Answer(answer)) => {
                        let Some(ring) = self.ring.take() else { continue };
                        let (video, audio) = tracks_of(&answer);
                        let s = Sink::new(ring, video, audio, self.claim.generation);
                        self.claim.announce(s.source.clone(), keyframes.clone());
                        sink = Some(s);
                    }
                    Some(whep_client::Media::Rtp { video, packet }) => {
                        media_due = None;
                        if let Some(s) = sink.as_mut() {
                            let at = self.clock.ring_us(Instant::now());
                            s.write(video, &packet, at, &session);
                        }
                    }
                    None => break "the pull ended".to_string(),
                },
                m = messages.recv() => match m {
                    Some(text) if text.contains("\"auth_expiring\"") => {
                        // The relay's own token: renewed, not passed on.
                        let id = next_id;
                        next_id += 1;
                        let auth = json!({"id": id, "op": "auth", "token": (self.mint)()});
                        let _ = requests.send(auth.to_string());
                    }
                    Some(text) => on_message(&text, &session, &mut pending),
                    None => break "the control channel closed".to_string(),
                },
                f = self.forwarded.recv() => {
                    let Some(f) = f else { break "the session's relay link went".to_string() };
                    let id = next_id;
                    next_id += 1;
                    let mut request = match serde_json::to_value(&f.command) {
                        Ok(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    request.insert("id".into(), json!(id));
                    pending.insert(id, (f.id, f.reply));
                    let _ = requests.send(Value::Object(request).to_string());
                }
                c = self.chat.recv() => {
                    // As its sender's: the session's node sends it to everyone, this relay
                    // included. Its reply is not awaited (the viewer had its own).
                    let Some(c) = c else { break "the session's relay link went".to_string() };
                    let Ok(event) = serde_json::from_str::<Value>(&c) else { continue };
                    let id = next_id;
                    next_id += 1;
                    let request = json!({
                        "id": id,
                        "op": "chat",
                        "text": event["text"],
                        "as": event["from"],
                    });
                    let _ = requests.send(request.to_string());
                }
                _ = keyframe_requests.recv() => {}
                r = viewers.changed() => {
                    if r.is_err() {
                        break "the session ended".to_string();
                    }
                    let n = *viewers.borrow_and_update();
                    idle_since = match (n, idle_since) {
                        (0, None) => Some(tokio::time::Instant::now()),
                        (0, t) => t,
                        _ => None,
                    };
                }
                _ = sleep_until(idle_at) => {
                    break format!("no viewer here for {} s", IDLE.as_secs());
                }
                _ = sleep_until(media_due) => {
                    break format!(
                        "no media from the session's node within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    );
                }
                _ = session.cancelled() => break "the session was stopped here".to_string(),
            }
        };
        // No more commands come this way; those waiting for a reply hear why there is none.
        session.set_relay(None);
        for (_, (id, reply)) in pending.drain() {
            let _ = reply.send(ControlReply {
                id,
                result: Err(Refusal::new(
                    Code::Unavailable,
                    format!("the relay from the session's node ended: {why}"),
                )),
            });
        }
        let _ = stop_tx.send(());
        match pull.await {
            Ok(Err(e)) => format!("{why}: {e}"),
            _ => why,
        }
    }
}

/// A message from the session's node: a reply goes to the viewer who asked (the relay's own
/// `status` reply, id 0, becomes the session's playback here); an event goes to every viewer
/// here, and a playback event (`state`, `position`, `publisher`) also updates that playback.
fn on_message(
    text: &str,
    session: &Session,
    pending: &mut HashMap<u64, (Value, crate::session::ReplyTo)>,
) {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if let Some(event) = m.get("event").and_then(Value::as_str) {
        // This node counts its own viewers.
        if event != "viewers" {
            session.publish(text.to_string());
        }
        if let Some(mut status) = session.relay().map(|l| l.status) {
            match event {
                "state" | "position" => {
                    for (k, v) in m.iter().filter(|(k, _)| *k != "event") {
                        status.insert(k.clone(), v.clone());
                    }
                }
                // A live session's publisher came or went there.
                "publisher" => {
                    let state = m.get("state").cloned().unwrap_or(Value::Null);
                    status.insert("publisher".into(), state);
                }
                _ => return,
            }
            session.set_relay_status(status);
        }
        return;
    }
    let Some(id) = m.get("id").and_then(Value::as_u64) else {
        return;
    };
    if id == 0 {
        if m.get("ok") == Some(&Value::Bool(true)) {
            session.set_relay_status(m);
        }
        return;
    }
    let Some((viewer_id, reply)) = pending.remove(&id) else {
        return;
    };
    let result = match m.get("error") {
        None => Ok(()),
        Some(e) => Err(Refusal::new(
            Code::parse(e["code"].as_str().unwrap_or("")),
            e["message"].as_str().unwrap_or("refused").to_string(),
        )),
    };
    let _ = reply.send(ControlReply {
        id: viewer_id,
        result,
    });
}

/// What the answer says the session sends: its video format (`None`: no video) and whether
/// it sends audio.
fn tracks_of(answer: &str) -> (Option<VideoFormat>, bool) {
    let mut video = None;
    let mut audio = false;
    let mut section = "";
    let mut fmtp: HashMap<String, String> = HashMap::new();
    let mut codecs: Vec<(String, String)> = Vec::new();
    for line in answer.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            section = if m.starts_with("video") {
                "video"
            } else if m.starts_with("audio") {
                "audio"
            } else {
                ""
            };
            continue;
        }
        if line == "a=inactive" && section == "audio" {
            section = "";
        }
        if let Some(rtpmap) = line.strip_prefix("a=rtpmap:") {
            let (pt, codec) = rtpmap.split_once(' ').unwrap_or((rtpmap, ""));
            match section {
                "video" => codecs.push((pt.to_string(), codec.to_ascii_uppercase())),
                "audio" => audio = true,
                _ => {}
            }
        }
        if let Some(f) = line.strip_prefix("a=fmtp:")
            && section == "video"
        {
            let (pt, params) = f.split_once(' ').unwrap_or((f, ""));
            fmtp.insert(pt.to_string(), params.to_ascii_lowercase());
        }
    }
    for (pt, codec) in codecs {
        if codec.starts_with("VP8/") {
            video = Some(VideoFormat::transcoded(VideoCodec::Vp8));
            break;
        }
        if codec.starts_with("H264/") {
            let params = fmtp.get(&pt).cloned().unwrap_or_default();
            let param = |k: &str| {
                params
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_string)
            };
            let profile = param("profile-level-id")
                .and_then(|v| u32::from_str_radix(&v, 16).ok())
                .unwrap_or(0x42e01f);
            let mode1 = param("packetization-mode").as_deref() == Some("1");
            video = Some(VideoFormat::h264(profile, mode1));
            break;
        }
    }
    (video, audio)
}

/// Writes the pulled packets into the ring, as a WHIP publisher's are written: each record
/// with its track, a keyframe's first packet and a frame's last one flagged.
struct Sink {
    writer: Writer,
    source: Arc<ReadySource>,
    codec: VideoCodec,
    key_ts: Option<u32>,
    size: Option<(u32, u32)>,
    packet: Vec<u8>,
}

impl Sink {
    fn new(ring: Ring, video: Option<VideoFormat>, audio: bool, generation: u64) -> Self {
        let format = video.unwrap_or(VideoFormat::transcoded(VideoCodec::H264));
        let writer = ring.writer();
        let source = Arc::new(ReadySource {
            ring,
            payloads: crate::session::fanout::PayloadCache::new(PAYLOAD_CACHE_SLOTS),
            generation,
            video_track: video.map(|_| VIDEO_TRACK),
            audio_track: audio.then_some(AUDIO_TRACK),
            layers: Vec::new(),
            alternates: Vec::new(),
            width: 0,
            height: 0,
            fps: 0.0,
            duration: None,
            video_format: format,
            capture: Capture::Received,
        });
        Self {
            writer,
            source,
            codec: format.codec,
            key_ts: None,
            size: None,
            packet: Vec::with_capacity(1500),
        }
    }

    fn write(
        &mut self,
        video: bool,
        p: &str0m::rtp::RtpPacket,
        capture_us: u64,
        session: &Session,
    ) {
        if p.payload.is_empty() {
            return;
        }
        let (track, flags) = if video {
            let mut flags = Flags::empty();
            if starts_keyframe(self.codec, &p.payload) && self.key_ts != Some(p.header.timestamp) {
                self.key_ts = Some(p.header.timestamp);
                flags |= Flags::KEYFRAME;
                if let Some(size) = picture_size(self.codec, &p.payload)
                    && self.size != Some(size)
                {
                    self.size = Some(size);
                    session.set_picture_size(size.0, size.1);
                }
            }
            if p.header.marker {
                flags |= Flags::END_OF_FRAME;
            }
            (VIDEO_TRACK, flags)
        } else {
            (AUDIO_TRACK, Flags::empty())
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
                if track == AUDIO_TRACK || flags.contains(Flags::END_OF_FRAME) {
                    self.writer.wake();
                }
            }
            Err(e) => tracing::debug!("packet not written to the ring: {e}"),
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_says_the_video_format_and_whether_audio_comes() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
             a=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103\r\na=mid:1\r\n\
             a=sendonly\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
             a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n";
        let (video, audio) = tracks_of(answer);
        assert_eq!(video, Some(VideoFormat::h264(0x42e01f, true)));
        assert!(audio);
        let vp8 = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(
            tracks_of(vp8),
            (Some(VideoFormat::transcoded(VideoCodec::Vp8)), false)
        );
    }
}
