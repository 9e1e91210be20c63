//! A WHEP client (draft-ietf-wish-whep) on str0m: offers recvonly audio and video, POSTs the
//! offer, completes ICE and DTLS, and counts what arrives. Optionally it also opens a data
//! channel labelled `control` and sends requests on it (Wisp's playback control).
//!
//! # Layout
//! - `lib.rs`: [`watch`], one viewer from POST to DELETE, and its [`Summary`].
//! - `link.rs`: the ICE servers of a 201's `Link` headers.
//! - `media.rs`: frame-level facts from payloads (H.264 SPS dimensions, VP8 key frame header).
//! - `main.rs`, `seeks.rs`: the `whep-client` CLI (`play`, `control`, `seeks`, `load`);
//!   `config.rs`, its environment (the log filter); `out.rs`, its stdout.
//!
//! It talks to any WHEP server and knows nothing of Wisp's internals.
#![forbid(unsafe_code)]

pub mod link;
pub mod media;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, error::TryRecvError};

/// What to do.
#[derive(Debug)]
pub struct Options {
    /// The WHEP endpoint, e.g. `http://127.0.0.1:8080/whep/demo`.
    pub url: String,
    pub token: Option<String>,
    /// Stop once this many complete video frames arrived.
    pub frames: Option<u64>,
    /// Give up when no frame arrived (or, with `frames`, not enough) within this time.
    pub timeout: Duration,
    /// Watch for this long, then stop successfully (load runs).
    pub duration: Option<Duration>,
    /// Count RTP packets and marker bits instead of depacketizing frames (cheaper; load runs).
    pub rtp_only: bool,
    /// Open a `control` data channel and send these requests on it.
    pub control: Option<Control>,
    /// Every complete video frame as it arrives (not in `rtp_only` mode, which has no frames).
    pub frames_out: Option<UnboundedSender<VideoFrame>>,
    /// Leave the local candidate out of the offer and send it in a trickle-ICE PATCH
    /// (RFC 9725 §4.3.2) once the resource exists; the PATCH must get 204.
    pub trickle: bool,
    /// After this many video frames, restart ICE with a PATCH (RFC 9725 §4.3.3, `If-Match`
    /// with the resource's ETag) and apply the server's new credentials; `frames` then also
    /// waits for the restart to be done.
    pub restart_after: Option<u64>,
    /// After the DELETE, keep the connection open this long and note whether the server
    /// closes it (DTLS close_notify) and whether media still comes (RFC 7675 §5.2).
    pub linger: Option<Duration>,
    /// The server's answer, then every RTP packet as it arrives (with `rtp_only`): a relay
    /// that serves the stream on.
    pub media_out: Option<UnboundedSender<Media>>,
    /// Ends the watch (successfully, with the DELETE) when it fires or its sender is
    /// dropped.
    pub stop: Option<tokio::sync::oneshot::Receiver<()>>,
    /// A layer request (`{"op":"layer",…}`) to send on a `control` channel opened for it.
    /// Unlike [`Options::control`], the watch ends as it would without it; the server's
    /// `layer` events are kept in [`Summary::layer_events`].
    pub layer: Option<String>,
    /// Offer only this video codec (default: str0m's, H.264 and VP8 among them).
    pub video_codec: Option<OfferCodec>,
    /// Every this often, pin the next of these layers (round robin) over the `control`
    /// channel; each request is kept in [`Summary::layer_requests`] (for switch times).
    pub layer_cycle: Option<(Duration, Vec<String>)>,
    /// A slow path: what arrives is passed on at this rate, the rest queued and dropped.
    pub limit: Option<Limit>,
    /// Each complete video frame is appended here as it came (Annex B for H.264), for a
    /// decoder to check.
    pub video_out: Option<std::fs::File>,
}

/// A video codec to offer alone ([`Options::video_codec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OfferCodec {
    H264,
    Vp8,
}

/// A path of limited rate in front of the client, shaped in user space: datagrams leave
/// its queue at `bps`, and one that would wait longer than `queue` is dropped (a router's
/// buffer). After `for_time` from the start the path is unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub bps: u64,
    pub queue: Duration,
    pub for_time: Option<Duration>,
}

/// What [`Options::media_out`] gets.
#[derive(Debug)]
pub enum Media {
    /// The server's SDP answer (its codecs and payload types), before any packet.
    Answer(String),
    /// An RTP packet of the video or the audio track.
    Rtp {
        video: bool,
        packet: Box<str0m::rtp::RtpPacket>,
    },
}

impl Default for Options {
    /// Watch until the timeout (20 s) with no frame target, depacketizing frames.
    fn default() -> Self {
        Self {
            url: String::new(),
            token: None,
            frames: None,
            timeout: Duration::from_secs(20),
            duration: None,
            rtp_only: false,
            control: None,
            frames_out: None,
            trickle: false,
            restart_after: None,
            linger: None,
            media_out: None,
            stop: None,
            layer: None,
            video_codec: None,
            layer_cycle: None,
            limit: None,
            video_out: None,
        }
    }
}

/// Datagrams held back by a [`Limit`].
#[derive(Debug)]
struct Shaper {
    limit: Limit,
    ends: Option<Instant>,
    queue: std::collections::VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    /// When the link is free again.
    free_at: Instant,
    dropped: u64,
    passed: u64,
}

impl Shaper {
    fn new(limit: Limit, started: Instant) -> Self {
        Self {
            ends: limit.for_time.map(|d| started + d),
            limit: Limit {
                bps: limit.bps.max(1),
                ..limit
            },
            queue: std::collections::VecDeque::new(),
            free_at: started,
            dropped: 0,
            passed: 0,
        }
    }

    /// Whether the path still limits at `now`.
    fn limiting(&self, now: Instant) -> bool {
        self.ends.is_none_or(|e| now < e)
    }

    /// Queues a datagram that arrived at `now` (or drops it: the queue is full).
    fn push(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let start = self.free_at.max(now);
        if start.duration_since(now) > self.limit.queue {
            self.dropped += 1;
            return;
        }
        let wire = Duration::from_secs_f64((data.len() + 28) as f64 * 8.0 / self.limit.bps as f64);
        self.free_at = start + wire;
        self.queue.push_back((self.free_at, from, data.to_vec()));
    }

    /// The next datagram due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let due = self
            .queue
            .front()
            .is_some_and(|(t, _, _)| *t <= now || !self.limiting(now));
        if !due {
            return None;
        }
        self.passed += 1;
        self.queue.pop_front().map(|(_, a, d)| (a, d))
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _, _)| *t)
    }
}

/// One run of video at one picture size, as [`Summary::sizes`] lists them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SizeRun {
    /// POST sent → its first frame, ms.
    pub at_ms: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
}

/// A complete video frame, as [`Options::frames_out`] reports it.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// When str0m handed it over.
    pub at: Instant,
    /// The same moment on the system's monotonic clock (µs), to compare with other
    /// processes' timestamps (`CLOCK_MONOTONIC`, as Python's `time.monotonic`).
    pub at_us: u64,
    pub keyframe: bool,
    /// RTP time (90 kHz, the sender's clock).
    pub rtp_time: u64,
    /// The frame's bitstream (H.264 Annex B, or VP8), for keyframes only.
    pub data: Option<Vec<u8>>,
    /// The frame's last (up to) 16 bytes: the tail of its last NAL unit or partition, which
    /// is also the tail of the sender's last RTP payload, so frames can be matched to what a
    /// publisher sent.
    pub tail: Vec<u8>,
}

/// Now on the system's monotonic clock, µs.
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// Requests for the `control` data channel. With it, [`watch`] ends once the request sender
/// is gone, every request was answered and `listen` more passed, or once the receiver of
/// `messages` is gone (frames and duration are then not waited for).
#[derive(Debug)]
pub struct Control {
    /// Messages to send, in order, once the channel opens (JSON requests, or any text); more
    /// may follow while watching.
    pub requests: UnboundedReceiver<String>,
    /// Every message that arrives on the channel (replies and events), as text. Dropping its
    /// receiver ends the watch: nobody hears the channel any more (`whep-client control … |
    /// head -1` once head has exited).
    pub messages: UnboundedSender<String>,
    /// How long to keep listening for events after the last reply.
    pub listen: Duration,
}

impl Control {
    /// A control run that sends `requests` as soon as the channel opens, and nothing more.
    pub fn send_all(
        requests: Vec<String>,
        messages: UnboundedSender<String>,
        listen: Duration,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for r in requests {
            tx.send(r).expect("the receiver is here");
        }
        Self {
            requests: rx,
            messages,
            listen,
        }
    }
}

/// The control channel's progress inside [`watch`].
#[derive(Debug, Default)]
struct ControlRun {
    channel: Option<ChannelId>,
    /// The request sender is gone: no more requests will come.
    closed: bool,
    /// Requests sent so far.
    sent: usize,
    /// Replies still expected.
    awaiting: usize,
    /// Since when a reply has been awaited (the oldest unanswered request, or the last reply
    /// while more are awaited).
    waiting_since: Option<Instant>,
    /// When the last reply came.
    answered_at: Option<Instant>,
    /// A layer request to send when the channel opens ([`Options::layer`]).
    layer: Option<String>,
}

/// What a viewer saw. Printed as JSON by the CLI.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub video_frames: u64,
    pub audio_packets: u64,
    pub video_packets: u64,
    pub keyframes: u64,
    /// Video frames that followed lost packets str0m could not get repaired (NACK/RTX)
    /// before giving up on them (`contiguous == false`).
    pub discontinuities: u64,
    /// Frames after such a loss and before the next keyframe: a decoder cannot use them, so
    /// they are not written (`--video-out`) nor counted in [`Summary::sizes`].
    pub undecodable_frames: u64,
    /// Keyframes asked for (PLI) after a loss, as a browser asks.
    pub keyframe_requests: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub codec: Option<String>,
    /// POST sent → first complete video frame, ms.
    pub first_frame_ms: Option<u64>,
    /// POST sent → first audio packet, ms.
    pub first_audio_ms: Option<u64>,
    /// Whether the answer said the server sends audio (then `play` waits for some).
    pub audio_expected: bool,
    /// The ICE servers the 201's `Link` headers offered (RFC 9725 §4.6).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<link::IceServerLink>,
    /// POST sent → ICE+DTLS connected, ms.
    pub connected_ms: Option<u64>,
    /// Packets lost as the receiver reports count them (str0m's ingress stats).
    pub lost_packets: u64,
    pub seconds: f64,
    pub resource: Option<String>,
    /// Replies on the control channel, and how many of them were errors.
    pub control_replies: u64,
    pub control_errors: u64,
    /// The status of the trickle-ICE PATCH (with [`Options::trickle`]).
    pub trickle_status: Option<u16>,
    /// PATCH sent → the server's new ICE credentials applied, ms (with
    /// [`Options::restart_after`]).
    pub restart_ms: Option<u64>,
    /// PATCH sent → ICE connected again with the new credentials, ms.
    pub restart_connected_ms: Option<u64>,
    /// Complete video frames after the restart was applied.
    pub frames_after_restart: u64,
    /// The status of the DELETE that ended the session.
    pub delete_status: Option<u16>,
    /// DELETE sent → the server closed the connection (DTLS close_notify), ms (with
    /// [`Options::linger`]).
    pub closed_after_delete_ms: Option<u64>,
    /// DELETE sent → the server no longer answered our consent checks (ICE disconnected),
    /// ms (with [`Options::linger`]).
    pub unanswered_after_delete_ms: Option<u64>,
    /// SRTP/SRTCP packets that arrived later than 250 ms after the DELETE's answer (with
    /// [`Options::linger`]; a server that revoked consent sends none).
    pub packets_after_delete: Option<u64>,
    /// The video's picture sizes in the order they came (a server switching layers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<SizeRun>,
    /// The server's `layer` events (with [`Options::layer`]), each with `at_ms` added, and
    /// the reply to the layer request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layer_events: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_reply: Option<serde_json::Value>,
    /// The layer requests of [`Options::layer_cycle`]: when (ms after the POST), which.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layer_requests: Vec<serde_json::Value>,
    /// Datagrams the [`Options::limit`] path dropped and passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_passed: Option<u64>,
}

/// A keyframe asked for after a loss and not come is asked for again after this.
const KEYFRAME_RETRY: Duration = Duration::from_secs(1);
/// How long `play` waits for audio the answer promised once its frames have come.
const AUDIO_GRACE: Duration = Duration::from_secs(3);

/// Whether the SDP `answer` has the media section `mid` active with the server sending
/// (sendonly or sendrecv, port not 0).
fn sends(answer: &str, mid: &str) -> bool {
    let mut port_open = false;
    let mut this = false;
    let mut sending = false;
    for line in answer.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            if this {
                break;
            }
            port_open = m.split_whitespace().nth(1).is_some_and(|p| p != "0");
            sending = false;
        } else if line.strip_prefix("a=mid:").is_some_and(|m| m.trim() == mid) {
            this = true;
        } else if line == "a=sendonly" || line == "a=sendrecv" {
            sending = true;
        }
    }
    this && port_open && sending
}

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP {status}: {detail}")]
    Http {
        status: u16,
        detail: String,
        /// The answer's `Retry-After`, seconds (a 409 before a publisher, a 503 at capacity).
        retry_after: Option<u64>,
    },
    #[error("request to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("the server's answer: {0}")]
    Answer(String),
    #[error("ICE/DTLS did not connect within {0} s")]
    NotConnected(u64),
    #[error("ICE/DTLS failed: {0}")]
    Disconnected(String),
    #[error("no media within {0} s")]
    NoMedia(u64),
    #[error("only {got} of {want} frames within {secs} s")]
    TooFewFrames { got: u64, want: u64, secs: u64 },
    #[error("local socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("webrtc: {0}")]
    Rtc(String),
    #[error("control channel: {0}")]
    Control(String),
    /// A failure after which the DELETE of the resource got 404 with this problem detail:
    /// the server had ended the resource, and a gateway says why (Wisp does). The peer of an
    /// ICE-lite server that ended before or during the handshake gives no other sign.
    #[error("{error}; the server says: {server}")]
    Ended {
        error: Box<ClientError>,
        server: String,
    },
}

impl ClientError {
    /// `self`, with what the server answered to the DELETE of the resource when that was a
    /// 404: the resource had ended before (connection, media and frame failures only).
    fn with_server_detail(self, status: Option<u16>, detail: Option<String>) -> Self {
        let (Some(404), Some(server)) = (status, detail) else {
            return self;
        };
        match self {
            ClientError::NotConnected(_)
            | ClientError::Disconnected(_)
            | ClientError::NoMedia(_)
            | ClientError::TooFewFrames { .. } => ClientError::Ended {
                error: Box::new(self),
                server,
            },
            e => e,
        }
    }
}

/// Watches one WHEP session: POST, connect, count, DELETE. `progress` is called with the
/// running summary about once a second. `http` should be [`http_client`]'s, for redirects.
pub async fn watch(
    http: &reqwest::Client,
    mut opts: Options,
    mut progress: impl FnMut(&Summary),
) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let mut control = opts.control.take();
    let url = reqwest::Url::parse(&opts.url).map_err(|e| ClientError::Request {
        url: opts.url.clone(),
        message: e.to_string(),
    })?;
    let local_ip = local_ip_for(&url).await?;
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
    // Enables UDP GRO where the kernel has it: fewer receive calls, and on loopback the
    // sender's GSO batches arrive whole instead of being split for us.
    let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
    let local = socket.local_addr()?;

    let mut config = RtcConfig::new()
        .set_rtp_mode(opts.rtp_only)
        .set_stats_interval(Some(Duration::from_secs(1)));
    if let Some(codec) = opts.video_codec {
        config = config
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(codec == OfferCodec::H264)
            .enable_vp8(codec == OfferCodec::Vp8);
    }
    if opts.linger.is_some() {
        quick_consent_checks(&mut config);
    }
    let mut rtc = config.build(Instant::now());
    let host = Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
    if !opts.trickle {
        rtc.add_local_candidate(host.clone());
    }
    let mut api = rtc.sdp_api();
    let video_mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let audio_mid = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    if control.is_some() || opts.layer.is_some() || opts.layer_cycle.is_some() {
        api.add_channel("control".into());
    }
    let (offer, pending) = api.apply().expect("adding media makes an offer");
    let mut shaper = opts.limit.map(|l| Shaper::new(l, started));

    let Posted {
        location,
        mut etag,
        answer: mut answer_text,
        ice_servers,
    } = post_offer(
        http,
        &url,
        opts.token.as_deref(),
        offer.to_sdp_string(),
        pending,
        &mut rtc,
    )
    .await?;

    if let Some(out) = &opts.media_out {
        let _ = out.send(Media::Answer(answer_text.clone()));
    }
    let mut summary = Summary {
        resource: location.as_ref().map(|l| l.to_string()),
        audio_expected: sends(&answer_text, &audio_mid.to_string()),
        ice_servers,
        ..Summary::default()
    };
    let resource = Resource {
        http,
        url: location.clone(),
        token: opts.token.as_deref(),
    };
    if opts.trickle {
        rtc.add_local_candidate(host.clone());
        let creds = rtc.direct_api().local_ice_credentials();
        let fragment = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{video_mid}\r\n\
             a={}\r\na=end-of-candidates\r\n",
            creds.ufrag,
            creds.pass,
            host.to_sdp_string()
        );
        let resp = resource.patch(fragment, etag.as_deref()).await?;
        summary.trickle_status = Some(resp.status().as_u16());
        if resp.status().as_u16() != 204 {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            return Err(ClientError::Http {
                status,
                detail: format!("trickle PATCH: {}", problem_detail(&body)),
                retry_after: None,
            });
        }
    }
    let mut tally = Tally::new(video_mid, audio_mid, opts.frames_out.take());
    tally.media_out = opts.media_out.take();
    tally.video_out = opts.video_out.take();
    let mut ctl = ControlRun {
        layer: opts.layer.take(),
        ..ControlRun::default()
    };
    let mut buf = vec![0u8; GRO_BUFFER];
    let mut last_progress = Instant::now();
    let mut end = opts.duration.map(|d| started + d);
    let mut cycle = opts.layer_cycle.take().filter(|c| !c.1.is_empty());
    let mut next_cycle: Option<Instant> = None;
    let mut cycled = 0usize;
    // When the wanted frames had all come.
    let mut frames_done: Option<Instant> = None;
    let result = 'run: loop {
        let deadline = poll(
            &mut rtc,
            &socket,
            &control,
            &mut ctl,
            &mut tally,
            &mut summary,
            started,
        );
        // Requests waiting to go out (they queue until the channel opens).
        if let (Some(c), Some(id), false) = (&mut control, ctl.channel, ctl.closed) {
            let mut wrote = false;
            loop {
                match c.requests.try_recv() {
                    Ok(r) => {
                        if let Err(e) = send_request(&mut rtc, id, &r, &mut ctl) {
                            break 'run Err(e);
                        }
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ctl.closed = true;
                        break;
                    }
                }
            }
            if wrote {
                continue; // poll str0m again to send them
            }
        }
        if let (Some(c), true, 0, None) = (&control, ctl.closed, ctl.awaiting, end) {
            end = Some(ctl.answered_at.unwrap_or_else(Instant::now) + c.listen);
        }
        if control.as_ref().is_some_and(|c| c.messages.is_closed()) {
            break Ok(()); // nobody hears the channel any more
        }
        let deadline = match deadline {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        if let Some(n) = opts.restart_after
            && tally.restart_sent.is_none()
            && summary.video_frames >= n
        {
            tally.restart_sent = Some(Instant::now());
            match resource
                .restart_ice(&mut rtc, &mut answer_text, &mut etag)
                .await
            {
                Ok(()) => {
                    let ms = tally.restart_sent.map(|t| t.elapsed().as_millis() as u64);
                    summary.restart_ms = ms;
                }
                Err(e) => break Err(e),
            }
            continue; // str0m has new checks to send
        }
        // A live viewer that joins mid-GOP gets its backlog of video first, faster than real
        // time, and audio once it is live: N frames may all come before any audio does. So
        // with audio in the answer, `play` waits for it a little longer (a session whose
        // publisher turned out to send none ends then, with audio_packets 0).
        if let Some(want) = opts.frames
            && summary.video_frames >= want
            && frames_done.is_none()
        {
            frames_done = Some(Instant::now());
        }
        if let Some(done) = frames_done
            && (summary.audio_packets > 0
                || !summary.audio_expected
                || done.elapsed() >= AUDIO_GRACE)
            && control.is_none()
            && (opts.restart_after.is_none() || summary.restart_ms.is_some())
        {
            break Ok(());
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break Ok(());
        }
        let waited = now.duration_since(started);
        // With a control channel the timeout bounds the wait for it to open and for each
        // reply; between requests the caller may take its time.
        let timed_out = match (&control, ctl.channel) {
            (Some(_), Some(_)) => ctl
                .waiting_since
                .is_some_and(|w| ctl.awaiting > 0 && now.duration_since(w) >= opts.timeout),
            _ => waited >= opts.timeout,
        };
        if end.is_none() && timed_out {
            let secs = opts.timeout.as_secs();
            break Err(if summary.connected_ms.is_none() {
                ClientError::NotConnected(secs)
            } else if control.is_some() && ctl.channel.is_none() {
                ClientError::Control(format!("the channel did not open within {secs} s"))
            } else if control.is_some() {
                ClientError::Control(format!(
                    "{} of {} requests unanswered after {secs} s",
                    ctl.awaiting, ctl.sent
                ))
            } else if summary.connected_ms.is_none() {
                ClientError::NotConnected(secs)
            } else if summary.video_frames == 0 && summary.audio_packets == 0 {
                ClientError::NoMedia(secs)
            } else {
                ClientError::TooFewFrames {
                    got: summary.video_frames,
                    want: opts.frames.unwrap_or(1),
                    secs,
                }
            });
        }
        if now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            summary.seconds = waited.as_secs_f64();
            progress(&summary);
        }
        let mut wake = deadline.min(now + Duration::from_millis(250));
        if let Some(e) = end {
            wake = wake.min(e);
        }
        if let Some(t) = shaper.as_ref().and_then(Shaper::next_due) {
            wake = wake.min(t);
        }
        // Layer pins in turn, once the channel is open and video plays.
        if let (Some((every, rids)), Some(id)) = (&cycle, ctl.channel)
            && summary.video_frames > 0
        {
            let due = *next_cycle.get_or_insert(now + *every);
            if now >= due {
                let rid = &rids[cycled % rids.len()];
                cycled += 1;
                let req =
                    serde_json::json!({"id": format!("cycle-{cycled}"), "op": "layer", "rid": rid});
                if let Some(mut ch) = rtc.channel(id) {
                    let _ = ch.write(false, req.to_string().as_bytes());
                }
                summary.layer_requests.push(serde_json::json!({
                    "at_ms": started.elapsed().as_millis() as u64,
                    "rid": rid,
                }));
                next_cycle = Some(now + *every);
                continue;
            }
            wake = wake.min(due);
        }
        if cycle.as_ref().is_some_and(|c| c.1.is_empty()) {
            cycle = None;
        }
        let open = ctl.channel.filter(|_| !ctl.closed);
        tokio::select! {
            _ = stopped(&mut opts.stop) => break Ok(()),
            r = next_request(&mut control, open.is_some()) => {
                let Some(id) = open else { continue };
                match r {
                    Some(r) => {
                        if let Err(e) = send_request(&mut rtc, id, &r, &mut ctl) {
                            break Err(e);
                        }
                    }
                    None => ctl.closed = true,
                }
            }
            r = recv_batch(&socket, &udp, &mut buf) => {
                let Ok(meta) = r else {
                    continue; // ICMP from a closed port: keep trying until timeout.
                };
                // With GRO the kernel hands over a run of equal-sized datagrams at once.
                // str0m is polled after each one: in RTP mode it holds a single received
                // packet until polled, and the next input would overwrite it.
                let now = Instant::now();
                let mut failed = None;
                for dg in buf[..meta.len].chunks(meta.stride.max(1)) {
                    if let Some(sh) = shaper.as_mut().filter(|s| s.limiting(now)) {
                        sh.push(now, meta.addr, dg);
                        continue;
                    }
                    let link = Link { rtc: &mut rtc, socket: &socket, control: &control, ctl: &mut ctl };
                    if let Err(e) = take_datagram(link, &mut tally, &mut summary, started, (meta.addr, local), dg, now) {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Err(e) = rtc.handle_input(Input::Timeout(Instant::now())) {
                    break Err(ClientError::Rtc(e.to_string()));
                }
            }
        }
        // What the slow path lets through by now.
        if let Some(sh) = shaper.as_mut() {
            let now = Instant::now();
            let mut failed = None;
            while let Some((from, dg)) = sh.pop_due(now) {
                let link = Link {
                    rtc: &mut rtc,
                    socket: &socket,
                    control: &control,
                    ctl: &mut ctl,
                };
                let taken = take_datagram(
                    link,
                    &mut tally,
                    &mut summary,
                    started,
                    (from, local),
                    &dg,
                    now,
                );
                if let Err(e) = taken {
                    failed = Some(e);
                    break;
                }
            }
            summary.limit_dropped = Some(sh.dropped);
            summary.limit_passed = Some(sh.passed);
            if let Some(e) = failed {
                break Err(e);
            }
        }
    };
    summary.seconds = started.elapsed().as_secs_f64();
    // Tear down the resource either way (RFC 9725 §4.2).
    let deleted_at = Instant::now();
    let (status, detail) = resource.delete().await;
    summary.delete_status = status;
    let result = result.map_err(|e| e.with_server_detail(status, detail));
    if let (Ok(()), Some(time)) = (&result, opts.linger) {
        let seen = watch_after_delete(
            &mut rtc,
            &socket,
            &udp,
            &mut buf,
            deleted_at,
            time,
            |e, rtc| {
                let _ = tally.event(e, rtc, &mut summary, started);
            },
        )
        .await;
        summary.closed_after_delete_ms = seen.closed_ms;
        summary.unanswered_after_delete_ms = seen.unanswered_ms;
        summary.packets_after_delete = Some(seen.late_packets);
    }
    close(&mut rtc, &socket);
    result.map(|()| summary)
}

/// What a received datagram goes through: str0m, the socket its answers leave by, and the
/// control channel.
struct Link<'a> {
    rtc: &'a mut str0m::Rtc,
    socket: &'a UdpSocket,
    control: &'a Option<Control>,
    ctl: &'a mut ControlRun,
}

/// One datagram that came from `addrs.0` to `addrs.1` at `now` into str0m, which is then
/// polled (str0m's run-loop rule; in RTP mode it holds one received packet until polled).
fn take_datagram(
    link: Link<'_>,
    tally: &mut Tally,
    summary: &mut Summary,
    started: Instant,
    (from, to): (SocketAddr, SocketAddr),
    dg: &[u8],
    now: Instant,
) -> Result<(), ClientError> {
    let Ok(input) = Receive::new(Protocol::Udp, from, to, dg) else {
        return Ok(());
    };
    link.rtc
        .handle_input(Input::Receive(now, input))
        .map_err(|e| ClientError::Rtc(e.to_string()))?;
    poll(
        link.rtc,
        link.socket,
        link.control,
        link.ctl,
        tally,
        summary,
        started,
    )
    .map(|_| ())
}

/// Packets in flight when a DELETE is answered may still arrive this long after it.
const LATE_AFTER: Duration = Duration::from_millis(250);

/// What the POST of an offer gave: the resource, its ETag, the answer (applied).
struct Posted {
    location: Option<reqwest::Url>,
    etag: Option<String>,
    answer: String,
    ice_servers: Vec<link::IceServerLink>,
}

/// How many redirects a POST follows (a cluster's node sends a viewer to the session's owner).
const MAX_REDIRECTS: usize = 5;

/// An HTTP client for WHIP and WHEP: redirects are not followed by reqwest, which would drop
/// the `Authorization` header on the way to another host; [`post_offer`] follows a 307 or 308
/// itself, token and offer included (RFC 9725 §4.5), but not from HTTPS to HTTP. Give
/// [`watch`] this client: with reqwest's default one a redirect ends in 401.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client without TLS settings builds")
}

/// POSTs `offer` (`application/sdp`, bearer `token`) and applies the 201's answer to `rtc`.
/// A 307 or 308 is followed with the same request, up to [`MAX_REDIRECTS`] times.
async fn post_offer(
    http: &reqwest::Client,
    url: &reqwest::Url,
    token: Option<&str>,
    body: String,
    pending: str0m::change::SdpPendingOffer,
    rtc: &mut str0m::Rtc,
) -> Result<Posted, ClientError> {
    let mut url = url.clone();
    let mut hops = 0;
    let resp = loop {
        let mut req = http
            .post(url.clone())
            .header("Content-Type", "application/sdp")
            .body(body.clone());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::Request {
            url: url.to_string(),
            message: with_causes(&e),
        })?;
        let next = header(&resp, "location").and_then(|l| url.join(&l).ok());
        match (resp.status().as_u16(), next) {
            // The token is not sent over plain HTTP once it went over HTTPS.
            (307 | 308, Some(next))
                if hops < MAX_REDIRECTS
                    && !(url.scheme() == "https" && next.scheme() != "https") =>
            {
                hops += 1;
                url = next;
            }
            _ => break resp,
        }
    };
    let url = &url;
    let status = resp.status().as_u16();
    let location = header(&resp, "location").and_then(|l| url.join(&l).ok());
    let etag = header(&resp, "etag");
    let retry_after = header(&resp, "retry-after").and_then(|v| v.trim().parse().ok());
    let ice_servers = link::ice_servers(
        resp.headers()
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let answer = resp.text().await.unwrap_or_default();
    if status != 201 {
        return Err(ClientError::Http {
            status,
            detail: problem_detail(&answer),
            retry_after,
        });
    }
    accept_answer(rtc, pending, &answer)?;
    Ok(Posted {
        location,
        etag,
        answer,
        ice_servers,
    })
}

/// Applies a server's answer. A panic in str0m on a malformed answer is the server's
/// answer refused, not this client's crash.
fn accept_answer(
    rtc: &mut str0m::Rtc,
    pending: str0m::change::SdpPendingOffer,
    text: &str,
) -> Result<(), ClientError> {
    let run = std::panic::AssertUnwindSafe(|| {
        let sdp = SdpAnswer::from_sdp_string(text).map_err(|e| e.to_string())?;
        rtc.sdp_api()
            .accept_answer(pending, sdp)
            .map_err(|e| e.to_string())
    });
    std::panic::catch_unwind(run)
        .unwrap_or_else(|_| Err("str0m could not take it (it panicked)".into()))
        .map_err(ClientError::Answer)
}

/// One simulcast layer for [`publish_layers`]: its RID and its H.264 access units (Annex B,
/// one frame each, the first a keyframe with SPS and PPS).
#[derive(Debug, Clone)]
pub struct SendLayer {
    pub rid: String,
    pub frames: Vec<Vec<u8>>,
}

/// Splits an H.264 Annex B stream into access units, one per frame: a new one starts at an
/// access unit delimiter, or at a slice whose first macroblock is 0 after a slice, and at an
/// SPS, PPS or SEI after a slice. Delimiters are dropped (WebRTC senders send none).
pub fn annexb_frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i..].starts_with(&[0, 0, 1]) {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut had_slice = false;
    for (k, &at) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(stream.len(), |n| n - 3);
        // A four-byte start code's leading zero belongs to it, not to this NAL unit.
        while end > at && stream[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        let nal = &stream[at..end];
        let Some(&head) = nal.first() else { continue };
        let kind = head & 0x1f;
        let slice = kind == 1 || kind == 5;
        // first_mb_in_slice is 0 exactly when the slice header's first bit is 1 (ue(v) 0).
        let first_slice = slice && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let begins = had_slice && (kind == 9 || first_slice || (6..=8).contains(&kind));
        if begins && !current.is_empty() {
            frames.push(std::mem::take(&mut current));
            had_slice = false;
        }
        if kind == 9 {
            continue;
        }
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
        had_slice |= slice;
    }
    if had_slice {
        frames.push(current);
    }
    frames
}

/// What [`publish_layers`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishSummary {
    pub resource: Option<String>,
    /// POST sent → ICE+DTLS connected, ms.
    pub connected_ms: Option<u64>,
    /// Frames written per layer, in the order given.
    pub frames: Vec<u64>,
    /// Keyframe requests (PLI/FIR) the server sent, per layer.
    pub keyframe_requests: Vec<u64>,
    pub delete_status: Option<u16>,
}

/// A WHIP publisher shaped as OBS 32.1 publishes simulcast: one video section with
/// `a=rid:… send` and `a=simulcast:send …`, the MID and RID header extensions, and no
/// `a=ssrc` lines, so the server can tell the layers apart only by the RID each packet
/// carries. Sends each layer's frames at `fps` in a loop (a keyframe request restarts that
/// layer at its first frame, a keyframe) for `duration`, then DELETEs.
pub async fn publish_layers(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    layers: &[SendLayer],
    fps: f64,
    duration: Duration,
    timeout: Duration,
) -> Result<PublishSummary, ClientError> {
    use str0m::media::{Simulcast, SimulcastLayer};
    let started = Instant::now();
    let (parsed, socket, udp) = publisher_socket(url).await?;
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(
        Candidate::host(socket.local_addr()?, "udp")
            .map_err(|e| ClientError::Rtc(e.to_string()))?,
    );
    let mut simulcast = Simulcast::new();
    for l in layers {
        simulcast.add_send_layer(SimulcastLayer::new(&l.rid));
    }
    let mut api = rtc.sdp_api();
    let mid = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        None,
        None,
        Some(simulcast),
    );
    let (offer, pending) = api.apply().expect("adding media makes an offer");
    // OBS signals no SSRCs.
    let body: String = offer
        .to_sdp_string()
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("a=ssrc"))
        .collect();
    tracing::debug!(offer = %body, "OBS-shaped simulcast offer");
    let posted = post_offer(http, &parsed, token, body, pending, &mut rtc).await?;
    let resource = Resource {
        http,
        url: posted.location,
        token,
    };
    let mut summary = PublishSummary {
        resource: resource.url.as_ref().map(|u| u.to_string()),
        frames: vec![0; layers.len()],
        keyframe_requests: vec![0; layers.len()],
        ..PublishSummary::default()
    };
    let mut buf = vec![0u8; GRO_BUFFER];
    let (connected_ms, mut failed) =
        until_connected(&mut rtc, &socket, &udp, &mut buf, started, timeout).await;
    summary.connected_ms = connected_ms;
    // The payload type the answer kept.
    let pt = rtc.writer(mid).and_then(|w| {
        w.payload_params()
            .find(|p| p.spec().codec == str0m::format::Codec::H264)
            .map(|p| p.pt())
    });
    if let (Some(_), None, Some(pt)) = (summary.connected_ms, failed, pt) {
        let fps = if fps.is_finite() {
            fps.clamp(1.0, 120.0)
        } else {
            30.0
        };
        let frame_time = Duration::from_secs_f64(1.0 / fps);
        let end = Instant::now() + duration;
        let mut next = Instant::now();
        let mut index = vec![0usize; layers.len()];
        let mut n: u64 = 0;
        while Instant::now() < end && failed.is_none() {
            let rtp_time = str0m::media::MediaTime::from_90khz((n as f64 * 90_000.0 / fps) as u64);
            for (k, l) in layers.iter().enumerate() {
                if l.frames.is_empty() {
                    continue;
                }
                let frame = l.frames[index[k] % l.frames.len()].clone();
                index[k] += 1;
                if let Some(w) = rtc.writer(mid) {
                    match w.rid(str0m::media::Rid::from(l.rid.as_str())).write(
                        pt,
                        Instant::now(),
                        rtp_time,
                        frame,
                    ) {
                        Ok(()) => summary.frames[k] += 1,
                        Err(e) => {
                            tracing::warn!(rid = %l.rid, "frame not sent: {e}");
                        }
                    }
                }
            }
            n += 1;
            next += frame_time;
            run_until(&mut rtc, &socket, &udp, &mut buf, next, None, |e, _| {
                match e {
                    Event::KeyframeRequest(r) => {
                        if let Some(k) = layers
                            .iter()
                            .position(|l| r.rid.as_deref() == Some(l.rid.as_str()))
                        {
                            summary.keyframe_requests[k] += 1;
                            // The loop's first frame is its keyframe.
                            index[k] = 0;
                        }
                    }
                    Event::Closed => failed = Some("the server closed the connection"),
                    _ => {}
                }
                failed.is_some()
            })
            .await;
        }
    }
    let (status, detail) = resource.delete().await;
    summary.delete_status = status;
    close(&mut rtc, &socket);
    match (summary.connected_ms, failed) {
        (_, Some(why)) => {
            Err(ClientError::Disconnected(why.into()).with_server_detail(status, detail))
        }
        (None, None) => {
            Err(ClientError::NotConnected(timeout.as_secs()).with_server_detail(status, detail))
        }
        (Some(_), None) => Ok(summary),
    }
}

/// What [`publish_probe`] saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeSummary {
    pub resource: Option<String>,
    /// POST sent → ICE+DTLS connected, ms.
    pub connected_ms: Option<u64>,
    pub delete_status: Option<u16>,
    /// DELETE sent → the server closed the connection (DTLS close_notify), ms.
    pub closed_after_delete_ms: Option<u64>,
    /// DELETE sent → the server no longer answered consent checks, ms.
    pub unanswered_after_delete_ms: Option<u64>,
    /// SRTP/SRTCP packets from the server later than 250 ms after the DELETE's answer.
    pub packets_after_delete: u64,
}

/// A WHIP publisher that sends no media, to check a WHIP server's session handling: POSTs
/// a `sendonly` audio and video offer, completes ICE and DTLS, stays `hold`, DELETEs, and
/// watches the connection for `linger` more.
pub async fn publish_probe(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    hold: Duration,
    linger: Duration,
    timeout: Duration,
) -> Result<ProbeSummary, ClientError> {
    let started = Instant::now();
    let (parsed, socket, udp) = publisher_socket(url).await?;
    let mut config = RtcConfig::new();
    quick_consent_checks(&mut config);
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(
        Candidate::host(socket.local_addr()?, "udp")
            .map_err(|e| ClientError::Rtc(e.to_string()))?,
    );
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().expect("adding media makes an offer");
    let posted = post_offer(
        http,
        &parsed,
        token,
        offer.to_sdp_string(),
        pending,
        &mut rtc,
    )
    .await?;
    let resource = Resource {
        http,
        url: posted.location,
        token,
    };
    let mut summary = ProbeSummary {
        resource: resource.url.as_ref().map(|u| u.to_string()),
        ..ProbeSummary::default()
    };
    let mut buf = vec![0u8; GRO_BUFFER];
    let (connected_ms, mut failed) =
        until_connected(&mut rtc, &socket, &udp, &mut buf, started, timeout).await;
    summary.connected_ms = connected_ms;
    if summary.connected_ms.is_some() {
        run_until(
            &mut rtc,
            &socket,
            &udp,
            &mut buf,
            Instant::now() + hold,
            None,
            |e, _| {
                if matches!(e, Event::Closed) {
                    failed = Some("the server closed the connection while publishing");
                }
                failed.is_some()
            },
        )
        .await;
    }
    let deleted_at = Instant::now();
    let (status, detail) = resource.delete().await;
    summary.delete_status = status;
    let result = match (summary.connected_ms, failed) {
        (_, Some(why)) => {
            Err(ClientError::Disconnected(why.into()).with_server_detail(status, detail))
        }
        (None, None) => {
            Err(ClientError::NotConnected(timeout.as_secs()).with_server_detail(status, detail))
        }
        (Some(_), None) => {
            let seen = watch_after_delete(
                &mut rtc,
                &socket,
                &udp,
                &mut buf,
                deleted_at,
                linger,
                |_, _| {},
            )
            .await;
            summary.closed_after_delete_ms = seen.closed_ms;
            summary.unanswered_after_delete_ms = seen.unanswered_ms;
            summary.packets_after_delete = seen.late_packets;
            Ok(())
        }
    };
    close(&mut rtc, &socket);
    result.map(|()| summary)
}

/// Consent checks every 500 ms, and ICE given up after about 3 s without answers (str0m's
/// defaults take some 20 s): to see within a few seconds whether a server stopped answering.
fn quick_consent_checks(config: &mut RtcConfig) {
    config.set_max_stun_rto(Duration::from_millis(500));
    config.set_max_stun_retransmits(5);
}

/// What a connection showed after its DELETE (RFC 7675 §5.2: the server revokes consent).
#[derive(Debug, Default)]
struct AfterDelete {
    /// DELETE sent → the server's DTLS close_notify, ms.
    closed_ms: Option<u64>,
    /// DELETE sent → our consent checks went unanswered (ICE disconnected), ms.
    unanswered_ms: Option<u64>,
    /// SRTP/SRTCP datagrams later than [`LATE_AFTER`] after the DELETE's answer.
    late_packets: u64,
}

/// Keeps the connection going for `linger` after a DELETE sent at `deleted_at`, and notes how
/// the server ended it; other events go to `on_event`.
async fn watch_after_delete(
    rtc: &mut str0m::Rtc,
    socket: &UdpSocket,
    udp: &quinn_udp::UdpSocketState,
    buf: &mut [u8],
    deleted_at: Instant,
    linger: Duration,
    mut on_event: impl FnMut(Event, &str0m::Rtc),
) -> AfterDelete {
    let mut seen = AfterDelete::default();
    let ms = || Some(deleted_at.elapsed().as_millis() as u64);
    let late = run_until(
        rtc,
        socket,
        udp,
        buf,
        deleted_at + linger,
        Some(Instant::now() + LATE_AFTER),
        |e, rtc| {
            match e {
                Event::Closed => seen.closed_ms = ms(),
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    seen.unanswered_ms = ms();
                }
                e => on_event(e, rtc),
            }
            false
        },
    )
    .await;
    seen.late_packets = late;
    seen
}

/// Polls str0m until it wants a timeout (returned), sending what it transmits and handing
/// its events to `on_event`; `None` once the connection is gone.
fn drain(
    rtc: &mut str0m::Rtc,
    socket: &UdpSocket,
    mut on_event: impl FnMut(Event, &str0m::Rtc),
) -> Option<Instant> {
    while rtc.is_alive() {
        match rtc.poll_output() {
            Ok(Output::Transmit(t)) => {
                let _ = socket.try_send_to(&t.contents, t.destination);
            }
            Ok(Output::Timeout(t)) => return Some(t),
            Ok(Output::Event(e)) => on_event(e, rtc),
            Err(_) => return None,
        }
    }
    None
}

/// Keeps a connection going until `end`, or until `on_event` (given str0m's events) says
/// stop. Counts the SRTP/SRTCP datagrams (RFC 7983: first byte 128–191) that arrive from
/// `count_from` on: after a DELETE, a server that revoked consent (RFC 7675 §5.2) sends none.
async fn run_until(
    rtc: &mut str0m::Rtc,
    socket: &UdpSocket,
    udp: &quinn_udp::UdpSocketState,
    buf: &mut [u8],
    end: Instant,
    count_from: Option<Instant>,
    mut on_event: impl FnMut(Event, &str0m::Rtc) -> bool,
) -> u64 {
    let local = socket.local_addr().ok();
    let mut late = 0;
    loop {
        let mut stop = false;
        let wake =
            drain(rtc, socket, |e, rtc| stop |= on_event(e, rtc)).map_or(end, |t| t.min(end));
        if stop || Instant::now() >= end {
            return late;
        }
        tokio::select! {
            r = recv_batch(socket, udp, buf) => {
                let (Ok(meta), Some(local)) = (r, local) else { continue };
                let now = Instant::now();
                for dg in buf[..meta.len].chunks(meta.stride.max(1)) {
                    if count_from.is_some_and(|t| now >= t) && matches!(dg.first(), Some(128..=191)) {
                        late += 1;
                    }
                    if rtc.is_alive()
                        && let Ok(input) = Receive::new(Protocol::Udp, meta.addr, local, dg)
                    {
                        let _ = rtc.handle_input(Input::Receive(now, input));
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if rtc.is_alive() {
                    let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }
}

/// A WHIP publisher's endpoint URL, parsed, and a UDP socket on the address that reaches it.
async fn publisher_socket(
    url: &str,
) -> Result<(reqwest::Url, UdpSocket, quinn_udp::UdpSocketState), ClientError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ClientError::Request {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let socket = UdpSocket::bind(SocketAddr::new(local_ip_for(&parsed).await?, 0)).await?;
    let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
    Ok((parsed, socket, udp))
}

/// Drives a publisher's connection until ICE and DTLS connect (the ms since `started`) or
/// fail (why), within `timeout` of `started`. ICE reporting disconnected before that is a
/// failure at once, not a wait for the timeout.
async fn until_connected(
    rtc: &mut str0m::Rtc,
    socket: &UdpSocket,
    udp: &quinn_udp::UdpSocketState,
    buf: &mut [u8],
    started: Instant,
    timeout: Duration,
) -> (Option<u64>, Option<&'static str>) {
    let (mut connected, mut failed) = (None, None);
    run_until(rtc, socket, udp, buf, started + timeout, None, |e, _| {
        match e {
            Event::Connected => connected = Some(started.elapsed().as_millis() as u64),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                failed = Some("ICE disconnected");
            }
            Event::Closed => failed = Some("the server closed the connection"),
            _ => return false,
        }
        true
    })
    .await;
    (connected, failed)
}

/// Ends our side, telling the server (RTCP BYE, DTLS close_notify).
fn close(rtc: &mut str0m::Rtc, socket: &UdpSocket) {
    if rtc.is_alive() && rtc.close().is_ok() {
        drain(rtc, socket, |_, _| {});
    }
    rtc.disconnect();
}

/// A header's value as text.
fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The session's resource (its `Location`), for PATCH and DELETE.
struct Resource<'a> {
    http: &'a reqwest::Client,
    url: Option<reqwest::Url>,
    token: Option<&'a str>,
}

impl Resource<'_> {
    fn url(&self) -> Result<&reqwest::Url, ClientError> {
        self.url.as_ref().ok_or_else(|| ClientError::Http {
            status: 201,
            detail: "the 201 had no usable Location header".into(),
            retry_after: None,
        })
    }

    /// A `application/trickle-ice-sdpfrag` PATCH, with `If-Match` when there is an ETag.
    async fn patch(
        &self,
        fragment: String,
        if_match: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url()?;
        let mut req = self
            .http
            .patch(url.clone())
            .header("Content-Type", "application/trickle-ice-sdpfrag")
            .body(fragment);
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        if let Some(t) = self.token {
            req = req.bearer_auth(t);
        }
        req.send().await.map_err(|e| ClientError::Request {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// The status of a DELETE of the resource (`None`: no resource, or no answer), and the
    /// problem detail of an error.
    async fn delete(&self) -> (Option<u16>, Option<String>) {
        let Some(url) = self.url.clone() else {
            return (None, None);
        };
        let mut req = self.http.delete(url);
        if let Some(t) = self.token {
            req = req.bearer_auth(t);
        }
        let Ok(resp) = req.send().await else {
            return (None, None);
        };
        let status = resp.status();
        let detail = match status.is_success() {
            true => None,
            false => Some(problem_detail(&resp.text().await.unwrap_or_default())),
        };
        (Some(status.as_u16()), detail)
    }

    /// An ICE restart (RFC 9725 §4.3.3): new local credentials to the server by PATCH, its
    /// new ones (in the 200's fragment) applied as an updated answer.
    async fn restart_ice(
        &self,
        rtc: &mut str0m::Rtc,
        answer: &mut String,
        etag: &mut Option<String>,
    ) -> Result<(), ClientError> {
        let mut api = rtc.sdp_api();
        let creds = api.ice_restart(true);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Rtc("str0m made no offer for the ICE restart".into()))?;
        let fragment = restart_fragment(&offer.to_sdp_string(), &creds.ufrag, &creds.pass);
        let resp = self
            .patch(fragment, Some(etag.as_deref().unwrap_or("*")))
            .await?;
        let status = resp.status().as_u16();
        let new_tag = header(&resp, "etag");
        let body = resp.text().await.unwrap_or_default();
        if status != 200 {
            return Err(ClientError::Http {
                status,
                detail: format!("ICE restart PATCH: {}", problem_detail(&body)),
                retry_after: None,
            });
        }
        let updated = answer_with_fragment(answer, &body).ok_or_else(|| {
            ClientError::Answer(format!(
                "the ICE restart's 200 has no a=ice-ufrag/a=ice-pwd: {body:?}"
            ))
        })?;
        accept_answer(rtc, pending, &updated)?;
        *answer = updated;
        if new_tag.is_some() {
            *etag = new_tag;
        }
        Ok(())
    }
}

/// The body of an ICE-restart PATCH: new credentials, then the first media section's
/// `m=` and `a=mid:` lines with the offer's candidates.
fn restart_fragment(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    let mut media = 0;
    for line in offer.lines() {
        if line.starts_with("m=") {
            media += 1;
        }
        if media == 1 && (line.starts_with("m=") || line.starts_with("a=mid:"))
            || line.starts_with("a=ice-options:") && media <= 1
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    let mut seen = Vec::new();
    for line in offer.lines().filter(|l| l.starts_with("a=candidate:")) {
        if !seen.contains(&line) {
            seen.push(line);
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

/// `answer` with the ICE credentials and candidates of an ICE restart's `fragment`
/// (candidates go to the first media section: the answer is bundled). `None` when the
/// fragment lacks credentials.
fn answer_with_fragment(answer: &str, fragment: &str) -> Option<String> {
    let value = |prefix: &str| {
        fragment
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::to_string)
    };
    let (ufrag, pwd) = (value("a=ice-ufrag:")?, value("a=ice-pwd:")?);
    let candidates: Vec<&str> = fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    let mut out = String::new();
    let mut placed = false;
    for line in answer.lines() {
        if line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates") {
            continue;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push_str(&format!("a=ice-ufrag:{ufrag}\r\n"));
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str(&format!("a=ice-pwd:{pwd}\r\n"));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
        if !placed && line.starts_with("a=mid:") {
            placed = true;
            for c in &candidates {
                out.push_str(c);
                out.push_str("\r\n");
            }
            out.push_str("a=end-of-candidates\r\n");
        }
    }
    Some(out)
}

/// Polls str0m until it wants a timeout (its run-loop rule): sends what it transmits, counts
/// media, passes control messages on. Returns when it next wants a timeout.
fn poll(
    rtc: &mut str0m::Rtc,
    socket: &UdpSocket,
    control: &Option<Control>,
    ctl: &mut ControlRun,
    tally: &mut Tally,
    summary: &mut Summary,
    started: Instant,
) -> Result<Instant, ClientError> {
    loop {
        match rtc.poll_output() {
            Ok(Output::Timeout(t)) => return Ok(t),
            Ok(Output::Transmit(t)) => {
                let _ = socket.try_send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(Event::ChannelOpen(id, label))) if label == "control" => {
                ctl.channel = Some(id);
                if let (Some(req), Some(mut ch)) = (ctl.layer.take(), rtc.channel(id)) {
                    ch.write(false, req.as_bytes())
                        .map_err(|e| ClientError::Control(e.to_string()))?;
                }
            }
            Ok(Output::Event(Event::ChannelData(d))) if Some(d.id) == ctl.channel => {
                let text = String::from_utf8_lossy(&d.data).into_owned();
                on_layer_message(&text, summary, started);
                if let Some(c) = control {
                    on_control_message(&text, ctl, summary);
                    let _ = c.messages.send(text);
                }
            }
            Ok(Output::Event(e)) => {
                tally.event(e, rtc, summary, started)?;
                tally.ask_keyframe(rtc, summary);
            }
            Err(e) => return Err(ClientError::Rtc(e.to_string())),
        }
    }
}

/// A control request from command-line words: `seek 20` → `{"id":1,"op":"seek","to":20.0}`.
/// `raw TEXT` is sent as it is (to test how a server takes malformed input).
pub fn control_request(id: u64, op: &str, args: &[String]) -> Result<String, String> {
    use serde_json::{Value, json};
    let arg = |i: usize, what: &str| {
        args.get(i)
            .cloned()
            .ok_or_else(|| format!("{op} needs {what}"))
    };
    let number = |text: String, what: &str| {
        text.parse::<f64>()
            .map_err(|_| format!("{op}: {what} must be a number, not {text:?}"))
    };
    let mut req = match op {
        "play" | "pause" | "status" => json!({ "op": op }),
        "seek" => {
            let target = arg(0, "a position (seconds, or a frame like 600f)")?;
            match target.strip_suffix('f') {
                Some(frame) => json!({"op": "seek", "frame": frame.parse::<u64>()
                    .map_err(|_| format!("seek: {target:?} is not a frame number"))?}),
                None => json!({"op": "seek", "to": number(target, "the position")?}),
            }
        }
        "step" => {
            let n = arg(0, "a frame count like 1 or -1")?;
            json!({"op": "step", "frames": n.parse::<i64>()
                .map_err(|_| format!("step: {n:?} is not a whole number"))?})
        }
        "select_audio" => {
            let input = arg(0, "an input (its id or position)")?;
            let input = match input.parse::<u64>() {
                Ok(i) => json!(i),
                Err(_) => json!(input),
            };
            let mut r = json!({"op": "select_audio", "input": input});
            if let Some(list) = args.get(1) {
                let channels: Result<Vec<u32>, _> =
                    list.split(',').map(|c| c.trim().parse::<u32>()).collect();
                r["channels"] = json!(
                    channels
                        .map_err(|_| format!("select_audio: channels like 0,1, not {list:?}"))?
                );
            }
            r
        }
        "chat" => {
            if args.is_empty() {
                return Err("chat needs some text".into());
            }
            json!({"op": "chat", "text": args.join(" ")})
        }
        "auth" => json!({"op": "auth", "token": arg(0, "a token")?}),
        "raw" => return Ok(args.join(" ")),
        other => {
            return Err(format!(
                "unknown op {other:?} (play, pause, status, seek, step, select_audio, chat, auth, raw)"
            ));
        }
    };
    req["id"] = Value::from(id);
    Ok(req.to_string())
}

/// The caller's next request (`None` once it will send no more); pending while the channel
/// is not open, so requests queue until it is.
/// Resolves when `stop` fires or its sender is gone; never without one.
async fn stopped(stop: &mut Option<tokio::sync::oneshot::Receiver<()>>) {
    match stop {
        Some(rx) => {
            let _ = rx.await;
            *stop = None;
        }
        None => std::future::pending().await,
    }
}

async fn next_request(control: &mut Option<Control>, open: bool) -> Option<String> {
    match control {
        Some(c) if open => c.requests.recv().await,
        _ => std::future::pending().await,
    }
}

/// Writes one request on the control channel.
fn send_request(
    rtc: &mut str0m::Rtc,
    id: ChannelId,
    request: &str,
    ctl: &mut ControlRun,
) -> Result<(), ClientError> {
    let written = rtc
        .channel(id)
        .map(|mut ch| ch.write(false, request.as_bytes()));
    if !matches!(written, Some(Ok(_))) {
        return Err(ClientError::Control(format!("could not send {request:?}")));
    }
    ctl.sent += 1;
    if ctl.awaiting == 0 {
        ctl.waiting_since = Some(Instant::now());
    }
    ctl.awaiting += 1;
    Ok(())
}

/// Counts a reply (a message with `id` and `ok` or `error`); events pass through.
/// Keeps the server's `layer` events and the reply to a layer request (`"op":"layer"`
/// requests carry the id `"layer"`).
fn on_layer_message(text: &str, summary: &mut Summary, started: Instant) {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return;
    };
    if m.get("event").and_then(|e| e.as_str()) == Some("layer") {
        m.insert(
            "at_ms".into(),
            serde_json::json!(started.elapsed().as_millis() as u64),
        );
        summary.layer_events.push(serde_json::Value::Object(m));
    } else if m.get("id").and_then(|i| i.as_str()) == Some("layer") {
        summary.layer_reply = Some(serde_json::Value::Object(m));
    }
}

fn on_control_message(text: &str, ctl: &mut ControlRun, summary: &mut Summary) {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if m.contains_key("event") || !m.contains_key("id") {
        return;
    }
    summary.control_replies += 1;
    if m.contains_key("error") {
        summary.control_errors += 1;
    }
    ctl.awaiting = ctl.awaiting.saturating_sub(1);
    ctl.answered_at = Some(Instant::now());
    ctl.waiting_since = ctl.answered_at;
}

/// Room for the most datagrams GRO coalesces (64 segments, each within a 1500-byte MTU).
const GRO_BUFFER: usize = 64 * 1500;

/// Waits for the next datagram (or GRO run of them) on `socket`.
async fn recv_batch(
    socket: &UdpSocket,
    udp: &quinn_udp::UdpSocketState,
    buf: &mut [u8],
) -> std::io::Result<quinn_udp::RecvMeta> {
    loop {
        socket.readable().await?;
        let mut meta = [quinn_udp::RecvMeta::default()];
        let res = socket.try_io(tokio::io::Interest::READABLE, || {
            udp.recv(
                socket.into(),
                &mut [std::io::IoSliceMut::new(buf)],
                &mut meta,
            )
        });
        match res {
            Ok(_) => return Ok(meta[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Per-viewer counting of str0m events.
struct Tally {
    video_mid: Mid,
    audio_mid: Mid,
    video_packets_seen: u64,
    audio_packets_seen: u64,
    frames_out: Option<UnboundedSender<VideoFrame>>,
    media_out: Option<UnboundedSender<Media>>,
    /// When the ICE-restart PATCH went out.
    restart_sent: Option<Instant>,
    /// Where complete video frames are written ([`Options::video_out`]).
    video_out: Option<std::fs::File>,
    /// Frames were lost that the stream needs: what follows cannot be decoded until the next
    /// keyframe, and is neither written nor counted in a size run (as a player drops it).
    broken: bool,
    /// When a keyframe was last asked for (PLI), while `broken`.
    keyframe_asked: Option<Instant>,
    /// A keyframe should be asked for now (done where the connection can be written to).
    keyframe_wanted: bool,
}

impl Tally {
    fn new(
        video_mid: Mid,
        audio_mid: Mid,
        frames_out: Option<UnboundedSender<VideoFrame>>,
    ) -> Self {
        Self {
            video_mid,
            audio_mid,
            video_packets_seen: 0,
            audio_packets_seen: 0,
            frames_out,
            media_out: None,
            restart_sent: None,
            video_out: None,
            broken: false,
            keyframe_asked: None,
            keyframe_wanted: false,
        }
    }

    /// Asks for a keyframe (PLI) if the video is waiting for one: at once after the loss,
    /// then each [`KEYFRAME_RETRY`] while none comes, as a browser's receiver does.
    fn ask_keyframe(&mut self, rtc: &mut str0m::Rtc, s: &mut Summary) {
        if !std::mem::take(&mut self.keyframe_wanted) {
            return;
        }
        if let Some(mut w) = rtc.writer(self.video_mid)
            && w.request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
                .is_ok()
        {
            s.keyframe_requests += 1;
            self.keyframe_asked = Some(Instant::now());
        }
    }

    fn event(
        &mut self,
        e: Event,
        rtc: &str0m::Rtc,
        s: &mut Summary,
        started: Instant,
    ) -> Result<(), ClientError> {
        let ms = || started.elapsed().as_millis() as u64;
        match e {
            Event::Connected => s.connected_ms = Some(ms()),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Err(ClientError::Disconnected(
                    "ICE disconnected (the server stopped answering)".into(),
                ));
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                if let (Some(t), true) = (self.restart_sent, s.restart_ms.is_some()) {
                    s.restart_connected_ms
                        .get_or_insert(t.elapsed().as_millis() as u64);
                }
            }
            Event::Closed => {
                return Err(ClientError::Disconnected(
                    "the server closed the connection (DTLS close_notify)".into(),
                ));
            }
            Event::MediaData(d) if d.mid == self.video_mid => {
                s.video_frames += 1;
                // The packets the frame was made of (sequence numbers are extended: no wrap).
                let (first, last) = (**d.seq_range.start(), **d.seq_range.end());
                s.video_packets += last.saturating_sub(first) + 1;
                if s.restart_ms.is_some() {
                    s.frames_after_restart += 1;
                }
                if s.first_frame_ms.is_none() {
                    s.first_frame_ms = Some(ms());
                }
                let codec = d.params.spec().codec;
                s.codec.get_or_insert_with(|| codec.to_string());
                let keyframe = d.is_keyframe();
                if keyframe {
                    s.keyframes += 1;
                }
                if let Some(out) = &self.frames_out {
                    let _ = out.send(VideoFrame {
                        at: Instant::now(),
                        at_us: monotonic_us(),
                        keyframe,
                        rtp_time: d.time.numer(),
                        data: keyframe.then(|| d.data.to_vec()),
                        tail: d.data[d.data.len().saturating_sub(16)..].to_vec(),
                    });
                }
                if !d.contiguous && s.video_frames > 1 {
                    s.discontinuities += 1;
                }
                // A frame after a loss, or a first frame, that is not a keyframe has lost
                // its references (for codecs whose keyframes str0m tells).
                let tells_keyframes = !matches!(
                    d.codec_extra,
                    str0m::format::CodecExtra::None | str0m::format::CodecExtra::Tele(_)
                );
                if tells_keyframes && !keyframe && (!d.contiguous || s.video_frames == 1) {
                    self.broken = true;
                }
                if keyframe {
                    self.broken = false;
                    self.keyframe_asked = None;
                }
                if self.broken {
                    s.undecodable_frames += 1;
                    if self
                        .keyframe_asked
                        .is_none_or(|t| t.elapsed() >= KEYFRAME_RETRY)
                    {
                        self.keyframe_wanted = true;
                    }
                    return Ok(());
                }
                if let Some(out) = self.video_out.as_mut() {
                    use std::io::Write;
                    if let Err(e) = out.write_all(&d.data) {
                        tracing::warn!("video not written: {e}");
                        self.video_out = None;
                    }
                }
                if keyframe && let Some((w, h)) = media::dimensions(&codec.to_string(), &d.data) {
                    s.width.get_or_insert(w);
                    s.height.get_or_insert(h);
                    if s.sizes.last().is_none_or(|r| (r.width, r.height) != (w, h)) {
                        s.sizes.push(SizeRun {
                            at_ms: ms(),
                            width: w,
                            height: h,
                            frames: 0,
                        });
                    }
                }
                if let Some(run) = s.sizes.last_mut() {
                    run.frames += 1;
                }
            }
            Event::MediaData(d) if d.mid == self.audio_mid => {
                s.audio_packets += 1;
                s.first_audio_ms.get_or_insert_with(ms);
            }
            Event::RtpPacket(p) => {
                let params = rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|x| x.pt() == p.header.payload_type)
                    .map(|x| x.spec().codec);
                match params {
                    Some(c) if c.is_video() => {
                        s.video_packets += 1;
                        s.codec.get_or_insert_with(|| c.to_string());
                        if p.header.marker {
                            s.video_frames += 1;
                            if s.first_frame_ms.is_none() {
                                s.first_frame_ms = Some(ms());
                            }
                        }
                    }
                    Some(c) if c.is_audio() => s.audio_packets += 1,
                    _ => {}
                }
                if let (Some(out), Some(c)) = (&self.media_out, params) {
                    let _ = out.send(Media::Rtp {
                        video: c.is_video(),
                        packet: Box::new(p),
                    });
                }
            }
            Event::MediaIngressStats(st) => {
                // `loss` is the fraction lost since the previous report (RFC 3550 §6.4.1):
                // apply it to the packets received in that interval.
                let prev = if st.mid == self.video_mid {
                    &mut self.video_packets_seen
                } else if st.mid == self.audio_mid {
                    &mut self.audio_packets_seen
                } else {
                    return Ok(());
                };
                let fresh = st.packets.saturating_sub(*prev);
                *prev = st.packets;
                let loss = st.loss.unwrap_or(0.0).clamp(0.0, 1.0) as f64;
                if loss > 0.0 && loss < 1.0 {
                    s.lost_packets += (fresh as f64 * loss / (1.0 - loss)).round() as u64;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The local address to offer: loopback for a loopback server, else the address the kernel
/// would route to it from.
async fn local_ip_for(url: &reqwest::Url) -> Result<IpAddr, ClientError> {
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await?
        .next()
        .ok_or_else(|| ClientError::Request {
            url: url.to_string(),
            message: "the host name resolves to nothing".into(),
        })?;
    if addr.ip().is_loopback() {
        return Ok(addr.ip());
    }
    let probe = UdpSocket::bind(SocketAddr::new(
        if addr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        },
        0,
    ))
    .await?;
    probe.connect(addr).await?;
    Ok(probe.local_addr()?.ip())
}

/// The `detail` of an RFC 9457 problem, else the body's first line.
pub fn problem_detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(String::from))
        .unwrap_or_else(|| {
            body.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect()
        })
}

/// Entry points for the fuzz targets in `fuzz/` (compiled with `--cfg fuzzing` only): what the
/// client does with the bytes a server sends it.
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::*;

    /// A 201's body applied as the answer to a fresh offer made as [`watch`] makes it, then an
    /// ICE restart's 200 body applied to that answer and the connection, as `restart_ice` does.
    /// str0m names media sections at random: `{0}`, `{1}` and `{2}` in the input stand for the
    /// offer's video, audio and data-channel mids, so that inputs mean the same every run.
    pub fn answer_then_restart(cert: &str0m::config::DtlsCert, answer: &str, fragment: &str) {
        let mut rtc = RtcConfig::new()
            .set_dtls_cert(cert.clone())
            .build(Instant::now());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.add_channel("control".into());
        let (offer, pending) = api.apply().expect("adding media makes an offer");
        let mids: Vec<String> = offer
            .to_sdp_string()
            .lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(str::to_string)
            .collect();
        let name = |text: &str| {
            mids.iter().enumerate().fold(text.to_string(), |t, (i, m)| {
                t.replace(&format!("{{{i}}}"), m)
            })
        };
        let (answer, fragment) = (name(answer), name(fragment));
        let (answer, fragment) = (answer.as_str(), fragment.as_str());
        let _ = sends(answer, &audio.to_string());
        let _ = problem_detail(answer);
        if accept_answer(&mut rtc, pending, answer).is_err() {
            return;
        }
        let mut api = rtc.sdp_api();
        api.ice_restart(true);
        let Some((_, pending)) = api.apply() else {
            return;
        };
        let Some(updated) = answer_with_fragment(answer, fragment) else {
            return;
        };
        let _ = accept_answer(&mut rtc, pending, &updated);
    }

    /// A message on the control channel, as [`watch`] counts it.
    pub fn control_message(text: &str) {
        let mut ctl = ControlRun {
            awaiting: 1,
            ..ControlRun::default()
        };
        on_control_message(text, &mut ctl, &mut Summary::default());
    }
}

/// An error and its causes: reqwest's own text ("error sending request for url …") does not
/// say what went wrong ("connection refused").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_splits_into_frames_without_delimiters() {
        // AUD, SPS, PPS, IDR in two slices; AUD, P; then a P without a delimiter (its slice
        // starts at macroblock 0), with four-byte start codes.
        let idr_a = [0x65, 0x88, 1];
        let idr_b = [0x65, 0x40, 2]; // first_mb_in_slice ≠ 0: the same frame
        let p1 = [0x41, 0x9a, 3];
        let p2 = [0x41, 0x9b, 4];
        let mut s = Vec::new();
        for nal in [
            &[0x09, 0x10][..],
            &[0x67, 5],
            &[0x68, 6],
            &idr_a,
            &idr_b,
            &[0x09, 0x30],
            &p1,
        ] {
            s.extend_from_slice(&[0, 0, 1]);
            s.extend_from_slice(nal);
        }
        s.extend_from_slice(&[0, 0, 0, 1]);
        s.extend_from_slice(&p2);
        let frames = annexb_frames(&s);
        let nal = |b: &[u8]| [&[0u8, 0, 0, 1][..], b].concat();
        assert_eq!(
            frames,
            vec![
                [nal(&[0x67, 5]), nal(&[0x68, 6]), nal(&idr_a), nal(&idr_b)].concat(),
                nal(&p1),
                nal(&p2),
            ]
        );
        assert!(annexb_frames(b"not h264").is_empty());
    }

    #[test]
    fn a_failed_connection_carries_what_the_server_said_of_the_ended_resource() {
        let said = "this WHEP resource ended 0 s ago: session source failed";
        assert_eq!(
            ClientError::NotConnected(5)
                .with_server_detail(Some(404), Some(said.into()))
                .to_string(),
            format!("ICE/DTLS did not connect within 5 s; the server says: {said}")
        );
        assert_eq!(
            ClientError::NoMedia(5)
                .with_server_detail(Some(404), Some(said.into()))
                .to_string(),
            format!("no media within 5 s; the server says: {said}")
        );
        // A DELETE that found the resource says nothing about why it failed.
        assert_eq!(
            ClientError::NotConnected(5)
                .with_server_detail(Some(200), None)
                .to_string(),
            "ICE/DTLS did not connect within 5 s"
        );
    }

    #[test]
    fn the_answer_tells_whether_audio_comes() {
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n\
                      m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\n";
        assert!(sends(answer, "0") && sends(answer, "1"));
        assert!(!sends(answer, "2"), "no such section");
        let rejected = answer.replace("m=audio 9", "m=audio 0");
        assert!(!sends(&rejected, "1"), "port 0: rejected");
        let inactive = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=inactive\r\n\
                        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n";
        assert!(!sends(inactive, "1") && sends(inactive, "0"));
    }

    fn words(w: &str) -> Vec<String> {
        w.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn an_ice_restart_fragment_replaces_credentials_and_candidates_of_the_answer() {
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
                      a=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
                      a=ice-ufrag:old1\r\na=ice-pwd:oldpassword1234567890ab\r\n\
                      a=candidate:1 1 udp 2130706431 127.0.0.1 8443 typ host\r\n\
                      a=end-of-candidates\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
                      a=ice-ufrag:old1\r\na=ice-pwd:oldpassword1234567890ab\r\n";
        let fragment = "a=ice-lite\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                        a=ice-ufrag:new2\r\na=ice-pwd:newpassword1234567890ab\r\n\
                        a=candidate:2 1 udp 2130706431 127.0.0.1 9443 typ host\r\n\
                        a=end-of-candidates\r\n";
        let out = answer_with_fragment(answer, fragment).unwrap();
        assert!(
            !out.contains("old1") && !out.contains("oldpassword"),
            "{out}"
        );
        assert_eq!(out.matches("a=ice-ufrag:new2\r\n").count(), 2, "{out}");
        assert_eq!(out.matches("a=candidate:").count(), 1, "{out}");
        assert!(out.contains("a=mid:0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 9443"));
        assert!(answer_with_fragment(answer, "a=ice-ufrag:x\r\n").is_none());

        let offer = "v=0\r\na=ice-options:trickle\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
                     a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                     a=mid:1\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n";
        assert_eq!(
            restart_fragment(offer, "u", "p"),
            "a=ice-ufrag:u\r\na=ice-pwd:p\r\na=ice-options:trickle\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
             a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
    }

    #[test]
    fn control_requests_from_command_line_words() {
        let r = |op: &str, args: &str| control_request(7, op, &words(args));
        assert_eq!(
            r("seek", "20").unwrap(),
            r#"{"op":"seek","to":20.0,"id":7}"#
        );
        assert_eq!(
            r("seek", "600f").unwrap(),
            r#"{"op":"seek","frame":600,"id":7}"#
        );
        assert_eq!(
            r("step", "-1").unwrap(),
            r#"{"op":"step","frames":-1,"id":7}"#
        );
        assert_eq!(
            r("select_audio", "dub 0,1").unwrap(),
            r#"{"op":"select_audio","input":"dub","channels":[0,1],"id":7}"#
        );
        assert_eq!(
            r("select_audio", "1").unwrap(),
            r#"{"op":"select_audio","input":1,"id":7}"#
        );
        assert_eq!(
            r("chat", "hello there").unwrap(),
            r#"{"op":"chat","text":"hello there","id":7}"#
        );
        assert_eq!(r("pause", "").unwrap(), r#"{"op":"pause","id":7}"#);
        assert_eq!(r("raw", "not json").unwrap(), "not json");
        assert!(r("seek", "").unwrap_err().contains("seek needs"));
        assert!(r("seek", "soon").unwrap_err().contains("must be a number"));
        assert!(r("select_audio", "1 a,b").unwrap_err().contains("channels"));
        assert!(r("rewind", "").unwrap_err().contains("unknown op"));
    }
}
