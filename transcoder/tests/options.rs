//! Encode options and input kinds beyond the basics: frame rate, aspect, lowres decoding, looping,
//! HDR tone mapping, and HLS over HTTP.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use common::*;
use rtp_ring::RtpHeaderView;

fn decoded_frames(t: &Transcoder) -> Vec<DecodedFrame> {
    let mut rx = VideoReceiver::default();
    read_all(&t.ring())
        .iter()
        .filter_map(|r| rx.push(r))
        .collect()
}

#[test]
fn fps_converts_on_the_output_grid() {
    let src = numbered_1080p(5);
    let mut t = Transcoder::start(
        "fps",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--fps",
            "15",
            "--width",
            "320",
            "--height",
            "180",
        ],
    );
    t.send(r#"{"op":"pause"}"#);
    t.send(r#"{"op":"seek","to":2.0}"#);
    t.wait_state("paused");
    t.send(r#"{"op":"play"}"#);
    let ready = t
        .seen
        .iter()
        .find(|e| e["event"] == "ready")
        .expect("ready")
        .clone();
    assert_eq!(ready["fps"].as_f64(), Some(15.0));
    assert_eq!(t.wait_exit(), Some(0));
    let frames = decoded_frames(&t);
    // 2 s..5 s at 15 fps: source frames 60, 62, ... 148 (every other 30 fps frame).
    let numbers: Vec<u32> = frames
        .iter()
        .map(|f| f.number)
        .skip_while(|n| *n < 60)
        .collect();
    assert_eq!(numbers, (60..150).step_by(2).collect::<Vec<_>>());
    let ts: Vec<u32> = frames
        .iter()
        .skip(frames.len() - 10)
        .map(|f| f.rtp_ts)
        .collect();
    assert!(
        ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 6000),
        "90 kHz / 15 fps"
    );
}

#[test]
fn a_ladder_has_each_rendition_on_its_track_with_the_same_frames_and_keyframes() {
    let src = numbered_1080p(5);
    let mut t = Transcoder::start(
        "ladder",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--height",
            "720",
            "--layer",
            "360",
            "--layer",
            "180:150000",
            "--layer",
            "1080",
        ],
    );
    let ready = t.wait_named("ready");
    let layers: Vec<(u64, String, u64, u64)> = ready["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "video")
        .map(|t| {
            let l = &t["layer"];
            (
                t["index"].as_u64().unwrap(),
                l["rid"].as_str().unwrap().to_string(),
                l["height"].as_u64().unwrap(),
                l["bitrate"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        layers,
        vec![
            (0, "720p".into(), 720, 2_000_000),
            (2, "360p".into(), 360, 707_106),
            (3, "180p".into(), 180, 150_000),
        ],
        "a layer not below the main picture is the main one"
    );
    // A seek lands on the same frame, as a keyframe, in every rendition.
    t.send(r#"{"op":"pause"}"#);
    t.send(r#"{"op":"seek","to":2.0}"#);
    t.wait_state("paused");
    t.send(r#"{"op":"play"}"#);
    assert_eq!(t.wait_exit(), Some(0));
    let records = read_all(&t.ring());
    let mut per_track = Vec::new();
    for (track, w, h) in [(0u8, 1280, 720), (2, 640, 360), (3, 320, 180)] {
        let mut rx = VideoReceiver::default();
        rx.track = track;
        let frames: Vec<DecodedFrame> = records.iter().filter_map(|r| rx.push(r)).collect();
        assert!(
            frames.iter().all(|f| (f.width, f.height) == (w, h)),
            "track {track}: {:?}",
            frames
                .iter()
                .map(|f| (f.width, f.height))
                .collect::<Vec<_>>()
        );
        per_track.push(frames);
    }
    let after_seek = |frames: &[DecodedFrame]| -> Vec<(u32, u32, bool)> {
        frames
            .iter()
            .skip_while(|f| f.number < 60)
            .map(|f| (f.number, f.rtp_ts, f.keyframe))
            .collect()
    };
    let main = after_seek(&per_track[0]);
    assert_eq!(
        main.first().map(|f| (f.0, f.2)),
        Some((60, true)),
        "{main:?}"
    );
    assert!(main.len() > 60, "{}", main.len());
    for (i, frames) in per_track.iter().enumerate().skip(1) {
        assert_eq!(
            after_seek(frames),
            main,
            "rendition {i}: the same frames, timestamps and keyframes as the main one"
        );
    }
}

#[test]
fn another_codec_carries_the_main_picture_with_the_same_frames_and_keyframes() {
    let src = numbered_1080p(4);
    let mut t = Transcoder::start(
        "alt-codec",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--height",
            "360",
            "--layer",
            "180",
            "--alt-codec",
            "vp8",
            "--alt-codec",
            "h264",
        ],
    );
    let ready = t.wait_named("ready");
    let video: Vec<(u64, String, bool)> = ready["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "video")
        .map(|t| {
            (
                t["index"].as_u64().unwrap(),
                t["codec"].as_str().unwrap().to_string(),
                t.get("layer").is_some(),
            )
        })
        .collect();
    assert_eq!(
        video,
        vec![
            (0, "H264".into(), true),
            (2, "H264".into(), true),
            (3, "VP8".into(), false),
        ],
        "the main codec named again is ignored; the other one is no layer"
    );
    t.send(r#"{"op":"pause"}"#);
    t.send(r#"{"op":"seek","to":1.5}"#);
    t.wait_state("paused");
    t.send(r#"{"op":"play"}"#);
    assert_eq!(t.wait_exit(), Some(0));
    let records = read_all(&t.ring());
    let decode = |mut rx: VideoReceiver| -> Vec<DecodedFrame> {
        records.iter().filter_map(|r| rx.push(r)).collect()
    };
    let main = decode(VideoReceiver::default());
    let vp8 = decode(VideoReceiver::vp8(3));
    assert!(
        vp8.iter().all(|f| (f.width, f.height) == (640, 360)),
        "{:?}",
        vp8.iter().map(|f| (f.width, f.height)).collect::<Vec<_>>()
    );
    let after_seek = |frames: &[DecodedFrame]| -> Vec<(u32, u32, bool)> {
        frames
            .iter()
            .skip_while(|f| f.number < 45)
            .map(|f| (f.number, f.rtp_ts, f.keyframe))
            .collect()
    };
    let m = after_seek(&main);
    assert_eq!(m.first().map(|f| (f.0, f.2)), Some((45, true)), "{m:?}");
    assert!(m.len() > 45, "{}", m.len());
    assert_eq!(
        after_seek(&vp8),
        m,
        "VP8: the same frames, timestamps and keyframes as H.264"
    );
}

#[test]
fn sar_override_keeps_the_display_aspect() {
    // 640x480 stored pixels shown 4:3 wider: 853x480 on screen, so 854x480 (even) out.
    let src = generated(
        "sar-640x480.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=30",
            "-t",
            "1",
            "-c:v",
            "libx264",
        ],
    );
    let mut t = Transcoder::start(
        "sar",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--sar",
            "4:3",
            "--pace",
            "max",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(
        (ready["width"].as_u64(), ready["height"].as_u64()),
        (Some(854), Some(480))
    );
    assert_eq!(t.wait_exit(), Some(0));
    let f = decoded_frames(&t);
    assert_eq!((f[0].width, f[0].height), (854, 480));
    // Fitting it into a 16:9 box pads it left and right instead of stretching.
    let mut t = Transcoder::start(
        "sar-box",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--width",
            "1280",
            "--height",
            "720",
            "--pace",
            "max",
        ],
    );
    assert_eq!(t.wait_exit(), Some(0));
    let f = decoded_frames(&t);
    assert_eq!((f[0].width, f[0].height), (1280, 720));
}

#[test]
fn lowres_decodes_mjpeg_at_a_fraction_of_its_size() {
    let src = generated(
        "mjpeg-640x480.avi",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=30",
            "-t",
            "1",
            "-c:v",
            "mjpeg",
        ],
    );
    let mut t = Transcoder::start(
        "lowres",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--lowres",
            "1",
            "--pace",
            "max",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(
        (ready["width"].as_u64(), ready["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(t.wait_exit(), Some(0));
    assert_eq!(decoded_frames(&t).len(), 30);
}

#[test]
fn loop_starts_again_with_timestamps_still_rising() {
    let src = numbered_1080p(4);
    let mut t = Transcoder::start(
        "loop",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--loop",
            "--start",
            "1",
            "--duration-frames",
            "20",
            "--width",
            "320",
            "--height",
            "180",
            "--pace",
            "max",
        ],
    );
    t.wait_named("ready");
    let ring = t.ring();
    let mut reader = ring.reader_from_oldest();
    let mut recs = Vec::new();
    let mut rx = VideoReceiver::default();
    let mut frames = Vec::new();
    while frames.len() < 50 {
        let want = recs.len() + 1;
        wait_records(&mut reader, &mut recs, want);
        if let Some(f) = rx.push(recs.last().expect("one")) {
            frames.push(f);
        }
    }
    t.send(r#"{"op":"stop"}"#);
    let numbers: Vec<u32> = frames.iter().map(|f| f.number).collect();
    let want: Vec<u32> = (30..50).chain(30..50).chain(30..40).collect();
    assert_eq!(numbers, want, "frames 30..49 (1 s + 20 frames), then again");
    assert!(frames[20].keyframe, "each loop starts on a keyframe");
    let steps: Vec<u32> = frames
        .windows(2)
        .map(|w| w[1].rtp_ts.wrapping_sub(w[0].rtp_ts))
        .collect();
    assert!(steps.iter().all(|s| *s == 3000), "RTP steps {steps:?}");
    assert!(
        frames
            .windows(2)
            .all(|w| w[1].rtp_ts.wrapping_sub(w[0].rtp_ts) == 3000)
    );
    let seqs: Vec<u16> = recs
        .iter()
        .filter(|r| r.meta.track == 0)
        .map(|r| RtpHeaderView::parse(&r.packet).expect("rtp").seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}

#[test]
fn hdr_pq_input_is_tone_mapped_to_sdr() {
    let src = generated(
        "pq-10bit.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-t",
            "1",
            "-vf",
            "format=yuv420p10le",
            "-c:v",
            "libx264",
            "-color_primaries",
            "bt2020",
            "-color_trc",
            "smpte2084",
            "-colorspace",
            "bt2020nc",
        ],
    );
    for args in [
        vec!["--bt2100-tone-mapping"],
        vec!["--bt2100-tone-mapping", "reinhard"],
        vec![],
    ] {
        let mut all = vec!["-i", src.to_str().expect("utf8"), "--pace", "max"];
        all.extend(args.iter().copied());
        let mut t = Transcoder::start("hdr", &all);
        assert_eq!(t.wait_exit(), Some(0), "args {args:?}");
        let f = decoded_frames(&t);
        assert_eq!(f.len(), 30, "args {args:?}");
        assert_eq!((f[0].width, f[0].height), (640, 360));
    }
}

/// Serves the files of `dir` over HTTP/1.0 on 127.0.0.1 (GET only), for as long as the test runs.
fn serve(dir: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                reader.read_line(&mut line).ok();
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_string();
                let mut stream = stream;
                match std::fs::read(dir.join(&path)) {
                    Ok(body) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(&body);
                    }
                    Err(_) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn hls_over_http_plays() {
    let dir = media_dir().join("hls");
    if !dir.join("index.m3u8").exists() {
        std::fs::create_dir_all(&dir).expect("dir");
        let src = numbered_1080p(4);
        let ok = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-nostdin", "-i"])
            .arg(&src)
            .args([
                "-c",
                "copy",
                "-f",
                "hls",
                "-hls_time",
                "1",
                "-hls_playlist_type",
                "vod",
            ])
            .arg(dir.join("index.m3u8"))
            .status()
            .expect("ffmpeg")
            .success();
        assert!(ok, "making HLS");
    }
    let url = format!("{}/index.m3u8", serve(&dir));
    let mut t = Transcoder::start(
        "hls",
        &[
            "-i", &url, "--width", "320", "--height", "180", "--pace", "max", "--on-end", "wait",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(
        ready["tracks"].as_array().map(Vec::len),
        Some(2),
        "video and audio from HLS"
    );
    t.wait_state("ended");
    let numbers: Vec<u32> = decoded_frames(&t).iter().map(|f| f.number).collect();
    assert_eq!(numbers, (0..120).collect::<Vec<_>>());
    // Seeking a network input either works or is refused as not_supported; playback survives.
    t.send(r#"{"op":"seek","frame":30}"#);
    let answer = t.wait_event("seek answer", |e| {
        e["event"] == "state" || e["event"] == "error"
    });
    if answer["event"] == "error" {
        assert_eq!(answer["code"], "not_supported", "{answer}");
    } else {
        assert_eq!(answer["frame"], 30, "{answer}");
    }
    t.send(r#"{"op":"stop"}"#);
    assert_eq!(t.wait_exit(), Some(0));
}
