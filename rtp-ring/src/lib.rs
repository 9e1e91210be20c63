//! A ring of RTP packets in shared memory: one writer that never blocks, any number of readers in
//! any process, each with its own cursor.
//!
//! The transcoder writes a session's encoded RTP here once; the gateway's viewer tasks read it and
//! fan it out. This crate knows no codec, HTTP or WebRTC, and it is the only crate of the
//! workspace with `unsafe` (shared memory and descriptor passing).
//!
//! # Layout
//! - `layout.rs`: the byte format (header with magic, version, geometry; fixed-size slots) and
//!   header validation.
//! - `protocol.rs`: the per-slot publish protocol (a sequence stamp around the body), model-checked
//!   with loom.
//! - `shm.rs`: [`Ring`]: creating a sealed memfd or a file-backed ring, opening one by path or
//!   inherited descriptors, passing it to a child process.
//! - `writer.rs`: [`Writer`]: append, publish, wake.
//! - `reader.rs`: [`Reader`] / [`AsyncReader`]: whole records or an explicit [`Overrun`], keyframe
//!   resync, blocking and tokio waits on the eventfd.
//! - `record.rs`: [`RecordRef`], [`Record`], [`Flags`], the RTP header view and the clock.
//! - `bin/ring-dump.rs`: print a ring's records, as tcpdump prints a socket's packets.
//!
//! # Example
//! ```
//! use rtp_ring::{Flags, RecordRef, Ring};
//! let ring = Ring::create_memfd("example", 1 << 20).unwrap();
//! let mut writer = ring.writer();
//! let mut reader = ring.reader();
//! let packet = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa];
//! writer
//!     .write(RecordRef { track: 0, flags: Flags::KEYFRAME, capture_us: 0, packet: &packet })
//!     .unwrap();
//! let record = reader.try_next().unwrap().unwrap();
//! assert_eq!(record.packet, packet);
//! assert!(record.meta.flags.contains(Flags::KEYFRAME));
//! ```

#[cfg(not(rtp_ring_loom))]
mod layout;
mod protocol;
#[cfg(not(rtp_ring_loom))]
mod reader;
#[cfg(not(rtp_ring_loom))]
mod record;
#[cfg(not(rtp_ring_loom))]
mod shm;
#[cfg(not(rtp_ring_loom))]
mod writer;

#[cfg(not(rtp_ring_loom))]
pub use layout::{Geometry, HeaderError, MAX_PAYLOAD, MAX_TRACKS, SLOT_SIZE, validate_header};
#[cfg(all(not(rtp_ring_loom), feature = "tokio"))]
pub use reader::AsyncReader;
#[cfg(not(rtp_ring_loom))]
pub use reader::{Overrun, Reader};
#[cfg(not(rtp_ring_loom))]
pub use record::{Flags, Record, RecordMeta, RecordRef, RtpHeaderView, now_us};
#[cfg(not(rtp_ring_loom))]
pub use shm::{OpenError, Ring};
#[cfg(not(rtp_ring_loom))]
pub use writer::{WriteError, Writer};
