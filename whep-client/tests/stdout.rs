//! `whep-client` with its stdout closed, as `whep-client … | head -1` leaves it once head has
//! exited: it ends quietly, never with a panic over a line it could not print.

use std::process::{Command, Output, Stdio};

/// A pipe whose reader is gone: a write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

/// Runs `whep-client ARGS` with stdout closed.
fn run_unread(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whep-client"))
        .args(args)
        .env_remove("WISP_TOKEN")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("whep-client runs")
}

/// Nothing listens on port 9 (discard) here: every request is refused at once.
const NOBODY: &str = "http://127.0.0.1:9/whep/nobody";

#[test]
fn a_closed_stdout_ends_every_subcommand_quietly() {
    let runs: [&[&str]; 6] = [
        &["--help"],
        &["control", "--help"],
        &[
            "control",
            NOBODY,
            "--token",
            "T",
            "--json",
            "--timeout",
            "5",
            "status",
        ],
        &["play", NOBODY, "--json", "--timeout", "5"],
        &["seeks", NOBODY, "--timeout", "5"],
        &["load", NOBODY, "--viewers", "1", "--duration", "1"],
    ];
    for args in runs {
        let out = run_unread(args);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.contains("panicked"), "{args:?}: {log}");
        // Help exits 0; a run refused by the server fails as it would with stdout open.
        let usual = if args.contains(&"--help") { 0 } else { 1 };
        assert_eq!(out.status.code(), Some(usual), "{args:?}: {log}");
    }
}
