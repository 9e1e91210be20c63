//! Process-wide counters and gauges, rendered in the Prometheus text format (version 0.0.4)
//! for `GET /metrics`.
//!
//! Owns the numbers only: every other module bumps them with relaxed atomics (no locks on the
//! media path). Gauges that belong to sessions are passed in when rendering.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub viewers: AtomicUsize,
    pub transcoders: AtomicUsize,
    /// Egress processes running (recordings, ...).
    pub egresses: AtomicUsize,
    pub publishers: AtomicUsize,
    pub peers_created: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub keyframe_requests_sent: AtomicU64,
    /// Viewers moved to another video layer (simulcast, a VOD ladder).
    pub layer_switches: AtomicU64,
    pub ring_overruns: AtomicU64,
    pub transcoder_exits: AtomicU64,
    pub udp_in: AtomicU64,
    pub udp_out: AtomicU64,
    pub udp_garbage: AtomicU64,
    pub udp_unrouted: AtomicU64,
    pub udp_dropped: AtomicU64,
    pub udp_send_errors: AtomicU64,
    /// HTTP connections open now, and what became of them (see `connections.rs`).
    pub http_conns_open: AtomicUsize,
    pub http_conns_accepted: AtomicU64,
    pub http_conns_evicted: AtomicU64,
    pub http_conns_refused: AtomicU64,
    pub http_conns_timed_out: AtomicU64,
    pub http_conns_idle_closed: AtomicU64,
    /// Requests whose body did not arrive in time (408).
    pub http_body_timeouts: AtomicU64,
    /// Packet arrival → sent to a viewer (see `render`).
    pub forward_latency: LatencyHistogram,
    /// A live publisher's video frame in at the gateway → its last packet sent to a viewer.
    pub ingest_latency: IngestLatency,
    /// `(status code, count)`, few distinct codes, so a small vector.
    http_status: Mutex<Vec<(u16, u64)>>,
}

/// Upper bounds of the forwarding latency buckets, µs: 50 µs to 50 ms.
const FORWARD_BOUNDS_US: [u64; 12] = [
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 5_000, 10_000, 50_000,
];

/// Upper bounds of the ingest latency buckets, µs: 1 ms to 2 s, 5 ms apart where the goals
/// are (30 ms copying, 150 ms transcoding) so that quantiles read from them are close.
const INGEST_BOUNDS_US: [u64; 44] = [
    1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000, 35_000, 40_000,
    45_000, 50_000, 60_000, 70_000, 80_000, 90_000, 100_000, 105_000, 110_000, 115_000, 120_000,
    125_000, 130_000, 135_000, 140_000, 145_000, 150_000, 160_000, 170_000, 180_000, 190_000,
    200_000, 225_000, 250_000, 300_000, 350_000, 400_000, 500_000, 750_000, 1_000_000, 1_500_000,
    2_000_000,
];

/// A Prometheus histogram of latencies, with fixed buckets.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Upper bounds, µs, ascending.
    bounds: &'static [u64],
    /// Per bucket (not cumulative); the last one is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// The forwarding histogram's buckets.
impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new(&FORWARD_BOUNDS_US)
    }
}

/// [`LatencyHistogram`] with the ingest buckets.
#[derive(Debug)]
pub struct IngestLatency(pub LatencyHistogram);

impl Default for IngestLatency {
    fn default() -> Self {
        Self(LatencyHistogram::new(&INGEST_BOUNDS_US))
    }
}

impl LatencyHistogram {
    fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Adds a batch of samples (µs): counted locally first, so that a batch costs one atomic
    /// add per bucket it touches rather than one per sample.
    pub fn observe(&self, samples_us: impl IntoIterator<Item = u64>) {
        let mut counts = [0u64; INGEST_BOUNDS_US.len() + 1];
        let mut sum = 0;
        for us in samples_us {
            let i = self.bounds.partition_point(|&b| b < us);
            counts[i] += 1;
            sum += us;
        }
        for (bucket, n) in self.buckets.iter().zip(counts) {
            if n > 0 {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        if sum > 0 {
            self.sum_us.fetch_add(sum, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let le = *b as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

impl Metrics {
    pub fn count_status(&self, status: u16) {
        let mut v = self
            .http_status
            .lock()
            .expect("metrics lock is never poisoned");
        match v.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => {
                v.push((status, 1));
                v.sort_unstable();
            }
        }
    }

    /// The exposition text. `sessions` is the number of defined sessions, `kernel_drops` the
    /// datagrams the kernel dropped for the RTC sockets, `tasks` the runtime's live tasks.
    pub fn render(&self, sessions: usize, kernel_drops: u64, tasks: usize) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("wisp_sessions", "Sessions defined.", sessions as u64);
        gauge(
            "wisp_viewers",
            "WHEP viewers connected or connecting.",
            self.viewers.load(Ordering::Relaxed) as u64,
        );
        gauge(
            "wisp_publishers",
            "WHIP publishers connected or connecting.",
            self.publishers.load(Ordering::Relaxed) as u64,
        );
        gauge(
            "wisp_transcoders",
            "Transcoder processes running.",
            self.transcoders.load(Ordering::Relaxed) as u64,
        );
        gauge(
            "wisp_egresses",
            "Egress processes running (recordings).",
            self.egresses.load(Ordering::Relaxed) as u64,
        );
        gauge(
            "wisp_tasks",
            "Tasks alive in the gateway's runtime (a leak shows as growth with nothing running).",
            tasks as u64,
        );
        if let Some(bytes) = crate::heap::live_bytes() {
            gauge(
                "wisp_heap_bytes",
                "Bytes the gateway's Rust code has allocated and not freed: its live heap. \
                 The RSS above it is memory the allocators keep free for reuse, and C code's.",
                bytes,
            );
        }
        gauge(
            "wisp_http_connections",
            "HTTP connections open.",
            self.http_conns_open.load(Ordering::Relaxed) as u64,
        );
        let counters: [(&str, &str, u64); 21] = [
            (
                "wisp_peers_created_total",
                "WebRTC peers created.",
                get(&self.peers_created),
            ),
            (
                "wisp_packets_out_total",
                "RTP packets sent to viewers.",
                get(&self.packets_out),
            ),
            (
                "wisp_bytes_out_total",
                "UDP bytes sent.",
                get(&self.bytes_out),
            ),
            (
                "wisp_keyframe_requests_total",
                "Keyframe requests (PLI/FIR, joins) from viewers.",
                get(&self.keyframe_requests),
            ),
            (
                "wisp_keyframe_requests_sent_total",
                "Keyframe requests passed to sources after throttling.",
                get(&self.keyframe_requests_sent),
            ),
            (
                "wisp_layer_switches_total",
                "Viewers moved to another video layer (bandwidth, a pin, a window size).",
                get(&self.layer_switches),
            ),
            (
                "wisp_ring_overruns_total",
                "Viewers that fell a ring lap behind.",
                get(&self.ring_overruns),
            ),
            (
                "wisp_transcoder_exits_total",
                "Transcoders that exited without being asked.",
                get(&self.transcoder_exits),
            ),
            (
                "wisp_udp_datagrams_in_total",
                "UDP datagrams received.",
                get(&self.udp_in),
            ),
            (
                "wisp_udp_datagrams_out_total",
                "UDP datagrams sent.",
                get(&self.udp_out),
            ),
            (
                "wisp_udp_garbage_total",
                "Datagrams that were not STUN, DTLS, RTP or RTCP.",
                get(&self.udp_garbage),
            ),
            (
                "wisp_udp_unrouted_total",
                "Datagrams for no known peer.",
                get(&self.udp_unrouted),
            ),
            (
                "wisp_udp_dropped_total",
                "Datagrams dropped because a peer's queue was full.",
                get(&self.udp_dropped),
            ),
            (
                "wisp_udp_kernel_drops_total",
                "Datagrams for the RTC port the kernel dropped: its receive buffer was full \
                 (see udp_recv_buffer).",
                kernel_drops,
            ),
            (
                "wisp_udp_send_errors_total",
                "UDP sends that failed.",
                get(&self.udp_send_errors),
            ),
            (
                "wisp_http_connections_accepted_total",
                "HTTP connections accepted.",
                get(&self.http_conns_accepted),
            ),
            (
                "wisp_http_connections_evicted_total",
                "HTTP connections closed to make room under the connection cap (the longest \
                 idle first).",
                get(&self.http_conns_evicted),
            ),
            (
                "wisp_http_connections_refused_total",
                "HTTP connections refused with 503: the cap was reached and none could be evicted.",
                get(&self.http_conns_refused),
            ),
            (
                "wisp_http_connections_timed_out_total",
                "HTTP connections closed for sending no complete request headers, or no traffic, \
                 within their timeout.",
                get(&self.http_conns_timed_out),
            ),
            (
                "wisp_http_connections_idle_closed_total",
                "Kept-alive HTTP connections closed after their idle time between requests.",
                get(&self.http_conns_idle_closed),
            ),
            (
                "wisp_http_body_timeouts_total",
                "Requests answered 408 because their body did not arrive within the body timeout.",
                get(&self.http_body_timeouts),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        self.forward_latency.render(
            &mut out,
            "wisp_forward_latency_seconds",
            "From a packet's arrival (read from a WHIP publisher's datagram, or written to the \
             ring by a VOD or pulled session's transcoder) to its sending to a viewer; backlogs \
             sent to viewers catching up are not counted (RTMP and SRT publishes count in \
             wisp_ingest_latency_seconds).",
        );
        self.ingest_latency.0.render(
            &mut out,
            "wisp_ingest_latency_seconds",
            "From a live publisher's video frame in at the gateway (the read of its last byte \
             from a WHIP, RTMP or SRT publisher) to the sending of its last RTP packet to a \
             viewer: transcoding or copying included; frames sent to viewers catching up are \
             not counted.",
        );
        let _ = writeln!(
            out,
            "# HELP wisp_http_responses_total HTTP responses by status.\n\
             # TYPE wisp_http_responses_total counter"
        );
        for (status, n) in self
            .http_status
            .lock()
            .expect("metrics lock is never poisoned")
            .iter()
        {
            let _ = writeln!(out, "wisp_http_responses_total{{code=\"{status}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.viewers.store(3, Ordering::Relaxed);
        m.count_status(404);
        m.count_status(201);
        m.count_status(404);
        let text = m.render(2, 0, 0);
        assert!(text.contains("\nwisp_viewers 3\n"), "{text}");
        assert!(text.contains("wisp_sessions 2\n"));
        assert!(text.contains("wisp_http_responses_total{code=\"404\"} 2\n"));
        assert!(text.contains("# TYPE wisp_packets_out_total counter\n"));
        m.forward_latency.observe([40, 120, 120, 900, 80_000]);
        let text = m.render(2, 0, 0);
        assert!(
            text.contains("wisp_forward_latency_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("wisp_forward_latency_seconds_bucket{le=\"0.0002\"} 3\n"));
        assert!(text.contains("wisp_forward_latency_seconds_bucket{le=\"0.001\"} 4\n"));
        assert!(text.contains("wisp_forward_latency_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("wisp_forward_latency_seconds_count 5\n"));
        assert!(text.contains("wisp_forward_latency_seconds_sum 0.08118\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(!name.is_empty() && value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
