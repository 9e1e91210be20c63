//! The gateway's transcoder supervisor against the real `wisp-transcoder` binary: the memfd
//! ring handed down, events up, stop, errors, and no orphan after the gateway is killed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rtp_ring::{Flags, RtpHeaderView};
use wisp::session::transcoder::{Command, Event, TranscoderProcess};
use wisp_control::PlayState;

const CHILD_ENV: &str = "WISP_TEST_PARENT_OF_TRANSCODER";

mod common;

fn transcoder_bin() -> PathBuf {
    common::workspace_bin("wisp-transcoder")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn next(t: &mut TranscoderProcess) -> Event {
    tokio::time::timeout(Duration::from_secs(30), t.next_event())
        .await
        .expect("an event within 30 s")
        .expect("the transcoder is still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcoder_feeds_the_memfd_ring_it_inherited_and_stops_on_request() {
    let spec = args(&[
        "-i",
        "demo",
        "--width",
        "640",
        "--height",
        "360",
        "--on-end",
        "wait",
        "--duration-frames",
        "30",
    ]);
    let mut t =
        TranscoderProcess::spawn(&transcoder_bin(), &spec, 16 << 20, "demo").expect("spawn");
    let mut reader = t
        .ring()
        .reader_from_oldest()
        .into_async()
        .expect("async reader");
    let Event::Ready {
        width,
        height,
        tracks,
        ..
    } = next(&mut t).await
    else {
        panic!("ready comes first")
    };
    assert_eq!((width, height), (640, 360));
    let codecs: Vec<_> = tracks.iter().map(|t| t.codec.as_str()).collect();
    assert_eq!(codecs, ["H264", "opus"]);

    // Woken through the inherited eventfd: 30 frames (marker bits) arrive, the first a keyframe.
    let mut packet = Vec::new();
    let (mut frames, mut first_key) = (0, None);
    while frames < 30 {
        let meta = tokio::time::timeout(Duration::from_secs(30), reader.next_into(&mut packet))
            .await
            .expect("records within 30 s")
            .expect("io")
            .expect("no overrun");
        if meta.track == 0 {
            first_key.get_or_insert(meta.flags.contains(Flags::KEYFRAME));
            frames += RtpHeaderView::parse(&packet).expect("rtp").marker as usize;
        }
    }
    assert_eq!(first_key, Some(true));

    // Commands go down; their effects come back up. After the 30 frames it ends, then seeks.
    while !matches!(
        next(&mut t).await,
        Event::State {
            state: PlayState::Ended,
            ..
        }
    ) {}
    t.send(&Command::Seek {
        to: None,
        frame: Some(3),
    })
    .await
    .expect("send");
    loop {
        if let Event::State { state, frame, .. } = next(&mut t).await {
            if frame == 3 {
                assert_eq!(
                    state,
                    PlayState::Paused,
                    "a seek after the end leaves it paused on the frame"
                );
                break;
            }
        }
    }
    let pid = t.pid();
    let status = t.stop(Duration::from_secs(4)).await.expect("stopped");
    assert!(status.success(), "clean exit on stop: {status}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_cannot_be_opened_is_an_error_event_then_an_exit() {
    let mut t = TranscoderProcess::spawn(
        &transcoder_bin(),
        &args(&["-i", "/nonexistent/x.mp4"]),
        1 << 20,
        "bad",
    )
    .expect("spawn");
    match next(&mut t).await {
        Event::Error { code, message, .. } => {
            assert_eq!(code, "input");
            assert!(message.contains("No such file"), "{message}");
        }
        other => panic!("expected an error event, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(10), t.next_event())
            .await
            .expect("exits")
            .is_none()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = t.try_exit_status() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcoder_that_dies_before_reporting_leaves_its_last_log_line() {
    let (dir, program) = common::unloadable_transcoder("dies");
    let mut t =
        TranscoderProcess::spawn(&program, &args(&["-i", "demo"]), 1 << 20, "dies").expect("spawn");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), t.next_event())
            .await
            .expect("stdout closes")
            .is_none(),
        "no event: it died first"
    );
    let (status, last) = t.stop_with_last_log(Duration::from_secs(2)).await;
    assert_eq!(status.expect("status").code(), Some(127));
    let last = last.expect("a last log line");
    assert!(last.ends_with(common::LOADER_ERROR), "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stands in for a gateway: starts a transcoder, prints its pid, then waits to be killed.
#[test]
#[ignore = "runs only as a child process of no_transcoder_outlives_a_killed_gateway"]
fn parent_of_transcoder() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let t = TranscoderProcess::spawn(
            &transcoder_bin(),
            &args(&["-i", "demo"]),
            16 << 20,
            "orphan",
        )
        .expect("spawn");
        println!("transcoder-pid {}", t.pid());
        // Keep it (and its stdin) alive until someone kills this process.
        std::mem::forget(t);
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

#[test]
fn no_transcoder_outlives_a_killed_gateway() {
    use std::io::BufRead;
    let mut parent = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "parent_of_transcoder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the stand-in gateway");
    let mut lines = std::io::BufReader::new(parent.stdout.take().expect("stdout")).lines();
    let pid = loop {
        let line = lines.next().expect("a line").expect("utf8");
        if let Some(p) = line.split("transcoder-pid ").nth(1) {
            break p.trim().to_string();
        }
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists(), "transcoder {pid} runs");
    parent.kill().expect("kill -9 the stand-in gateway");
    parent.wait().expect("reaped");
    // Its stdin pipe closed with the parent: the transcoder exits by itself (it is then reaped
    // by init, so /proc/<pid> goes away).
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_dir.exists()
        && !std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "transcoder {pid} outlived its killed parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
