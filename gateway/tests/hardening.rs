//! What an anonymous client or an unlucky operator can do to a running gateway, and what they
//! must not be able to do: pin its descriptors with idle connections, keep resources that never
//! connect, starve new sessions of transcoder slots, hide kernel drops. Each test runs the real
//! `wisp serve` on 127.0.0.1 and asserts what a user would notice (answers, statuses, metrics,
//! log lines).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
mod harness;

use harness::Wisp;

/// The value of a metric line `name value` (or `name{labels} value`) in `/metrics`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

async fn get(url: &str, timeout: Duration) -> Result<(u16, String, String), String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, ctype, body))
}

fn http_addr(wisp: &Wisp) -> String {
    wisp.base.trim_start_matches("http://").to_string()
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (a 408, say) before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_pin_the_gateway_under_a_small_descriptor_limit() {
    // 256 descriptors, as a `ulimit -n 256` leaves a process: 300 silent connections are
    // more than the gateway can hold open.
    let wisp = Wisp::start_limited(
        "idle-conns",
        "[limits]\nhttp_header_timeout = 3\nhttp_body_timeout = 3\n",
        &common::workspace_bin("wisp-transcoder"),
        Some(256),
    );
    let addr = http_addr(&wisp);
    let mut idle = Vec::new();
    // Whole heads whose bodies never come (a client that announces more than it sends), more
    // than the gateway's 128 connections: they must not count as busy and lock others out.
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"POST /whep/demo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    // For a second (within the 3 s the bodies have), the gateway keeps answering.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let health = get(&format!("{}/healthz", wisp.base), Duration::from_secs(5)).await;
        assert!(
            matches!(&health, Ok((200, _, _))),
            "/healthz with 150 connections waiting for their bodies: {health:?}\n{}",
            wisp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then the starts of requests and nothing more (slow or dead clients).
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    // The gateway still answers, at once, with the idle connections open.
    let started = Instant::now();
    let health = get(&format!("{}/healthz", wisp.base), Duration::from_secs(5)).await;
    assert!(
        matches!(&health, Ok((200, _, _))),
        "/healthz with 300 idle connections: {health:?} after {:?}\n{}",
        started.elapsed(),
        wisp.log()
    );
    // Every idle connection is closed by the gateway within its header or body timeout (3 s),
    // either to make room for a newer one or when its time is up.
    let closing = Instant::now();
    let mut held = 0;
    for s in &mut idle {
        let left = Duration::from_secs(6).saturating_sub(closing.elapsed());
        if !closed_by_server(s, left).await {
            held += 1;
        }
    }
    assert_eq!(held, 0, "connections still open after 6 s\n{}", wisp.log());
    let (_, _, text) = get(&format!("{}/metrics", wisp.base), Duration::from_secs(5))
        .await
        .unwrap();
    let evicted = metric(&text, "wisp_http_connections_evicted_total").unwrap();
    let timed_out = metric(&text, "wisp_http_connections_timed_out_total").unwrap();
    let no_body = metric(&text, "wisp_http_body_timeouts_total").unwrap();
    assert!(
        evicted + timed_out + no_body >= 300.0,
        "evicted {evicted} + timed out {timed_out} + bodies that never came {no_body}"
    );
    assert!(
        metric(&text, "wisp_http_connections").unwrap() <= 2.0,
        "only this scrape's connection is open\n{text}"
    );
    let log = wisp.log();
    assert!(
        log.contains("file descriptors:"),
        "the descriptor limits are logged\n{log}"
    );
    let lines = log
        .lines()
        .filter(|l| l.contains("HTTP connections closed by the gateway"))
        .count();
    assert!(
        (1..=10).contains(&lines),
        "closing connections is logged, rate-limited: {lines} lines\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_gets_408_not_an_open_wait() {
    let wisp = Wisp::start("short-body", "[limits]\nhttp_body_timeout = 2\n");
    let t = wisp.token("demo", "view");
    let mut s = TcpStream::connect(http_addr(&wisp)).await.unwrap();
    let head = format!(
        "POST /whep/demo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Content-Type: application/sdp\r\nContent-Length: 1000\r\n\r\nv=0\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(read.is_ok(), "no answer within 6 s: {text:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the body had its 2 s: {:?}",
        started.elapsed()
    );
}

/// A 6 s 320x180@30 H.264 + AAC file with its index first (so a truncated copy still opens).
fn clip(path: &std::path::Path) {
    let ok = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x180:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t", "6"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-movflags",
            "+faststart",
        ])
        .arg(path)
        .status()
        .expect("ffmpeg runs");
    assert!(ok.success(), "ffmpeg made the clip");
}

/// Polls the session's API state until `done` holds (15 s at most).
async fn session_until(
    wisp: &Wisp,
    name: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = wisp.api(&format!("/api/sessions/{name}")).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", wisp.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_state_says_what_is_true_now_after_a_recovery_and_after_an_early_end() {
    let dir = std::env::temp_dir().join(format!("wisp-state-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let full = dir.join("full.mp4");
    clip(&full);
    // A copy cut in half: its index says 6 s, its media ends near 3 s.
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let later = dir.join("later.mp4");
    let wisp = Wisp::start(
        "state",
        &format!(
            "[[sessions]]\nname = \"later\"\ninputs = [{{ url = \"{}\" }}]\n\
             [[sessions]]\nname = \"cut\"\ninputs = [{{ url = \"{}\" }}]\n",
            later.display(),
            cut.display()
        ),
    );
    let t = wisp.token("later,cut", "view");
    let http = reqwest::Client::new();

    // The file is missing: the session fails, saying why.
    let h = http.clone();
    let opts = wisp.viewer("later", &t, 1, 10);
    let failing = tokio::spawn(async move { whep_client::watch(&h, opts, |_| {}).await });
    let s = session_until(&wisp, "later", |s| s["state"] == "failed").await;
    assert!(s["error"].as_str().unwrap().contains("later.mp4"), "{s}");
    let _ = failing.await;
    // The operator puts the file in place; the next viewer plays, and the session no longer
    // shows the old failure.
    std::fs::copy(&full, &later).unwrap();
    let played = whep_client::watch(&http, wisp.viewer("later", &t, 30, 20), |_| {})
        .await
        .expect("plays once the file is there");
    assert!(played.video_frames >= 30);
    // Running, or already at the end of the 6 s clip on a slow machine.
    let s = session_until(&wisp, "later", |s| {
        s["state"] == "running" || s["state"] == "ended"
    })
    .await;
    assert!(
        s.get("error").is_none(),
        "a recovered session shows no error: {s}"
    );

    // The cut file ends early: the session says ended, not running, where it ended, and that
    // the input was longer.
    let opts = wisp.viewer("cut", &t, 60, 20);
    whep_client::watch(&http, opts, |_| {})
        .await
        .expect("the first half plays");
    let s = session_until(&wisp, "cut", |s| {
        s["state"] != "running" && s["state"] != "starting"
    })
    .await;
    assert_eq!(s["state"], "ended", "{s}");
    let position = s["position"].as_f64().unwrap();
    assert!(position > 1.0 && position < 5.0, "{s}");
    let duration = s["duration"].as_f64().unwrap();
    assert!((6.0..6.1).contains(&duration), "the index's duration: {s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transcoder_gives_its_slot_to_a_session_with_viewers() {
    // One transcoder at a time; idle transcoders would keep theirs for a minute.
    let wisp = Wisp::start(
        "give-way",
        "idle_timeout = 60\n[limits]\nmax_transcoders = 1\n\
         [[sessions]]\nname = \"second\"\ninputs = [{ url = \"demo\" }]\n\
         video = { width = 320, height = 180 }\n",
    );
    let t = wisp.token("demo,second", "view");
    let http = reqwest::Client::new();
    whep_client::watch(&http, wisp.viewer("demo", &t, 30, 20), |_| {})
        .await
        .expect("demo plays");
    // The viewer's DELETE was answered; the gateway lets it go.
    session_until(&wisp, "demo", |s| s["viewers"] == 0).await;
    // Nobody watches the demo now; its transcoder idles. A viewer of another session gets
    // the slot at once instead of a minute of 503s.
    let s = whep_client::watch(&http, wisp.viewer("second", &t, 30, 20), |_| {})
        .await
        .unwrap_or_else(|e| panic!("second plays: {e}\n{}", wisp.log()));
    assert_eq!(s.width, Some(320));
    let demo = session_until(&wisp, "demo", |s| s["state"] == "idle").await;
    assert!(demo.get("transcoder_pid").is_none(), "{demo}");
    assert!(
        wisp.log()
            .contains("stopping the idle transcoder: session \"second\" needs its slot"),
        "{}",
        wisp.log()
    );
    // A transcoder with viewers keeps its slot: while one watches "second", the demo is 503.
    let h = http.clone();
    let opts = wisp.viewer("second", &t, 100_000, 30);
    let staying = tokio::spawn(async move { whep_client::watch(&h, opts, |_| {}).await });
    session_until(&wisp, "second", |s| s["viewers"] == 1).await;
    let err = whep_client::watch(&http, wisp.viewer("demo", &t, 1, 5), |_| {})
        .await
        .expect_err("no slot for the demo");
    assert!(err.to_string().contains("503"), "{err}");
    staying.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_the_kernel_drops_are_counted_and_the_granted_buffer_is_logged() {
    let wisp = Wisp::start("kernel-drops", "udp_recv_buffer = 65536\n");
    let log = wisp.log();
    let rtc: std::net::SocketAddr = log
        .split("rtc=[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the RTC address is logged\n{log}"));
    assert!(
        log.contains("UDP receive buffer: asked for 65536 bytes"),
        "the buffer the kernel granted is logged\n{log}"
    );
    // The gateway is stopped while 20 MB arrive for a 64 KiB buffer: the kernel drops most.
    let pid = wisp.child.id().to_string();
    let kill = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    kill("-STOP");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk = [0x80u8; 1000];
    for _ in 0..20_000 {
        let _ = sock.send_to(&junk, rtc);
    }
    kill("-CONT");
    let (_, _, text) = get(&format!("{}/metrics", wisp.base), Duration::from_secs(5))
        .await
        .unwrap();
    let drops = metric(&text, "wisp_udp_kernel_drops_total")
        .unwrap_or_else(|| panic!("no kernel drop counter\n{text}"));
    let taken = metric(&text, "wisp_udp_datagrams_in_total").unwrap();
    assert!(drops > 1000.0, "kernel drops {drops}, read {taken}");
    assert!(
        drops + taken >= 19_000.0,
        "kernel drops {drops} + read {taken}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_their_own_address_away_from_the_public_listener() {
    let wisp = Wisp::start("metrics-addr", "metrics = \"127.0.0.1:0\"\n");
    assert!(wisp.wait_log("metrics on http://", 5), "{}", wisp.log());
    let log = wisp.log();
    let url = log
        .split("metrics on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let (status, _, text) = get(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, 200);
    assert!(metric(&text, "wisp_viewers").is_some(), "{text}");
    let (status, ctype, _) = get(&format!("{}/metrics", wisp.base), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 404, "not on the public listener");
    assert_eq!(ctype, "application/problem+json");
}
