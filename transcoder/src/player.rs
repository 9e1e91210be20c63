//! Playback: what to encode next, when to put it in the ring, and what commands do to that.
//!
//! Owns the play/pause/ended state, exact seeks and steps, audio selection, output timestamps
//! and pacing. Decoding (`source.rs`), filtering and encoding (`video.rs`, `audio.rs`) and RTP
//! (`rtp.rs`) are called from here; nothing here touches FFmpeg types beyond frames.
//!
//! Output time (see `timeline.rs`). Every emitted unit (a video frame or a 20 ms Opus frame) gets an output time in
//! µs that only moves forward: RTP timestamps derive from it, so a receiver sees no jump
//! backwards across seeks, and sequence numbers never skip (no false loss). Media time maps to
//! output time by a *segment*: from a segment's start, output time advances exactly as media time
//! does. A new segment starts at a seek, a loop, or a resume; at a resume the output time also
//! advances by the pause's wall-clock length, so timestamps keep step with the receiver's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use ff::{Rational as FfRational, frame};
use ffmpeg_next as ff;
use rtp_ring::{Flags, RecordRef, Writer, now_us};

use crate::audio::{AudioChain, AudioFilter, FRAME_SAMPLES, OpusEncoder};
use crate::control::{self, Command, Event, Incoming, InputInfo, InputRef, PlayState};
use crate::options::{ChannelSel, OnEnd, Options, Pace};
use crate::rtp::{RtpPacket, RtpTrack};
use crate::source::{Source, SourceError};
use crate::timeline::{
    OPUS_FRAME_TICKS, Segment, frame_at_secs, frame_ticks, secs, ticks_to_us, ts48, ts90,
    us_to_ticks,
};
use crate::video::{self, EncoderThread, VideoChain, VideoEncoder, VideoFilter};

/// How often `position` events go out while playing (the gateway relays them to viewers).
const POSITION_EVERY_US: u64 = 200_000;
/// Past this lateness while playing, pacing re-anchors instead of bursting to catch up.
const MAX_LATE_US: u64 = 1_000_000;
/// Units due within this much of one being written go out with it, and the ring's readers are
/// woken once for all of them (each wakeup costs the gateway a turn of every viewer's loop).
/// Video goes out at most this early.
const COALESCE_US: u64 = 15_000;
/// Audio goes out up to one video frame early (plus this), so that it joins the next video
/// frame's write: one wakeup per video frame (30 a second at 30 fps) instead of about 50 with
/// audio every 20 ms between them. An audio packet arrives at most a frame interval early,
/// which a viewer's jitter buffer holds; lip sync follows the RTP timestamps.
const AUDIO_AHEAD_SLACK_US: u64 = 1_000;
/// Never send audio more than this early, whatever the frame rate.
const MAX_AUDIO_AHEAD_US: u64 = 50_000;

/// Why playback stopped with an error (the caller reports it and exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Setup(String),
    #[error("encoder failed: {0}")]
    Encode(String),
}

/// Encoded packets of one unit, waiting for their due time.
#[derive(Debug)]
struct Unit {
    track: u8,
    /// `None` for a video frame still with the encoder thread (collected, in order, on write).
    packets: Option<Vec<RtpPacket>>,
    due_us: u64,
    /// When the input the unit was made from reached the gateway (`--timed-input` video).
    arrived_us: Option<u64>,
}

/// Totals for the `stats` event.
#[derive(Debug, Default)]
struct Stats {
    video_frames: u64,
    audio_frames: u64,
    packets: u64,
    bytes: u64,
    wakeups: u64,
}

pub struct Player {
    opts: Options,
    writer: Writer,
    sources: Vec<Source>,
    video: Option<VideoChain>,
    audio: Option<AudioChain>,
    fps: FfRational,
    duration: Option<f64>,
    state: PlayState,
    seg: Segment,
    /// Output time just after the last emitted video frame (or audio frame, without video):
    /// where the next segment starts.
    out_end_t: i64,
    /// Media time just after the last emitted unit.
    media_next_t: i64,
    /// Index of the last emitted video frame.
    frame: Option<u64>,
    first_frame: u64,
    force_key: bool,
    /// Video frames since the last keyframe; at `gop_frames` the next is one. The player
    /// decides every keyframe (encoders make none of their own), so that renditions in
    /// different encoders and codecs have theirs on the same frames.
    since_key: u64,
    gop_frames: u64,
    /// The id of the command being handled, if it wants a reply, and whether it was refused.
    request: Option<u64>,
    refused: bool,
    /// Units produced and not yet written, in media order.
    pending: std::collections::VecDeque<Unit>,
    /// Production reached the end; write what is pending, then end.
    produced_all: bool,
    paused_at_wall: u64,
    last_position_wall: u64,
    /// Packets were written without waking the ring's readers (more were due right after).
    unwoken: bool,
    /// A seek's target frame and when it was asked for, until its first frame is written
    /// (for the debug log that says how long seeks take).
    seek_started: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    control: Option<Receiver<Incoming>>,
    stats: Stats,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Player({:?}, frame {:?})", self.state, self.frame)
    }
}

impl Player {
    /// Opens every input and builds the encoders. Fails with FFmpeg's reason for an input that
    /// cannot be opened.
    pub fn new(
        opts: Options,
        writer: Writer,
        stop: Arc<AtomicBool>,
        control: Option<Receiver<Incoming>>,
    ) -> Result<Self, PlayError> {
        let mut sources = Vec::new();
        for (i, spec) in opts.inputs.iter().enumerate() {
            sources.push(Source::open(
                spec,
                i == 0,
                opts.threads,
                opts.lowres,
                opts.live,
                stop.clone(),
            )?);
        }
        let facts = sources[0].video_facts();
        let fps = match (opts.fps, facts) {
            (Some(r), _) => FfRational::new(r.num, r.den),
            (None, Some(f)) => f.fps,
            (None, None) => FfRational::new(30, 1),
        };
        let duration = sources[0].duration();

        // Probe the first video frame for its size, then hand it back (no seek: live inputs
        // cannot).
        let video = match facts {
            Some(_) => {
                let mut probe = frame::Video::empty();
                if !sources[0].next_video(&mut probe)? {
                    return Err(PlayError::Setup(format!(
                        "input '{}' has a video stream but no decodable frame",
                        opts.inputs[0].url
                    )));
                }
                let (w, h) =
                    video::output_size(&opts, probe.width(), probe.height(), probe.aspect_ratio());
                let time_base = sources[0].video_time_base();
                sources[0].unread_video(probe)?;
                let encoder = VideoEncoder::new(&opts, w, h, fps).map_err(PlayError::Setup)?;
                let mut rtp = encoder.rtp_track();
                // Lower renditions on tracks 2, 3, …: each below the main picture, tallest
                // first, no two alike.
                let mut sizes: Vec<(u32, u32, u64)> = opts
                    .layers
                    .iter()
                    .filter(|l| l.height < h)
                    .map(|l| l.size(w, h, opts.video_bitrate))
                    .collect();
                sizes.sort_by_key(|s| std::cmp::Reverse(s.1));
                sizes.dedup_by_key(|s| s.1);
                for l in opts.layers.iter().filter(|l| l.height >= h) {
                    tracing::info!(
                        height = l.height,
                        "layer not below the main picture ({w}x{h}): the main one stands for it"
                    );
                }
                let mut renditions = Vec::new();
                for (i, size) in sizes.into_iter().enumerate() {
                    let track = crate::rtp::AUDIO_TRACK + 1 + i as u8;
                    renditions.push(
                        video::Rendition::new(&opts, (w, h), size, fps, track, &rtp)
                            .map_err(PlayError::Setup)?,
                    );
                }
                let layered = !renditions.is_empty();
                // The main picture in other codecs, after the lower renditions.
                for codec in &opts.alt_codecs {
                    let track = crate::rtp::AUDIO_TRACK + 1 + renditions.len() as u8;
                    let r = video::Rendition::in_codec(&opts, *codec, (w, h), fps, track, &rtp)
                        .map_err(PlayError::Setup)?;
                    tracing::info!(codec = ?codec, track, "encoding the main picture in another codec too");
                    renditions.push(r);
                }
                if layered {
                    rtp.info.layer = Some(crate::control::LayerInfo {
                        rid: format!("{h}p"),
                        width: w,
                        height: h,
                        bitrate: opts.video_bitrate,
                    });
                    tracing::info!(
                        layers = ?renditions.iter().filter_map(|r| r.rtp.info.layer.clone()).collect::<Vec<_>>(),
                        "encoding lower renditions too"
                    );
                }
                Some(VideoChain {
                    filter: VideoFilter::new(&opts, w, h, fps, time_base),
                    encoder: EncoderThread::spawn(encoder),
                    rtp,
                    renditions,
                    width: w,
                    height: h,
                    source_done: false,
                    drop_before: 0,
                    ahead: None,
                    scratch: frame::Video::empty(),
                    held: None,
                })
            }
            None => None,
        };

        // Audio: the first input with audio, using --channels/--cho.
        let audio_input = sources.iter().position(|s| s.audio_channels().is_some());
        let audio = match audio_input {
            Some(input) => {
                let src_channels = sources[input].audio_channels().unwrap_or(2);
                let channels = default_channels(&opts.channels, src_channels);
                channels
                    .pan_filter(src_channels)
                    .map_err(|e| PlayError::Setup(format!("--channels/--cho: {e}")))?;
                for (i, s) in sources.iter_mut().enumerate() {
                    s.set_want_audio(i == input);
                }
                Some(AudioChain {
                    filter: AudioFilter::new(channels),
                    encoder: OpusEncoder::new(opts.audio_bitrate).map_err(PlayError::Setup)?,
                    rtp: RtpTrack::opus(),
                    input,
                    source_done: false,
                    drop_before_t: 0,
                    ahead: None,
                    scratch: frame::Audio::empty(),
                    next_ts: 0,
                })
            }
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return Err(PlayError::Setup("no input has video or audio".into()));
        }
        let now = now_us();
        let paused = opts.paused;
        let gop_frames = video::gop_frames(opts.gop_seconds, fps);
        Ok(Self {
            opts,
            writer,
            sources,
            video,
            audio,
            fps,
            duration,
            state: if paused {
                PlayState::Paused
            } else {
                PlayState::Playing
            },
            seg: Segment {
                media_t: 0,
                out_t: 0,
                wall_us: now,
            },
            out_end_t: 0,
            media_next_t: 0,
            frame: None,
            first_frame: 0,
            force_key: true,
            since_key: 0,
            gop_frames,
            request: None,
            refused: false,
            pending: std::collections::VecDeque::new(),
            produced_all: false,
            paused_at_wall: now,
            last_position_wall: 0,
            seek_started: None,
            unwoken: false,
            stop,
            control,
            stats: Stats::default(),
        })
    }

    fn ready_event(&self) -> Event {
        let mut tracks = Vec::new();
        if let Some(v) = &self.video {
            tracks.push(v.rtp.info.clone());
            tracks.extend(v.renditions.iter().map(|r| r.rtp.info.clone()));
        }
        if let Some(a) = &self.audio {
            tracks.push(a.rtp.info.clone());
        }
        Event::Ready {
            tracks,
            duration: self.duration,
            fps: self.fps.numerator() as f64 / self.fps.denominator() as f64,
            width: self.video.as_ref().map_or(0, |v| v.width),
            height: self.video.as_ref().map_or(0, |v| v.height),
            inputs: self
                .opts
                .inputs
                .iter()
                .zip(&self.sources)
                .enumerate()
                .map(|(index, (spec, s))| InputInfo {
                    id: spec.id.clone(),
                    index,
                    audio_channels: s.audio_channels(),
                })
                .collect(),
            audio_input: self
                .audio
                .as_ref()
                .map(|a| self.opts.inputs[a.input].id.clone()),
            audio_channels: self
                .audio
                .as_ref()
                .map_or(Vec::new(), |a| a.filter.channels().0.clone()),
            source_video: self.sources.first().and_then(|s| s.describe_video()),
            source_audio: self
                .audio
                .as_ref()
                .and_then(|a| self.sources[a.input].describe_audio()),
        }
    }

    fn position_s(&self) -> f64 {
        secs((self.media_next_t - self.frame_len_t()).max(0))
    }

    fn frame_len_t(&self) -> i64 {
        if self.video.is_some() {
            frame_ticks(1, self.fps)
        } else {
            OPUS_FRAME_TICKS
        }
    }

    fn emit_state(&self) {
        control::emit(&Event::State {
            state: self.state,
            position: self.position_s(),
            frame: self.frame.unwrap_or(self.first_frame),
        });
    }

    /// Runs until the media ends (with `--on-end exit`), `stop`, stdin's end or a signal.
    pub fn run(mut self) -> Result<(), PlayError> {
        control::emit(&self.ready_event());
        let start_frame = frame_at_secs(self.opts.start, self.fps);
        self.first_frame = start_frame;
        // The source is at its start already (after the size probe); seeking there anyway would
        // fail on inputs that cannot seek (live HTTP, pipes).
        if start_frame > 0 {
            self.seek_to(start_frame)?;
        }
        // Output time starts at 0 with the first frame, whatever media time that is.
        self.seg = Segment {
            media_t: frame_ticks(start_frame, self.fps),
            out_t: 0,
            wall_us: now_us(),
        };
        if self.state == PlayState::Paused {
            // Show the first frame, as a paused review player does.
            self.emit_one_frame()?;
        }
        self.emit_state();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.state {
                PlayState::Playing => {
                    if !self.step_playing()? {
                        break;
                    }
                }
                PlayState::Paused | PlayState::Ended => {
                    if self.control.is_none() && self.state == PlayState::Ended {
                        break;
                    }
                    if !self.wait_command(Duration::from_millis(100))? {
                        break;
                    }
                }
            }
        }
        self.wake_readers();
        self.report_stats();
        Ok(())
    }

    /// One step of playing: produce ahead, or write the oldest unit when due. Returns false to
    /// exit. Up to `depth` units are in flight, so the next frame of a file decodes while one
    /// encodes.
    fn step_playing(&mut self) -> Result<bool, PlayError> {
        // A live stream's next frame has not arrived when the last is made: making it first
        // would hold the last one back until it comes, so each is written as soon as it is
        // made (the next frame could not be decoded before it arrives anyway).
        let depth = match (self.opts.live, self.opts.pace) {
            (true, _) => 1,
            (false, Pace::Max) => 3,
            (false, Pace::Realtime) => 2,
        };
        if self.unwoken {
            // The previous write left the next unit due with it: send it before producing more.
            if let Some(unit) = self.pending.pop_front() {
                self.write_coalesced(unit)?;
                return self.poll_commands();
            }
            self.wake_readers();
        }
        if !self.produced_all && self.pending.len() < depth {
            match self.produce()? {
                Some(unit) => self.enqueue(unit),
                None => self.produced_all = true,
            }
            return Ok(true);
        }
        let Some(due_us) = self.pending.front().map(|u| u.due_us) else {
            self.produced_all = false;
            return self.reach_end();
        };
        let now = now_us();
        if self.opts.pace == Pace::Realtime && due_us > now {
            let wait = Duration::from_micros(due_us - now).min(Duration::from_millis(50));
            return self.wait_command(wait);
        }
        let unit = self.pending.pop_front().expect("front exists");
        self.write_coalesced(unit)?;
        self.maybe_position();
        self.poll_commands()
    }

    /// Writes a unit while playing; the ring's readers are woken unless the next unit joins
    /// this write: a video frame due within [`COALESCE_US`], or audio due before the next video
    /// frame (see [`AUDIO_AHEAD_SLACK_US`]). A joining unit is written next, before anything
    /// else is done. After a video frame, the audio that joins it is produced here if it is not
    /// pending yet (audio is cheap to make; no video is decoded ahead for it, so a keyframe
    /// request still lands on the next frame).
    fn write_coalesced(&mut self, unit: Unit) -> Result<(), PlayError> {
        let now = now_us();
        let audio_ahead = self.audio_ahead_us();
        let video = unit.track == crate::rtp::VIDEO_TRACK;
        self.write_unit_quietly(unit)?;
        if video && self.opts.pace == Pace::Realtime {
            self.produce_audio_until(now + audio_ahead)?;
        }
        let more = match (self.opts.pace, self.pending.front()) {
            (_, None) => false,
            (Pace::Max, Some(_)) => true,
            (Pace::Realtime, Some(next)) => {
                let ahead = match next.track {
                    crate::rtp::AUDIO_TRACK => audio_ahead,
                    _ => COALESCE_US,
                };
                next.due_us <= now + ahead
            }
        };
        if !more {
            self.wake_readers();
        }
        Ok(())
    }

    /// Produces audio units due by `horizon` (µs), ahead of the video between them.
    fn produce_audio_until(&mut self, horizon: u64) -> Result<(), PlayError> {
        let end_t = self.end_t();
        loop {
            let Some(a) = self.audio.as_mut() else {
                return Ok(());
            };
            let Some(media_t) = a.peek(&mut self.sources[a.input], end_t)? else {
                return Ok(());
            };
            if self.seg.due_of(self.seg.out_of(media_t)) > horizon {
                return Ok(());
            }
            if let Some(unit) = self.encode_audio()? {
                self.enqueue(unit);
            }
        }
    }

    /// The frame playing ends before (`--duration-frames`), if any.
    fn end_frame(&self) -> Option<u64> {
        self.opts.duration_frames.map(|n| self.first_frame + n)
    }

    /// [`Self::end_frame`] as a media time.
    fn end_t(&self) -> Option<i64> {
        self.end_frame().map(|f| frame_ticks(f, self.fps))
    }

    /// Adds a produced unit to `pending`, which stays in due order (audio may be produced
    /// ahead of video due before it).
    fn enqueue(&mut self, unit: Unit) {
        let at = self.pending.partition_point(|u| u.due_us <= unit.due_us);
        self.pending.insert(at, unit);
    }

    /// How early audio may go out: a video frame's interval (so it joins the next frame), or
    /// [`COALESCE_US`] without video.
    fn audio_ahead_us(&self) -> u64 {
        if self.video.is_none() {
            return COALESCE_US;
        }
        let frame_us = ticks_to_us(frame_ticks(1, self.fps)).max(0) as u64;
        (frame_us + AUDIO_AHEAD_SLACK_US).min(MAX_AUDIO_AHEAD_US)
    }

    fn video_chain(&mut self) -> &mut VideoChain {
        self.video.as_mut().expect("video units need video")
    }

    /// Wakes the ring's readers if packets were written since they were last woken.
    fn wake_readers(&mut self) {
        if std::mem::take(&mut self.unwoken) {
            self.writer.wake();
            self.stats.wakeups += 1;
        }
    }

    /// Drops units not yet written (after a seek), collecting the encoder's results for them so
    /// later results stay in order. Their frames were never sent: no sequence gap.
    fn drop_pending(&mut self) -> Result<(), PlayError> {
        self.produced_all = false;
        while let Some(unit) = self.pending.pop_front() {
            if unit.packets.is_none() {
                let v = self.video.as_mut().expect("video units need video");
                v.encoder.collect().map_err(PlayError::Encode)?;
                for r in &mut v.renditions {
                    r.encoder.collect().map_err(PlayError::Encode)?;
                }
            }
        }
        Ok(())
    }

    /// Writes every pending unit now (before a frame shown while paused).
    fn flush_pending(&mut self) -> Result<(), PlayError> {
        while let Some(unit) = self.pending.pop_front() {
            self.write_unit(unit)?;
        }
        Ok(())
    }

    /// Media ended (or `--duration-frames` frames were played): loop, wait or exit.
    fn reach_end(&mut self) -> Result<bool, PlayError> {
        if self.opts.looping {
            tracing::info!("end of media: looping to frame {}", self.first_frame);
            let out = self.out_end_t;
            if !self.seek_or_refuse(self.first_frame)? {
                self.state = PlayState::Ended;
                self.emit_state();
                return Ok(!(self.opts.on_end == OnEnd::Exit || self.control.is_none()));
            }
            self.seg = Segment {
                media_t: frame_ticks(self.first_frame, self.fps),
                out_t: out,
                wall_us: now_us(),
            };
            return Ok(true);
        }
        self.state = PlayState::Ended;
        self.emit_state();
        Ok(!(self.opts.on_end == OnEnd::Exit || self.control.is_none()))
    }

    /// Encodes the next unit in media order (video frame or Opus frame), or `None` at the end.
    fn produce(&mut self) -> Result<Option<Unit>, PlayError> {
        let end_frame = self.end_frame();
        let end_t = self.end_t();
        let fps = self.fps;
        let v_next = match self.video.as_mut() {
            Some(v) => v
                .peek(&mut self.sources[0], end_frame)?
                .map(|i| frame_ticks(i, fps)),
            None => None,
        };
        let a_next = match self.audio.as_mut() {
            Some(a) => a.peek(&mut self.sources[a.input], end_t)?,
            None => None,
        };
        let take_video = match (v_next, a_next) {
            (None, None) => return Ok(None),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(v), Some(a)) => v <= a,
        };
        if take_video {
            self.encode_video()
        } else {
            self.encode_audio()
        }
    }

    fn encode_video(&mut self) -> Result<Option<Unit>, PlayError> {
        let v = self.video.as_mut().expect("peeked");
        let (frame, idx) = v.ahead.take().expect("peeked");
        // The decoder and the filters carry the position and size of the packet the picture
        // came in.
        let packet = frame.packet();
        let arrived_us = self
            .opts
            .arrivals
            .as_ref()
            .and_then(|a| a.of_packet(packet.position, packet.size));
        let media_t = frame_ticks(idx, self.fps);
        let out_t = self.seg.out_of(media_t);
        let ts = ts90(out_t);
        let key = std::mem::take(&mut self.force_key) || self.since_key >= self.gop_frames;
        self.since_key = if key { 1 } else { self.since_key + 1 };
        // Every rendition gets the same frame, timestamp and keyframe decision, so a viewer can
        // move between them at any keyframe.
        for r in &mut v.renditions {
            r.submit(&frame, ts, key).map_err(PlayError::Encode)?;
        }
        v.encoder
            .submit(frame, ts, key)
            .map_err(PlayError::Encode)?;
        self.frame = Some(idx);
        self.stats.video_frames += 1;
        let len = frame_ticks(1, self.fps);
        self.out_end_t = self.out_end_t.max(out_t + len);
        self.media_next_t = media_t + len;
        Ok(Some(Unit {
            track: crate::rtp::VIDEO_TRACK,
            packets: None,
            due_us: self.seg.due_of(out_t),
            arrived_us,
        }))
    }

    fn encode_audio(&mut self) -> Result<Option<Unit>, PlayError> {
        let a = self.audio.as_mut().expect("peeked");
        let (mut frame, media_t) = a.ahead.take().expect("peeked");
        let out_t = self.seg.out_of(media_t);
        let ts = ts48(out_t);
        let due_us = self.seg.due_of(out_t);
        if ts < a.next_ts {
            // Overlaps audio already sent before a segment change: skip it.
            return Ok(Some(Unit {
                track: crate::rtp::AUDIO_TRACK,
                packets: Some(Vec::new()),
                due_us,
                arrived_us: None,
            }));
        }
        a.next_ts = ts + FRAME_SAMPLES as i64;
        let mut encoded = Vec::with_capacity(1);
        a.encoder
            .encode(&mut frame, ts, &mut encoded)
            .map_err(|e| PlayError::Encode(e.to_string()))?;
        let mut packets = Vec::new();
        for p in encoded {
            packets.extend(a.rtp.packetize(&p.data, p.ts as u64, false));
        }
        self.stats.audio_frames += 1;
        // With video, output time follows the video (frame-exact continuity at seeks and loops);
        // audio that would overlap a new segment is skipped by `next_ts` above.
        if self.video.is_none() {
            self.out_end_t = self.out_end_t.max(out_t + OPUS_FRAME_TICKS);
            self.media_next_t = media_t + OPUS_FRAME_TICKS;
        }
        Ok(Some(Unit {
            track: crate::rtp::AUDIO_TRACK,
            packets: Some(packets),
            due_us,
            arrived_us: None,
        }))
    }

    fn write_unit(&mut self, unit: Unit) -> Result<(), PlayError> {
        self.write_unit_quietly(unit)?;
        self.wake_readers();
        Ok(())
    }

    /// [`Self::write_unit`] without waking the ring's readers.
    fn write_unit_quietly(&mut self, unit: Unit) -> Result<(), PlayError> {
        // Lower renditions' packets of a video frame, each on its track.
        let mut layers: Vec<(u8, Vec<RtpPacket>)> = Vec::new();
        let packets = match unit.packets {
            Some(p) => p,
            None => {
                let ready = self.video_chain().encoder.try_collect();
                let encoded = match ready {
                    Some(r) => r,
                    None => {
                        // Packets already written should not wait for the encoder.
                        self.wake_readers();
                        self.video_chain().encoder.collect()
                    }
                };
                let v = self.video_chain();
                let mut packets = Vec::new();
                for f in encoded.map_err(PlayError::Encode)? {
                    packets.extend(v.rtp.packetize(&f.data, f.ts as u64, f.key));
                }
                for r in &mut v.renditions {
                    let mut p = Vec::new();
                    for f in r.encoder.collect().map_err(PlayError::Encode)? {
                        p.extend(r.rtp.packetize(&f.data, f.ts as u64, f.key));
                    }
                    layers.push((r.rtp.info.index, p));
                }
                packets
            }
        };
        let now = now_us();
        self.keep_pace(unit.due_us, now);
        // Viewers joining later pace their catch-up by capture times. A live input's frames
        // exist when they are written: due times anchored at the start drift behind when the
        // input or this machine falls behind (with `--pace max` nothing re-anchors them), and a
        // joining viewer chasing them never caught up, so never got audio. A publisher's
        // video is stamped with when it reached the gateway (`--timed-input`), as a WHIP
        // publisher's packets are: the gateway's ingest latency counts from there.
        let capture_us = if self.opts.live {
            unit.arrived_us.map_or(now, |at| at.min(now))
        } else {
            unit.due_us.min(now)
        };
        let is_audio = unit.track == crate::rtp::AUDIO_TRACK;
        if let (false, Some((frame, at))) = (is_audio, self.seek_started) {
            self.seek_started = None;
            tracing::debug!(
                frame,
                ms = now.saturating_sub(at) / 1000,
                "seek: first frame of the new position written"
            );
        }
        self.write_packets(unit.track, &packets, is_audio, capture_us);
        for (track, p) in &layers {
            self.write_packets(*track, p, false, capture_us);
        }
        Ok(())
    }

    /// Appends one unit's packets to the ring on `track`.
    fn write_packets(&mut self, track: u8, packets: &[RtpPacket], is_audio: bool, capture_us: u64) {
        for p in packets {
            let mut flags = Flags::empty();
            if p.keyframe_start {
                flags |= Flags::KEYFRAME;
            }
            if p.marker || is_audio {
                flags |= Flags::END_OF_FRAME;
            }
            // Packets are ≤ 1212 bytes by construction, and tracks are below MAX_TRACKS.
            if let Err(e) = self.writer.append(RecordRef {
                track,
                flags,
                capture_us,
                packet: &p.bytes,
            }) {
                tracing::error!("ring refused a packet: {e}");
                continue;
            }
            self.stats.packets += 1;
            self.stats.bytes += p.bytes.len() as u64;
            self.unwoken = true;
        }
    }

    /// A unit due at `due_us` goes out at `now`. While playing in real time, more than
    /// [`MAX_LATE_US`] late means this machine or the input fell behind: pacing re-anchors
    /// rather than burst to catch up, and says so. While paused, a seek or step preview goes
    /// out at once with the units made before the pause, however long ago they were due: that
    /// is not lateness (nor is a resume, which re-dates what is pending: [`Self::resume`]).
    fn keep_pace(&mut self, due_us: u64, now: u64) {
        if self.opts.pace != Pace::Realtime || self.state != PlayState::Playing {
            return;
        }
        let late_us = now.saturating_sub(due_us);
        if late_us > MAX_LATE_US {
            tracing::warn!(
                late_ms = late_us / 1000,
                "falling behind realtime; re-anchoring pacing"
            );
            self.seg.wall_us += late_us;
        }
    }

    fn maybe_position(&mut self) {
        let now = now_us();
        if now.saturating_sub(self.last_position_wall) >= POSITION_EVERY_US {
            self.last_position_wall = now;
            control::emit(&Event::Position {
                position: self.position_s(),
                frame: self.frame.unwrap_or(self.first_frame),
            });
        }
    }

    /// Handles commands already queued. Returns false when the process should exit.
    fn poll_commands(&mut self) -> Result<bool, PlayError> {
        loop {
            let Some(rx) = &self.control else {
                return Ok(true);
            };
            match rx.try_recv() {
                Ok(msg) => {
                    if !self.handle(msg)? {
                        return Ok(false);
                    }
                }
                Err(_) => return Ok(true),
            }
        }
    }

    /// Waits up to `timeout` for a command and handles it. Returns false to exit.
    fn wait_command(&mut self, timeout: Duration) -> Result<bool, PlayError> {
        self.wake_readers();
        let Some(rx) = &self.control else {
            std::thread::sleep(timeout);
            return Ok(true);
        };
        match rx.recv_timeout(timeout) {
            Ok(msg) => {
                if !self.handle(msg)? {
                    return Ok(false);
                }
                self.poll_commands()
            }
            Err(RecvTimeoutError::Timeout) => Ok(true),
            Err(RecvTimeoutError::Disconnected) => Ok(false),
        }
    }

    /// Acts on one control message; a command with an id is answered by exactly one `done` or
    /// `error` event carrying it.
    fn handle(&mut self, msg: Incoming) -> Result<bool, PlayError> {
        let (id, cmd) = match msg {
            Incoming::Command(id, c) => (id, c),
            Incoming::Invalid(bad) => {
                self.request = bad.id;
                self.refuse("bad_request", bad.message);
                self.request = None;
                return Ok(true);
            }
            Incoming::Closed => {
                tracing::info!("stdin closed: the parent is gone, exiting");
                return Ok(false);
            }
        };
        tracing::debug!(?cmd, "command");
        self.wake_readers();
        self.request = id;
        self.refused = false;
        let go_on = self.act(cmd);
        if let (Some(id), false, Ok(true)) = (self.request.take(), self.refused, &go_on) {
            control::emit(&Event::Done { id });
        }
        go_on
    }

    /// Refuses the current command (or reports a playback problem) with an `error` event.
    fn refuse(&mut self, code: &str, message: String) {
        self.refused = true;
        control::emit(&Event::Error {
            id: self.request,
            code: code.into(),
            message,
        });
    }

    fn act(&mut self, cmd: Command) -> Result<bool, PlayError> {
        match cmd {
            Command::Play => {
                if self.state != PlayState::Playing {
                    if self.state == PlayState::Ended && !self.seek_or_refuse(self.first_frame)? {
                        return Ok(true);
                    }
                    self.resume();
                    self.state = PlayState::Playing;
                }
                self.emit_state();
            }
            Command::Pause => {
                if self.state == PlayState::Playing {
                    self.state = PlayState::Paused;
                    self.paused_at_wall = now_us();
                }
                self.emit_state();
            }
            Command::Seek { to, frame } => {
                let target = match (to, frame) {
                    (Some(t), _) => frame_at_secs(t, self.fps),
                    (None, Some(f)) => f,
                    (None, None) => unreachable!("parse_line requires one"),
                };
                let target = self.clamp_frame(target);
                if !self.seek_or_refuse(target)? {
                    return Ok(true);
                }
                if self.state == PlayState::Ended {
                    self.state = PlayState::Paused;
                    self.paused_at_wall = now_us();
                }
                match self.state {
                    PlayState::Playing => {
                        self.seg = Segment {
                            media_t: frame_ticks(target, self.fps),
                            out_t: self.out_end_t,
                            wall_us: now_us(),
                        };
                        // The new position is the target, about to play (not the frame before it).
                        control::emit(&Event::State {
                            state: self.state,
                            position: secs(frame_ticks(target, self.fps)),
                            frame: target,
                        });
                    }
                    _ => {
                        self.emit_one_frame()?;
                        self.emit_state();
                    }
                }
            }
            Command::Step { frames } => {
                if self.video.is_none() {
                    self.refuse("not_supported", "step needs a video track".into());
                    return Ok(true);
                }
                if self.state == PlayState::Playing {
                    self.state = PlayState::Paused;
                    self.paused_at_wall = now_us();
                }
                let current = self.frame.unwrap_or(self.first_frame) as i64;
                let target = self.clamp_frame((current + frames).max(0) as u64);
                if frames < 0 || target as i64 - current > (self.opts.gop_seconds * 60.0) as i64 {
                    if !self.seek_or_refuse(target)? {
                        return Ok(true);
                    }
                } else if let Some(v) = self.video.as_mut() {
                    v.drop_before = target;
                    if v.ahead.as_ref().is_some_and(|(_, i)| *i < target) {
                        v.ahead = None;
                    }
                }
                self.emit_one_frame()?;
                if self.state == PlayState::Ended {
                    self.state = PlayState::Paused;
                }
                self.emit_state();
            }
            Command::SelectAudio { input, channels } => {
                if let Err(message) = self.select_audio(input, channels) {
                    self.refuse("bad_request", message);
                } else {
                    control::emit(&self.ready_event());
                }
            }
            Command::Keyframe => self.force_key = true,
            Command::Status => self.emit_state(),
            Command::Stop => return Ok(false),
        }
        Ok(true)
    }

    fn clamp_frame(&self, frame: u64) -> u64 {
        match self.duration {
            Some(d) => frame.min(frame_at_secs(d, self.fps).saturating_sub(1)),
            None => frame,
        }
    }

    /// A new segment after a pause: output time moves on by the pause's wall-clock length.
    fn resume(&mut self) {
        let now = now_us();
        let paused_for = us_to_ticks(now.saturating_sub(self.paused_at_wall));
        self.seg = Segment {
            media_t: self.media_next_t,
            out_t: self.out_end_t + paused_for,
            wall_us: now,
        };
        // Units made before the pause keep their old timestamps, and go out now. They were due
        // when the pause began: left so, they would look a pause late, and pacing would be
        // re-anchored a second time, holding playing back by as long again.
        for unit in &mut self.pending {
            unit.due_us = now;
        }
    }

    /// `seek_to`, except that an input that cannot seek is told to the gateway as a refused
    /// command (`not_supported`) rather than ending playback. Returns whether it moved.
    fn seek_or_refuse(&mut self, target: u64) -> Result<bool, PlayError> {
        match self.seek_to(target) {
            Ok(()) => Ok(true),
            Err(PlayError::Source(SourceError::Read { reason, .. })) => {
                tracing::warn!("{reason}");
                self.refuse("not_supported", format!("this input cannot seek: {reason}"));
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Positions everything so the next video frame out is exactly `target`, as a keyframe.
    fn seek_to(&mut self, target: u64) -> Result<(), PlayError> {
        self.seek_started = Some((target, now_us()));
        let target_t = frame_ticks(target, self.fps);
        self.drop_pending()?;
        self.force_key = true;
        self.sources[0].seek(secs(target_t))?;
        if let Some(v) = self.video.as_mut() {
            v.restart_at(target);
        }
        if let Some(a) = self.audio.as_mut() {
            if a.input != 0 {
                self.sources[a.input].seek(secs(target_t))?;
            }
            a.restart_at(target_t);
        }
        self.media_next_t = target_t;
        self.frame = target.checked_sub(1);
        Ok(())
    }

    /// While not playing: encode and send the next video frame now (seek or step preview).
    fn emit_one_frame(&mut self) -> Result<(), PlayError> {
        if self.video.is_none() {
            return Ok(());
        }
        let peeked = match self.video.as_mut() {
            Some(v) => v.peek(&mut self.sources[0], None)?,
            None => None,
        };
        let Some(media_t) = peeked.map(|i| frame_ticks(i, self.fps)) else {
            self.refuse("bad_request", "no frame there: end of media".into());
            return Ok(());
        };
        // Frames produced before the pause go first, so timestamps never step back.
        self.flush_pending()?;
        let now = now_us();
        let out_t = self.out_end_t + us_to_ticks(now.saturating_sub(self.paused_at_wall));
        self.seg = Segment {
            media_t,
            out_t,
            wall_us: now,
        };
        self.paused_at_wall = now;
        if let Some(unit) = self.encode_video()? {
            self.write_unit(unit)?;
        }
        // Audio decoded up to here is stale for the next resume.
        if let Some(a) = self.audio.as_mut() {
            a.ahead = None;
            a.drop_before_t = self.media_next_t;
        }
        Ok(())
    }

    fn select_audio(&mut self, input: InputRef, channels: Option<Vec<u32>>) -> Result<(), String> {
        let index = match &input {
            InputRef::Index(i) if *i < self.opts.inputs.len() => *i,
            InputRef::Id(id) => self
                .opts
                .inputs
                .iter()
                .position(|s| &s.id == id)
                .or_else(|| {
                    id.parse::<usize>()
                        .ok()
                        .filter(|i| *i < self.opts.inputs.len())
                })
                .ok_or(format!("no input named '{id}'"))?,
            InputRef::Index(i) => {
                return Err(format!(
                    "no input {i} (there are {})",
                    self.opts.inputs.len()
                ));
            }
        };
        let Some(src_channels) = self.sources[index].audio_channels() else {
            return Err(format!(
                "input '{}' has no audio",
                self.opts.inputs[index].id
            ));
        };
        let Some(a) = self.audio.as_mut() else {
            return Err("this session has no audio track".into());
        };
        let sel = match channels {
            Some(c) => ChannelSel(c),
            None => default_channels(&ChannelSel(Vec::new()), src_channels),
        };
        sel.pan_filter(src_channels)?;
        let position_t = self.media_next_t;
        if index != a.input {
            self.sources[a.input].set_want_audio(false);
            self.sources[index].set_want_audio(true);
            if index != 0 {
                self.sources[index]
                    .seek(secs(position_t))
                    .map_err(|e| e.to_string())?;
            } else {
                // The first input also feeds video: re-seek both to stay in step.
                self.sources[0]
                    .seek(secs(position_t))
                    .map_err(|e| e.to_string())?;
                if let Some(v) = self.video.as_mut() {
                    v.restart_at(self.frame.map_or(0, |f| f + 1));
                }
            }
            a.input = index;
        }
        a.filter.select(sel, src_channels)?;
        a.restart_at(position_t);
        tracing::info!(input = index, channels = ?a.filter.channels(), "audio selection changed");
        Ok(())
    }

    fn report_stats(&self) {
        let corrupt: u64 = self.sources.iter().map(Source::corrupt_packets).sum();
        let peak_rss_kb = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            });
        tracing::info!(
            video_frames = self.stats.video_frames,
            audio_frames = self.stats.audio_frames,
            packets = self.stats.packets,
            wakeups = self.stats.wakeups,
            corrupt_packets = corrupt,
            ?peak_rss_kb,
            "done"
        );
        control::emit(&Event::Stats {
            video_frames: self.stats.video_frames,
            audio_frames: self.stats.audio_frames,
            packets: self.stats.packets,
            bytes: self.stats.bytes,
            corrupt_packets: corrupt,
            peak_rss_kb,
            wakeups: self.stats.wakeups,
        });
    }
}

/// The configured selection, or for a default (empty) one the first two channels.
fn default_channels(configured: &ChannelSel, source_channels: u32) -> ChannelSel {
    if configured.0.is_empty() {
        ChannelSel::range(source_channels.min(2), 0)
    } else {
        configured.clone()
    }
}
