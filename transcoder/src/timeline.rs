//! Output time: how media time maps to RTP time and to when a packet is due.
//!
//! Owns the segment arithmetic the player uses, kept free of I/O so it can be tested alone.
//! Every emitted unit gets an output time in µs that only moves forward; RTP timestamps derive
//! from it. A segment maps media time to output time one to one from its start; a new one starts
//! at a seek, a loop or a resume (where output time also moves on by the pause's length).

use ffmpeg_next::Rational as FfRational;

/// Maps media time to output time and to the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Media time (µs) at the segment's start.
    pub media_us: i64,
    /// Output time (µs) at the segment's start.
    pub out_us: i64,
    /// Monotonic µs at which `out_us` is due.
    pub wall_us: u64,
}

impl Segment {
    /// Output time of media time `media_us`.
    pub fn out_of(&self, media_us: i64) -> i64 {
        self.out_us + (media_us - self.media_us)
    }

    /// Wall-clock (monotonic µs) due time of output time `out_us`.
    pub fn due_of(&self, out_us: i64) -> u64 {
        (self.wall_us as i64 + (out_us - self.out_us)).max(0) as u64
    }
}

/// Media time (µs, truncated) of frame `index` at `fps`.
pub fn frame_us(index: u64, fps: FfRational) -> i64 {
    (index as i128 * 1_000_000 * fps.denominator() as i128 / fps.numerator() as i128) as i64
}

/// The frame nearest to media time `us` at `fps`.
pub fn frame_at(us: f64, fps: FfRational) -> u64 {
    (us * fps.numerator() as f64 / fps.denominator() as f64 / 1e6)
        .round()
        .max(0.0) as u64
}

/// 90 kHz RTP time of output time `out_us` (rounded: frame times truncated to µs come back
/// exact, e.g. 3000 ticks apart at 30 fps).
pub fn ts90(out_us: i64) -> i64 {
    (out_us * 9 + 50).div_euclid(100)
}

/// 48 kHz RTP time of output time `out_us` (rounded, so 20 ms frames are exactly 960 apart).
pub fn ts48(out_us: i64) -> i64 {
    (out_us * 48 + 500).div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_times_round_trip_to_exact_rtp_steps() {
        for fps in [
            FfRational::new(30, 1),
            FfRational::new(30000, 1001),
            FfRational::new(25, 1),
        ] {
            let step = 90_000 * fps.denominator() as i64 / fps.numerator() as i64;
            for i in 0..20_000u64 {
                let a = ts90(frame_us(i, fps));
                let b = ts90(frame_us(i + 1, fps));
                assert!(
                    (b - a - step).abs() <= 1,
                    "fps {fps}: frame {i} steps {}",
                    b - a
                );
                assert_eq!(frame_at(frame_us(i, fps) as f64, fps), i);
            }
        }
        // 20 ms Opus frames at sample-derived µs are exactly 960 apart.
        for n in 0..10_000i64 {
            let us = |k: i64| k * 960 * 1_000_000 / 48_000;
            assert_eq!(ts48(us(n + 1)) - ts48(us(n)), 960);
        }
    }

    #[test]
    fn a_seek_continues_output_time_and_a_resume_adds_the_pause() {
        let fps = FfRational::new(30, 1);
        let first = Segment {
            media_us: 0,
            out_us: 0,
            wall_us: 1_000_000,
        };
        // Play frames 0..=89 (3 s), then seek back to frame 30 while playing.
        let end = first.out_of(frame_us(89, fps)) + frame_us(1, fps);
        let seek = Segment {
            media_us: frame_us(30, fps),
            out_us: end,
            wall_us: 4_000_000,
        };
        let next = seek.out_of(frame_us(30, fps));
        assert_eq!(
            next, end,
            "the first frame after the seek follows the last one before it"
        );
        assert_eq!(seek.due_of(next), 4_000_000, "and is due at once");
        // Pause for 2 s; the resume segment starts 2 s later in output time.
        let resume = Segment {
            media_us: frame_us(31, fps),
            out_us: next + frame_us(1, fps) + 2_000_000,
            wall_us: 6_000_000,
        };
        assert_eq!(
            ts90(resume.out_of(frame_us(31, fps))) - ts90(next),
            3000 + 180_000
        );
        assert_eq!(
            resume.due_of(resume.out_of(frame_us(40, fps))),
            6_000_000 + 300_000
        );
    }
}
