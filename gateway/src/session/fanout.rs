//! Per-viewer rewriting of the session's RTP (DESIGN.md "Fan-out"), as plain state with no I/O.
//!
//! The session's packets are made once, by its source; each viewer only changes the header
//! fields that are its own: payload type (its offer's numbering), sequence number and timestamp
//! (rebased so that they run on without a jump across seeks, source restarts and the viewer's
//! late start), and it starts video at a keyframe. The payload bytes are passed through
//! untouched. Owns none of the transport (see `rtc/feed.rs`).

use std::sync::{Arc, Mutex};

use rtp_ring::{Flags, RtpHeaderView};

/// Payloads of a session's recent ring records, shared by its viewers: the first viewer to read
/// record `i` makes its `Arc`, the others clone it. str0m keeps what it sent for NACKs, so
/// without sharing every viewer would hold its own copy of the last few hundred packets.
#[derive(Debug)]
pub struct PayloadCache {
    slots: Box<[Mutex<Option<Shared>>]>,
}

/// A record's ring index and its payload.
type Shared = (u64, Arc<[u8]>);

impl PayloadCache {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// The shared payload of ring record `index`, made from `payload` if no viewer made it yet.
    pub fn get(&self, index: u64, payload: &[u8]) -> Arc<[u8]> {
        let slot = &self.slots[(index % self.slots.len() as u64) as usize];
        // A poisoned slot only means a viewer panicked mid-insert; the data is still whole.
        let mut entry = slot.lock().unwrap_or_else(|e| e.into_inner());
        match &*entry {
            // One cache per ring, so an index names one record.
            Some((i, p)) if *i == index => p.clone(),
            _ => {
                let p: Arc<[u8]> = Arc::from(payload);
                *entry = Some((index, p.clone()));
                p
            }
        }
    }
}

/// Where the payload of an RTP packet is (RFC 3550 §5.1, §5.3.1: after CSRCs and extension,
/// before padding), or `None` if the packet is too short for what its header says.
pub fn payload_range(packet: &[u8]) -> Option<std::ops::Range<usize>> {
    if packet.len() < 12 {
        return None;
    }
    let csrc = (packet[0] & 0x0f) as usize;
    let mut off = 12 + 4 * csrc;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(off + 2..off + 4)?;
        off += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        // Padding: the last byte counts the padding bytes (itself included).
        let pad = *packet.last()? as usize;
        end = end.checked_sub(pad)?;
    }
    (off <= end).then_some(off..end)
}

/// A viewer starting from a keyframe younger than this gets its backlog at once.
const CATCHUP_MIN_AGE_US: u64 = 50_000;
/// How long catching up should take, whatever the backlog (within `CATCHUP_MAX_SPEED`).
const CATCHUP_TARGET_US: f64 = 1_500_000.0;
/// The most a backlog is sped up: the viewer's bitrate is this many times the stream's
/// while it catches up.
const CATCHUP_MAX_SPEED: f64 = 4.0;

/// A viewer that starts from a keyframe in the past (a live publisher's GOP can be seconds
/// long, and many publishers ignore keyframe requests) gets the packets since that keyframe
/// faster than real time, with timestamps compressed to match (`TrackMap::compress`), until
/// it reaches the packets arriving now. Its first frame is then immediate and its latency
/// settles to a live viewer's within `CATCHUP_TARGET_US`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Catchup {
    /// When catching up began, and the capture time of the record it began with (µs,
    /// `rtp_ring::now_us` clock).
    start_us: u64,
    from_us: u64,
    speed: f64,
}

impl Catchup {
    /// Catching up from a keyframe captured at `keyframe_us`, or `None` if it is recent
    /// enough to send at once.
    pub fn new(now_us: u64, keyframe_us: u64) -> Option<Self> {
        let age = now_us.saturating_sub(keyframe_us);
        (age >= CATCHUP_MIN_AGE_US).then(|| Self {
            start_us: now_us,
            from_us: keyframe_us,
            speed: (1.0 + age as f64 / CATCHUP_TARGET_US).min(CATCHUP_MAX_SPEED),
        })
    }

    /// How many times faster than real time the backlog goes out.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// When the record captured at `capture_us` is due.
    pub fn due_us(&self, capture_us: u64) -> u64 {
        let behind = capture_us.saturating_sub(self.from_us) as f64;
        self.start_us + (behind / self.speed) as u64
    }

    /// Whether the record captured at `capture_us` would be due no earlier than it was
    /// captured: from it on, the viewer is live.
    pub fn caught_up(&self, capture_us: u64) -> bool {
        self.due_us(capture_us) <= capture_us
    }
}

/// What to do with one source packet for one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send with these header fields (payload unchanged).
    Send {
        pt: u8,
        /// Extended sequence number (never wraps; str0m derives the SRTP ROC from it).
        seq: u64,
        timestamp: u32,
        marker: bool,
    },
    /// Drop it: the viewer is waiting for a keyframe. `request_keyframe` is true the first
    /// time, so that one keyframe request goes to the source per wait.
    WaitKeyframe { request_keyframe: bool },
}

/// The rewriting state of one track of one viewer.
#[derive(Debug, Clone)]
pub struct TrackMap {
    /// The viewer's payload type for this track.
    out_pt: u8,
    /// RTP clock rate, Hz.
    clock: u32,
    /// Video waits for a keyframe after every discontinuity; audio never does.
    video: bool,
    /// Next sequence number to send.
    next_seq: u64,
    /// Added to source timestamps (wrapping) to get the viewer's.
    ts_offset: u32,
    /// The previous packet from the source, to see discontinuities.
    last_in: Option<LastIn>,
    /// The last timestamp sent and when (µs, source capture clock), to continue from.
    last_out: Option<(u32, u64)>,
    waiting: bool,
    requested: bool,
    /// The next packet sent sets `ts_offset` afresh.
    reanchor: bool,
    /// While catching up: source time runs this many times faster than the viewer's clock.
    compress: Option<Compress>,
    /// The last packet sent did not end its frame.
    mid_frame: bool,
}

/// Timestamp compression while a viewer catches up: the viewer's clock advances by the
/// source's time divided by `speed`, from a base pair taken at the first packet sent.
#[derive(Debug, Clone, Copy)]
struct Compress {
    speed: f64,
    /// (source timestamp, viewer timestamp) of the first packet sent while compressing.
    base: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct LastIn {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

impl TrackMap {
    /// `first_seq` and `first_ts` are the viewer's random starting values (RFC 3550 §5.1).
    pub fn new(out_pt: u8, clock: u32, video: bool, first_seq: u16, first_ts: u32) -> Self {
        Self {
            out_pt,
            clock,
            video,
            next_seq: first_seq as u64,
            ts_offset: 0,
            last_in: None,
            last_out: Some((first_ts, 0)),
            waiting: video,
            requested: false,
            reanchor: true,
            compress: None,
            mid_frame: false,
        }
    }

    /// The next packet is another layer's keyframe (a simulcast or ladder switch): timing
    /// re-anchors there. If the last frame sent was cut short, one sequence number is left
    /// out, so that the viewer's receiver sees that frame as incomplete and drops it rather
    /// than decoding half of it (RFC 3550 numbering tells it a packet is missing).
    pub fn new_layer(&mut self) {
        if std::mem::take(&mut self.mid_frame) {
            self.next_seq += 1;
        }
        self.last_in = None;
        self.reanchor = true;
    }

    /// From the next packet on, the viewer's clock runs `speed` times slower than the
    /// source's, so that a backlog sent `speed` times faster than real time keeps its
    /// timestamps in step with its arrival (a player's jitter buffer then does not hold it).
    pub fn compress(&mut self, speed: f64) {
        self.compress = Some(Compress { speed, base: None });
    }

    /// Back to real time, continuing the viewer's clock from the last packet sent.
    pub fn end_compress(&mut self) {
        if self.compress.take().is_some()
            && let (Some(last_in), Some((out, _))) = (self.last_in, self.last_out)
        {
            self.ts_offset = out.wrapping_sub(last_in.timestamp);
        }
    }

    /// The viewer's clock goes on from its last packet as if that had been captured at
    /// `at_us`: after a backlog sent faster than real time is left for the live edge, the
    /// next packet's timestamp moves on by the real time since, not by the backlog skipped.
    pub fn continue_clock_from(&mut self, at_us: u64) {
        if let Some((_, at)) = self.last_out.as_mut()
            && *at != 0
        {
            *at = at_us.max(1);
        }
    }

    /// Marks a break in the source (a new source generation, an overrun): video waits for the
    /// next keyframe, and timing re-anchors at the next packet.
    pub fn discontinuity(&mut self) {
        self.last_in = None;
        if self.video {
            self.waiting = true;
            self.requested = false;
        }
    }

    /// Whether the viewer still waits for its first (or next) keyframe.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// Maps one source packet, captured at `capture_us` (monotonic µs).
    pub fn step(&mut self, hdr: &RtpHeaderView, flags: Flags, capture_us: u64) -> Step {
        let continuous = self.last_in.is_some_and(|l| {
            l.ssrc == hdr.ssrc
                && hdr.seq == l.seq.wrapping_add(1)
                // A seek keeps the sequence but jumps the clock: more than 5 s either way is
                // not the same timeline.
                && (hdr.timestamp.wrapping_sub(l.timestamp) as i32).unsigned_abs()
                    < 5 * self.clock
        });
        if !continuous {
            self.reanchor = true;
            if self.last_in.is_some() && self.video {
                self.waiting = true;
                self.requested = false;
            }
        }
        if self.waiting {
            if flags.contains(Flags::KEYFRAME) {
                self.waiting = false;
            } else {
                self.last_in = Some(LastIn {
                    ssrc: hdr.ssrc,
                    seq: hdr.seq,
                    timestamp: hdr.timestamp,
                });
                let request_keyframe = !self.requested;
                self.requested = true;
                return Step::WaitKeyframe { request_keyframe };
            }
        }
        let reanchored = std::mem::take(&mut self.reanchor);
        if reanchored {
            // Re-anchor: continue the viewer's clock from its last packet by the time that
            // passed, at least one tick, so its jitter buffer sees time move forward.
            let timestamp = match self.last_out {
                Some((ts, at_us)) if at_us != 0 => {
                    let elapsed = capture_us.saturating_sub(at_us);
                    let ticks = (elapsed as u128 * self.clock as u128 / 1_000_000) as u32;
                    ts.wrapping_add(ticks.max(1))
                }
                Some((ts, _)) => ts,
                None => 0,
            };
            self.ts_offset = timestamp.wrapping_sub(hdr.timestamp);
        }
        self.last_in = Some(LastIn {
            ssrc: hdr.ssrc,
            seq: hdr.seq,
            timestamp: hdr.timestamp,
        });
        let mut timestamp = hdr.timestamp.wrapping_add(self.ts_offset);
        if let Some(c) = self.compress.as_mut() {
            let (base_in, base_out) = match c.base {
                Some(b) if !reanchored => b,
                _ => *c.base.insert((hdr.timestamp, timestamp)),
            };
            let ticks = hdr.timestamp.wrapping_sub(base_in) as i32 as f64 / c.speed;
            timestamp = base_out.wrapping_add(ticks.round() as i32 as u32);
        }
        self.last_out = Some((timestamp, capture_us.max(1)));
        self.mid_frame = !hdr.marker;
        let seq = self.next_seq;
        self.next_seq += 1;
        Step::Send {
            pt: self.out_pt,
            seq,
            timestamp,
            marker: hdr.marker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(ssrc: u32, seq: u16, ts: u32, marker: bool) -> RtpHeaderView {
        RtpHeaderView {
            marker,
            payload_type: 96,
            seq,
            timestamp: ts,
            ssrc,
        }
    }

    fn sent(s: Step) -> (u64, u32) {
        match s {
            Step::Send { seq, timestamp, .. } => (seq, timestamp),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn video_starts_at_a_keyframe_and_asks_once() {
        let mut t = TrackMap::new(102, 90000, true, 1000, 5000);
        let kf = Flags::KEYFRAME;
        assert_eq!(
            t.step(&hdr(1, 10, 0, true), Flags::empty(), 1),
            Step::WaitKeyframe {
                request_keyframe: true
            }
        );
        assert_eq!(
            t.step(&hdr(1, 11, 3000, true), Flags::empty(), 2),
            Step::WaitKeyframe {
                request_keyframe: false
            }
        );
        let s = t.step(&hdr(1, 12, 6000, false), kf, 100_000);
        assert!(matches!(
            s,
            Step::Send {
                pt: 102,
                seq: 1000,
                marker: false,
                ..
            }
        ));
        assert_eq!(
            sent(t.step(&hdr(1, 13, 6000, true), Flags::empty(), 100_000)).0,
            1001
        );
        let (seq, ts) = sent(t.step(&hdr(1, 14, 9000, true), Flags::empty(), 133_000));
        assert_eq!(seq, 1002);
        assert_eq!(ts, 5000 + 3000, "timestamps keep the source's spacing");
    }

    #[test]
    fn a_new_source_continues_the_viewers_numbering() {
        let mut t = TrackMap::new(111, 48000, false, 65534, u32::MAX - 100);
        let (s0, t0) = sent(t.step(&hdr(7, 500, 1_000_000, false), Flags::empty(), 1_000_000));
        let (s1, t1) = sent(t.step(&hdr(7, 501, 1_000_960, false), Flags::empty(), 1_020_000));
        assert_eq!((s0, s1), (65534, 65535));
        assert_eq!(t1.wrapping_sub(t0), 960);
        // Source restarted: new SSRC, random seq and timestamp. The viewer's run on, and the
        // clock advances by the 500 ms that passed.
        let (s2, t2) = sent(t.step(&hdr(9, 3, 77, false), Flags::empty(), 1_520_000));
        assert_eq!(s2, 65536, "no wrap in the extended sequence");
        assert_eq!(t2.wrapping_sub(t1), 24_000);
        let (_, t3) = sent(t.step(&hdr(9, 4, 77 + 960, false), Flags::empty(), 1_540_000));
        assert_eq!(t3.wrapping_sub(t2), 960);
    }

    #[test]
    fn a_seek_jump_waits_for_the_next_keyframe() {
        let mut t = TrackMap::new(96, 90000, true, 0, 0);
        sent(t.step(&hdr(1, 1, 0, true), Flags::KEYFRAME, 1));
        sent(t.step(&hdr(1, 2, 3000, true), Flags::empty(), 33_000));
        // Same SSRC and sequence, clock 100 s later: a seek.
        assert!(matches!(
            t.step(&hdr(1, 3, 9_000_000, true), Flags::empty(), 66_000),
            Step::WaitKeyframe {
                request_keyframe: true
            }
        ));
        let (seq, ts) = sent(t.step(&hdr(1, 4, 9_003_000, true), Flags::KEYFRAME, 100_000));
        assert_eq!(seq, 2);
        assert_eq!(ts, 3000 + 90000 * 67 / 1000);
    }

    #[test]
    fn a_layer_switch_continues_numbering_and_leaves_a_gap_after_a_cut_frame() {
        let mut t = TrackMap::new(96, 90000, true, 100, 0);
        sent(t.step(&hdr(1, 50, 1000, true), Flags::KEYFRAME, 1_000_000));
        // Half a frame of the old layer, then the new layer's keyframe (another SSRC, its
        // own clock): one number is skipped, and time runs on by what passed.
        sent(t.step(&hdr(1, 51, 4000, false), Flags::empty(), 1_033_000));
        t.new_layer();
        let (seq, ts) = sent(t.step(&hdr(2, 7000, 777_000, false), Flags::KEYFRAME, 1_066_000));
        assert_eq!(seq, 103, "101 went to the cut frame, 102 is left out");
        // The cut frame went out at the viewer's 3000; 33 ms later is 2970 ticks on.
        assert_eq!(ts, 3000 + 90 * 33);
        let (seq, _) = sent(t.step(&hdr(2, 7001, 777_000, true), Flags::empty(), 1_066_000));
        assert_eq!(seq, 104);
        // A switch after a whole frame leaves no gap.
        t.new_layer();
        let (seq, _) = sent(t.step(&hdr(1, 60, 9000, true), Flags::KEYFRAME, 1_100_000));
        assert_eq!(seq, 105);
    }

    #[test]
    fn a_backlog_goes_out_faster_with_its_clock_compressed_then_runs_live() {
        // The newest keyframe came 3 s ago: the backlog goes out 3x as fast, over 1.5 s.
        let c = Catchup::new(10_000_000, 7_000_000).expect("3 s is a backlog");
        assert_eq!(c.speed(), 3.0);
        assert_eq!(c.due_us(7_000_000), 10_000_000, "the keyframe goes at once");
        assert_eq!(c.due_us(8_500_000), 10_500_000);
        assert!(!c.caught_up(10_000_000));
        // 4.5 s of source is due at 11.5 s, when it arrives: live from there.
        assert_eq!(c.due_us(11_500_000), 11_500_000);
        assert!(c.caught_up(11_500_000));
        assert_eq!(Catchup::new(10_000_000, 9_990_000), None, "10 ms is not");
        assert_eq!(Catchup::new(100_000_000, 0).unwrap().speed(), 4.0, "capped");

        let mut t = TrackMap::new(96, 90000, true, 0, 1000);
        t.compress(3.0);
        let (_, t0) = sent(t.step(&hdr(1, 1, 90_000, false), Flags::KEYFRAME, 7_000_000));
        assert_eq!(t0, 1000);
        let (_, t1) = sent(t.step(&hdr(1, 2, 90_000, true), Flags::empty(), 7_000_000));
        assert_eq!(t1, 1000, "packets of one frame share its time");
        let (_, t2) = sent(t.step(&hdr(1, 3, 93_000, true), Flags::empty(), 7_033_000));
        assert_eq!(t2, 2000, "a frame interval takes a third of the time");
        t.end_compress();
        let (_, t3) = sent(t.step(&hdr(1, 4, 96_000, true), Flags::empty(), 7_066_000));
        assert_eq!(
            t3, 5000,
            "after catching up, real time again, without a jump"
        );
    }

    #[test]
    fn viewers_share_one_payload_per_record() {
        let cache = PayloadCache::new(4);
        let a = cache.get(10, b"abc");
        let b = cache.get(10, b"abc");
        assert!(Arc::ptr_eq(&a, &b));
        // A later record takes the slot over; record 10 is then made afresh.
        let c = cache.get(14, b"xyz");
        assert_eq!(&*c, b"xyz");
        assert_eq!(&*cache.get(10, b"new"), b"new");
    }

    #[test]
    fn payload_ranges_follow_csrcs_extensions_and_padding() {
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xaa];
        assert_eq!(payload_range(&p), Some(12..13));
        // One CSRC and a one-word extension.
        p = vec![0x91, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        p.extend([0, 0, 0, 5]);
        p.extend([0xbe, 0xde, 0, 1, 1, 2, 3, 4, 0xaa]);
        assert_eq!(payload_range(&p), Some(24..25));
        // Padding longer than the packet.
        let p = [0xa0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 200];
        assert_eq!(payload_range(&p), None);
        assert_eq!(payload_range(&[0x80, 1, 2]), None);
    }
}
