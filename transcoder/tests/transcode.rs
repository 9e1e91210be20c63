//! The real `wisp-transcoder` binary on media made with the `ffmpeg` CLI, checked through its
//! ring the way a viewer would see it: packets depacketize and decode to the right frames.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rtp_ring::{Flags, RtpHeaderView};

#[test]
fn a_1080p_file_becomes_720p_h264_and_opus_with_keyframes_and_clean_timestamps() {
    let src = numbered_1080p(5);
    let mut t = Transcoder::start(
        "basic",
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
    let ready = t.wait_named("ready");
    assert_eq!(
        (ready["width"].as_u64(), ready["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(ready["fps"].as_f64(), Some(30.0));
    assert!((ready["duration"].as_f64().expect("a file has a duration") - 5.0).abs() < 0.1);
    let tracks = ready["tracks"].as_array().expect("tracks");
    assert_eq!(tracks[0]["codec"], "H264");
    assert_eq!(
        tracks[0]["fmtp"],
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    );
    assert_eq!(
        (
            tracks[1]["codec"].as_str(),
            tracks[1]["clock_rate"].as_u64()
        ),
        (Some("opus"), Some(48000))
    );
    assert_eq!(t.wait_exit(), Some(0), "exits 0 at the end by default");

    let records = read_all(&t.ring());
    let video: Vec<_> = records.iter().filter(|r| r.meta.track == 0).collect();
    let audio: Vec<_> = records.iter().filter(|r| r.meta.track == 1).collect();
    assert_eq!(audio.len(), 250, "5 s of 20 ms Opus frames");
    assert!(
        records.iter().all(|r| r.packet.len() <= 12 + 1200),
        "payloads ≤ 1200 bytes"
    );

    // Every video packet decodes; frames come out 1280x720 in order, numbered 0..149.
    let mut rx = VideoReceiver::default();
    let frames: Vec<_> = video.iter().filter_map(|r| rx.push(r)).collect();
    assert_eq!(frames.len(), 150);
    assert!(frames.iter().all(|f| (f.width, f.height) == (1280, 720)));
    assert_eq!(
        frames.iter().map(|f| f.number).collect::<Vec<_>>(),
        (0..150).collect::<Vec<_>>()
    );
    // A keyframe every 2 s (GOP 60), each an IDR with SPS and PPS in front.
    let keys: Vec<_> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.keyframe)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(keys, vec![0, 60, 120]);
    for i in keys {
        let t = &frames[i].nal_types;
        assert!(
            t.contains(&7) && t.contains(&8) && t.contains(&5),
            "frame {i} NAL types {t:?}"
        );
    }
    // At 720p30 a frame is one slice, so only its last packet is short: the gateway sends a
    // frame to a viewer in one batch of equal-sized datagrams (UDP GSO).
    for (i, f) in frames.iter().enumerate().filter(|(_, f)| !f.keyframe) {
        let slices = f.nal_types.iter().filter(|&&t| t == 1).count();
        assert_eq!(slices, 1, "frame {i} NAL types {:?}", f.nal_types);
    }
    let mut sizes: Vec<Vec<usize>> = Vec::new();
    for (j, r) in video.iter().enumerate() {
        if j == 0 || video[j - 1].meta.flags.contains(Flags::END_OF_FRAME) {
            sizes.push(Vec::new());
        }
        sizes.last_mut().expect("a frame").push(r.packet.len());
    }
    for (i, s) in sizes
        .iter()
        .enumerate()
        .filter(|(i, _)| !frames[*i].keyframe)
    {
        assert!(
            s[..s.len() - 1].iter().all(|&n| n == 12 + 1200),
            "frame {i} packet sizes {s:?}"
        );
    }
    // Video timestamps step 3000 (90 kHz at 30 fps); audio 960; sequence numbers never skip.
    assert!(
        frames
            .windows(2)
            .all(|w| w[1].rtp_ts.wrapping_sub(w[0].rtp_ts) == 3000)
    );
    for track in [&video, &audio] {
        let h: Vec<_> = track
            .iter()
            .map(|r| RtpHeaderView::parse(&r.packet).expect("rtp"))
            .collect();
        assert!(
            h.windows(2).all(|w| w[1].seq == w[0].seq.wrapping_add(1)),
            "sequence numbers continuous"
        );
        assert!(
            h.iter()
                .all(|x| x.ssrc == h[0].ssrc && x.payload_type == h[0].payload_type)
        );
    }
    let ats: Vec<_> = audio
        .iter()
        .map(|r| RtpHeaderView::parse(&r.packet).expect("rtp").timestamp)
        .collect();
    assert!(ats.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 960));
    // Markers end frames, and the ring's flags agree with them.
    assert_eq!(
        video
            .iter()
            .filter(|r| r.meta.flags.contains(Flags::END_OF_FRAME))
            .count(),
        150
    );
    // The 1 kHz source tone survives.
    let pcm = decode_opus(&records);
    let left: Vec<f32> = pcm[24_000..72_000].iter().map(|s| s[0]).collect();
    assert_eq!(dominant_tone(&left, &[500.0, 1000.0, 2000.0]), 1000.0);
}

#[test]
fn realtime_pacing_takes_as_long_as_the_media() {
    let src = numbered_1080p(5);
    let started = Instant::now();
    let mut t = Transcoder::start(
        "paced",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--width",
            "640",
            "--height",
            "360",
        ],
    );
    t.wait_named("ready");
    let ring = t.ring();
    // Halfway through the media, about half of it has been written: never more than ~100 ms ahead.
    let mut reader = ring.reader_from_oldest();
    let mut got = Vec::new();
    wait_records(&mut reader, &mut got, 1);
    let first = Instant::now();
    while first.elapsed() < Duration::from_millis(2500) {
        match reader.try_next().expect("no overrun") {
            Some(r) => got.push(r),
            None => reader.wait(Duration::from_millis(20)).expect("wait"),
        }
    }
    let frames_by_2_5s = got
        .iter()
        .filter(|r| r.meta.track == 0 && r.meta.flags.contains(Flags::END_OF_FRAME))
        .count();
    // 76 frames are due by 2.5 s (0..=75). Never ahead is the rule; a loaded machine may lag.
    assert!(
        frames_by_2_5s <= 82,
        "{frames_by_2_5s} frames in 2.5 s: running ahead of realtime"
    );
    assert!(
        frames_by_2_5s >= 55,
        "{frames_by_2_5s} frames in 2.5 s: far behind realtime"
    );
    assert_eq!(t.wait_exit(), Some(0));
    let total = started.elapsed();
    assert!(
        total >= Duration::from_millis(4800),
        "a 5 s file took only {total:?}"
    );
    // Audio (every 20 ms) joins the video frames' writes (every 33 ms): the ring's readers are
    // woken about once per frame, not once per frame and once per audio packet in between.
    let stats = t
        .seen
        .iter()
        .find(|e| e["event"] == "stats")
        .expect("a stats event at exit");
    let wakeups = stats["wakeups"].as_u64().expect("wakeups");
    assert!(
        (30..=160).contains(&wakeups),
        "{wakeups} wakeups for 150 frames and 250 audio packets: {stats}"
    );
}

/// Plays the demo in real time, small, with its log kept; returns it and its media position.
fn playing_demo(name: &str) -> (Transcoder, f64) {
    let mut t =
        Transcoder::start_logged(name, &["-i", "demo", "--width", "320", "--height", "180"]);
    t.wait_named("ready");
    let at = t.wait_named("position")["position"]
        .as_f64()
        .expect("position");
    (t, at)
}

/// Waits until playing has gone `by` seconds of media past `from`: packets were written since.
fn wait_position_past(t: &mut Transcoder, from: f64, by: f64) {
    t.wait_event("position", |e| {
        e["event"] == "position" && e["position"].as_f64().is_some_and(|p| p >= from + by)
    });
}

/// Stops it and returns its log.
fn stop_for_log(mut t: Transcoder) -> String {
    t.send(r#"{"op":"stop"}"#);
    assert_eq!(t.wait_exit(), Some(0));
    t.log()
}

/// Pauses it for longer than the second of lateness that counts as falling behind: the pause
/// itself is under test, which nothing after it may take for the machine falling behind.
/// Returns the position it paused at.
fn pause_long(t: &mut Transcoder) -> f64 {
    t.send(r#"{"op":"pause"}"#);
    let at = t.wait_state("paused")["position"]
        .as_f64()
        .expect("position");
    std::thread::sleep(Duration::from_millis(1500));
    at
}

#[test]
fn a_resume_after_a_pause_plays_on_at_once_and_is_not_reported_as_falling_behind() {
    let (mut t, _) = playing_demo("resume");
    let paused_at = pause_long(&mut t);
    let resumed = Instant::now();
    t.send(r#"{"op":"play"}"#);
    t.wait_state("playing");
    wait_position_past(&mut t, paused_at, 0.3);
    // Taking the pause for lateness also held playing back by as long again.
    let took = resumed.elapsed();
    let log = stop_for_log(t);
    assert!(!log.contains("falling behind realtime"), "{log}");
    assert!(
        took < Duration::from_millis(1500),
        "0.3 s of media took {took:?}"
    );
}

#[test]
fn a_step_after_a_pause_is_not_reported_as_falling_behind() {
    let (mut t, _) = playing_demo("pause-step");
    pause_long(&mut t);
    t.send(r#"{"op":"step","frames":1}"#);
    t.wait_state("paused");
    let log = stop_for_log(t);
    assert!(!log.contains("falling behind realtime"), "{log}");
}

#[test]
fn a_transcoder_held_up_while_playing_says_it_fell_behind() {
    let (mut t, at) = playing_demo("stall");
    // Stopped by the kernel for 1.5 s: the machine, not a command, held it up.
    let pid = rustix::process::Pid::from_child(&t.child);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(1500));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    wait_position_past(&mut t, at, 0.5);
    let log = stop_for_log(t);
    assert!(log.contains("falling behind realtime"), "{log}");
}

#[test]
fn start_begins_playing_at_once_from_the_start_position() {
    // 4 s into a 5 s file: one second of media, played in about one second, starting now.
    let src = numbered_1080p(5);
    let started = Instant::now();
    let mut t = Transcoder::start(
        "start",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--start",
            "4",
            "--width",
            "320",
            "--height",
            "180",
        ],
    );
    assert_eq!(t.wait_exit(), Some(0));
    let took = started.elapsed();
    let mut rx = VideoReceiver::default();
    let numbers: Vec<u32> = read_all(&t.ring())
        .iter()
        .filter_map(|r| rx.push(r))
        .map(|f| f.number)
        .collect();
    assert_eq!(numbers, (120..150).collect::<Vec<_>>());
    assert!(
        took < Duration::from_secs(3),
        "1 s of media took {took:?}: start was paced from 0"
    );
}

#[test]
fn seek_and_step_land_on_the_exact_frame_as_a_keyframe_and_pause_stops_output() {
    let src = numbered_1080p(10);
    let mut t = Transcoder::start(
        "seek",
        &[
            "-i",
            src.to_str().expect("utf8"),
            "--width",
            "640",
            "--height",
            "360",
            "--paused",
            "--on-end",
            "wait",
        ],
    );
    t.wait_named("ready");
    t.wait_state("paused");
    let ring = t.ring();
    let mut reader = ring.reader_from_oldest();
    let mut rx = VideoReceiver::default();
    let mut next_frame = |reader: &mut rtp_ring::Reader| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no frame within 30 s");
            match reader.try_next().expect("no overrun") {
                Some(rec) => {
                    if let Some(f) = rx.push(&rec) {
                        return f;
                    }
                }
                None => reader.wait(Duration::from_millis(50)).expect("wait"),
            }
        }
    };
    // Paused at start: the first frame is shown.
    let f = next_frame(&mut reader);
    assert_eq!((f.number, f.keyframe), (0, true));

    t.send(r#"{"op":"seek","frame":100}"#);
    let f = next_frame(&mut reader);
    assert_eq!(
        (f.number, f.keyframe),
        (100, true),
        "seek lands on frame 100 as a keyframe"
    );
    let st = t.wait_state("paused");
    assert_eq!(st["frame"], 100);

    t.send(r#"{"op":"step","frames":1}"#);
    assert_eq!(next_frame(&mut reader).number, 101);
    t.send(r#"{"op":"step","frames":5}"#);
    assert_eq!(next_frame(&mut reader).number, 106);
    t.send(r#"{"op":"step","frames":-1}"#);
    let f = next_frame(&mut reader);
    assert_eq!(
        (f.number, f.keyframe),
        (105, true),
        "stepping back re-seeks to an exact keyframe"
    );

    t.send(r#"{"op":"seek","to":5.5}"#);
    let f = next_frame(&mut reader);
    assert_eq!(
        (f.number, f.keyframe),
        (165, true),
        "5.5 s at 30 fps is frame 165"
    );
    let ts_at_seek = f.rtp_ts;

    // Play: frames continue from there, timestamps keep rising.
    t.send(r#"{"op":"play"}"#);
    t.wait_state("playing");
    let mut last = f;
    for want in 166..176 {
        let f = next_frame(&mut reader);
        assert_eq!(f.number, want);
        assert!(
            f.rtp_ts.wrapping_sub(last.rtp_ts) as i32 > 0,
            "timestamps move forward"
        );
        last = f;
    }
    assert!(last.rtp_ts.wrapping_sub(ts_at_seek) >= 10 * 3000);

    // Pause: nothing more goes into the ring.
    t.send(r#"{"op":"pause"}"#);
    t.wait_state("paused");
    let idx = ring.write_index();
    std::thread::sleep(Duration::from_millis(400)); // asserting an absence needs a span of time
    assert_eq!(ring.write_index(), idx, "no packets while paused");

    // Step while paused: frames made before the pause go out first, then the next frame, with
    // numbers and timestamps only moving forward.
    t.send(r#"{"op":"step","frames":1}"#);
    t.wait_state("paused");
    let mut stepped = 0;
    while reader.lag() > 0 || stepped == 0 {
        let f = next_frame(&mut reader);
        assert_eq!(
            f.number,
            last.number + 1,
            "frames in order across pause and step"
        );
        assert!(
            f.rtp_ts.wrapping_sub(last.rtp_ts) as i32 > 0,
            "timestamps move forward"
        );
        last = f;
        stepped += 1;
    }

    // Resume: no sequence gap (a receiver sees no loss), timestamps jump by about the pause.
    t.send(r#"{"op":"play"}"#);
    t.wait_state("playing");
    let mut rest = Vec::new();
    wait_records(&mut reader, &mut rest, 30);
    let seqs: Vec<_> = rest
        .iter()
        .filter(|r| r.meta.track == 0)
        .map(|r| RtpHeaderView::parse(&r.packet).expect("rtp").seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));

    // Seek while playing: the state event names the target, and the next keyframe is it.
    t.send(r#"{"op":"seek","frame":50}"#);
    let st = t.wait_event("state after seek", |e| {
        e["event"] == "state" && e["frame"] == 50
    });
    assert_eq!(st["state"], "playing");
    let f = loop {
        let f = next_frame(&mut reader);
        if f.keyframe {
            break f;
        }
    };
    assert_eq!(f.number, 50);
    assert_eq!(next_frame(&mut reader).number, 51);
    t.send(r#"{"op":"stop"}"#);
    assert_eq!(t.wait_exit(), Some(0));
}

#[test]
fn channel_selection_picks_the_requested_channels() {
    let tones = tones_51(4);
    // Audio-only session: channels 2 and 3 (FC, LFE) become left and right.
    let mut t = Transcoder::start(
        "chans",
        &[
            "-i",
            tones.to_str().expect("utf8"),
            "--channels",
            "2",
            "--cho",
            "2",
            "--pace",
            "max",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(
        ready["tracks"].as_array().expect("tracks").len(),
        1,
        "audio only"
    );
    assert_eq!(ready["inputs"][0]["audio_channels"], 6);
    assert_eq!(t.wait_exit(), Some(0));
    let pcm = decode_opus(&read_all(&t.ring()));
    assert!(pcm.len() >= 4 * 48_000 - 960, "{} samples", pcm.len());
    let (l, r): (Vec<f32>, Vec<f32>) = pcm[48_000..96_000].iter().map(|s| (s[0], s[1])).unzip();
    assert_eq!(dominant_tone(&l, &TONES_51), 700.0, "left is channel 2");
    assert_eq!(dominant_tone(&r, &TONES_51), 900.0, "right is channel 3");
}

#[test]
fn select_audio_switches_to_another_input_and_channels() {
    let video = numbered_1080p(10);
    let tones = tones_51(10);
    let mut t = Transcoder::start(
        "select",
        &[
            "-i",
            video.to_str().expect("utf8"),
            "-i",
            tones.to_str().expect("utf8"),
            "id=tones",
            "--width",
            "320",
            "--height",
            "180",
            "--on-end",
            "wait",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(ready["audio_input"], "0");
    t.send(r#"{"op":"select_audio","input":"tones","channels":[5,0]}"#);
    let ready = t.wait_named("ready");
    assert_eq!(ready["audio_input"], "tones");
    assert_eq!(ready["audio_channels"], serde_json::json!([5, 0]));
    // A bad selection is refused with a reason and changes nothing.
    t.send(r#"{"op":"select_audio","input":"tones","channels":[9]}"#);
    let err = t.wait_named("error");
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("6 channels"),
        "{err}"
    );
    t.send(r#"{"op":"select_audio","input":"nope"}"#);
    assert!(
        t.wait_named("error")["message"]
            .as_str()
            .expect("message")
            .contains("nope")
    );

    // Collect about 1.5 s of audio written after the switch and check its tones.
    let ring = t.ring();
    let mut reader = ring.reader();
    let mut recs = Vec::new();
    wait_records(&mut reader, &mut recs, 400);
    let pcm = decode_opus(&recs);
    let tail = &pcm[pcm.len() - 24_000..];
    let (l, r): (Vec<f32>, Vec<f32>) = tail.iter().map(|s| (s[0], s[1])).unzip();
    assert_eq!(dominant_tone(&l, &TONES_51), 1300.0, "left is channel 5");
    assert_eq!(dominant_tone(&r, &TONES_51), 300.0, "right is channel 0");
    t.send(r#"{"op":"stop"}"#);
    assert_eq!(t.wait_exit(), Some(0));
}

#[test]
fn vp8_output_is_marked_with_key_frames() {
    let mut t = Transcoder::start(
        "vp8",
        &[
            "-i",
            "demo",
            "--codec",
            "vp8",
            "--width",
            "320",
            "--height",
            "180",
            "--duration-frames",
            "45",
            "--pace",
            "max",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(ready["tracks"][0]["codec"], "VP8");
    assert_eq!(t.wait_exit(), Some(0));
    let records = read_all(&t.ring());
    let video: Vec<_> = records.iter().filter(|r| r.meta.track == 0).collect();
    let markers = video
        .iter()
        .filter(|r| RtpHeaderView::parse(&r.packet).expect("rtp").marker)
        .count();
    assert_eq!(markers, 45);
    let keys: Vec<_> = video
        .iter()
        .filter(|r| r.meta.flags.contains(Flags::KEYFRAME))
        .collect();
    assert!(!keys.is_empty(), "a VP8 key frame starts the stream");
    // RFC 7741: the key frame's first packet has S=1, and the VP8 header's P bit is 0.
    let p = &keys[0].packet[12..];
    let desc_len = 1 + if p[0] & 0x80 != 0 {
        1 + (p[1] & 0x80 != 0) as usize * (1 + (p[2] & 0x80 != 0) as usize)
    } else {
        0
    };
    assert!(p[0] & 0x10 != 0, "start of partition");
    assert_eq!(p[desc_len] & 1, 0, "key frame");
}

#[test]
fn the_demo_needs_no_file_and_is_endless_and_seekable() {
    let mut t = Transcoder::start(
        "demo",
        &[
            "-i",
            "demo",
            "--pace",
            "max",
            "--duration-frames",
            "10",
            "--start",
            "3600",
        ],
    );
    let ready = t.wait_named("ready");
    assert_eq!(
        (ready["width"].as_u64(), ready["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert!(ready["duration"].is_null(), "the demo is endless");
    assert_eq!(t.wait_exit(), Some(0));
    let records = read_all(&t.ring());
    let mut rx = VideoReceiver::default();
    let frames: Vec<_> = records.iter().filter_map(|r| rx.push(r)).collect();
    assert_eq!(frames.len(), 10);
    assert!(frames[0].keyframe);
    let stats = t
        .seen
        .iter()
        .find(|e| e["event"] == "stats")
        .expect("stats event");
    assert_eq!(stats["video_frames"], 10);
}
