//! What a muxer must know about a stream before its first packet: codec parameters.
//!
//! Owns getting them the way FFmpeg itself does, so that no field is filled in by hand: the
//! first video keyframe is shown to libavformat's own demuxer (H.264 as an Annex B elementary
//! stream, VP8 in a one-frame IVF file), which reads the size, profile and pixel format and,
//! for H.264, the SPS and PPS a container's header needs; Opus gets its `OpusHead` from an
//! opened libopus encoder, as any FFmpeg encode would. It writes nothing.

use std::io::Cursor;

use ffmpeg_next::{Dictionary, codec, encoder, format, media};

use super::frames::Codec;

/// A stream's parameters and how to describe it to people.
pub struct Probed {
    pub parameters: codec::Parameters,
    /// `"h264 1280x720"`, `"opus 48000 Hz 2 ch"`.
    pub description: String,
    /// A video stream's picture size (0x0 for audio).
    pub size: (u32, u32),
}

impl std::fmt::Debug for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probed")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// Parameters of a video stream whose first frame is `keyframe` (Annex B for H.264).
pub fn video(codec: Codec, keyframe: &[u8]) -> Result<Probed, String> {
    let (bytes, name) = match codec {
        Codec::H264 => (keyframe.to_vec(), "keyframe.h264"),
        Codec::Vp8 => (ivf(keyframe)?, "keyframe.ivf"),
        Codec::Opus => return Err("opus is not video".into()),
    };
    let io = format::context::StreamIo::from_read(Cursor::new(bytes))
        .map_err(|e| format!("probing {}: {e}", codec.name()))?;
    // One frame and then the end: probing stops there.
    let input = format::input_from_stream(io, Some(name), None)
        .map_err(|e| format!("probing {} keyframe: {e}", codec.name()))?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| format!("FFmpeg found no {} video in the keyframe", codec.name()))?;
    let parameters = stream.parameters();
    let decoder = codec::context::Context::from_parameters(parameters.clone())
        .and_then(|c| c.decoder().video())
        .map_err(|e| format!("reading {} parameters: {e}", codec.name()))?;
    let (width, height) = (decoder.width(), decoder.height());
    if width == 0 || height == 0 {
        return Err(format!(
            "FFmpeg could not read the {} picture size from the keyframe",
            codec.name()
        ));
    }
    Ok(Probed {
        parameters,
        description: format!("{} {width}x{height}", codec.name()),
        size: (width, height),
    })
}

/// Parameters of the Opus stream (48 kHz stereo, as WebRTC sends it), with the `OpusHead`
/// that MP4, WebM and Ogg carry.
pub fn opus() -> Result<Probed, String> {
    let codec = encoder::find_by_name("libopus").ok_or("this FFmpeg has no libopus")?;
    let ctx =
        crate::audio::stereo_48k_encoder(codec, format::Sample::I16(format::sample::Type::Packed))?;
    let encoder = ctx
        .open_with(Dictionary::new())
        .map_err(|e| format!("opening libopus: {e}"))?;
    Ok(Probed {
        parameters: codec::Parameters::from(&encoder),
        description: "opus 48000 Hz 2 ch".into(),
        size: (0, 0),
    })
}

/// A VP8 keyframe as a one-frame IVF file (the header's size comes from the frame's own).
fn ivf(frame: &[u8]) -> Result<Vec<u8>, String> {
    // RFC 6386 §9.1: a 3-byte frame tag (bit 0 clear for a keyframe), the start code
    // 9d 01 2a, then 14-bit width and height.
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return Err("the first VP8 frame is not a keyframe".into());
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    let mut out = Vec::with_capacity(32 + 12 + frame.len());
    out.extend_from_slice(b"DKIF");
    out.extend_from_slice(&0u16.to_le_bytes()); // version
    out.extend_from_slice(&32u16.to_le_bytes()); // header size
    out.extend_from_slice(b"VP80");
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&30u32.to_le_bytes()); // time base denominator
    out.extend_from_slice(&1u32.to_le_bytes()); // numerator
    out.extend_from_slice(&1u32.to_le_bytes()); // frames
    out.extend_from_slice(&0u32.to_le_bytes()); // unused
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // pts
    out.extend_from_slice(frame);
    Ok(out)
}
