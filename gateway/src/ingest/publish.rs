//! One RTMP or SRT publisher's way into a live session: its token checked as WHIP's is, the
//! session's one publisher slot claimed, and a transcoder started that reads the publisher's
//! stream (FLV or MPEG-TS) from a FIFO and writes WebRTC-ready RTP into a new ring, which the
//! session's viewers are handed once the transcoder is ready.
//!
//! Owns that hand-over and the transcoder's life for the publish: keyframe requests from
//! viewers become the transcoder's `keyframe` command, and the publish ends when the publisher
//! does (its stream's end reaches the transcoder as EOF), when the transcoder exits, or when
//! the session is stopped. Reading the wire protocols is `rtmp.rs`'s and `srt.rs`'s. FFmpeg
//! stays in the transcoder process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::auth::{AuthError, Scope, Verifier};
use crate::config::{VideoCodec, VideoFormat};
use crate::ingest::key::PublishKey;
use crate::metrics::Metrics;
use crate::session::transcoder::{Command, Event, SpawnError, TranscoderProcess};
use crate::session::{
    Capture, Ingest, PublishError, PublisherClaim, ReadySource, Registry, Session,
};

/// Recent records whose payloads the viewers share.
const PAYLOAD_CACHE_SLOTS: usize = 2048;
/// Grace for the transcoder's `stop` before SIGTERM, then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(4);
/// A transcoder that has not reported `ready` this long after the stream began is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What every ingest listener shares.
#[derive(Debug, Clone)]
pub struct IngestContext {
    pub sessions: Registry,
    pub verifier: Arc<Verifier>,
    pub max_publishers: usize,
    pub metrics: Arc<Metrics>,
    pub transcoder: PathBuf,
    /// A private directory (mode 0700) for the FIFOs the transcoders read.
    pub fifo_dir: PathBuf,
    /// `[live] max_height`: taller sources are scaled down when transcoded.
    pub max_height: Option<u32>,
}

/// Why a publisher is refused. The publisher's (a bad key or token, a busy session) or ours
/// (no transcoder).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Key(#[from] crate::ingest::key::KeyError),
    #[error("token refused: {0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("cannot start the transcoder: {0}")]
    Spawn(#[from] SpawnError),
    #[error("the transcoder's input pipe: {0}")]
    Pipe(std::io::Error),
}

/// A publish under way: where the publisher's stream goes, and how the publish is doing.
#[derive(Debug)]
pub struct Publishing {
    /// The transcoder's input. Dropping it ends the stream (EOF), and so the publish.
    pub input: pipe::Sender,
    /// `Some(reason)` once the publish ended from the gateway's side (transcoder exited,
    /// session stopped): the listener closes its connection then.
    pub ended: watch::Receiver<Option<String>>,
    pub session: Arc<Session>,
}

impl Publishing {
    /// Passes bytes of the stream to the transcoder, with when they were read from the
    /// publisher (`rtp_ring::now_us`): a record of the transcoder's `--timed-input` (a
    /// 12-byte header, length u32 LE and that time u64 LE, then the bytes). The time becomes
    /// the capture time of what it makes from them, and the ingest latency counts from it.
    pub async fn send(&mut self, bytes: &[u8], arrived_us: u64) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let len = u32::try_from(bytes.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a record over 4 GiB")
        })?;
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&arrived_us.to_le_bytes());
        self.input.write_all(&header).await?;
        self.input.write_all(bytes).await
    }
}

/// How long a new RTMP or SRT publisher waits for a session's previous publisher to let go.
/// A publisher whose connection just closed keeps its claim while its transcoder turns the
/// last bytes into frames (a second or so): an encoder that reconnects at once, or the next
/// publish of a script, would otherwise be refused as a second publisher.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Claims the session's publisher slot, waiting up to [`CLAIM_WAIT`] while another holds it.
async fn claim_when_free(
    session: &Arc<crate::session::Session>,
    id: &str,
    ingest: Ingest,
    ctx: &IngestContext,
) -> Result<PublisherClaim, crate::session::PublishError> {
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        match session.claim_publisher(id, ingest, ctx.max_publishers, &ctx.metrics) {
            Err(crate::session::PublishError::Busy(_))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// Checks `key`'s token for `publish`, claims the session's publisher slot for resource `id`,
/// and starts its transcoder reading `format` (`flv` or `mpegts`) from a FIFO.
pub async fn begin(
    ctx: &IngestContext,
    key: &PublishKey,
    ingest: Ingest,
    format: &str,
    id: &str,
) -> Result<Publishing, IngestError> {
    let grant = ctx.verifier.verify(&key.token)?;
    grant.check(&key.session, Scope::Publish)?;
    let session = ctx.sessions.live(&key.session)?;
    let claim = claim_when_free(&session, id, ingest, ctx).await?;
    let fifo = ctx.fifo_dir.join(format!("{}-{id}.{format}", key.session));
    make_fifo(&fifo).map_err(IngestError::Pipe)?;
    // Opened read-write so that it opens before the transcoder does; the transcoder sees EOF
    // when this, the only writer, is dropped.
    let input = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&fifo)
        .map_err(IngestError::Pipe);
    let input = match input {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&fifo);
            return Err(e);
        }
    };
    let args = transcoder_args(&fifo, key.copy_video, ctx.max_height);
    let spawned = TranscoderProcess::spawn(
        &ctx.transcoder,
        &args,
        crate::session::RING_BYTES,
        &key.session,
    );
    let transcoder = match spawned {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&fifo);
            return Err(e.into());
        }
    };
    ctx.metrics
        .transcoders
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (ended_tx, ended) = watch::channel(None);
    let span = tracing::info_span!("ingest", session = %key.session, resource = %id);
    let run = Supervisor {
        claim,
        transcoder,
        fifo,
        metrics: ctx.metrics.clone(),
        ended: ended_tx,
        ingest,
    };
    tokio::spawn(run.run().instrument(span));
    Ok(Publishing {
        input,
        ended,
        session,
    })
}

/// The transcoder of an ingest: the stream (its format probed from its first bytes) written
/// as fast as it arrives (the publisher paces it), H.264 constrained baseline (or the
/// publisher's own, with `copy_video`) and Opus for every WebRTC viewer, and done at the
/// stream's end.
fn transcoder_args(fifo: &Path, copy_video: bool, max_height: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "-i".into(),
        fifo.display().to_string(),
        "--codec".into(),
        "h264".into(),
        "--pace".into(),
        "max".into(),
        "--live".into(),
        "--timed-input".into(),
        "--on-end".into(),
        "exit".into(),
        "--control".into(),
        "stdin".into(),
    ];
    args.extend(video_args(copy_video, max_height));
    args
}

/// The transcoder's video options for a live source: pass it through, or scale it down to
/// `max_height` when taller (`[live] max_height`).
pub fn video_args(copy_video: bool, max_height: Option<u32>) -> Vec<String> {
    match (copy_video, max_height) {
        (true, _) => vec!["--copy-video".into()],
        (false, Some(h)) => vec!["--max-height".into(), h.to_string()],
        (false, None) => Vec::new(),
    }
}

/// Makes a FIFO at `path` for the transcoder to read (mode 0600).
fn make_fifo(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .map_err(std::io::Error::from)
}

/// Hands a live transcoder's ring to the session's viewers once it reported `ready`; the
/// session's keyframe requests come on `keyframes`.
pub fn announce(
    claim: &PublisherClaim,
    transcoder: &TranscoderProcess,
    ready: &Event,
    keyframes: mpsc::UnboundedSender<Option<u8>>,
    capture: Capture,
) {
    let Event::Ready {
        tracks,
        fps,
        width,
        height,
        source_video,
        source_audio,
        ..
    } = ready
    else {
        return;
    };
    let find = |kind: &str| tracks.iter().find(|t| t.kind == kind).map(|t| t.index);
    tracing::info!(width, height, fps, "live transcoder ready");
    claim.announce(
        Arc::new(ReadySource {
            ring: transcoder.ring().clone(),
            payloads: crate::session::fanout::PayloadCache::new(PAYLOAD_CACHE_SLOTS),
            generation: claim.generation,
            video_track: find("video"),
            audio_track: find("audio"),
            layers: Vec::new(),
            alternates: Vec::new(),
            width: *width,
            height: *height,
            fps: *fps,
            duration: None,
            video_format: video_format(tracks),
            capture,
        }),
        keyframes,
    );
    claim.session().set_picture_size(*width, *height);
    claim.session().set_source_desc(crate::session::source_desc(
        source_video.clone(),
        source_audio.clone(),
    ));
}

/// What the transcoder's video track carries: its own constrained baseline, or with
/// `--copy-video` the profile and level of the publisher's SPS (from the track's fmtp).
fn video_format(tracks: &[wisp_control::TrackInfo]) -> VideoFormat {
    tracks
        .iter()
        .find(|t| t.kind == "video")
        .and_then(|t| {
            t.fmtp
                .split(';')
                .find_map(|p| p.trim().strip_prefix("profile-level-id="))
        })
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .map_or(VideoFormat::transcoded(VideoCodec::H264), |id| {
            VideoFormat::h264(id, true)
        })
}

/// Watches one ingest's transcoder for the session.
struct Supervisor {
    claim: PublisherClaim,
    transcoder: TranscoderProcess,
    fifo: PathBuf,
    metrics: Arc<Metrics>,
    ended: watch::Sender<Option<String>>,
    ingest: Ingest,
}

impl Supervisor {
    async fn run(mut self) {
        let session = self.claim.session().clone();
        let (keyframe_tx, mut keyframe_rx) = mpsc::unbounded_channel::<Option<u8>>();
        let mut keyframe_tx = Some(keyframe_tx);
        let mut refusal = None;
        let ready_by = tokio::time::sleep(READY_TIMEOUT);
        tokio::pin!(ready_by);
        tracing::info!(ingest = ?self.ingest, "publisher connected; transcoder starting");
        let reason = loop {
            tokio::select! {
                event = self.transcoder.next_event() => match event {
                    Some(ready @ Event::Ready { .. }) => {
                        let Some(tx) = keyframe_tx.take() else { continue };
                        announce(&self.claim, &self.transcoder, &ready, tx, Capture::Ingested);
                        session.set_error(None);
                    }
                    Some(Event::Error { id: None, code, message }) => {
                        tracing::warn!(%code, "ingest transcoder: {message}");
                        refusal = Some(message);
                    }
                    Some(_) => {}
                    // A stream the transcoder refused (e.g. copy of video that is not
                    // baseline) says why in the session's info until the next publish plays.
                    None => match refusal.take() {
                        Some(why) => {
                            session.set_error(Some(why.clone()));
                            break format!("the stream was refused: {why}");
                        }
                        None => break "the stream ended".to_string(),
                    },
                },
                Some(_) = keyframe_rx.recv() => {
                    let _ = self.transcoder.send(&Command::Keyframe).await;
                }
                _ = &mut ready_by, if keyframe_tx.is_some() => {
                    break format!(
                        "no playable audio or video within {} s of the stream",
                        READY_TIMEOUT.as_secs()
                    );
                }
                _ = session.cancelled() => break "the session was stopped".to_string(),
            }
        };
        let _ = self.ended.send(Some(reason.clone()));
        let (status, last_log) = self.transcoder.stop_with_last_log(STOP_GRACE).await;
        self.metrics
            .transcoders
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.fifo);
        match status {
            Ok(s) if s.success() => tracing::info!("publish ended: {reason}"),
            Ok(s) => tracing::warn!(
                status = %s,
                last_log = last_log.as_deref().unwrap_or("-"),
                "publish ended: {reason}; the transcoder exited with an error"
            ),
            Err(e) => tracing::warn!("publish ended: {reason}; stopping the transcoder: {e}"),
        }
        // Dropping the claim tells the session: viewers hear `publisher inactive`.
    }
}
