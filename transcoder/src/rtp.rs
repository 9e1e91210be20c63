//! Encoded frames → RTP packets, once per session (RFC 6184, RFC 7741, RFC 7587).
//!
//! Owns payloading (str0m's packetizers), the 12-byte RTP header, and per-track sequence
//! numbers, SSRC and timestamp offset. It does not know when packets are sent (`player.rs`).

use str0m::unversioned::{H264Packetizer, OpusPacketizer, Packetizer, Vp8Packetizer};

use crate::control::TrackInfo;

/// Largest RTP payload we produce: leaves room for SRTP, header extensions and TURN framing
/// under a 1500-byte MTU (str0m sends what it is given without checking).
pub const MAX_RTP_PAYLOAD: usize = 1200;

/// Ring track index of the video track.
pub const VIDEO_TRACK: u8 = 0;
/// Ring track index of the audio track.
pub const AUDIO_TRACK: u8 = 1;

/// One outgoing RTP stream.
#[derive(Debug)]
pub struct RtpTrack {
    pub info: TrackInfo,
    packetizer: Box<dyn Packetizer + Send>,
    seq: u16,
    /// Random offset added to media timestamps (RFC 3550 §5.1).
    ts_offset: u32,
}

/// One packet of a frame, with what the ring records about it.
#[derive(Debug)]
pub struct RtpPacket {
    pub bytes: Vec<u8>,
    pub marker: bool,
    /// First packet of a frame a decoder can start from.
    pub keyframe_start: bool,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom only fails on ancient kernels; a fixed value is then still a valid SSRC.
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u32::from_ne_bytes(b)
}

impl RtpTrack {
    /// H.264 at 90 kHz, packetization-mode 1, constrained baseline; `level_idc` as the encoder
    /// was configured.
    pub fn h264(level_idc: u8) -> Self {
        Self::h264_passthrough([0x42, 0xe0, level_idc])
    }

    /// H.264 passed through: `profile_level_id` as the source's SPS states it (its first three
    /// bytes after the NAL header).
    pub fn h264_passthrough(profile_level_id: [u8; 3]) -> Self {
        let [p, c, l] = profile_level_id;
        let fmtp = format!(
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={p:02x}{c:02x}{l:02x}"
        );
        Self::new(
            VIDEO_TRACK,
            "video",
            "H264",
            96,
            90_000,
            None,
            fmtp,
            Box::new(H264Packetizer::default()),
        )
    }

    pub fn vp8() -> Self {
        Self::new(
            VIDEO_TRACK,
            "video",
            "VP8",
            96,
            90_000,
            None,
            String::new(),
            Box::new(Vp8Packetizer::default()),
        )
    }

    /// Puts the track on ring track `index` (another rendition of the video: its own SSRC,
    /// sequence and clock come with the track).
    pub fn set_index(&mut self, index: u8) {
        self.info.index = index;
    }

    /// Runs on `other`'s RTP clock (the same timestamp for the same frame): renditions of one
    /// picture share one timeline.
    pub fn share_clock(&mut self, other: &RtpTrack) {
        self.ts_offset = other.ts_offset;
    }

    pub fn opus() -> Self {
        let fmtp = "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1".to_string();
        Self::new(
            AUDIO_TRACK,
            "audio",
            "opus",
            111,
            48_000,
            Some(2),
            fmtp,
            Box::new(OpusPacketizer),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        index: u8,
        kind: &'static str,
        codec: &'static str,
        payload_type: u8,
        clock_rate: u32,
        channels: Option<u8>,
        fmtp: String,
        packetizer: Box<dyn Packetizer + Send>,
    ) -> Self {
        let info = TrackInfo {
            index,
            kind: kind.into(),
            codec: codec.into(),
            payload_type,
            clock_rate,
            channels,
            ssrc: random_u32(),
            fmtp,
            layer: None,
        };
        Self {
            info,
            packetizer,
            seq: random_u32() as u16,
            ts_offset: random_u32(),
        }
    }

    /// Packetizes one encoded frame (for H.264, a whole Annex B access unit) with media
    /// timestamp `ts` (clock-rate units). The last packet carries the marker bit; the first of
    /// a key frame is flagged as a keyframe start.
    pub fn packetize(&mut self, frame: &[u8], ts: u64, keyframe: bool) -> Vec<RtpPacket> {
        let payloads = match self.packetizer.packetize(MAX_RTP_PAYLOAD, frame) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    codec = self.info.codec,
                    "dropping a frame the packetizer refused: {e:?}"
                );
                return Vec::new();
            }
        };
        let n = payloads.len();
        let ts = (ts as u32).wrapping_add(self.ts_offset);
        let is_video = self.info.kind == "video";
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                // Audio marks talkspurt starts, which continuous Opus never has.
                let marker = is_video && i + 1 == n;
                let mut bytes = Vec::with_capacity(12 + payload.len());
                bytes.push(0x80);
                bytes.push(self.info.payload_type | if marker { 0x80 } else { 0 });
                bytes.extend_from_slice(&self.seq.to_be_bytes());
                bytes.extend_from_slice(&ts.to_be_bytes());
                bytes.extend_from_slice(&self.info.ssrc.to_be_bytes());
                bytes.extend_from_slice(&payload);
                self.seq = self.seq.wrapping_add(1);
                RtpPacket {
                    bytes,
                    marker,
                    keyframe_start: keyframe && i == 0,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_ring::RtpHeaderView;

    #[test]
    fn h264_access_unit_becomes_marked_packets_under_the_size_limit() {
        let mut track = RtpTrack::h264(0x1f);
        // SPS, PPS and a 5000-byte IDR slice: STAP-A with SPS/PPS, then FU-A fragments.
        let mut au = vec![
            0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xaa, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
        ];
        au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        au.extend(std::iter::repeat_n(0x11u8, 5000));
        let packets = track.packetize(&au, 3000, true);
        assert!(packets.len() >= 6, "{} packets", packets.len());
        assert!(
            packets
                .iter()
                .all(|p| p.bytes.len() - 12 <= MAX_RTP_PAYLOAD)
        );
        assert!(packets[0].keyframe_start && !packets[1].keyframe_start);
        assert_eq!(
            packets[0].bytes[12] & 0x1f,
            24,
            "SPS/PPS go first as STAP-A"
        );
        let headers: Vec<_> = packets
            .iter()
            .map(|p| RtpHeaderView::parse(&p.bytes).expect("rtp"))
            .collect();
        assert!(
            headers.iter().rev().skip(1).all(|h| !h.marker) && headers.last().expect("some").marker
        );
        assert!(
            headers
                .windows(2)
                .all(|w| w[1].seq == w[0].seq.wrapping_add(1))
        );
        assert!(
            headers
                .iter()
                .all(|h| h.timestamp == headers[0].timestamp && h.payload_type == 96)
        );
        assert_eq!(
            track.info.fmtp,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
        );
    }

    #[test]
    fn opus_is_one_unmarked_packet_per_frame() {
        let mut track = RtpTrack::opus();
        let p = track.packetize(&[0xfc; 120], 960, false);
        assert_eq!(p.len(), 1);
        let h = RtpHeaderView::parse(&p[0].bytes).expect("rtp");
        assert!(!h.marker);
        assert_eq!(h.payload_type, 111);
        let q = track.packetize(&[0xfc; 120], 1920, false);
        let h2 = RtpHeaderView::parse(&q[0].bytes).expect("rtp");
        assert_eq!(h2.timestamp.wrapping_sub(h.timestamp), 960);
        assert_eq!(h2.ssrc, h.ssrc);
    }
}
