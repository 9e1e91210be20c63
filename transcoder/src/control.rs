//! The control protocol: commands as JSON lines on stdin, events as JSON lines on stdout.
//!
//! Owns parsing and checking commands, the stdin reader thread, and stdout: the event writer
//! and what a closed stdout means. The message types are the `wisp-control` crate's, shared
//! with the gateway. It does not act on commands (`player.rs` does). One line per message keeps
//! it usable from a shell: `{"op":"seek","to":12.5}` in, `{"event":"state","state":"paused",...}`
//! out.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};

pub use wisp_control::{
    BadRequest, Command, Event, InputInfo, InputRef, LayerInfo, PlayState, TrackInfo, parse_request,
};

/// What came in on the control channel.
#[derive(Debug)]
pub enum Incoming {
    /// A command, with the id to answer it by (`done` or `error`) if it had one.
    Command(Option<u64>, Command),
    /// A line that is not a command; answered with an `error` event, never fatal.
    Invalid(BadRequest),
    /// Stdin ended and that ends the process (stdin was a pipe or socket).
    Closed,
}

/// Parses one line into a command (and its optional request id) or a readable reason.
pub fn parse_line(line: &str) -> Result<(Option<u64>, Command), BadRequest> {
    let (id, cmd) = parse_request(line)?;
    if let Command::Seek { to, frame } = &cmd {
        match (to, frame) {
            (Some(t), None) if t.is_finite() && *t >= 0.0 => {}
            (None, Some(_)) => {}
            _ => {
                return Err(BadRequest {
                    id,
                    message: format!(
                        "bad command {line:?}: seek takes \"to\" (seconds ≥ 0) or \"frame\""
                    ),
                });
            }
        }
    }
    Ok((id, cmd))
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
                    Ok((id, cmd)) => Incoming::Command(id, cmd),
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

/// Writes one event line to stdout and flushes it. A gone reader ends the process (see
/// [`write_stdout`]); it is not reported.
pub fn emit(event: &Event) {
    let Ok(mut line) = serde_json::to_string(event) else {
        return;
    };
    line.push('\n');
    let _ = write_stdout(line.as_bytes());
}

/// The flag that stops the process, set when stdout's reader is gone.
static STOP_WHEN_STDOUT_CLOSES: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// Stdout's reader is gone: nothing more is written.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Has `stop` (the flag SIGTERM sets) set once stdout's reader is gone. Call once, early.
pub fn stop_when_stdout_closes(stop: Arc<AtomicBool>) {
    let _ = STOP_WHEN_STDOUT_CLOSES.set(stop);
}

/// Whether stdout's reader has gone (a write found a broken pipe).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Writes `bytes` to stdout and flushes them. Everything on stdout goes through here.
///
/// A broken pipe (the gateway that read us died, or `| head` had enough) is an end, not a
/// failure: nobody hears our events or output any more, so the process is stopped as SIGTERM
/// stops it, cleanly, and `Ok` is returned; later writes are skipped. Without this, `println!`
/// would panic, and an unheard transcoder would run on. Other errors are returned.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    if stdout_closed() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            if !STDOUT_CLOSED.swap(true, Ordering::Relaxed) {
                tracing::info!("stdout closed: nobody reads us any more, exiting");
            }
            if let Some(stop) = STOP_WHEN_STDOUT_CLOSES.get() {
                stop.store(true, Ordering::Relaxed);
            }
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_from_their_json_lines() {
        assert_eq!(parse_line(r#"{"op":"play"}"#), Ok((None, Command::Play)));
        assert_eq!(
            parse_line(r#"{"op":"seek","to":12.5}"#),
            Ok((
                None,
                Command::Seek {
                    to: Some(12.5),
                    frame: None
                }
            ))
        );
        assert_eq!(
            parse_line(r#"{"op":"seek","frame":300}"#),
            Ok((
                None,
                Command::Seek {
                    to: None,
                    frame: Some(300)
                }
            ))
        );
        assert_eq!(
            parse_line(r#"{"op":"step","frames":-1}"#),
            Ok((None, Command::Step { frames: -1 }))
        );
        assert_eq!(
            parse_line(r#"{"op":"select_audio","input":"music","channels":[0,1]}"#),
            Ok((
                None,
                Command::SelectAudio {
                    input: InputRef::Id("music".into()),
                    channels: Some(vec![0, 1])
                }
            ))
        );
        assert_eq!(
            parse_line(r#"{"op":"select_audio","input":1}"#),
            Ok((
                None,
                Command::SelectAudio {
                    input: InputRef::Index(1),
                    channels: None
                }
            ))
        );
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        assert!(
            parse_line("not json")
                .expect_err("garbage")
                .message
                .contains("bad command")
        );
        assert!(
            parse_line(r#"{"op":"rewind"}"#)
                .expect_err("unknown")
                .message
                .contains("rewind")
        );
        assert!(
            parse_line(r#"{"op":"seek"}"#)
                .expect_err("no target")
                .message
                .contains("\"to\"")
        );
        assert!(parse_line(r#"{"op":"seek","to":-3}"#).is_err());
        assert!(parse_line(r#"{"op":"step"}"#).is_err());
        assert_eq!(
            parse_line(r#"{"op":"seek","to":-3,"id":4}"#)
                .expect_err("refused")
                .id,
            Some(4)
        );
        assert_eq!(
            parse_line(r#"{"op":"pause","id":9}"#),
            Ok((Some(9), Command::Pause))
        );
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
