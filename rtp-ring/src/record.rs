//! What a ring carries: one RTP packet with its track, flags and capture time.
//!
//! Owns the record types and the fixed RTP header view that `ring-dump` prints. It knows no
//! codec: whether a packet starts a keyframe is the writer's statement, carried in `Flags`.

/// Per-record flags, set by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u8);

impl Flags {
    /// The packet is the first of a frame a decoder can start from (IDR with SPS/PPS, VP8 key
    /// frame). Readers resync to these.
    pub const KEYFRAME: Flags = Flags(1);
    /// The packet is the last of its frame (the RTP marker for video).
    pub const END_OF_FRAME: Flags = Flags(2);

    /// No flag set.
    pub const fn empty() -> Self {
        Flags(0)
    }

    /// Flags from their byte, keeping only known bits.
    pub const fn from_bits(bits: u8) -> Self {
        Flags(bits & 3)
    }

    /// The flags' byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

/// A record to write, borrowing its packet.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Track index (`0..MAX_TRACKS`), the writer's numbering (e.g. 0 video, 1 audio).
    pub track: u8,
    pub flags: Flags,
    /// When the packet's media was captured or produced, µs on CLOCK_MONOTONIC ([`now_us`]).
    pub capture_us: u64,
    /// A whole RTP packet (header and payload), at most `MAX_PAYLOAD` bytes.
    pub packet: &'a [u8],
}

/// The metadata of a record read from a ring; its packet is in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Position of the record in the ring's history (0 for the first record ever written).
    pub index: u64,
    pub track: u8,
    pub flags: Flags,
    pub capture_us: u64,
}

/// A record read from a ring, owning its packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub meta: RecordMeta,
    pub packet: Vec<u8>,
}

/// Microseconds on CLOCK_MONOTONIC: the clock of `capture_us`, the same in every process.
pub fn now_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// The fixed part of an RTP header (RFC 3550 §5.1), as tools print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeaderView {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeaderView {
    /// Reads the fixed header, or `None` if the bytes are too short or not RTP version 2.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return None;
        }
        Some(Self {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            seq: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_combine_and_round_trip() {
        let f = Flags::KEYFRAME | Flags::END_OF_FRAME;
        assert!(f.contains(Flags::KEYFRAME) && f.contains(Flags::END_OF_FRAME));
        assert_eq!(Flags::from_bits(f.bits()), f);
        assert_eq!(Flags::from_bits(0xff), f, "unknown bits are dropped");
        assert!(!Flags::empty().contains(Flags::KEYFRAME));
    }

    #[test]
    fn parses_the_rtp_fixed_header() {
        let pkt = [
            0x80, 0xe0, 0x12, 0x34, 0, 0, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef, 0xaa,
        ];
        let h = RtpHeaderView::parse(&pkt).expect("rtp");
        assert_eq!(
            h,
            RtpHeaderView {
                marker: true,
                payload_type: 96,
                seq: 0x1234,
                timestamp: 256,
                ssrc: 0xdeadbeef
            }
        );
        assert_eq!(RtpHeaderView::parse(&pkt[..11]), None);
        assert_eq!(
            RtpHeaderView::parse(&[0u8; 12]),
            None,
            "version 0 is not RTP"
        );
    }
}
