//! Where decoded frames come from: an input libavformat opens (file, http(s), HLS, ...) or the
//! built-in `demo` generator.
//!
//! Owns opening inputs (with a deadline and a stop flag FFmpeg polls), demuxing, decoding,
//! seeking to a point at or before a time, and counting corrupt packets. Frames come out with
//! timestamps in seconds from the start of the media. Scaling, filtering and encoding are
//! elsewhere (`video.rs`, `audio.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ff::{
    Dictionary, Packet, Rational as FfRational, codec, decoder, filter, format, frame, media,
};
use ffmpeg_next as ff;

use crate::options::InputSpec;

/// How long opening an input may take before we give up (the budget is 10 s to exit).
const OPEN_TIMEOUT: Duration = Duration::from_secs(8);
/// Packets queued for one stream while the other is consumed; past this the oldest go.
const MAX_QUEUED_PACKETS: usize = 4096;

/// Why a source failed. Open failures are the input's (or the operator's) fault; the message is
/// FFmpeg's reason with the URL.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open input '{url}': {reason}")]
    Open { url: String, reason: String },
    #[error("input '{url}' has no {what} stream")]
    NoStream { url: String, what: &'static str },
    #[error("input '{url}': {reason}")]
    Read { url: String, reason: String },
    #[error("stopped")]
    Stopped,
}

/// Facts about the video a source produces.
#[derive(Debug, Clone, Copy)]
pub struct VideoFacts {
    pub fps: FfRational,
}

/// A frame source: a demuxed input or the demo generator.
pub enum Source {
    File(Box<FileSource>),
    Demo(Box<DemoSource>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(s) => write!(f, "File({})", s.url),
            Source::Demo(_) => f.write_str("Demo"),
        }
    }
}

impl Source {
    /// Opens `spec`. `want_video`: decode its video (only the first input's is used).
    pub fn open(
        spec: &InputSpec,
        want_video: bool,
        threads: u32,
        lowres: u8,
        live: bool,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        if spec.is_demo() {
            return Ok(Source::Demo(Box::new(DemoSource::new(0.0)?)));
        }
        Ok(Source::File(Box::new(FileSource::open(
            spec, want_video, threads, lowres, live, stop,
        )?)))
    }

    pub fn video_facts(&self) -> Option<VideoFacts> {
        match self {
            Source::File(s) => s.video.as_ref().map(|v| VideoFacts { fps: v.fps }),
            Source::Demo(_) => Some(VideoFacts {
                fps: FfRational::new(30, 1),
            }),
        }
    }

    /// The time base of `next_video` timestamps.
    pub fn video_time_base(&self) -> FfRational {
        match self {
            Source::File(s) => s
                .video
                .as_ref()
                .map_or(FfRational::new(1, 1_000_000), |v| v.time_base),
            Source::Demo(_) => FfRational::new(1, 30),
        }
    }

    /// Gives back a frame `next_video` returned, so the next call returns it again (the player
    /// probes the first frame's size without seeking, which live inputs cannot do).
    pub fn unread_video(&mut self, frame: frame::Video) -> Result<(), SourceError> {
        match self {
            Source::File(s) => {
                s.pushback = Some(frame);
                Ok(())
            }
            Source::Demo(_) => self.seek(0.0),
        }
    }

    /// Length of the media in seconds, if it has one (files; not live URLs or the demo).
    pub fn duration(&self) -> Option<f64> {
        match self {
            Source::File(s) => s.duration,
            Source::Demo(_) => None,
        }
    }

    /// Channel count of the audio this source decodes, if it has audio.
    pub fn audio_channels(&self) -> Option<u32> {
        match self {
            Source::File(s) => s
                .audio
                .as_ref()
                .map(|a| a.decoder.channel_layout().channels() as u32),
            Source::Demo(_) => Some(1),
        }
    }

    /// The source's video as people name it: codec, profile, size, rate (`None` for the demo).
    pub fn describe_video(&self) -> Option<String> {
        let Source::File(s) = self else { return None };
        let v = s.video.as_ref()?;
        let fps = v.fps.numerator() as f64 / v.fps.denominator().max(1) as f64;
        Some(
            [
                Some(v.decoder.id().name().to_string()),
                profile_label(v.decoder.profile()),
                Some(format!("{}x{}", v.decoder.width(), v.decoder.height())),
                Some(format!("{} fps", (fps * 100.0).round() / 100.0)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        )
    }

    /// The source's audio as people name it: codec, rate, channels.
    pub fn describe_audio(&self) -> Option<String> {
        let Source::File(s) = self else { return None };
        Some(describe_audio_decoder(&s.audio.as_ref()?.decoder))
    }

    /// Whether the source's audio should be decoded (false drops its audio packets).
    pub fn set_want_audio(&mut self, want: bool) {
        if let Source::File(s) = self {
            s.want_audio = want;
            if !want {
                s.audio_queue.clear();
            }
        }
    }

    /// Positions the source at or before `seconds`; frames before the target still come out
    /// (the caller drops them for an exact seek).
    pub fn seek(&mut self, seconds: f64) -> Result<(), SourceError> {
        match self {
            Source::File(s) => s.seek(seconds),
            Source::Demo(d) => {
                **d = DemoSource::new(seconds)?;
                Ok(())
            }
        }
    }

    /// The next decoded video frame (`frame.pts()` from the start of the media, in
    /// `video_time_base()`), or `None` at the end.
    pub fn next_video(&mut self, out: &mut frame::Video) -> Result<bool, SourceError> {
        match self {
            Source::File(s) => s.next_video(out),
            Source::Demo(d) => d.next_video(out),
        }
    }

    /// The next decoded audio frame (pts in microseconds from the start), or `None` at the end.
    pub fn next_audio(&mut self, out: &mut frame::Audio) -> Result<bool, SourceError> {
        match self {
            Source::File(s) => s.next_audio(out),
            Source::Demo(d) => d.next_audio(out),
        }
    }

    /// Packets that failed to demux or decode and were skipped.
    pub fn corrupt_packets(&self) -> u64 {
        match self {
            Source::File(s) => s.corrupt,
            Source::Demo(_) => 0,
        }
    }
}

/// An audio decoder's input as people name it: codec, rate, channels.
pub fn describe_audio_decoder(decoder: &decoder::Audio) -> String {
    format!(
        "{} {} Hz {} ch",
        decoder.id().name(),
        decoder.rate(),
        decoder.channel_layout().channels()
    )
}

/// A codec profile as FFmpeg names it ("High", "Constrained Baseline"), if it has one.
pub fn profile_label(profile: ff::codec::Profile) -> Option<String> {
    use ff::codec::Profile;
    let name = match profile {
        Profile::Unknown | Profile::Reserved => return None,
        Profile::H264(p) => format!("{p:?}"),
        Profile::HEVC(p) => format!("{p:?}"),
        Profile::AAC(p) => format!("{p:?}"),
        Profile::VP9(p) => format!("{p:?}"),
        _ => return None,
    };
    // CamelCase → words ("ConstrainedBaseline" → "Constrained Baseline"; "HEv2" stays).
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if prev_lower && c.is_ascii_uppercase() {
            out.push(' ');
        }
        prev_lower = c.is_ascii_lowercase();
        out.push(c);
    }
    Some(out)
}

/// One decoded stream of a demuxed input.
struct Stream<D> {
    index: usize,
    decoder: D,
    time_base: FfRational,
    /// The stream's first timestamp, subtracted so media time starts at 0.
    start: i64,
    fps: FfRational,
    /// The decoder has been told the input ended.
    flushed: bool,
    /// Last timestamp handed out (video: stream time base; audio: µs), to invent one for frames
    /// that have none.
    last_us: Option<i64>,
    /// After a seek: packets stamped before this (stream time base) are decoded only if other
    /// frames refer to them; nothing before it is shown (see [`SKIP_MARGIN_S`]).
    skip_before: Option<i64>,
    /// Whether the decoder is set to skip non-reference frames now.
    skipping: bool,
}

/// How far before a seek's target frames are still decoded in full: the frame-rate filter may
/// show a frame stamped up to one output frame before the target (down to 10 fps here).
const SKIP_MARGIN_S: f64 = 0.1;

/// An input opened with libavformat.
pub struct FileSource {
    url: String,
    input: format::context::Input,
    video: Option<Stream<decoder::Video>>,
    audio: Option<Stream<decoder::Audio>>,
    want_audio: bool,
    video_queue: VecDeque<Packet>,
    audio_queue: VecDeque<Packet>,
    /// A decoded frame given back by `Source::unread_video`, returned before decoding more.
    pushback: Option<frame::Video>,
    demux_eof: bool,
    /// Where media time 0 is, in the container's µs (seeks are in those).
    start_us: i64,
    duration: Option<f64>,
    corrupt: u64,
}

/// Pixels per second up to which a live stream is decoded on slice threads (1080p60).
const LIVE_SLICE_THREADS_MAX_PIXEL_RATE: f64 = 1920.0 * 1088.0 * 60.0;

fn ff_reason(e: ff::Error) -> String {
    e.to_string()
}

/// Opens `spec` with libavformat: its streams probed, a deadline on opening, `stop` polled
/// throughout. `live`: a publisher's stream, probed briefly and read without buffering.
pub fn open_input(
    spec: &InputSpec,
    live: bool,
    stop: &Arc<AtomicBool>,
) -> Result<format::context::Input, SourceError> {
    let url = spec.url.clone();
    let open_err = |reason: String| SourceError::Open {
        url: url.clone(),
        reason,
    };
    let mut opts = Dictionary::new();
    // Network reads that stall this long fail instead of hanging the session.
    opts.set("rw_timeout", "10000000");
    if let Some(n) = spec.channel_count {
        opts.set("ch_layout", &format!("{n}c"));
        opts.set("channels", &n.to_string());
    }
    if live {
        // A publisher's stream states its codecs in its first tags or tables: a second finds
        // them, where the default 5 s of probing delays the first frame as long. Not less: an
        // MPEG-TS muxer may hold audio up to 0.7 s behind video (FFmpeg's muxdelay), and a
        // probe that ends before the first audio packet leaves the publish without audio.
        opts.set("analyzeduration", "1000000");
        opts.set("probesize", "1000000");
        opts.set("fflags", "nobuffer");
    }
    // The deadline applies while opening; afterwards only the stop flag interrupts.
    let deadline_ms = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    deadline_ms.store(OPEN_TIMEOUT.as_millis() as u64, Ordering::Relaxed);
    let interrupt = {
        let deadline_ms = deadline_ms.clone();
        let stop = stop.clone();
        move || {
            let d = deadline_ms.load(Ordering::Relaxed);
            stop.load(Ordering::Relaxed) || (d > 0 && started.elapsed().as_millis() as u64 > d)
        }
    };
    let input =
        format::input_with_interrupt_and_dictionary(&spec.url, interrupt, opts).map_err(|e| {
            if stop.load(Ordering::Relaxed) {
                SourceError::Stopped
            } else if started.elapsed() >= OPEN_TIMEOUT {
                open_err(format!(
                    "timed out after {} s ({e})",
                    OPEN_TIMEOUT.as_secs()
                ))
            } else {
                open_err(ff_reason(e))
            }
        })?;
    deadline_ms.store(0, Ordering::Relaxed);
    Ok(input)
}

impl FileSource {
    fn open(
        spec: &InputSpec,
        want_video: bool,
        threads: u32,
        lowres: u8,
        live: bool,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        let url = spec.url.clone();
        let open_err = |reason: String| SourceError::Open {
            url: url.clone(),
            reason,
        };
        let input = open_input(spec, live, &stop)?;

        let duration = (input.duration() > 0).then(|| input.duration() as f64 / 1e6);
        let video = match (want_video, input.streams().best(media::Type::Video)) {
            (true, Some(st)) => {
                let fps = [st.avg_frame_rate(), st.rate()]
                    .into_iter()
                    .find(|r| {
                        r.numerator() > 0
                            && r.denominator() > 0
                            && r.numerator() / r.denominator().max(1) <= 240
                    })
                    .unwrap_or(FfRational::new(30, 1));
                let open = |kind| {
                    let mut ctx = codec::Context::from_parameters(st.parameters())
                        .map_err(|e| open_err(ff_reason(e)))?;
                    ctx.set_threading(codec::threading::Config {
                        kind,
                        count: threads as usize,
                        ..Default::default()
                    });
                    let mut dopts = Dictionary::new();
                    if lowres > 0 {
                        dopts.set("lowres", &lowres.to_string());
                    }
                    let id = ctx.id();
                    let codec = decoder::find(id)
                        .ok_or_else(|| open_err(format!("no decoder for video codec {id:?}")))?;
                    ctx.decoder()
                        .open_as_with(codec, dopts)
                        .and_then(|d| d.video())
                        .map_err(|e| open_err(format!("video decoder: {e}")))
                };
                // Frame threads decode frames side by side, each picture coming out a frame
                // later per thread: a live stream's would wait that long for nothing (its
                // frames come one at a time), so it decodes on slice threads, which add no
                // delay but little speed to an encoder's one-slice frames. Past 1080p60 one
                // thread may not keep up: such a stream keeps frame threads.
                let mut dec = open(if live {
                    codec::threading::Type::Slice
                } else {
                    codec::threading::Type::Frame
                })?;
                let pixel_rate = dec.width() as f64 * dec.height() as f64 * fps.numerator() as f64
                    / fps.denominator().max(1) as f64;
                if live && pixel_rate > LIVE_SLICE_THREADS_MAX_PIXEL_RATE {
                    dec = open(codec::threading::Type::Frame)?;
                }
                Some(Stream {
                    index: st.index(),
                    decoder: dec,
                    time_base: st.time_base(),
                    start: if st.start_time() == i64::MIN {
                        0
                    } else {
                        st.start_time().max(0)
                    },
                    fps,
                    flushed: false,
                    skip_before: None,
                    skipping: false,
                    last_us: None,
                })
            }
            _ => None,
        };
        let audio = match input.streams().best(media::Type::Audio) {
            Some(st) => {
                let mut ctx = codec::Context::from_parameters(st.parameters())
                    .map_err(|e| open_err(ff_reason(e)))?;
                ctx.set_threading(codec::threading::Config {
                    kind: codec::threading::Type::Frame,
                    count: 1,
                    ..Default::default()
                });
                let dec = ctx
                    .decoder()
                    .audio()
                    .map_err(|e| open_err(format!("audio decoder: {e}")))?;
                let start = if st.start_time() == i64::MIN {
                    0
                } else {
                    st.start_time().max(0)
                };
                Some(Stream {
                    index: st.index(),
                    decoder: dec,
                    time_base: st.time_base(),
                    start,
                    fps: FfRational::new(0, 1),
                    flushed: false,
                    last_us: None,
                    skip_before: None,
                    skipping: false,
                })
            }
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return Err(SourceError::NoStream {
                url: spec.url.clone(),
                what: if want_video {
                    "video or audio"
                } else {
                    "audio"
                },
            });
        }
        let to_us = |start: i64, tb: FfRational| {
            start as i128 * 1_000_000 * tb.numerator() as i128 / tb.denominator().max(1) as i128
        };
        let start_us = [
            video.as_ref().map(|v| to_us(v.start, v.time_base)),
            audio.as_ref().map(|a| to_us(a.start, a.time_base)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0) as i64;
        tracing::info!(url = %spec.url, format = input.format().name(), ?duration, video = video.is_some(), audio = audio.is_some(), "opened input");
        Ok(Self {
            url: spec.url.clone(),
            input,
            video,
            audio,
            want_audio: true,
            video_queue: VecDeque::new(),
            audio_queue: VecDeque::new(),
            pushback: None,
            demux_eof: false,
            start_us,
            duration,
            corrupt: 0,
        })
    }

    fn seek(&mut self, seconds: f64) -> Result<(), SourceError> {
        let ts = self.start_us + (seconds * 1e6) as i64;
        self.input
            .seek(ts, ..ts + 1)
            .map_err(|e| SourceError::Read {
                url: self.url.clone(),
                reason: format!("seek to {seconds:.3} s failed: {e}"),
            })?;
        self.video_queue.clear();
        self.audio_queue.clear();
        self.pushback = None;
        self.demux_eof = false;
        if let Some(v) = &mut self.video {
            v.decoder.flush();
            v.flushed = false;
            v.last_us = None;
            // Catching up from the keyframe before the target: frames nothing refers to
            // (typically half of them, the non-reference B-frames) need no decoding.
            let tb = v.time_base;
            let skip_s = seconds - SKIP_MARGIN_S;
            v.skip_before = (skip_s > 0.0 && tb.numerator() > 0).then(|| {
                v.start + (skip_s * tb.denominator() as f64 / tb.numerator() as f64) as i64
            });
        }
        if let Some(a) = &mut self.audio {
            a.decoder.flush();
            a.flushed = false;
            a.last_us = None;
        }
        Ok(())
    }

    /// Reads one packet into the queue of its stream. Returns false at the end of the input.
    fn demux_one(&mut self) -> Result<bool, SourceError> {
        if self.demux_eof {
            return Ok(false);
        }
        let mut packet = Packet::empty();
        match packet.read(&mut self.input) {
            Ok(()) => {
                // The demuxer saw damage (e.g. MPEG-TS continuity errors); the decoder still tries.
                if packet.is_corrupt() {
                    self.corrupt += 1;
                }
                let idx = packet.stream();
                if self.video.as_ref().is_some_and(|v| v.index == idx) {
                    push_bounded(&mut self.video_queue, packet);
                } else if self.want_audio && self.audio.as_ref().is_some_and(|a| a.index == idx) {
                    push_bounded(&mut self.audio_queue, packet);
                }
                Ok(true)
            }
            Err(ff::Error::Eof) => {
                self.demux_eof = true;
                Ok(false)
            }
            Err(ff::Error::InvalidData) => {
                self.corrupt += 1;
                Ok(true)
            }
            Err(ff::Error::Exit) => Err(SourceError::Stopped),
            // I/O errors stick to the AVIOContext: treat them as the end, after saying so.
            Err(e) => {
                tracing::warn!(url = %self.url, "read error, treating as end of input: {e}");
                self.demux_eof = true;
                Ok(false)
            }
        }
    }

    fn next_video(&mut self, out: &mut frame::Video) -> Result<bool, SourceError> {
        if let Some(frame) = self.pushback.take() {
            *out = frame;
            return Ok(true);
        }
        if !self.decode_next(Kind::Video, out)? {
            return Ok(false);
        }
        let v = self
            .video
            .as_mut()
            .expect("decode_next found a video stream");
        if out.is_corrupt() {
            self.corrupt += 1;
        }
        // Video keeps the stream's own time base: the frame-rate filter must see exact
        // timestamps to pick the same frames the ffmpeg CLI picks.
        let pts = match out.timestamp().or(out.pts()) {
            Some(t) => t.saturating_sub(v.start),
            None => v.last_us.map_or(0, |l| l + frame_step(v.time_base, v.fps)),
        };
        v.last_us = Some(pts);
        out.set_pts(Some(pts));
        Ok(true)
    }

    fn next_audio(&mut self, out: &mut frame::Audio) -> Result<bool, SourceError> {
        if !self.decode_next(Kind::Audio, out)? {
            return Ok(false);
        }
        let a = self
            .audio
            .as_mut()
            .expect("decode_next found an audio stream");
        let us = frame_us(
            out.timestamp().or(out.pts()),
            a.start,
            a.time_base,
            &mut a.last_us,
        );
        out.set_pts(Some(us));
        if out.channel_layout().is_empty() || out.channel_layout().channels() == 0 {
            let n = out.channels();
            out.set_channel_layout(ff::ChannelLayout::default(n as i32));
        }
        Ok(true)
    }

    /// Decodes the next frame of one stream into `out`, feeding its decoder from that stream's
    /// packet queue and demuxing more as needed. Returns false at the stream's end. Packets and
    /// frames the decoder rejects are counted as corrupt and skipped.
    fn decode_next(&mut self, kind: Kind, out: &mut frame::Frame) -> Result<bool, SourceError> {
        loop {
            let (decoder, queue, flushed, skip) = match kind {
                Kind::Video => match self.video.as_mut() {
                    Some(v) => (
                        &mut *v.decoder,
                        &mut self.video_queue,
                        &mut v.flushed,
                        Skip {
                            before: v.skip_before,
                            active: &mut v.skipping,
                        },
                    ),
                    None => return Ok(false),
                },
                Kind::Audio => match self.audio.as_mut() {
                    Some(a) => (
                        &mut *a.decoder,
                        &mut self.audio_queue,
                        &mut a.flushed,
                        Skip {
                            before: a.skip_before,
                            active: &mut a.skipping,
                        },
                    ),
                    None => return Ok(false),
                },
            };
            match decoder.receive_frame(out) {
                Ok(()) => return Ok(true),
                Err(ff::Error::Eof) => return Ok(false),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(e) => {
                    tracing::debug!(?kind, "decode error: {e}");
                    self.corrupt += 1;
                    continue;
                }
            }
            // The decoder wants input.
            if let Some(packet) = queue.pop_front() {
                skip.apply(decoder, &packet);
                if let Err(e) = decoder.send_packet(&packet) {
                    tracing::debug!(?kind, "corrupt packet skipped: {e}");
                    self.corrupt += 1;
                }
                continue;
            }
            if *flushed {
                return Ok(false);
            }
            if !self.demux_one()? {
                let (decoder, queue, flushed) = match kind {
                    Kind::Video => {
                        let v = self.video.as_mut().expect("matched above");
                        (&mut *v.decoder, &self.video_queue, &mut v.flushed)
                    }
                    Kind::Audio => {
                        let a = self.audio.as_mut().expect("matched above");
                        (&mut *a.decoder, &self.audio_queue, &mut a.flushed)
                    }
                };
                if queue.is_empty() {
                    *flushed = true;
                    let _ = decoder.send_eof();
                }
            }
        }
    }
}

/// A stream's skipping of non-reference frames before a seek target (only video sets one).
struct Skip<'a> {
    before: Option<i64>,
    active: &'a mut bool,
}

impl Skip<'_> {
    /// Sets `decoder` to skip non-reference frames for a packet stamped before the target, and
    /// to decode everything from there on.
    fn apply(self, decoder: &mut ff::decoder::Opened, packet: &Packet) {
        let skip = match (self.before, packet.pts().or(packet.dts())) {
            (Some(before), Some(ts)) => ts < before,
            _ => false,
        };
        if skip != *self.active {
            *self.active = skip;
            decoder.skip_frame(if skip {
                ff::Discard::NonReference
            } else {
                ff::Discard::Default
            });
        }
    }
}

/// Which stream of an input.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Video,
    Audio,
}

fn push_bounded(queue: &mut VecDeque<Packet>, packet: Packet) {
    if queue.len() >= MAX_QUEUED_PACKETS {
        queue.pop_front();
    }
    queue.push_back(packet);
}

/// One frame's duration at `fps` in time base `tb` (at least 1).
fn frame_step(tb: FfRational, fps: FfRational) -> i64 {
    let num = tb.denominator() as i128 * fps.denominator() as i128;
    let den = tb.numerator() as i128 * fps.numerator().max(1) as i128;
    (num / den.max(1)).max(1) as i64
}

/// An audio frame's time in µs from the start of the media; frames without a timestamp get
/// the previous one (the resampler then places them by sample count).
fn frame_us(ts: Option<i64>, start: i64, tb: FfRational, last: &mut Option<i64>) -> i64 {
    let us = match ts {
        Some(t) => {
            let rel = t.saturating_sub(start) as i128;
            (rel * 1_000_000 * tb.numerator() as i128 / tb.denominator().max(1) as i128) as i64
        }
        None => last.unwrap_or(0),
    };
    *last = Some(us);
    us
}

/// The built-in test pattern: moving colour bars with the frame number, media time and wall
/// clock drawn on them, and a 440 Hz tone. Endless; seeking regenerates from the new time.
pub struct DemoSource {
    graph: filter::Graph,
    /// The first generated frame's number (its media time in 1/30 s).
    first_frame: i64,
    /// The same in µs, for audio.
    offset_us: i64,
}

impl DemoSource {
    fn new(seconds: f64) -> Result<Self, SourceError> {
        let first_frame = (seconds * 30.0).round() as i64;
        let offset_us = first_frame * 1_000_000 / 30;
        let start = first_frame as f64 / 30.0;
        let text = format!(
            "drawtext=text='Wisp demo  frame %{{eif\\:n+{first_frame}\\:d}}  %{{pts\\:hms\\:{start}}}':\
             fontsize=56:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=12:x=40:y=40,\
             drawtext=text='%{{localtime\\:%H\\\\\\:%M\\\\\\:%S}}':fontsize=40:fontcolor=yellow:\
             box=1:boxcolor=black@0.6:boxborderw=8:x=40:y=h-100"
        );
        // testsrc2's own small counter (top left) restarts with every rebuilt graph: cover it.
        let with_text = format!(
            "testsrc2=size=1280x720:rate=30,drawbox=x=0:y=0:w=120:h=44:color=black:t=fill,{text},format=yuv420p[v];sine=frequency=440:sample_rate=48000:samples_per_frame=960[a]"
        );
        let plain = "testsrc=size=1280x720:rate=30,format=yuv420p[v];sine=frequency=440:sample_rate=48000:samples_per_frame=960[a]";
        let graph = match build_generator(&with_text) {
            Ok(g) => g,
            Err(e) => {
                // drawtext needs a font; testsrc draws its own counter without one.
                tracing::warn!(
                    "demo text overlay unavailable ({e}); install fonts-dejavu-core for it"
                );
                build_generator(plain).map_err(|e| SourceError::Open {
                    url: "demo".into(),
                    reason: e.to_string(),
                })?
            }
        };
        Ok(Self {
            graph,
            first_frame,
            offset_us,
        })
    }

    fn next_video(&mut self, out: &mut frame::Video) -> Result<bool, SourceError> {
        let mut sink = self.graph.get("v").expect("demo graph has a video sink");
        sink.sink().frame(out).map_err(|e| SourceError::Read {
            url: "demo".into(),
            reason: e.to_string(),
        })?;
        // Time base 1/30: the frame number.
        let pts = out.pts().unwrap_or(0);
        out.set_pts(Some(self.first_frame + pts));
        Ok(true)
    }

    fn next_audio(&mut self, out: &mut frame::Audio) -> Result<bool, SourceError> {
        let mut sink = self.graph.get("a").expect("demo graph has an audio sink");
        sink.sink().frame(out).map_err(|e| SourceError::Read {
            url: "demo".into(),
            reason: e.to_string(),
        })?;
        let pts = out.pts().unwrap_or(0);
        out.set_pts(Some(self.offset_us + pts * 1_000_000 / 48_000));
        Ok(true)
    }
}

fn build_generator(spec: &str) -> Result<filter::Graph, ff::Error> {
    let mut graph = filter::Graph::new();
    graph.add(
        &filter::find("buffersink").ok_or(ff::Error::FilterNotFound)?,
        "v",
        "",
    )?;
    graph.add(
        &filter::find("abuffersink").ok_or(ff::Error::FilterNotFound)?,
        "a",
        "",
    )?;
    // Only sources in the spec: its [v] and [a] outputs feed the sinks' inputs.
    graph.input("v", 0)?.input("a", 0)?.parse(spec)?;
    graph.validate()?;
    Ok(graph)
}
