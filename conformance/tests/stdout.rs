//! `wisp-conformance` with its stdout closed, as `wisp-conformance … | head` leaves it once
//! head has exited: it ends with its usual status, never with a panic over the report.

use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_keeps_the_status_and_never_panics() {
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    // Nothing listens on port 9 (discard) here: every MUST about the endpoint fails, at once.
    let out = Command::new(env!("CARGO_BIN_EXE_wisp-conformance"))
        .args(["--whep", "http://127.0.0.1:9/whep/nobody", "--no-media"])
        .env_remove("WISP_TOKEN")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("wisp-conformance runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(out.status.code(), Some(1), "a MUST failed: {log}");
}
