//! A restream: the session pushed to an RTMP server (FLV) or an SRT listener (MPEG-TS), the
//! way an encoder would, for a platform or another server to take.
//!
//! Owns the pushed container: H.264 copied as it came, audio as AAC (FLV cannot carry Opus,
//! and AAC is what every receiver of MPEG-TS takes). Connecting, and a connection that fails
//! mid-way, are errors for the caller to retry (the gateway does, with backoff). It does not
//! read the ring (`frames.rs`) or decide when to stop (`mod.rs`).

use ffmpeg_next::{self as ff, Dictionary, Packet, Rational, codec, format};

use super::aac::Aac;
use super::frames::{Codec, Frame};
use super::probe::Probed;

/// The container pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushFormat {
    /// FLV, for `rtmp://` and `rtmps://` URLs.
    Flv,
    /// MPEG-TS, for `srt://` URLs.
    Mpegts,
}

/// A network write that makes no progress for this long fails (µs, FFmpeg's `rw_timeout`).
const RW_TIMEOUT_US: &str = "10000000";

/// An open push.
pub struct Pusher {
    muxer: format::context::Output,
    video: Option<(usize, Rational)>,
    audio: Option<(usize, Rational)>,
    aac: Option<Aac>,
    seconds: f64,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("seconds", &self.seconds)
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// Connects to `url` and writes the container's header.
    pub fn create(
        url: &str,
        format: PushFormat,
        video: Option<(Codec, &Probed)>,
        audio: Option<&Probed>,
    ) -> Result<Self, String> {
        let muxer_name = match format {
            PushFormat::Flv => "flv",
            PushFormat::Mpegts => "mpegts",
        };
        let mut options = Dictionary::new();
        options.set("rw_timeout", RW_TIMEOUT_US);
        let mut muxer = format::output_as_with(url, muxer_name, options)
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let aac = match audio {
            Some(opus) => Some(Aac::new(opus)?),
            None => None,
        };
        let mut add = |params: codec::Parameters, clock: i32| -> Result<usize, String> {
            let mut stream = muxer
                .add_stream(codec::Id::None)
                .map_err(|e| format!("adding a stream: {e}"))?;
            stream.set_parameters(params);
            stream.set_time_base(Rational::new(1, clock));
            Ok(stream.index())
        };
        let video_index = match video {
            Some((Codec::H264, probed)) => Some(add(probed.parameters.clone(), 90_000)?),
            Some((other, _)) => {
                return Err(format!(
                    "a restream carries H.264, and this session's video is {}",
                    other.name()
                ));
            }
            None => None,
        };
        let audio_index = match &aac {
            Some(a) => Some(add(a.parameters(), 48_000)?),
            None => None,
        };
        let mut o = Dictionary::new();
        if format == PushFormat::Flv {
            // A live stream has no duration or size to go back and fill in.
            o.set("flvflags", "no_duration_filesize");
        }
        muxer
            .write_header_with(o)
            .map_err(|e| format!("sending the header to {url}: {e}"))?;
        let time_base = |i: usize, fallback: i32| {
            muxer
                .stream(i)
                .map_or(Rational::new(1, fallback), |s| s.time_base())
        };
        Ok(Self {
            video: video_index.map(|i| (i, time_base(i, 90_000))),
            audio: audio_index.map(|i| (i, time_base(i, 48_000))),
            muxer,
            aac,
            seconds: 0.0,
        })
    }

    pub fn write(&mut self, frame: &Frame) -> Result<(), String> {
        let mut packets = Vec::new();
        let (target, clock) = match frame.codec {
            Codec::Opus => {
                let Some(aac) = self.aac.as_mut() else {
                    return Ok(());
                };
                aac.encode(frame, &mut packets)?;
                (self.audio, 48_000)
            }
            _ => {
                let mut packet = Packet::copy(&frame.data);
                packet.set_pts(Some(frame.pts));
                packet.set_dts(Some(frame.pts));
                if frame.keyframe {
                    packet.set_flags(ff::packet::Flags::KEY);
                }
                packets.push(packet);
                (self.video, 90_000)
            }
        };
        let Some((index, time_base)) = target else {
            return Ok(());
        };
        self.seconds = self.seconds.max(frame.pts as f64 / clock as f64);
        for mut packet in packets {
            packet.set_stream(index);
            packet.rescale_ts(Rational::new(1, clock), time_base);
            packet
                .write_interleaved(&mut self.muxer)
                .map_err(|e| format!("sending to the server: {e}"))?;
        }
        Ok(())
    }

    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Sends what the muxer holds and closes the connection.
    pub fn finish(mut self) -> Result<(), String> {
        self.muxer
            .write_trailer()
            .map_err(|e| format!("ending the stream: {e}"))
    }
}
