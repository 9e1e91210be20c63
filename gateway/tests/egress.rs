//! Recordings, end to end: `POST /api/sessions/{name}/egress` on a running gateway, the files
//! read back with Debian's `ffprobe` and decoded with `ffmpeg`; a recorder killed mid-way, a
//! gateway killed under one, and requests that must be refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
mod harness;

use harness::Wisp;

const SMALL: &str = "[[sessions]]\nname = \"small\"\ninputs = [{ url = \"demo\" }]\nvideo = { width = 640, height = 360 }\n";

/// A gateway whose recordings go to a directory of its own (and `extra` TOML after).
/// (Its state directory, where HLS goes, is its own too: tests run side by side.) Besides the
/// demo (1280x720) it has `small`, the demo's pattern at 640x360: a quarter of the work for
/// the tests that need no more, so that two tests and their transcoders keep real time on two
/// cores of a debug build.
fn gateway(name: &str, extra: &str) -> (Wisp, PathBuf) {
    let dir = std::env::temp_dir().join(format!("wisp-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = std::env::temp_dir().join(format!("wisp-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let wisp = Wisp::start(
        name,
        &format!(
            "recordings = {:?}\nstate_dir = {:?}\n{extra}\n{SMALL}",
            dir.display().to_string(),
            state.display().to_string()
        ),
    );
    (wisp, dir)
}

async fn post(wisp: &Wisp, session: &str, token: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/sessions/{session}/egress", wisp.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn delete(wisp: &Wisp, session: &str, id: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .delete(format!("{}/api/sessions/{session}/egress/{id}", wisp.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// Polls the egress until `done` holds (60 s at most); returns what it last showed.
async fn until(
    wisp: &Wisp,
    session: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = wisp
            .api(&format!("/api/sessions/{session}/egress/{id}"))
            .await;
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{what}: {e}\n{}", wisp.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `ffprobe` reads of a file: each stream's codec and decoded frame count, and the
/// duration.
struct Probe {
    streams: Vec<(String, u64)>,
    duration: f64,
}

fn probe(file: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-of", "json"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_frames:format=duration",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "ffprobe {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let streams = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_name"].as_str().unwrap().to_string(),
                s["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap(),
            )
        })
        .collect();
    let duration = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    Probe { streams, duration }
}

/// Decodes every frame of `file`; returns what FFmpeg complained of (nothing, for a good file).
fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg -i {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_records_for_as_long_as_asked_in_every_container_that_holds_it() {
    let (wisp, dir) = gateway("egress-record", "");
    let admin = wisp.token("demo", "admin");
    let mut ids = Vec::new();
    for format in ["mp4", "mkv", "ogg"] {
        let (status, e) = post(
            &wisp,
            "demo",
            &admin,
            &format!(r#"{{"kind":"record","format":"{format}"}}"#),
        )
        .await;
        assert_eq!(status, 201, "{format}: {e}");
        assert_eq!(e["kind"], "record");
        assert_eq!(e["format"], format);
        ids.push((format, e["id"].as_str().unwrap().to_string()));
    }
    // The egresses started the demo's transcoder without being viewers.
    let info = wisp.api("/api/sessions/demo").await;
    assert_eq!(info["viewers"], 0, "{info}");
    assert_eq!(info["egresses"], 3, "{info}");
    for (format, id) in &ids {
        let e = until(&wisp, "demo", id, "10 s recorded", |e| {
            e["seconds"].as_f64().unwrap_or(0.0) >= 10.0
        })
        .await;
        assert_eq!(e["state"], "running", "{format}: {e}");
    }
    let mut files = Vec::new();
    for (format, id) in &ids {
        let (status, e) = delete(&wisp, "demo", id, &admin).await;
        assert_eq!(status, 200, "{e}");
        assert_eq!(e["state"], "stopped", "{e}");
        assert_eq!(e["reason"], "stopped", "{e}");
        let file = PathBuf::from(e["file"].as_str().unwrap());
        assert!(file.starts_with(dir.join("demo")), "{e}");
        assert!(file.extension().unwrap() == *format, "{e}");
        assert_eq!(
            e["bytes_written"].as_u64(),
            Some(std::fs::metadata(&file).unwrap().len()),
            "{e}"
        );
        files.push((format, file, e));
    }
    for (format, file, e) in &files {
        let p = probe(file);
        let codecs: Vec<&str> = p.streams.iter().map(|(c, _)| c.as_str()).collect();
        let want: &[&str] = if **format == "ogg" {
            &["opus"]
        } else {
            &["h264", "opus"]
        };
        assert_eq!(codecs, want, "{format}");
        assert!(
            (9.0..=12.5).contains(&p.duration),
            "{format}: {} s; {e}",
            p.duration
        );
        // The demo is 30 fps and 50 Opus packets a second.
        for (codec, frames) in &p.streams {
            let per_second = if codec == "h264" { 30.0 } else { 50.0 };
            let expected = p.duration * per_second;
            assert!(
                *frames as f64 > expected * 0.8,
                "{format}: {frames} {codec} frames in {} s",
                p.duration
            );
        }
        assert_eq!(decode_errors(file), "", "{format}");
    }
    let list = wisp.api("/api/sessions/demo/egress").await;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let metrics = common::metrics(&wisp.base).await;
    assert_eq!(common::metric(&metrics, "wisp_egresses"), Some(0.0));
    let info = wisp.api("/api/sessions/demo").await;
    assert!(info.get("egresses").is_none(), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_ends_by_itself_at_max_seconds_and_a_vp8_session_records_to_webm() {
    let toml = "[[sessions]]\nname = \"vp8\"\ninputs = [{ url = \"demo\" }]\n\
                video = { codec = \"vp8\", width = 640, height = 360 }\n";
    let (wisp, _dir) = gateway("egress-webm", toml);
    let admin = wisp.token("vp8", "admin");
    let (status, e) = post(&wisp, "vp8", &admin, r#"{"kind":"record","format":"mp4"}"#).await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("record webm or mkv"),
        "{e}"
    );
    let (status, e) = post(
        &wisp,
        "vp8",
        &admin,
        r#"{"kind":"record","format":"webm","max_seconds":4}"#,
    )
    .await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap();
    let e = until(&wisp, "vp8", id, "ended", |e| e["state"] == "ended").await;
    assert_eq!(e["reason"], "max_seconds", "{e}");
    assert!(e.get("pid").is_none(), "{e}");
    let file = PathBuf::from(e["file"].as_str().unwrap());
    let p = probe(&file);
    let codecs: Vec<&str> = p.streams.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codecs, ["vp8", "opus"]);
    assert!((3.5..=4.5).contains(&p.duration), "{} s", p.duration);
    assert_eq!(decode_errors(&file), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_recorder_leaves_a_playable_file_and_so_does_a_killed_gateway() {
    let (mut wisp, _dir) = gateway("egress-kill", "");
    let admin = wisp.token("small", "admin");
    let (status, e) = post(
        &wisp,
        "small",
        &admin,
        r#"{"kind":"record","format":"mp4"}"#,
    )
    .await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let e = until(&wisp, "small", &id, "6 s recorded", |e| {
        e["seconds"].as_f64().unwrap_or(0.0) >= 6.0
    })
    .await;
    let first = PathBuf::from(e["file"].as_str().unwrap());
    let pid = e["pid"].as_u64().unwrap() as i32;
    // The classic failure: a recorder killed before it could write a trailer.
    signal(pid, "KILL");
    let e = until(&wisp, "small", &id, "restarted into a new file", |e| {
        e["restarts"] == 1
            && e["files"].as_array().is_some_and(|f| f.len() == 2)
            && e["state"] == "running"
    })
    .await;
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("signal")),
        "{e}"
    );
    let p = probe(&first);
    // Fragments end at keyframes (every 2 s): what was written before the last one plays.
    assert!(
        p.duration >= 1.5,
        "the killed recording plays {} s",
        p.duration
    );
    assert_eq!(decode_errors(&first), "");
    // Its gateway killed: the recorder sees its stdin close, finishes its file and exits.
    let e = until(&wisp, "small", &id, "3 s into the second file", |e| {
        e["seconds"].as_f64().unwrap_or(0.0) >= p.duration + 3.0
    })
    .await;
    let second = PathBuf::from(e["file"].as_str().unwrap());
    let pid = e["pid"].as_u64().unwrap();
    wisp.child.kill().unwrap();
    wisp.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the recorder outlived its gateway"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = probe(&second);
    assert!(p.duration >= 2.0, "{} s", p.duration);
    assert_eq!(decode_errors(&second), "");
}

/// `kill -SIG pid`.
fn signal(pid: i32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_egress_requests_are_refused_and_an_unwritable_directory_fails_only_its_egress() {
    // Recordings "directory" that is a file: nothing can be created under it, even by root.
    let blocked = std::env::temp_dir().join(format!("wisp-rec-blocked-{}", std::process::id()));
    std::fs::write(&blocked, b"not a directory").unwrap();
    let wisp = Wisp::start(
        "egress-bad",
        &format!(
            "recordings = {:?}\n{SMALL}",
            blocked.join("rec").display().to_string()
        ),
    );
    let admin = wisp.token("small", "admin");
    for (body, status, says) in [
        (
            r#"{"kind":"podcast"}"#,
            400,
            "one of record, hls, rtmp, srt, websocket",
        ),
        (r#"{"format":"mp4"}"#, 400, "give \"kind\""),
        (r#"{"kind":"record"}"#, 400, "one of mp4, webm, mkv, ogg"),
        (
            r#"{"kind":"record","format":"avi"}"#,
            400,
            "unknown format \"avi\"",
        ),
        (
            r#"{"kind":"record","format":"mp4","max_seconds":0}"#,
            400,
            "max_seconds",
        ),
        (
            r#"{"kind":"record","format":"mp4","to":"/etc/passwd"}"#,
            400,
            "unknown field \"to\"",
        ),
        ("not json", 400, "not JSON"),
        (
            r#"{"kind":"record","format":"webm"}"#,
            422,
            "record mp4 or mkv",
        ),
        (
            r#"{"kind":"hls","ladder":[{"height":7}]}"#,
            400,
            "32 to 4320",
        ),
        (
            r#"{"kind":"rtmp","url":"http://127.0.0.1/live"}"#,
            400,
            "rtmp://HOST",
        ),
    ] {
        let (got, e) = post(&wisp, "small", &admin, body).await;
        assert_eq!(got, status, "{body}: {e}");
        assert!(
            e["detail"].as_str().is_some_and(|d| d.contains(says)),
            "{body}: {e}"
        );
    }
    let (got, e) = post(
        &wisp,
        "nosuch",
        &wisp.token("*", "admin"),
        r#"{"kind":"record","format":"mp4"}"#,
    )
    .await;
    assert_eq!(got, 404, "{e}");
    let (got, _) = post(
        &wisp,
        "small",
        &wisp.token("small", "view"),
        r#"{"kind":"record","format":"mp4"}"#,
    )
    .await;
    assert_eq!(got, 403);
    let r = reqwest::Client::new()
        .post(format!("{}/api/sessions/small/egress", wisp.base))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body(json!({"kind":"record","format":"mp4"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (got, _) = delete(&wisp, "small", "0000", &admin).await;
    assert_eq!(got, 404);

    // Accepted, then failed with the reason; the session's viewers never notice.
    let (got, e) = post(
        &wisp,
        "small",
        &admin,
        r#"{"kind":"record","format":"mp4"}"#,
    )
    .await;
    assert_eq!(got, 201, "{e}");
    let id = e["id"].as_str().unwrap();
    let e = until(&wisp, "small", id, "failed", |e| e["state"] == "failed").await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("cannot create the recordings directory")),
        "{e}"
    );
    let view = wisp.token("small", "view");
    let s = whep_client::watch(
        &reqwest::Client::new(),
        wisp.viewer("small", &view, 60, 30),
        |_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", wisp.log()));
    assert!(s.video_frames >= 60, "{s:?}");
    let _ = std::fs::remove_file(&blocked);
}

/// Frames `ffmpeg` decodes from `url` (at most `max`), and whether it exited well.
fn decoded_frames(url: &str, max: u32) -> (u64, String) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-rw_timeout", "10000000", "-i", url])
        .args([
            "-map",
            "0:v:0",
            "-frames:v",
            &max.to_string(),
            "-f",
            "framemd5",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u64;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        frames,
        if out.status.success() {
            err
        } else {
            format!("exit {}: {err}", out.status)
        },
    )
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_starts_when_a_player_asks_serves_every_rendition_and_stops_when_none_does() {
    let toml = "idle_timeout = 4\n[[sessions]]\nname = \"quiet\"\ninputs = [{ url = \"demo\" }]\nhls = \"off\"\n\
                [[sessions]]\nname = \"vp8\"\ninputs = [{ url = \"demo\" }]\nvideo = { codec = \"vp8\" }\n";
    let (wisp, _dir) = gateway("egress-hls", toml);
    let view = wisp.token("demo", "view");
    let master = format!("{}/hls/demo/index.m3u8?token={view}", wisp.base);
    // The first request starts HLS and is answered once every rendition has a segment.
    let (status, headers, text) = get(&master).await;
    assert_eq!(status, 200, "{text}\n{}", wisp.log());
    assert_eq!(headers["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(headers["cache-control"], "no-cache");
    let variants: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let infs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF"))
        .collect();
    assert_eq!(variants.len(), 3, "{text}");
    for (want, inf) in ["1280x720", "640x360", "320x180"].iter().zip(&infs) {
        assert!(
            inf.contains(&format!("RESOLUTION={want}")) && inf.contains("mp4a.40.2"),
            "{inf}"
        );
    }
    // Every URI carries the token: players resolve them without the master's query.
    assert!(
        variants
            .iter()
            .all(|v| v.ends_with(&format!("?token={view}"))),
        "{text}"
    );
    // The master playlist as ffmpeg reads it, then each rendition: 150 frames (5 s) each.
    let (frames, err) = decoded_frames(&master, 150);
    assert_eq!((frames, err.as_str()), (150, ""), "master");
    for v in &variants {
        let url = format!("{}/hls/demo/{v}", wisp.base);
        let (frames, err) = decoded_frames(&url, 150);
        assert_eq!((frames, err.as_str()), (150, ""), "{v}");
        // A media playlist: fMP4 segments no longer than its target duration.
        let (status, headers, text) = get(&url).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/vnd.apple.mpegurl");
        let target: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(target <= 2.0, "{text}");
        let durations: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(|d| d.trim_end_matches(',').parse().unwrap())
            .collect();
        assert!(
            !durations.is_empty() && durations.iter().all(|d| *d <= target),
            "{text}"
        );
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4?token="), "{text}");
        let segment = text.lines().find(|l| l.starts_with("seg")).unwrap();
        let rendition = v.split('/').next().unwrap();
        let (status, headers, _) =
            get(&format!("{}/hls/demo/{rendition}/{segment}", wisp.base)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "video/iso.segment");
    }
    // Refusals: no token, another session's token, names outside the directory, HLS off.
    let other = wisp.token("quiet", "view");
    for (url, status) in [
        (format!("{}/hls/demo/index.m3u8", wisp.base), 401),
        (
            format!("{}/hls/demo/index.m3u8?token={other}", wisp.base),
            403,
        ),
        (
            format!("{}/hls/demo/360p/..%2f..%2fsecret?token={view}", wisp.base),
            404,
        ),
        (
            format!("{}/hls/demo/.hidden/index.m3u8?token={view}", wisp.base),
            404,
        ),
        (
            format!("{}/hls/demo/360p/secret.txt?token={view}", wisp.base),
            404,
        ),
        (
            format!("{}/hls/quiet/index.m3u8?token={other}", wisp.base),
            404,
        ),
        (
            format!(
                "{}/hls/vp8/index.m3u8?token={}",
                wisp.base,
                wisp.token("vp8", "view")
            ),
            422,
        ),
    ] {
        let (got, _, body) = get(&url).await;
        assert_eq!(got, status, "{url}: {body}");
    }
    // Nobody asks any more: after the idle timeout it stops, and its files go.
    let list = wisp.api("/api/sessions/demo/egress").await;
    let e = &list[0];
    assert_eq!(e["kind"], "hls", "{list}");
    assert_eq!(e["on_demand"], true, "{list}");
    let id = e["id"].as_str().unwrap();
    let dir = PathBuf::from(e["file"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let e = until(&wisp, "demo", id, "idle", |e| e["state"] == "ended").await;
    assert_eq!(e["reason"], "idle", "{e}");
    assert!(!dir.exists(), "{}", dir.display());
    let metrics = common::metrics(&wisp.base).await;
    assert_eq!(common::metric(&metrics, "wisp_egresses"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_egress_from_the_api_takes_a_ladder_and_ends_its_playlists_when_deleted() {
    let (wisp, _dir) = gateway("egress-hls-api", "");
    let admin = wisp.token("small", "admin");
    let (status, e) = post(
        &wisp,
        "small",
        &admin,
        r#"{"kind":"hls","ladder":[{"height":720},{"height":270,"bitrate":400000}]}"#,
    )
    .await;
    assert_eq!(status, 201, "{e}");
    assert_eq!(e["url"], "/hls/small/index.m3u8", "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let (status, again) = post(&wisp, "small", &admin, r#"{"kind":"hls"}"#).await;
    assert_eq!(status, 409, "{again}");
    let e = until(&wisp, "small", &id, "running", |e| e["state"] == "running").await;
    assert_eq!(e["on_demand"], Value::Null, "{e}");
    let master = PathBuf::from(e["file"].as_str().unwrap());
    let view = wisp.token("small", "view");
    let (status, _, text) = get(&format!("{}/hls/small/index.m3u8?token={view}", wisp.base)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("RESOLUTION=640x360") && text.contains("RESOLUTION=480x270"),
        "{text}"
    );
    assert_eq!(text.matches("#EXT-X-STREAM-INF").count(), 2, "{text}");
    let (status, e) = delete(&wisp, "small", &id, &admin).await;
    assert_eq!((status, e["state"].as_str()), (200, Some("stopped")), "{e}");
    // Stopped, not idle: the files stay, each playlist ended.
    let dir = master.parent().unwrap();
    for r in ["360p", "270p"] {
        let playlist = std::fs::read_to_string(dir.join(r).join("index.m3u8")).unwrap();
        assert!(
            playlist.trim_end().ends_with("#EXT-X-ENDLIST"),
            "{r}: {playlist}"
        );
    }
}

/// A free TCP or UDP port on 127.0.0.1.
fn free_port(udp: bool) -> u16 {
    match udp {
        true => std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        false => std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    }
}

/// nginx with Debian's RTMP module, an RTMP server with a `live` application, on `port`.
struct Nginx(std::process::Child, PathBuf);

impl Nginx {
    fn start(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("wisp-nginx-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
                 daemon off;\nmaster_process off;\npid {0}/nginx.pid;\nerror_log {0}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; record off; }} }} }}\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (Debian's nginx and libnginx-mod-rtmp: scripts/install-deps test)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx(child, dir)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restreams_reach_an_rtmp_server_and_an_srt_listener_and_a_refused_one_keeps_trying() {
    let (wisp, _dir) = gateway("egress-push", "");
    let admin = wisp.token("small", "admin");
    // RTMP: nginx-rtmp takes the push; ffprobe reads it back from nginx.
    let port = free_port(false);
    let _nginx = Nginx::start(port);
    let url = format!("rtmp://127.0.0.1:{port}/live/small");
    let (status, e) = post(
        &wisp,
        "small",
        &admin,
        &format!(r#"{{"kind":"rtmp","url":"{url}"}}"#),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    assert_eq!(e["url"], url.as_str(), "{e}");
    let rtmp_id = e["id"].as_str().unwrap().to_string();
    until(&wisp, "small", &rtmp_id, "pushing", |e| {
        e["seconds"].as_f64().unwrap_or(0.0) >= 1.0
    })
    .await;
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000", "-of", "json"])
        .args(["-show_entries", "stream=codec_name,width,height"])
        .arg(&url)
        .output()
        .unwrap();
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut codecs: Vec<&str> = probe["streams"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["codec_name"].as_str()).collect())
        .unwrap_or_default();
    codecs.sort();
    assert_eq!(
        codecs,
        ["aac", "h264"],
        "{probe} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (frames, err) = decoded_frames(&url, 60);
    assert_eq!((frames, err.as_str()), (60, ""), "rtmp");

    // SRT: an ffmpeg listener decodes what the egress sends as caller.
    let srt_port = free_port(true);
    let listener = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(format!("srt://127.0.0.1:{srt_port}?mode=listener"))
        .args(["-map", "0:v:0", "-frames:v", "60", "-f", "framemd5", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // No wait for the listener to bind: a push that finds nobody is tried again a second later.
    let (status, e) = post(
        &wisp,
        "small",
        &admin,
        &format!(r#"{{"kind":"srt","url":"srt://127.0.0.1:{srt_port}"}}"#),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    let out = tokio::task::spawn_blocking(move || listener.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert!(
        out.status.success() && frames == 60,
        "srt: {frames} frames, {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A server that refuses: retried with backoff, each attempt's error shown.
    let closed = free_port(false);
    let (status, e) = post(
        &wisp,
        "small",
        &admin,
        &format!(r#"{{"kind":"rtmp","url":"rtmp://127.0.0.1:{closed}/live/x"}}"#),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let e = until(&wisp, "small", &id, "retried", |e| {
        e["restarts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("Connection refused")),
        "{e}"
    );
    assert_ne!(e["state"], "failed", "{e}");
    // The RTMP push meanwhile went on.
    let e = wisp
        .api(&format!("/api/sessions/small/egress/{rtmp_id}"))
        .await;
    assert_eq!(
        (e["state"].as_str(), e["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{e}"
    );
    for id in [id, rtmp_id] {
        let (status, e) = delete(&wisp, "small", &id, &admin).await;
        assert_eq!((status, e["state"].as_str()), (200, Some("stopped")), "{e}");
    }
}

/// Goertzel power of `freq` in 16 kHz mono samples.
fn tone_power(samples: &[i16], freq: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * freq / 16_000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = x as f64 + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - k * s1 * s2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_listener_hears_the_demo_tone_and_a_dropped_connection_is_dialled_again() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (wisp, _dir) = gateway("egress-ws", "");
    let admin = wisp.token("small", "admin");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The listener: takes the first connection, reads its hello and 2 s of audio, then hangs
    // up; takes the second and reads one message.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("first message: {other:?}"),
        };
        let mut pcm = Vec::new();
        let mut messages = 0;
        while pcm.len() < 64_000 {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(b.len(), 640, "20 ms of 16 kHz mono s16le");
                    pcm.extend_from_slice(&b);
                    messages += 1;
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        drop(ws);
        let (tcp, _) = listener.accept().await.unwrap();
        let mut again = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let second = again.next().await;
        let second = matches!(second, Some(Ok(m)) if m.is_text());
        (hello, pcm, messages, second)
    });
    let (status, e) = post(
        &wisp,
        "small",
        &admin,
        &format!(r#"{{"kind":"websocket","url":"ws://127.0.0.1:{port}/asr","audio":{{"rate":16000,"channels":1}}}}"#),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let (hello, pcm, messages, second) = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the listener heard 2 s of audio and a reconnection")
        .unwrap();
    let hello: Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(
        hello,
        json!({"session":"small","format":"s16le","rate":16000,"channels":1})
    );
    assert_eq!(messages, 100);
    let samples: Vec<i16> = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let tone = tone_power(&samples[16_000..], 440.0);
    for other in [220.0, 880.0, 1000.0] {
        let p = tone_power(&samples[16_000..], other);
        assert!(tone > 100.0 * p, "440 Hz {tone:e} vs {other} Hz {p:e}");
    }
    assert!(second, "the hello again, on a new connection");
    // Connected again: running, and the error of the dropped connection cleared.
    let e = until(&wisp, "small", &id, "reconnected", |e| {
        e["restarts"].as_u64().unwrap_or(0) >= 1 && e["state"] == "running"
    })
    .await;
    assert!(e.get("error").is_none(), "{e}");
    let (status, e) = delete(&wisp, "small", &id, &admin).await;
    assert_eq!((status, e["state"].as_str()), (200, Some("stopped")), "{e}");
    // Nobody listening: tried again and again, the reason shown.
    let closed = free_port(false);
    let (_, e) = post(
        &wisp,
        "small",
        &admin,
        &format!(r#"{{"kind":"websocket","url":"ws://127.0.0.1:{closed}/x"}}"#),
    )
    .await;
    let id = e["id"].as_str().unwrap().to_string();
    let e = until(&wisp, "small", &id, "retrying", |e| {
        e["restarts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("cannot connect")),
        "{e}"
    );
    assert_ne!(e["state"], "failed", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_definition_may_record_from_the_start_and_a_bad_egress_stops_the_gateway_starting()
 {
    let toml = "[[sessions]]\nname = \"always\"\ninputs = [{ url = \"demo\" }]\n\
                video = { width = 640, height = 360 }\n\
                egress = [{ kind = \"record\", format = \"mp4\", max_seconds = 3 }]\n";
    let (wisp, dir) = gateway("egress-toml", toml);
    // Nobody asked: the definition did, at the gateway's start.
    let deadline = Instant::now() + Duration::from_secs(60);
    let e = loop {
        let list = wisp.api("/api/sessions/always/egress").await;
        if list[0]["state"] == "ended" {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "{list}\n{}", wisp.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(e["reason"], "max_seconds", "{e}");
    let file = PathBuf::from(e["file"].as_str().unwrap());
    assert!(file.starts_with(dir.join("always")), "{e}");
    let p = probe(&file);
    assert!((2.5..=3.5).contains(&p.duration), "{} s", p.duration);

    // A definition with an egress the API would refuse: the gateway says which, and exits.
    let bad = "[[sessions]]\nname = \"x\"\ninputs = [{ url = \"demo\" }]\n\
               egress = [{ kind = \"record\", format = \"avi\" }]\n";
    let conf = dir.join("bad.toml");
    std::fs::write(&conf, bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--rtc",
            "127.0.0.1:0",
            "--rtmp",
            "off",
            "--srt",
            "off",
        ])
        .arg("--jwt-secret-file")
        .arg(wisp.dir.join("secret"))
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("session \"x\": egress 0: unknown format \"avi\""),
        "{stderr}"
    );
}
