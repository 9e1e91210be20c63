//! HLS: a session as a ladder of renditions, CMAF (fMP4) segments and playlists in a
//! directory that the gateway serves.
//!
//! Owns the ladder: the source's video copied as the top rendition, lower ones decoded once,
//! scaled and encoded (x264), every one with the session's audio as AAC (what every HLS player
//! takes); keyframes of the encoded renditions are forced where the source has its own, so all
//! renditions' segments start on the same frames and a player can switch between them. Each
//! rendition is one libavformat `hls` muxer (`NAME/index.m3u8`, `NAME/init.mp4`,
//! `NAME/segN.m4s`, a sliding window with old segments deleted); the master playlist
//! (`index.m3u8`) is written here once every rendition has its header. Finishing writes
//! `EXT-X-ENDLIST`. It does not read the ring (`frames.rs`) or serve anything (the gateway
//! does).

use std::path::{Path, PathBuf};

use ffmpeg_next::{
    self as ff, Dictionary, Packet, Rational, codec, decoder, encoder, format, frame,
    software::scaling,
};

use super::aac::{AAC_BITRATE, Aac};
use super::frames::{Codec, Frame};
use super::probe::Probed;

/// One rung of the ladder, as `--rendition` gives it: `copy` (the source as it is), `HEIGHT`
/// or `HEIGHT:BITRATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// `None`: the source's video, copied.
    pub height: Option<u32>,
    /// Bits/s of an encoded rung's video (0: chosen from its size).
    pub bitrate: u64,
}

impl std::str::FromStr for Rung {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "copy" {
            return Ok(Rung {
                height: None,
                bitrate: 0,
            });
        }
        let (h, b) = s.split_once(':').unwrap_or((s, "0"));
        let height: u32 = h
            .parse()
            .map_err(|_| format!("{s:?}: a rendition is copy, HEIGHT or HEIGHT:BITRATE"))?;
        let bitrate: u64 = b
            .parse()
            .map_err(|_| format!("{s:?}: the bitrate is bits per second"))?;
        if !(32..=4320).contains(&height) {
            return Err(format!("{s:?}: the height must be 32 to 4320"));
        }
        Ok(Rung {
            height: Some(height & !1),
            bitrate,
        })
    }
}

/// Settings of an HLS output.
#[derive(Debug, Clone)]
pub struct HlsSettings {
    pub dir: PathBuf,
    pub ladder: Vec<Rung>,
    /// The source's frame rate, for the encoders' rate control.
    pub fps: f64,
    /// Bits/s of the source's video, for the copied rung's `BANDWIDTH`.
    pub source_bitrate: u64,
    /// Longest keyframe interval wanted, seconds: segments end at the source's keyframes, and a
    /// source whose keyframes are further apart is asked for more.
    pub segment_seconds: f64,
    /// Segments each playlist lists.
    pub window: u32,
}

/// The encoding side of a rung below the source.
struct Scaled {
    scaler: Option<(scaling::Context, (u32, u32, format::Pixel))>,
    picture: frame::Video,
    encoder: encoder::Video,
    width: u32,
    height: u32,
}

struct Variant {
    name: String,
    muxer: format::context::Output,
    video: (usize, Rational),
    audio: Option<(usize, Rational)>,
    scaled: Option<Scaled>,
    width: u32,
    height: u32,
    bandwidth: u64,
    codecs: String,
}

/// An open HLS output.
pub struct Hls {
    variants: Vec<Variant>,
    decoder: Option<decoder::Video>,
    aac: Option<Aac>,
    dir: PathBuf,
    seconds: f64,
}

impl std::fmt::Debug for Hls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hls")
            .field("dir", &self.dir)
            .field("variants", &self.variants.len())
            .finish_non_exhaustive()
    }
}

fn err(what: &str) -> impl Fn(ff::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// `avc1.PPCCLL` from an SPS (its NAL header first).
fn avc1(sps: &[u8]) -> Option<String> {
    let b = sps.get(1..4)?;
    Some(format!("avc1.{:02x}{:02x}{:02x}", b[0], b[1], b[2]))
}

/// The SPS NAL unit of an Annex B access unit.
fn sps_of(annex_b: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let mut starts = Vec::new();
    while i + 3 <= annex_b.len() {
        if annex_b[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(annex_b.len(), |&e| e - 3);
        let nal = &annex_b[s..end];
        if nal.first().is_some_and(|h| h & 0x1f == 7) {
            // Trailing zero of a four-byte start code belongs to the next unit.
            let nal = match nal.last() {
                Some(0) => &nal[..nal.len() - 1],
                _ => nal,
            };
            return Some(nal);
        }
    }
    None
}

/// A rung's video bitrate when none is given: about 0.1 bit per pixel at 30 fps.
fn default_bitrate(width: u32, height: u32) -> u64 {
    ((width as u64 * height as u64 * 3) as f64).max(200_000.0) as u64
}

impl Hls {
    /// Opens the renditions for a source whose first video frame is `keyframe` (probed as
    /// `video`), with `audio` (Opus) if it has any; writes every header and the master playlist.
    pub fn create(
        settings: &HlsSettings,
        keyframe: &Frame,
        video: &Probed,
        audio: Option<&Probed>,
    ) -> Result<Self, String> {
        if keyframe.codec != Codec::H264 {
            return Err(format!(
                "HLS takes H.264 video, and this session's video is {}",
                keyframe.codec.name()
            ));
        }
        let (src_w, src_h) = video.size;
        let source_sps = sps_of(&keyframe.data).ok_or("the first keyframe has no SPS")?;
        // A rung as tall as the source or taller is the source itself, copied; the copy comes
        // first, then the others from the tallest, each once.
        let mut ladder: Vec<Rung> = settings
            .ladder
            .iter()
            .map(|r| match r.height {
                Some(h) if h >= src_h => Rung {
                    height: None,
                    bitrate: 0,
                },
                _ => *r,
            })
            .collect();
        ladder.sort_by_key(|r| std::cmp::Reverse(r.height.unwrap_or(u32::MAX)));
        ladder.dedup_by_key(|r| r.height);
        let needs_decoder = ladder.iter().any(|r| r.height.is_some());
        let decoder = match needs_decoder {
            true => Some(
                codec::context::Context::from_parameters(video.parameters.clone())
                    .and_then(|c| c.decoder().video())
                    .map_err(err("opening the H.264 decoder"))?,
            ),
            false => None,
        };
        let fps = if settings.fps > 0.0 {
            settings.fps
        } else {
            30.0
        };
        let aac = match audio {
            Some(opus) => Some(Aac::new(opus)?),
            None => None,
        };
        std::fs::create_dir_all(&settings.dir)
            .map_err(|e| format!("cannot create {}: {e}", settings.dir.display()))?;
        let mut variants = Vec::new();
        for rung in &ladder {
            let (scaled, width, height, bitrate, codecs) = match rung.height {
                None => (
                    None,
                    src_w,
                    src_h,
                    settings.source_bitrate,
                    avc1(source_sps).unwrap_or_else(|| "avc1.42e01f".into()),
                ),
                Some(h) => {
                    let w = ((src_w as u64 * h as u64 / src_h as u64) as u32 + 1) & !1;
                    let bitrate = match rung.bitrate {
                        0 => default_bitrate(w, h),
                        b => b,
                    };
                    let (encoder, level) = x264(w, h, fps, bitrate)?;
                    // Main profile (4d), no constraint flags.
                    let codecs = format!("avc1.4d00{level:02x}");
                    let scaled = Scaled {
                        scaler: None,
                        picture: frame::Video::new(format::Pixel::YUV420P, w, h),
                        encoder,
                        width: w,
                        height: h,
                    };
                    (Some(scaled), w, h, bitrate, codecs)
                }
            };
            let name = format!("{height}p");
            let variant_dir = settings.dir.join(&name);
            std::fs::create_dir_all(&variant_dir)
                .map_err(|e| format!("cannot create {}: {e}", variant_dir.display()))?;
            let playlist = variant_dir.join("index.m3u8");
            let mut muxer =
                format::output_as(&playlist, "hls").map_err(err("opening the HLS muxer"))?;
            let video_params = match &scaled {
                None => video.parameters.clone(),
                Some(s) => codec::Parameters::from(&s.encoder),
            };
            let mut stream = muxer
                .add_stream(codec::Id::None)
                .map_err(err("adding a video stream"))?;
            stream.set_parameters(video_params);
            stream.set_time_base(Rational::new(1, 90_000));
            let video_index = stream.index();
            let audio_index = match &aac {
                Some(a) => {
                    let mut stream = muxer
                        .add_stream(codec::Id::None)
                        .map_err(err("adding an audio stream"))?;
                    stream.set_parameters(a.parameters());
                    stream.set_time_base(Rational::new(1, 48_000));
                    Some(stream.index())
                }
                None => None,
            };
            let mut o = Dictionary::new();
            // A segment per keyframe interval: the muxer cuts at the first keyframe after
            // `hls_time`, so a short one cuts at every keyframe and no segment is longer than
            // the source's GOP (2 s for Wisp's transcodes), an extra keyframe (a viewer's
            // request) making a shorter one rather than a longer one.
            o.set("hls_time", "0.05");
            o.set("hls_list_size", &settings.window.to_string());
            o.set("hls_segment_type", "fmp4");
            o.set("hls_fmp4_init_filename", "init.mp4");
            o.set(
                "hls_segment_filename",
                &variant_dir.join("seg%d.m4s").display().to_string(),
            );
            // Playlists and segments appear whole (written aside, then renamed), old segments
            // go, and each segment starts with a keyframe.
            o.set(
                "hls_flags",
                "delete_segments+temp_file+independent_segments+program_date_time",
            );
            muxer
                .write_header_with(o)
                .map_err(err("writing the HLS header"))?;
            let video_tb = muxer
                .stream(video_index)
                .map_or(Rational::new(1, 90_000), |s| s.time_base());
            let audio = audio_index.map(|i| {
                (
                    i,
                    muxer
                        .stream(i)
                        .map_or(Rational::new(1, 48_000), |s| s.time_base()),
                )
            });
            let bandwidth = bitrate + if aac.is_some() { AAC_BITRATE as u64 } else { 0 };
            variants.push(Variant {
                name,
                muxer,
                video: (video_index, video_tb),
                audio,
                scaled,
                width,
                height,
                bandwidth,
                codecs,
            });
        }
        let hls = Self {
            variants,
            decoder,
            aac,
            dir: settings.dir.clone(),
            seconds: 0.0,
        };
        hls.write_master()?;
        Ok(hls)
    }

    /// The master playlist: every rendition, highest first.
    fn write_master(&self) -> Result<(), String> {
        let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        let mut variants: Vec<&Variant> = self.variants.iter().collect();
        variants.sort_by_key(|v| std::cmp::Reverse(v.height));
        for v in variants {
            let codecs = match self.aac {
                Some(_) => format!("{},mp4a.40.2", v.codecs),
                None => v.codecs.clone(),
            };
            text.push_str(&format!(
                "#EXT-X-STREAM-INF:BANDWIDTH={},RESOLUTION={}x{},CODECS=\"{codecs}\"\n{}/index.m3u8\n",
                v.bandwidth * 11 / 10,
                v.width,
                v.height,
                v.name
            ));
        }
        write_whole(&self.dir.join("index.m3u8"), text.as_bytes())
    }

    /// The renditions' names and sizes, for people.
    pub fn describe(&self) -> String {
        self.variants
            .iter()
            .map(|v| match v.scaled {
                None => format!("{} (copied)", v.name),
                Some(_) => format!(
                    "{} ({} kb/s)",
                    v.name,
                    (v.bandwidth - AAC_BITRATE as u64) / 1000
                ),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Media seconds written so far.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    pub fn write(&mut self, frame: &Frame) -> Result<(), String> {
        match frame.codec {
            Codec::Opus => self.write_audio(frame),
            _ => self.write_video(frame),
        }
    }

    fn write_video(&mut self, frame: &Frame) -> Result<(), String> {
        self.seconds = self.seconds.max(frame.pts as f64 / 90_000.0);
        for v in self.variants.iter_mut().filter(|v| v.scaled.is_none()) {
            let mut packet = Packet::copy(&frame.data);
            packet.set_pts(Some(frame.pts));
            packet.set_dts(Some(frame.pts));
            if frame.keyframe {
                packet.set_flags(ff::packet::Flags::KEY);
            }
            write(&mut v.muxer, packet, v.video, Rational::new(1, 90_000))?;
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(());
        };
        let mut packet = Packet::copy(&frame.data);
        packet.set_pts(Some(frame.pts));
        packet.set_dts(Some(frame.pts));
        if decoder.send_packet(&packet).is_err() {
            // A frame the decoder cannot take is skipped; the next keyframe recovers.
            return Ok(());
        }
        let mut picture = frame::Video::empty();
        while decoder.receive_frame(&mut picture).is_ok() {
            let pts = picture.pts().unwrap_or(frame.pts);
            let key = picture.is_key();
            for v in self.variants.iter_mut() {
                let Some(s) = v.scaled.as_mut() else { continue };
                let shape = (picture.width(), picture.height(), picture.format());
                if s.scaler.as_ref().is_none_or(|(_, have)| *have != shape) {
                    let ctx = scaling::Context::get(
                        shape.2,
                        shape.0,
                        shape.1,
                        format::Pixel::YUV420P,
                        s.width,
                        s.height,
                        scaling::Flags::BILINEAR,
                    )
                    .map_err(err("scaling"))?;
                    s.scaler = Some((ctx, shape));
                }
                let (scaler, _) = s.scaler.as_mut().expect("made above");
                scaler
                    .run(&picture, &mut s.picture)
                    .map_err(err("scaling"))?;
                s.picture.set_pts(Some(pts));
                s.picture.set_kind(if key {
                    ff::picture::Type::I
                } else {
                    ff::picture::Type::None
                });
                s.encoder.send_frame(&s.picture).map_err(err("encoding"))?;
                drain_video(&mut s.encoder, &mut v.muxer, v.video)?;
            }
        }
        Ok(())
    }

    fn write_audio(&mut self, frame: &Frame) -> Result<(), String> {
        let Some(aac) = self.aac.as_mut() else {
            return Ok(());
        };
        let mut packets = Vec::new();
        aac.encode(frame, &mut packets)?;
        for packet in packets {
            for v in self.variants.iter_mut() {
                if let Some(audio) = v.audio {
                    write(
                        &mut v.muxer,
                        packet.clone(),
                        audio,
                        Rational::new(1, 48_000),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Flushes the encoders and ends every playlist (`EXT-X-ENDLIST`).
    pub fn finish(mut self) -> Result<(), String> {
        for v in self.variants.iter_mut() {
            if let Some(s) = v.scaled.as_mut() {
                let _ = s.encoder.send_eof();
                drain_video(&mut s.encoder, &mut v.muxer, v.video)?;
            }
            v.muxer
                .write_trailer()
                .map_err(err("ending the playlist"))?;
        }
        Ok(())
    }
}

/// Writes `packet` (times in `from`) to stream `(index, time base)` of `muxer`.
fn write(
    muxer: &mut format::context::Output,
    mut packet: Packet,
    (index, time_base): (usize, Rational),
    from: Rational,
) -> Result<(), String> {
    packet.set_stream(index);
    packet.rescale_ts(from, time_base);
    packet
        .write_interleaved(muxer)
        .map_err(err("writing a segment"))
}

fn drain_video(
    encoder: &mut encoder::Video,
    muxer: &mut format::context::Output,
    stream: (usize, Rational),
) -> Result<(), String> {
    let mut packet = Packet::empty();
    while encoder.receive_packet(&mut packet).is_ok() {
        write(muxer, packet.clone(), stream, Rational::new(1, 90_000))?;
    }
    Ok(())
}

/// An x264 encoder for a rung, and the level it signals. Keyframes come only where the source
/// has them (forced), so segments of every rendition line up.
fn x264(width: u32, height: u32, fps: f64, bitrate: u64) -> Result<(encoder::Video, u8), String> {
    let codec = encoder::find_by_name("libx264").ok_or("this FFmpeg has no libx264 encoder")?;
    let mut ctx = codec::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| e.to_string())?;
    ctx.set_width(width);
    ctx.set_height(height);
    ctx.set_format(format::Pixel::YUV420P);
    ctx.set_time_base(Rational::new(1, 90_000));
    let rate = Rational::new((fps * 1000.0).round() as i32, 1000);
    ctx.set_frame_rate(Some(rate));
    ctx.set_bit_rate(bitrate as usize);
    ctx.set_max_b_frames(0);
    ctx.set_flags(codec::Flags::GLOBAL_HEADER);
    let level = crate::video::h264_level(width, height, fps);
    let mut o = Dictionary::new();
    o.set("preset", "veryfast");
    o.set("tune", "zerolatency");
    o.set("profile", "main");
    o.set("level", &format!("{}.{}", level / 10, level % 10));
    o.set("forced-idr", "1");
    let k = bitrate / 1000;
    o.set(
        "x264-params",
        &format!(
            "keyint=infinite:scenecut=0:bframes=0:vbv-maxrate={}:vbv-bufsize={}",
            k * 3 / 2,
            k * 2
        ),
    );
    let encoder = ctx
        .open_with(o)
        .map_err(|e| format!("opening libx264 for {width}x{height}: {e}"))?;
    Ok((encoder, level))
}

/// Writes `path` whole: to a temporary file beside it, then renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_read_as_the_command_line_gives_them() {
        assert_eq!(
            "copy".parse(),
            Ok(Rung {
                height: None,
                bitrate: 0
            })
        );
        assert_eq!(
            "360".parse(),
            Ok(Rung {
                height: Some(360),
                bitrate: 0
            })
        );
        assert_eq!(
            "181:300000".parse(),
            Ok(Rung {
                height: Some(180),
                bitrate: 300_000
            }),
            "heights are even"
        );
        assert!("tall".parse::<Rung>().is_err());
        assert!("10".parse::<Rung>().is_err());
        assert!("360:fast".parse::<Rung>().is_err());
    }

    #[test]
    fn the_codecs_string_comes_from_the_sps() {
        let au = [
            0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88,
        ];
        let sps = sps_of(&au).unwrap();
        assert_eq!(sps, [0x67, 0x42, 0xe0, 0x1f, 0xda]);
        assert_eq!(avc1(sps).as_deref(), Some("avc1.42e01f"));
        assert_eq!(sps_of(&[0, 0, 1, 0x65, 0x88]), None);
    }
}
