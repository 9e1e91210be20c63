//! Facts read from encoded frames: picture dimensions from an H.264 SPS (via `h264-reader`) or a
//! VP8 key frame header (RFC 6386 §9.1, a fixed 10-byte layout read by hand).

use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::rbsp::{BitReader, decode_nal};

/// Width and height, if this frame carries them (an SPS, or a VP8 key frame).
pub fn dimensions(codec: &str, frame: &[u8]) -> Option<(u32, u32)> {
    if codec.eq_ignore_ascii_case("h264") {
        annexb_nals(frame)
            .filter(|n| !n.is_empty() && n[0] & 0x1f == 7)
            .find_map(|sps| {
                let rbsp = decode_nal(sps).ok()?;
                let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])).ok()?;
                sps.pixel_dimensions().ok()
            })
    } else if codec.eq_ignore_ascii_case("vp8") {
        vp8_dimensions(frame)
    } else {
        None
    }
}

/// NAL units of an Annex B byte stream (start codes 00 00 01 or 00 00 00 01).
pub fn annexb_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut e = starts.get(k + 1).map(|n| n - 3).unwrap_or(data.len());
        // A 4-byte start code leaves a zero at the end of the previous unit.
        while e > s && data[e - 1] == 0 && k + 1 < starts.len() {
            e -= 1;
        }
        nals.push(&data[s..e]);
    }
    nals.into_iter()
}

/// A VP8 key frame: 3-byte frame tag with bit 0 clear, start code 9d 01 2a, then 14-bit width
/// and height (RFC 6386 §9.1).
fn vp8_dimensions(f: &[u8]) -> Option<(u32, u32)> {
    if f.len() < 10 || f[0] & 1 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    Some((w as u32, h as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h264_sps_dimensions() {
        // SPS of a 1280x720 constrained-baseline stream (x264), with start codes.
        let frame = [
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40, 0x00, 0x00,
            0x03, 0x00, 0x40, 0x00, 0x00, 0x0f, 0x03, 0xc6, 0x0c, 0xa8, 0, 0, 0, 1, 0x68, 0xce,
            0x0f, 0xc8,
        ];
        assert_eq!(annexb_nals(&frame).count(), 2);
        assert_eq!(dimensions("H264", &frame), Some((1280, 720)));
        assert_eq!(
            dimensions("H264", &frame[26..]),
            None,
            "a PPS alone says nothing"
        );
    }

    #[test]
    fn reads_vp8_key_frame_dimensions() {
        let f = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02];
        assert_eq!(dimensions("VP8", &f), Some((1280, 720)));
        let inter = [0x51, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02];
        assert_eq!(dimensions("vp8", &inter), None);
    }
}
