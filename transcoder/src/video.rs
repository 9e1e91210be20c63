//! Decoded video → output frames on a fixed grid → H.264 constrained baseline or VP8.
//!
//! Owns the video filter graph (tone mapping, aspect-keeping scale and pad, frame-rate
//! conversion, pixel format) and the encoder with its WebRTC settings. Output frames are
//! numbered on the output frame grid, which is what seeks and steps count in.
//!
//! Sizing: with `--width` and `--height`, the picture is scaled to fit inside that box keeping
//! its display aspect (sample aspect honoured, `--sar` overrides it) and padded with black; with
//! one of them, the other follows the aspect (rounded to even); with neither, the source's display
//! size (even) is kept.

use ff::{Dictionary, Rational as FfRational, codec, encoder, filter, format, frame, picture};
use ffmpeg_next as ff;

use crate::options::{Colorspace, Options, Rational, VideoCodec};
use crate::rtp::RtpTrack;
use crate::source::{Source, SourceError};

/// The frame properties a filter graph was built for; a change rebuilds the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InputShape {
    width: u32,
    height: u32,
    format: format::Pixel,
    hdr: bool,
}

/// Filters decoded frames into output frames of one size, rate and format.
pub struct VideoFilter {
    graph: Option<(filter::Graph, InputShape)>,
    out_width: u32,
    out_height: u32,
    fps: FfRational,
    sar: Option<Rational>,
    colorspace: Colorspace,
    tone_mapping: Option<String>,
    /// Time base of the timestamps of pushed frames (the source stream's).
    time_base: FfRational,
    /// Last input timestamp and the spacing before it (in `time_base`), so the end of input can be given
    /// a time: the frame-rate filter needs it to emit the last frame.
    last_pts: Option<i64>,
    last_step: i64,
}

impl std::fmt::Debug for VideoFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VideoFilter({}x{} @ {})",
            self.out_width, self.out_height, self.fps
        )
    }
}

/// Output size for a source of `w`×`h` with sample aspect `sar`, as the module doc says.
pub fn output_size(opts: &Options, w: u32, h: u32, sar: FfRational) -> (u32, u32) {
    let sar = opts.sar.map(|r| r.as_f64()).unwrap_or_else(|| {
        if sar.numerator() > 0 && sar.denominator() > 0 {
            sar.numerator() as f64 / sar.denominator() as f64
        } else {
            1.0
        }
    });
    let display_w = w as f64 * sar;
    let even = |v: f64| ((v / 2.0).round() as u32 * 2).max(2);
    let height = match (opts.height, opts.max_height) {
        (None, Some(max)) if h > max => Some(max),
        (height, _) => height,
    };
    match (opts.width, height) {
        (Some(bw), Some(bh)) => (bw & !1, bh & !1),
        (Some(bw), None) => (bw & !1, even(bw as f64 * h as f64 / display_w)),
        (None, Some(bh)) => (even(bh as f64 * display_w / h as f64), bh & !1),
        (None, None) => (even(display_w), even(h as f64)),
    }
}

/// The colour matrix to read an input with when it does not say (`None`: it says). Players
/// take untagged HD pictures (≥ 1280 wide or ≥ 720 high) as BT.709 and smaller ones as BT.601;
/// so do we, so that a viewer sees what a local player shows. It is also cheaper: for the
/// common untagged HD file, scaling keeps the matrix instead of converting it (a 1080p frame
/// took about 12 ms more CPU when read as BT.601 and converted to BT.709).
fn assumed_matrix(space: ff::color::Space, width: u32, height: u32) -> Option<&'static str> {
    use ff::color::Space;
    match space {
        Space::Unspecified | Space::Reserved => Some(if width >= 1280 || height >= 720 {
            "bt709"
        } else {
            "bt601"
        }),
        _ => None,
    }
}

impl VideoFilter {
    pub fn new(
        opts: &Options,
        out_width: u32,
        out_height: u32,
        fps: FfRational,
        time_base: FfRational,
    ) -> Self {
        Self {
            graph: None,
            out_width,
            out_height,
            fps,
            sar: opts.sar,
            colorspace: opts.colorspace,
            tone_mapping: opts.tone_mapping.clone(),
            time_base,
            last_pts: None,
            last_step: 0,
        }
    }

    /// Drops buffered frames (after a seek, the frame-rate filter starts over).
    pub fn reset(&mut self) {
        self.graph = None;
        self.last_pts = None;
    }

    /// Feeds one decoded frame (pts in the source's time base); output frames come from `pull`.
    pub fn push(&mut self, frame: &frame::Video) -> Result<(), ff::Error> {
        use ff::color::TransferCharacteristic as Trc;
        let hdr = matches!(
            frame.color_transfer_characteristic(),
            Trc::SMPTE2084 | Trc::ARIB_STD_B67
        );
        let shape = InputShape {
            width: frame.width(),
            height: frame.height(),
            format: frame.format(),
            hdr,
        };
        if self.graph.as_ref().is_none_or(|(_, s)| *s != shape) {
            if self.graph.is_some() {
                tracing::info!(?shape, "input picture changed; rebuilding the video filter");
            }
            self.graph = Some((self.build(shape, frame)?, shape));
        }
        if let (Some(last), Some(pts)) = (self.last_pts, frame.pts()) {
            if pts > last {
                self.last_step = pts - last;
            }
        }
        self.last_pts = frame.pts().or(self.last_pts);
        let (graph, _) = self.graph.as_mut().expect("built above");
        graph
            .get("in")
            .expect("graph has its source")
            .source()
            .add(frame)
    }

    /// The next output frame, numbered on the output grid in `pts` (frame index), if ready.
    pub fn pull(&mut self, out: &mut frame::Video) -> bool {
        let Some((graph, _)) = self.graph.as_mut() else {
            return false;
        };
        graph
            .get("out")
            .expect("graph has its sink")
            .sink()
            .frame(out)
            .is_ok()
    }

    /// Tells the graph the input ended, so it releases its last frames.
    pub fn flush(&mut self) {
        if let Some((graph, _)) = self.graph.as_mut() {
            let end = self.last_pts.map_or(0, |p| p + self.last_step);
            let _ = graph
                .get("in")
                .expect("graph has its source")
                .source()
                .close(end);
        }
    }

    fn build(&self, shape: InputShape, frame: &frame::Video) -> Result<filter::Graph, ff::Error> {
        let mut graph = filter::Graph::new();
        let sar = frame.aspect_ratio();
        let sar = if sar.numerator() > 0 {
            sar
        } else {
            FfRational::new(1, 1)
        };
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            shape.width,
            shape.height,
            ff::ffi::AVPixelFormat::from(shape.format) as i32,
            self.time_base.numerator(),
            self.time_base.denominator(),
            sar.numerator(),
            sar.denominator()
        );
        graph.add(
            &filter::find("buffer").ok_or(ff::Error::FilterNotFound)?,
            "in",
            &args,
        )?;
        graph.add(
            &filter::find("buffersink").ok_or(ff::Error::FilterNotFound)?,
            "out",
            "",
        )?;
        let mut chain = Vec::new();
        if let (true, Some(algo)) = (shape.hdr, &self.tone_mapping) {
            // BT.2100 PQ/HLG → linear light → BT.709 primaries → tone curve → BT.709 video range.
            chain.push(format!(
                "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap={algo}:desat=0,zscale=t=bt709:m=bt709:r=tv"
            ));
        }
        if let Some(r) = self.sar {
            chain.push(format!("setsar={}/{}", r.num, r.den));
        }
        let (w, h) = (self.out_width, self.out_height);
        // Square pixels first, so fitting keeps the display aspect.
        chain.push("scale=w='trunc(iw*sar/2)*2':h=ih,setsar=1".into());
        let input_matrix = assumed_matrix(frame.color_space(), shape.width, shape.height)
            .map(|m| format!(":in_color_matrix={m}"))
            .unwrap_or_default();
        chain.push(format!(
            "scale=w={w}:h={h}:force_original_aspect_ratio=decrease:force_divisible_by=2{input_matrix}:out_color_matrix={cm}:out_range=tv",
            cm = self.colorspace.scale_name()
        ));
        chain.push(format!(
            "pad=w={w}:h={h}:x=(ow-iw)/2:y=(oh-ih)/2:color=black,setsar=1"
        ));
        chain.push(format!(
            "fps=fps={}/{}:round=near",
            self.fps.numerator(),
            self.fps.denominator()
        ));
        chain.push("format=yuv420p".into());
        let spec = chain.join(",");
        graph.output("in", 0)?.input("out", 0)?.parse(&spec)?;
        graph.validate()?;
        Ok(graph)
    }
}

/// A lower rendition of the video (`--layer`): the main picture scaled, encoded on a thread
/// of its own with the main one's timestamps and keyframes, on a ring track of its own.
pub struct Rendition {
    /// None: the rendition is the main picture's size (another codec), sent as it is.
    pub scaler: Option<ff::software::scaling::Context>,
    pub encoder: EncoderThread,
    pub rtp: RtpTrack,
}

impl std::fmt::Debug for Rendition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rendition({:?})", self.rtp.info.layer)
    }
}

impl Rendition {
    /// A `width`x`height` rendition at `bitrate` of a main picture of `from` (width,
    /// height), named by its height, on ring track `track`, on the RTP clock of `clock`.
    pub fn new(
        opts: &Options,
        from: (u32, u32),
        (width, height, bitrate): (u32, u32, u64),
        fps: FfRational,
        track: u8,
        clock: &RtpTrack,
    ) -> Result<Self, String> {
        let mut o = opts.clone();
        o.video_bitrate = bitrate;
        // One slice: a small picture's frame is quick, and one packet run per frame is
        // cheapest to fan out.
        o.encoder_threads = 1;
        let mut r = Self::encoding(&o, from, (width, height), fps, track, clock)?;
        r.rtp.info.layer = Some(crate::control::LayerInfo {
            rid: format!("{height}p"),
            width,
            height,
            bitrate,
        });
        Ok(r)
    }

    /// The main picture (`size`) in another `codec`, for viewers that do not take the main
    /// one's: same bitrate and encoder threads, on ring track `track`, on `clock`'s RTP
    /// clock. Not a layer: it is a viewer's only choice in its codec.
    pub fn in_codec(
        opts: &Options,
        codec: VideoCodec,
        size: (u32, u32),
        fps: FfRational,
        track: u8,
        clock: &RtpTrack,
    ) -> Result<Self, String> {
        let mut o = opts.clone();
        o.codec = codec;
        Self::encoding(&o, size, size, fps, track, clock)
    }

    fn encoding(
        o: &Options,
        from: (u32, u32),
        (width, height): (u32, u32),
        fps: FfRational,
        track: u8,
        clock: &RtpTrack,
    ) -> Result<Self, String> {
        let encoder = VideoEncoder::new(o, width, height, fps)?;
        let mut rtp = encoder.rtp_track();
        rtp.set_index(track);
        rtp.share_clock(clock);
        let scaler = match from == (width, height) {
            true => None,
            false => Some(
                ff::software::scaling::Context::get(
                    format::Pixel::YUV420P,
                    from.0,
                    from.1,
                    format::Pixel::YUV420P,
                    width,
                    height,
                    ff::software::scaling::Flags::BILINEAR,
                )
                .map_err(|e| format!("a {width}x{height} scaler: {e}"))?,
            ),
        };
        Ok(Self {
            scaler,
            encoder: EncoderThread::spawn(encoder),
            rtp,
        })
    }

    /// Scales the main picture `frame` and queues it for encoding as the main one is.
    pub fn submit(&mut self, frame: &frame::Video, ts: i64, key: bool) -> Result<(), String> {
        let Some(scaler) = self.scaler.as_mut() else {
            return self.encoder.submit(frame.clone(), ts, key);
        };
        let mut out = frame::Video::empty();
        scaler
            .run(frame, &mut out)
            .map_err(|e| format!("scaling a rendition: {e}"))?;
        out.set_color_space(frame.color_space());
        out.set_color_range(frame.color_range());
        self.encoder.submit(out, ts, key)
    }
}

/// The video path of a session: filter, encoder and RTP track, with a one-frame lookahead.
pub struct VideoChain {
    pub filter: VideoFilter,
    pub encoder: EncoderThread,
    pub rtp: RtpTrack,
    /// Lower renditions (`--layer`), encoded from the same frames.
    pub renditions: Vec<Rendition>,
    pub width: u32,
    pub height: u32,
    /// The source has no more frames for the filter.
    pub source_done: bool,
    /// Output frames below this index are decoded but not shown (exact seek).
    pub drop_before: u64,
    /// A decoded, filtered frame waiting to be encoded (lookahead against audio).
    pub ahead: Option<(frame::Video, u64)>,
    pub scratch: frame::Video,
    /// While catching up to a seek's target: the latest decoded frame more than one output
    /// frame before it, not filtered (scaled) unless it turns out to be the one shown.
    pub held: Option<frame::Video>,
}

impl std::fmt::Debug for VideoChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VideoChain({}x{}, ahead {:?})",
            self.width,
            self.height,
            self.ahead.as_ref().map(|a| a.1)
        )
    }
}

impl VideoChain {
    /// Index of the next output frame (decoding and filtering from `source` as needed), or
    /// `None` at the end of the media or at `end_frame`. The frame waits in `ahead`.
    pub fn peek(
        &mut self,
        source: &mut Source,
        end_frame: Option<u64>,
    ) -> Result<Option<u64>, SourceError> {
        loop {
            if let Some((_, idx)) = &self.ahead {
                return Ok(if end_frame.is_some_and(|e| *idx >= e) {
                    None
                } else {
                    Some(*idx)
                });
            }
            let mut out = frame::Video::empty();
            if self.filter.pull(&mut out) {
                let idx = out.pts().unwrap_or(0).max(0) as u64;
                if idx >= self.drop_before {
                    self.ahead = Some((out, idx));
                }
                continue;
            }
            if self.source_done {
                return Ok(None);
            }
            if source.next_video(&mut self.scratch)? {
                if self.long_before_target(&self.scratch) {
                    // Keep it aside: only the last of these can be shown (by the frame-rate
                    // filter repeating it), so the others are never scaled.
                    let held = self.held.get_or_insert_with(frame::Video::empty);
                    std::mem::swap(held, &mut self.scratch);
                    continue;
                }
                if let Some(held) = self.held.take() {
                    push(&mut self.filter, &held);
                }
                push(&mut self.filter, &self.scratch);
            } else {
                if let Some(held) = self.held.take() {
                    push(&mut self.filter, &held);
                }
                self.filter.flush();
                self.source_done = true;
            }
        }
    }

    /// Whether a decoded frame (pts in the source's time base) lies more than one output frame
    /// before `drop_before`, the first frame to show.
    fn long_before_target(&self, frame: &frame::Video) -> bool {
        let (Some(pts), tb, fps) = (frame.pts(), self.filter.time_base, self.filter.fps) else {
            return false;
        };
        if self.drop_before == 0 || tb.denominator() == 0 || fps.denominator() == 0 {
            return false;
        }
        // pts·tb·fps < drop_before − 1, in integers.
        let lhs = pts as i128 * tb.numerator() as i128 * fps.numerator() as i128;
        let rhs =
            (self.drop_before as i128 - 1) * tb.denominator() as i128 * fps.denominator() as i128;
        lhs < rhs
    }

    /// Starts over after the source was repositioned: the next frame out is `target`.
    pub fn restart_at(&mut self, target: u64) {
        self.filter.reset();
        self.source_done = false;
        self.drop_before = target;
        self.ahead = None;
        self.held = None;
    }
}

fn push(filter: &mut VideoFilter, frame: &frame::Video) {
    if let Err(e) = filter.push(frame) {
        tracing::warn!("video frame dropped by the filter: {e}");
    }
}

/// The H.264 level (as `level_idc`) for a size and rate: the smallest from 3.1 up whose frame
/// size and macroblock rate limits hold (ITU-T H.264 Table A-1).
pub fn h264_level(width: u32, height: u32, fps: f64) -> u8 {
    let mbs = (width.div_ceil(16) * height.div_ceil(16)) as f64;
    const LEVELS: [(u8, f64, f64); 8] = [
        (31, 3600.0, 108_000.0),
        (32, 5120.0, 216_000.0),
        (40, 8192.0, 245_760.0),
        (41, 8192.0, 245_760.0),
        (42, 8704.0, 522_240.0),
        (50, 22_080.0, 589_824.0),
        (51, 36_864.0, 983_040.0),
        (52, 36_864.0, 2_073_600.0),
    ];
    LEVELS
        .iter()
        .find(|(_, fs, mbps)| mbs <= *fs && mbs * fps <= *mbps)
        .map_or(52, |l| l.0)
}

/// Output pixel rate (720p30) up to which one encoder thread, and so one slice per frame, is
/// the default: x264 `veryfast` codes such a frame in well under a frame time on one core.
const ONE_SLICE_PIXEL_RATE: f64 = 1280.0 * 720.0 * 30.0;

/// Encoder threads (with slice threading, slices per frame): `requested` (`--encoder-threads`),
/// or when it is 0, one up to [`ONE_SLICE_PIXEL_RATE`] and `threads` (`--threads`) above it. A
/// slice ends in a short RTP packet, and a short packet ends the gateway's batch of equal-sized
/// datagrams (UDP GSO), so every extra slice costs a system call per frame per viewer.
pub fn encoder_threads(requested: u32, threads: u32, width: u32, height: u32, fps: f64) -> u32 {
    match requested {
        0 if width as f64 * height as f64 * fps <= ONE_SLICE_PIXEL_RATE => 1,
        0 => threads,
        n => n,
    }
}

/// An encoder's own keyframe interval, in frames: never reached, as the player forces each
/// keyframe ([`gop_frames`]).
const NO_OWN_KEYFRAMES: u32 = 1 << 24;

/// Frames from one keyframe to the next at `gop_seconds` (`--gop`) and `fps`.
pub fn gop_frames(gop_seconds: f64, fps: FfRational) -> u64 {
    let fps = fps.numerator() as f64 / fps.denominator().max(1) as f64;
    ((gop_seconds * fps).round() as u64).max(1)
}

/// The video encoder with WebRTC-friendly settings.
pub struct VideoEncoder {
    encoder: encoder::Video,
    codec: VideoCodec,
    pub level_idc: u8,
}

impl std::fmt::Debug for VideoEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VideoEncoder({:?}, level {})",
            self.codec, self.level_idc
        )
    }
}

/// One encoded frame.
#[derive(Debug)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    /// Output timestamp, 90 kHz.
    pub ts: i64,
    pub key: bool,
}

impl VideoEncoder {
    pub fn new(opts: &Options, width: u32, height: u32, fps: FfRational) -> Result<Self, String> {
        let name = match opts.codec {
            VideoCodec::H264 => "libx264",
            VideoCodec::Vp8 => "libvpx",
        };
        let codec =
            encoder::find_by_name(name).ok_or(format!("this FFmpeg has no {name} encoder"))?;
        let mut ctx = codec::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| e.to_string())?;
        let fps_f = fps.numerator() as f64 / fps.denominator() as f64;
        // Keyframes come when the player asks (every GOP, on seeks and requests): the
        // encoder's own interval is longer than any session.
        let gop = NO_OWN_KEYFRAMES;
        ctx.set_width(width);
        ctx.set_height(height);
        ctx.set_format(format::Pixel::YUV420P);
        // Timestamps are the 90 kHz RTP clock, so pauses and seeks keep their real spacing.
        ctx.set_time_base(FfRational::new(1, 90_000));
        ctx.set_frame_rate(Some(fps));
        ctx.set_bit_rate(opts.video_bitrate as usize);
        ctx.set_max_b_frames(0);
        ctx.set_gop(gop);
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Slice,
            count: encoder_threads(opts.encoder_threads, opts.threads, width, height, fps_f)
                as usize,
            ..Default::default()
        });
        let (space, prim, trc) = match opts.colorspace {
            Colorspace::Bt709 => (
                ff::color::Space::BT709,
                ff::color::Primaries::BT709,
                ff::color::TransferCharacteristic::BT709,
            ),
            Colorspace::Bt601 => (
                ff::color::Space::SMPTE170M,
                ff::color::Primaries::SMPTE170M,
                ff::color::TransferCharacteristic::SMPTE170M,
            ),
            Colorspace::Bt2020 => (
                ff::color::Space::BT2020NCL,
                ff::color::Primaries::BT2020,
                ff::color::TransferCharacteristic::BT709,
            ),
        };
        ctx.set_colorspace(space);
        ctx.set_color_primaries(prim);
        ctx.set_color_transfer_characteristic(trc);
        ctx.set_color_range(ff::color::Range::MPEG);
        let level_idc = h264_level(width, height, fps_f);
        let mut o = Dictionary::new();
        match opts.codec {
            VideoCodec::H264 => {
                o.set("preset", "veryfast");
                o.set("tune", "zerolatency");
                o.set("profile", "baseline");
                o.set("level", &format!("{}.{}", level_idc / 10, level_idc % 10));
                // A forced keyframe is an IDR; SPS/PPS ride with every IDR; no scene cuts, so
                // keyframes come only when the player asks.
                o.set("forced-idr", "1");
                o.set(
                    "x264-params",
                    &format!("keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:bframes=0:aud=0:vbv-maxrate={k}:vbv-bufsize={k}", k = opts.video_bitrate / 1000),
                );
            }
            VideoCodec::Vp8 => {
                o.set("deadline", "realtime");
                o.set("cpu-used", "8");
                o.set("lag-in-frames", "0");
                o.set("error-resilient", "1");
                o.set("auto-alt-ref", "0");
                o.set("keyint_min", &gop.to_string());
            }
        }
        let encoder = ctx
            .open_with(o)
            .map_err(|e| format!("opening {name}: {e}"))?;
        Ok(Self {
            encoder,
            codec: opts.codec,
            level_idc,
        })
    }

    /// A fresh RTP track (on the main video track) for what this encoder makes.
    pub fn rtp_track(&self) -> RtpTrack {
        match self.codec {
            VideoCodec::H264 => RtpTrack::h264(self.level_idc),
            VideoCodec::Vp8 => RtpTrack::vp8(),
        }
    }

    /// Encodes `frame` at output timestamp `ts` (90 kHz); `key` forces an IDR / key frame.
    pub fn encode(
        &mut self,
        frame: &mut frame::Video,
        ts: i64,
        key: bool,
        out: &mut Vec<EncodedFrame>,
    ) -> Result<(), ff::Error> {
        frame.set_pts(Some(ts));
        frame.set_kind(if key {
            picture::Type::I
        } else {
            picture::Type::None
        });
        self.encoder.send_frame(frame)?;
        self.drain(out)
    }

    fn drain(&mut self, out: &mut Vec<EncodedFrame>) -> Result<(), ff::Error> {
        let mut packet = ff::Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => out.push(EncodedFrame {
                    data: packet.data().unwrap_or_default().to_vec(),
                    ts: packet.pts().unwrap_or(0),
                    key: packet.is_key(),
                }),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                    return Ok(());
                }
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The video encoder on a thread of its own, so decoding and scaling the next frame overlap
/// with encoding this one (x264 itself runs slices in parallel, but each call blocks until the
/// frame is done). Results come back in submission order.
pub struct EncoderThread {
    jobs: Option<std::sync::mpsc::SyncSender<(frame::Video, i64, bool)>>,
    results: std::sync::mpsc::Receiver<Result<Vec<EncodedFrame>, String>>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// Frames submitted whose result has not been collected.
    in_flight: usize,
    pub level_idc: u8,
}

impl std::fmt::Debug for EncoderThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncoderThread(level {}, {} in flight)",
            self.level_idc, self.in_flight
        )
    }
}

impl EncoderThread {
    pub fn spawn(mut encoder: VideoEncoder) -> Self {
        let level_idc = encoder.level_idc;
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<(frame::Video, i64, bool)>(4);
        let (result_tx, results) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("video-encoder".into())
            .spawn(move || {
                for (mut frame, ts, key) in job_rx {
                    let mut out = Vec::with_capacity(1);
                    let r = encoder.encode(&mut frame, ts, key, &mut out).map(|()| out);
                    if result_tx.send(r.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the encoder thread");
        Self {
            jobs: Some(jobs),
            results,
            handle: Some(handle),
            in_flight: 0,
            level_idc,
        }
    }

    /// Queues `frame` for encoding at 90 kHz timestamp `ts` (`key`: force an IDR).
    pub fn submit(&mut self, frame: frame::Video, ts: i64, key: bool) -> Result<(), String> {
        let jobs = self.jobs.as_ref().expect("jobs open until drop");
        jobs.send((frame, ts, key))
            .map_err(|_| "the encoder thread is gone".to_string())?;
        self.in_flight += 1;
        Ok(())
    }

    /// The encoded result of the oldest submitted frame, waiting for it if needed.
    /// The oldest submitted frame's result if the encoder has finished it, without waiting.
    pub fn try_collect(&mut self) -> Option<Result<Vec<EncodedFrame>, String>> {
        match self.results.try_recv() {
            Ok(r) => {
                self.in_flight -= 1;
                Some(r)
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Some(Err("the encoder thread is gone".to_string()))
            }
        }
    }

    pub fn collect(&mut self) -> Result<Vec<EncodedFrame>, String> {
        let r = self
            .results
            .recv()
            .map_err(|_| "the encoder thread is gone".to_string())?;
        self.in_flight -= 1;
        r
    }
}

impl Drop for EncoderThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_height_scales_down_only() {
        let opts = |max_height| Options {
            max_height,
            ..crate::options::Options::for_tests()
        };
        let square = FfRational::new(1, 1);
        assert_eq!(
            output_size(&opts(Some(720)), 1920, 1080, square),
            (1280, 720)
        );
        assert_eq!(output_size(&opts(Some(720)), 640, 360, square), (640, 360));
        assert_eq!(output_size(&opts(None), 1920, 1080, square), (1920, 1080));
    }

    #[test]
    fn levels_follow_size_and_rate() {
        assert_eq!(h264_level(1280, 720, 30.0), 31);
        assert_eq!(h264_level(640, 360, 30.0), 31);
        assert_eq!(h264_level(1920, 1080, 30.0), 40);
        assert_eq!(h264_level(1920, 1080, 60.0), 42);
        assert_eq!(h264_level(3840, 2160, 30.0), 51);
    }

    #[test]
    fn untagged_pictures_are_read_as_players_read_them() {
        use ff::color::Space;
        assert_eq!(
            assumed_matrix(Space::Unspecified, 1920, 1080),
            Some("bt709")
        );
        assert_eq!(assumed_matrix(Space::Unspecified, 1280, 534), Some("bt709"));
        assert_eq!(assumed_matrix(Space::Unspecified, 640, 360), Some("bt601"));
        assert_eq!(assumed_matrix(Space::Reserved, 720, 576), Some("bt601"));
        // A tagged picture is read as tagged, whatever its size.
        assert_eq!(assumed_matrix(Space::BT470BG, 1920, 1080), None);
        assert_eq!(assumed_matrix(Space::BT709, 640, 360), None);
    }
}
