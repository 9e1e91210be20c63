//! `--copy-video`: a live stream's H.264 goes into the ring as it came, neither decoded nor
//! encoded; its audio becomes Opus as always. For publishers that already send what every
//! WebRTC viewer decodes: H.264 baseline or constrained baseline, which cannot carry B-frames.
//! Any other video is refused when its first sequence parameter set shows it, before a packet
//! of it goes out, with a reason that says what to send instead.
//!
//! Owns the pass-through: access units with 4-byte NAL lengths (FLV) or start codes (MPEG-TS)
//! made Annex B, the source's SPS read for its profile, and RTP timestamps from the source's.
//! Opening the input is `source.rs`'s, audio filtering and encoding `audio.rs`'s, RTP
//! payloading `rtp.rs`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};

use ff::{Packet, Rational as FfRational, codec, frame, media};
use ffmpeg_next as ff;
use rtp_ring::{Flags, RecordRef, Writer, now_us};

use crate::arrival::Arrivals;
use crate::audio::{AudioFilter, OpusEncoder};
use crate::control::{self, Command, Event, Incoming, PlayState};
use crate::options::{ChannelSel, Options};
use crate::rtp::{AUDIO_TRACK, RtpPacket, RtpTrack, VIDEO_TRACK};
use crate::source::{SourceError, describe_audio_decoder, open_input};

/// Added to every timestamp so that audio a little older than the first packet read still
/// gets a positive one.
const HEADROOM_US: i64 = 1_000_000;

/// Video with no SPS in band for this long cannot be passed through.
const NO_SPS_LIMIT_US: i64 = 5_000_000;

/// Why copying stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The source's video is not something viewers can be sent as it is.
    #[error("{0}")]
    NotCopyable(String),
    #[error("{0}")]
    Setup(String),
}

/// H.264 profile_idc values by name, for messages.
fn profile_name(profile_idc: u8, constraints: u8) -> String {
    match profile_idc {
        66 if constraints & 0x40 != 0 => "constrained baseline".into(),
        66 => "baseline".into(),
        77 => "main".into(),
        88 => "extended".into(),
        100 => "high".into(),
        110 => "high 10".into(),
        122 => "high 4:2:2".into(),
        244 => "high 4:4:4".into(),
        other => format!("profile_idc {other}"),
    }
}

/// Whether a stream with this SPS can go to a viewer that negotiated constrained baseline:
/// baseline itself, or any profile that sets constraint_set1 (decodable as constrained
/// baseline, RFC 6184 §8.1). Neither has B-frames.
pub fn copyable(profile_idc: u8, constraints: u8) -> Result<(), String> {
    if profile_idc == 66 || constraints & 0x40 != 0 {
        return Ok(());
    }
    Err(format!(
        "\"video\": \"copy\" passes H.264 through only when every WebRTC viewer can decode it as \
         it is: baseline or constrained baseline, which have no B-frames. This stream is H.264 {}. \
         Send baseline (x264 profile baseline: OBS Profile \"baseline\", FFmpeg -profile:v \
         baseline) or publish without copy, and the gateway transcodes it",
        profile_name(profile_idc, constraints)
    ))
}

/// Writes `data` (one access unit) into `out` as Annex B. MPEG-TS's already is; FLV's has a
/// 4-byte big-endian length before each NAL unit (what OBS, FFmpeg and every encoder in the
/// field write, and what the gateway passes on).
pub fn to_annexb(data: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1]) {
        out.extend_from_slice(data);
        return Ok(());
    }
    let mut rest = data;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err("a NAL unit length is cut short");
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > tail.len() {
            return Err("a NAL unit length runs past its packet");
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(())
}

/// The NAL units of an Annex B buffer, without their start codes.
pub fn nal_units(annexb: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= annexb.len() {
        if annexb[i] == 0 && annexb[i + 1] == 0 && annexb[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The next start code, and the zero of a 4-byte one before it.
            let mut e = s - 3;
            while e > 0 && annexb[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(annexb.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| e > s)
        .map(move |(s, e)| &annexb[s..e])
}

/// The video being passed through.
struct VideoCopy {
    index: usize,
    time_base: FfRational,
    width: u32,
    height: u32,
    fps: f64,
    /// Made from the first SPS (at the first keyframe); nothing is written before it.
    rtp: Option<RtpTrack>,
    /// The last SPS and PPS seen (Annex B), put before a keyframe that comes without them.
    param_sets: Vec<u8>,
    scratch: Vec<u8>,
    /// When the first video packet came (µs, as [`Remux::rel_us`]).
    first_us: Option<i64>,
    /// The profile the SPS states, for the `ready` event.
    profile: Option<String>,
}

/// The audio, decoded and made Opus.
struct AudioPath {
    index: usize,
    time_base: FfRational,
    decoder: ff::decoder::Audio,
    filter: AudioFilter,
    encoder: OpusEncoder,
    rtp: RtpTrack,
    decoded: frame::Audio,
    filtered: frame::Audio,
}

pub struct Remux {
    input: ff::format::context::Input,
    video: Option<VideoCopy>,
    audio: Option<AudioPath>,
    writer: Writer,
    stop: Arc<AtomicBool>,
    control: Option<Receiver<Incoming>>,
    /// When the input's bytes reached the gateway (`--timed-input`).
    arrivals: Option<Arrivals>,
    /// The first timestamp read (µs), which becomes [`HEADROOM_US`].
    origin_us: Option<i64>,
    announced: bool,
    last_us: i64,
    frames: u64,
    audio_frames: u64,
    packets: u64,
    bytes: u64,
    corrupt: u64,
    wakeups: u64,
}

impl std::fmt::Debug for Remux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remux(frames {})", self.frames)
    }
}

fn to_us(ts: i64, tb: FfRational) -> i64 {
    (ts as i128 * 1_000_000 * tb.numerator() as i128 / tb.denominator().max(1) as i128) as i64
}

impl Remux {
    pub fn new(
        opts: &Options,
        writer: Writer,
        stop: Arc<AtomicBool>,
        control: Option<Receiver<Incoming>>,
    ) -> Result<Self, CopyError> {
        let spec = &opts.inputs[0];
        let input = open_input(spec, opts.live, &stop)?;
        let setup = |what: &str, e: ff::Error| CopyError::Setup(format!("{what}: {e}"));
        let video = match input.streams().best(media::Type::Video) {
            Some(st) => {
                let params = st.parameters();
                if params.id() != codec::Id::H264 {
                    return Err(CopyError::NotCopyable(format!(
                        "\"video\": \"copy\" passes H.264 through; this stream's video is {:?}. \
                         Publish without copy, and the gateway transcodes it",
                        params.id()
                    )));
                }
                // Opened only to read the picture size the demuxer found.
                let dec = codec::Context::from_parameters(params)
                    .and_then(|c| c.decoder().video())
                    .map_err(|e| setup("reading the video's parameters", e))?;
                // The stream's base rate first: FLV's millisecond timestamps make the average
                // 30.3 for 30 fps.
                let rate = [st.rate(), st.avg_frame_rate()]
                    .into_iter()
                    .find(|r| r.numerator() > 0 && r.denominator() > 0)
                    .map_or(30.0, |r| r.numerator() as f64 / r.denominator() as f64);
                Some(VideoCopy {
                    index: st.index(),
                    time_base: st.time_base(),
                    width: dec.width(),
                    height: dec.height(),
                    fps: rate.min(240.0),
                    rtp: None,
                    param_sets: Vec::new(),
                    scratch: Vec::new(),
                    first_us: None,
                    profile: None,
                })
            }
            None => None,
        };
        let audio = match input.streams().best(media::Type::Audio) {
            Some(st) => {
                let decoder = codec::Context::from_parameters(st.parameters())
                    .and_then(|c| c.decoder().audio())
                    .map_err(|e| setup("audio decoder", e))?;
                let source_channels = decoder.channel_layout().channels().max(1) as u32;
                let channels = if opts.channels.0.is_empty() {
                    ChannelSel::range(source_channels.min(2), 0)
                } else {
                    opts.channels.clone()
                };
                Some(AudioPath {
                    index: st.index(),
                    time_base: st.time_base(),
                    decoder,
                    filter: AudioFilter::new(channels),
                    encoder: OpusEncoder::new(opts.audio_bitrate).map_err(CopyError::Setup)?,
                    rtp: RtpTrack::opus(),
                    decoded: frame::Audio::empty(),
                    filtered: frame::Audio::empty(),
                })
            }
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return Err(SourceError::NoStream {
                url: spec.url.clone(),
                what: "video or audio",
            }
            .into());
        }
        Ok(Self {
            input,
            video,
            audio,
            writer,
            stop,
            control,
            arrivals: opts.arrivals.clone(),
            origin_us: None,
            announced: false,
            last_us: 0,
            frames: 0,
            audio_frames: 0,
            packets: 0,
            bytes: 0,
            corrupt: 0,
            wakeups: 0,
        })
    }

    /// Copies until the input ends, a `stop`, or a signal.
    pub fn run(mut self) -> Result<(), CopyError> {
        if self.video.is_none() {
            self.announce();
        }
        let result = self.copy();
        self.report_stats();
        result
    }

    fn copy(&mut self) -> Result<(), CopyError> {
        let mut packet = Packet::empty();
        loop {
            if self.stop.load(Ordering::Relaxed) || !self.poll_commands() {
                return Ok(());
            }
            match packet.read(&mut self.input) {
                Ok(()) => {}
                Err(ff::Error::Eof) => return Ok(()),
                Err(ff::Error::InvalidData) => {
                    self.corrupt += 1;
                    continue;
                }
                Err(ff::Error::Exit) => return Ok(()),
                Err(e) => {
                    tracing::warn!("read error, treating as the end of the stream: {e}");
                    return Ok(());
                }
            }
            let index = packet.stream();
            if self.video.as_ref().is_some_and(|v| v.index == index) {
                self.video_packet(&packet)?;
            } else if self.audio.as_ref().is_some_and(|a| a.index == index) {
                self.audio_packet(&packet);
            }
        }
    }

    /// The packet's time from the start of the stream, plus the headroom (µs).
    fn rel_us(&mut self, ts: Option<i64>, tb: FfRational) -> i64 {
        let Some(ts) = ts else {
            return self.last_us;
        };
        let us = to_us(ts, tb);
        let origin = *self.origin_us.get_or_insert(us);
        self.last_us = (us - origin + HEADROOM_US).max(0);
        self.last_us
    }

    fn video_packet(&mut self, packet: &Packet) -> Result<(), CopyError> {
        let tb = self.video.as_ref().expect("checked").time_base;
        let rel = self.rel_us(packet.pts().or(packet.dts()), tb);
        let v = self.video.as_mut().expect("checked");
        let Some(data) = packet.data() else {
            return Ok(());
        };
        let mut annexb = std::mem::take(&mut v.scratch);
        if let Err(e) = to_annexb(data, &mut annexb) {
            self.corrupt += 1;
            tracing::debug!("video packet dropped: {e}");
            v.scratch = annexb;
            return Ok(());
        }
        let mut has_sps = false;
        let mut idr = false;
        let mut sets = Vec::new();
        for nal in nal_units(&annexb) {
            match nal[0] & 0x1f {
                7 if nal.len() >= 4 => {
                    copyable(nal[1], nal[2]).map_err(CopyError::NotCopyable)?;
                    if v.rtp.is_none() {
                        tracing::info!(
                            profile = profile_name(nal[1], nal[2]),
                            level = nal[3],
                            "passing the stream's H.264 through"
                        );
                        v.rtp = Some(RtpTrack::h264_passthrough([nal[1], nal[2], nal[3]]));
                        v.profile = Some(profile_name(nal[1], nal[2]));
                    }
                    has_sps = true;
                    sets.extend_from_slice(&[0, 0, 0, 1]);
                    sets.extend_from_slice(nal);
                }
                8 => {
                    sets.extend_from_slice(&[0, 0, 0, 1]);
                    sets.extend_from_slice(nal);
                }
                5 => idr = true,
                _ => {}
            }
        }
        if has_sps {
            v.param_sets = sets;
        }
        let key = idr || packet.is_key();
        let Some(rtp) = v.rtp.as_mut() else {
            // Nothing before the first SPS: a viewer could not decode it.
            v.scratch = annexb;
            let first = *v.first_us.get_or_insert(rel);
            if rel - first > NO_SPS_LIMIT_US {
                return Err(CopyError::NotCopyable(format!(
                    "\"video\": \"copy\" needs the stream's parameter sets (SPS, PPS) in band, \
                     and none came in {} s of video (an RTMP publish gets them from the gateway; \
                     a pulled source must repeat them before keyframes). Publish or pull without \
                     copy, and the gateway transcodes it",
                    NO_SPS_LIMIT_US / 1_000_000
                )));
            }
            return Ok(());
        };
        let ts = (rel as i128 * 90_000 / 1_000_000) as u64;
        let packets = if key && !has_sps && !v.param_sets.is_empty() {
            let mut with_sets = v.param_sets.clone();
            with_sets.extend_from_slice(&annexb);
            rtp.packetize(&with_sets, ts, true)
        } else {
            rtp.packetize(&annexb, ts, key)
        };
        v.scratch = annexb;
        if !self.announced {
            self.announce();
        }
        self.frames += 1;
        let arrived_us = self
            .arrivals
            .as_ref()
            .and_then(|a| a.of_packet(packet.position() as i64, packet.size()));
        self.write(VIDEO_TRACK, &packets, arrived_us);
        Ok(())
    }

    fn audio_packet(&mut self, packet: &Packet) {
        let tb = self.audio.as_ref().expect("checked").time_base;
        // Decoded frames carry the packet's timestamps; they become µs from the origin.
        let base = self.rel_us(packet.pts().or(packet.dts()), tb);
        let a = self.audio.as_mut().expect("checked");
        let packet_us = packet.pts().or(packet.dts()).map(|t| to_us(t, tb));
        if let Err(e) = a.decoder.send_packet(packet) {
            self.corrupt += 1;
            tracing::debug!("audio packet dropped: {e}");
            return;
        }
        let mut out = Vec::new();
        while a.decoder.receive_frame(&mut a.decoded).is_ok() {
            let us = match (a.decoded.pts().map(|t| to_us(t, tb)), packet_us) {
                (Some(f), Some(p)) => base + (f - p),
                _ => base,
            };
            a.decoded.set_pts(Some(us));
            if let Err(e) = a.filter.push(&a.decoded) {
                tracing::warn!("audio frame dropped: {e}");
                continue;
            }
            while a.filter.pull(&mut a.filtered) {
                if a.filtered.samples() != crate::audio::FRAME_SAMPLES {
                    continue;
                }
                let ts = a.filtered.pts().unwrap_or(0);
                let mut encoded = Vec::with_capacity(1);
                if let Err(e) = a.encoder.encode(&mut a.filtered, ts, &mut encoded) {
                    tracing::warn!("audio frame not encoded: {e}");
                    continue;
                }
                for p in encoded {
                    out.extend(a.rtp.packetize(&p.data, p.ts as u64, false));
                }
                self.audio_frames += 1;
            }
        }
        if !out.is_empty() {
            self.write(AUDIO_TRACK, &out, None);
        }
    }

    /// Writes a unit's packets, stamped with when its input reached the gateway when known
    /// (as the transcoding path does), else now.
    fn write(&mut self, track: u8, packets: &[RtpPacket], arrived_us: Option<u64>) {
        let now = now_us();
        let capture_us = arrived_us.map_or(now, |at| at.min(now));
        for p in packets {
            let mut flags = Flags::empty();
            if p.keyframe_start {
                flags |= Flags::KEYFRAME;
            }
            if p.marker || track == AUDIO_TRACK {
                flags |= Flags::END_OF_FRAME;
            }
            if let Err(e) = self.writer.append(RecordRef {
                track,
                flags,
                capture_us,
                packet: &p.bytes,
            }) {
                tracing::error!("ring refused a packet: {e}");
                continue;
            }
            self.packets += 1;
            self.bytes += p.bytes.len() as u64;
        }
        self.writer.wake();
        self.wakeups += 1;
    }

    /// Tells the gateway the tracks: at the first video frame (its SPS gives the profile), or
    /// at once for audio alone.
    fn announce(&mut self) {
        self.announced = true;
        let mut tracks = Vec::new();
        if let Some(rtp) = self.video.as_ref().and_then(|v| v.rtp.as_ref()) {
            tracks.push(rtp.info.clone());
        }
        if let Some(a) = &self.audio {
            tracks.push(a.rtp.info.clone());
        }
        let v = self.video.as_ref();
        control::emit(&Event::Ready {
            tracks,
            duration: None,
            fps: v.map_or(0.0, |v| v.fps),
            width: v.map_or(0, |v| v.width),
            height: v.map_or(0, |v| v.height),
            inputs: Vec::new(),
            audio_input: None,
            audio_channels: Vec::new(),
            source_video: v.map(|v| {
                format!(
                    "h264 {} {}x{} {} fps (passed through)",
                    v.profile.as_deref().unwrap_or("?"),
                    v.width,
                    v.height,
                    (v.fps * 100.0).round() / 100.0
                )
            }),
            source_audio: self
                .audio
                .as_ref()
                .map(|a| describe_audio_decoder(&a.decoder)),
        });
    }

    /// Handles the commands that came in; false when one (or stdin's end) stops us.
    fn poll_commands(&mut self) -> bool {
        let Some(rx) = &self.control else {
            return true;
        };
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return true,
            };
            let (id, cmd) = match msg {
                Incoming::Command(id, cmd) => (id, cmd),
                Incoming::Invalid(bad) => {
                    control::emit(&Event::Error {
                        id: bad.id,
                        code: "bad_request".into(),
                        message: bad.message,
                    });
                    continue;
                }
                Incoming::Closed => {
                    tracing::info!("stdin closed: the parent is gone, exiting");
                    return false;
                }
            };
            match cmd {
                Command::Stop => return false,
                // The publisher's encoder decides where keyframes are; its next one serves.
                Command::Keyframe => {
                    tracing::debug!("keyframe asked for; a copied stream has the publisher's");
                }
                Command::Status => control::emit(&Event::State {
                    state: PlayState::Playing,
                    position: (self.last_us - HEADROOM_US).max(0) as f64 / 1e6,
                    frame: self.frames,
                }),
                other => {
                    control::emit(&Event::Error {
                        id,
                        code: "not_supported".into(),
                        message: format!("a live stream passed through cannot {other:?}"),
                    });
                    continue;
                }
            }
            if let Some(id) = id {
                control::emit(&Event::Done { id });
            }
        }
    }

    fn report_stats(&self) {
        control::emit(&Event::Stats {
            video_frames: self.frames,
            audio_frames: self.audio_frames,
            packets: self.packets,
            bytes: self.bytes,
            corrupt_packets: self.corrupt,
            peak_rss_kb: None,
            wakeups: self.wakeups,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_units_become_annexb_and_split_back() {
        let sps = [0x67, 0x42, 0xc0, 0x1f, 0xaa];
        let idr = [0x65, 0x88, 0x00, 0x00, 0x03, 0x01, 0x02]; // emulation prevention: no start code inside
        let mut avcc = Vec::new();
        for nal in [&sps[..], &idr[..]] {
            avcc.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            avcc.extend_from_slice(nal);
        }
        let mut out = Vec::new();
        to_annexb(&avcc, &mut out).unwrap();
        let nals: Vec<&[u8]> = nal_units(&out).collect();
        assert_eq!(nals, vec![&sps[..], &idr[..]]);
        // Annex B input stays as it is.
        let mut again = Vec::new();
        to_annexb(&out, &mut again).unwrap();
        assert_eq!(again, out);
        // A length past the end is refused, not read past.
        assert!(to_annexb(&[0, 0, 0, 9, 0x65, 1], &mut out).is_err());
        assert!(to_annexb(&[0, 0, 5], &mut out).is_err());
    }

    #[test]
    fn three_byte_start_codes_split_too() {
        let buf = [0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65, 4];
        let nals: Vec<&[u8]> = nal_units(&buf).collect();
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]
        );
    }

    #[test]
    fn only_baseline_compatible_profiles_are_copied() {
        assert!(copyable(66, 0xc0).is_ok()); // x264 baseline: constrained baseline
        assert!(copyable(66, 0x00).is_ok());
        assert!(copyable(77, 0x40).is_ok()); // main that is constrained-baseline compatible
        let high = copyable(100, 0x00).unwrap_err();
        assert!(high.contains("H.264 high"), "{high}");
        assert!(high.contains("-profile:v baseline"), "{high}");
        assert!(copyable(77, 0x00).is_err());
    }
}
