//! The control protocol: commands as JSON lines on stdin, events as JSON lines on stdout.
//!
//! Owns parsing commands, the stdin reader thread and the event writer. It does not act on
//! commands (`player.rs` does). One line per message keeps it usable from a shell:
//! `{"op":"seek","to":12.5}` in, `{"event":"state","state":"paused",...}` out.

use std::io::{BufRead, Write};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

/// A command from the gateway (or a person typing JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Play,
    Pause,
    /// Go to a time (`to`, seconds) or a frame (`frame`, counted from 0 at the output rate).
    Seek {
        #[serde(default)]
        to: Option<f64>,
        #[serde(default)]
        frame: Option<u64>,
    },
    /// While paused, emit exactly one frame `frames` away (negative: backwards).
    Step {
        frames: i64,
    },
    /// Take audio from input `input` (its id or position), rendering `channels` as stereo.
    SelectAudio {
        input: InputRef,
        #[serde(default)]
        channels: Option<Vec<u32>>,
    },
    /// Make the next video frame a keyframe (a viewer joined or lost packets).
    Keyframe,
    /// Stop and exit.
    Stop,
    /// Report state and position now.
    Status,
}

/// An input named by its id string or its position.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    Index(usize),
    Id(String),
}

/// What came in on the control channel.
#[derive(Debug)]
pub enum Incoming {
    Command(Command),
    /// A line that is not a command; answered with an `error` event, never fatal.
    Invalid(String),
    /// Stdin ended and that ends the process (stdin was a pipe or socket).
    Closed,
}

/// Parses one line into a command or a readable reason.
pub fn parse_line(line: &str) -> Result<Command, String> {
    let cmd: Command =
        serde_json::from_str(line).map_err(|e| format!("bad command {line:?}: {e}"))?;
    if let Command::Seek { to, frame } = &cmd {
        match (to, frame) {
            (Some(t), None) if t.is_finite() && *t >= 0.0 => {}
            (None, Some(_)) => {}
            _ => {
                return Err(format!(
                    "bad command {line:?}: seek takes \"to\" (seconds ≥ 0) or \"frame\""
                ));
            }
        }
    }
    Ok(cmd)
}

/// Starts the thread that reads stdin. `end_on_eof`: whether stdin's end means the parent is
/// gone (a pipe or socket), so the process must stop (no orphan outlives its parent).
pub fn spawn_stdin_reader(end_on_eof: bool) -> mpsc::Receiver<Incoming> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let msg = match parse_line(line) {
                    Ok(cmd) => Incoming::Command(cmd),
                    Err(e) => Incoming::Invalid(e),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            if end_on_eof {
                let _ = tx.send(Incoming::Closed);
            }
            // Otherwise keep the sender alive so the player does not read a disconnect as EOF.
            else {
                loop {
                    std::thread::park();
                }
            }
        })
        .expect("spawning the control thread");
    rx
}

/// Whether stdin is a pipe or a socket: the way a parent process controls us.
pub fn stdin_is_parent_channel() -> bool {
    use rustix::fs::FileType;
    rustix::fs::fstat(rustix::stdio::stdin())
        .map(|st| {
            matches!(
                FileType::from_raw_mode(st.st_mode),
                FileType::Fifo | FileType::Socket
            )
        })
        .unwrap_or(false)
}

/// A track as `ready` describes it, enough for the gateway to write SDP.
#[derive(Debug, Clone, Serialize)]
pub struct TrackInfo {
    /// Ring track index.
    pub index: u8,
    pub kind: &'static str,
    /// Codec name as SDP writes it: `H264`, `VP8`, `opus`.
    pub codec: &'static str,
    pub payload_type: u8,
    pub clock_rate: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    pub ssrc: u32,
    pub fmtp: String,
}

/// An input as `ready` describes it, for audio selection.
#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    pub id: String,
    pub index: usize,
    pub audio_channels: Option<u32>,
}

/// An event for the gateway.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Ready {
        tracks: Vec<TrackInfo>,
        /// Seconds, or null for endless sources (live URLs, the demo).
        duration: Option<f64>,
        fps: f64,
        width: u32,
        height: u32,
        inputs: Vec<InputInfo>,
        audio_input: Option<String>,
        audio_channels: Vec<u32>,
    },
    State {
        state: PlayState,
        position: f64,
        frame: u64,
    },
    Position {
        position: f64,
        frame: u64,
    },
    Error {
        code: &'static str,
        message: String,
    },
    /// Totals, at exit.
    Stats {
        video_frames: u64,
        audio_frames: u64,
        packets: u64,
        bytes: u64,
        corrupt_packets: u64,
        peak_rss_kb: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayState {
    Playing,
    Paused,
    Ended,
}

/// Writes one event line to stdout and flushes it. A gone reader is not our problem to report.
pub fn emit(event: &Event) {
    let Ok(line) = serde_json::to_string(event) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_from_their_json_lines() {
        assert_eq!(parse_line(r#"{"op":"play"}"#), Ok(Command::Play));
        assert_eq!(
            parse_line(r#"{"op":"seek","to":12.5}"#),
            Ok(Command::Seek {
                to: Some(12.5),
                frame: None
            })
        );
        assert_eq!(
            parse_line(r#"{"op":"seek","frame":300}"#),
            Ok(Command::Seek {
                to: None,
                frame: Some(300)
            })
        );
        assert_eq!(
            parse_line(r#"{"op":"step","frames":-1}"#),
            Ok(Command::Step { frames: -1 })
        );
        assert_eq!(
            parse_line(r#"{"op":"select_audio","input":"music","channels":[0,1]}"#),
            Ok(Command::SelectAudio {
                input: InputRef::Id("music".into()),
                channels: Some(vec![0, 1])
            })
        );
        assert_eq!(
            parse_line(r#"{"op":"select_audio","input":1}"#),
            Ok(Command::SelectAudio {
                input: InputRef::Index(1),
                channels: None
            })
        );
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        assert!(
            parse_line("not json")
                .expect_err("garbage")
                .contains("bad command")
        );
        assert!(
            parse_line(r#"{"op":"rewind"}"#)
                .expect_err("unknown")
                .contains("rewind")
        );
        assert!(
            parse_line(r#"{"op":"seek"}"#)
                .expect_err("no target")
                .contains("\"to\"")
        );
        assert!(parse_line(r#"{"op":"seek","to":-3}"#).is_err());
        assert!(parse_line(r#"{"op":"step"}"#).is_err());
    }

    #[test]
    fn events_serialize_with_their_name() {
        let line = serde_json::to_string(&Event::State {
            state: PlayState::Paused,
            position: 1.5,
            frame: 45,
        })
        .expect("serializes");
        assert_eq!(
            line,
            r#"{"event":"state","state":"paused","position":1.5,"frame":45}"#
        );
    }
}
