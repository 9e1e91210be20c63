//! `cargo bench -p wisp-transcoder`: 1080p30 H.264 + AAC → 720p H.264 + Opus, as fast as it goes.
//!
//! A load run that prints figures (not criterion: each sample is a whole process run of
//! seconds). It makes a 20 s 1080p30 source with the `ffmpeg` CLI, then alternates, five times
//! each, `wisp-transcoder --pace max` and the `ffmpeg` CLI with equivalent settings (same filter
//! chain, x264 preset/tune/profile/GOP/bitrate, libopus), and reports per tool the median wall
//! time, the realtime factor (media seconds per wall second), peak RSS, and our speed as a ratio
//! of ffmpeg's. ffmpeg writes to the null muxer; we also packetize to RTP and fill the ring.
//! CPU time (user + system, from this process's reaped-children totals in /proc/self/stat) is
//! reported too: on a shared host, wall time also carries other tenants' load, CPU time less so.
//! Both encode 720p30 with one x264 thread, so one slice per frame (the transcoder's default up
//! to 720p30: every slice ends in a short RTP packet, which costs the gateway a system call per
//! viewer); `zerolatency` keeps x264 from buffering frames.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECONDS: u32 = 20;
const RUNS: usize = 5;

fn source(dir: &Path) -> PathBuf {
    let path = dir.join(format!("bench-1080p30-{SECONDS}s.mp4"));
    if !path.exists() {
        let status = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-nostdin",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1920x1080:rate=30",
            ])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-t",
                &SECONDS.to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "fast",
                "-g",
                "60",
                "-pix_fmt",
                "yuv420p",
            ])
            .args(["-c:a", "aac", "-shortest"])
            .arg(&path)
            .status()
            .expect("the ffmpeg CLI is installed");
        assert!(status.success(), "making the source failed");
    }
    path
}

/// CPU time (user + system) of all children this process has reaped so far.
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at field 3; cutime and cstime
    // are fields 16 and 17, in USER_HZ (100 per second on Linux).
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[13].parse::<u64>().expect("cutime") + fields[14].parse::<u64>().expect("cstime");
    Duration::from_millis(ticks * 10)
}

/// Wall time and peak RSS (kB) of one run of ours.
fn run_wisp(src: &Path, ring: &Path) -> (Duration, u64) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"))
        .arg("-i")
        .arg(src)
        .args([
            "--width",
            "1280",
            "--height",
            "720",
            "--pace",
            "max",
            "--control",
            "none",
        ])
        .arg("--ring")
        .arg(ring)
        .args(["--ring-size", "67108864"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("wisp-transcoder runs");
    let took = start.elapsed();
    assert!(out.status.success(), "wisp-transcoder failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stats: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "stats")
        .expect("stats event");
    assert_eq!(
        stats["video_frames"].as_u64(),
        Some(SECONDS as u64 * 30),
        "every frame was encoded"
    );
    (took, stats["peak_rss_kb"].as_u64().unwrap_or(0))
}

/// Wall time and peak RSS (kB, from `-benchmark`) of the equivalent ffmpeg command.
fn run_ffmpeg(src: &Path) -> (Duration, u64) {
    let x264 = "keyint=60:min-keyint=60:scenecut=0:repeat-headers=1:bframes=0:aud=0:vbv-maxrate=2000:vbv-bufsize=2000";
    // The source is untagged 1080p, which the transcoder reads as BT.709 (as players do).
    let vf = "scale=w='trunc(iw*sar/2)*2':h=ih,setsar=1,\
              scale=w=1280:h=720:force_original_aspect_ratio=decrease:force_divisible_by=2:in_color_matrix=bt709:out_color_matrix=bt709:out_range=tv,\
              pad=w=1280:h=720:x=(ow-iw)/2:y=(oh-ih)/2:color=black,setsar=1,fps=fps=30/1:round=near,format=yuv420p";
    let start = Instant::now();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-benchmark", "-y", "-i"])
        .arg(src)
        .args([
            "-vf",
            vf,
            "-c:v",
            "libx264",
            "-threads:v",
            "1",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
        ])
        .args([
            "-level",
            "3.1",
            "-forced-idr",
            "1",
            "-b:v",
            "2000000",
            "-g",
            "60",
            "-x264-params",
            x264,
        ])
        .args([
            "-af",
            "pan=stereo|c0=c0|c1=c0,aresample=48000",
            "-c:a",
            "libopus",
            "-b:a",
            "96000",
            "-frame_duration",
            "20",
        ])
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let rss = err
        .split("maxrss=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (took, rss)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` would run this as a test: only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let src = source(&dir);
    // In shared memory, as the gateway's memfd is (a ring on disk would pay for writeback).
    let ring = PathBuf::from(format!("/dev/shm/wisp-bench-{}.ring", std::process::id()));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
    let (mut our_rss, mut their_rss) = (0, 0);
    for _ in 0..RUNS {
        let before = children_cpu();
        let (t, r) = run_wisp(&src, &ring);
        our_cpu.push(children_cpu() - before);
        ours.push(t);
        our_rss = our_rss.max(r);
        let before = children_cpu();
        let (t, r) = run_ffmpeg(&src);
        their_cpu.push(children_cpu() - before);
        theirs.push(t);
        their_rss = their_rss.max(r);
    }
    let _ = std::fs::remove_file(&ring);
    let (o, f) = (median(ours.clone()), median(theirs.clone()));
    let (oc, fc) = (median(our_cpu), median(their_cpu));
    let rt = |d: Duration| SECONDS as f64 / d.as_secs_f64();
    let secs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "transcode 1080p30 H.264+AAC -> 720p H.264+Opus, {SECONDS} s of media, {RUNS} runs each, median:"
    );
    println!(
        "  wisp-transcoder --pace max: {:.2} s wall ({}), {:.2}x realtime, {:.2} s CPU, peak RSS {} MB",
        o.as_secs_f64(),
        secs(&ours),
        rt(o),
        oc.as_secs_f64(),
        our_rss / 1024
    );
    println!(
        "  ffmpeg CLI (equivalent):    {:.2} s wall ({}), {:.2}x realtime, {:.2} s CPU, peak RSS {} MB",
        f.as_secs_f64(),
        secs(&theirs),
        rt(f),
        fc.as_secs_f64(),
        their_rss / 1024
    );
    println!(
        "  speed ratio wisp/ffmpeg (wall): {:.3} (target >= 0.95)",
        f.as_secs_f64() / o.as_secs_f64()
    );
    println!(
        "  CPU ratio ffmpeg/wisp:          {:.3} (above 1: we use less CPU)",
        fc.as_secs_f64() / oc.as_secs_f64()
    );
}
