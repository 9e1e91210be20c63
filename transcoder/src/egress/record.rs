//! A recording: a session's frames, as they were sent, into a file (no re-encoding).
//!
//! Owns the containers (fragmented MP4, WebM, Matroska, Ogg), which codecs each may hold, and
//! their options. MP4 is written in fragments (`moof` + `mdat` per keyframe, after an empty
//! `moov`), and every container flushes each write to the file, so a recorder killed at any
//! moment leaves a file that plays up to its last fragment or cluster. It does not read the
//! ring (`frames.rs`) or decide when to stop (`mod.rs`).

use std::path::{Path, PathBuf};

use ffmpeg_next::{self as ff, Dictionary, Packet, Rational, codec, format};

use super::frames::{Codec, Frame};
use super::probe::Probed;

/// A recording's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Container {
    /// Fragmented MP4: H.264 and Opus.
    Mp4,
    /// WebM: VP8 and Opus.
    Webm,
    /// Matroska: any of the session's codecs.
    Mkv,
    /// Ogg: the audio alone (Opus).
    Ogg,
}

impl Container {
    fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Webm => "webm",
            Container::Mkv => "matroska",
            Container::Ogg => "ogg",
        }
    }

    /// Which of the session's tracks go in, or why this container cannot hold them.
    pub fn tracks(
        self,
        video: Option<Codec>,
        audio: Option<Codec>,
    ) -> Result<(Option<Codec>, Option<Codec>), String> {
        let chosen = match (self, video) {
            (Container::Mp4, Some(Codec::Vp8)) => {
                return Err(
                    "MP4 recordings hold H.264 video, and this session's video is VP8: \
                            record webm or mkv"
                        .into(),
                );
            }
            (Container::Webm, Some(Codec::H264)) => {
                return Err("WebM holds VP8 video, and this session's video is H.264: \
                            record mp4 or mkv"
                    .into());
            }
            (Container::Ogg, _) => (None, audio),
            (_, video) => (video, audio),
        };
        if chosen == (None, None) {
            return Err(match self {
                Container::Ogg => "an Ogg recording holds audio, and this session has none".into(),
                _ => "this session has neither video nor audio to record".into(),
            });
        }
        Ok(chosen)
    }

    /// Options for the muxer's header.
    fn options(self) -> Dictionary<'static> {
        let mut o = Dictionary::new();
        // Every packet reaches the file when written: a killed recorder loses only what the
        // muxer had not written yet (an open fragment or cluster).
        o.set("flush_packets", "1");
        // Interleaving waits at most a second for a stream that lags (the default is 10 s of
        // video held in memory when the audio comes late), so that is all a kill can lose
        // beyond the open fragment.
        o.set("max_interleave_delta", "1000000");
        match self {
            Container::Mp4 => {
                // An empty `moov` first, then a fragment per keyframe: the file plays without
                // a trailer. `default_base_moof` is what browsers' MSE and CMAF expect.
                o.set("movflags", "frag_keyframe+empty_moov+default_base_moof");
            }
            Container::Webm | Container::Mkv => {
                // Clusters of at most a second, so little is lost with an unfinished one.
                o.set("cluster_time_limit", "1000");
            }
            Container::Ogg => {}
        }
        o
    }
}

#[derive(Debug)]
struct Output {
    index: usize,
    clock: i64,
    time_base: Rational,
}

/// An open recording.
pub struct Recorder {
    muxer: format::context::Output,
    video: Option<Output>,
    audio: Option<Output>,
    path: PathBuf,
    /// Media seconds written: the latest frame's time.
    seconds: f64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("seconds", &self.seconds)
            .finish_non_exhaustive()
    }
}

/// Why a recording failed: where it was to be written, or what was written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: ff::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: ff::Error,
    },
}

impl Recorder {
    /// Creates `path` and writes the container's header for these streams.
    pub fn create(
        path: &Path,
        container: Container,
        video: Option<(Codec, &Probed)>,
        audio: Option<(Codec, &Probed)>,
    ) -> Result<Self, RecordError> {
        let output_error = |source| RecordError::Output {
            path: path.to_path_buf(),
            source,
        };
        let mut muxer = format::output_as(path, container.muxer()).map_err(output_error)?;
        let mut add = |codec: Codec, probed: &Probed| -> Result<Output, RecordError> {
            let mut stream = muxer.add_stream(codec::Id::None).map_err(output_error)?;
            stream.set_parameters(probed.parameters.clone());
            stream.set_time_base(Rational::new(1, codec.clock() as i32));
            Ok(Output {
                index: stream.index(),
                clock: codec.clock(),
                time_base: Rational::new(1, codec.clock() as i32),
            })
        };
        let mut video = match video {
            Some((c, p)) => Some(add(c, p)?),
            None => None,
        };
        let mut audio = match audio {
            Some((c, p)) => Some(add(c, p)?),
            None => None,
        };
        muxer
            .write_header_with(container.options())
            .map_err(output_error)?;
        // The muxer may have chosen its own time bases (Matroska counts milliseconds).
        for out in [&mut video, &mut audio].into_iter().flatten() {
            if let Some(stream) = muxer.stream(out.index) {
                out.time_base = stream.time_base();
            }
        }
        Ok(Self {
            muxer,
            video,
            audio,
            path: path.to_path_buf(),
            seconds: 0.0,
        })
    }

    /// Writes one frame (frames of a track the recording does not hold are skipped).
    pub fn write(&mut self, frame: &Frame) -> Result<(), RecordError> {
        let out = match frame.codec.is_video() {
            true => self.video.as_ref(),
            false => self.audio.as_ref(),
        };
        let Some(out) = out else {
            return Ok(());
        };
        let mut packet = Packet::copy(&frame.data);
        packet.set_pts(Some(frame.pts));
        packet.set_dts(Some(frame.pts));
        if frame.codec == Codec::Opus {
            packet.set_duration(opus_samples(&frame.data).unwrap_or(960));
        }
        if frame.keyframe {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        packet.set_stream(out.index);
        packet.rescale_ts(Rational::new(1, out.clock as i32), out.time_base);
        self.seconds = self.seconds.max(frame.pts as f64 / out.clock as f64);
        packet
            .write_interleaved(&mut self.muxer)
            .map_err(|source| RecordError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Media seconds written so far.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Writes what the muxer holds and its trailer, and closes the file.
    pub fn finish(mut self) -> Result<(), RecordError> {
        self.muxer
            .write_trailer()
            .map_err(|source| RecordError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// Samples (48 kHz) in an Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn opus_samples(packet: &[u8]) -> Option<i64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][(config % 4) as usize],
        12..=15 => [480, 960][(config % 2) as usize],
        _ => [120, 240, 480, 960][(config % 4) as usize],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => (*packet.get(1)? & 0x3f) as i64,
    };
    Some(frame * frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_take_only_codecs_they_hold() {
        use Codec::*;
        assert_eq!(
            Container::Mp4.tracks(Some(H264), Some(Opus)),
            Ok((Some(H264), Some(Opus)))
        );
        let e = Container::Mp4.tracks(Some(Vp8), Some(Opus)).unwrap_err();
        assert!(e.contains("webm or mkv"), "{e}");
        let e = Container::Webm.tracks(Some(H264), None).unwrap_err();
        assert!(e.contains("mp4 or mkv"), "{e}");
        assert_eq!(
            Container::Mkv.tracks(Some(Vp8), None),
            Ok((Some(Vp8), None))
        );
        assert_eq!(
            Container::Ogg.tracks(Some(H264), Some(Opus)),
            Ok((None, Some(Opus)))
        );
        assert!(Container::Ogg.tracks(Some(H264), None).is_err());
    }

    #[test]
    fn opus_packet_lengths_come_from_the_toc() {
        // CELT 20 ms, one frame (what WebRTC sends).
        assert_eq!(opus_samples(&[0xfc, 0xff]), Some(960));
        // SILK 60 ms.
        assert_eq!(opus_samples(&[0x18]), Some(2880));
        // Two CELT 10 ms frames.
        assert_eq!(opus_samples(&[(18 << 3) | 1]), Some(960));
        // Code 3: the count is in the next byte.
        assert_eq!(opus_samples(&[(19 << 3) | 3, 3]), Some(2880));
        assert_eq!(opus_samples(&[]), None);
    }
}
