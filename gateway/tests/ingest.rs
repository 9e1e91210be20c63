//! Live ingest beyond WHIP, end to end on 127.0.0.1: Debian's `ffmpeg` CLI publishes over RTMP
//! (FLV) and SRT (MPEG-TS) as an encoder would (H.264 High with B-frames, AAC), `whep-client`
//! watches; refused publishers, a publisher that comes back, and garbage on the ingest ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whep_client::{Control, Options, watch};

mod common;
mod harness;

use harness::Wisp;

fn rtmp_addr(wisp: &Wisp) -> String {
    wisp.logged_addr("RTMP publishers on rtmp://")
}

fn srt_addr(wisp: &Wisp) -> String {
    wisp.logged_addr("SRT publishers on srt://")
}

/// An encoder's stream: 1280x720@30 H.264 High with 2 B-frames and a 2 s GOP, AAC, in real
/// time, for `secs`, to `url` as `format` (`flv` or `mpegts`).
fn publish(url: &str, format: &str, secs: u32) -> Child {
    publish_as(
        url,
        format,
        secs,
        "1280x720",
        &["-profile:v", "high", "-bf", "2", "-g", "60"],
    )
}

/// As [`publish`], at `size` with these x264 options.
fn publish_as(url: &str, format: &str, secs: u32, size: &str, x264: &[&str]) -> Child {
    Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=30"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440"])
        .args(["-t", &secs.to_string()])
        // veryfast: B-frames and CABAC as asked, at a third of x264's default cost, so that
        // parallel tests on two cores keep real time.
        .args(["-c:v", "libx264", "-preset", "veryfast"])
        .args(x264)
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", format, url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs")
}

type Events = tokio::sync::mpsc::UnboundedReceiver<String>;
type Frames = tokio::sync::mpsc::UnboundedReceiver<whep_client::VideoFrame>;

/// A viewer of `name` for a long time, with a control channel (open `control_secs`) whose
/// session events come out of `Events`, and its frames out of `Frames`.
fn listening_viewer(
    wisp: &Wisp,
    name: &str,
    token: &str,
    control_secs: u64,
) -> (Options, Events, Frames) {
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (frames_tx, frames) = tokio::sync::mpsc::unbounded_channel();
    let opts = Options {
        frames_out: Some(frames_tx),
        control: Some(Control::send_all(
            vec![r#"{"id":1,"op":"status"}"#.to_string()],
            tx,
            Duration::from_secs(control_secs),
        )),
        ..wisp.viewer(name, token, 100_000, 60)
    };
    (opts, events, frames)
}

/// Waits (`secs` at most) for a control-channel message containing `needle`.
async fn next_event(events: &mut Events, needle: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if e.contains(needle) => return,
            Ok(Some(_)) => {}
            other => panic!("no {needle} event: {other:?}"),
        }
    }
}

/// Waits (30 s at most) until the session's API state satisfies `done`.
async fn until(wisp: &Wisp, name: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = wisp.api(&format!("/api/sessions/{name}")).await;
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", wisp.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An H.264 constrained baseline stream at `size` and `bitrate` (Annex B, 1 s GOP, 2 s), as a
/// simulcast encoder makes for one layer.
fn layer_stream(size: &str, bitrate: &str) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=30:duration=2"))
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-tune",
            "zerolatency",
        ])
        .args(["-b:v", bitrate, "-g", "30", "-pix_fmt", "yuv420p"])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obs_shaped_simulcast_publisher_is_told_apart_by_rid_and_each_pinned_viewer_decodes_its_layer()
 {
    let wisp = Wisp::start("obs-simulcast", "");
    let http = whep_client::http_client();
    // OBS 32.1's shape: rids 0, 1, 2, highest first (the gateway ranks by size, not by
    // name), the RID and MID header extensions, and no a=ssrc: the packets' RIDs are all
    // that tells the layers apart.
    let sizes = [(1280, 720), (640, 360), (320, 180)];
    let layers: Vec<whep_client::SendLayer> = [("1500k", 0), ("500k", 1), ("180k", 2)]
        .iter()
        .map(|(bitrate, k)| {
            let (w, h) = sizes[*k];
            let frames = whep_client::annexb_frames(&layer_stream(&format!("{w}x{h}"), bitrate));
            assert_eq!(frames.len(), 60, "one access unit per frame");
            whep_client::SendLayer {
                rid: k.to_string(),
                frames,
            }
        })
        .collect();
    let url = format!("{}/whip/obs", wisp.base);
    let publish_token = wisp.token("obs", "publish");
    let publisher = {
        let http = http.clone();
        tokio::spawn(async move {
            whep_client::publish_layers(
                &http,
                &url,
                Some(&publish_token),
                &layers,
                30.0,
                Duration::from_secs(12),
                Duration::from_secs(10),
            )
            .await
        })
    };
    // Each layer reaches the ring: the session lists three, each sending, at its size,
    // lowest first.
    until(&wisp, "obs", |s| {
        let l = s["layers"].as_array().cloned().unwrap_or_default();
        let want = [2, 1, 0].map(|k: usize| {
            let (w, h) = sizes[k];
            (Some(k.to_string()), Some(w as u64), Some(h as u64))
        });
        l.len() == 3
            && l.iter().all(|x| x["active"] == true)
            && l.iter()
                .map(|x| {
                    (
                        x["rid"].as_str().map(String::from),
                        x["width"].as_u64(),
                        x["height"].as_u64(),
                    )
                })
                .eq(want)
    })
    .await;
    let t = wisp.token("obs", "view");
    let pinned = |rid: &str| Options {
        layer: Some(serde_json::json!({"id": "layer", "op": "layer", "rid": rid}).to_string()),
        ..wisp.viewer("obs", &t, 90, 20)
    };
    let (v0, v1, v2) = tokio::join!(
        watch(&http, pinned("0"), |_| {}),
        watch(&http, pinned("1"), |_| {}),
        watch(&http, pinned("2"), |_| {}),
    );
    for (k, v) in [v0, v1, v2].into_iter().enumerate() {
        let v = v.unwrap_or_else(|e| panic!("viewer pinned to {k}: {e}\n{}", wisp.log()));
        let last = v.sizes.last().expect("video with a size");
        assert_eq!(
            ((last.width, last.height), v.undecodable_frames),
            (sizes[k], 0),
            "viewer pinned to {k}: {:?}",
            v.sizes
        );
        assert!(last.frames >= 45, "layer {k}: {:?}", v.sizes);
    }
    let sent = publisher.await.expect("joins").expect("publishes");
    assert!(sent.frames.iter().all(|&n| n >= 300), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_and_srt_publishers_become_live_sessions_that_whep_players_watch() {
    let recordings = std::env::temp_dir().join(format!("wisp-ingest-rec-{}", std::process::id()));
    let wisp = Wisp::start(
        "ingest-play",
        &format!("recordings = {:?}\n", recordings.display().to_string()),
    );
    let t = wisp.token("cam,cam2", "publish");
    let v = wisp.token("cam,cam2", "view admin");
    let rtmp = format!("rtmp://{}/live/cam?token={t}", rtmp_addr(&wisp));
    let srt = format!("srt://{}?streamid=publish:cam2:{t}", srt_addr(&wisp));
    let mut publishers = [publish(&rtmp, "flv", 30), publish(&srt, "mpegts", 30)];
    let http = reqwest::Client::new();
    for (name, ingest) in [("cam", "rtmp"), ("cam2", "srt")] {
        until(&wisp, name, |s| s["state"] == "live").await;
        let s = watch(&http, wisp.viewer(name, &v, 90, 30), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", wisp.log()));
        assert!(s.video_frames >= 90, "{name}: {s:?}");
        assert_eq!((s.width, s.height), (Some(1280), Some(720)), "{name}");
        assert!(
            s.audio_packets > 0,
            "{name}: audio too: {s:?}\n{}",
            wisp.log()
        );
        let info = wisp.api(&format!("/api/sessions/{name}")).await;
        assert_eq!(info["ingest"], ingest, "{info}");
        assert_eq!(info["width"], 1280, "{info}");
        // What the encoder sends, before the transcoder makes it constrained baseline.
        let source = &info["source"];
        assert!(
            source["video"]
                .as_str()
                .is_some_and(|v| v.starts_with("h264 High 1280x720")),
            "{info}"
        );
        assert!(
            source["audio"]
                .as_str()
                .is_some_and(|a| a.starts_with("aac ")),
            "{info}"
        );
        assert!(
            info["ingest_bitrate"].as_u64().unwrap_or(0) > 100_000,
            "{info}"
        );
    }
    // Recorded as any session is: 3 s of each to MP4, the transcoder's H.264 and Opus.
    for name in ["cam", "cam2"] {
        let r = http
            .post(format!("{}/api/sessions/{name}/egress", wisp.base))
            .bearer_auth(&v)
            .header("content-type", "application/json")
            .body(r#"{"kind":"record","format":"mp4","max_seconds":3}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{name}");
        let e: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let id = e["id"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let e = loop {
            let e = wisp.api(&format!("/api/sessions/{name}/egress/{id}")).await;
            if e["state"] != "waiting" && e["state"] != "starting" && e["state"] != "running" {
                break e;
            }
            assert!(Instant::now() < deadline, "{e}\n{}", wisp.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(e["reason"], "max_seconds", "{name}: {e}");
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-of",
                "csv=p=0",
                "-show_entries",
                "stream=codec_name",
            ])
            .arg(e["file"].as_str().unwrap())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "h264\nopus\n",
            "{name}: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(&recordings);
    // Frames are timed from their arrival at the gateway, transcoding included: B-frame
    // reordering and the frame-rate filter alone hold each picture 33-100 ms. A stamp taken
    // when the transcoder wrote them put all 124 frames under 10 ms (mean 1.8 ms, debug build).
    let metrics = common::metrics(&wisp.base).await;
    let value = |name: &str| {
        common::metric(&metrics, name).unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let frames = value("wisp_ingest_latency_seconds_count");
    let mean_ms = value("wisp_ingest_latency_seconds_sum") / frames * 1000.0;
    let under_25ms = value("wisp_ingest_latency_seconds_bucket{le=\"0.025\"}");
    assert!(frames >= 20.0, "{metrics}");
    assert!(
        (20.0..3000.0).contains(&mean_ms) && under_25ms < frames / 4.0,
        "mean {mean_ms} ms, {under_25ms} of {frames} frames under 25 ms"
    );
    for p in &mut publishers {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// The SPS of an Annex B keyframe: profile_idc, constraint flags, level_idc.
fn sps_of(keyframe: &[u8]) -> Option<[u8; 3]> {
    keyframe
        .windows(7)
        .find(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 7)
        .map(|w| [w[4], w[5], w[6]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_copy_passes_baseline_through_and_refuses_what_viewers_cannot_decode_and_max_height_scales()
 {
    // Transcoded publishes taller than 360 are scaled down; copied ones cannot be.
    let wisp = Wisp::start("ingest-copy", "[live]\nmax_height = 360\n");
    let t = wisp.token("cpy,cpy2,high,small", "publish");
    let v = wisp.token("cpy,cpy2,high,small", "view admin");
    // x264's baseline (constraint flags 0xc0; the gateway's own encoder writes 0xe0) with a
    // keyframe every 15 frames (the gateway's own: every 60), at 640x360 (level 3.0).
    let baseline = ["-profile:v", "baseline", "-g", "15", "-keyint_min", "15"];
    let rtmp = format!("rtmp://{}/live/cpy?token={t}&video=copy", rtmp_addr(&wisp));
    let srt = format!(
        "srt://{}?streamid=publish:cpy2:{t}?video=copy",
        srt_addr(&wisp)
    );
    let small = format!("rtmp://{}/live/small?token={t}", rtmp_addr(&wisp));
    let mut publishers = [
        publish_as(&rtmp, "flv", 30, "640x360", &baseline),
        publish_as(&srt, "mpegts", 30, "640x360", &baseline),
        publish(&small, "flv", 30),
    ];
    let http = reqwest::Client::new();
    until(&wisp, "small", |s| s["state"] == "live").await;
    let s = watch(&http, wisp.viewer("small", &v, 30, 30), |_| {})
        .await
        .unwrap_or_else(|e| panic!("small: {e}\n{}", wisp.log()));
    assert_eq!((s.width, s.height), (Some(640), Some(360)), "max_height");
    for name in ["cpy", "cpy2"] {
        until(&wisp, name, |s| s["state"] == "live").await;
        let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
        let opts = Options {
            frames_out: Some(frames_tx),
            ..wisp.viewer(name, &v, 90, 30)
        };
        let s = watch(&http, opts, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", wisp.log()));
        assert!(s.video_frames >= 90, "{name}: {s:?}");
        assert_eq!((s.width, s.height), (Some(640), Some(360)), "{name}");
        assert!(s.audio_packets > 0, "{name}: audio too: {s:?}");
        assert!(s.keyframes >= 5, "{name}: the publisher's GOP: {s:?}");
        let mut sps = None;
        while let Ok(f) = frames.try_recv() {
            if let Some(data) = f.data.filter(|_| f.keyframe) {
                sps = sps.or(sps_of(&data));
            }
        }
        assert_eq!(sps, Some([66, 0xc0, 30]), "{name}: x264's own SPS");
        let info = wisp.api(&format!("/api/sessions/{name}")).await;
        let source = info["source"]["video"].as_str().unwrap_or_default();
        assert!(
            source.starts_with("h264 constrained baseline 640x360 ")
                && source.ends_with(" fps (passed through)"),
            "{info}"
        );
    }
    for p in &mut publishers {
        let _ = p.kill();
        let _ = p.wait();
    }
    // High with B-frames cannot be copied: the publish ends, and the session says why.
    let high = format!("rtmp://{}/live/high?token={t}&video=copy", rtmp_addr(&wisp));
    let mut p = publish(&high, "flv", 30);
    until(&wisp, "high", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("baseline") && e.contains("H.264 high"))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the refused publisher is let go");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wisp.log().contains("the stream was refused"),
        "{}",
        wisp.log()
    );
}

/// Runs ffmpeg to `url` for a few seconds; its exit status and what it said.
fn publish_and_wait(url: &str, format: &str) -> (bool, String) {
    let mut p = publish(url, format, 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = p.kill();
            break p.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = p.stderr.take().unwrap().read_to_string(&mut err);
    (status.success(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_without_a_good_token_are_refused_and_leave_nothing_behind() {
    let wisp = Wisp::start("ingest-refuse", "");
    let (rtmp, srt) = (rtmp_addr(&wisp), srt_addr(&wisp));
    let other = wisp.token("other", "publish");
    let viewer = wisp.token("nope", "view");
    let expired = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.bad";
    for (what, url, format) in [
        ("no token", format!("rtmp://{rtmp}/live/nope"), "flv"),
        (
            "a bad token",
            format!("rtmp://{rtmp}/live/nope?token={expired}"),
            "flv",
        ),
        (
            "a view token",
            format!("rtmp://{rtmp}/live/nope?token={viewer}"),
            "flv",
        ),
        (
            "another session's token",
            format!("rtmp://{rtmp}/live/nope?token={other}"),
            "flv",
        ),
        ("no token", format!("srt://{srt}?streamid=nope"), "mpegts"),
        (
            "a view token",
            format!("srt://{srt}?streamid=publish:nope:{viewer}"),
            "mpegts",
        ),
        (
            "another session's token",
            format!("srt://{srt}?streamid=publish:nope:{other}"),
            "mpegts",
        ),
    ] {
        let started = Instant::now();
        let (ok, said) = publish_and_wait(&url, format);
        assert!(!ok, "{what} ({url}) was taken: {said}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: refused at connect, not after {:?}",
            started.elapsed()
        );
    }
    assert!(
        wisp.log().contains("RTMP publish refused"),
        "{}",
        wisp.log()
    );
    assert!(wisp.log().contains("SRT publish refused"), "{}", wisp.log());
    let list = wisp.api("/api/sessions").await;
    assert!(
        list.as_array().unwrap().iter().all(|s| s["name"] == "demo"),
        "no session appeared: {list}"
    );

    // One publisher per session, whatever the protocol.
    let t = wisp.token("busy", "publish");
    let mut first = publish(&format!("rtmp://{rtmp}/live/busy?token={t}"), "flv", 30);
    until(&wisp, "busy", |s| s["state"] == "live").await;
    let (ok, _) = publish_and_wait(&format!("srt://{srt}?streamid=publish:busy:{t}"), "mpegts");
    assert!(!ok, "a second publisher (SRT) was taken");
    let (ok, _) = publish_and_wait(&format!("rtmp://{rtmp}/live/busy?token={t}"), "flv");
    assert!(!ok, "a second publisher (RTMP) was taken");
    // The demo plays on.
    let v = wisp.token("demo", "view");
    let s = watch(
        &reqwest::Client::new(),
        wisp.viewer("demo", &v, 30, 20),
        |_| {},
    )
    .await
    .expect("the demo plays");
    assert!(s.video_frames >= 30);
    let _ = first.kill();
    let _ = first.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_comes_back_resumes_its_viewers_without_a_reconnect() {
    let wisp = Wisp::start("ingest-back", "");
    let t = wisp.token("back", "publish");
    let v = wisp.token("back", "view");
    let url = format!("rtmp://{}/live/back?token={t}", rtmp_addr(&wisp));
    let mut first = publish(&url, "flv", 60);
    until(&wisp, "back", |s| s["state"] == "live").await;
    let (opts, mut events, mut frames) = listening_viewer(&wisp, "back", &v, 60);
    let http = reqwest::Client::new();
    let viewer = tokio::spawn(async move { watch(&http, opts, |_| {}).await });
    // Frames flow; then the encoder dies without a word.
    let frame = |frames: &mut tokio::sync::mpsc::UnboundedReceiver<whep_client::VideoFrame>| {
        frames.try_recv().is_ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !frame(&mut frames) {
        assert!(Instant::now() < deadline, "no frame\n{}", wisp.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = first.kill();
    let _ = first.wait();
    next_event(&mut events, r#""state":"inactive""#, 30).await;
    while frames.try_recv().is_ok() {}
    // It comes back: the same viewer, on the same connection, plays again.
    let mut second = publish(&url, "flv", 60);
    next_event(&mut events, r#""state":"active""#, 30).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 30 {
        assert!(Instant::now() < deadline, "{after} frames after the return");
        match tokio::time::timeout(Duration::from_secs(5), frames.recv()).await {
            Ok(Some(_)) => after += 1,
            other => panic!("frames stopped: {other:?}\n{}", wisp.log()),
        }
    }
    assert!(!viewer.is_finished(), "the viewer kept its connection");
    viewer.abort();
    let _ = second.kill();
    let _ = second.wait();
}

/// An encoder that publishes again the moment its last publish ended (OBS reconnecting, a
/// script's next run) is taken: the old publish's transcoder still holds the session while it
/// finishes the last bytes, and the new one waits for it instead of being refused as a second
/// publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_the_last_one_ended_is_taken_not_refused() {
    let wisp = Wisp::start("ingest-again", "");
    let t = wisp.token("again", "publish");
    let srt = format!("srt://{}?streamid=publish:again:{t}", srt_addr(&wisp));
    let rtmp = format!("rtmp://{}/live/again?token={t}", rtmp_addr(&wisp));
    // An encoder's 720p High with B-frames, whose transcoder has the most left to do when
    // the connection closes.
    let first = publish(&srt, "mpegts", 4);
    let out = first.wait_with_output().expect("ffmpeg ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x264 = ["-profile:v", "baseline", "-g", "30"];
    let second = publish_as(&rtmp, "flv", 3, "640x360", &x264);
    let out = second.wait_with_output().expect("ffmpeg ran");
    assert!(
        out.status.success(),
        "the second publish was refused: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        wisp.log()
    );
    assert!(!wisp.log().contains("publish refused"), "{}", wisp.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_ingest_ports_ends_only_that_connection() {
    let wisp = Wisp::start("ingest-garbage", "");
    let (rtmp, srt) = (rtmp_addr(&wisp), srt_addr(&wisp));
    let mut junk = vec![0u8; 64 * 1024];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    // Random bytes instead of a handshake.
    let mut s = tokio::net::TcpStream::connect(&rtmp).await.unwrap();
    let _ = s.write_all(&junk).await;
    // A valid simple handshake, then random bytes as chunks.
    let mut s2 = tokio::net::TcpStream::connect(&rtmp).await.unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 8));
    c0c1.extend(junk[..1528].iter());
    s2.write_all(&c0c1).await.unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 1536 * 2];
    s2.read_exact(&mut s0s1s2)
        .await
        .expect("the server answers the handshake");
    s2.write_all(&s0s1s2[1..1537]).await.unwrap();
    let _ = s2.write_all(&junk).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s2.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the gateway closes a connection that sends garbage"
    );
    // A publisher whose FLV stops in the middle of a tag.
    let dir = std::env::temp_dir().join(format!("wisp-ingest-garbage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flv = dir.join("whole.flv");
    let made = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x180:rate=30")
        .args([
            "-t", "4", "-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p",
        ])
        .arg(&flv)
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(&flv).unwrap();
    let cut = dir.join("cut.flv");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 7]).unwrap();
    let t = wisp.token("cut", "publish");
    let _ = Command::new("ffmpeg")
        .args(["-loglevel", "quiet", "-re", "-i"])
        .arg(&cut)
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!("rtmp://{rtmp}/live/cut?token={t}"))
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    // Random datagrams on the SRT port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..2000 {
        let _ = udp.send_to(&junk[i % 1000..i % 1000 + 200], &srt);
    }
    // None of it hurt the gateway: a real publisher goes live and is watched.
    let t = wisp.token("after", "publish");
    let v = wisp.token("after", "view");
    let mut p = publish(&format!("rtmp://{rtmp}/live/after?token={t}"), "flv", 30);
    until(&wisp, "after", |s| s["state"] == "live").await;
    let s = watch(
        &reqwest::Client::new(),
        wisp.viewer("after", &v, 30, 30),
        |_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", wisp.log()));
    assert!(s.video_frames >= 30);
    let _ = p.kill();
    let _ = p.wait();
    assert!(!wisp.log().contains("panicked"), "{}", wisp.log());
}

/// A port nobody listens on now (UDP or TCP, as asked), for a source started later.
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// An SRT source as encoders serve one: ffmpeg in listener mode, 640x360 H.264 and AAC in
/// MPEG-TS, waiting for the gateway to call.
fn srt_source(port: u16) -> Child {
    Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t", "120"])
        .args([
            "-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac",
        ])
        .args(["-f", "mpegts"])
        .arg(format!("srt://127.0.0.1:{port}?mode=listener"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg runs")
}

/// An RTSP source: GStreamer's RTSP server (interop/rtsp_server.py; FFmpeg cannot serve RTSP).
fn rtsp_source(port: u16) -> Child {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/rtsp_server.py");
    let mut p = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the RTSP server runs (python3-gi, gir1.2-gst-rtsp-server-1.0)");
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(p.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("serving"),
        "the RTSP server started: {line:?}"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_sessions_play_their_source_and_pick_up_again_after_it_restarts() {
    let (srt_port, rtsp_port) = (free_port(true), free_port(false));
    let mut srt = srt_source(srt_port);
    let mut rtsp = rtsp_source(rtsp_port);
    let wisp = Wisp::start(
        "ingest-pull",
        &format!(
            "idle_timeout = 5\n\
             [[sessions]]\nname = \"fromsrt\"\nlive = {{ url = \"srt://127.0.0.1:{srt_port}\" }}\n\
             [[sessions]]\nname = \"fromrtsp\"\nlive = {{ url = \"rtsp://127.0.0.1:{rtsp_port}/cam\" }}\n"
        ),
    );
    let v = wisp.token("fromsrt,fromrtsp", "view admin");
    let http = reqwest::Client::new();
    // Nothing is pulled before a viewer comes.
    let s = wisp.api("/api/sessions/fromsrt").await;
    assert_eq!(s["state"], "waiting", "{s}");
    for name in ["fromrtsp", "fromsrt"] {
        let s = watch(&http, wisp.viewer(name, &v, 60, 30), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", wisp.log()));
        assert_eq!((s.width, s.height), (Some(640), Some(360)), "{name}");
        assert!(s.audio_packets > 0, "{name}: {s:?}");
        let info = wisp.api(&format!("/api/sessions/{name}")).await;
        assert_eq!(info["ingest"], "pull", "{info}");
    }
    // A viewer stays while the SRT source goes away and comes back.
    let (opts, mut events, mut frames) = listening_viewer(&wisp, "fromsrt", &v, 120);
    let h = http.clone();
    let viewer = tokio::spawn(async move { watch(&h, opts, |_| {}).await });
    let first = tokio::time::timeout(Duration::from_secs(30), frames.recv()).await;
    assert!(matches!(first, Ok(Some(_))), "no frames\n{}", wisp.log());
    let _ = srt.kill();
    let _ = srt.wait();
    next_event(&mut events, r#""state":"inactive""#, 40).await;
    let s = wisp.api("/api/sessions/fromsrt").await;
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("retrying in")),
        "the session says it retries: {s}"
    );
    srt = srt_source(srt_port);
    next_event(&mut events, r#""state":"active""#, 40).await;
    while frames.try_recv().is_ok() {}
    let mut after = 0;
    while after < 30 {
        match tokio::time::timeout(Duration::from_secs(10), frames.recv()).await {
            Ok(Some(_)) => after += 1,
            other => panic!(
                "frames after the source came back: {after} ({other:?})\n{}",
                wisp.log()
            ),
        }
    }
    assert!(!viewer.is_finished(), "the viewer kept its connection");
    viewer.abort();
    for p in [&mut srt, &mut rtsp] {
        let _ = p.kill();
        let _ = p.wait();
    }
}
