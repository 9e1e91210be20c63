//! One viewer's feed from its session's current source: the session's records handed to the
//! viewer's str0m `Rtc` with the viewer's own header fields (`fanout::TrackMap`), video from a
//! keyframe, and the catching up on a backlog. Plain state: the caller reads the ring and
//! drives str0m.

use std::sync::Arc;
use std::time::Instant;

use rtp_ring::{Flags, RtpHeaderView};
use str0m::Rtc;
use str0m::media::Pt;
use str0m::rtp::RtpWrite;

use crate::rtc::answer::Tracks;
use crate::session::fanout::{Catchup, Step, TrackMap, payload_range};
use crate::session::{Capture, ReadySource};

/// Records written between two polls of str0m, at most (the latency bookkeeping's capacity).
pub const DRAIN_BATCH: usize = 64;

/// What became of one ring record for one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Handed to str0m; `first` for the viewer's first packet.
    Sent { first: bool, video: bool },
    /// Dropped while the viewer waits for a keyframe of `track`; ask the source for one if
    /// told to.
    Waiting { request_keyframe: bool, track: u8 },
    /// Not for this viewer (a track it did not negotiate, or not RTP).
    Skipped,
}

/// One viewer's feed from the current source: per-track rewriting (`fanout::TrackMap`) and
/// the hand-over of shared payloads to str0m.
#[derive(Debug)]
pub struct Feed {
    ready: Option<Arc<ReadySource>>,
    video: Option<TrackMap>,
    audio: Option<TrackMap>,
    sent: u64,
    /// Set while the viewer catches up on a backlog (video only; audio resumes when live).
    catchup: Option<Catchup>,
    /// Capture times of the records written since [`Feed::take_written`], for the
    /// forwarding latency.
    written: Vec<u64>,
    /// Capture times of the live video frames whose last packet was written since
    /// [`Feed::take_frames`], for the ingest latency (sources stamped at the gateway's ingest).
    frames: Vec<u64>,
    /// The video track sent (a layer's, when the source has several), and the one to move
    /// to at its next keyframe.
    layer: Option<u8>,
    switch_to: Option<u8>,
    /// The backlog was left for the live edge while a switch waits: nothing more of the
    /// current layer goes out (see [`Feed::leave_backlog`]).
    leaving: bool,
    /// A switch happened since [`Feed::take_switched`].
    switched: bool,
}

impl Feed {
    /// Random starting sequence numbers and timestamps per track (RFC 3550 §5.1).
    pub fn new(tracks: &Tracks) -> Self {
        let mut rnd = [0u8; 12];
        let _ = rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty());
        let r16 = |i: usize| u16::from_be_bytes([rnd[i], rnd[i + 1]]) & 0x7fff;
        let r32 = |i: usize| u32::from_be_bytes([rnd[i], rnd[i + 1], rnd[i + 2], rnd[i + 3]]);
        Self {
            ready: None,
            video: tracks
                .video
                .as_ref()
                .map(|(_, pt, clock)| TrackMap::new(**pt, *clock, true, r16(0), r32(4))),
            audio: tracks
                .audio
                .as_ref()
                .map(|(_, pt, clock)| TrackMap::new(**pt, *clock, false, r16(2), r32(8))),
            sent: 0,
            catchup: None,
            written: Vec::with_capacity(DRAIN_BATCH + 1),
            frames: Vec::new(),
            layer: None,
            switch_to: None,
            leaving: false,
            switched: false,
        }
    }

    /// The video track sent (`None` before a source).
    pub fn layer(&self) -> Option<u8> {
        self.layer
    }

    /// The ring tracks this viewer reads (bit `t` for track `t`): its video layer, the one
    /// it switches to, and audio. Other layers' records are passed over uncopied.
    pub fn wanted_tracks(&self) -> u16 {
        let Some(ready) = &self.ready else {
            return 0;
        };
        // Only what the viewer negotiated a track for.
        let video = self.video.is_some();
        let audio = self.audio.is_some();
        [
            self.layer.filter(|_| video && !self.leaving),
            self.switch_to.filter(|_| video),
            ready.audio_track.filter(|_| audio),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t < 16)
        .fold(0, |m, t| m | 1 << t)
    }

    /// The layer waited for, if a switch is under way.
    pub fn pending_layer(&self) -> Option<u8> {
        self.switch_to
    }

    /// The layer whose keyframe the viewer's picture needs next: the one switched to once
    /// the backlog was left, else the current one.
    pub fn awaited_layer(&self) -> Option<u8> {
        match self.leaving {
            true => self.switch_to,
            false => self.layer,
        }
    }

    /// Sends the video layer on `track` from now on (a fresh start: the viewer waits for
    /// its keyframe anyway).
    pub fn set_layer(&mut self, track: u8) {
        self.layer = Some(track);
        self.switch_to = None;
        self.leaving = false;
    }

    /// Moves to the layer on `track` at its next keyframe; the current one goes on until
    /// then, so the picture does not stop (unless the backlog was left: see
    /// [`Feed::leave_backlog`]). `None` stays where it is.
    pub fn switch_to(&mut self, track: Option<u8>) {
        self.switch_to = track.filter(|t| Some(*t) != self.layer);
        if self.switch_to.is_none() {
            // Staying after all: the current layer resumes at its next keyframe.
            self.leaving = false;
        }
    }

    /// Leaves a backlog being caught up on (at `now_us`), for the pending switch's layer at
    /// its keyframe further on; until then nothing of the current layer goes out (after the
    /// jump it would not decode), and the picture holds. The video clock goes on by real
    /// time. The caller moves the reader.
    pub fn leave_backlog(&mut self, now_us: u64) {
        self.discontinuity();
        if let Some(v) = self.video.as_mut() {
            v.continue_clock_from(now_us);
        }
        self.leaving = self.switch_to.is_some();
    }

    /// Whether a switch happened since the last call.
    pub fn take_switched(&mut self) -> bool {
        std::mem::take(&mut self.switched)
    }

    /// The source followed, if any.
    pub fn ready(&self) -> Option<&Arc<ReadySource>> {
        self.ready.as_ref()
    }

    /// Follows a (new) source's video on `track` (the main one, or the main picture in the
    /// viewer's codec): timing re-anchors, and video waits for a keyframe.
    pub fn attach(&mut self, ready: Arc<ReadySource>, track: Option<u8>) {
        self.discontinuity();
        self.layer = track;
        self.switch_to = None;
        self.leaving = false;
        self.ready = Some(ready);
    }

    /// Sends what follows as a backlog, paced by `catchup` (see [`Feed::due`]).
    pub fn begin_catchup(&mut self, catchup: Catchup) {
        if let Some(v) = self.video.as_mut() {
            v.compress(catchup.speed());
        }
        self.catchup = Some(catchup);
    }

    /// Whether the viewer is still catching up on a backlog.
    pub fn catching_up(&self) -> bool {
        self.catchup.is_some()
    }

    /// When to write the record captured at `capture_us`: `None` now, else at the returned
    /// time (µs, `rtp_ring::now_us` clock). The first record that needs no wait ends the
    /// catching up.
    pub fn due(&mut self, capture_us: u64, now_us: u64) -> Option<u64> {
        let c = self.catchup?;
        if c.caught_up(capture_us) {
            self.end_catchup();
            return None;
        }
        let due = c.due_us(capture_us);
        (due > now_us).then_some(due)
    }

    /// The viewer has sent everything in the ring: it is live. Returns whether it was still
    /// catching up.
    pub fn reached_live_edge(&mut self) -> bool {
        let was = self.catchup.is_some();
        self.end_catchup();
        was
    }

    fn end_catchup(&mut self) {
        if self.catchup.take().is_some()
            && let Some(v) = self.video.as_mut()
        {
            v.end_compress();
        }
    }

    /// A break in what this viewer read (an overrun).
    pub fn discontinuity(&mut self) {
        self.end_catchup();
        if let Some(v) = self.video.as_mut() {
            v.discontinuity();
        }
        if let Some(a) = self.audio.as_mut() {
            a.discontinuity();
        }
    }

    /// Whether live records were written since [`Feed::take_written`].
    pub fn wrote(&self) -> bool {
        !self.written.is_empty() || !self.frames.is_empty()
    }

    /// The capture times of the live records written since the last call (a backlog sent
    /// while catching up is late on purpose and not among them).
    pub fn take_written(&mut self) -> std::vec::Drain<'_, u64> {
        self.written.drain(..)
    }

    /// The capture times of the live video frames finished since the last call, from a
    /// source stamped at the gateway's ingest (none otherwise).
    pub fn take_frames(&mut self) -> std::vec::Drain<'_, u64> {
        self.frames.drain(..)
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Writes one ring record to the viewer's `rtc` with the viewer's header fields, as
    /// sent at `now`.
    pub fn write(
        &mut self,
        rtc: &mut Rtc,
        tracks: &Tracks,
        meta: &rtp_ring::RecordMeta,
        packet: &[u8],
        now: Instant,
    ) -> Written {
        let Some(ready) = &self.ready else {
            return Written::Skipped;
        };
        let (map, mid, video) = if ready.is_video(meta.track) {
            if self.switch_to == Some(meta.track)
                && meta.flags.contains(Flags::KEYFRAME)
                && let Some(v) = self.video.as_mut()
            {
                v.new_layer();
                self.layer = self.switch_to.take();
                self.switched = true;
                self.leaving = false;
            }
            if Some(meta.track) != self.layer || self.leaving {
                return Written::Skipped;
            }
            match (&mut self.video, &tracks.video) {
                (Some(m), Some((mid, _, _))) => (m, *mid, true),
                _ => return Written::Skipped,
            }
        } else if Some(meta.track) == ready.audio_track {
            match (&mut self.audio, &tracks.audio) {
                // Sound cannot be sped up: audio joins once the viewer is live.
                _ if self.catchup.is_some() => return Written::Skipped,
                (Some(m), Some((mid, _, _))) => (m, *mid, false),
                _ => return Written::Skipped,
            }
        } else {
            return Written::Skipped;
        };
        let (Some(hdr), Some(payload)) = (RtpHeaderView::parse(packet), payload_range(packet))
        else {
            return Written::Skipped;
        };
        match map.step(&hdr, meta.flags, meta.capture_us) {
            Step::WaitKeyframe { request_keyframe } => Written::Waiting {
                request_keyframe,
                track: meta.track,
            },
            Step::Send {
                pt,
                seq,
                timestamp,
                marker,
            } => {
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    return Written::Skipped;
                };
                tx.write_rtp(
                    RtpWrite::new(
                        Pt::from(pt),
                        seq.into(),
                        timestamp,
                        now,
                        ready.payloads.get(meta.index, &packet[payload]),
                    )
                    .marker(marker)
                    .nackable(video),
                );
                self.sent += 1;
                if self.catchup.is_none() {
                    if ready.capture != Capture::Ingested {
                        self.written.push(meta.capture_us);
                    }
                    if video
                        && ready.capture != Capture::Written
                        && meta.flags.contains(Flags::END_OF_FRAME)
                    {
                        self.frames.push(meta.capture_us);
                    }
                }
                Written::Sent {
                    first: self.sent == 1,
                    video,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use str0m::media::{Mid, Pt};

    use super::*;

    #[test]
    fn a_viewer_catching_up_is_live_once_it_has_sent_everything_written() {
        let tracks = Tracks {
            video: Some((Mid::from("0"), Pt::from(96), 90_000)),
            audio: None,
        };
        let mut feed = Feed::new(&tracks);
        // A keyframe two seconds old: records are paced by their capture times, and one
        // stamped 100 ms before it was written (a transcoded live source's arrival stamp)
        // would not count as caught up yet.
        let now = 10_000_000;
        feed.begin_catchup(Catchup::new(now, now - 2_000_000).expect("old enough"));
        assert!(feed.due(now + 500_000 - 100_000, now + 500_000).is_some());
        assert!(feed.catching_up());
        // The ring drained: nothing written is left to send, so it is live.
        assert!(feed.reached_live_edge());
        assert!(!feed.catching_up());
        assert_eq!(feed.due(now + 600_000, now + 600_000), None);
        assert!(!feed.reached_live_edge(), "already live");
    }

    #[test]
    fn a_viewer_reads_its_layer_the_one_it_switches_to_and_audio() {
        let tracks = Tracks {
            video: Some((Mid::from("0"), Pt::from(96), 90_000)),
            audio: Some((Mid::from("1"), Pt::from(111), 48_000)),
        };
        let mut feed = Feed::new(&tracks);
        assert_eq!(feed.wanted_tracks(), 0, "no source yet");
        let ring = rtp_ring::Ring::create_memfd("t", 256 + 64 * 1536).expect("ring");
        let ready = Arc::new(ReadySource {
            ring,
            payloads: crate::session::fanout::PayloadCache::new(8),
            generation: 1,
            video_track: Some(0),
            audio_track: Some(1),
            layers: Vec::new(),
            alternates: vec![(
                crate::config::VideoFormat::transcoded(crate::config::VideoCodec::Vp8),
                4,
            )],
            width: 0,
            height: 0,
            fps: 0.0,
            duration: None,
            video_format: crate::config::VideoFormat::transcoded(crate::config::VideoCodec::H264),
            capture: crate::session::Capture::Written,
        });
        feed.attach(ready.clone(), Some(2));
        assert_eq!(feed.wanted_tracks(), 1 << 2 | 1 << 1);
        feed.switch_to(Some(3));
        assert_eq!(feed.wanted_tracks(), 1 << 2 | 1 << 3 | 1 << 1);
        // The main picture in another codec, on its own track.
        feed.attach(ready.clone(), Some(4));
        assert_eq!(feed.wanted_tracks(), 1 << 4 | 1 << 1);
        // A viewer that negotiated audio only reads audio, whatever the source has.
        let mut audio_only = Feed::new(&Tracks {
            video: None,
            audio: tracks.audio,
        });
        audio_only.attach(ready, Some(0));
        assert_eq!(audio_only.wanted_tracks(), 1 << 1);
    }
}
