//! FLV (Adobe Flash Video File Format Specification v10.1, Annex E) as the RTMP ingest writes
//! it into the transcoder's pipe: what an RTMP publisher sends, one tag per RTMP audio or video
//! message, so that libavformat's FLV demuxer reads the stream as if from a file.
//!
//! Owns the byte layout only (header, tags, previous-tag sizes, timestamps past 24 bits). RTMP
//! message payloads are FLV tag bodies already (E.4.2, E.4.3), passed through untouched,
//! sequence headers included.

/// What an FLV tag carries (E.4.1 TagType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Audio = 8,
    Video = 9,
}

/// The file header (E.2) for a stream with audio and video, and PreviousTagSize0 (E.3).
pub fn header() -> [u8; 13] {
    [
        b'F', b'L', b'V', 1,    // signature, version 1
        0x05, // TypeFlagsAudio | TypeFlagsVideo
        0, 0, 0, 9, // DataOffset: this header's size
        0, 0, 0, 0, // PreviousTagSize0
    ]
}

/// Appends one tag with `body` (an RTMP message payload) at `timestamp_ms`, and its
/// PreviousTagSize, to `out`. A body over 16 MiB cannot be one tag: `false`, nothing written.
pub fn tag(out: &mut Vec<u8>, kind: TagKind, timestamp_ms: u32, body: &[u8]) -> bool {
    let Ok(size) = u32::try_from(body.len()) else {
        return false;
    };
    if size >= 1 << 24 {
        return false;
    }
    let ts = timestamp_ms.to_be_bytes();
    out.push(kind as u8);
    out.extend_from_slice(&size.to_be_bytes()[1..]); // DataSize, UI24
    out.extend_from_slice(&ts[1..]); // Timestamp, UI24 (low bits)
    out.push(ts[0]); // TimestampExtended: the high 8 bits
    out.extend_from_slice(&[0, 0, 0]); // StreamID, always 0
    out.extend_from_slice(body);
    out.extend_from_slice(&(11 + size).to_be_bytes()); // PreviousTagSize
    true
}

/// Whether a video tag body is an AVC sequence header (E.4.3.1: AVC, AVCPacketType 0), which
/// the demuxer needs before any frame.
pub fn is_video_sequence_header(body: &[u8]) -> bool {
    body.len() >= 2 && body[0] & 0x0f == 7 && body[1] == 0
}

/// Whether an audio tag body is an AAC sequence header (E.4.2.1: AAC, AACPacketType 0).
pub fn is_audio_sequence_header(body: &[u8]) -> bool {
    body.len() >= 2 && body[0] >> 4 == 10 && body[1] == 0
}

/// Whether a video tag body starts a keyframe (E.4.3.1 FrameType 1).
pub fn is_keyframe(body: &[u8]) -> bool {
    body.first().is_some_and(|b| b >> 4 == 1)
}

/// The SPS and PPS of an AVC sequence header (E.4.3.1, then ISO/IEC 14496-15
/// AVCDecoderConfigurationRecord), each after a 4-byte length as frames carry their NAL units.
/// `None` when the header is cut short or frames use another length size.
pub fn avc_parameter_sets(body: &[u8]) -> Option<Vec<u8>> {
    if !is_video_sequence_header(body) {
        return None;
    }
    let record = body.get(5..)?;
    // configurationVersion, profile, compatibility, level, then 6 bits + lengthSizeMinusOne.
    if record.len() < 6 || record[4] & 3 != 3 {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = &record[5..];
    // numOfSequenceParameterSets (low 5 bits), then numOfPictureParameterSets (all 8).
    for mask in [0x1f, 0xff] {
        let (&count, tail) = rest.split_first()?;
        rest = tail;
        for _ in 0..count & mask {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let len = u16::from_be_bytes(*len) as usize;
            let nal = tail.get(..len)?;
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend_from_slice(nal);
            rest = &tail[len..];
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A keyframe's tag body (AVC, AVCPacketType 1) with `sets` (from [`avc_parameter_sets`])
/// before its NAL units, so that a reader without the sequence header decodes from it.
pub fn with_parameter_sets(body: &[u8], sets: &[u8]) -> Option<Vec<u8>> {
    if !(is_keyframe(body) && body.len() > 5 && body[0] & 0x0f == 7 && body[1] == 1) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + sets.len());
    out.extend_from_slice(&body[..5]);
    out.extend_from_slice(sets);
    out.extend_from_slice(&body[5..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sets_go_before_keyframes() {
        let sps = [0x67, 0x42, 0xc0, 0x1f, 0xd9];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut header = vec![0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1f, 0xff, 0xe1];
        header.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        header.extend_from_slice(&sps);
        header.push(1);
        header.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        header.extend_from_slice(&pps);
        let sets = avc_parameter_sets(&header).unwrap();
        let mut want = vec![0, 0, 0, 5];
        want.extend_from_slice(&sps);
        want.extend_from_slice(&[0, 0, 0, 4]);
        want.extend_from_slice(&pps);
        assert_eq!(sets, want);
        // Cut short anywhere: nothing, never a panic.
        for n in 0..header.len() {
            assert_eq!(avc_parameter_sets(&header[..n]), None, "{n}");
        }
        let key = [0x17, 1, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88];
        let with = with_parameter_sets(&key, &sets).unwrap();
        assert_eq!(&with[..5], &key[..5]);
        assert_eq!(&with[5..5 + sets.len()], &sets[..]);
        assert_eq!(&with[5 + sets.len()..], &key[5..]);
        // Not a keyframe, or the sequence header itself: left alone.
        assert_eq!(
            with_parameter_sets(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41], &sets),
            None
        );
        assert_eq!(with_parameter_sets(&header, &sets), None);
    }

    #[test]
    fn tags_are_laid_out_as_annex_e_says() {
        let mut out = header().to_vec();
        assert!(tag(&mut out, TagKind::Video, 0x0123_4567, &[0x17, 0, 1, 2]));
        assert_eq!(&out[..3], b"FLV");
        let t = &out[13..];
        assert_eq!(t[0], 9);
        assert_eq!(&t[1..4], &[0, 0, 4], "data size");
        assert_eq!(
            &t[4..8],
            &[0x23, 0x45, 0x67, 0x01],
            "24 low bits, then the high byte"
        );
        assert_eq!(&t[8..11], &[0, 0, 0]);
        assert_eq!(&t[11..15], &[0x17, 0, 1, 2]);
        assert_eq!(&t[15..], &15u32.to_be_bytes(), "previous tag size: 11 + 4");
        assert!(!tag(&mut Vec::new(), TagKind::Audio, 0, &vec![0; 1 << 24]));
    }

    #[test]
    fn sequence_headers_and_keyframes_are_told_apart() {
        assert!(is_video_sequence_header(&[0x17, 0, 0, 0, 0]));
        assert!(!is_video_sequence_header(&[0x17, 1]));
        assert!(is_keyframe(&[0x17, 1]) && !is_keyframe(&[0x27, 1]));
        assert!(is_audio_sequence_header(&[0xaf, 0, 0x12, 0x10]));
        assert!(!is_audio_sequence_header(&[0xaf, 1]) && !is_audio_sequence_header(&[0x2f, 0]));
    }
}
