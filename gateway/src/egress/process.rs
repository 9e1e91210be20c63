//! One `wisp-transcoder egress` child: spawned with a session's ring, heard on stdout, stopped
//! so that it finishes its output.
//!
//! Owns the child's lifecycle as `transcoder.rs` owns a transcoder's (the ring handed down as
//! descriptors, stderr joined to ours, no orphan: the child stops when its stdin pipe closes,
//! which the kernel does if we die). What the events mean for the egress is `supervise.rs`'s.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rtp_ring::Ring;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wisp_control::EgressEvent;

/// A running egress process.
#[derive(Debug)]
pub struct EgressProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<EgressEvent>,
    log: Option<JoinHandle<Option<String>>>,
    pub pid: u32,
}

impl EgressProcess {
    /// Starts `program egress` with `ring` handed down and `args` after the ring's.
    pub fn spawn(program: &Path, ring: &Ring, args: &[String]) -> std::io::Result<Self> {
        let (mut process, stdout) = Self::spawn_raw(program, ring, args)?;
        let (tx, events) = mpsc::channel(64);
        process.events = events;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<EgressEvent>(&line) {
                    Ok(EgressEvent::Unknown) => tracing::debug!(%line, "unknown egress event"),
                    Ok(ev) => {
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(%line, "unreadable egress output: {e}"),
                }
            }
        });
        Ok(process)
    }

    /// As [`Self::spawn`], for a mode whose stdout is its output (`pcm`): the caller reads it,
    /// and there are no events.
    pub fn spawn_raw(
        program: &Path,
        ring: &Ring,
        args: &[String],
    ) -> std::io::Result<(Self, ChildStdout)> {
        let mut cmd = Command::new(program);
        cmd.arg("egress");
        let (ring_fd, event_fd) = ring.pass_to_child(cmd.as_std_mut());
        cmd.arg("--ring-fd").arg(ring_fd.to_string());
        if let Some(fd) = event_fd {
            cmd.arg("--ring-eventfd").arg(fd.to_string());
        }
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().expect("stdout was piped");
        let log = child
            .stderr
            .take()
            .map(|e| tokio::spawn(crate::session::transcoder::forward_log(e)));
        // No events: a closed channel.
        let (_, events) = mpsc::channel(1);
        Ok((
            Self {
                stdin: child.stdin.take(),
                child,
                events,
                log,
                pid,
            },
            stdout,
        ))
    }

    /// The next event, or `None` once its stdout closed (it exited).
    pub async fn next_event(&mut self) -> Option<EgressEvent> {
        self.events.recv().await
    }

    /// Asks it to finish its output and exit, and waits up to `grace` for that (then SIGTERM,
    /// then SIGKILL). Returns the events it sent meanwhile, its exit status and its last log
    /// line.
    pub async fn finish(
        mut self,
        grace: Duration,
    ) -> (
        Vec<EgressEvent>,
        std::io::Result<ExitStatus>,
        Option<String>,
    ) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"{\"op\":\"stop\"}\n").await;
            let _ = stdin.flush().await;
        }
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + grace;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            events.push(ev);
        }
        let (status, last) = self.wait(Duration::from_secs(2)).await;
        (events, status, last)
    }

    /// Waits for it to exit (SIGTERM after `grace`, SIGKILL after twice that), then for the
    /// rest of its stderr. Returns its status and last log line.
    pub async fn wait(&mut self, grace: Duration) -> (std::io::Result<ExitStatus>, Option<String>) {
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(pid = self.pid, "egress did not exit; sending SIGTERM");
                if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                match tokio::time::timeout(grace, self.child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        tracing::warn!(pid = self.pid, "egress ignored SIGTERM; killing it");
                        let _ = self.child.kill().await;
                        self.child.wait().await
                    }
                }
            }
        };
        let last = match self.log.take() {
            Some(log) => tokio::time::timeout(Duration::from_millis(500), log)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            None => None,
        };
        (status, last)
    }
}
