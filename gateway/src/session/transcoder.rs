//! One `wisp-transcoder` child process: spawned with its session's ring, commanded on stdin,
//! heard on stdout, stopped in escalating steps.
//!
//! Owns the child's lifecycle; the JSON-lines messages (DESIGN.md "Control and events") are the
//! `wisp-control` crate's, shared with the transcoder. It
//! does not decide when a session needs a transcoder or what viewers are told (the session
//! layer does), and it never reads the ring (viewers do, through `ring()`).
//!
//! No orphan: the child's stdin is a pipe from us, and the transcoder exits when it closes, which
//! the kernel does when we exit for any reason, `kill -9` included.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rtp_ring::Ring;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, Command as ProcessCommand};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
pub use wisp_control::{Command, Event};

/// Why a transcoder could not be started. Ours (configuration or the machine), not a viewer's.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("creating the session ring: {0}")]
    Ring(#[from] rtp_ring::OpenError),
    #[error("starting {program}: {source}")]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running transcoder.
#[derive(Debug)]
pub struct TranscoderProcess {
    child: Child,
    /// `None` once closed (which asks the transcoder to exit).
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Event>,
    ring: Ring,
    pid: u32,
    /// Forwards its stderr to ours; ends with its last line when the child closed it.
    log: Option<JoinHandle<Option<String>>>,
}

/// How long to wait, once it exited, for the rest of its stderr.
const LOG_DRAIN: Duration = Duration::from_millis(500);
/// A kept log line is cut to this many characters.
const MAX_LOG_LINE: usize = 400;

impl TranscoderProcess {
    /// Starts `program` with `args` (inputs and encode options) and a new memfd ring of
    /// `ring_bytes`, handed down as `--ring-fd`/`--ring-eventfd`. The child ends at the end of
    /// its media only when asked to; the gateway passes `--on-end wait` so viewers can seek back.
    pub fn spawn(
        program: &Path,
        args: &[String],
        ring_bytes: u64,
        name: &str,
    ) -> Result<Self, SpawnError> {
        let ring = Ring::create_memfd(&format!("wisp-{name}"), ring_bytes)?;
        let mut cmd = ProcessCommand::new(program);
        let (ring_fd, event_fd) = ring.pass_to_child(cmd.as_std_mut());
        cmd.args(args).arg("--ring-fd").arg(ring_fd.to_string());
        if let Some(fd) = event_fd {
            cmd.arg("--ring-eventfd").arg(fd.to_string());
        }
        // Its events come on stdout. Its logs join ours through a pipe, so that the last line
        // can explain an exit it reported no error for (the dynamic loader's "error while
        // loading shared libraries", say).
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            program: program.to_path_buf(),
            source,
        })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let stdout = child.stdout.take().expect("stdout was piped");
        let stdin = child.stdin.take();
        let log = Some(tokio::spawn(forward_log(
            child.stderr.take().expect("stderr was piped"),
        )));
        let (tx, events) = mpsc::channel(64);
        let session = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(Event::Unknown) => {
                        tracing::debug!(%session, %line, "unknown transcoder event")
                    }
                    Ok(ev) => {
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(%session, %line, "unreadable transcoder output: {e}"),
                }
            }
        });
        tracing::info!(session = name, pid, "transcoder started");
        Ok(Self {
            child,
            stdin,
            events,
            ring,
            pid,
            log,
        })
    }

    /// The session's ring (readers take their own cursor on it).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a command. Fails once the transcoder has exited or its stdin was closed.
    pub async fn send(&mut self, cmd: &Command) -> std::io::Result<()> {
        self.request(None, cmd).await
    }

    /// Sends a command tagged with `id`: the transcoder answers it with one `done` or `error`
    /// event carrying that id.
    pub async fn request(&mut self, id: Option<u64>, cmd: &Command) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or(std::io::ErrorKind::BrokenPipe)?;
        let mut line = wisp_control::request_line(id, cmd).into_bytes();
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await
    }

    /// The next event, or `None` once the transcoder's stdout closed (it exited).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Its exit status if it has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it as [`Self::stop`] does, then returns its exit status with the last line it
    /// wrote to stderr (waiting up to [`LOG_DRAIN`] for the rest of its output).
    pub async fn stop_with_last_log(
        mut self,
        grace: Duration,
    ) -> (std::io::Result<ExitStatus>, Option<String>) {
        let log = self.log.take();
        let status = self.stop(grace).await;
        let last = match log {
            Some(log) => match tokio::time::timeout(LOG_DRAIN, log).await {
                Ok(Ok(line)) => line,
                _ => None,
            },
            None => None,
        };
        (status, last)
    }

    /// Stops it: `stop` and closed stdin, then SIGTERM after half of `grace`, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        let _ = self.send(&Command::Stop).await;
        self.stdin = None;
        if let Ok(status) = tokio::time::timeout(grace / 2, self.child.wait()).await {
            return status;
        }
        tracing::warn!(pid = self.pid, "transcoder ignored stop; sending SIGTERM");
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if let Ok(status) = tokio::time::timeout(grace / 2, self.child.wait()).await {
            return status;
        }
        tracing::warn!(pid = self.pid, "transcoder ignored SIGTERM; killing it");
        self.child.kill().await?;
        self.child.wait().await
    }
}

/// Copies the child's stderr to ours line by line (until it closes, so the child never blocks
/// on a full pipe) and returns its last non-empty line.
pub(crate) async fn forward_log(stderr: ChildStderr) -> Option<String> {
    use std::io::Write;
    let mut lines = BufReader::new(stderr).split(b'\n');
    let mut last = None;
    while let Ok(Some(line)) = lines.next_segment().await {
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            continue;
        }
        // Our own stderr failing (closed by whoever started us) must not stop the draining.
        let _ = writeln!(std::io::stderr().lock(), "{text}");
        last = Some(text.chars().take(MAX_LOG_LINE).collect());
    }
    last
}
