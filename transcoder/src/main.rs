//! `wisp-transcoder`: one session's media, from any FFmpeg input to paced RTP in a shared ring.
//!
//! # Layout
//! - `main.rs`: command line (clap), logging, signals, exit codes.
//! - `options.rs`: validated options, `-i URL [key=value]` input groups, and the log filter
//!   (the one place the environment is read).
//! - `source.rs`: opening, demuxing and decoding inputs; the built-in `demo` generator.
//! - `video.rs`: video filter graph (size, aspect, rate, tone mapping) and H.264/VP8 encoder.
//! - `audio.rs`: channel selection to stereo, resampling, Opus encoder.
//! - `rtp.rs`: RTP packetizing (str0m's packetizers) and track descriptions.
//! - `player.rs`: playback state, exact seek and step, pacing, ring writes.
//! - `remux.rs`: `--copy-video`, a live stream's H.264 passed through as it came.
//! - `timeline.rs`: media time → output (RTP) time and due time.
//! - `control.rs`: JSON-lines commands on stdin, events on stdout, and stdout's end.
//! - `egress/`: `wisp-transcoder egress …`, a reader of a session's ring that records it (see
//!   its own layout).
//!
//! It links no WebRTC or HTTP code beyond str0m's RTP packetizers, and reads the network only
//! through its inputs.
#![forbid(unsafe_code)]

mod arrival;
mod audio;
mod control;
mod egress;
mod options;
mod player;
mod remux;
mod rtp;
mod source;
mod timeline;
mod video;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use rtp_ring::Ring;

use crate::control::Event;
use crate::options::{
    ChannelSel, Colorspace, ControlSource, OnEnd, Options, Pace, Rational, VideoCodec,
};

/// Transcode inputs to paced RTP (H.264 or VP8, and Opus) in a Wisp shared-memory ring.
#[derive(Debug, Parser)]
#[command(version, override_usage = USAGE, after_help = AFTER_HELP)]
struct Args {
    // `options::split_inputs` takes the `-i` groups out before clap sees the arguments (clap
    // cannot give an option trailing key=value words); this field puts them in --help, and
    // holds only what split_inputs did not take (`-iURL`), which is refused.
    /// An input, repeatable: a file, any URL FFmpeg opens, or `demo` (a built-in test pattern
    /// with a frame counter and clock, and a tone). The first input gives the video (and its
    /// audio); further inputs are extra audio choices (see `select_audio`). Words after the URL:
    /// channel_count=N gives the channel count of raw PCM, which does not say it; id=NAME names
    /// the input for `select_audio` (default: its position, 0, 1, ...).
    #[arg(
        short = 'i',
        long = "input",
        value_name = "URL [channel_count=N] [id=NAME]"
    )]
    input: Vec<String>,
    /// Output width (with --height: fit inside and pad; alone: height follows the aspect).
    #[arg(long)]
    width: Option<u32>,
    /// Output height (with --width: fit inside and pad; alone: width follows the aspect).
    #[arg(long)]
    height: Option<u32>,
    /// Scale pictures taller than this down to it, keeping their aspect (a live source's
    /// size is not known in advance); smaller ones keep their size.
    #[arg(long, conflicts_with_all = ["width", "height"])]
    max_height: Option<u32>,
    /// Output frame rate, e.g. 30 or 30000/1001 (default: the source's).
    #[arg(long)]
    fps: Option<Rational>,
    /// Video bitrate, bits/s.
    #[arg(long, default_value_t = 2_000_000)]
    video_bitrate: u64,
    /// Also encode a lower rendition of this height (bits/s after a colon; default: the main
    /// bitrate scaled by the pixel ratio to the power 0.75), on ring track 2, 3, … with the
    /// same timestamps and keyframes as the main one. Repeat for more (at most 6).
    #[arg(long = "layer", value_name = "HEIGHT[:BITRATE]")]
    layers: Vec<crate::options::LayerOpt>,
    /// Audio bitrate, bits/s.
    #[arg(long, default_value_t = 96_000)]
    audio_bitrate: u64,
    /// Video codec.
    #[arg(long, value_enum, default_value_t = VideoCodec::H264)]
    codec: VideoCodec,
    /// Also encode the main picture in this codec (for viewers that do not take --codec), on
    /// the ring track after the lower renditions, with the same timestamps and keyframes.
    #[arg(long = "alt-codec", value_enum)]
    alt_codecs: Vec<VideoCodec>,
    /// Seconds between keyframes.
    #[arg(long, default_value_t = 2.0)]
    gop: f64,
    /// Threads for decoding and encoding (0: automatic).
    #[arg(long, default_value_t = 0)]
    threads: u32,
    /// Video encoder threads, each coding its own slice of every frame (0: one up to 720p30's
    /// pixel rate, above it --threads). Every slice ends in a short RTP packet, and each short
    /// packet costs the gateway a system call per viewer, so one slice is cheapest to fan out.
    #[arg(long, default_value_t = 0)]
    encoder_threads: u32,
    /// Decode at 1/2^N resolution where the decoder supports it (MJPEG, some older codecs).
    #[arg(long, default_value_t = 0)]
    lowres: u8,
    /// Override the source's sample aspect ratio, e.g. 1:1 or 4:3.
    #[arg(long)]
    sar: Option<Rational>,
    /// Output colour matrix (scaled into and tagged).
    #[arg(long, value_enum, default_value_t = Colorspace::Bt709)]
    colorspace: Colorspace,
    /// Tone-map BT.2100 (PQ/HLG) HDR input to SDR BT.709 with this curve (hable, reinhard, mobius).
    #[arg(long, num_args = 0..=1, default_missing_value = "hable")]
    bt2100_tone_mapping: Option<String>,
    /// Start at this media time, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    start: f64,
    /// Play this many frames (a frame count, not seconds), then end (or loop).
    #[arg(long, value_name = "FRAMES")]
    duration_frames: Option<u64>,
    /// The old name of --duration-frames, refused with a message that says so.
    #[arg(long = "duration", hide = true, num_args = 0..=1)]
    renamed_duration: Option<Option<String>>,
    /// At the end, start again from --start (timestamps keep counting).
    #[arg(long = "loop")]
    looping: bool,
    /// Number of source channels to render as stereo (with --cho).
    #[arg(long)]
    channels: Option<u32>,
    /// First source channel of --channels.
    #[arg(long, default_value_t = 0)]
    cho: u32,
    /// Packet pacing.
    #[arg(long, value_enum, default_value_t = Pace::Realtime)]
    pace: Pace,
    /// Where commands come from.
    #[arg(long, value_enum, default_value_t = ControlSource::Stdin)]
    control: ControlSource,
    /// What to do at the end of the media.
    #[arg(long, value_enum, default_value_t = OnEnd::Exit)]
    on_end: OnEnd,
    /// Start paused (showing the first frame) until a `play` command.
    #[arg(long)]
    paused: bool,
    /// The input is a live stream (an RTMP or SRT publisher's, through a pipe): probe only its
    /// first second, and read without buffering, so that the first frame goes out soon.
    #[arg(long)]
    live: bool,
    /// Pass the input's H.264 through instead of encoding it (a live publisher that already
    /// sends baseline; anything else is refused with an error event). Audio still becomes Opus.
    /// Nothing is encoded, so no --layer or --alt-codec.
    #[arg(long, conflicts_with_all = ["layers", "alt_codecs"])]
    copy_video: bool,
    /// The first input is the gateway's FIFO of timed records (see `arrival.rs`): packets are
    /// stamped with when their bytes reached the gateway, for its ingest latency.
    #[arg(long, requires = "live")]
    timed_input: bool,
    /// Inherited ring descriptor (how the gateway runs it).
    #[arg(long, conflicts_with = "ring")]
    ring_fd: Option<i32>,
    /// Inherited eventfd that wakes the ring's readers (with --ring-fd).
    #[arg(long, requires = "ring_fd")]
    ring_eventfd: Option<i32>,
    /// Create a file-backed ring here (e.g. /dev/shm/wisp-x).
    #[arg(long, requires = "ring_size")]
    ring: Option<PathBuf>,
    /// Size in bytes of the ring created by --ring.
    #[arg(long)]
    ring_size: Option<u64>,
}

const USAGE: &str = "\
wisp-transcoder -i URL [channel_count=N] [id=NAME] [-i URL ...] [OPTIONS] \
(--ring PATH --ring-size BYTES | --ring-fd N)
       wisp-transcoder egress [OPTIONS] <record|push|pcm|hls> (see wisp-transcoder egress --help)";

const AFTER_HELP: &str = "\
Control (JSON lines on stdin): {\"op\":\"play\"} {\"op\":\"pause\"} {\"op\":\"seek\",\"to\":12.5}
  {\"op\":\"seek\",\"frame\":300} {\"op\":\"step\",\"frames\":-1} {\"op\":\"keyframe\"} {\"op\":\"stop\"}
  {\"op\":\"select_audio\",\"input\":\"music\",\"channels\":[0,1]} {\"op\":\"status\"}
Events (JSON lines on stdout): ready, state, position, error, stats; the process ends when
  stdout's reader is gone. Logs on stderr: WISP_LOG (else RUST_LOG) sets the filter, e.g.
  WISP_LOG=debug; default info.

Egress (read a session's ring and record it): wisp-transcoder egress --help

Examples:
  wisp-transcoder -i demo --ring /dev/shm/demo --ring-size 67108864
  wisp-transcoder -i film.mp4 -i dub.wav id=dub --width 1280 --height 720 --ring /dev/shm/x --ring-size 67108864
  ring-dump --json /dev/shm/x";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr's reader is gone: the gateway that read
        // it died) is dropped; reporting that on stderr too would panic.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(options::log_filter())
                .unwrap_or_else(|_| options::DEFAULT_LOG_FILTER.into()),
        )
        .init();
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("egress") {
        return egress::main(argv);
    }
    let (inputs, rest) = match options::split_inputs(argv[1..].to_vec()) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let args = Args::parse_from(std::iter::once(argv[0].clone()).chain(rest));
    if args.renamed_duration.is_some() {
        return usage_error(
            "--duration is now --duration-frames (a frame count; --start is in seconds)",
        );
    }
    if !args.input.is_empty() {
        return usage_error(
            "write -i and its URL as two words: -i URL [channel_count=N] [id=NAME]",
        );
    }
    if inputs.is_empty() {
        return usage_error("give at least one input: -i FILE|URL|demo");
    }
    let mut opts = Options {
        inputs,
        width: args.width,
        height: args.height,
        fps: args.fps,
        max_height: args.max_height,
        video_bitrate: args.video_bitrate,
        layers: args.layers,
        audio_bitrate: args.audio_bitrate,
        codec: args.codec,
        alt_codecs: args.alt_codecs,
        gop_seconds: args.gop,
        threads: args.threads,
        encoder_threads: args.encoder_threads,
        lowres: args.lowres,
        sar: args.sar,
        colorspace: args.colorspace,
        tone_mapping: args.bt2100_tone_mapping,
        start: args.start,
        duration_frames: args.duration_frames,
        looping: args.looping,
        channels: args
            .channels
            .map_or(ChannelSel(Vec::new()), |n| ChannelSel::range(n, args.cho)),
        pace: args.pace,
        control: args.control,
        on_end: args.on_end,
        paused: args.paused,
        live: args.live,
        arrivals: None,
    };
    let gop_ok = opts.gop_seconds.is_finite() && opts.gop_seconds > 0.0;
    let start_ok = opts.start.is_finite() && opts.start >= 0.0;
    if !gop_ok
        || !start_ok
        || opts.width == Some(0)
        || opts.height == Some(0)
        || opts.max_height.is_some_and(|h| h < 2)
        || opts.layers.len() > 6
    {
        return usage_error(
            "--gop must be > 0, --start ≥ 0, --width/--height > 0, --max-height ≥ 2, --layer at most 6 times",
        );
    }
    opts.alt_codecs.retain(|c| *c != opts.codec);
    opts.alt_codecs.dedup();
    if opts.layers.len() + opts.alt_codecs.len() > 6 {
        return usage_error("--layer and --alt-codec: at most 6 tracks besides the main video");
    }

    // No orphan: a parent controls us through a stdin pipe, whose end (even after `kill -9` of
    // the parent) ends us (control.rs). Not PR_SET_PDEATHSIG: it fires when the *thread* that
    // spawned us exits, and a tokio parent may spawn from a thread that later retires.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            tracing::warn!("cannot handle signal {sig}: {e}");
        }
    }
    // Nor one nobody hears: once stdout's reader is gone (the parent's, or `| head`'s), it
    // stops as on SIGTERM.
    control::stop_when_stdout_closes(stop.clone());

    let ring = match (&args.ring, args.ring_fd) {
        (Some(path), _) => Ring::create_file(path, args.ring_size.unwrap_or(64 << 20)),
        (None, Some(fd)) => Ring::from_inherited_fds(fd, args.ring_eventfd),
        (None, None) => return usage_error("give --ring PATH --ring-size BYTES, or --ring-fd N"),
    };
    let ring = match ring {
        Ok(r) => r,
        Err(e) => return fatal("ring", &e.to_string()),
    };
    if let Err(e) = ffmpeg_next::init() {
        return fatal("ffmpeg", &format!("FFmpeg failed to initialise: {e}"));
    }
    ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);

    if args.timed_input {
        let input = &mut opts.inputs[0];
        match arrival::unframe(&input.url) {
            Ok((url, arrivals)) => {
                input.url = url;
                opts.arrivals = Some(arrivals);
            }
            Err(e) => return fatal("input", &format!("cannot read {}: {e}", input.url)),
        }
    }
    let control = match opts.control {
        ControlSource::Stdin => Some(control::spawn_stdin_reader(
            control::stdin_is_parent_channel(),
        )),
        ControlSource::None => None,
    };
    if args.copy_video {
        let remux = match remux::Remux::new(&opts, ring.writer(), stop, control) {
            Ok(r) => r,
            Err(remux::CopyError::NotCopyable(m)) => return fatal("not_supported", &m),
            Err(e) => return fatal("input", &e.to_string()),
        };
        return match remux.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(remux::CopyError::NotCopyable(m)) => fatal("not_supported", &m),
            Err(e) => fatal("playback", &e.to_string()),
        };
    }
    let player = match player::Player::new(opts, ring.writer(), stop, control) {
        Ok(p) => p,
        Err(e) => return fatal("input", &e.to_string()),
    };
    match player.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal("playback", &e.to_string()),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("wisp-transcoder: {message}\n(see wisp-transcoder --help)");
    ExitCode::from(2)
}

/// Reports an error both ways the gateway and a person look: an event and a log line.
fn fatal(code: &'static str, message: &str) -> ExitCode {
    tracing::error!("{message}");
    control::emit(&Event::Error {
        id: None,
        code: code.to_string(),
        message: message.to_string(),
    });
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The arguments of `cmd` and its subcommands that --help would show without a word.
    fn undocumented(cmd: &clap::Command) -> Vec<String> {
        let own = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter(|a| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|a| format!("{} {}", cmd.get_name(), a.get_id()));
        let subs = cmd.get_subcommands().flat_map(undocumented);
        own.chain(subs).collect()
    }

    #[test]
    fn every_argument_says_what_it_is_for_in_help() {
        let mut missing = undocumented(&super::Args::command());
        missing.extend(undocumented(&super::egress::command()));
        assert!(missing.is_empty(), "no --help text: {missing:?}");
    }

    #[test]
    fn help_shows_the_inputs_the_units_and_the_log_variable() {
        let help = super::Args::command().render_long_help().to_string();
        for shown in [
            "-i, --input <URL [channel_count=N] [id=NAME]>",
            "--start <SECONDS>",
            "--duration-frames <FRAMES>",
            "WISP_LOG",
        ] {
            assert!(help.contains(shown), "{shown:?} is not in --help:\n{help}");
        }
        assert!(
            !help.contains("--duration "),
            "the old name is hidden:\n{help}"
        );
    }
}
