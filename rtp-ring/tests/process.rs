//! Rings shared between processes: a writer killed mid-record, a torn slot left behind, a ring
//! handed to a child by descriptor, bad headers, and `ring-dump` on all of them.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{check_packet, packet_for, record_for, write_n};
use rtp_ring::{Ring, SLOT_SIZE};

const CHILD_ENV: &str = "RTP_RING_TEST_CHILD";

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtp-ring-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Runs this test binary again as a child that executes `child_main` with `arg`.
fn spawn_child(role: &str, arg: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test exe"));
    cmd.args([
        "--exact",
        "child_main",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, format!("{role}:{arg}"))
    .stdin(Stdio::null());
    cmd
}

/// The child side of the multi-process tests; does nothing unless started by `spawn_child`.
#[test]
#[ignore = "runs only as a child process of the other tests"]
fn child_main() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (role, arg) = spec.split_once(':').expect("role:arg");
    match role {
        // Write records as fast as possible until killed.
        "writer" => {
            let ring = Ring::open(Path::new(arg)).expect("open ring");
            let mut writer = ring.writer();
            let mut i = writer.next_index();
            println!("writing");
            loop {
                let p = packet_for(i);
                writer.write(record_for(i, &p)).expect("fits");
                i += 1;
            }
        }
        // Read 100 records from an inherited descriptor (woken by the inherited eventfd).
        "fd-reader" => {
            let (ring_fd, event_fd) = arg.split_once(',').expect("fd,eventfd");
            let number = |s: &str| s.parse::<i32>().expect("fd number");
            let ring = Ring::from_inherited_fds(number(ring_fd), Some(number(event_fd)))
                .expect("adopt inherited descriptors");
            let mut reader = ring.reader_from_oldest();
            let mut got = 0;
            while got < 100 {
                match reader.try_next().expect("no overrun") {
                    Some(rec) => {
                        assert_eq!(check_packet(&rec.packet), Ok(rec.meta.index));
                        got += 1;
                    }
                    None => reader.wait(Duration::from_secs(5)).expect("wait"),
                }
            }
            println!("read {got}");
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn a_writer_killed_mid_write_loses_at_most_the_record_it_was_writing() {
    let path = temp_path("killed.ring");
    let ring = Ring::create_file(&path, 256 + 4096 * SLOT_SIZE as u64).expect("ring");
    let mut reader = ring.reader();
    for round in 0..5u32 {
        let mut child = spawn_child("writer", path.to_str().expect("utf8"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Wait for its "writing" line (libtest prints a banner first); keep the pipe open.
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        while !out
            .next()
            .expect("child output")
            .expect("utf8")
            .ends_with("writing")
        {}
        // Let it write for a while, reading along; then kill it without warning.
        let start = ring.write_index();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ring.write_index() < start + 20_000 {
            assert!(Instant::now() < deadline, "child writer made no progress");
            std::thread::yield_now();
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        // Everything published must read back whole; the record in flight is simply absent.
        let mut packet = Vec::new();
        let mut read = 0u64;
        loop {
            match reader.try_next_into(&mut packet) {
                Ok(Some(meta)) => {
                    assert_eq!(check_packet(&packet), Ok(meta.index), "round {round}");
                    read += 1;
                }
                Ok(None) => break,
                Err(_) => {} // the child outran us; the lost count is checked in other tests
            }
        }
        assert!(read > 0, "round {round}: nothing readable after the kill");
        assert_eq!(
            reader.cursor(),
            ring.write_index(),
            "reader caught up with the dead writer"
        );
    }
    // A new writer continues the same ring where the dead one stopped.
    let before = ring.write_index();
    let mut writer = ring.writer();
    assert_eq!(writer.next_index(), before);
    let p = packet_for(before);
    writer.write(record_for(before, &p)).expect("fits");
    let rec = reader
        .try_next()
        .expect("no overrun")
        .expect("record from the new writer");
    assert_eq!(check_packet(&rec.packet), Ok(before));
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_slot_left_half_written_is_never_returned() {
    // What a writer that died inside a copy leaves behind, made by hand: record 10's stamp says
    // "writing" and its bytes are half old, half garbage.
    let path = temp_path("torn.ring");
    let ring = Ring::create_file(&path, 256 + 64 * SLOT_SIZE as u64).expect("ring");
    let mut writer = ring.writer();
    write_n(&mut writer, 0, 10);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("file");
    let slot10 = 256 + 10 * SLOT_SIZE as u64;
    file.write_all_at(&(2 * 10 + 1u64).to_ne_bytes(), slot10)
        .expect("stamp");
    file.write_all_at(&[0xee; 600], slot10 + 24)
        .expect("half a payload");
    // The dead writer had also not advanced write_index; pretend it had, the worst case.
    file.write_all_at(&11u64.to_ne_bytes(), 64)
        .expect("write_index");
    let mut reader = ring.reader_from_oldest();
    for i in 0..10 {
        let rec = reader
            .try_next()
            .expect("no overrun")
            .expect("whole record");
        assert_eq!(check_packet(&rec.packet), Ok(i));
    }
    assert_eq!(
        reader.try_next(),
        Ok(None),
        "the torn record is not returned"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_child_reads_a_memfd_ring_it_inherited() {
    let ring = Ring::create_memfd("inherit", 256 + 256 * SLOT_SIZE as u64).expect("ring");
    let mut cmd = spawn_child("fd-reader", "");
    let (ring_fd, event_fd) = ring.pass_to_child(&mut cmd);
    cmd.env(
        CHILD_ENV,
        format!("fd-reader:{ring_fd},{}", event_fd.expect("eventfd")),
    );
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut writer = ring.writer();
    // Trickle the records in so the child blocks on the eventfd between them.
    for i in 0..100 {
        let p = packet_for(i);
        writer.write(record_for(i, &p)).expect("fits");
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let out = child.wait_with_output().expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read 100"), "{stdout}");
}

fn ring_dump(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ring-dump"))
        .args(args)
        .output()
        .expect("ring-dump runs")
}

#[test]
fn ring_dump_refuses_what_is_not_a_ring_and_says_why() {
    let path = temp_path("garbage.bin");
    std::fs::write(&path, vec![0x42u8; 8192]).expect("write");
    let out = ring_dump(&[path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a Wisp RTP ring") && err.contains("magic"),
        "{err}"
    );

    // A ring from a newer format version.
    let ring_path = temp_path("v9.ring");
    drop(Ring::create_file(&ring_path, 256 + 32 * SLOT_SIZE as u64).expect("ring"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&ring_path)
        .expect("file");
    file.write_all_at(&9u32.to_ne_bytes(), 8).expect("version");
    let out = ring_dump(&[ring_path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 9 is not supported"));
    assert!(Ring::open(&ring_path).is_err());

    let out = ring_dump(&["/nonexistent/ring"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ring"));
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&ring_path).ok();
}

#[test]
fn ring_dump_prints_every_record_as_json_and_a_summary() {
    let path = temp_path("dump.ring");
    let ring = Ring::create_file(&path, 256 + 64 * SLOT_SIZE as u64).expect("ring");
    let mut writer = ring.writer();
    write_n(&mut writer, 0, 100); // 64 slots: the oldest 36 are gone
    let out = ring_dump(&["--json", path.to_str().expect("utf8")]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 64);
    let first = &lines[0];
    for key in [
        "track",
        "keyframe",
        "end_of_frame",
        "seq",
        "timestamp",
        "marker",
        "payload_type",
        "len",
        "capture_us",
    ] {
        assert!(first.get(key).is_some(), "missing key {key} in {first}");
    }
    assert_eq!(first["seq"], 36);
    assert_eq!(first["len"], packet_for(36).len());
    // Track 0 keyframes are the even multiples of 50; of 36..100 only record 50 remains.
    assert_eq!(lines.iter().filter(|l| l["keyframe"] == true).count(), 1);
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .expect("summary"),
    )
    .expect("json");
    assert_eq!(summary["records"], 64);

    // Text mode: one line per record and a readable summary.
    let out = ring_dump(&[path.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("summary: 64 records"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("#50 ") && l.contains("KEY")),
        "{text}"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn ring_dump_ends_quietly_when_its_reader_stops_reading() {
    // `ring-dump … | head` once head has exited: its stdout is a pipe with no reader.
    let path = temp_path("unread.ring");
    let ring = Ring::create_file(&path, 256 + 64 * SLOT_SIZE as u64).expect("ring");
    write_n(&mut ring.writer(), 0, 64);
    let path = path.to_str().expect("utf8");
    for args in [&["--help"][..], &[path], &["--json", path]] {
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_ring-dump"))
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("ring-dump runs");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.contains("panicked"), "{args:?}: {log}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {log}");
    }
    std::fs::remove_file(path).ok();
}

#[test]
fn ring_dump_follows_a_live_memfd_through_proc() {
    // A process holds the memfd; ring-dump opens /proc/<pid>/fd/<n> like it would a gateway's.
    let ring = Ring::create_memfd("live", 256 + 256 * SLOT_SIZE as u64).expect("ring");
    let mut writer = ring.writer();
    write_n(&mut writer, 0, 5);
    let proc_path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&ring.fd())
    );
    let mut dump = Command::new(env!("CARGO_BIN_EXE_ring-dump"))
        .args(["--json", "--follow", &proc_path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ring-dump");
    let mut lines = BufReader::new(dump.stdout.take().expect("stdout")).lines();
    for i in 0..5 {
        let line = lines.next().expect("a line").expect("utf8");
        assert!(line.contains(&format!("\"index\":{i},")), "{line}");
    }
    // New records appear while it follows (woken through the eventfd it took from us).
    write_n(&mut writer, 5, 3);
    for i in 5..8 {
        let line = lines.next().expect("a followed line").expect("utf8");
        assert!(line.contains(&format!("\"index\":{i},")), "{line}");
    }
    dump.kill().ok();
    let mut err = String::new();
    dump.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .ok();
    dump.wait().ok();
    assert!(
        !err.contains("polling"),
        "ring-dump should have the writer's eventfd: {err}"
    );
}
