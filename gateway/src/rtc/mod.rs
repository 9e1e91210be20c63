//! WebRTC: the port, answering offers, ICE sessions, the viewer's core and the workers that
//! drive viewers, and the WHIP publisher.
//!
//! # Layout
//! - `answer.rs`: a str0m `Rtc` made for an offer, and the SDP answer.
//! - `feed.rs`: one viewer's records from the session ring, with its own header fields.
//! - `viewer.rs`: one viewer's whole policy, sans-IO (`handle` and `poll_output`).
//! - `channel.rs`: the viewer's control channel: requests, replies, scopes, limits.
//! - `worker.rs`: fan-out workers: each drives its share of the viewers in one loop, with
//!   one timer queue and batched sends.
//! - `batch.rs`: a worker's outgoing datagrams, sent in as few system calls as possible.
//! - `udp.rs`: the shared RTC port: sockets (the workers' own too), host candidates,
//!   datagram demultiplexing and routing.
//! - `ice.rs`: a resource's ICE session (trickle, restart, entity-tags), its place on the
//!   port, and the HTTP layer's messages to it.
//! - `offer.rs`: offer and trickle-fragment reading; which offers a session can serve.
//! - `publisher.rs`: one WHIP publisher's whole policy, sans-IO (`handle` and `poll_output`),
//!   and the task that drives it; its packets go into the live session's ring.

pub mod answer;
pub mod batch;
pub mod channel;
pub mod feed;
pub mod ice;
pub mod layering;
pub mod offer;
pub mod publisher;
pub mod udp;
pub mod viewer;
pub mod worker;

use std::time::{Duration, Instant};

/// The clocks a core needs, as seen from one `Instant`: a core reads no clock itself, so it
/// converts the `now` it is handed to the ring's capture clock (µs on CLOCK_MONOTONIC) and to
/// Unix time (token expiry) from one reading its driver made of all three.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    ring_us: u64,
    unix_ms: u64,
}

impl Clock {
    /// Reads the three clocks (for drivers; tests make their own with [`Clock::at`]).
    pub fn read() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            at: Instant::now(),
            ring_us: rtp_ring::now_us(),
            unix_ms,
        }
    }

    /// A clock on which `at` is `ring_us` on the ring's clock and `unix_ms` in Unix time.
    pub fn at(at: Instant, ring_us: u64, unix_ms: u64) -> Self {
        Self {
            at,
            ring_us,
            unix_ms,
        }
    }

    fn offset(&self, t: Instant) -> i128 {
        match t.checked_duration_since(self.at) {
            Some(d) => d.as_micros() as i128,
            None => -(self.at.duration_since(t).as_micros() as i128),
        }
    }

    /// `t` on the ring's capture clock, µs.
    pub fn ring_us(&self, t: Instant) -> u64 {
        (self.ring_us as i128 + self.offset(t)).max(0) as u64
    }

    /// The `Instant` of a time on the ring's capture clock.
    pub fn instant_of_ring_us(&self, us: u64) -> Instant {
        match us.checked_sub(self.ring_us) {
            Some(d) => self.at + Duration::from_micros(d),
            None => self.at - Duration::from_micros(self.ring_us - us).min(self.since_boot()),
        }
    }

    /// `t` in Unix milliseconds.
    pub fn unix_ms(&self, t: Instant) -> u64 {
        (self.unix_ms as i128 + self.offset(t) / 1000).max(0) as u64
    }

    /// `t` in Unix seconds.
    pub fn unix_s(&self, t: Instant) -> u64 {
        self.unix_ms(t) / 1000
    }

    /// The `Instant` of a Unix time in seconds (now or later; earlier is `at`'s past, capped).
    pub fn instant_of_unix_s(&self, s: u64) -> Instant {
        let ms = s.saturating_mul(1000);
        match ms.checked_sub(self.unix_ms) {
            Some(d) => self.at + Duration::from_millis(d),
            None => self.at - Duration::from_millis(self.unix_ms - ms).min(self.since_boot()),
        }
    }

    /// How far back from `at` an `Instant` can go (it cannot precede the machine's boot).
    fn since_boot(&self) -> Duration {
        Duration::from_micros(self.ring_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_converts_instants_to_both_clocks_and_back() {
        let t0 = Instant::now();
        let c = Clock::at(t0, 5_000_000, 1_700_000_000_000);
        let t = t0 + Duration::from_millis(2500);
        assert_eq!(c.ring_us(t), 7_500_000);
        assert_eq!(c.unix_s(t), 1_700_000_002);
        assert_eq!(c.unix_ms(t), 1_700_000_002_500);
        assert_eq!(c.instant_of_ring_us(7_500_000), t);
        assert_eq!(
            c.instant_of_unix_s(1_700_000_010),
            t0 + Duration::from_secs(10)
        );
        // Earlier than the reading: backwards, never below the boot.
        assert_eq!(c.ring_us(t0 - Duration::from_secs(1)), 4_000_000);
        assert_eq!(c.instant_of_ring_us(3_000_000), t0 - Duration::from_secs(2));
    }
}
