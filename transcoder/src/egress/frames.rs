//! Ring records → whole coded frames with presentation times, for a muxer.
//!
//! Owns depacketizing (str0m's H.264 and VP8 depacketizers; an Opus packet is its RTP
//! payload), frame assembly by timestamp and marker, loss handling (a video frame with a
//! missing packet is dropped, and so is everything after it until the next keyframe), and the
//! egress timeline. It does not know containers (`record.rs`) or where records come from.
//!
//! # Timeline
//! A frame's time is its RTP timestamp, counted from where the output starts, in the track's
//! clock (90 kHz video, 48 kHz audio). The tracks' RTP clocks start at unrelated random
//! values, so each track is anchored on the capture time of its first packet: both then count
//! from the first video keyframe's capture. The same anchoring absorbs jumps: when a track's
//! RTP time and its capture time disagree by more than [`MAX_DRIFT_SECS`] (a publisher that
//! restarted its timestamps, a source that was paused without moving its clock on), the track
//! takes the capture time again. Times only move forward.

use rtp_ring::{Flags, RecordMeta};
use str0m::format::CodecExtra;
use str0m::unversioned::{Depacketizer, H264Depacketizer, Vp8Depacketizer};

/// Disagreement between RTP time and capture time beyond which a track re-anchors.
pub const MAX_DRIFT_SECS: i64 = 1;
/// A video frame larger than this is not a frame (a writer gone wrong); it is dropped.
const MAX_FRAME_BYTES: usize = 16 << 20;

/// A track's codec, as the session's source sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    Vp8,
    Opus,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Vp8 => "vp8",
            Codec::Opus => "opus",
        }
    }

    pub fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// The RTP clock rate.
    pub fn clock(self) -> i64 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "h264" => Ok(Codec::H264),
            "vp8" => Ok(Codec::Vp8),
            "opus" => Ok(Codec::Opus),
            other => Err(format!("unknown codec {other:?} (h264, vp8, opus)")),
        }
    }
}

/// A ring track and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackSpec {
    pub index: u8,
    pub codec: Codec,
}

impl std::str::FromStr for TrackSpec {
    type Err = String;
    /// `INDEX:CODEC`, e.g. `0:h264`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (index, codec) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: give INDEX:CODEC, e.g. 0:h264"))?;
        let index = index
            .parse::<u8>()
            .map_err(|_| format!("{s:?}: the track index is a number"))?;
        Ok(TrackSpec {
            index,
            codec: codec.parse()?,
        })
    }
}

/// One coded frame: an H.264 access unit (Annex B), a VP8 frame or an Opus packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub codec: Codec,
    pub data: Vec<u8>,
    /// Presentation time in the track's clock, from the start of the output.
    pub pts: i64,
    pub keyframe: bool,
}

/// What [`Framer::push`] noticed besides frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Notes {
    /// Video was lost and waits for a keyframe: asking the source for one helps.
    pub wants_keyframe: bool,
}

/// The RTP payload of a packet (after the CSRCs and header extension, without padding), or
/// `None` if the packet is malformed.
pub fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = (packet[0] & 0x0f) as usize;
    let mut start = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(start..start + 4)?;
        start += 4 + 4 * u16::from_be_bytes([ext[2], ext[3]]) as usize;
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let pad = *packet.last()? as usize;
        end = end.checked_sub(pad)?;
    }
    packet.get(start..end)
}

/// Maps a track's RTP times to output times (see the module's "Timeline").
#[derive(Debug, Clone, Default)]
struct Timeline {
    clock: i64,
    last_rtp: Option<u32>,
    /// RTP time extended past wraps, counted from the first packet.
    ext: i64,
    base_ext: i64,
    base_pts: i64,
    last_pts: Option<i64>,
}

impl Timeline {
    fn new(clock: i64) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    /// The output time of RTP time `rtp`, whose packet was captured `since_start_us` after
    /// the output's start.
    fn pts(&mut self, rtp: u32, since_start_us: i64) -> i64 {
        let wall = since_start_us * self.clock / 1_000_000;
        match self.last_rtp {
            None => {
                self.base_ext = 0;
                self.base_pts = wall;
            }
            Some(last) => self.ext += rtp.wrapping_sub(last) as i32 as i64,
        }
        self.last_rtp = Some(rtp);
        let mut pts = self.base_pts + (self.ext - self.base_ext);
        if (pts - wall).abs() > MAX_DRIFT_SECS * self.clock {
            self.base_ext = self.ext;
            self.base_pts = wall;
            pts = wall;
        }
        if let Some(last) = self.last_pts
            && pts <= last
        {
            pts = last + 1;
        }
        self.last_pts = Some(pts);
        pts
    }
}

/// One track's assembly state.
#[derive(Debug)]
struct Track {
    spec: TrackSpec,
    depacketizer: Option<Box<dyn Depacketizer + Send>>,
    extra: CodecExtra,
    timeline: Timeline,
    /// The frame being assembled: its RTP time, first packet's capture, keyframe flag.
    current: Option<(u32, u64, bool)>,
    buf: Vec<u8>,
    /// A packet of the current frame was lost or unreadable.
    broken: bool,
    last_seq: Option<u16>,
    /// Frames are dropped until a keyframe starts.
    need_keyframe: bool,
}

impl Track {
    fn new(spec: TrackSpec) -> Self {
        let depacketizer: Option<Box<dyn Depacketizer + Send>> = match spec.codec {
            Codec::H264 => Some(Box::new(H264Depacketizer::default())),
            Codec::Vp8 => Some(Box::new(Vp8Depacketizer::default())),
            Codec::Opus => None,
        };
        Self {
            spec,
            depacketizer,
            extra: CodecExtra::None,
            timeline: Timeline::new(spec.codec.clock()),
            current: None,
            buf: Vec::new(),
            broken: false,
            last_seq: None,
            need_keyframe: spec.codec.is_video(),
        }
    }
}

/// Turns one session's records into frames.
#[derive(Debug)]
pub struct Framer {
    video: Option<Track>,
    audio: Option<Track>,
    /// Capture time (µs) of the output's start: the first video keyframe, or without video
    /// the first audio packet.
    start_us: Option<u64>,
    /// Video packets lost or unreadable so far.
    pub lost_packets: u64,
}

impl Framer {
    pub fn new(video: Option<TrackSpec>, audio: Option<TrackSpec>) -> Self {
        Self {
            video: video.map(Track::new),
            audio: audio.map(Track::new),
            start_us: None,
            lost_packets: 0,
        }
    }

    /// When the output's first frame entered the ring (µs on the ring's clock), once known.
    pub fn start_us(&self) -> Option<u64> {
        self.start_us
    }

    /// Records were skipped (the reader fell a lap behind): video waits for a keyframe.
    pub fn lost_records(&mut self) {
        if let Some(v) = &mut self.video {
            v.need_keyframe = true;
            v.current = None;
            v.buf.clear();
            v.last_seq = None;
        }
    }

    /// Takes one record; returns the frames it completed (at most two: the frame it ends,
    /// or one it shows was over, and an audio packet).
    pub fn push(&mut self, meta: &RecordMeta, packet: &[u8], out: &mut Vec<Frame>) -> Notes {
        let mut notes = Notes::default();
        let is_video = self
            .video
            .as_ref()
            .is_some_and(|t| t.spec.index == meta.track);
        let is_audio = self
            .audio
            .as_ref()
            .is_some_and(|t| t.spec.index == meta.track);
        if !is_video && !is_audio {
            return notes;
        }
        let Some(header) = rtp_ring::RtpHeaderView::parse(packet) else {
            return notes;
        };
        let Some(payload) = rtp_payload(packet) else {
            return notes;
        };
        if is_audio {
            // Audio starts with the output (the first video keyframe, if there is video).
            if self.video.is_some() && self.start_us.is_none() {
                return notes;
            }
            let start = *self.start_us.get_or_insert(meta.capture_us);
            let track = self.audio.as_mut().expect("is_audio");
            if payload.is_empty() {
                return notes;
            }
            let since = meta.capture_us as i64 - start as i64;
            let pts = track.timeline.pts(header.timestamp, since);
            out.push(Frame {
                codec: track.spec.codec,
                data: payload.to_vec(),
                pts,
                keyframe: true,
            });
            return notes;
        }
        let track = self.video.as_mut().expect("is_video");
        // A packet missing since the last one breaks the frame it belonged to.
        let gap = track
            .last_seq
            .is_some_and(|last| header.seq != last.wrapping_add(1));
        track.last_seq = Some(header.seq);
        if gap {
            self.lost_packets += 1;
            track.broken = true;
        }
        // A new timestamp starts a new frame; one still open lost its last packet.
        if let Some((ts, _, _)) = track.current
            && ts != header.timestamp
        {
            track.broken = true;
            finish(track, &mut self.start_us, out, &mut notes);
        }
        if track.current.is_none() {
            track.current = Some((
                header.timestamp,
                meta.capture_us,
                meta.flags.contains(Flags::KEYFRAME),
            ));
            track.buf.clear();
            track.extra = CodecExtra::None;
            // A frame that starts mid-way (its first packets lost) cannot be decoded.
            track.broken = gap;
        }
        if let Some(d) = track.depacketizer.as_mut()
            && d.depacketize(payload, &mut track.buf, &mut track.extra)
                .is_err()
        {
            track.broken = true;
        }
        if track.buf.len() > MAX_FRAME_BYTES {
            track.broken = true;
            track.buf.clear();
        }
        if header.marker || meta.flags.contains(Flags::END_OF_FRAME) {
            finish(track, &mut self.start_us, out, &mut notes);
        }
        notes
    }
}

/// Ends `track`'s current frame: emitted if whole and decodable, else dropped and the track
/// waits for a keyframe.
fn finish(track: &mut Track, start_us: &mut Option<u64>, out: &mut Vec<Frame>, notes: &mut Notes) {
    let Some((ts, capture_us, flagged)) = track.current.take() else {
        return;
    };
    let keyframe = flagged
        || match &track.extra {
            CodecExtra::H264(e) => e.is_keyframe,
            CodecExtra::Vp8(e) => e.is_keyframe,
            _ => false,
        };
    if track.broken || track.buf.is_empty() {
        track.broken = false;
        if !track.need_keyframe {
            notes.wants_keyframe = true;
        }
        track.need_keyframe = true;
        return;
    }
    if track.need_keyframe && !keyframe {
        return;
    }
    track.need_keyframe = false;
    let start = *start_us.get_or_insert(capture_us);
    let since = capture_us as i64 - start as i64;
    let pts = track.timeline.pts(ts, since);
    out.push(Frame {
        codec: track.spec.codec,
        data: std::mem::take(&mut track.buf),
        pts,
        keyframe,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, if marker { 0x80 | 96 } else { 96 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn meta(track: u8, flags: Flags, capture_us: u64) -> RecordMeta {
        RecordMeta {
            index: 0,
            track,
            flags,
            capture_us,
        }
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f, 0xda];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00];
    const P: &[u8] = &[0x41, 0x9a, 0x02];

    fn framer() -> Framer {
        Framer::new(
            Some(TrackSpec {
                index: 0,
                codec: Codec::H264,
            }),
            Some(TrackSpec {
                index: 1,
                codec: Codec::Opus,
            }),
        )
    }

    #[test]
    fn a_keyframe_becomes_one_annex_b_access_unit_at_time_zero() {
        let mut f = framer();
        let mut out = Vec::new();
        let t0 = 1_000_000;
        // Audio before the first keyframe is not part of the output.
        f.push(
            &meta(1, Flags::empty(), t0 - 10_000),
            &rtp(7, 5000, false, &[0xfc, 1]),
            &mut out,
        );
        f.push(
            &meta(0, Flags::KEYFRAME, t0),
            &rtp(1, 90_000, false, SPS),
            &mut out,
        );
        f.push(
            &meta(0, Flags::empty(), t0),
            &rtp(2, 90_000, false, PPS),
            &mut out,
        );
        assert!(out.is_empty());
        f.push(
            &meta(0, Flags::END_OF_FRAME, t0),
            &rtp(3, 90_000, true, IDR),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let key = &out[0];
        assert!(key.keyframe);
        assert_eq!(key.pts, 0);
        let mut want = Vec::new();
        for nal in [SPS, PPS, IDR] {
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(nal);
        }
        assert_eq!(key.data, want);
        // Audio 20 ms later counts from the keyframe's capture, in 48 kHz ticks.
        f.push(
            &meta(1, Flags::empty(), t0 + 20_000),
            &rtp(8, 5960, false, &[0xfc, 2]),
            &mut out,
        );
        assert_eq!(out[1].codec, Codec::Opus);
        assert_eq!(out[1].pts, 960);
        // The next video frame is 3000 ticks (one frame at 30 fps) on, by its RTP time.
        f.push(
            &meta(0, Flags::END_OF_FRAME, t0 + 36_000),
            &rtp(4, 93_000, true, P),
            &mut out,
        );
        assert_eq!(out[2].pts, 3000);
        assert!(!out[2].keyframe);
    }

    #[test]
    fn a_lost_packet_drops_video_until_the_next_keyframe_and_asks_for_one() {
        let mut f = framer();
        let mut out = Vec::new();
        f.push(
            &meta(0, Flags::KEYFRAME, 0),
            &rtp(1, 0, true, IDR),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        // seq 2 lost: the frame of seq 3 is dropped, and so is the next (it refers to it).
        let notes = f.push(
            &meta(0, Flags::empty(), 33_000),
            &rtp(3, 3000, true, P),
            &mut out,
        );
        assert!(notes.wants_keyframe);
        f.push(
            &meta(0, Flags::empty(), 66_000),
            &rtp(4, 6000, true, P),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(f.lost_packets, 1);
        f.push(
            &meta(0, Flags::KEYFRAME, 100_000),
            &rtp(5, 9000, true, IDR),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].pts, 9000);
    }

    #[test]
    fn a_frame_whose_marker_was_lost_is_dropped_when_the_next_starts() {
        let mut f = framer();
        let mut out = Vec::new();
        f.push(
            &meta(0, Flags::KEYFRAME, 0),
            &rtp(1, 0, true, IDR),
            &mut out,
        );
        // The marker packet (seq 3) of frame 3000 is lost; frame 6000 shows it.
        f.push(
            &meta(0, Flags::empty(), 33_000),
            &rtp(2, 3000, false, P),
            &mut out,
        );
        f.push(
            &meta(0, Flags::empty(), 66_000),
            &rtp(4, 6000, true, P),
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn timestamps_wrap_and_jumps_reanchor_on_capture_time() {
        let mut t = Timeline::new(90_000);
        assert_eq!(t.pts(u32::MAX - 1499, 0), 0);
        // Across the 32-bit wrap.
        assert_eq!(t.pts(1500, 33_333), 3000);
        // A source paused 10 s without moving its clock on: the capture time wins.
        assert_eq!(t.pts(4500, 10_033_334), 903_000);
        assert_eq!(t.pts(7500, 10_066_666), 906_000);
        // Never backwards, even if RTP time is.
        assert_eq!(t.pts(7000, 10_070_000), 906_001);
    }

    #[test]
    fn payload_skips_csrcs_extension_and_padding() {
        let mut p = vec![0xb1, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[0, 0, 0, 9]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]); // one-word extension
        p.extend_from_slice(&[0xaa, 0xbb]);
        p.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        assert_eq!(rtp_payload(&p), Some(&[0xaa, 0xbb][..]));
        assert_eq!(rtp_payload(&p[..14]), None);
        let mut lying = vec![0xa0, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa];
        lying.push(200);
        assert_eq!(rtp_payload(&lying), None, "padding longer than the packet");
    }
}
