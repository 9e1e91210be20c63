//! The one writer of a ring: copies a record into the next slot, publishes it, wakes sleepers.
//!
//! Owns the write side of the slot protocol and the keyframe index. It never blocks and never
//! waits for readers: a slow reader is lapped and told so by its own cursor (`reader.rs`).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::layout::{MAX_PAYLOAD, MAX_TRACKS, SLOT_HEADER_SIZE};
use crate::protocol;
use crate::record::{Flags, RecordRef};
use crate::shm::Mapping;

/// Why a record was refused. The caller is at fault; nothing was written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("RTP packet of {len} bytes is larger than a ring record ({MAX_PAYLOAD} bytes)")]
    TooLarge { len: usize },
    #[error("track {track} is out of range (a ring has tracks 0..{MAX_TRACKS})")]
    BadTrack { track: u8 },
}

/// Writes records into a ring. There must be only one per ring at a time.
#[derive(Debug)]
pub struct Writer {
    mapping: Arc<Mapping>,
    eventfd: Option<Arc<OwnedFd>>,
    /// Index of the next record; mirrors the header's `write_index`, which only we change.
    next: u64,
}

impl Writer {
    pub(crate) fn new(mapping: Arc<Mapping>, eventfd: Option<Arc<OwnedFd>>) -> Self {
        let header = mapping.header();
        let next = header.write_index.load(Ordering::Acquire);
        header.writer_eventfd.store(
            eventfd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            Ordering::Release,
        );
        header
            .writer_pid
            .store(std::process::id(), Ordering::Release);
        Self {
            mapping,
            eventfd,
            next,
        }
    }

    /// Appends one record and wakes any waiting reader. Returns the record's index.
    pub fn write(&mut self, record: RecordRef<'_>) -> Result<u64, WriteError> {
        let index = self.append(record)?;
        self.wake();
        Ok(index)
    }

    /// Appends one record without waking readers: for a burst (say, all packets of a frame)
    /// followed by one [`Writer::wake`].
    pub fn append(&mut self, record: RecordRef<'_>) -> Result<u64, WriteError> {
        let len = record.packet.len();
        if len > MAX_PAYLOAD {
            return Err(WriteError::TooLarge { len });
        }
        if record.track as usize >= MAX_TRACKS {
            return Err(WriteError::BadTrack {
                track: record.track,
            });
        }
        let index = self.next;
        let slot = self.mapping.slot_header(index);
        let base = self.mapping.slot_ptr(index);
        protocol::write_slot(&slot.stamp, index, || {
            // SAFETY: `base` points at a slot of SLOT_SIZE bytes that only this writer stores to;
            // the fields after the stamp and `len` packet bytes fit (len ≤ MAX_PAYLOAD checked
            // above). Readers that race with these stores discard what they copied (protocol).
            unsafe {
                base.add(8).write(record.track);
                base.add(9).write(record.flags.bits());
                (base.add(10) as *mut u16).write_unaligned(len as u16);
                (base.add(16) as *mut u64).write_unaligned(record.capture_us);
                std::ptr::copy_nonoverlapping(
                    record.packet.as_ptr(),
                    base.add(SLOT_HEADER_SIZE),
                    len,
                );
            }
        });
        let header = self.mapping.header();
        if record.flags.contains(Flags::KEYFRAME) {
            header.keyframe[record.track as usize].store(index + 1, Ordering::Release);
        }
        self.next = index + 1;
        header.write_index.store(self.next, Ordering::Release);
        Ok(index)
    }

    /// Wakes readers blocked in a wait, if any. Costs one load when nobody sleeps.
    pub fn wake(&self) {
        let header = self.mapping.header();
        // Pairs with the reader's SeqCst increment of `sleepers` followed by its re-check of
        // `write_index`: either it sees our record or we see it sleeping (Dekker).
        std::sync::atomic::fence(Ordering::SeqCst);
        if header.sleepers.load(Ordering::Relaxed) > 0 {
            if let Some(fd) = &self.eventfd {
                // The counter only ever grows (readers never read it; they wait edge-triggered),
                // so this cannot block for the 2^64 writes a lifetime would need.
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            }
        }
    }

    /// Index the next record will get.
    pub fn next_index(&self) -> u64 {
        self.next
    }
}
