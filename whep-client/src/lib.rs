//! A WHEP client (draft-ietf-wish-whep) on str0m: offers recvonly audio and video, POSTs the
//! offer, completes ICE and DTLS, and counts what arrives.
//!
//! # Layout
//! - `lib.rs`: [`watch`], one viewer from POST to DELETE, and its [`Summary`].
//! - `media.rs`: frame-level facts from payloads (H.264 SPS dimensions, VP8 key frame header).
//! - `main.rs`: the `whep-client` CLI (`play`, `load`).
//!
//! It talks to any WHEP server and knows nothing of Wisp's internals.
#![forbid(unsafe_code)]

pub mod media;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};
use tokio::net::UdpSocket;

/// What to do.
#[derive(Debug, Clone)]
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
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub codec: Option<String>,
    /// POST sent → first complete video frame, ms.
    pub first_frame_ms: Option<u64>,
    /// POST sent → ICE+DTLS connected, ms.
    pub connected_ms: Option<u64>,
    /// Packets lost as the receiver reports count them (str0m's ingress stats).
    pub lost_packets: u64,
    pub seconds: f64,
    pub resource: Option<String>,
}

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
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
}

/// Watches one WHEP session: POST, connect, count, DELETE. `progress` is called with the
/// running summary about once a second.
pub async fn watch(
    http: &reqwest::Client,
    opts: &Options,
    mut progress: impl FnMut(&Summary),
) -> Result<Summary, ClientError> {
    let started = Instant::now();
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

    let mut rtc = RtcConfig::new()
        .set_rtp_mode(opts.rtp_only)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .build(Instant::now());
    rtc.add_local_candidate(
        Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?,
    );
    let mut api = rtc.sdp_api();
    let video_mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let audio_mid = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().expect("adding media makes an offer");

    let mut req = http
        .post(url.clone())
        .header("Content-Type", "application/sdp")
        .body(offer.to_sdp_string());
    if let Some(t) = &opts.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| ClientError::Request {
        url: opts.url.clone(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .and_then(|l| url.join(l).ok());
    let body = resp.text().await.unwrap_or_default();
    if status != 201 {
        return Err(ClientError::Http {
            status,
            detail: problem_detail(&body),
        });
    }
    let answer =
        SdpAnswer::from_sdp_string(&body).map_err(|e| ClientError::Answer(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| ClientError::Answer(e.to_string()))?;

    let mut summary = Summary {
        resource: location.as_ref().map(|l| l.to_string()),
        ..Summary::default()
    };
    let mut tally = Tally::new(video_mid, audio_mid);
    let mut buf = vec![0u8; GRO_BUFFER];
    let mut last_progress = Instant::now();
    let end = opts.duration.map(|d| started + d);
    let result = loop {
        // Poll until str0m wants a timeout (its run-loop rule).
        let deadline = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Ok(t),
                Ok(Output::Transmit(t)) => {
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => {
                    if let Err(e) = tally.event(e, &rtc, &mut summary, started) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(ClientError::Rtc(e.to_string())),
            }
        };
        let deadline = match deadline {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        if let Some(want) = opts.frames
            && summary.video_frames >= want
        {
            break Ok(());
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break Ok(());
        }
        let waited = now.duration_since(started);
        if opts.duration.is_none() && waited >= opts.timeout {
            let secs = opts.timeout.as_secs();
            break Err(if summary.connected_ms.is_none() {
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
        tokio::select! {
            r = recv_batch(&socket, &udp, &mut buf) => {
                let Ok(meta) = r else {
                    continue; // ICMP from a closed port: keep trying until timeout.
                };
                // With GRO the kernel hands over a run of equal-sized datagrams at once.
                let now = Instant::now();
                let mut failed = None;
                for dg in buf[..meta.len].chunks(meta.stride.max(1)) {
                    let Ok(input) = Receive::new(Protocol::Udp, meta.addr, local, dg) else {
                        continue;
                    };
                    if let Err(e) = rtc.handle_input(Input::Receive(now, input)) {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(ClientError::Rtc(e.to_string()));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Err(e) = rtc.handle_input(Input::Timeout(Instant::now())) {
                    break Err(ClientError::Rtc(e.to_string()));
                }
            }
        }
    };
    summary.seconds = started.elapsed().as_secs_f64();
    // Tear down the resource either way (RFC 9725 §4.2).
    if let Some(loc) = &location {
        let mut del = http.delete(loc.clone());
        if let Some(t) = &opts.token {
            del = del.bearer_auth(t);
        }
        let _ = del.send().await;
    }
    rtc.disconnect();
    result.map(|()| summary)
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
}

impl Tally {
    fn new(video_mid: Mid, audio_mid: Mid) -> Self {
        Self {
            video_mid,
            audio_mid,
            video_packets_seen: 0,
            audio_packets_seen: 0,
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
            Event::MediaData(d) if d.mid == self.video_mid => {
                s.video_frames += 1;
                if s.first_frame_ms.is_none() {
                    s.first_frame_ms = Some(ms());
                }
                let codec = d.params.spec().codec;
                s.codec.get_or_insert_with(|| codec.to_string());
                if d.is_keyframe() {
                    s.keyframes += 1;
                }
                if !d.contiguous && s.video_frames > 1 {
                    s.discontinuities += 1;
                }
                if s.width.is_none()
                    && let Some((w, h)) = media::dimensions(&codec.to_string(), &d.data)
                {
                    s.width = Some(w);
                    s.height = Some(h);
                }
            }
            Event::MediaData(d) if d.mid == self.audio_mid => s.audio_packets += 1,
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
