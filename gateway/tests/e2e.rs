//! The real binaries on 127.0.0.1: `wisp serve` runs the demo transcoder just in time and
//! `whep-client` (the CLI, and the library as an in-process viewer) decodes what it sends.
//! Failures are exercised as a user would meet them: missing token, unknown session, a
//! transcoder killed with SIGKILL while people watch, garbage datagrams, SIGTERM and a
//! SIGKILLed gateway (no orphan transcoder).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use whep_client::watch;

mod common;
mod harness;

use harness::Wisp;

fn bin(name: &str) -> PathBuf {
    common::workspace_bin(name)
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes; /proc shows its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn whep_client_plays_the_demo_at_1280x720_and_reports_http_errors() {
    let wisp = Wisp::start("play", "");
    let url = format!("{}/whep/demo", wisp.base);
    let t = wisp.token("demo", "view");
    let out = Command::new(bin("whep-client"))
        .args([
            "play",
            &url,
            "--token",
            &t,
            "--frames",
            "90",
            "--json",
            "--timeout",
            "30",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        wisp.log()
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("JSON summary last");
    assert!(summary["video_frames"].as_u64().unwrap() >= 90);
    assert_eq!(summary["width"], 1280);
    assert_eq!(summary["height"], 720);
    assert_eq!(summary["codec"], "H264");
    assert!(summary["audio_packets"].as_u64().unwrap() > 50, "{summary}");
    assert!(summary["first_frame_ms"].as_u64().is_some());

    for (args, expect) in [
        (vec!["play", url.as_str()], "HTTP 401"),
        (
            vec!["play", url.as_str(), "--token", "bad.token.here"],
            "HTTP 401",
        ),
        (
            vec!["play", &format!("{}/whep/nope", wisp.base), "--token", &t],
            "HTTP 404",
        ),
    ] {
        let out = Command::new(bin("whep-client"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // The viewer left: its DELETE was logged and the resource is gone.
    assert!(
        wisp.wait_log("viewer ended: closed by DELETE", 10),
        "{}",
        wisp.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_without_h264_gets_vp8_where_the_session_allows_it_and_a_422_where_not() {
    let wisp = Wisp::start(
        "codecs",
        r#"
        [[sessions]]
        name = "both"
        inputs = [{ url = "demo" }]
        video = { width = 320, height = 240 }
        layers = [{ height = 240 }, { height = 120 }]
        codecs = ["h264", "vp8"]

        [[sessions]]
        name = "h264only"
        inputs = [{ url = "demo" }]
        video = { width = 320, height = 240 }
        "#,
    );
    let http = whep_client::http_client();
    let t = wisp.token("both,h264only", "view");
    let with = |session: &str, codec: Option<whep_client::OfferCodec>| {
        let mut o = wisp.viewer(session, &t, 60, 30);
        o.video_codec = codec;
        o
    };
    // Both at once: one transcoder feeds each viewer the codec it took. The VP8 viewer
    // asks for a layer of the (H.264) ladder, which it cannot have.
    let mut vp8_viewer = with("both", Some(whep_client::OfferCodec::Vp8));
    vp8_viewer.layer = Some(r#"{"id":"layer","op":"layer","rid":"120p"}"#.into());
    let (vp8, h264) = tokio::join!(
        watch(&http, vp8_viewer, |_| {}),
        watch(&http, with("both", None), |_| {}),
    );
    let vp8 = vp8.unwrap_or_else(|e| panic!("VP8 viewer: {e}\n{}", wisp.log()));
    let h264 = h264.unwrap_or_else(|e| panic!("H.264 viewer: {e}\n{}", wisp.log()));
    assert_eq!(vp8.codec.as_deref(), Some("VP8"), "{vp8:?}");
    assert_eq!(
        (vp8.width, vp8.height),
        (Some(320), Some(240)),
        "the main picture"
    );
    assert!(
        vp8.video_frames >= 60 && vp8.undecodable_frames == 0,
        "{vp8:?}"
    );
    assert!(vp8.audio_packets > 0, "{vp8:?}");
    // Asked before the transcoder was up (kept, 200) or after (refused): either way the pin
    // does not stand, and the viewer plays its one picture.
    let reply = vp8
        .layer_reply
        .clone()
        .expect("a reply to the layer request");
    assert!(
        reply["ok"] == false || wisp.wait_log("viewer's pinned layer: no layer \"120p\"", 5),
        "{reply}\n{}",
        wisp.log()
    );
    assert_eq!(h264.codec.as_deref(), Some("H264"), "{h264:?}");
    assert!(h264.video_frames >= 60, "{h264:?}");
    // Without `codecs`, the same offer is refused, and told what the session needs.
    let refused = watch(
        &http,
        with("h264only", Some(whep_client::OfferCodec::Vp8)),
        |_| {},
    )
    .await
    .expect_err("a VP8-only offer for an H.264 session");
    let text = refused.to_string();
    assert!(text.contains("422") && text.contains("H264"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_transcoder_is_restarted_for_its_viewers_and_other_sessions_play_on() {
    let wisp = Wisp::start(
        "kill",
        r#"
        [[sessions]]
        name = "second"
        inputs = [{ url = "demo" }]
        video = { width = 320, height = 240 }
        "#,
    );
    let http = reqwest::Client::new();
    let t = wisp.token("demo,second", "view");
    let opts = |session: &str, frames: u64| wisp.viewer(session, &t, frames, 40);
    // Two viewers of the demo and one of the other session; each needs frames from well
    // after the kill to finish.
    let demo_a = opts("demo", 240);
    let demo_b = opts("demo", 240);
    let second = opts("second", 240);
    let (h1, h2, h3) = (http.clone(), http.clone(), http.clone());
    let a = tokio::spawn(async move { watch(&h1, demo_a, |_| {}).await });
    let b = tokio::spawn(async move { watch(&h2, demo_b, |_| {}).await });
    let c = tokio::spawn(async move { watch(&h3, second, |_| {}).await });

    // Wait until the demo's transcoder runs, then SIGKILL it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let s = wisp.api("/api/sessions/demo").await;
        if s["state"] == "running"
            && let Some(pid) = s["transcoder_pid"].as_u64()
        {
            break pid as u32;
        }
        assert!(Instant::now() < deadline, "demo never ran: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Kill it once the viewers are being fed (the gateway's packet counter moves).
    let packets_out = || async {
        let page = common::metrics(&wisp.base).await;
        common::metric(&page, "wisp_packets_out_total").unwrap_or(0.0) as u64
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while packets_out().await < 2000 {
        assert!(Instant::now() < deadline, "the viewers were never fed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, "KILL");

    assert!(
        wisp.wait_log("transcoder exited unexpectedly", 10),
        "{}",
        wisp.log()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = wisp.api("/api/sessions/demo").await;
        if s["restarts"].as_u64() >= Some(1) && s["state"] == "running" {
            assert_ne!(s["transcoder_pid"].as_u64(), Some(pid as u64));
            break;
        }
        assert!(Instant::now() < deadline, "demo did not recover: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, h) in [("demo viewer 1", a), ("demo viewer 2", b), ("second", c)] {
        let s = h
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", wisp.log()));
        assert!(s.video_frames >= 240, "{name}: {s:?}");
    }
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_and_ice_restart_keep_media_flowing_and_delete_closes_the_connection() {
    let wisp = Wisp::start("restart", "");
    let t = wisp.token("demo", "view");
    let http = reqwest::Client::new();
    let mut opts = wisp.viewer("demo", &t, 90, 30);
    opts.trickle = true;
    opts.restart_after = Some(30);
    opts.linger = Some(Duration::from_secs(2));
    let s = watch(&http, opts, |_| {})
        .await
        .expect("the viewer plays through its ICE restart");
    assert_eq!(s.trickle_status, Some(204), "{s:?}");
    assert!(
        s.restart_connected_ms.is_some(),
        "ICE connected again: {s:?}"
    );
    assert!(s.frames_after_restart >= 30, "{s:?}");
    assert_eq!(s.delete_status, Some(200));
    // RFC 7675 §5.2: the DELETE revokes consent at once, the viewer is told (close_notify)
    // and no media follows.
    assert!(
        s.closed_after_delete_ms.is_some_and(|ms| ms < 1000),
        "closed by the server after the DELETE: {s:?}"
    );
    assert_eq!(s.packets_after_delete, Some(0), "{s:?}");
    assert!(wisp.log().contains("ICE restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_learns_at_once_when_its_session_is_deleted() {
    let wisp = Wisp::start("ended", "");
    let t = wisp.token("demo", "view");
    let http = reqwest::Client::new();
    let opts = wisp.viewer("demo", &t, 100_000, 60);
    let viewer = tokio::spawn(async move { watch(&http, opts, |_| {}).await });
    assert!(wisp.wait_log("viewer connected", 20));
    let admin = wisp.token("*", "admin");
    let deleted = Instant::now();
    let status = reqwest::Client::new()
        .delete(format!("{}/api/sessions/demo", wisp.base))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let err = tokio::time::timeout(Duration::from_secs(5), viewer)
        .await
        .expect("the viewer ends within 5 s, not at its consent timeout")
        .unwrap()
        .expect_err("the viewer did not get its frames");
    assert!(
        err.to_string().contains("the server closed the connection"),
        "{err}"
    );
    assert!(deleted.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_counted_and_hurt_no_viewer() {
    let wisp = Wisp::start("garbage", "");
    let t = wisp.token("demo", "view");
    let http = reqwest::Client::new();
    let opts = wisp.viewer("demo", &t, 120, 30);
    let viewer = tokio::spawn(async move { watch(&http, opts, |_| {}).await });
    // The RTC port, from the gateway's log line.
    assert!(wisp.wait_log("wisp is serving", 10));
    let log = wisp.log();
    let port: u16 = log
        .split("rtc=[127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|p| p.parse().ok())
        .expect("rtc port in the log");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u32 = 12345;
    for i in 0..2000u32 {
        let len = 1 + (i as usize * 7) % 1200;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let _ = sock.send_to(&data, ("127.0.0.1", port));
        // Paced, so that the kernel's socket buffer does not drop them before we count.
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let s = viewer
        .await
        .unwrap()
        .expect("the viewer plays through garbage");
    assert!(s.video_frames >= 120);
    let metrics = common::metrics(&wisp.base).await;
    let count = |name: &str| common::metric(&metrics, name).unwrap_or(0.0) as u64;
    assert!(
        count("wisp_udp_garbage_total") + count("wisp_udp_unrouted_total") >= 1900,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_no_transcoder_outlives_the_gateway() {
    for how in ["TERM", "KILL"] {
        let mut wisp = Wisp::start(&format!("stop-{how}"), "");
        let t = wisp.token("demo", "view");
        let http = reqwest::Client::new();
        let opts = wisp.viewer("demo", &t, 30, 30);
        // A viewer that stays: its frames arrive, and it is still connected at the signal.
        let long = wisp.viewer("demo", &t, 100_000, 30);
        watch(&http, opts, |_| {}).await.expect("plays");
        let h = http.clone();
        let stay = tokio::spawn(async move { watch(&h, long, |_| {}).await });
        let s = wisp.api("/api/sessions/demo").await;
        let pid = s["transcoder_pid"].as_u64().expect("transcoder running") as u32;
        signal(wisp.child.id(), how);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(st) = wisp.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "wisp did not exit on SIG{how}");
            std::thread::sleep(Duration::from_millis(20));
        };
        if how == "TERM" {
            assert!(
                status.success(),
                "SIGTERM exits 0: {status}\n{}",
                wisp.log()
            );
            assert!(wisp.log().contains("shutting down"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "transcoder {pid} outlived the gateway (SIG{how})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The staying viewer notices (ICE consent stops); it must not hang forever.
        let r = tokio::time::timeout(Duration::from_secs(45), stay).await;
        assert!(r.is_ok(), "the viewer noticed the gateway was gone");
    }
}

/// The session's API state once it shows `failed` (within 30 s).
async fn failed_state(wisp: &Wisp, session: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = wisp.api(&format!("/api/sessions/{session}")).await;
        if s["state"] == "failed" {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never failed: {s}\n{}",
            wisp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_input_cannot_be_opened_shows_failed_with_the_reason() {
    let wisp = Wisp::start(
        "broken",
        r#"
        [[sessions]]
        name = "broken"
        inputs = [{ url = "/nonexistent/film.mp4" }]
        "#,
    );
    let t = wisp.token("broken,demo", "view");
    let http = reqwest::Client::new();
    // The POST is answered at once (the transcoder starts behind it)...
    let broken = wisp.viewer("broken", &t, 1, 15);
    let h = http.clone();
    let viewer = tokio::spawn(async move { watch(&h, broken, |_| {}).await });
    // ...and the session turns failed with FFmpeg's reason, after bounded restarts.
    let s = failed_state(&wisp, "broken").await;
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("exited") && error.contains("film.mp4"),
        "{error}"
    );
    assert!(wisp.log().contains("giving up until a new viewer arrives"));
    assert!(
        viewer.await.unwrap().is_err(),
        "the viewer got no media and says so"
    );
    // The demo is unaffected.
    let demo = wisp.viewer("demo", &t, 30, 20);
    let s = watch(&http, demo, |_| {}).await.expect("demo plays");
    assert!(s.video_frames >= 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcoder_that_cannot_start_shows_why_in_the_session_state() {
    // A transcoder whose shared libraries are missing reports nothing: the loader prints why
    // on stderr and it exits 127. The session state carries that line.
    let (dir, program) = common::unloadable_transcoder("noload");
    let wisp = Wisp::start_with("noload", "", &program);
    let t = wisp.token("demo", "view");
    let http = reqwest::Client::new();
    let viewer = wisp.viewer("demo", &t, 1, 5);
    let h = http.clone();
    let started = Instant::now();
    let viewer = tokio::spawn(async move { watch(&h, viewer, |_| {}).await });
    let s = failed_state(&wisp, "demo").await;
    // Restarts are spaced (at once, then 0.5 s, then 1.5 s), not a burst of four processes
    // within milliseconds.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "failed after {:?}",
        started.elapsed()
    );
    assert_eq!(s["restarts"], 3, "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("exit status: 127")
            && error.contains("its last log line:")
            && error.contains("libavfilter.so.8: cannot open shared object file"),
        "{error}"
    );
    // The gateway's log shows the transcoder's own line too.
    assert!(wisp.log().contains("error while loading shared libraries"));
    // The viewer ended (before, during or after the handshake, as the race goes: the client
    // then times out, or hears close_notify); its client hears why from the 404 to its DELETE.
    let err = viewer.await.unwrap().expect_err("no media").to_string();
    assert!(
        err.contains("; the server says: this WHEP resource ended")
            && err.contains("libavfilter.so.8"),
        "{err}\n{}",
        wisp.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_stops_its_transcoder_and_the_next_viewer_starts_it_again() {
    let wisp = Wisp::start("idle", "idle_timeout = 1\n");
    let http = reqwest::Client::new();
    let opts = wisp.viewer("demo", &wisp.token("demo", "view"), 30, 20);
    watch(&http, opts, |_| {}).await.expect("plays");
    let s = wisp.api("/api/sessions/demo").await;
    let pid = s["transcoder_pid"].as_u64().expect("running") as u32;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = wisp.api("/api/sessions/demo").await;
        if s["state"] == "idle" && s["transcoder_pid"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        wisp.wait_log("no viewers for 1s: stopping the transcoder", 5),
        "{}",
        wisp.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "transcoder {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let opts = wisp.viewer("demo", &wisp.token("demo", "view"), 30, 20);
    let s = watch(&http, opts, |_| {})
        .await
        .expect("a new viewer restarts it");
    assert!(s.video_frames >= 30);
}

/// A UDP relay between viewers and the gateway's RTC port that drops every `nth` large
/// datagram towards the viewer once media flows: loss that NACK/RTX must repair.
async fn lossy_relay(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    nth: u64,
) -> Arc<std::sync::atomic::AtomicU64> {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    let front = Arc::new(
        tokio::net::UdpSocket::bind(listen)
            .await
            .expect("relay bind"),
    );
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    tokio::spawn(async move {
        let mut backs: HashMap<std::net::SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&client) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    let (b2, front2, d2) = (b.clone(), front.clone(), d.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 2048];
                        let mut large = 0u64;
                        while let Ok((n, _)) = b2.recv_from(&mut buf).await {
                            // Only media-sized datagrams, and not the DTLS handshake's first ones.
                            if n > 600 {
                                large += 1;
                                if large > 20 && large % nth == 0 {
                                    d2.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                            let _ = front2.send_to(&buf[..n], client).await;
                        }
                    });
                    backs.insert(client, b.clone());
                    b
                }
            };
            let _ = back.send_to(&buf[..n], upstream).await;
        }
    });
    dropped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_packets_are_repaired_by_retransmission() {
    // The gateway's candidate is the relay's address (127.0.0.2, the RTC port), as behind NAT.
    let wisp = Wisp::start("nack", "public_ip = [\"127.0.0.2\"]\n");
    assert!(wisp.wait_log("wisp is serving", 10));
    let log = wisp.log();
    let port: u16 = log
        .split("rtc=[127.0.0.2:")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("candidate port in the log: {log}"));
    let dropped = lossy_relay(
        format!("127.0.0.2:{port}").parse().unwrap(),
        format!("127.0.0.1:{port}").parse().unwrap(),
        25,
    )
    .await;
    let http = reqwest::Client::new();
    let opts = wisp.viewer("demo", &wisp.token("demo", "view"), 240, 40);
    let s = watch(&http, opts, |_| {})
        .await
        .expect("plays through loss");
    let dropped = dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 40, "the relay dropped {dropped} packets");
    assert!(s.video_frames >= 240);
    assert_eq!(
        s.discontinuities, 0,
        "every lost packet was retransmitted in time: {s:?} ({dropped} dropped)"
    );
}

#[test]
fn the_load_cli_counts_every_packet_the_gateway_sent() {
    let wisp = Wisp::start("load", "");
    let t = wisp.token("demo", "view");
    let out = Command::new(bin("whep-client"))
        .args(["load", &format!("{}/whep/demo", wisp.base), "--token", &t])
        .args(["--viewers", "2", "--duration", "4", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", wisp.log());
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("JSON summary last");
    assert_eq!(summary["connected"], 2, "{summary}");
    assert_eq!(summary["lost_packets"], 0, "{summary}");
    let received =
        summary["video_packets"].as_u64().unwrap() + summary["audio_packets"].as_u64().unwrap();
    // Each viewer's end is logged with what the gateway sent it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sent: Vec<u64> = loop {
        let sent: Vec<u64> = wisp
            .log()
            .lines()
            .filter(|l| l.contains("viewer ended"))
            .filter_map(|l| l.split("packets=").nth(1))
            .filter_map(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        if sent.len() == 2 || Instant::now() > deadline {
            break sent;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(sent.len(), 2, "{}", wisp.log());
    let sent: u64 = sent.iter().sum();
    // A few packets may still be on their way when a viewer hangs up.
    assert!(
        sent > 1000 && received * 100 >= sent * 97 && received <= sent,
        "the gateway sent {sent} packets, the viewers counted {received}: {summary}"
    );
}
