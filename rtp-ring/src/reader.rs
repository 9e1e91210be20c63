//! A reader of a ring: its own cursor, whole records or an explicit overrun, and waiting.
//!
//! Owns the read side of the slot protocol, overrun accounting, keyframe resync, and blocking
//! and async waits on the eventfd. Readers never write records and never slow the writer.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::event::epoll;

use crate::layout::{MAX_PAYLOAD, MAX_TRACKS, SLOT_HEADER_SIZE};
use crate::protocol::{self, SlotRead};
use crate::record::{Flags, Record, RecordMeta};
use crate::shm::Mapping;

/// The reader fell a whole lap behind the writer: `lost` records were overwritten before it
/// read them. Its cursor now points at the oldest record still in the ring; call
/// [`Reader::resync_to_keyframe`] to skip to a point a decoder can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reader overrun: {lost} records were overwritten before they were read")]
pub struct Overrun {
    pub lost: u64,
}

/// Reads records in order, from its own cursor.
#[derive(Debug)]
pub struct Reader {
    mapping: Arc<Mapping>,
    eventfd: Option<Arc<OwnedFd>>,
    /// Index of the next record this reader returns.
    cursor: u64,
    /// Epoll instance for blocking waits, made on first use (edge-triggered on the eventfd).
    epoll: Option<OwnedFd>,
}

impl Reader {
    pub(crate) fn new(mapping: Arc<Mapping>, eventfd: Option<Arc<OwnedFd>>, cursor: u64) -> Self {
        Self {
            mapping,
            eventfd,
            cursor,
            epoll: None,
        }
    }

    /// Index of the next record this reader will return.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Records published but not yet read by this reader (may exceed the ring: an overrun).
    pub fn lag(&self) -> u64 {
        self.write_index().saturating_sub(self.cursor)
    }

    fn write_index(&self) -> u64 {
        self.mapping.header().write_index.load(Ordering::Acquire)
    }

    /// Copies the next record's packet into `packet` (replacing its contents) and returns its
    /// metadata; `Ok(None)` when the reader has caught up. Never returns a torn record.
    pub fn try_next_into(&mut self, packet: &mut Vec<u8>) -> Result<Option<RecordMeta>, Overrun> {
        self.try_next_of(packet, u16::MAX)
    }

    /// As [`Reader::try_next_into`], for the records of the tracks in `tracks` (bit `t` for
    /// track `t`; `u16::MAX`: every record, whatever its track byte says): the others are
    /// passed over with only their header read, their packets not copied (a viewer of one
    /// layer among several reads the ring this way).
    pub fn try_next_of(
        &mut self,
        packet: &mut Vec<u8>,
        tracks: u16,
    ) -> Result<Option<RecordMeta>, Overrun> {
        let slots = self.mapping.geometry().slot_count as u64;
        loop {
            let w = self.write_index();
            if self.cursor >= w {
                packet.clear();
                return Ok(None);
            }
            if w - self.cursor > slots {
                packet.clear();
                return Err(self.skip_to(w - slots));
            }
            let index = self.cursor;
            let slot = self.mapping.slot_header(index);
            let base = self.mapping.slot_ptr(index) as *const u8;
            packet.clear();
            packet.reserve(MAX_PAYLOAD);
            let read = protocol::read_slot(&slot.stamp, index, || {
                // SAFETY: `base` is a slot of SLOT_SIZE bytes inside the mapping. The writer may
                // be storing to it concurrently; we clamp the length we copy to MAX_PAYLOAD
                // (the buffer has that much reserved), and discard what we read unless the
                // stamp proves it unchanged. Whether to copy is decided on a track byte that
                // may be torn: a torn one fails the stamp check, so its decision is dropped
                // with the rest.
                unsafe {
                    let track = base.add(8).read_volatile();
                    let flags = base.add(9).read_volatile();
                    let capture_us = (base.add(16) as *const u64).read_volatile();
                    let wanted = tracks == u16::MAX || (track < 16 && tracks & (1 << track) != 0);
                    if wanted {
                        let len = ((base.add(10) as *const u16).read_volatile() as usize)
                            .min(MAX_PAYLOAD);
                        std::ptr::copy_nonoverlapping(
                            base.add(SLOT_HEADER_SIZE),
                            packet.as_mut_ptr(),
                            len,
                        );
                        packet.set_len(len);
                    }
                    (track, flags, capture_us, wanted)
                }
            });
            return match read {
                SlotRead::Whole((track, flags, capture_us, wanted)) => {
                    self.cursor += 1;
                    if !wanted {
                        continue;
                    }
                    Ok(Some(RecordMeta {
                        index,
                        track,
                        flags: Flags::from_bits(flags),
                        capture_us,
                    }))
                }
                SlotRead::Overwritten => {
                    packet.clear();
                    let w = self.write_index();
                    Err(self.skip_to(w.saturating_sub(slots)).max_one())
                }
                // Published index says complete but the stamp disagrees: only a writer
                // restarted over a slot it had not finished can do that. Treat it as not yet
                // there.
                SlotRead::NotYet => {
                    packet.clear();
                    Ok(None)
                }
            };
        }
    }

    /// Like [`Reader::try_next_into`], allocating the packet.
    pub fn try_next(&mut self) -> Result<Option<Record>, Overrun> {
        let mut packet = Vec::new();
        Ok(self
            .try_next_into(&mut packet)?
            .map(|meta| Record { meta, packet }))
    }

    /// Moves the cursor forward to `to` (a lap-behind reader's oldest readable record) and
    /// reports how many records that skipped.
    fn skip_to(&mut self, to: u64) -> Overrun {
        // One slot of slack: the slot at `to` is the next the writer overwrites.
        let to = to + 1;
        let lost = to.saturating_sub(self.cursor);
        self.cursor = self.cursor.max(to);
        Overrun { lost }
    }

    /// Moves the cursor to the newest keyframe start of `track` still in the ring, so the next
    /// record read is one a decoder can start from. Returns whether there was one; if not, the
    /// cursor moves to the newest record (wait for the next keyframe from there).
    pub fn resync_to_keyframe(&mut self, track: u8) -> bool {
        let w = self.write_index();
        let slots = self.mapping.geometry().slot_count as u64;
        let key = match (track as usize) < MAX_TRACKS {
            true => self.mapping.header().keyframe[track as usize].load(Ordering::Acquire),
            false => 0,
        };
        // Keep a slot of slack from the one the writer overwrites next.
        if key > 0 && w - (key - 1) < slots {
            self.cursor = key - 1;
            true
        } else {
            self.cursor = w;
            false
        }
    }

    /// Index of the newest keyframe start of `track` still in the ring, if any.
    pub fn newest_keyframe(&self, track: u8) -> Option<u64> {
        let key = self
            .mapping
            .header()
            .keyframe
            .get(track as usize)?
            .load(Ordering::Acquire);
        let slots = self.mapping.geometry().slot_count as u64;
        (key > 0 && self.write_index() - (key - 1) < slots).then(|| key - 1)
    }

    /// Blocks until a record may be available or `timeout` passes. Returns at once if records
    /// are waiting. Without an eventfd, sleeps at most 1 ms (polling).
    pub fn wait(&mut self, timeout: Duration) -> std::io::Result<()> {
        if self.cursor < self.write_index() {
            return Ok(());
        }
        let Some(eventfd) = self.eventfd.clone() else {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            return Ok(());
        };
        if self.epoll.is_none() {
            let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            // Edge-triggered: each writer signal wakes every reader's epoll once, although no
            // reader ever drains the counter (draining would steal other readers' wakeups).
            epoll::add(
                &ep,
                eventfd.as_fd(),
                epoll::EventData::new_u64(0),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )?;
            self.epoll = Some(ep);
        }
        let ep = self.epoll.as_ref().expect("created above");
        let _sleeping = Sleeper::enter(&self.mapping);
        if self.cursor < self.write_index() {
            return Ok(());
        }
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1);
        match epoll::wait(ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// An async view of this reader for tokio (see [`AsyncReader`]).
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> std::io::Result<AsyncReader> {
        AsyncReader::new(self)
    }
}

/// Counts a reader as sleeping for as long as it lives, so the writer knows to signal.
struct Sleeper<'a>(&'a Mapping);

impl<'a> Sleeper<'a> {
    fn enter(mapping: &'a Mapping) -> Self {
        // SeqCst pairs with the writer's fence before it loads `sleepers` (see Writer::wake).
        mapping.header().sleepers.fetch_add(1, Ordering::SeqCst);
        Sleeper(mapping)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.header().sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Overrun {
    /// An overwritten slot always means at least one lost record.
    fn max_one(self) -> Self {
        Overrun {
            lost: self.lost.max(1),
        }
    }
}

#[cfg(feature = "tokio")]
pub use self::async_reader::AsyncReader;

#[cfg(feature = "tokio")]
mod async_reader {
    use super::*;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// A [`Reader`] that awaits records inside a tokio runtime, woken through `AsyncFd` on its
    /// own duplicate of the ring's eventfd (one registration per reader).
    #[derive(Debug)]
    pub struct AsyncReader {
        reader: Reader,
        fd: Option<AsyncFd<OwnedFd>>,
    }

    impl AsyncReader {
        pub(super) fn new(reader: Reader) -> std::io::Result<Self> {
            let fd = match &reader.eventfd {
                Some(fd) => {
                    let dup = fd.try_clone()?;
                    // SAFETY: the AsyncFd owns `dup`, an open eventfd descriptor that nothing else
                    // closes or reuses while the AsyncFd lives; `as_raw_fd` always returns it.
                    let registered =
                        unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) };
                    Some(registered.map_err(std::io::Error::from)?)
                }
                None => None,
            };
            Ok(Self { reader, fd })
        }

        /// The underlying reader (for cursor moves such as keyframe resync).
        pub fn reader(&mut self) -> &mut Reader {
            &mut self.reader
        }

        /// Waits for the next record and copies its packet into `packet`.
        /// Cancel-safe: dropping the future loses no record.
        pub async fn next_into(
            &mut self,
            packet: &mut Vec<u8>,
        ) -> std::io::Result<Result<RecordMeta, Overrun>> {
            loop {
                match self.reader.try_next_into(packet) {
                    Ok(Some(meta)) => return Ok(Ok(meta)),
                    Err(overrun) => return Ok(Err(overrun)),
                    Ok(None) => {}
                }
                self.sleep().await?;
            }
        }

        /// Sleeps until the writer may have written past the cursor (at once if it has): on
        /// the eventfd, counted as a sleeper so the writer signals; without one, 1 ms.
        async fn sleep(&self) -> std::io::Result<()> {
            let Some(fd) = &self.fd else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                return Ok(());
            };
            let _sleeping = Sleeper::enter(&self.reader.mapping);
            if self.reader.cursor < self.reader.write_index() {
                return Ok(());
            }
            let mut guard = fd.readable().await?;
            // Readiness is an edge per writer signal; clear it, then look at the ring again.
            guard.clear_ready();
            Ok(())
        }

        /// Waits until records are written past the cursor, then moves the cursor past all
        /// of them without reading any; returns the new cursor (the ring's write index).
        /// For one waiter that wakes many readers kept elsewhere (each reads its own cursor
        /// with [`Reader::try_next_into`]), instead of one wakeup registration per reader.
        /// Cancel-safe.
        pub async fn written(&mut self) -> std::io::Result<u64> {
            loop {
                let w = self.reader.write_index();
                if self.reader.cursor < w {
                    self.reader.cursor = w;
                    return Ok(w);
                }
                self.sleep().await?;
            }
        }
    }
}
