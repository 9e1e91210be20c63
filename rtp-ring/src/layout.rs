//! The bytes of a ring: a fixed header followed by equal-sized slots.
//!
//! This module owns the on-memory format and the checks a reader makes before trusting a mapping.
//! It does not map memory or move records (see `shm.rs`, `writer.rs`, `reader.rs`).
//!
//! ```text
//! offset 0     Header (256 bytes)
//!   0..8       magic "WISPRING"
//!   8..12      version (u32, native endian)
//!   12..16     header_size
//!   16..20     slot_size
//!   20..24     slot_count
//!   24..28     max_payload
//!   28..32     max_tracks
//!   32..36     writer_pid      (set by the writer; 0 = none yet)
//!   36..40     writer_eventfd  (the writer's fd number of its wakeup eventfd; -1 = none)
//!   64..72     write_index     (records published so far; own cache line)
//!   128..132   sleepers        (readers blocked in a wait; own cache line)
//!   192..256   keyframe[8]     (per track: index + 1 of the newest keyframe start; 0 = none)
//! offset 256   slot[0], slot[1], ... each `slot_size` bytes
//!   0..8       stamp: 0 empty, 2i+1 writing record i, 2i+2 record i complete
//!   8          track
//!   9          flags
//!   10..12     payload length
//!   16..24     capture time (µs, CLOCK_MONOTONIC)
//!   24..       RTP packet
//! ```
//! Integers are native-endian: a ring is shared between processes on one host, never a network.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

/// First eight bytes of every ring.
pub const MAGIC: [u8; 8] = *b"WISPRING";
/// Format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Bytes before the first slot.
pub const HEADER_SIZE: usize = 256;
/// Bytes of one slot: room for a 1500-byte packet after the 24-byte slot header, cache aligned.
pub const SLOT_SIZE: usize = 1536;
/// Bytes of the per-slot header before the packet.
pub const SLOT_HEADER_SIZE: usize = 24;
/// Largest RTP packet a record can carry (an Ethernet MTU).
pub const MAX_PAYLOAD: usize = 1500;
/// Tracks a ring can index keyframes for; track indexes are `0..MAX_TRACKS`.
pub const MAX_TRACKS: usize = 8;
/// Smallest ring that makes sense: a handful of full video frames.
pub const MIN_SLOTS: usize = 16;

const _: () = assert!(SLOT_HEADER_SIZE + MAX_PAYLOAD <= SLOT_SIZE);
const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<SlotHeader>() == SLOT_HEADER_SIZE);

/// The shared header. Fields written once at creation are plain; fields that change while
/// readers look are atomics.
#[repr(C)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub slot_size: u32,
    pub slot_count: u32,
    pub max_payload: u32,
    pub max_tracks: u32,
    /// Which process writes now, so a reader in another process can fetch its eventfd.
    pub writer_pid: AtomicU32,
    /// The writer's descriptor number for the wakeup eventfd (meaningful only in `writer_pid`).
    pub writer_eventfd: AtomicI32,
    _pad0: [u8; 24],
    /// Records published so far; the next record gets this index. Alone on its cache line
    /// because every reader polls it.
    pub write_index: AtomicU64,
    _pad1: [u8; 56],
    /// Readers about to block; the writer signals the eventfd only when this is non-zero, so a
    /// busy ring costs no syscall per record.
    pub sleepers: AtomicU32,
    _pad2: [u8; 60],
    /// Per track, index + 1 of the newest record flagged as a keyframe start (0 = none yet).
    pub keyframe: [AtomicU64; MAX_TRACKS],
}

/// The header of each slot, followed by the packet bytes.
#[repr(C)]
pub(crate) struct SlotHeader {
    /// Publication stamp, see `protocol.rs`.
    pub stamp: AtomicU64,
    pub track: u8,
    pub flags: u8,
    pub len: u16,
    _pad: u32,
    pub capture_us: u64,
}

/// The shape of a ring, as its header states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of slots: the most records the ring holds at once.
    pub slot_count: usize,
    /// Bytes per slot.
    pub slot_size: usize,
    /// Largest packet a record may carry.
    pub max_payload: usize,
}

impl Geometry {
    /// The geometry of a ring of `bytes` total size, or an error if it is too small.
    pub fn for_size(bytes: u64) -> Result<Self, HeaderError> {
        let slots = (bytes as usize).saturating_sub(HEADER_SIZE) / SLOT_SIZE;
        if slots < MIN_SLOTS || slots > u32::MAX as usize {
            return Err(HeaderError::BadGeometry(format!(
                "a ring of {bytes} bytes holds {slots} slots of {SLOT_SIZE} bytes; \
                 need at least {MIN_SLOTS} (≥ {} bytes)",
                HEADER_SIZE + MIN_SLOTS * SLOT_SIZE
            )));
        }
        Ok(Self {
            slot_count: slots,
            slot_size: SLOT_SIZE,
            max_payload: MAX_PAYLOAD,
        })
    }

    /// Bytes the header and all slots occupy.
    pub fn total_bytes(&self) -> usize {
        HEADER_SIZE + self.slot_count * self.slot_size
    }
}

/// Why a mapping is not a ring this build can use. The ring's creator is at fault (or the path
/// names something else); a reader refuses rather than guess.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a Wisp RTP ring: {len} bytes is smaller than the {HEADER_SIZE}-byte header")]
    TooShort { len: usize },
    #[error("not a Wisp RTP ring: magic is {found:02x?}, expected \"WISPRING\"")]
    BadMagic { found: [u8; 8] },
    #[error("ring format version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("ring geometry not understood: {0}")]
    BadGeometry(String),
}

/// Writes a fresh header for `geometry` into `bytes` (which must be zeroed and large enough).
pub(crate) fn init_header(header: &mut Header, geometry: Geometry) {
    header.magic = MAGIC;
    header.version = VERSION;
    header.header_size = HEADER_SIZE as u32;
    header.slot_size = geometry.slot_size as u32;
    header.slot_count = geometry.slot_count as u32;
    header.max_payload = geometry.max_payload as u32;
    header.max_tracks = MAX_TRACKS as u32;
    header.writer_eventfd = AtomicI32::new(-1);
}

/// Checks the raw header bytes of a mapping of `len` bytes and returns its geometry.
///
/// Reads plain bytes (not the `Header` struct) so that garbage never becomes a reference.
pub fn validate_header(bytes: &[u8]) -> Result<Geometry, HeaderError> {
    let len = bytes.len();
    if len < HEADER_SIZE {
        return Err(HeaderError::TooShort { len });
    }
    let u32_at = |off: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[off..off + 4]);
        u32::from_ne_bytes(b)
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[..8]);
    if magic != MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    let version = u32_at(8);
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    let (header_size, slot_size, slot_count, max_payload, max_tracks) =
        (u32_at(12), u32_at(16), u32_at(20), u32_at(24), u32_at(28));
    let bad = |what: String| Err(HeaderError::BadGeometry(what));
    if header_size as usize != HEADER_SIZE {
        return bad(format!("header size {header_size}, expected {HEADER_SIZE}"));
    }
    if slot_size as usize != SLOT_SIZE || max_payload as usize != MAX_PAYLOAD {
        return bad(format!(
            "slots of {slot_size} bytes carrying ≤ {max_payload}, expected {SLOT_SIZE} and {MAX_PAYLOAD}"
        ));
    }
    if max_tracks as usize != MAX_TRACKS {
        return bad(format!("{max_tracks} tracks, expected {MAX_TRACKS}"));
    }
    if (slot_count as usize) < MIN_SLOTS {
        return bad(format!("{slot_count} slots, need at least {MIN_SLOTS}"));
    }
    let geometry = Geometry {
        slot_count: slot_count as usize,
        slot_size: slot_size as usize,
        max_payload: max_payload as usize,
    };
    if geometry.total_bytes() > len {
        return bad(format!(
            "header promises {} bytes but the mapping has {len}",
            geometry.total_bytes()
        ));
    }
    Ok(geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_header(slots: u32) -> Vec<u8> {
        let geometry = Geometry::for_size((HEADER_SIZE + slots as usize * SLOT_SIZE) as u64)
            .expect("large enough");
        let mut bytes = vec![0u8; geometry.total_bytes()];
        bytes[..8].copy_from_slice(&MAGIC);
        for (off, v) in [
            (8, VERSION),
            (12, HEADER_SIZE as u32),
            (16, SLOT_SIZE as u32),
            (20, slots),
            (24, MAX_PAYLOAD as u32),
            (28, MAX_TRACKS as u32),
        ] {
            bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        }
        bytes
    }

    #[test]
    fn accepts_its_own_format() {
        let g = validate_header(&good_header(32)).expect("valid");
        assert_eq!(g.slot_count, 32);
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        assert_eq!(
            validate_header(&[0u8; 10]),
            Err(HeaderError::TooShort { len: 10 })
        );
        let mut b = good_header(32);
        b[0] = b'X';
        assert!(matches!(
            validate_header(&b),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut b = good_header(32);
        b[8..12].copy_from_slice(&7u32.to_ne_bytes());
        let err = validate_header(&b).expect_err("version 7");
        assert_eq!(err, HeaderError::UnsupportedVersion { found: 7 });
        assert!(err.to_string().contains("version 7"));
        let mut b = good_header(32);
        b[16..20].copy_from_slice(&1024u32.to_ne_bytes());
        assert!(matches!(
            validate_header(&b),
            Err(HeaderError::BadGeometry(_))
        ));
        let b = good_header(32);
        let err = validate_header(&b[..b.len() - 1]).expect_err("truncated");
        assert!(err.to_string().contains("mapping has"), "{err}");
    }

    #[test]
    fn garbage_headers_are_refused_without_panicking() {
        // Mutate a good header at random (a fixed xorshift, so failures reproduce): whatever
        // validation accepts must fit inside the bytes it was given.
        let good = good_header(64);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % 40) as usize;
                b[at] = next() as u8;
            }
            let len = (next() as usize) % (b.len() + 1);
            if let Ok(g) = validate_header(&b[..len]) {
                assert!(g.total_bytes() <= len && g.slot_count >= MIN_SLOTS);
            }
        }
    }

    #[test]
    fn size_too_small_for_a_ring() {
        assert!(Geometry::for_size(4096).is_err());
        let g = Geometry::for_size(64 << 20).expect("64 MiB");
        assert_eq!(g.slot_count, ((64 << 20) - HEADER_SIZE) / SLOT_SIZE);
    }
}
