//! Output time: how media time maps to RTP time and to when a packet is due.
//!
//! Owns the segment arithmetic the player uses, kept free of I/O so it can be tested alone.
//! Every emitted unit gets an output time that only moves forward; RTP timestamps derive from it.
//! A segment maps media time to output time one to one from its start; a new one starts at a
//! seek, a loop or a resume (where output time also moves on by the pause's length).
//!
//! Times are in ticks of 1/1,440,000 s, the least common multiple of the 90 kHz video and 48 kHz
//! audio RTP clocks. Every common frame duration (30, 29.97, 25, 24, 23.976, 60 fps) and a 20 ms
//! Opus frame is a whole number of ticks, so RTP timestamps step exactly (3000, 3003, 960, ...)
//! wherever a segment starts. (23.976 fps lasts 3753.75 at 90 kHz: steps alternate 3753/3754
//! and never drift.)

use ffmpeg_next::Rational as FfRational;

/// Ticks per second.
pub const TICKS_PER_SEC: i64 = 1_440_000;
/// Ticks per 48 kHz sample.
pub const TICKS_PER_SAMPLE: i64 = TICKS_PER_SEC / 48_000;
/// Ticks per 20 ms Opus frame.
pub const OPUS_FRAME_TICKS: i64 = TICKS_PER_SEC / 50;

/// Maps media time to output time and to the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Media time (ticks) at the segment's start.
    pub media_t: i64,
    /// Output time (ticks) at the segment's start.
    pub out_t: i64,
    /// Monotonic µs at which `out_t` is due.
    pub wall_us: u64,
}

impl Segment {
    /// Output time of media time `media_t`.
    pub fn out_of(&self, media_t: i64) -> i64 {
        self.out_t + (media_t - self.media_t)
    }

    /// Wall-clock (monotonic µs) due time of output time `out_t`.
    pub fn due_of(&self, out_t: i64) -> u64 {
        (self.wall_us as i64 + ticks_to_us(out_t - self.out_t)).max(0) as u64
    }
}

/// Media time of frame `index` at `fps` (exact for the common rates).
pub fn frame_ticks(index: u64, fps: FfRational) -> i64 {
    (index as i128 * TICKS_PER_SEC as i128 * fps.denominator() as i128 / fps.numerator() as i128)
        as i64
}

/// The frame nearest to `seconds` at `fps`.
pub fn frame_at_secs(seconds: f64, fps: FfRational) -> u64 {
    (seconds * fps.numerator() as f64 / fps.denominator() as f64)
        .round()
        .max(0.0) as u64
}

/// Ticks as seconds.
pub fn secs(t: i64) -> f64 {
    t as f64 / TICKS_PER_SEC as f64
}

/// A wall-clock span in µs as ticks.
pub fn us_to_ticks(us: u64) -> i64 {
    (us as i128 * TICKS_PER_SEC as i128 / 1_000_000) as i64
}

/// Ticks as a wall-clock span in µs.
pub fn ticks_to_us(t: i64) -> i64 {
    (t as i128 * 1_000_000 / TICKS_PER_SEC as i128) as i64
}

/// 90 kHz RTP time of output time `t`. Floor division: spans of whole frames stay exact from
/// any origin.
pub fn ts90(t: i64) -> i64 {
    t.div_euclid(TICKS_PER_SEC / 90_000)
}

/// 48 kHz RTP time of output time `t`.
pub fn ts48(t: i64) -> i64 {
    t.div_euclid(TICKS_PER_SAMPLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_steps_are_exact_rtp_steps_from_any_origin() {
        // (rate, 90 kHz ticks per 4 frames)
        let rates = [
            (30, 1, 12_000i64),
            (30000, 1001, 12_012),
            (25, 1, 14_400),
            (24000, 1001, 15_015),
            (60, 1, 6000),
        ];
        for (num, den, four) in rates {
            let fps = FfRational::new(num, den);
            for origin in [0i64, 1, 7, 15, 123_457] {
                for i in 0..5_000u64 {
                    let at = |k: u64| ts90(origin + frame_ticks(k, fps));
                    let step = at(i + 1) - at(i);
                    assert!(
                        (four / 4..=(four + 3) / 4).contains(&step),
                        "{num}/{den}: {step}"
                    );
                    assert_eq!(
                        at(i + 4) - at(i),
                        four,
                        "{num}/{den} fps from {origin}, frame {i}"
                    );
                }
            }
            assert_eq!(frame_at_secs(secs(frame_ticks(1234, fps)), fps), 1234);
        }
        for origin in [0i64, 13, 999_999] {
            for n in 0..5_000i64 {
                let t = |k: i64| origin + k * OPUS_FRAME_TICKS;
                assert_eq!(ts48(t(n + 1)) - ts48(t(n)), 960);
            }
        }
    }

    #[test]
    fn a_seek_continues_output_time_and_a_resume_adds_the_pause() {
        let fps = FfRational::new(30, 1);
        let first = Segment {
            media_t: 0,
            out_t: 0,
            wall_us: 1_000_000,
        };
        // Play frames 0..=89 (3 s), then seek back to frame 30 while playing.
        let end = first.out_of(frame_ticks(89, fps)) + frame_ticks(1, fps);
        let seek = Segment {
            media_t: frame_ticks(30, fps),
            out_t: end,
            wall_us: 4_000_000,
        };
        let next = seek.out_of(frame_ticks(30, fps));
        assert_eq!(
            ts90(next) - ts90(first.out_of(frame_ticks(89, fps))),
            3000,
            "one frame on"
        );
        assert_eq!(seek.due_of(next), 4_000_000, "and due at once");
        // Pause for 2 s; the resume segment starts 2 s later in output time.
        let resume = Segment {
            media_t: frame_ticks(31, fps),
            out_t: next + frame_ticks(1, fps) + us_to_ticks(2_000_000),
            wall_us: 6_000_000,
        };
        assert_eq!(
            ts90(resume.out_of(frame_ticks(31, fps))) - ts90(next),
            3000 + 180_000
        );
        assert_eq!(
            resume.due_of(resume.out_of(frame_ticks(40, fps))),
            6_000_000 + 300_000
        );
    }
}
