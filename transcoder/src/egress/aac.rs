//! Opus → AAC, for outputs whose players want AAC (HLS, FLV for RTMP, MPEG-TS for SRT).
//!
//! Owns the encoding side of those outputs: the session's Opus (decoded by `opus.rs`) as 48 kHz
//! stereo planar float in frames of the encoder's size (1024), and encoded with FFmpeg's AAC encoder
//! at [`AAC_BITRATE`], with a global header (the AudioSpecificConfig) for the muxers.

use ffmpeg_next::{self as ff, Dictionary, Packet, codec, encoder, format};

use super::frames::Frame;
use super::opus::Decoded;
use super::probe::Probed;

/// The AAC bitrate.
pub const AAC_BITRATE: usize = 128_000;

fn err(what: &str) -> impl Fn(ff::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The audio path: Opus decoded, re-framed to the encoder's 1024 samples, AAC encoded.
pub struct Aac {
    decoded: Decoded,
    encoder: encoder::Audio,
}

impl Aac {
    pub fn new(opus: &Probed) -> Result<Self, String> {
        let codec = encoder::find(codec::Id::AAC).ok_or("this FFmpeg has no AAC encoder")?;
        let mut ctx = crate::audio::stereo_48k_encoder(
            codec,
            format::Sample::F32(format::sample::Type::Planar),
        )?;
        ctx.set_bit_rate(AAC_BITRATE);
        ctx.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = ctx
            .open_with(Dictionary::new())
            .map_err(err("opening the AAC encoder"))?;
        let frame_size = encoder.frame_size().max(1024);
        let decoded = Decoded::new(
            opus,
            format!(
                "aresample=48000,aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo,\
                 asetnsamples=n={frame_size}:p=0"
            ),
        )?;
        Ok(Self { decoded, encoder })
    }

    /// The AAC stream's parameters (with its AudioSpecificConfig), for a muxer.
    pub fn parameters(&self) -> codec::Parameters {
        codec::Parameters::from(&self.encoder)
    }

    /// Takes one Opus frame; appends the AAC packets it completed (times in 1/48000 s).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<Packet>) -> Result<(), String> {
        let encoder = &mut self.encoder;
        self.decoded.push(frame, |chunk| {
            encoder.send_frame(chunk).map_err(err("AAC"))?;
            let mut packet = Packet::empty();
            while encoder.receive_packet(&mut packet).is_ok() {
                out.push(packet.clone());
            }
            Ok(())
        })
    }
}
