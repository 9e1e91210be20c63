//! Raw audio: the session's Opus decoded to PCM s16le at the rate and channel count asked, in
//! 20 ms pieces on stdout, for the gateway to send on over a WebSocket (a transcription
//! service, say).
//!
//! Owns the output format and writing it; decoding is `opus.rs`'s, the connection and its
//! events the gateway's. Audio that does not come (a paused session, a publisher gone) is not
//! filled with silence: the stream carries what was heard. A closed stdout ends the egress
//! cleanly (`control::write_stdout`): its reader has gone.

use super::frames::Frame;
use super::opus::Decoded;
use super::probe::Probed;

/// An open PCM output.
pub struct Pcm {
    decoded: Decoded,
    channels: u32,
    seconds: f64,
}

impl std::fmt::Debug for Pcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pcm")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Pcm {
    pub fn new(opus: &Probed, rate: u32, channels: u32) -> Result<Self, String> {
        let layout = if channels == 1 { "mono" } else { "stereo" };
        let decoded = Decoded::new(
            opus,
            format!(
                "aresample={rate},aformat=sample_fmts=s16:sample_rates={rate}:channel_layouts={layout},\
                 asetnsamples=n={n}:p=0",
                n = rate / 50
            ),
        )?;
        Ok(Self {
            decoded,
            channels,
            seconds: 0.0,
        })
    }

    pub fn write(&mut self, frame: &Frame) -> Result<(), String> {
        self.seconds = self.seconds.max(frame.pts as f64 / 48_000.0);
        let channels = self.channels as usize;
        self.decoded.push(frame, |piece| {
            // Packed s16: the samples of every channel, interleaved, in plane 0.
            let len = piece.samples() * channels * 2;
            crate::control::write_stdout(&piece.data(0)[..len])
                .map_err(|e| format!("writing PCM: {e}"))
        })
    }

    pub fn seconds(&self) -> f64 {
        self.seconds
    }
}
