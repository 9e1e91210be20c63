//! The publish protocol of one slot: a sequence stamp around the body, as in a seqlock.
//!
//! Owns only the ordering of stamp and body accesses; the caller supplies the body copy. Kept
//! apart so that a loom model (`loom_model` at the bottom of this file, run with
//! `RUSTFLAGS="--cfg rtp_ring_loom"`) checks exactly the code the ring runs.
//!
//! Writer of record `i`: stamp := 2i+1 (writing), release fence, body, stamp := 2i+2 (release).
//! Reader of record `i`: s1 := stamp (acquire); body; acquire fence; s2 := stamp. The copy is
//! whole iff s1 == s2 == 2i+2. A writer that dies after the first store leaves 2i+1 behind, so
//! that record is never returned; the records before it are untouched.

#[cfg(rtp_ring_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(rtp_ring_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

/// The stamp a slot carries while record `index` is being written.
pub(crate) const fn writing(index: u64) -> u64 {
    index.wrapping_mul(2).wrapping_add(1)
}

/// The stamp a slot carries once record `index` is complete.
pub(crate) const fn complete(index: u64) -> u64 {
    index.wrapping_mul(2).wrapping_add(2)
}

/// Publishes record `index` into the slot guarded by `stamp`; `body` writes the slot's bytes.
pub(crate) fn write_slot(stamp: &AtomicU64, index: u64, body: impl FnOnce()) {
    stamp.store(writing(index), Ordering::Relaxed);
    // Orders the "writing" stamp before any body byte: a reader that sees a new body byte also
    // sees at least the writing stamp on its second load.
    fence(Ordering::Release);
    body();
    stamp.store(complete(index), Ordering::Release);
}

/// What a reader found in a slot it expected to hold record `index`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SlotRead<T> {
    /// The body copy is whole.
    Whole(T),
    /// The slot holds an older record or one still being written: not published yet (or the
    /// writer died while writing it).
    NotYet,
    /// The slot already holds a newer record, or was rewritten during the copy: the reader fell
    /// a lap behind.
    Overwritten,
}

/// Reads record `index` from the slot guarded by `stamp`; `body` copies the slot's bytes out.
/// The copy is discarded (never returned) unless it is whole.
pub(crate) fn read_slot<T>(stamp: &AtomicU64, index: u64, body: impl FnOnce() -> T) -> SlotRead<T> {
    let want = complete(index);
    let s1 = stamp.load(Ordering::Acquire);
    if s1 != want {
        return if s1 > want {
            SlotRead::Overwritten
        } else {
            SlotRead::NotYet
        };
    }
    let value = body();
    // Orders the body loads before the second stamp load: if any body byte came from a later
    // writer, that writer's "writing" stamp is visible here.
    fence(Ordering::Acquire);
    let s2 = stamp.load(Ordering::Relaxed);
    if s2 == want {
        SlotRead::Whole(value)
    } else {
        SlotRead::Overwritten
    }
}

#[cfg(all(test, rtp_ring_loom))]
mod loom_model {
    //! Run with `RUSTFLAGS="--cfg rtp_ring_loom" cargo test -p rtp-ring --release --lib loom_model`.
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A one-slot ring whose body is two words that must always agree: any mix of two writes
    /// is a torn read.
    struct Slot {
        stamp: AtomicU64,
        a: AtomicU64,
        b: AtomicU64,
    }

    #[test]
    fn a_reader_never_accepts_a_torn_body() {
        loom::model(|| {
            let slot = Arc::new(Slot {
                stamp: AtomicU64::new(0),
                a: AtomicU64::new(0),
                b: AtomicU64::new(0),
            });
            let writer = {
                let slot = slot.clone();
                thread::spawn(move || {
                    for index in 0..2u64 {
                        write_slot(&slot.stamp, index, || {
                            slot.a.store(index + 100, Ordering::Relaxed);
                            slot.b.store(index + 100, Ordering::Relaxed);
                        });
                    }
                })
            };
            for index in 0..2u64 {
                let got = read_slot(&slot.stamp, index, || {
                    (
                        slot.a.load(Ordering::Relaxed),
                        slot.b.load(Ordering::Relaxed),
                    )
                });
                if let SlotRead::Whole((a, b)) = got {
                    assert_eq!((a, b), (index + 100, index + 100), "torn or wrong record");
                }
            }
            writer.join().expect("writer thread");
        });
    }
}

#[cfg(all(test, not(rtp_ring_loom)))]
mod tests {
    use super::*;

    #[test]
    fn stamps_tell_the_reader_where_it_stands() {
        let stamp = AtomicU64::new(0);
        assert_eq!(read_slot(&stamp, 0, || ()), SlotRead::NotYet);
        write_slot(&stamp, 0, || ());
        assert_eq!(read_slot(&stamp, 0, || 7), SlotRead::Whole(7));
        // Record 5 reuses the slot (a ring of 5 slots): a reader still at 0 is a lap behind.
        write_slot(&stamp, 5, || ());
        assert_eq!(read_slot(&stamp, 0, || ()), SlotRead::Overwritten);
        // A writer that died after starting record 10 leaves the slot unreadable for 10.
        stamp.store(writing(10), Ordering::Relaxed);
        assert_eq!(read_slot(&stamp, 10, || ()), SlotRead::NotYet);
    }
}
