//! Pulled live sessions (`"live": {"url": …}`): the gateway's transcoder reads an RTSP, SRT,
//! RTMP or HLS URL while the session has viewers, just in time as VOD transcoders are, and
//! comes back with backoff when the source drops.
//!
//! Owns the source's life for one pulled session: start on the first viewer, the session's
//! publisher slot held while it runs (viewers hear `publisher active`/`inactive` as with a
//! publisher), stop after the idle timeout with no viewer, retries after 1, 2, 4 … 30 s with
//! why in the session's `error`. The session itself (viewers, events, keyframe throttling) is
//! `session/`'s live session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::LiveVideo;
use crate::ingest::publish::{IngestContext, announce, video_args};
use crate::session::transcoder::{Command, Event, TranscoderProcess};
use crate::session::{Capture, Ingest, PublishError, Session};

/// The first retry after a source dropped or failed, and the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A source that played this long was fine: the next drop retries at the shortest backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// Grace for the transcoder's `stop` before SIGTERM, then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(4);

/// Starts pulling `session`'s URL whenever it has viewers, until the session is stopped.
pub fn spawn(session: Arc<Session>, ctx: IngestContext, idle_timeout: Duration) {
    let Some((url, video)) = session.spec.live.as_ref().map(|l| (l.url.clone(), l.video)) else {
        return;
    };
    let span = tracing::info_span!("pull", session = %session.name);
    tokio::spawn(
        Puller {
            session,
            ctx,
            url,
            copy_video: video == LiveVideo::Copy,
            idle_timeout,
        }
        .run()
        .instrument(span),
    );
}

struct Puller {
    session: Arc<Session>,
    ctx: IngestContext,
    url: String,
    copy_video: bool,
    idle_timeout: Duration,
}

/// How one run of the source ended.
enum RunEnd {
    /// No viewer for the idle timeout: stopped on purpose.
    Idle,
    /// The source dropped or could not be read: why.
    Dropped(String),
    /// The session was stopped.
    Stopped,
}

impl Puller {
    async fn run(self) {
        let mut viewers = self.session.viewers_watch();
        let mut backoff = BACKOFF_MIN;
        loop {
            // Just in time: nothing runs until a viewer comes.
            tokio::select! {
                r = viewers.wait_for(|n| *n > 0) => if r.is_err() { return },
                _ = self.session.cancelled() => return,
            }
            let started = Instant::now();
            match self.run_once(&mut viewers).await {
                RunEnd::Stopped => return,
                RunEnd::Idle => {
                    backoff = BACKOFF_MIN;
                    continue;
                }
                RunEnd::Dropped(why) => {
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff = BACKOFF_MIN;
                    }
                    let next = format!(
                        "the source {} {why}; retrying in {} s",
                        self.url,
                        backoff.as_secs()
                    );
                    tracing::warn!("{next}");
                    self.session.set_error(Some(next));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.session.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One run of the source: claim the session's publisher slot, start the transcoder, hand
    /// its ring to the viewers once ready, and keep it until it ends or nobody watches.
    async fn run_once(&self, viewers: &mut tokio::sync::watch::Receiver<usize>) -> RunEnd {
        let id = crate::ids::random_id();
        let claim = match self.session.claim_publisher(
            &id,
            Ingest::Pull,
            self.ctx.max_publishers,
            &self.ctx.metrics,
        ) {
            Ok(c) => c,
            Err(PublishError::Stopping) => return RunEnd::Stopped,
            Err(e) => return RunEnd::Dropped(format!("has no slot: {e}")),
        };
        let mut args = [
            "-i",
            &self.url,
            "--codec",
            "h264",
            "--pace",
            "realtime",
            "--live",
            "--on-end",
            "exit",
            "--control",
            "stdin",
        ]
        .map(String::from)
        .to_vec();
        args.extend(video_args(self.copy_video, self.ctx.max_height));
        let mut transcoder = match TranscoderProcess::spawn(
            &self.ctx.transcoder,
            &args,
            crate::session::RING_BYTES,
            &self.session.name,
        ) {
            Ok(t) => t,
            Err(e) => return RunEnd::Dropped(format!("cannot be pulled: {e}")),
        };
        self.ctx
            .metrics
            .transcoders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(url = %self.url, "pulling the source for the session's viewers");
        let (keyframe_tx, mut keyframe_rx) = mpsc::unbounded_channel::<Option<u8>>();
        let mut keyframe_tx = Some(keyframe_tx);
        let mut idle_since: Option<tokio::time::Instant> = None;
        let mut last_error: Option<String> = None;
        let end = loop {
            let idle_at = idle_since.map(|t| t + self.idle_timeout);
            tokio::select! {
                event = transcoder.next_event() => match event {
                    Some(ready @ Event::Ready { .. }) => {
                        if let Some(tx) = keyframe_tx.take() {
                            announce(&claim, &transcoder, &ready, tx, Capture::Written);
                            self.session.set_error(None);
                        }
                    }
                    Some(Event::Error { id: None, code, message }) => {
                        tracing::warn!(%code, "pull transcoder: {message}");
                        last_error = Some(format!("{code}: {message}"));
                    }
                    Some(_) => {}
                    None => break RunEnd::Dropped(match last_error.take() {
                        Some(e) => format!("failed ({e})"),
                        None => "ended".into(),
                    }),
                },
                Some(_) = keyframe_rx.recv() => {
                    let _ = transcoder.send(&Command::Keyframe).await;
                }
                changed = viewers.changed() => {
                    if changed.is_err() {
                        break RunEnd::Stopped;
                    }
                    let n = *viewers.borrow_and_update();
                    idle_since = match (n, idle_since) {
                        (0, None) => Some(tokio::time::Instant::now()),
                        (0, since) => since,
                        _ => None,
                    };
                }
                _ = async {
                    match idle_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!(
                        "no viewers for {:?}: the source is no longer pulled",
                        self.idle_timeout
                    );
                    break RunEnd::Idle;
                }
                _ = self.session.cancelled() => break RunEnd::Stopped,
            }
        };
        let (status, last_log) = transcoder.stop_with_last_log(STOP_GRACE).await;
        self.ctx
            .metrics
            .transcoders
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let (RunEnd::Dropped(_), Ok(s)) = (&end, &status)
            && !s.success()
        {
            tracing::debug!(status = %s, last_log = last_log.as_deref().unwrap_or("-"), "pull transcoder exited");
        }
        // Dropping the claim: viewers hear `publisher inactive` and wait for the next run.
        drop(claim);
        end
    }
}
