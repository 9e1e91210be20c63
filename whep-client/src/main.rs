//! `whep-client`: watch a WHEP session (`play`), steer it over its `control` data channel
//! (`control`), measure how long its seeks take to show (`seeks`), or load a server with many
//! viewers (`load`).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::sync::Mutex;
use whep_client::{Control, Options, Summary, control_request, watch};

mod config;
mod out;
mod seeks;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A WHEP client: play a session, steer it over its control channel, time its seeks, \
             or load a server with viewers",
    after_help = "Logs go to stderr: WISP_LOG (else RUST_LOG) sets the filter, e.g. \
                  WISP_LOG=debug; default warn."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The session every subcommand talks to.
#[derive(Debug, clap::Args)]
struct Endpoint {
    /// WHEP endpoint URL, e.g. http://127.0.0.1:8080/whep/demo
    url: String,
    /// Bearer token (a JWT) for the endpoint's requests.
    #[arg(long, env = "WISP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, clap::Args)]
struct PlayArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Complete video frames to wait for.
    #[arg(long, value_name = "FRAMES", default_value_t = 60)]
    frames: u64,
    /// Seconds to wait for them.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    timeout: u64,
    /// Print the summary as JSON (last line of stdout).
    #[arg(long)]
    json: bool,
    /// Write one JSON line per video frame here: `at_us` (arrival, monotonic clock, µs),
    /// `rtp_time` (90 kHz), `keyframe`, `tail` (its last 16 bytes, hex), for latency
    /// measurements against a publisher's log.
    #[arg(long, value_name = "FILE")]
    frame_log: Option<std::path::PathBuf>,
    /// Send our ICE candidate in a trickle PATCH after the POST instead of in the offer
    /// (it must get 204).
    #[arg(long)]
    trickle: bool,
    /// Restart ICE (PATCH with If-Match) after this many frames; --frames then counts on
    /// past the restart.
    #[arg(long, value_name = "FRAMES")]
    restart_after: Option<u64>,
    /// After the DELETE, keep the connection this many seconds and report whether the server
    /// closed it and whether media still came (`closed_after_delete_ms`,
    /// `packets_after_delete`).
    #[arg(long, value_name = "SECONDS")]
    linger: Option<f64>,
    /// While the session has no media yet (409: a live session without its publisher; 404:
    /// a name nobody has published yet; 503: a session moving to another node of a cluster,
    /// or a server at capacity), try again after the server's Retry-After (else 2 s), and
    /// while the server does not answer, after 1 s; for up to this many seconds before
    /// --timeout starts.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<f64>,
    /// Ask for this video layer (a RID the session's `layers` list) over the control
    /// channel; `auto` lets the server choose. The server's `layer` events are reported.
    #[arg(long, value_name = "RID")]
    layer: Option<String>,
    /// Ask the server for layers no taller than this (a small window).
    #[arg(long, value_name = "PIXELS")]
    max_height: Option<u32>,
    /// Pin these layers in turn (comma-separated RIDs), one every --cycle-every seconds once
    /// video plays; the summary's `layer_requests` and `sizes` give each switch's time.
    #[arg(long, value_name = "RID,RID,...", value_delimiter = ',')]
    cycle_layers: Vec<String>,
    /// Seconds between the pins of --cycle-layers.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    cycle_every: f64,
    /// Receive through a slow path of this many kbit/s (shaped here, with a 300 ms queue;
    /// what does not fit is dropped).
    #[arg(long, value_name = "KBPS")]
    limit_kbps: Option<u64>,
    /// Lift --limit-kbps this many seconds after the start.
    #[arg(long, value_name = "SECONDS", requires = "limit_kbps")]
    limit_for: Option<f64>,
    /// Append every complete video frame to this file (Annex B for H.264), for a decoder to
    /// check.
    #[arg(long, value_name = "FILE")]
    video_out: Option<std::path::PathBuf>,
    /// Offer only this video codec (as a browser without H.264 offers VP8 alone).
    #[arg(long, value_enum)]
    video_codec: Option<whep_client::OfferCodec>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Watch one session; exit 0 once --frames complete video frames arrived.
    Play(PlayArgs),
    /// Send one request on the session's `control` data channel; print the reply and then the
    /// events seen for --listen seconds, one JSON object per line. Exit 1 on an error reply.
    ///
    /// OP is play, pause, status, seek SECONDS (or seek FRAMEf, e.g. 600f), step ±N,
    /// select_audio INPUT [CHANNELS like 0,1], chat TEXT..., auth TOKEN, or raw TEXT (sent as is).
    Control {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Seconds to print events after the reply.
        #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
        listen: f64,
        /// Seconds to wait for the connection and the reply.
        #[arg(long, value_name = "SECONDS", default_value_t = 20)]
        timeout: u64,
        /// Also print a JSON summary as the last line.
        #[arg(long)]
        json: bool,
        /// The request: play, pause, status, seek, step, select_audio, chat, auth or raw.
        op: String,
        /// The request's arguments: seek SECONDS or FRAMEf (e.g. 600f), step ±N,
        /// select_audio INPUT [CHANNELS like 0,1], chat TEXT..., auth TOKEN, raw TEXT.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Seek latency: seeks the session --count times, --gap seconds apart (targets spread over
    /// its duration), and prints for each seek, in ms after sending it: the reply, the `state`
    /// event at the target, and the keyframes that followed. Needs a token with `playback`.
    Seeks {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Seeks to make.
        #[arg(long, default_value_t = 20)]
        count: u32,
        /// Seconds from one seek to the next.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        gap: f64,
        /// Write each seek's keyframes here (`seek-NN-K.h264`, Annex B), to check what they show.
        #[arg(long, value_name = "DIR")]
        keyframes: Option<std::path::PathBuf>,
        /// Seconds to wait for the connection and for each reply.
        #[arg(long, value_name = "SECONDS", default_value_t = 20)]
        timeout: u64,
    },
    /// Publish H.264 simulcast layers to a WHIP endpoint as OBS 32.1 does (RIDs, no
    /// `a=ssrc`): each --layer RID=FILE (Annex B, e.g. from `ffmpeg -c:v libx264 -bsf:v
    /// h264_mp4toannexb -f h264`) is sent in a loop at --fps for --seconds, then DELETEd. Prints
    /// a JSON summary (frames and keyframe requests per layer).
    Publish {
        #[command(flatten)]
        endpoint: Endpoint,
        /// A layer: its RID and its H.264 file. Repeat for each layer, lowest first.
        #[arg(long = "layer", value_name = "RID=FILE", required = true)]
        layers: Vec<String>,
        /// Frames per second each layer is sent at.
        #[arg(long, default_value_t = 30.0)]
        fps: f64,
        /// Seconds to publish.
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
        seconds: f64,
        /// Seconds to wait for the connection.
        #[arg(long, value_name = "SECONDS", default_value_t = 20)]
        timeout: u64,
    },
    /// Many viewers in one process, ramped up, for a fixed time.
    Load {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Viewers to start.
        #[arg(long, default_value_t = 10)]
        viewers: usize,
        /// Seconds each viewer watches.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        duration: u64,
        /// New viewers per second while ramping up.
        #[arg(long, value_name = "PER_SECOND", default_value_t = 20.0)]
        ramp: f64,
        /// Print the summary as one JSON line (else as indented JSON).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(config::log_filter())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match Cli::parse().command {
        Cmd::Play(args) => runtime.block_on(play(args)),
        Cmd::Load {
            endpoint: Endpoint { url, token },
            viewers,
            duration,
            ramp,
            json,
        } => runtime.block_on(load(url, token, viewers, duration, ramp, json)),
        Cmd::Publish {
            endpoint: Endpoint { url, token },
            layers,
            fps,
            seconds,
            timeout,
        } => runtime.block_on(publish(url, token, layers, fps, seconds, timeout)),
        Cmd::Seeks {
            endpoint: Endpoint { url, token },
            count,
            gap,
            keyframes,
            timeout,
        } => runtime.block_on(seeks::run(seeks::Plan {
            url,
            token,
            count,
            gap: Duration::from_secs_f64(gap.max(0.2)),
            keyframes,
            timeout: Duration::from_secs(timeout),
        })),
        Cmd::Control {
            endpoint: Endpoint { url, token },
            listen,
            timeout,
            json,
            op,
            args,
        } => {
            let request = match control_request(1, &op, &args) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("whep-client: {e}");
                    return ExitCode::from(2);
                }
            };
            // `raw` text may hold several messages, one per line.
            let requests = if op == "raw" {
                request.lines().map(String::from).collect()
            } else {
                vec![request]
            };
            runtime.block_on(control(url, token, requests, listen, timeout, json))
        }
    }
}

async fn control(
    url: String,
    token: Option<String>,
    requests: Vec<String>,
    listen: f64,
    timeout: u64,
    json: bool,
) -> ExitCode {
    let http = whep_client::http_client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = Options {
        url,
        token,
        frames: None,
        timeout: Duration::from_secs(timeout),
        duration: None,
        rtp_only: true,
        control: Some(Control::send_all(
            requests,
            tx,
            Duration::from_secs_f64(listen.max(0.0)),
        )),
        frames_out: None,
        ..Default::default()
    };
    // Once stdout's reader is gone, dropping `rx` ends the watch (see `Control::messages`).
    let printer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if !out::line(line) {
                break;
            }
        }
    });
    let result = watch(&http, opts, |_| {}).await;
    let _ = printer.await;
    match result {
        Ok(s) => {
            let status = if s.control_errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
            if json {
                let summary = serde_json::to_string(&s).expect("summary serializes");
                return out::last_line(summary, status);
            }
            status
        }
        Err(e) => failed(&e, json),
    }
}

/// Reports a failed run: the reason on stderr, and with `--json` as the last stdout line.
fn failed(e: &whep_client::ClientError, json: bool) -> ExitCode {
    eprintln!("whep-client: {e}");
    if json {
        return out::last_line(json!({ "error": e.to_string() }), ExitCode::FAILURE);
    }
    ExitCode::FAILURE
}

async fn publish(
    url: String,
    token: Option<String>,
    layers: Vec<String>,
    fps: f64,
    seconds: f64,
    timeout: u64,
) -> ExitCode {
    let mut send = Vec::new();
    for l in &layers {
        let Some((rid, file)) = l.split_once('=') else {
            eprintln!("whep-client: --layer {l:?} is not RID=FILE");
            return ExitCode::from(2);
        };
        let frames = match std::fs::read(file) {
            Ok(bytes) => whep_client::annexb_frames(&bytes),
            Err(e) => {
                eprintln!("whep-client: {file}: {e}");
                return ExitCode::from(2);
            }
        };
        if frames.is_empty() {
            eprintln!("whep-client: {file}: no H.264 frames in it (Annex B expected)");
            return ExitCode::from(2);
        }
        send.push(whep_client::SendLayer {
            rid: rid.to_string(),
            frames,
        });
    }
    let result = whep_client::publish_layers(
        &whep_client::http_client(),
        &url,
        token.as_deref(),
        &send,
        fps,
        Duration::from_secs_f64(if seconds.is_finite() {
            seconds.clamp(0.0, 86_400.0)
        } else {
            10.0
        }),
        Duration::from_secs(timeout),
    )
    .await;
    match result {
        Ok(summary) => {
            println!(
                "{}",
                serde_json::to_string(&summary).expect("a summary serializes")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("whep-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn play(args: PlayArgs) -> ExitCode {
    let PlayArgs {
        endpoint: Endpoint { url, token },
        frames,
        timeout,
        json,
        frame_log,
        trickle,
        restart_after,
        linger,
        wait,
        layer,
        max_height,
        cycle_layers,
        cycle_every,
        video_codec,
        limit_kbps,
        limit_for,
        video_out,
    } = args;
    if limit_kbps.is_some_and(|k| k == 0) || limit_for.is_some_and(|f| !(0.0..=3600.0).contains(&f))
    {
        eprintln!("whep-client: --limit-kbps takes a positive rate, --limit-for 0 to 3600 seconds");
        return ExitCode::FAILURE;
    }
    let layer_request = (layer.is_some() || max_height.is_some()).then(|| {
        let mut r = json!({"id": "layer", "op": "layer"});
        if let Some(rid) = layer.filter(|l| l != "auto") {
            r["rid"] = json!(rid);
        }
        if let Some(h) = max_height {
            r["maxHeight"] = json!(h);
        }
        r.to_string()
    });
    let limit = limit_kbps.map(|k| whep_client::Limit {
        bps: k.saturating_mul(1000),
        queue: Duration::from_millis(300),
        for_time: limit_for.map(Duration::from_secs_f64),
    });
    let video_out = match video_out {
        Some(path) => match std::fs::File::create(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("whep-client: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if restart_after.is_some_and(|n| n >= frames) {
        eprintln!("whep-client: --restart-after must be below --frames");
        return ExitCode::FAILURE;
    }
    if wait.is_some_and(|w| !(0.0..=3600.0).contains(&w)) {
        eprintln!("whep-client: --wait takes 0 to 3600 seconds");
        return ExitCode::FAILURE;
    }
    if linger.is_some_and(|l| !(0.0..=600.0).contains(&l)) {
        eprintln!("whep-client: --linger takes 0 to 600 seconds");
        return ExitCode::FAILURE;
    }
    let http = whep_client::http_client();
    let (frames_out, writer) = match frame_log {
        Some(path) => match std::fs::File::create(&path) {
            Ok(file) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(tokio::spawn(write_frame_log(file, rx))))
            }
            Err(e) => {
                eprintln!("whep-client: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => (None, None),
    };
    let opts = || Options {
        url: url.clone(),
        token: token.clone(),
        frames: Some(frames),
        timeout: Duration::from_secs(timeout),
        duration: None,
        rtp_only: false,
        control: None,
        frames_out: frames_out.clone(),
        trickle,
        restart_after,
        linger: linger.map(Duration::from_secs_f64),
        layer: layer_request.clone(),
        layer_cycle: (!cycle_layers.is_empty()).then(|| {
            (
                Duration::from_secs_f64(cycle_every.clamp(0.1, 600.0)),
                cycle_layers.clone(),
            )
        }),
        limit,
        video_out: video_out.as_ref().and_then(|f| f.try_clone().ok()),
        video_codec,
        ..Options::default()
    };
    let waiting_until = wait.map(|w| std::time::Instant::now() + Duration::from_secs_f64(w));
    let result = loop {
        let result = watch(&http, opts(), |s| {
            eprintln!(
                "{:5.1} s: {} video frames, {} audio packets{}",
                s.seconds,
                s.video_frames,
                s.audio_packets,
                match (s.width, s.height) {
                    (Some(w), Some(h)) => format!(", {w}x{h}"),
                    _ => String::new(),
                }
            );
        })
        .await;
        // No publisher yet: as a player would, come back when the server says. (A node that
        // does not answer, as one of a cluster that just died and is still named by the
        // directory for a few seconds, is tried again after 1 s.)
        let again = match &result {
            Err(whep_client::ClientError::Http {
                status: 404 | 409 | 503,
                detail,
                retry_after,
            }) => Some((detail.clone(), *retry_after)),
            Err(e @ whep_client::ClientError::Request { .. }) => Some((e.to_string(), Some(1))),
            _ => None,
        };
        if let (Some((detail, retry_after)), Some(until)) = (again, waiting_until) {
            // The server's pause, but no later than the end of the wait: one more try then.
            let left = until.saturating_duration_since(std::time::Instant::now());
            let pause = Duration::from_secs(retry_after.unwrap_or(2).clamp(1, 30)).min(left);
            if !left.is_zero() {
                eprintln!(
                    "whep-client: {detail}; trying again in {:.1} s",
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        break result;
    };
    drop(frames_out);
    if let Some(w) = writer
        && let Ok(Err(e)) = w.await
    {
        eprintln!("whep-client: writing the frame log: {e}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(s) => {
            let summary = if json {
                serde_json::to_string(&s).expect("summary serializes")
            } else {
                format!(
                    "{} video frames ({}, {}x{}), {} audio packets; first frame after {} ms",
                    s.video_frames,
                    s.codec.as_deref().unwrap_or("?"),
                    s.width.unwrap_or(0),
                    s.height.unwrap_or(0),
                    s.audio_packets,
                    s.first_frame_ms.unwrap_or(0)
                )
            };
            out::last_line(summary, ExitCode::SUCCESS)
        }
        Err(e) => failed(&e, json),
    }
}

/// Writes `--frame-log` lines until the frame sender is gone.
async fn write_frame_log(
    file: std::fs::File,
    mut frames: tokio::sync::mpsc::UnboundedReceiver<whep_client::VideoFrame>,
) -> std::io::Result<()> {
    use std::io::Write;
    // Unbuffered: one write per frame (30 a second), and nothing lost if the process is
    // killed.
    let mut out = file;
    while let Some(f) = frames.recv().await {
        let tail: String = f.tail.iter().map(|b| format!("{b:02x}")).collect();
        let line =
            json!({"at_us": f.at_us, "rtp_time": f.rtp_time, "keyframe": f.keyframe, "tail": tail});
        writeln!(out, "{line}")?;
    }
    out.flush()
}

async fn load(
    url: String,
    token: Option<String>,
    viewers: usize,
    duration: u64,
    ramp: f64,
    json: bool,
) -> ExitCode {
    let http = whep_client::http_client();
    let results: Arc<Mutex<Vec<Result<Summary, String>>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / ramp.max(0.1));
    for i in 0..viewers {
        let opts = Options {
            url: url.clone(),
            token: token.clone(),
            frames: None,
            timeout: Duration::from_secs(duration),
            duration: Some(Duration::from_secs(duration)),
            rtp_only: true,
            control: None,
            frames_out: None,
            ..Default::default()
        };
        let http = http.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let r = watch(&http, opts, |_| {}).await.map_err(|e| e.to_string());
            results.lock().await.push(r);
        }));
        if i + 1 < viewers {
            tokio::time::sleep(gap).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let results = results.lock().await;
    let ok: Vec<&Summary> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let fps: Vec<f64> = ok
        .iter()
        .map(|s| s.video_frames as f64 / s.seconds.max(0.001))
        .collect();
    let media: Vec<&&Summary> = ok.iter().filter(|s| s.video_frames > 0).collect();
    let summary = json!({
        "viewers": viewers,
        "connected": ok.iter().filter(|s| s.connected_ms.is_some()).count(),
        "with_video": media.len(),
        "failed": errors.len(),
        "errors": errors.iter().take(5).collect::<Vec<_>>(),
        "video_packets": ok.iter().map(|s| s.video_packets).sum::<u64>(),
        "audio_packets": ok.iter().map(|s| s.audio_packets).sum::<u64>(),
        "lost_packets": ok.iter().map(|s| s.lost_packets).sum::<u64>(),
        "fps_min": fps.iter().cloned().fold(f64::INFINITY, f64::min).min(1e9),
        "fps_mean": if fps.is_empty() { 0.0 } else { fps.iter().sum::<f64>() / fps.len() as f64 },
        "first_frame_ms_p50": percentile(ok.iter().filter_map(|s| s.first_frame_ms), 0.5),
        "first_frame_ms_p95": percentile(ok.iter().filter_map(|s| s.first_frame_ms), 0.95),
        "first_frame_ms_max": ok.iter().filter_map(|s| s.first_frame_ms).max(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let status = if errors.is_empty() && media.len() == viewers {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    let text = if json {
        summary.to_string()
    } else {
        serde_json::to_string_pretty(&summary).expect("json")
    };
    out::last_line(text, status)
}

/// The `q` quantile of `values` (nearest rank), if there are any.
fn percentile(values: impl Iterator<Item = u64>, q: f64) -> Option<u64> {
    let mut v: Vec<u64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
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
        let missing = undocumented(&super::Cli::command());
        assert!(missing.is_empty(), "no --help text: {missing:?}");
    }
}
