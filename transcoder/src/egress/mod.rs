//! `wisp-transcoder egress …`: one more reader of a session's ring, in its own process, that
//! turns what viewers get into something else: a recording, HLS, or a restream to an RTMP or
//! SRT server (DESIGN.md "Egress").
//!
//! The gateway starts it with the session's ring (`--ring-fd`/`--ring-eventfd`, inherited as
//! the transcoder's are) and the tracks it carries (`--video 0:h264 --audio 1:opus`); by hand,
//! `--ring PATH` opens a file-backed ring a `wisp-transcoder --ring PATH` writes. It reads
//! from the newest keyframe on with its own cursor, so it never slows the writer or a viewer,
//! and a crash here touches nothing else. It stops, finishing its output, when told `stop` on
//! stdin, when stdin (a pipe from the gateway) closes, when stdout's reader is gone, on SIGTERM
//! or SIGINT, or at `--max-seconds`.
//!
//! Events are JSON lines on stdout ([`wisp_control::EgressEvent`]), except in `pcm` mode,
//! whose stdout is the audio itself; logs go to stderr.
//!
//! # Layout
//! - `mod.rs`: command line, the read loop, stopping, events.
//! - `frames.rs`: records → frames with output times (depacketizing, loss, timeline).
//! - `probe.rs`: codec parameters from the first keyframe, as FFmpeg reads them.
//! - `record.rs`: containers and writing a file.
//! - `opus.rs`: the session's Opus decoded and converted to raw audio.
//! - `aac.rs`: Opus → AAC for the outputs that want it.
//! - `push.rs`: restreams to RTMP and SRT servers.
//! - `pcm.rs`: the audio as raw PCM on stdout (the gateway sends it over a WebSocket).
//! - `hls.rs`: the HLS ladder: renditions encoded from the source, segments and playlists.

mod aac;
mod frames;
mod hls;
mod opus;
mod pcm;
mod probe;
mod push;
mod record;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rtp_ring::Ring;
use wisp_control::{Command, EgressEvent};

use frames::{Frame, Framer, TrackSpec};
use hls::{Hls, HlsSettings, Rung};
use pcm::Pcm;
use push::{PushFormat, Pusher};
use record::{Container, Recorder};

/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// At most one keyframe request per this interval.
const KEYFRAME_REQUEST_EVERY: Duration = Duration::from_millis(500);

/// Read a Wisp session's ring and write what it carries elsewhere.
#[derive(Debug, Parser)]
#[command(
    name = "wisp-transcoder egress",
    bin_name = "wisp-transcoder egress",
    after_help = "Example (a demo written to a file ring, recorded for 10 s):\n  \
        wisp-transcoder -i demo --ring /dev/shm/demo --ring-size 67108864 &\n  \
        wisp-transcoder egress --ring /dev/shm/demo --video 0:h264 --audio 1:opus \\\n    \
        record --format mp4 --output demo.mp4 --max-seconds 10"
)]
struct Args {
    /// Inherited ring descriptor (how the gateway runs it).
    #[arg(long, conflicts_with = "ring")]
    ring_fd: Option<i32>,
    /// Inherited eventfd that wakes the ring's readers (with --ring-fd).
    #[arg(long, requires = "ring_fd")]
    ring_eventfd: Option<i32>,
    /// Open this file-backed ring.
    #[arg(long)]
    ring: Option<PathBuf>,
    /// The ring's video track: INDEX:CODEC (h264 or vp8).
    #[arg(long)]
    video: Option<TrackSpec>,
    /// The ring's audio track: INDEX:opus.
    #[arg(long)]
    audio: Option<TrackSpec>,
    #[command(subcommand)]
    job: Job,
}

#[derive(Debug, Subcommand)]
enum Job {
    /// Write the session to a file, as it was sent (no re-encoding).
    Record {
        /// Container (mp4: fragmented, H.264 + Opus; webm: VP8 + Opus; mkv: any; ogg: audio).
        #[arg(long, value_enum)]
        format: Container,
        /// The file to create.
        #[arg(long)]
        output: PathBuf,
        /// Stop after this many seconds of media.
        #[arg(long)]
        max_seconds: Option<f64>,
    },
    /// Push the session to a server: H.264 copied, audio as AAC.
    Push {
        /// rtmp://HOST[:PORT]/APP/KEY (with --format flv) or srt://HOST:PORT[?…] (mpegts).
        #[arg(long)]
        url: String,
        /// Container the server takes: flv for rtmp:// and rtmps://, mpegts for srt://.
        #[arg(long, value_enum)]
        format: PushFormat,
    },
    /// Write the audio to stdout as PCM s16le, in 20 ms pieces (no events on stdout).
    Pcm {
        /// Samples per second, 8000 to 48000.
        #[arg(long, default_value_t = 16_000)]
        rate: u32,
        /// 1 (mono) or 2 (stereo).
        #[arg(long, default_value_t = 1)]
        channels: u32,
    },
    /// Serve the session as HLS: a ladder of renditions (CMAF segments) in a directory.
    Hls {
        /// Where the playlists and segments go (`index.m3u8` is the master playlist).
        #[arg(long)]
        dir: PathBuf,
        /// A rendition: `copy` (the source's video as it is), HEIGHT or HEIGHT:BITRATE;
        /// repeatable [default: copy, 360, 180].
        #[arg(long = "rendition", value_name = "RENDITION")]
        renditions: Vec<Rung>,
        /// The source's frame rate, for the encoders.
        #[arg(long, default_value_t = 30.0)]
        fps: f64,
        /// The source's video bits/s, for the copied rendition's BANDWIDTH.
        #[arg(long, default_value_t = 2_000_000)]
        source_bitrate: u64,
        /// Longest segment wanted, seconds: segments end at the source's keyframes, and a
        /// source whose keyframes are further apart is asked for more.
        #[arg(long, default_value_t = 2.0)]
        segment_seconds: f64,
        /// Segments each playlist lists.
        #[arg(long, default_value_t = 6)]
        window: u32,
    },
}

/// Where frames go.
#[derive(Debug)]
enum Plan {
    Pcm {
        rate: u32,
        channels: u32,
    },
    Push {
        url: String,
        format: PushFormat,
    },
    Record {
        container: Container,
        output: PathBuf,
    },
    Hls(HlsSettings),
}

/// An open output.
#[derive(Debug)]
enum Output {
    Record(Recorder),
    Hls(Hls),
    Push(Pusher),
    Pcm(Pcm),
}

impl Output {
    fn write(&mut self, frame: &Frame) -> Result<(), Failure> {
        match self {
            Output::Record(r) => r
                .write(frame)
                .map_err(|e| Failure::new("output", e.to_string())),
            Output::Hls(h) => h.write(frame).map_err(|m| Failure::new("media", m)),
            Output::Push(p) => p.write(frame).map_err(|m| Failure::new("output", m)),
            Output::Pcm(p) => p.write(frame).map_err(|m| Failure::new("output", m)),
        }
    }

    fn seconds(&self) -> f64 {
        match self {
            Output::Record(r) => r.seconds(),
            Output::Hls(h) => h.seconds(),
            Output::Push(p) => p.seconds(),
            Output::Pcm(p) => p.seconds(),
        }
    }

    fn finish(self) -> Result<(), Failure> {
        match self {
            Output::Record(r) => r
                .finish()
                .map_err(|e| Failure::new("output", e.to_string())),
            Output::Hls(h) => h.finish().map_err(|m| Failure::new("output", m)),
            Output::Push(p) => p.finish().map_err(|m| Failure::new("output", m)),
            Output::Pcm(_) => Ok(()),
        }
    }
}

impl Plan {
    fn kind(&self) -> &'static str {
        match self {
            Plan::Record { .. } => "a recording",
            Plan::Hls(_) => "HLS",
            Plan::Push { .. } => "a restream",
            Plan::Pcm { .. } => "PCM",
        }
    }

    /// The file or directory written, for people.
    fn target(&self) -> PathBuf {
        match self {
            Plan::Record { output, .. } => output.clone(),
            Plan::Hls(s) => s.dir.join("index.m3u8"),
            Plan::Push { url, .. } => PathBuf::from(url),
            Plan::Pcm { .. } => PathBuf::from("stdout"),
        }
    }

    /// Bytes written so far.
    fn bytes(&self) -> u64 {
        match self {
            Plan::Record { output, .. } => std::fs::metadata(output).map_or(0, |m| m.len()),
            Plan::Hls(s) => dir_bytes(&s.dir),
            // What went out is not on disk; the media seconds say how far it got.
            Plan::Push { .. } | Plan::Pcm { .. } => 0,
        }
    }
}

/// Bytes of the files in `dir` and its subdirectories (one level).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => std::fs::read_dir(e.path()).map_or(0, |d| {
                d.flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            }),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// An egress's failure: a code for the gateway and a message for people.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The command line, for checking its help.
#[cfg(test)]
pub(crate) fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// Runs `wisp-transcoder egress ARGS` (`argv[0]` is the program, `argv[1]` `egress`).
pub fn main(argv: Vec<String>) -> ExitCode {
    let args = match Args::try_parse_from(argv.into_iter().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            tracing::warn!("cannot handle signal {sig}: {e}");
        }
    }
    watch_stdin(stop.clone());
    crate::control::stop_when_stdout_closes(stop.clone());
    match run(args, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            tracing::error!("{}", f.message);
            emit(&EgressEvent::Error {
                code: f.code.into(),
                message: f.message,
            });
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, stop: &AtomicBool) -> Result<(), Failure> {
    let ring = match (&args.ring, args.ring_fd) {
        (Some(path), _) => Ring::open(path),
        (None, Some(fd)) => Ring::from_inherited_fds(fd, args.ring_eventfd),
        (None, None) => return Err(Failure::new("usage", "give --ring PATH or --ring-fd N")),
    }
    .map_err(|e| Failure::new("ring", e.to_string()))?;
    for (track, video) in [(args.video, true), (args.audio, false)] {
        if let Some(t) = track
            && t.codec.is_video() != video
        {
            return Err(Failure::new(
                "usage",
                format!(
                    "--{} cannot be {}",
                    ["audio", "video"][video as usize],
                    t.codec.name()
                ),
            ));
        }
    }
    ffmpeg_next::init().map_err(|e| Failure::new("media", format!("FFmpeg: {e}")))?;
    ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    let (plan, max_seconds) = match args.job {
        Job::Record {
            format,
            output,
            max_seconds,
        } => (
            Plan::Record {
                container: format,
                output,
            },
            max_seconds,
        ),
        Job::Hls {
            dir,
            renditions,
            fps,
            source_bitrate,
            segment_seconds,
            window,
        } => {
            let ladder = match renditions.is_empty() {
                true => ["copy", "360", "180"]
                    .iter()
                    .map(|r| r.parse().expect("valid rungs"))
                    .collect(),
                false => renditions,
            };
            if !(segment_seconds.is_finite() && (0.5..=10.0).contains(&segment_seconds)) {
                return Err(Failure::new("usage", "--segment-seconds is 0.5 to 10"));
            }
            let settings = HlsSettings {
                dir,
                ladder,
                fps,
                source_bitrate,
                segment_seconds,
                window: window.max(2),
            };
            (Plan::Hls(settings), None)
        }
        Job::Push { url, format } => (Plan::Push { url, format }, None),
        Job::Pcm { rate, channels } => {
            if !(8_000..=48_000).contains(&rate) || !(1..=2).contains(&channels) {
                return Err(Failure::new(
                    "usage",
                    "--rate is 8000 to 48000, --channels 1 or 2",
                ));
            }
            QUIET_STDOUT.store(true, Ordering::Relaxed);
            (Plan::Pcm { rate, channels }, None)
        }
    };
    run_plan(&ring, args.video, args.audio, plan, max_seconds, stop)
}

/// Writes until stopped, then finishes the output.
fn run_plan(
    ring: &Ring,
    video: Option<TrackSpec>,
    audio: Option<TrackSpec>,
    plan: Plan,
    max_seconds: Option<f64>,
    stop: &AtomicBool,
) -> Result<(), Failure> {
    let (video, audio) = match &plan {
        Plan::Record { container, .. } => {
            let (v, a) = container
                .tracks(video.map(|t| t.codec), audio.map(|t| t.codec))
                .map_err(|m| Failure::new("not_supported", m))?;
            (video.filter(|_| v.is_some()), audio.filter(|_| a.is_some()))
        }
        Plan::Pcm { .. } => match audio {
            Some(_) => (None, audio),
            None => return Err(Failure::new("not_supported", "this session has no audio")),
        },
        Plan::Hls(_) | Plan::Push { .. } => match video {
            Some(v) if v.codec == frames::Codec::H264 => (video, audio),
            Some(v) => {
                return Err(Failure::new(
                    "not_supported",
                    format!(
                        "{} takes H.264 video, and this session's video is {}",
                        plan.kind(),
                        v.codec.name()
                    ),
                ));
            }
            None if matches!(plan, Plan::Push { .. }) => (None, audio),
            None => return Err(Failure::new("not_supported", "HLS needs a video track")),
        },
    };
    // HLS segments end at keyframes: a source whose keyframes are further apart than a
    // segment (a browser's WHIP stream sends one only when asked) is asked for them, with 5 %
    // to spare so that a source on time (Wisp's transcodes: every 2 s) is never asked.
    let keyframe_every = match &plan {
        Plan::Hls(s) => Some((s.segment_seconds * 90_000.0) as i64),
        Plan::Record { .. } | Plan::Push { .. } | Plan::Pcm { .. } => None,
    };
    let mut last_keyframe: Option<i64> = None;

    let audio_params = match audio {
        Some(_) => Some(probe::opus().map_err(|m| Failure::new("media", m))?),
        None => None,
    };
    let mut reader = ring.reader();
    let mut keyframes = KeyframeRequests::default();
    if let Some(v) = video
        && !reader.resync_to_keyframe(v.index)
    {
        // None in the ring yet: ask for one rather than wait out a GOP.
        keyframes.request();
    }
    let mut framer = Framer::new(video, audio);
    let mut output: Option<Output> = None;
    let mut frames: Vec<Frame> = Vec::new();
    let mut packet = Vec::with_capacity(rtp_ring::MAX_PAYLOAD);
    let mut last_progress = Instant::now();
    let reason = loop {
        if stop.load(Ordering::Relaxed) {
            break if crate::control::stdout_closed() {
                "stdout_closed"
            } else {
                "stopped"
            };
        }
        if let (Some(max), Some(o)) = (max_seconds, &output)
            && o.seconds() >= max
        {
            break "max_seconds";
        }
        match reader.try_next_into(&mut packet) {
            Ok(Some(meta)) => {
                if framer.push(&meta, &packet, &mut frames).wants_keyframe {
                    keyframes.request();
                }
            }
            Ok(None) => {
                reader
                    .wait(Duration::from_millis(100))
                    .map_err(|e| Failure::new("ring", format!("waiting on the ring: {e}")))?;
            }
            Err(overrun) => {
                tracing::warn!(lost = overrun.lost, "fell a lap behind the ring; resyncing");
                framer.lost_records();
                if let Some(v) = video {
                    reader.resync_to_keyframe(v.index);
                }
                keyframes.request();
            }
        }
        for frame in frames.drain(..) {
            if output.is_none() {
                // The first frame is the video's first keyframe (or, without video, the
                // first audio packet): headers can be written now.
                let video = match video {
                    Some(v) => Some((
                        v.codec,
                        probe::video(v.codec, &frame.data).map_err(|m| Failure::new("media", m))?,
                    )),
                    None => None,
                };
                let audio = audio.zip(audio_params.as_ref()).map(|(t, p)| (t.codec, p));
                let (opened, described) = match &plan {
                    Plan::Record { container, output } => {
                        let r = Recorder::create(
                            output,
                            *container,
                            video.as_ref().map(|(c, p)| (*c, p)),
                            audio,
                        )
                        .map_err(|e| Failure::new("output", e.to_string()))?;
                        let described = video.as_ref().map(|(_, p)| p.description.clone());
                        (Output::Record(r), described)
                    }
                    Plan::Pcm { rate, channels } => {
                        let (_, opus) = audio.expect("PCM has audio");
                        let p = Pcm::new(opus, *rate, *channels)
                            .map_err(|m| Failure::new("media", m))?;
                        (Output::Pcm(p), None)
                    }
                    Plan::Push { url, format } => {
                        let p = Pusher::create(
                            url,
                            *format,
                            video.as_ref().map(|(c, p)| (*c, p)),
                            audio.map(|(_, p)| p),
                        )
                        .map_err(|m| Failure::new("output", m))?;
                        let described = video.as_ref().map(|(_, p)| p.description.clone());
                        (Output::Push(p), described)
                    }
                    Plan::Hls(settings) => {
                        let (_, probed) = video.as_ref().expect("HLS has video");
                        let h = Hls::create(settings, &frame, probed, audio.map(|(_, p)| p))
                            .map_err(|m| Failure::new("media", m))?;
                        let described = format!("{}: {}", probed.description, h.describe());
                        (Output::Hls(h), Some(described))
                    }
                };
                tracing::info!(output = %plan.target().display(), "writing");
                emit(&EgressEvent::Started {
                    output: plan.target().display().to_string(),
                    start_unix_ms: framer.start_us().map(unix_ms_of),
                    video: described,
                    audio: audio_params.as_ref().map(|p| p.description.clone()),
                });
                output = Some(opened);
            }
            if frame.codec.is_video() && frame.keyframe {
                last_keyframe = Some(frame.pts);
            }
            if let (Some(every), Some(last)) = (keyframe_every, last_keyframe)
                && frame.codec.is_video()
                && frame.pts - last > every * 21 / 20
            {
                keyframes.request();
            }
            if let Some(o) = output.as_mut() {
                o.write(&frame)?;
            }
        }
        if keyframes.due() {
            emit(&EgressEvent::KeyframeRequest);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            if let Some(o) = &output {
                emit(&EgressEvent::Progress {
                    bytes: plan.bytes(),
                    seconds: round_ms(o.seconds()),
                });
            }
        }
    };
    let (bytes, seconds) = match output {
        Some(o) => {
            let seconds = o.seconds();
            o.finish()?;
            (plan.bytes(), seconds)
        }
        None => (0, 0.0),
    };
    if framer.lost_packets > 0 {
        tracing::warn!(
            lost = framer.lost_packets,
            "video packets were missing from the ring"
        );
    }
    tracing::info!(reason, bytes, seconds, "egress finished");
    emit(&EgressEvent::Ended {
        reason: reason.into(),
        bytes,
        seconds: round_ms(seconds),
    });
    Ok(())
}

/// A time on the ring's clock (CLOCK_MONOTONIC µs) as Unix time in ms.
fn unix_ms_of(monotonic_us: u64) -> u64 {
    let now_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age_ms = rtp_ring::now_us().saturating_sub(monotonic_us) / 1000;
    now_unix_ms.saturating_sub(age_ms)
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Keyframe requests, at most one per [`KEYFRAME_REQUEST_EVERY`].
#[derive(Debug, Default)]
struct KeyframeRequests {
    wanted: bool,
    last: Option<Instant>,
}

impl KeyframeRequests {
    fn request(&mut self) {
        self.wanted = true;
    }

    /// Whether to send one now.
    fn due(&mut self) -> bool {
        if !self.wanted
            || self
                .last
                .is_some_and(|t| t.elapsed() < KEYFRAME_REQUEST_EVERY)
        {
            return false;
        }
        self.wanted = false;
        self.last = Some(Instant::now());
        true
    }
}

/// Sets `stop` on a `stop` command, and when stdin (a pipe from the gateway) closes.
fn watch_stdin(stop: Arc<AtomicBool>) {
    let end_on_eof = crate::control::stdin_is_parent_channel();
    let spawned = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match wisp_control::parse_request(line.trim()) {
                    Ok((_, Command::Stop)) => {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok((_, other)) => tracing::warn!(?other, "an egress only takes stop"),
                    Err(e) if line.trim().is_empty() => drop(e),
                    Err(e) => tracing::warn!("{}", e.message),
                }
            }
            if end_on_eof {
                stop.store(true, Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read stdin: {e}");
    }
}

/// Set when stdout carries the output itself (PCM): events then go nowhere but the log.
static QUIET_STDOUT: AtomicBool = AtomicBool::new(false);

/// Writes one event line to stdout. A gone reader ends the egress (see
/// `control::write_stdout`); it is not reported.
fn emit(event: &EgressEvent) {
    if QUIET_STDOUT.load(Ordering::Relaxed) {
        tracing::debug!(?event, "event");
        return;
    }
    let Ok(mut line) = serde_json::to_string(event) else {
        return;
    };
    line.push('\n');
    let _ = crate::control::write_stdout(line.as_bytes());
}
