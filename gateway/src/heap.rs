//! The live heap: bytes the gateway's Rust code has allocated and not yet freed.
//!
//! RSS says what the process holds, which includes what its allocator keeps free for later
//! (docs/soak.md); this says what is in use, so a leak shows as growth here while retention
//! does not. The `wisp` binary's global allocator reports each allocation and free to
//! [`allocated`] and [`freed`]; the library never installs one, so in tests (and any other
//! program linking it) [`live_bytes`] is `None`. C code's allocations (AWS-LC's DTLS and SRTP
//! state) go to libc's malloc and are not counted.
//!
//! The count is striped: each thread adds to one of [`STRIPES`] counters on its own cache
//! line, so the media path's allocation per packet costs one uncontended atomic add. A block
//! freed by another thread than the one that made it subtracts from that thread's stripe, so
//! a stripe may go negative; only the sum means anything.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

/// Counters; threads take them in turn (a stripe shared by two threads is still right).
const STRIPES: usize = 16;

#[repr(align(64))]
#[derive(Debug)]
struct Stripe(AtomicI64);

static COUNTS: [Stripe; STRIPES] = [const { Stripe(AtomicI64::new(0)) }; STRIPES];
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // A const initializer and no destructor: reading it never allocates, so the allocator may
    // call this at any point of a thread's life, its teardown included.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> &'static AtomicI64 {
    let mut i = STRIPE.get();
    if i == usize::MAX {
        i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
        STRIPE.set(i);
    }
    &COUNTS[i].0
}

/// The allocator made a block of `bytes`.
#[inline]
pub fn allocated(bytes: usize) {
    stripe().fetch_add(bytes as i64, Ordering::Relaxed);
}

/// The allocator freed a block of `bytes`.
#[inline]
pub fn freed(bytes: usize) {
    stripe().fetch_sub(bytes as i64, Ordering::Relaxed);
}

/// Says that the program's global allocator reports to this module (the `wisp` binary calls
/// it in `main`); until then [`live_bytes`] is `None`.
pub fn install() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// Bytes allocated and not freed, if the global allocator counts them.
pub fn live_bytes() -> Option<u64> {
    INSTALLED.load(Ordering::Relaxed).then(|| {
        let sum: i64 = COUNTS.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        sum.max(0) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_threads_whichever_frees() {
        // The test binary's allocator does not report here; drive the counters directly.
        let before: i64 = COUNTS.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        let made: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| allocated(1000)))
            .collect();
        for t in made {
            t.join().unwrap();
        }
        // Freed on other threads (other stripes) than the ones that allocated.
        let gone: Vec<_> = (0..8).map(|_| std::thread::spawn(|| freed(1000))).collect();
        for t in gone {
            t.join().unwrap();
        }
        allocated(42);
        let after: i64 = COUNTS.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        assert_eq!(after - before, 42);
        assert_eq!(live_bytes(), None, "nothing installed a counting allocator");
        install();
        assert!(live_bytes().is_some());
    }
}
