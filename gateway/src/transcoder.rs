//! One `wisp-transcoder` child process: spawned with its session's ring, commanded on stdin,
//! heard on stdout, stopped in escalating steps.
//!
//! Owns the child's lifecycle and the JSON-lines protocol (DESIGN.md "Control and events"). It
//! does not decide when a session needs a transcoder or what viewers are told (the session
//! layer does), and it never reads the ring (viewers do, through `ring()`).
//!
//! No orphan: the child's stdin is a pipe from us, and the transcoder exits when it closes, which
//! the kernel does when we exit for any reason, `kill -9` included.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rtp_ring::Ring;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// A command for the transcoder (one JSON line on its stdin).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TranscoderCommand {
    Play,
    Pause,
    Seek {
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        frame: Option<u64>,
    },
    Step {
        frames: i64,
    },
    SelectAudio {
        input: String,
        channels: Vec<u32>,
    },
    Keyframe,
    Status,
    Stop,
}

/// A track as the transcoder's `ready` event describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Track {
    /// Ring track index.
    pub index: u8,
    pub kind: String,
    pub codec: String,
    pub payload_type: u8,
    pub clock_rate: u32,
    #[serde(default)]
    pub channels: Option<u8>,
    pub ssrc: u32,
    #[serde(default)]
    pub fmtp: String,
}

/// The transcoder's `ready` event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Ready {
    pub tracks: Vec<Track>,
    pub duration: Option<f64>,
    pub fps: f64,
    pub width: u32,
    pub height: u32,
}

/// An event from the transcoder (one JSON line on its stdout).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TranscoderEvent {
    Ready(Ready),
    State {
        state: String,
        position: f64,
        frame: u64,
    },
    Position {
        position: f64,
        frame: u64,
    },
    Error {
        code: String,
        message: String,
    },
    Stats {
        video_frames: u64,
        packets: u64,
        corrupt_packets: u64,
    },
    /// An event this gateway does not know (a newer transcoder); logged and ignored.
    #[serde(other)]
    Unknown,
}

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
    events: mpsc::Receiver<TranscoderEvent>,
    ring: Ring,
    pid: u32,
}

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
        let mut cmd = Command::new(program);
        let (ring_fd, event_fd) = ring.pass_to_child(cmd.as_std_mut());
        cmd.args(args).arg("--ring-fd").arg(ring_fd.to_string());
        if let Some(fd) = event_fd {
            cmd.arg("--ring-eventfd").arg(fd.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its logs join ours; its events come on stdout.
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            program: program.to_path_buf(),
            source,
        })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let stdout = child.stdout.take().expect("stdout was piped");
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::channel(64);
        let session = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<TranscoderEvent>(&line) {
                    Ok(TranscoderEvent::Unknown) => {
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
    pub async fn send(&mut self, cmd: &TranscoderCommand) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or(std::io::ErrorKind::BrokenPipe)?;
        let mut line = serde_json::to_vec(cmd).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await
    }

    /// The next event, or `None` once the transcoder's stdout closed (it exited).
    pub async fn next_event(&mut self) -> Option<TranscoderEvent> {
        self.events.recv().await
    }

    /// Its exit status if it has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it: `stop` and closed stdin, then SIGTERM after half of `grace`, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        let _ = self.send(&TranscoderCommand::Stop).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_match_the_transcoders_protocol() {
        let seek = TranscoderCommand::Seek {
            to: Some(12.5),
            frame: None,
        };
        assert_eq!(
            serde_json::to_string(&seek).expect("json"),
            r#"{"op":"seek","to":12.5}"#
        );
        assert_eq!(
            serde_json::to_string(&TranscoderCommand::SelectAudio {
                input: "dub".into(),
                channels: vec![0, 1]
            })
            .expect("json"),
            r#"{"op":"select_audio","input":"dub","channels":[0,1]}"#
        );
        let line = r#"{"event":"state","state":"paused","position":1.5,"frame":45}"#;
        assert_eq!(
            serde_json::from_str::<TranscoderEvent>(line).expect("parses"),
            TranscoderEvent::State {
                state: "paused".into(),
                position: 1.5,
                frame: 45
            }
        );
        let future = r#"{"event":"thumbnail","png":"..."}"#;
        assert_eq!(
            serde_json::from_str::<TranscoderEvent>(future).expect("parses"),
            TranscoderEvent::Unknown
        );
    }
}
