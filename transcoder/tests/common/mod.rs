//! Test media made with Debian's `ffmpeg` CLI, a handle on a running `wisp-transcoder`, and a
//! receiver that turns ring records back into decoded frames and samples.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;
use rtp_ring::{Flags, Record, Ring, RtpHeaderView};
use serde_json::Value;
use str0m::format::CodecExtra;
use str0m::unversioned::{Depacketizer, H264Depacketizer, Vp8Depacketizer};

/// Where generated media lives (shared by the tests of one run).
pub fn media_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("media");
        std::fs::create_dir_all(&dir).expect("media dir");
        dir
    })
}

fn ffmpeg(args: &[&str], out: &Path) {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("bin");
    let tmp = out.with_extension(format!("{}.tmp.{ext}", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-nostdin"])
        .args(args)
        .arg(&tmp)
        .status()
        .expect("the ffmpeg CLI is installed (the README's test command installs it)");
    assert!(status.success(), "ffmpeg failed making {}", out.display());
    std::fs::rename(&tmp, out).expect("rename");
}

/// Makes `name` once with `make` (tests run in parallel: write to a temp name, then rename).
fn cached(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let path = media_dir().join(name);
    if !path.exists() {
        make(&path);
    }
    path
}

/// A media file made once by the `ffmpeg` CLI with `args` (inputs and codec options; the
/// output path is appended), shared by the tests of a run.
pub fn generated(name: &str, args: &[&str]) -> PathBuf {
    cached(name, |p| ffmpeg(args, p))
}

/// The number drawn on frame N: 16 blocks of 40×40 px across the top, white for a set bit.
const FRAME_CODE: &str =
    "geq=lum='if(lt(Y,40),if(bitand(N,pow(2,floor(X/40))),235,16),128)':cb=128:cr=128";

/// 1920×1080@30 H.264 (2 s GOP, B-frames as most encoders make them: three between P-frames,
/// the middle one a reference) + AAC 1 kHz, `secs` long; every frame carries its number.
pub fn numbered_1080p(secs: u32) -> PathBuf {
    cached(&format!("numbered-1080p-bframes-{secs}s.mp4"), |p| {
        let t = secs.to_string();
        ffmpeg(
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("color=c=gray:s=1920x1080:r=30,{FRAME_CODE}"),
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=1000:sample_rate=48000",
                "-t",
                &t,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "60",
                "-bf",
                "3",
                "-x264-params",
                "b-pyramid=normal",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-movflags",
                "+faststart",
                "-shortest",
            ],
            p,
        )
    })
}

/// Tones of each channel of the 5.1 file, in channel order (FL FR FC LFE BL BR).
pub const TONES_51: [f64; 6] = [300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0];

/// A 5.1 WAV, `secs` long, with a different tone on each channel.
pub fn tones_51(secs: u32) -> PathBuf {
    cached(&format!("tones51-{secs}s.wav"), |p| {
        let mut args: Vec<String> = Vec::new();
        for f in TONES_51 {
            args.extend(["-f", "lavfi", "-i"].map(String::from));
            args.push(format!(
                "sine=frequency={f}:sample_rate=48000:duration={secs}"
            ));
        }
        args.extend(["-filter_complex", "[0][1][2][3][4][5]join=inputs=6:channel_layout=5.1:map=0.0-FL|1.0-FR|2.0-FC|3.0-LFE|4.0-BL|5.0-BR[a]", "-map", "[a]"].map(String::from));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ffmpeg(&refs, p)
    })
}

/// An MPEG-TS file with garbage written over a stretch in its middle.
pub fn corrupt_ts() -> PathBuf {
    cached("corrupt.ts", |p| {
        let clean = media_dir().join("clean-for-corrupt.ts");
        ffmpeg(
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x360:rate=30",
                "-t",
                "4",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "30",
            ],
            &clean,
        );
        let mut bytes = std::fs::read(&clean).expect("read");
        let mid = bytes.len() / 2;
        let mut x: u32 = 12345;
        for b in &mut bytes[mid..mid + 40_000] {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            *b = (x >> 16) as u8;
        }
        let tmp = p.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, p).expect("rename");
    })
}

/// The first 60% of an MP4 whose index is at the front: playable, then cut off.
pub fn truncated_mp4() -> PathBuf {
    let full = numbered_1080p(4);
    cached("truncated.mp4", |p| {
        let bytes = std::fs::read(full).expect("read");
        let tmp = p.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes[..bytes.len() * 6 / 10]).expect("write");
        std::fs::rename(&tmp, p).expect("rename");
    })
}

/// A running transcoder with its events read on a thread.
pub struct Transcoder {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    pub ring_path: PathBuf,
    /// Reads its log (stderr) to the end, when started by [`Transcoder::start_logged`].
    log: Option<std::thread::JoinHandle<String>>,
}

/// A ring path no other test of this run uses.
pub fn ring_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    media_dir().join(format!("{name}-{}-{n}.ring", std::process::id()))
}

impl Transcoder {
    /// Starts `wisp-transcoder ARGS --ring <tmp> --ring-size 64 MiB` with stdin piped.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, args, false)
    }

    /// As [`Self::start`], with its log (stderr, at `info`) kept for [`Self::log`].
    pub fn start_logged(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, args, true)
    }

    fn spawn(name: &str, args: &[&str], logged: bool) -> Self {
        let ring_path = ring_path(name);
        let _ = std::fs::remove_file(&ring_path);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wisp-transcoder"));
        cmd.args(args)
            .arg("--ring")
            .arg(&ring_path)
            .args(["--ring-size", "67108864"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if logged {
            cmd.stderr(Stdio::piped())
                .env("WISP_LOG", "info")
                .env_remove("RUST_LOG");
        }
        let mut child = cmd.spawn().expect("spawn wisp-transcoder");
        let log = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                text
            })
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            events,
            seen: Vec::new(),
            ring_path,
            log,
        }
    }

    /// Its whole log, once it has exited (see [`Self::wait_exit`]).
    pub fn log(&mut self) -> String {
        let reader = self.log.take().expect("started by start_logged");
        reader.join().expect("the log reader")
    }

    /// Sends one JSON command line.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write command");
        stdin.flush().expect("flush");
    }

    /// Waits for an event matching `pred` (events before it are kept in `seen`).
    pub fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Err(_) => panic!("no {what} event within 30 s; saw {:?}", self.seen),
            }
        }
    }

    pub fn wait_named(&mut self, name: &str) -> Value {
        self.wait_event(name, |e| e["event"] == name)
    }

    pub fn wait_state(&mut self, state: &str) -> Value {
        self.wait_event(state, |e| e["event"] == "state" && e["state"] == state)
    }

    /// Waits for the process to exit (deadline 30 s) and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect the events it printed before exiting.
                while let Ok(ev) = self.events.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(ev);
                }
                return status.code();
            }
            assert!(Instant::now() < deadline, "transcoder did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ring(&self) -> Ring {
        Ring::open(&self.ring_path).expect("open the transcoder's ring")
    }
}

impl Drop for Transcoder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ring_path);
    }
}

/// Every record still in a ring file.
pub fn read_all(ring: &Ring) -> Vec<Record> {
    let mut reader = ring.reader_from_oldest();
    std::iter::from_fn(|| reader.try_next().expect("no overrun in a 64 MiB ring")).collect()
}

/// Waits until the ring holds at least `n` records, returning them all.
pub fn wait_records(reader: &mut rtp_ring::Reader, out: &mut Vec<Record>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records within 30 s",
            out.len()
        );
        match reader.try_next().expect("no overrun") {
            Some(r) => out.push(r),
            None => reader.wait(Duration::from_millis(100)).expect("wait"),
        }
    }
}

/// A decoded video frame with what the RTP said about it.
#[derive(Debug)]
pub struct DecodedFrame {
    pub width: u32,
    pub height: u32,
    /// The number drawn by `FRAME_CODE`, read back from the pixels.
    pub number: u32,
    pub rtp_ts: u32,
    pub keyframe: bool,
    /// NAL unit types of the access unit.
    pub nal_types: Vec<u8>,
}

/// Depacketizes and decodes H.264 (by default) or VP8 ([`VideoReceiver::vp8`]) video
/// records (of `track`, 0 by default), one frame per marker bit.
pub struct VideoReceiver {
    pub track: u8,
    depack: Box<dyn Depacketizer>,
    decoder: ff::decoder::Video,
    au: Vec<u8>,
    key: bool,
}

impl Default for VideoReceiver {
    fn default() -> Self {
        Self::with(ff::codec::Id::H264, Box::new(H264Depacketizer::default()))
    }
}

impl VideoReceiver {
    /// A VP8 receiver of `track`.
    pub fn vp8(track: u8) -> Self {
        let mut rx = Self::with(ff::codec::Id::VP8, Box::new(Vp8Depacketizer::default()));
        rx.track = track;
        rx
    }

    fn with(id: ff::codec::Id, depack: Box<dyn Depacketizer>) -> Self {
        ff::init().expect("ffmpeg init");
        let codec = ff::decoder::find(id).expect("decoder");
        let decoder = ff::codec::Context::new_with_codec(codec)
            .decoder()
            .video()
            .expect("open decoder");
        Self {
            track: 0,
            depack,
            decoder,
            au: Vec::new(),
            key: false,
        }
    }
}

impl VideoReceiver {
    /// Feeds one record; returns the decoded frame when the record ends one.
    pub fn push(&mut self, rec: &Record) -> Option<DecodedFrame> {
        if rec.meta.track != self.track {
            return None;
        }
        let h = RtpHeaderView::parse(&rec.packet).expect("RTP");
        self.key |= rec.meta.flags.contains(Flags::KEYFRAME);
        let mut extra = CodecExtra::None;
        self.depack
            .depacketize(&rec.packet[12..], &mut self.au, &mut extra)
            .expect("depacketizes");
        if !h.marker {
            return None;
        }
        let au = std::mem::take(&mut self.au);
        let keyframe = std::mem::take(&mut self.key);
        let nal_types = nal_types(&au);
        let packet = ff::Packet::copy(&au);
        self.decoder
            .send_packet(&packet)
            .expect("decoder accepts the access unit");
        let mut frame = ff::frame::Video::empty();
        self.decoder.receive_frame(&mut frame).ok()?;
        Some(DecodedFrame {
            width: frame.width(),
            height: frame.height(),
            number: read_frame_code(&frame),
            rtp_ts: h.timestamp,
            keyframe,
            nal_types,
        })
    }
}

fn nal_types(annexb: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < annexb.len() {
        if annexb[i] == 0 && annexb[i + 1] == 0 && annexb[i + 2] == 1 {
            types.push(annexb[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// Reads the 16-bit number `FRAME_CODE` drew, scaled to the decoded frame's width.
fn read_frame_code(frame: &ff::frame::Video) -> u32 {
    // The source was 1920 wide; blocks are 40 px there.
    let scale = frame.width() as f64 / 1920.0;
    let stride = frame.stride(0);
    let y = (20.0 * scale) as usize;
    let data = frame.data(0);
    (0..16).fold(0, |acc, bit| {
        let x = ((bit as f64 * 40.0 + 20.0) * scale) as usize;
        if data[y * stride + x] > 128 {
            acc | (1 << bit)
        } else {
            acc
        }
    })
}

/// Decodes Opus records (track 1) to interleaved stereo f32 at 48 kHz.
pub fn decode_opus(records: &[Record]) -> Vec<[f32; 2]> {
    ff::init().expect("ffmpeg init");
    let codec = ff::decoder::find(ff::codec::Id::OPUS).expect("opus decoder");
    // Without extradata FFmpeg's Opus decoder assumes stereo, which is what we send.
    let mut decoder = ff::codec::Context::new_with_codec(codec)
        .decoder()
        .audio()
        .expect("opus decoder");
    let mut out = Vec::new();
    let mut frame = ff::frame::Audio::empty();
    for rec in records.iter().filter(|r| r.meta.track == 1) {
        let packet = ff::Packet::copy(&rec.packet[12..]);
        decoder.send_packet(&packet).expect("opus packet");
        while decoder.receive_frame(&mut frame).is_ok() {
            let n = frame.samples();
            match frame.format() {
                ff::format::Sample::F32(ff::format::sample::Type::Planar) => {
                    let l = frame.plane::<f32>(0);
                    let r = frame.plane::<f32>(1);
                    out.extend((0..n).map(|i| [l[i], r[i]]));
                }
                ff::format::Sample::F32(ff::format::sample::Type::Packed) => {
                    let d = frame.plane::<f32>(0);
                    out.extend((0..n).map(|i| [d[2 * i], d[2 * i + 1]]));
                }
                other => panic!("unexpected opus output format {other:?}"),
            }
        }
    }
    out
}

/// Power of `freq` in `samples` (Goertzel), for telling tones apart.
pub fn tone_power(samples: &[f32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Which of `candidates` is loudest in `samples`.
pub fn dominant_tone(samples: &[f32], candidates: &[f64]) -> f64 {
    candidates
        .iter()
        .copied()
        .max_by(|a, b| tone_power(samples, *a).total_cmp(&tone_power(samples, *b)))
        .expect("candidates")
}
