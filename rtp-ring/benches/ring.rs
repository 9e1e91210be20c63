//! `cargo bench -p rtp-ring`: records/s and wakeup latency of a ring shared across processes.
//!
//! Readers are this binary started again as child processes, each inheriting the ring's memfd
//! and eventfd (as `wisp-transcoder` and the gateway do). A child reports progress through an
//! "ack" ring of its own: one record whenever it catches up or every 1024 records, carrying how
//! many it has read. Records are 1200 bytes of RTP-like payload.
//!
//! Figures:
//! - throughput (criterion): one writer → 1 and → 4 reader processes, every record read by every
//!   reader; the writer never lets itself get more than half a ring ahead, so nothing is lost.
//! - wakeup latency (printed before criterion runs): the writer stamps CLOCK_MONOTONIC into a
//!   record while the reader sleeps in `Reader::wait`; the reader subtracts it from its clock on
//!   waking. 2000 pings, 1 ms apart, p50/p99 over all readers.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use rtp_ring::{Flags, RecordRef, Ring};

const CHILD_ENV: &str = "RTP_RING_BENCH_CHILD";
const RING_BYTES: u64 = 64 << 20;
const RECORD: usize = 1200;

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A reader process and the ring it acknowledges through.
struct ReaderProc {
    child: Child,
    ack: rtp_ring::Reader,
    /// Latest value the child reported.
    last: u64,
}

impl ReaderProc {
    fn spawn(ring: &Ring, mode: &str) -> Self {
        let ack_ring = Ring::create_memfd("ack", 256 + 1024 * 1536).expect("ack ring");
        let mut cmd = Command::new(std::env::current_exe().expect("bench exe"));
        let (rfd, refd) = ring.pass_to_child(&mut cmd);
        let (afd, aefd) = ack_ring.pass_to_child(&mut cmd);
        cmd.env(
            CHILD_ENV,
            format!(
                "{mode},{rfd},{},{afd},{}",
                refd.expect("eventfd"),
                aefd.expect("eventfd")
            ),
        )
        .stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn reader");
        Self {
            child,
            ack: ack_ring.reader(),
            last: 0,
        }
    }

    /// Every value reported since the last call.
    fn reports(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(Some(r)) = self.ack.try_next() {
            out.push(u64::from_ne_bytes(
                r.packet[..8].try_into().expect("8 bytes"),
            ));
        }
        if let Some(v) = out.last() {
            self.last = *v;
        }
        out
    }
}

impl Drop for ReaderProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn child_main(spec: &str) {
    let f: Vec<&str> = spec.split(',').collect();
    let n = |i: usize| f[i].parse::<i32>().expect("fd");
    let ring = Ring::from_inherited_fds(n(1), Some(n(2))).expect("ring");
    let ack = Ring::from_inherited_fds(n(3), Some(n(4))).expect("ack ring");
    let mut acker = ack.writer();
    let mut report = |v: u64| {
        acker
            .write(RecordRef {
                track: 0,
                flags: Flags::empty(),
                capture_us: 0,
                packet: &v.to_ne_bytes(),
            })
            .expect("ack");
    };
    // From the oldest record: the parent may have written before this process got here.
    let mut reader = ring.reader_from_oldest();
    let mut packet = Vec::with_capacity(1500);
    let mut count = 0u64;
    let mut reported = 0u64;
    loop {
        match reader.try_next_into(&mut packet) {
            Ok(Some(_)) => {
                count += 1;
                if f[0] == "latency" {
                    let sent = u64::from_ne_bytes(packet[12..20].try_into().expect("stamp"));
                    report(now_ns().saturating_sub(sent));
                } else if count - reported >= 1024 {
                    report(count);
                    reported = count;
                }
            }
            Ok(None) => {
                if f[0] == "throughput" && count != reported {
                    report(count);
                    reported = count;
                }
                reader.wait(Duration::from_millis(100)).expect("wait");
            }
            Err(o) => panic!("bench reader overrun: {o}"),
        }
    }
}

fn packet(stamp: u64) -> [u8; RECORD] {
    let mut p = [0x5au8; RECORD];
    p[0] = 0x80;
    p[1] = 96;
    p[12..20].copy_from_slice(&stamp.to_ne_bytes());
    p
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    // `batch`: records appended per wake. 1 is the worst case; 16 is how the transcoder writes
    // (all packets of a video frame, then one wake).
    for (readers, batch) in [(1usize, 1u64), (4, 1), (1, 16), (4, 16)] {
        let ring = Ring::create_memfd("bench", RING_BYTES).expect("ring");
        let half = ring.geometry().slot_count as u64 / 2;
        let mut procs: Vec<_> = (0..readers)
            .map(|_| ReaderProc::spawn(&ring, "throughput"))
            .collect();
        let mut writer = ring.writer();
        let p = packet(0);
        let mut written = 0u64;
        let name =
            format!("1200B records, wake every {batch}, 1 writer -> {readers} reader processes");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let target = written + iters;
                let mut slowest = procs.iter().map(|p| p.last).min().unwrap_or(0);
                while written < target {
                    if written - slowest >= half {
                        procs.iter_mut().for_each(|p| drop(p.reports()));
                        slowest = procs.iter().map(|p| p.last).min().unwrap_or(0);
                        std::hint::spin_loop();
                        continue;
                    }
                    writer
                        .append(RecordRef {
                            track: 0,
                            flags: Flags::empty(),
                            capture_us: 0,
                            packet: &p,
                        })
                        .expect("write");
                    written += 1;
                    if written % batch == 0 || written == target {
                        writer.wake();
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while procs.iter().any(|p| p.last < target) {
                    procs.iter_mut().for_each(|p| drop(p.reports()));
                    assert!(
                        Instant::now() < deadline,
                        "a reader process stopped reading"
                    );
                    std::hint::spin_loop();
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn latency_report(readers: usize) {
    let ring = Ring::create_memfd("bench", RING_BYTES).expect("ring");
    let mut procs: Vec<_> = (0..readers)
        .map(|_| ReaderProc::spawn(&ring, "latency"))
        .collect();
    let mut writer = ring.writer();
    // Let the children reach their first wait.
    std::thread::sleep(Duration::from_millis(200));
    let mut samples = Vec::new();
    for _ in 0..2000 {
        writer
            .write(RecordRef {
                track: 0,
                flags: Flags::empty(),
                capture_us: 0,
                packet: &packet(now_ns()),
            })
            .expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = 0;
        while got < readers {
            for p in procs.iter_mut() {
                let r = p.reports();
                got += r.len();
                samples.extend(r);
            }
            assert!(Instant::now() < deadline, "reader did not answer");
        }
        // Readers go back to sleep before the next ping.
        std::thread::sleep(Duration::from_millis(1));
    }
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "ring/wakeup latency, 1 writer -> {readers} reader processes: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} samples)",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        samples.len()
    );
}

criterion_group!(benches, throughput);

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
        return;
    }
    // `cargo test --benches` runs this in test mode: keep it short there.
    if std::env::args().any(|a| a == "--bench") {
        latency_report(1);
        latency_report(4);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
