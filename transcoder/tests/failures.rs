//! Bad input and how the transcoder ends: clear errors, prompt exits, no orphans.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs the transcoder on `input` and returns (exit code, error event message, elapsed).
fn fails_on(input: &str) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut t = Transcoder::start("bad", &["-i", input]);
    let err = t.wait_named("error");
    let code = t.wait_exit();
    (
        code,
        err["message"].as_str().unwrap_or_default().to_string(),
        started.elapsed(),
    )
}

#[test]
fn a_missing_file_is_an_error_event_and_a_nonzero_exit() {
    let (code, msg, took) = fails_on("/nonexistent/film.mp4");
    assert_ne!(code, Some(0));
    assert!(
        msg.contains("/nonexistent/film.mp4") && msg.contains("No such file"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_refused_url_is_an_error_event_within_ten_seconds() {
    // Port 9 (discard) has no listener here: the connection is refused at once.
    let (code, msg, took) = fails_on("http://127.0.0.1:9/film.mp4");
    assert_ne!(code, Some(0));
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_server_that_never_answers_times_out_within_ten_seconds() {
    // A listener that accepts and then says nothing: the open must give up by itself.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/stall.mp4", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let held = listener.accept();
        std::thread::sleep(Duration::from_secs(20));
        drop(held);
    });
    let (code, msg, took) = fails_on(&url);
    assert_ne!(code, Some(0));
    assert!(msg.contains("timed out"), "{msg}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_file_that_is_not_media_is_refused_with_ffmpegs_reason() {
    let path = media_dir().join("not-media.mp4");
    std::fs::write(&path, "this is a text file, not a video\n".repeat(100)).expect("write");
    let (code, msg, _) = fails_on(path.to_str().expect("utf8"));
    assert_ne!(code, Some(0));
    assert!(msg.contains("Invalid data"), "{msg}");
}

#[test]
fn corrupt_packets_mid_stream_are_skipped_and_counted_not_fatal() {
    let src = corrupt_ts();
    let mut t = Transcoder::start(
        "corrupt",
        &["-i", src.to_str().expect("utf8"), "--pace", "max"],
    );
    t.wait_named("ready");
    assert_eq!(t.wait_exit(), Some(0), "corruption is not fatal");
    let stats = t
        .seen
        .iter()
        .find(|e| e["event"] == "stats")
        .expect("stats event")
        .clone();
    assert!(
        stats["corrupt_packets"].as_u64().expect("count") > 0,
        "{stats}"
    );
    // The clean parts still play: most of the 120 frames come out and decode.
    let records = read_all(&t.ring());
    let mut rx = VideoReceiver::default();
    let frames = records.iter().filter_map(|r| rx.push(r)).count();
    assert!(frames >= 80, "{frames} frames decoded");
}

#[test]
fn a_truncated_file_plays_what_it_has_and_ends_cleanly() {
    let src = truncated_mp4();
    let mut t = Transcoder::start(
        "trunc",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--pace",
            "max",
            "--width",
            "320",
            "--height",
            "180",
        ],
    );
    t.wait_named("ready");
    assert_eq!(t.wait_exit(), Some(0));
    let records = read_all(&t.ring());
    let mut rx = VideoReceiver::default();
    let numbers: Vec<u32> = records
        .iter()
        .filter_map(|r| rx.push(r))
        .map(|f| f.number)
        .collect();
    assert!(numbers.len() >= 30, "{} frames", numbers.len());
    assert_eq!(numbers, (0..numbers.len() as u32).collect::<Vec<_>>());
}

#[test]
fn closing_stdin_ends_the_process_promptly() {
    let mut t = Transcoder::start("stdin", &["-i", "demo"]);
    t.wait_named("ready");
    let started = Instant::now();
    drop(t.stdin.take());
    assert_eq!(t.wait_exit(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_parent_gone_with_its_log_pipe_still_means_a_clean_exit() {
    // The gateway reads the transcoder's stderr through a pipe. When the gateway dies, that
    // pipe has no reader and stdin closes: the transcoder's last log lines cannot be written,
    // and it must still exit 0, not panic over them.
    let (log_reader, log_writer) = std::io::pipe().expect("pipe");
    let ring = ring_path("logpipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
        .args(["-i", "demo", "--width", "320", "--height", "180", "--ring"])
        .arg(&ring)
        .args(["--ring-size", "16777216"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_writer)
        .spawn()
        .expect("spawn");
    // Once it is playing (its first event, `ready`), its log pipe loses its reader.
    let mut events = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut events, &mut first).expect("an event");
    assert!(first.contains("\"ready\""), "{first}");
    drop(log_reader);
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&ring);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigterm_ends_it_cleanly_with_stats() {
    let mut t = Transcoder::start("sigterm", &["-i", "demo"]);
    t.wait_named("ready");
    t.wait_named("position");
    let pid = rustix::process::Pid::from_child(&t.child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    assert_eq!(t.wait_exit(), Some(0));
    assert!(
        t.seen.iter().any(|e| e["event"] == "stats"),
        "stats on a clean stop"
    );
}

#[test]
fn bad_commands_get_error_events_and_playback_goes_on() {
    let mut t = Transcoder::start("badcmd", &["-i", "demo", "--pace", "max", "--paused"]);
    t.wait_named("ready");
    t.send("this is not json");
    assert_eq!(t.wait_named("error")["code"], "bad_request");
    t.send(r#"{"op":"fly"}"#);
    assert!(
        t.wait_named("error")["message"]
            .as_str()
            .expect("msg")
            .contains("fly")
    );
    t.send(r#"{"op":"status"}"#);
    t.wait_state("paused");
    t.send(r#"{"op":"stop"}"#);
    assert_eq!(t.wait_exit(), Some(0));
}

#[test]
fn usage_errors_explain_themselves() {
    let out = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
        .args(["--ring", "/tmp/x.ring", "--ring-size", "1000000"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one input"));
    let out = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
        .args(["-i", "demo", "--ring", "/tmp/x.ring", "--ring-size", "1000"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("need at least"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // --duration counted frames beside --start's seconds; its new name says so.
    for old in [
        &["--duration", "30"][..],
        &["--duration=30"],
        &["--duration"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
            .args([
                "-i",
                "demo",
                "--ring",
                "/tmp/x.ring",
                "--ring-size",
                "1000000",
            ])
            .args(old)
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{old:?}: {err}");
        assert!(
            err.contains("--duration is now --duration-frames"),
            "{old:?}: {err}"
        );
    }
}

/// A pipe whose reader is gone, as `| head` leaves one once head has exited: a write to it
/// fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

/// Waits up to 10 s for `child` to exit (killing it if it does not) and returns its exit code
/// and its log.
fn exit_and_log(mut child: std::process::Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 10 s after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        std::io::Read::read_to_string(&mut stderr, &mut log).expect("log");
    }
    (status.code(), log)
}

#[test]
fn a_closed_stdout_ends_it_cleanly() {
    // Stdin stays open: only the closed stdout can end it. Nobody hears its events any more.
    let ring = ring_path("closed-stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
        .args(["-i", "demo", "--width", "320", "--height", "180", "--ring"])
        .arg(&ring)
        .args(["--ring-size", "16777216"])
        .stdin(Stdio::piped())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdin = child.stdin.take();
    let (code, log) = exit_and_log(child);
    drop(stdin);
    let _ = std::fs::remove_file(&ring);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    for help in [&["--help"][..], &["egress", "--help"]] {
        let child = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
            .args(help)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (code, log) = exit_and_log(child);
        assert_eq!(code, Some(0), "{help:?}: {log}");
        assert!(!log.contains("panicked"), "{help:?}: {log}");
    }
}

#[test]
fn a_pcm_egress_whose_stdout_closes_finishes_cleanly() {
    let mut t = Transcoder::start(
        "pcm-closed",
        &["-i", "demo", "--width", "320", "--height", "180"],
    );
    t.wait_named("ready");
    let egress = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
        .args(["egress", "--ring"])
        .arg(&t.ring_path)
        .args(["--audio", "1:opus", "pcm"])
        .env("WISP_LOG", "info")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the egress");
    let (code, log) = exit_and_log(egress);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked") && !log.contains("ERROR"), "{log}");
    assert!(log.contains("stdout_closed"), "the reason it ended: {log}");
}
