//! One task per egress: it waits for the session's source, runs a `wisp-transcoder egress`
//! process on its ring, and keeps the state the API shows. An HLS egress started on demand
//! (by a player's request) stops after the idle timeout with no request, and its files go.
//!
//! Owns the egress's lifecycle: a new source (a publisher's new publish, a transcoder's
//! restart) finishes the current file and starts the next, so each file holds one continuous
//! stream; a process that crashes is restarted after a pause (a new file), and given up after
//! [`MAX_CRASHES`] in [`CRASH_WINDOW`]; a failure that another try would repeat (the file
//! cannot be written, the container cannot hold the session's codecs) fails at once. Stopping
//! (DELETE, the session's end, the gateway's shutdown) lets the process finish its file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wisp_control::EgressEvent;

use super::process::EgressProcess;
use super::{EgressContext, EgressSpec};
use crate::session::{ReadySource, Source, ViewerSlot};

/// How long a process gets to finish its output when stopped.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// Crashes tolerated in [`CRASH_WINDOW`] before the egress fails.
const MAX_CRASHES: usize = 3;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Pause before a restart after the first, second, third crash in the window.
const RESTART_DELAYS: [Duration; MAX_CRASHES] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];
/// A restream's pause before its Nth try in a row: 1, 2, 4, 8, 16, then 30 s.
pub(super) fn push_backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.saturating_sub(1).min(5)).min(30))
}
/// A restream that ran this long starts its backoff over when it fails.
const PUSH_BACKOFF_RESET: Duration = Duration::from_secs(30);

/// Error codes of the egress process that another try would only repeat.
const FINAL_CODES: [&str; 4] = ["output", "not_supported", "usage", "ring"];

/// Where an egress is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressState {
    /// For the session's source: a VOD session's transcoder starting, a live session's
    /// publisher to publish.
    Waiting,
    /// Its process started and has not written its header yet.
    Starting,
    /// Writing.
    Running,
    /// Stopped by DELETE; its output is finished.
    Stopped,
    /// Finished by itself: `max_seconds`, or the session ended.
    Ended,
    /// Gave up; `error` says why.
    Failed,
}

/// What `GET /api/sessions/{session}/egress` shows of an egress.
#[derive(Debug, Clone, Serialize)]
pub struct EgressInfo {
    pub id: String,
    pub session: String,
    #[serde(flatten)]
    pub spec: EgressSpec,
    pub state: EgressState,
    /// The file being written, or the last one (HLS: the master playlist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Where players get HLS: the master playlist's path on this gateway. (A restream's or a
    /// WebSocket's target is its `url` above, from the request.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Started by a player's request; stops when no player asks for the idle timeout.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Every file written, one per run of the session's source.
    pub files: Vec<String>,
    /// Bytes in all of them.
    pub bytes_written: u64,
    /// Seconds of media in all of them.
    pub seconds: f64,
    /// What the output carries, as the egress process read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    pub restarts: u32,
    /// The egress process's pid while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The last error, if any (also while it retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it finished: `stopped`, `max_seconds`, `session_ended`, `idle`, `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// UTC, RFC 3339.
    pub created: String,
}

/// A running or finished egress.
#[derive(Debug)]
pub struct Egress {
    pub id: String,
    pub session: String,
    info: Mutex<EgressInfo>,
    /// Bytes and seconds of the files already finished (the current one adds its progress).
    done: Mutex<(u64, f64)>,
    pub(super) stop: CancellationToken,
    finished: watch::Sender<bool>,
    on_demand: bool,
    /// When a player last asked for its files (on-demand HLS).
    last_used: Mutex<Instant>,
    /// Where an HLS egress writes.
    hls_dir: PathBuf,
    finished_at: Mutex<Option<Instant>>,
}

impl Egress {
    pub(super) fn new(
        session: &str,
        spec: EgressSpec,
        on_demand: bool,
        hls_dir: PathBuf,
    ) -> Arc<Self> {
        let id = crate::ids::random_id()[..16].to_string();
        let url =
            matches!(spec, EgressSpec::Hls { .. }).then(|| format!("/hls/{session}/index.m3u8"));
        Arc::new(Self {
            info: Mutex::new(EgressInfo {
                id: id.clone(),
                session: session.to_string(),
                spec,
                state: EgressState::Waiting,
                file: None,
                url,
                on_demand,
                files: Vec::new(),
                bytes_written: 0,
                seconds: 0.0,
                video: None,
                audio: None,
                restarts: 0,
                pid: None,
                error: None,
                reason: None,
                created: utc(SystemTime::now(), ':'),
            }),
            id,
            session: session.to_string(),
            done: Mutex::new((0, 0.0)),
            stop: CancellationToken::new(),
            finished: watch::Sender::new(false),
            on_demand,
            last_used: Mutex::new(Instant::now()),
            hls_dir,
            finished_at: Mutex::new(None),
        })
    }

    pub fn is_hls(&self) -> bool {
        matches!(
            self.info.lock().expect("not poisoned").spec,
            EgressSpec::Hls { .. }
        )
    }

    /// Where an HLS egress writes its playlists and segments.
    pub fn hls_dir(&self) -> &Path {
        &self.hls_dir
    }

    /// A player asked for its files.
    pub fn touch(&self) {
        *self.last_used.lock().expect("not poisoned") = Instant::now();
    }

    /// An on-demand egress nobody asked for within `timeout`.
    fn idle(&self, timeout: Duration) -> bool {
        self.on_demand && self.last_used.lock().expect("not poisoned").elapsed() >= timeout
    }

    /// Whether it is writing (its process has written its header).
    pub fn is_running(&self) -> bool {
        self.info.lock().expect("not poisoned").state == EgressState::Running
    }

    pub fn info(&self) -> EgressInfo {
        self.info.lock().expect("not poisoned").clone()
    }

    pub fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    /// Stops it and waits up to `timeout` for its output to be finished; returns its state.
    pub async fn stop(&self, timeout: Duration) -> EgressInfo {
        self.stop.cancel();
        let mut finished = self.finished.subscribe();
        let _ = tokio::time::timeout(timeout, finished.wait_for(|f| *f)).await;
        self.info()
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut EgressInfo)) {
        f(&mut self.info.lock().expect("not poisoned"));
    }

    /// After a failed run: shows `error`, counts the restart, waits `delay` (or until the
    /// egress, its session or the gateway stops) before the next run.
    pub(super) async fn wait_to_retry(
        &self,
        error: String,
        delay: Duration,
        session: &crate::session::Session,
        gateway: &CancellationToken,
    ) {
        self.update(|i| {
            i.error = Some(error);
            i.restarts += 1;
            i.state = EgressState::Waiting;
            i.pid = None;
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.cancelled() => {}
            _ = session.cancelled() => {}
            _ = gateway.cancelled() => {}
        }
    }

    pub(super) fn spec(&self) -> EgressSpec {
        self.info.lock().expect("not poisoned").spec.clone()
    }

    /// The current file's progress, on top of the finished files'.
    pub(super) fn progress(&self, bytes: u64, seconds: f64) {
        let (b, s) = *self.done.lock().expect("not poisoned");
        self.update(|i| {
            i.bytes_written = b + bytes;
            i.seconds = round_ms(s + seconds);
        });
    }

    /// The current file is finished with `bytes` and `seconds`.
    fn file_done(&self, bytes: u64, seconds: f64) {
        let mut done = self.done.lock().expect("not poisoned");
        done.0 += bytes;
        done.1 += seconds;
        let (b, s) = *done;
        drop(done);
        self.update(|i| {
            i.bytes_written = b;
            i.seconds = round_ms(s);
        });
    }

    pub(super) fn finish(&self, state: EgressState, reason: &str, error: Option<String>) {
        self.update(|i| {
            i.state = state;
            i.reason = Some(reason.to_string());
            if error.is_some() {
                i.error = error;
            }
        });
        tracing::info!(?state, reason, "egress finished");
        *self.finished_at.lock().expect("not poisoned") = Some(Instant::now());
        self.finished.send_replace(true);
    }

    /// Why it failed, if it failed within `recently`.
    pub fn failed_within(&self, recently: Duration) -> Option<String> {
        let at = (*self.finished_at.lock().expect("not poisoned"))?;
        let info = self.info();
        (info.state == EgressState::Failed && at.elapsed() < recently)
            .then(|| info.error.unwrap_or_default())
    }
}

/// How one run of the process ended.
enum Outcome {
    /// It exited by itself.
    Exited,
    /// The session's source changed (a new one, or none): finish this file.
    SourceChanged,
    /// DELETE.
    Stop,
    /// The session or the gateway is stopping.
    SessionEnded,
    /// On demand, and no player asked for the idle timeout.
    Idle,
}

/// What one run of the process reported.
#[derive(Default)]
struct Run {
    ended: Option<(String, u64, f64)>,
    error: Option<(String, String)>,
    progress: (u64, f64),
}

/// Runs `egress` until it finishes, holding `slot` (the session's source runs for it).
pub(super) async fn run(egress: Arc<Egress>, slot: ViewerSlot, ctx: EgressContext) {
    let session = slot.session().clone();
    let mut source = slot.source();
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut push_failures: u32 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tracing::info!(spec = ?egress.spec(), "egress created");
    loop {
        // The session's source, once it runs.
        let ready = loop {
            let current = source.borrow_and_update().clone();
            if let Source::Ready(r) = current {
                break Some(r);
            }
            egress.update(|i| i.state = EgressState::Waiting);
            tokio::select! {
                changed = source.changed() => if changed.is_err() { break None },
                _ = egress.stop.cancelled() => break None,
                _ = session.cancelled() => break None,
                _ = ctx.cancel.cancelled() => break None,
                _ = tick.tick(), if egress.on_demand => if egress.idle(ctx.idle_timeout) { break None },
            }
        };
        let Some(ready) = ready else {
            if egress.stop.is_cancelled() {
                egress.finish(EgressState::Stopped, "stopped", None);
            } else if egress.idle(ctx.idle_timeout) {
                let _ = std::fs::remove_dir_all(&egress.hls_dir);
                egress.finish(EgressState::Ended, "idle", None);
            } else {
                egress.finish(EgressState::Ended, "session_ended", None);
            }
            break;
        };
        let spec = egress.spec();
        let pushes = matches!(spec, EgressSpec::Rtmp { .. } | EgressSpec::Srt { .. });
        let run_started = Instant::now();
        let (path, args) = match spec {
            // Its own task runs these (websocket.rs), never this one.
            EgressSpec::Websocket { .. } => {
                egress.finish(
                    EgressState::Failed,
                    "failed",
                    Some("a websocket egress cannot run here".into()),
                );
                break;
            }
            EgressSpec::Rtmp { url } | EgressSpec::Srt { url } => {
                let format = match url.starts_with("srt://") {
                    true => "mpegts",
                    false => "flv",
                };
                let mut args = track_args(&ready);
                args.extend([
                    "push".to_string(),
                    "--url".into(),
                    url.clone(),
                    "--format".into(),
                    format.into(),
                ]);
                (PathBuf::from(url), args)
            }
            EgressSpec::Record {
                format,
                max_seconds,
            } => {
                let left = max_seconds.map(|m| m - egress.info().seconds);
                if left.is_some_and(|l| l < 0.05) {
                    egress.finish(EgressState::Ended, "max_seconds", None);
                    break;
                }
                let dir = ctx.recordings.join(&session.name);
                let path = match new_file(&dir, format.name()) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!("{e}");
                        egress.finish(EgressState::Failed, "failed", Some(e));
                        break;
                    }
                };
                let mut args = track_args(&ready);
                args.extend([
                    "record".to_string(),
                    "--format".into(),
                    format.name().into(),
                    "--output".into(),
                    path.display().to_string(),
                ]);
                if let Some(l) = left {
                    args.extend(["--max-seconds".to_string(), format!("{l:.3}")]);
                }
                (path, args)
            }
            EgressSpec::Hls { ladder } => {
                // Each run starts its playlists afresh.
                let dir = egress.hls_dir.clone();
                let _ = std::fs::remove_dir_all(&dir);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    let e = format!("cannot create the HLS directory {}: {e}", dir.display());
                    tracing::error!("{e}");
                    egress.finish(EgressState::Failed, "failed", Some(e));
                    break;
                }
                let mut args = track_args(&ready);
                args.extend(["hls".to_string(), "--dir".into(), dir.display().to_string()]);
                for rung in &ladder {
                    args.extend(["--rendition".to_string(), rung.arg()]);
                }
                if ready.fps > 0.0 {
                    args.extend(["--fps".to_string(), format!("{:.3}", ready.fps)]);
                }
                let info = session.info();
                if let Some(b) =
                    info.ingest_bitrate
                        .or(info.spec.video.as_ref().and_then(|v| v.bitrate))
                {
                    args.extend(["--source-bitrate".to_string(), b.to_string()]);
                }
                (dir.join("index.m3u8"), args)
            }
        };
        let mut process = match EgressProcess::spawn(&ctx.program, &ready.ring, &args) {
            Ok(p) => p,
            Err(e) => {
                let e = format!("starting {}: {e}", ctx.program.display());
                tracing::error!("{e}");
                let _ = std::fs::remove_file(&path);
                egress.finish(EgressState::Failed, "failed", Some(e));
                break;
            }
        };
        ctx.metrics.egresses.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pid = process.pid, file = %path.display(), "egress process started");
        let pid = process.pid;
        egress.update(|i| {
            i.pid = Some(pid);
            i.state = EgressState::Starting;
            // A restream's URL is its spec's `url`.
            if !pushes {
                i.file = Some(path.display().to_string());
                i.files.push(path.display().to_string());
            }
        });
        let generation = ready.generation;
        let mut run = Run::default();
        let outcome = loop {
            tokio::select! {
                event = process.next_event() => match event {
                    Some(event) => on_event(&egress, &session, &mut run, event),
                    None => break Outcome::Exited,
                },
                changed = source.changed() => {
                    let same = changed.is_ok() && matches!(&*source.borrow(),
                        Source::Ready(r) if r.generation == generation);
                    if !same {
                        break Outcome::SourceChanged;
                    }
                }
                _ = egress.stop.cancelled() => break Outcome::Stop,
                _ = session.cancelled() => break Outcome::SessionEnded,
                _ = ctx.cancel.cancelled() => break Outcome::SessionEnded,
                _ = tick.tick(), if egress.on_demand => if egress.idle(ctx.idle_timeout) {
                    break Outcome::Idle;
                },
            }
        };
        let (status, last_log) = match outcome {
            Outcome::Exited => process.wait(Duration::from_secs(2)).await,
            _ => {
                let (events, status, last) = process.finish(FINISH_GRACE).await;
                for event in events {
                    on_event(&egress, &session, &mut run, event);
                }
                (status, last)
            }
        };
        ctx.metrics.egresses.fetch_sub(1, Ordering::Relaxed);
        egress.update(|i| i.pid = None);
        let (bytes, seconds) = match &run.ended {
            Some((_, b, s)) => (*b, *s),
            None => {
                let on_disk = std::fs::metadata(&path).map_or(0, |m| m.len());
                (on_disk, run.progress.1)
            }
        };
        egress.file_done(bytes, seconds);
        if bytes == 0 && !egress.is_hls() && !pushes {
            // Nothing came (stopped before the first keyframe, or a refusal): no empty file.
            let _ = std::fs::remove_file(&path);
            egress.update(|i| {
                i.files.retain(|f| Path::new(f) != path);
                i.file = i.files.last().cloned();
            });
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        tracing::info!(%status, bytes, seconds, "egress process exited");
        match outcome {
            Outcome::Stop => {
                egress.finish(EgressState::Stopped, "stopped", None);
                break;
            }
            Outcome::SessionEnded => {
                egress.finish(EgressState::Ended, "session_ended", None);
                break;
            }
            Outcome::Idle => {
                tracing::info!("no player asked for {:?}", ctx.idle_timeout);
                let _ = std::fs::remove_dir_all(&egress.hls_dir);
                egress.finish(EgressState::Ended, "idle", None);
                break;
            }
            Outcome::SourceChanged => continue,
            Outcome::Exited => {}
        }
        if run
            .ended
            .as_ref()
            .is_some_and(|(r, _, _)| r == "max_seconds")
        {
            egress.finish(EgressState::Ended, "max_seconds", None);
            break;
        }
        // A restream's server may come back (a refused or dropped connection is retried for
        // as long as the egress lives); a file or directory that cannot be written, or codecs
        // the output cannot hold, would fail the same way again.
        if let Some((code, message)) = &run.error
            && (FINAL_CODES.contains(&code.as_str()) && !(pushes && code == "output"))
        {
            egress.finish(EgressState::Failed, "failed", Some(message.clone()));
            break;
        }
        let error = match (&run.error, last_log) {
            (Some((_, m)), _) => m.clone(),
            (None, Some(line)) => format!("exited ({status}); its last log line: {line}"),
            (None, None) => format!("exited ({status})"),
        };
        let delay = if pushes {
            // A run that lasted starts the backoff over.
            if run_started.elapsed() >= PUSH_BACKOFF_RESET {
                push_failures = 0;
            }
            push_failures += 1;
            push_backoff(push_failures)
        } else {
            // A crash: try again, a while later, a few times.
            let now = Instant::now();
            crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
            crashes.push_back(now);
            if crashes.len() > MAX_CRASHES {
                let e = format!(
                    "the egress process exited {} times within {CRASH_WINDOW:?}; last: {error}",
                    crashes.len()
                );
                tracing::error!("{e}");
                egress.finish(EgressState::Failed, "failed", Some(e));
                break;
            }
            RESTART_DELAYS[crashes.len() - 1]
        };
        tracing::warn!("egress process failed ({error}); again in {delay:?}");
        egress
            .wait_to_retry(error, delay, &session, &ctx.cancel)
            .await;
    }
    drop(slot);
}

fn on_event(egress: &Egress, session: &crate::session::Session, run: &mut Run, event: EgressEvent) {
    match event {
        EgressEvent::Started {
            output: _,
            start_unix_ms: _,
            video,
            audio,
        } => egress.update(|i| {
            i.state = EgressState::Running;
            i.video = video;
            i.audio = audio;
        }),
        EgressEvent::Progress { bytes, seconds } => {
            run.progress = (bytes, seconds);
            egress.progress(bytes, seconds);
        }
        EgressEvent::KeyframeRequest => session.request_keyframe(None),
        EgressEvent::Ended {
            reason,
            bytes,
            seconds,
        } => run.ended = Some((reason, bytes, seconds)),
        EgressEvent::Error { code, message } => {
            tracing::warn!(%code, "egress: {message}");
            egress.update(|i| i.error = Some(message.clone()));
            run.error = Some((code, message));
        }
        EgressEvent::Unknown => {}
    }
}

/// The egress process's `--video`/`--audio` for a source.
pub(super) fn track_args(source: &ReadySource) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(t) = source.main_video_track() {
        let codec = source.video_format.codec.arg();
        args.extend(["--video".to_string(), format!("{t}:{codec}")]);
    }
    if let Some(t) = source.audio_track {
        args.extend(["--audio".to_string(), format!("{t}:opus")]);
    }
    args
}

/// Creates a new, empty file `{dir}/{UTC now}.{ext}` (`-2`, `-3`, … if one exists already),
/// making `dir` if needed.
fn new_file(dir: &Path, ext: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the recordings directory {}: {e}",
            dir.display()
        )
    })?;
    let stamp = utc(SystemTime::now(), '-');
    for n in 1..1000 {
        let name = match n {
            1 => format!("{stamp}.{ext}"),
            n => format!("{stamp}-{n}.{ext}"),
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
        }
    }
    Err(format!(
        "{}: too many recordings started this second",
        dir.display()
    ))
}

/// `t` in UTC as `2026-12-06T10:20:00Z`, with `sep` between hours, minutes and seconds (`-`
/// for file names, which a colon makes awkward on some systems and in FFmpeg's URL syntax).
pub fn utc(t: SystemTime, sep: char) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 → civil date (the proleptic Gregorian calendar; H. Hinnant's
    // days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}{sep}{:02}{sep}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restreams_back_off_to_thirty_seconds() {
        let delays: Vec<u64> = (1..=8).map(|n| push_backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn utc_dates_are_civil_dates() {
        let at = |s: u64| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(s), ':');
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_551_444), "2026-12-06T10:04:04Z");
        assert_eq!(
            utc(
                SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_799),
                '-'
            ),
            "2099-12-31T23-59-59Z"
        );
    }

    #[test]
    fn recordings_get_new_files_and_never_overwrite() {
        let dir = std::env::temp_dir().join(format!("wisp-egress-{}", crate::ids::random_id()));
        let a = new_file(&dir.join("demo"), "mp4").unwrap();
        std::fs::write(&a, b"kept").unwrap();
        let b = new_file(&dir.join("demo"), "mp4").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"kept");
        // A file where the directory should be: a clear error naming it.
        let blocked = dir.join("file");
        std::fs::write(&blocked, b"").unwrap();
        let e = new_file(&blocked.join("demo"), "mp4").unwrap_err();
        assert!(e.contains("cannot create the recordings directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
