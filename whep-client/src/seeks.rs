//! `whep-client seeks`: how long a seek takes to show, as a viewer sees it.
//!
//! One viewer with a `control` channel asks for the status (duration, fps), then seeks again
//! and again, a gap apart, to targets spread over the media. For each seek it notes when the
//! reply, the `state` event at the target and each following keyframe arrived. A seek's first
//! frame is a keyframe (the server starts every new position on one), so the first keyframe
//! that follows the `state` event is the first frame of the new position; with `--keyframes`
//! the frames are written out so that a decoder can confirm what they show.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use whep_client::{ClientError, Control, Options, VideoFrame, control_request, watch};

/// What to measure.
pub struct Plan {
    pub url: String,
    pub token: Option<String>,
    pub count: u32,
    pub gap: Duration,
    pub keyframes: Option<PathBuf>,
    pub timeout: Duration,
}

/// One seek's timings, ms after the request was handed to the channel.
#[derive(Debug, Default)]
struct Seek {
    reply_ms: Option<f64>,
    error: Option<Value>,
    state_ms: Option<f64>,
    keyframes_ms: Vec<f64>,
    files: Vec<String>,
}

impl Seek {
    /// The first keyframe at or after the `state` event.
    fn shown_ms(&self) -> Option<f64> {
        let state = self.state_ms?;
        self.keyframes_ms.iter().copied().find(|k| *k >= state)
    }
}

/// Everything arriving from the viewer task.
struct Inbox {
    messages: UnboundedReceiver<String>,
    frames: UnboundedReceiver<VideoFrame>,
}

enum Arrival {
    Message(Instant, Value),
    Frame(VideoFrame),
    /// The deadline passed.
    Idle,
    /// The viewer ended (its result is in the task).
    Gone,
}

impl Inbox {
    async fn next(&mut self, until: Instant) -> Arrival {
        tokio::select! {
            m = self.messages.recv() => match m {
                Some(text) => Arrival::Message(
                    Instant::now(),
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                ),
                None => Arrival::Gone,
            },
            f = self.frames.recv() => match f {
                Some(f) => Arrival::Frame(f),
                None => Arrival::Gone,
            },
            _ = tokio::time::sleep_until(until.into()) => Arrival::Idle,
        }
    }
}

/// Seek targets spread over `duration` (s): whole seconds stepping by 11 modulo the usable
/// span, each with a different fraction so that targets fall anywhere in a GOP.
fn targets(count: u32, duration: f64) -> Vec<f64> {
    let span = (duration.floor() as u64).saturating_sub(3).max(1);
    let fractions = [0.1, 0.3, 0.5, 0.7, 0.9];
    (1..=count as u64)
        .map(|i| (1 + (i * 11) % span) as f64 + fractions[i as usize % fractions.len()])
        .collect()
}

fn ms(since: Instant, at: Instant) -> f64 {
    (at.saturating_duration_since(since).as_secs_f64() * 1e4).round() / 10.0
}

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

pub async fn run(plan: Plan) -> ExitCode {
    if let Some(dir) = &plan.keyframes
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("whep-client: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let (requests, requests_rx) = unbounded_channel();
    let (messages_tx, messages) = unbounded_channel();
    let (frames_tx, frames) = unbounded_channel();
    let opts = Options {
        url: plan.url.clone(),
        token: plan.token.clone(),
        frames: None,
        timeout: plan.timeout,
        duration: None,
        rtp_only: false,
        control: Some(Control {
            requests: requests_rx,
            messages: messages_tx,
            listen: Duration::ZERO,
        }),
        frames_out: Some(frames_tx),
        ..Default::default()
    };
    let viewer =
        tokio::spawn(async move { watch(&whep_client::http_client(), opts, |_| {}).await });
    let mut inbox = Inbox { messages, frames };

    // The status reply's state event gives the duration and the frame rate.
    let status = control_request(0, "status", &[]).expect("a valid op");
    let _ = requests.send(status);
    let started = Instant::now();
    let (duration, fps) = loop {
        match inbox.next(started + plan.timeout).await {
            Arrival::Message(_, m) if m["event"] == "state" => {
                match (m["duration"].as_f64(), m["fps"].as_f64()) {
                    (Some(d), Some(f)) if d > 4.0 && f > 0.0 => break (d, f),
                    _ => {
                        return fail(viewer, format!("this session cannot be seek-tested: {m}"))
                            .await;
                    }
                }
            }
            Arrival::Message(_, m) if m.get("error").is_some() => {
                return fail(viewer, format!("status refused: {m}")).await;
            }
            Arrival::Message(..) | Arrival::Frame(_) => {}
            Arrival::Idle => return fail(viewer, "no state event after `status`".into()).await,
            Arrival::Gone => return fail(viewer, "the viewer ended".into()).await,
        }
    };

    let mut results = Vec::new();
    for (n, target) in (1..).zip(targets(plan.count, duration)) {
        let request = control_request(n, "seek", &[format!("{target}")]).expect("a valid op");
        let sent = Instant::now();
        if requests.send(request).is_err() {
            return fail(viewer, "the viewer ended".into()).await;
        }
        let mut seek = Seek::default();
        // The transcoder reports the frame it seeks to; its time is within a frame of `target`.
        let near = |p: f64| (p - target).abs() <= 1.0 / fps;
        loop {
            match inbox.next(sent + plan.gap).await {
                Arrival::Message(at, m) => {
                    if m["id"] == n && m.get("event").is_none() {
                        seek.reply_ms = Some(ms(sent, at));
                        seek.error = m.get("error").cloned();
                    } else if m["event"] == "state"
                        && seek.state_ms.is_none()
                        && m["position"].as_f64().is_some_and(near)
                    {
                        seek.state_ms = Some(ms(sent, at));
                    }
                }
                Arrival::Frame(f) if f.keyframe && f.at >= sent => {
                    if let (Some(dir), Some(data)) = (&plan.keyframes, &f.data) {
                        let k = seek.keyframes_ms.len();
                        let path = dir.join(format!("seek-{n:02}-{k}.h264"));
                        if let Err(e) = std::fs::write(&path, data) {
                            eprintln!("whep-client: {}: {e}", path.display());
                        }
                        seek.files.push(path.display().to_string());
                    }
                    seek.keyframes_ms.push(ms(sent, f.at));
                }
                Arrival::Frame(_) => {}
                Arrival::Idle => break,
                Arrival::Gone => return fail(viewer, "the viewer ended".into()).await,
            }
        }
        let printed = crate::out::line(json!({
            "seek": n,
            "target": target,
            "reply_ms": seek.reply_ms,
            "error": seek.error,
            "state_ms": seek.state_ms,
            "shown_ms": seek.shown_ms(),
            "keyframes_ms": seek.keyframes_ms,
            "keyframe_files": seek.files,
        }));
        results.push(seek);
        if !printed {
            break; // stdout's reader is gone: the seeks so far make the status
        }
    }
    drop(requests);
    let outcome = viewer.await;

    let mut shown: Vec<f64> = results.iter().filter_map(Seek::shown_ms).collect();
    shown.sort_by(f64::total_cmp);
    let missing = results.len() - shown.len();
    let refused = results.iter().filter(|s| s.error.is_some()).count();
    let summary = json!({
        "seeks": results.len(),
        "shown": shown.len(),
        "refused": refused,
        "shown_ms": {"p50": pct(&shown, 50.0), "p95": pct(&shown, 95.0),
                     "min": shown.first(), "max": shown.last()},
    });
    let status = match outcome {
        Ok(Ok(_)) if missing == 0 && refused == 0 => ExitCode::SUCCESS,
        Ok(Ok(_)) => {
            eprintln!(
                "whep-client: {missing} of {} seeks showed no new keyframe",
                results.len()
            );
            ExitCode::FAILURE
        }
        Ok(Err(e)) => report(&e),
        Err(e) => {
            eprintln!("whep-client: the viewer task failed: {e}");
            ExitCode::FAILURE
        }
    };
    crate::out::last_line(summary, status)
}

fn report(e: &ClientError) -> ExitCode {
    eprintln!("whep-client: {e}");
    ExitCode::FAILURE
}

/// Ends a run that could not measure: the viewer's own error if it has one, else `why`.
async fn fail(
    viewer: tokio::task::JoinHandle<Result<whep_client::Summary, ClientError>>,
    why: String,
) -> ExitCode {
    if viewer.is_finished() {
        // The viewer stopped first: its error explains more than ours.
        if let Ok(Err(e)) = viewer.await {
            return report(&e);
        }
    } else {
        viewer.abort();
    }
    eprintln!("whep-client: {why}");
    ExitCode::FAILURE
}
