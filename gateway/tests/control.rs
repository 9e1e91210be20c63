//! Playback control over the `control` data channel, end to end: `wisp serve` with a VOD
//! session made from a generated file, viewers from `whep-client` (the CLI, and the library in
//! process). What a viewer would notice: replies and their codes, state and position events,
//! media that keeps flowing, a session that does not move when a request is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use whep_client::{Control, Options, Summary, watch};
use wisp::auth::{Claims, Minter, now_secs};

mod common;
mod harness;

use harness::{SECRET, Wisp};

/// A 20 s 640x360@30 H.264 (GOP 2 s) + AAC file, made once per test.
fn vod_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("vod.mp4");
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t", "20"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "60"])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(ok.success(), "ffmpeg made the test file");
    path
}

fn start(name: &str) -> Wisp {
    let dir = std::env::temp_dir().join(format!("wisp-media-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = vod_file(&dir);
    Wisp::start(
        name,
        &format!(
            "[[sessions]]\nname = \"vod\"\ninputs = [{{ url = \"{}\" }}]\n\
             video = {{ width = 640, height = 360 }}\n",
            file.display()
        ),
    )
}

/// Starts an in-process viewer of `vod` that sends `requests` and listens `listen_secs` after
/// the last reply; its messages arrive on the receiver as they come.
fn spawn_viewer(
    base: &str,
    token: &str,
    requests: Vec<String>,
    listen_secs: f64,
) -> (
    tokio::task::JoinHandle<Result<Summary, whep_client::ClientError>>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = Options {
        url: format!("{base}/whep/vod"),
        token: Some(token.to_string()),
        frames: None,
        timeout: Duration::from_secs(60),
        duration: None,
        rtp_only: false,
        control: Some(Control::send_all(
            requests,
            tx,
            Duration::from_secs_f64(listen_secs),
        )),
        frames_out: None,
        ..Default::default()
    };
    let run = tokio::spawn(async move { watch(&reqwest::Client::new(), opts, |_| {}).await });
    (run, rx)
}

/// Parses what is left on a viewer's message receiver (until the viewer ends).
async fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, into: &mut Vec<Value>) {
    while let Some(m) = rx.recv().await {
        into.push(serde_json::from_str(&m).expect("messages are JSON"));
    }
}

/// [`spawn_viewer`] run to its end: its summary and every message it received, parsed.
async fn viewer(
    base: &str,
    token: &str,
    requests: Vec<String>,
    listen_secs: f64,
) -> (Summary, Vec<Value>) {
    let (run, mut rx) = spawn_viewer(base, token, requests, listen_secs);
    let mut messages = Vec::new();
    drain(&mut rx, &mut messages).await;
    let summary = run.await.unwrap().expect("the viewer ran");
    (summary, messages)
}

/// The stdout of a CLI run that must have succeeded, one JSON value per line.
fn succeeded_json_lines(out: &std::process::Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

/// The reply to request `id`.
fn reply(messages: &[Value], id: Value) -> &Value {
    messages
        .iter()
        .find(|m| m.get("event").is_none() && m["id"] == id)
        .unwrap_or_else(|| panic!("no reply to {id}: {messages:#?}"))
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("ok")
}

/// Positions in `position` events after the first `state` event at `near` (±0.1 s).
fn positions_after_state_at(messages: &[Value], near: f64) -> Vec<f64> {
    let start = messages
        .iter()
        .position(|m| {
            m["event"] == "state" && (m["position"].as_f64().unwrap_or(-1.0) - near).abs() < 0.1
        })
        .unwrap_or_else(|| panic!("no state event at {near}: {messages:#?}"));
    messages[start..]
        .iter()
        .filter(|m| m["event"] == "position")
        .filter_map(|m| m["position"].as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_viewer_seeks_and_everyone_follows_a_view_only_token_cannot() {
    let w = start("seek");
    let steer = w.token("vod", "view playback");
    let view = w.token("vod", "view");

    // A viewer that watches throughout, asking only for the status.
    let (watcher, mut watcher_rx) = spawn_viewer(
        &w.base,
        &view,
        vec![r#"{"id":"w","op":"status"}"#.into()],
        7.0,
    );
    // It is ready to see the seek once its channel answered.
    let mut messages: Vec<Value> = Vec::new();
    while !messages.iter().any(|m| m["id"] == "w") {
        let m = tokio::time::timeout(Duration::from_secs(20), watcher_rx.recv())
            .await
            .expect("the watcher's status reply")
            .expect("the watcher runs");
        messages.push(serde_json::from_str(&m).unwrap());
    }

    // The CLI, as a user runs it: the reply, then position events near 8.
    let out = Command::new(common::workspace_bin("whep-client"))
        .args([
            "control",
            &format!("{}/whep/vod", w.base),
            "--token",
            &steer,
        ])
        .args(["--json", "--listen", "1.5", "seek", "8"])
        .output()
        .unwrap();
    let lines = succeeded_json_lines(&out);
    assert_eq!(reply(&lines, json!(1)), &json!({"id": 1, "ok": true}));
    let after = positions_after_state_at(&lines, 8.0);
    assert!(
        after.len() >= 4,
        "position events after the seek: {after:?}"
    );
    assert!(after.iter().all(|p| (8.0..10.5).contains(p)), "{after:?}");

    // A view-only token: refused, and the session does not go back to 1.
    let out = Command::new(common::workspace_bin("whep-client"))
        .args(["control", &format!("{}/whep/vod", w.base), "--token", &view])
        .args(["--listen", "1", "seek", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = reply(&lines, json!(1));
    assert_eq!(code(refused), "forbidden", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("playback")
    );
    let later: Vec<f64> = lines
        .iter()
        .filter(|m| m["event"] == "position")
        .filter_map(|m| m["position"].as_f64())
        .collect();
    assert!(
        !later.is_empty() && later.iter().all(|p| *p > 8.5),
        "{later:?}"
    );

    // The watcher saw the seek as everyone does, and its media went on.
    drain(&mut watcher_rx, &mut messages).await;
    let summary = watcher.await.unwrap().expect("the watcher ran");
    assert_eq!(code(reply(&messages, json!("w"))), "ok");
    let after = positions_after_state_at(&messages, 8.0);
    assert!(after.iter().all(|p| *p >= 8.0), "{after:?}");
    assert!(
        messages
            .iter()
            .any(|m| m["event"] == "viewers" && m["count"].as_u64() >= Some(2)),
        "viewer count events: {messages:#?}"
    );
    assert!(summary.video_frames > 150, "{summary:?}");
    assert_eq!(summary.lost_packets, 0, "{summary:?}");
}

fn mint(claims: &Claims) -> String {
    Minter::hs256(SECRET.as_bytes()).unwrap().mint(claims)
}

fn claims(sessions: &[&str], scope: &str, exp: u64) -> Claims {
    Claims {
        sub: Some("bob".into()),
        ..Claims::new(sessions.iter().map(|s| s.to_string()).collect(), scope, exp)
    }
}

fn auth(id: u64, token: &str) -> String {
    json!({"id": id, "op": "auth", "token": token}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_need_their_scopes_and_auth_refuses_every_bad_token() {
    let w = start("scopes");
    let view = w.token("vod", "view");
    let hour = now_secs() + 3600;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(claims(&["vod"], "view playback", hour)).unwrap())
    );
    let wrong_key = Minter::hs256(b"another-secret-another-secret-another")
        .unwrap()
        .mint(&claims(&["vod"], "view playback", hour));
    let rsa =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa.key")).unwrap();
    let rs256 =
        Minter::private_key_pem(&rsa)
            .unwrap()
            .mint(&claims(&["vod"], "view playback", hour));
    let requests = vec![
        r#"{"id":1,"op":"play"}"#.to_string(),
        r#"{"id":2,"op":"select_audio","input":0}"#.into(),
        r#"{"id":3,"op":"chat","text":"hi"}"#.into(),
        auth(
            4,
            &mint(&claims(&["vod"], "view playback", now_secs() - 10)),
        ),
        auth(5, &mint(&claims(&["other"], "view playback", hour))),
        auth(6, &alg_none),
        auth(7, &wrong_key),
        auth(8, &rs256),
        auth(9, &mint(&claims(&["vod"], "playback", hour))),
        r#"{"id":10,"op":"status"}"#.into(),
        r#"{"id":11,"op":"pause"}"#.into(),
    ];
    let (_, messages) = viewer(&w.base, &view, requests, 0.5).await;
    for id in 1..=3 {
        assert_eq!(code(reply(&messages, json!(id))), "forbidden", "{id}");
    }
    for id in 4..=9 {
        let r = reply(&messages, json!(id));
        assert_eq!(code(r), "forbidden", "{id}: {r}");
    }
    assert!(
        reply(&messages, json!(4))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("xpired"),
        "{messages:#?}"
    );
    let status = reply(&messages, json!(10));
    assert_eq!(
        status["scope"], "view",
        "no refused token changed the scope"
    );
    assert_eq!(code(reply(&messages, json!(11))), "forbidden");
    assert!(
        !messages
            .iter()
            .any(|m| m["event"] == "state" && m["state"] == "paused"),
        "a refused pause had no effect: {messages:#?}"
    );

    // A fresh token with more scopes is taken; one for another session is not.
    let wider = mint(&claims(&["vod"], "view playback chat", hour));
    let requests = vec![
        auth(1, &wider),
        r#"{"id":2,"op":"chat","text":"hello all"}"#.into(),
        r#"{"id":3,"op":"pause"}"#.into(),
        auth(
            4,
            &mint(&claims(&["other"], "view playback chat audio", hour)),
        ),
        r#"{"id":5,"op":"status"}"#.into(),
    ];
    let (_, messages) = viewer(&w.base, &view, requests, 0.5).await;
    let ok = reply(&messages, json!(1));
    assert_eq!(ok["scope"], "view playback chat", "{ok}");
    assert_eq!(code(reply(&messages, json!(2))), "ok");
    assert!(
        messages
            .iter()
            .any(|m| m["event"] == "chat" && m["text"] == "hello all" && m["from"] == "bob"),
        "{messages:#?}"
    );
    assert_eq!(code(reply(&messages, json!(3))), "ok");
    assert!(
        messages
            .iter()
            .any(|m| m["event"] == "state" && m["state"] == "paused"),
        "{messages:#?}"
    );
    assert_eq!(code(reply(&messages, json!(4))), "forbidden");
    assert_eq!(reply(&messages, json!(5))["scope"], "view playback chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversize_and_flooding_requests_are_refused_and_nothing_breaks() {
    let w = start("abuse");
    let token = w.token("vod", "view playback chat");
    let mut requests = vec![
        "not json".to_string(),
        r#"{"id":2,"op":"rewind"}"#.into(),
        format!(r#"{{"id":3,"op":"chat","text":"{}"}}"#, "x".repeat(20_000)),
        format!(r#"{{"id":4,"op":"chat","text":"{}"}}"#, "y".repeat(501)),
    ];
    requests.extend((10..40).map(|id| format!(r#"{{"id":{id},"op":"status"}}"#)));
    let (summary, messages) = viewer(&w.base, &token, requests, 2.0).await;
    assert_eq!(
        summary.control_replies, 34,
        "every message got its one reply"
    );
    assert_eq!(code(reply(&messages, Value::Null)), "bad_request");
    assert_eq!(code(reply(&messages, json!(2))), "bad_request");
    assert!(
        messages.iter().any(|m| m["error"]["code"] == "too_large"),
        "{messages:#?}"
    );
    assert_eq!(code(reply(&messages, json!(4))), "too_long");
    let limited = (10..40)
        .filter(|id| code(reply(&messages, json!(id))) == "rate_limited")
        .count();
    assert!((5..=15).contains(&limited), "{limited} rate-limited");
    // Events kept coming after the flood, and so did media.
    let last_reply = messages
        .iter()
        .rposition(|m| m.get("event").is_none())
        .unwrap();
    assert!(
        messages[last_reply..]
            .iter()
            .filter(|m| m["event"] == "position")
            .count()
            >= 5,
        "{messages:#?}"
    );
    assert!(summary.video_frames >= 40, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_warned_then_disconnected_after_the_grace() {
    let w = start("expiry");
    // Expires in 3 s: inside the 60 s warning window at once; cut 30 s after expiry.
    let exp = now_secs() + 3;
    let token = mint(&claims(&["vod"], "view playback", exp));
    let (run, mut rx) = spawn_viewer(
        &w.base,
        &token,
        vec![r#"{"id":1,"op":"status"}"#.into()],
        50.0,
    );
    let mut messages = Vec::new();
    let cut = loop {
        let m = tokio::time::timeout(Duration::from_secs(45), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no disconnection: {messages:#?}"))
            .expect("the viewer runs");
        let m: Value = serde_json::from_str(&m).unwrap();
        if m["event"] == "error" {
            break m;
        }
        messages.push(m);
    };
    let at = now_secs();
    run.abort();
    let warned = messages
        .iter()
        .find(|m| m["event"] == "auth_expiring")
        .unwrap_or_else(|| panic!("{messages:#?}"));
    assert!(warned["in_seconds"].as_u64().unwrap() <= 3, "{warned}");
    assert_eq!(cut["code"], "token_expired", "{cut}");
    assert!(
        (exp + 29..=exp + 32).contains(&at),
        "cut {} s after exp",
        at - exp
    );
    assert!(
        w.wait_log("viewer ended: the token expired", 5),
        "{}",
        w.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeks_cli_times_each_seek_and_writes_its_first_keyframe() {
    let w = start("seeks");
    let dir = std::env::temp_dir().join(format!("wisp-seeks-{}", std::process::id()));
    let run = |token: &str| {
        Command::new(common::workspace_bin("whep-client"))
            .args(["seeks", &format!("{}/whep/vod", w.base), "--token", token])
            .args(["--count", "3", "--gap", "1.5", "--keyframes"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run(&w.token("vod", "view playback"));
    let lines = succeeded_json_lines(&out);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for (n, seek) in (1..).zip(&lines[..3]) {
        assert_eq!(seek["seek"], n, "{seek}");
        assert!(seek["error"].is_null(), "{seek}");
        let target = seek["target"].as_f64().unwrap();
        assert!((1.0..19.0).contains(&target), "{seek}");
        let state = seek["state_ms"].as_f64().expect("a state event");
        let shown = seek["shown_ms"].as_f64().expect("a keyframe after it");
        assert!(state <= shown && shown < 1500.0, "{seek}");
        // The keyframe as received: Annex B with SPS, PPS and an IDR slice.
        let file = seek["keyframe_files"][0].as_str().expect("a keyframe file");
        let data = std::fs::read(file).unwrap();
        let nal_types: Vec<u8> = data
            .windows(4)
            .filter(|w| w[..3] == [0, 0, 1])
            .map(|w| w[3] & 0x1f)
            .collect();
        for t in [7, 8, 5] {
            assert!(nal_types.contains(&t), "NAL types {nal_types:?} in {file}");
        }
    }
    assert_eq!(lines[3]["seeks"], 3);
    assert_eq!(lines[3]["shown"], 3);
    assert!(lines[3]["shown_ms"]["p50"].as_f64().is_some());

    // Without `playback`, every seek is refused, and the run says it measured nothing.
    let out = run(&w.token("vod", "view"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["refused"].as_u64(), last["shown"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(stdout.contains("\"code\":\"forbidden\""), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
