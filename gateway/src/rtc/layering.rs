//! Which of a source's video layers one viewer gets: the one it pinned, else the best that its
//! window asks for and its bandwidth estimate carries. Plain state on a caller's clock, no I/O:
//! the viewer (`rtc/viewer.rs`) feeds it the layers and str0m's estimate and carries out the
//! switch at the new layer's keyframe (`rtc/feed.rs`).
//!
//! Hysteresis: down once the current layer has not fitted the estimate for [`DOWN_HOLD`];
//! up, to the best layer that fits with room to spare ([`UP_SHARE`]), once that held for
//! [`UP_HOLD`] and not within [`UP_AFTER_DOWN`] of a move down, so a viewer on a path near a
//! layer's rate does not flap. Layers' rates are smoothed where they are measured
//! (`rtc/publisher.rs`), so a keyframe's burst is not a fall. A layer whose rate is not known
//! yet is never moved up to on the estimate's word.
//!
//! Loss: str0m's estimate can stay above a layer that a lossy or tail-dropping path does not
//! carry (its delay signal flattens once a queue is full). So the loss str0m measures from
//! the viewer's transport-wide feedback is a signal of its own: a layer losing
//! [`LOSS_DOWN`] or more in [`LOSS_REPORTS`] reports in a row does not fit whatever the
//! estimate says (the first such report stops the padding, so the next one measures the
//! layer alone), no move
//! up is made within [`CLEAN_FOR`] of a report over [`LOSS_CLEAN`], and while the path
//! loses, nothing is padded.

use std::time::{Duration, Instant};

use serde::Serialize;

/// A higher layer is taken when its bitrate is at most this share of the estimate (the rest
/// is audio, retransmissions and the estimate's own noise).
pub const UP_SHARE: f64 = 0.9;
/// The current layer is kept while its bitrate is at most the estimate.
pub const KEEP_SHARE: f64 = 1.0;
/// How long the current layer must not fit before the viewer moves down.
pub const DOWN_HOLD: Duration = Duration::from_millis(500);
/// How long a higher layer must keep fitting before the viewer moves up.
pub const UP_HOLD: Duration = Duration::from_millis(1000);
/// No move up this soon after a move down.
pub const UP_AFTER_DOWN: Duration = Duration::from_secs(4);

/// A share of packets lost (str0m's egress loss over a second) at which the current layer
/// does not fit.
pub const LOSS_DOWN: f32 = 0.10;
/// Loss reports in a row at [`LOSS_DOWN`] or more before the viewer moves down: one bad
/// second (a keyframe into a shallow queue, a radio's hiccup) is not enough.
pub const LOSS_REPORTS: u8 = 2;
/// Loss up to this share is the path's noise.
pub const LOSS_CLEAN: f32 = 0.02;
/// No move up, and no padding, until the loss has been clean this long.
pub const CLEAN_FOR: Duration = Duration::from_secs(2);
/// Loss reported this soon after a switch was decided may be the old layer's: not a reason
/// to move down again.
pub const LOSS_SETTLE: Duration = Duration::from_millis(1500);

/// A layer the viewer could get, as the chooser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub track: u8,
    pub rid: String,
    /// 0: not known yet.
    pub width: u32,
    pub height: u32,
    /// Bits/s; 0: not measured yet.
    pub bitrate: u64,
}

/// What the viewer asked for (`{"op":"layer"}`, the WHEP layer extension). The default is
/// automatic with no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Wish {
    /// A layer pinned by name; automatic if `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// The largest picture it wants (its window, its decoder's limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
}

impl Wish {
    pub fn is_auto(&self) -> bool {
        self.rid.is_none()
    }
}

/// Why the chooser picked what it did (logged and counted with the switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first layer, or the current one stopped.
    Start,
    Pinned,
    /// The estimate fell below the current layer's rate.
    Down,
    /// The path lost too much of the current layer.
    Lossy,
    /// The estimate has carried a higher layer for a while.
    Up,
    /// The viewer's size limit or pin changed.
    Asked,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Pinned => "pinned",
            Reason::Down => "bandwidth down",
            Reason::Lossy => "loss",
            Reason::Up => "bandwidth up",
            Reason::Asked => "asked",
        }
    }
}

/// One viewer's layer choice over time.
#[derive(Debug, Default)]
pub struct Chooser {
    wish: Wish,
    /// The wish changed since the last choice: act at once.
    asked: bool,
    last_down: Option<Instant>,
    /// A higher layer that fits, and since when.
    up_since: Option<(u8, Instant)>,
    /// Since when the current layer does not fit.
    down_since: Option<Instant>,
    /// Loss reports in a row at [`LOSS_DOWN`] or more.
    lossy_reports: u8,
    /// The last loss report over [`LOSS_CLEAN`].
    last_loss: Option<Instant>,
    /// When the last switch was decided or made.
    last_switch: Option<Instant>,
}

impl Chooser {
    pub fn wish(&self) -> &Wish {
        &self.wish
    }

    /// The viewer's new wish; the next choice follows it without waiting for a layer to
    /// fit the estimate's word longer (a move up still needs the estimate to carry it).
    pub fn set_wish(&mut self, wish: Wish) {
        self.wish = wish;
        self.asked = true;
        self.up_since = None;
    }

    /// str0m's egress loss over the last second (a share, 0 to 1). Reports within
    /// [`LOSS_SETTLE`] of a switch, or while one waits for its keyframe (`switching`), may be
    /// the old layer's: they count for holding moves up, not for moving down.
    pub fn note_loss(&mut self, loss: f32, switching: bool, now: Instant) {
        if loss > LOSS_CLEAN {
            self.last_loss = Some(now);
        }
        let settling = switching
            || self
                .last_switch
                .is_some_and(|s| now.duration_since(s) < LOSS_SETTLE);
        if loss >= LOSS_DOWN && !settling {
            self.lossy_reports = self.lossy_reports.saturating_add(1);
        } else {
            self.lossy_reports = 0;
        }
    }

    /// A switch was made (the new layer's keyframe went out): loss is the new layer's from
    /// [`LOSS_SETTLE`] on.
    pub fn switched(&mut self, now: Instant) {
        self.last_switch = Some(now);
        self.lossy_reports = 0;
    }

    /// The path has lost more than its noise within [`CLEAN_FOR`].
    pub fn losing(&self, now: Instant) -> bool {
        self.last_loss
            .is_some_and(|l| now.duration_since(l) < CLEAN_FOR)
    }

    /// The layer (track) the viewer should get, with why, if it is not `current`.
    /// `layers` are the active ones, lowest quality first; `estimate` is the viewer's
    /// bandwidth estimate in bits/s, if there is one.
    pub fn choose(
        &mut self,
        layers: &[Candidate],
        current: Option<u8>,
        estimate: Option<u64>,
        now: Instant,
    ) -> Option<(u8, Reason)> {
        let asked = std::mem::take(&mut self.asked);
        let pick = self.pick(layers, current, estimate, now, asked)?;
        let change = Some(pick.0) != current;
        if change {
            self.switched(now);
        }
        change.then_some(pick)
    }

    /// The layers the viewer may get: the pinned one (if it is there), else those within
    /// its size limits (the lowest if none is).
    pub fn eligible<'a>(&self, layers: &'a [Candidate]) -> Vec<&'a Candidate> {
        if let Some(rid) = &self.wish.rid
            && let Some(l) = layers.iter().find(|l| &l.rid == rid)
        {
            return vec![l];
        }
        let within = |l: &&Candidate| {
            self.wish.max_width.is_none_or(|m| l.width <= m)
                && self.wish.max_height.is_none_or(|m| l.height <= m)
        };
        let mut eligible: Vec<&Candidate> = layers.iter().filter(within).collect();
        if eligible.is_empty()
            && let Some(l) = layers.first()
        {
            eligible.push(l);
        }
        eligible
    }

    fn pick(
        &mut self,
        layers: &[Candidate],
        current: Option<u8>,
        estimate: Option<u64>,
        now: Instant,
        asked: bool,
    ) -> Option<(u8, Reason)> {
        layers.first()?;
        if let Some(rid) = &self.wish.rid
            && let Some(l) = layers.iter().find(|l| &l.rid == rid)
        {
            self.up_since = None;
            self.down_since = None;
            return Some((l.track, Reason::Pinned));
        }
        let eligible = self.eligible(layers);
        let start = if asked { Reason::Asked } else { Reason::Start };
        let Some(estimate) = estimate else {
            self.down_since = None;
            // No estimate (yet): the best the viewer asked for.
            let top = eligible.last().expect("not empty");
            return Some((top.track, start));
        };
        let fits = |l: &Candidate, share: f64| l.bitrate as f64 <= estimate as f64 * share;
        // A rate not measured yet does not fit: the estimate cannot vouch for it.
        let best_up = eligible
            .iter()
            .rposition(|l| l.bitrate > 0 && fits(l, UP_SHARE))
            .unwrap_or(0);
        let Some(cur) = eligible.iter().position(|l| Some(l.track) == current) else {
            // Nothing yet, or the current layer stopped or is no longer wanted.
            self.up_since = None;
            self.down_since = None;
            return Some((eligible[best_up].track, start));
        };
        let lost = self.lossy_reports >= LOSS_REPORTS;
        if lost && cur > 0 {
            // The path does not carry it, whatever the estimate says: one layer down.
            self.up_since = None;
            self.down_since = None;
            self.last_down = Some(now);
            let to = best_up.min(cur - 1);
            return Some((eligible[to].track, Reason::Lossy));
        }
        if !fits(eligible[cur], KEEP_SHARE) && cur > 0 {
            self.up_since = None;
            let since = *self.down_since.get_or_insert(now);
            if now.duration_since(since) < DOWN_HOLD {
                return Some((eligible[cur].track, Reason::Start));
            }
            self.down_since = None;
            self.last_down = Some(now);
            let to = best_up.min(cur - 1);
            return Some((eligible[to].track, Reason::Down));
        }
        self.down_since = None;
        if best_up > cur && !self.losing(now) {
            let target = eligible[best_up].track;
            let since = match self.up_since {
                Some((t, at)) if t == target => at,
                _ => {
                    self.up_since = Some((target, now));
                    now
                }
            };
            let settled = self
                .last_down
                .is_none_or(|d| now.duration_since(d) >= UP_AFTER_DOWN);
            if now.duration_since(since) >= UP_HOLD && settled {
                self.up_since = None;
                return Some((target, Reason::Up));
            }
        } else {
            self.up_since = None;
        }
        Some((eligible[cur].track, Reason::Start))
    }
}

/// The rates str0m's estimator should work toward for a viewer on `current`, among the
/// layers it may get ([`Chooser::eligible`]): below the top, send as much as the next layer
/// up would (`minimum`: padding fills up to it, within the estimate) and probe for the room a
/// move there needs (`desired`), so that an estimate held down by sending little grows as
/// soon as the path allows. On its top layer (or a pinned one), no padding, and probes for
/// the room to stay. While the path is `losing` ([`Chooser::losing`]), no padding either:
/// it would only crowd out the layer it does carry.
pub fn targets(layers: &[&Candidate], current: Option<u8>, losing: bool) -> Option<(u64, u64)> {
    let cur = layers.iter().position(|l| Some(l.track) == current)?;
    let now = layers[cur].bitrate;
    match layers.get(cur + 1) {
        Some(next) => {
            let next = next.bitrate.max(now);
            let desired = (next as f64 / UP_SHARE).round() as u64;
            Some((if losing { 0 } else { next }, desired))
        }
        // On top: no padding (it would double what a viewer on a good path is sent), probes
        // only.
        None => Some((0, (now as f64 / UP_SHARE).round() as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<Candidate> {
        [
            (3, "q", 320, 180, 150_000),
            (2, "h", 640, 360, 500_000),
            (0, "f", 1280, 720, 1_500_000),
        ]
        .into_iter()
        .map(|(track, rid, width, height, bitrate)| Candidate {
            track,
            rid: rid.into(),
            width,
            height,
            bitrate,
        })
        .collect()
    }

    #[test]
    fn without_an_estimate_the_best_layer_the_window_takes() {
        let t0 = Instant::now();
        let mut c = Chooser::default();
        assert_eq!(
            c.choose(&ladder(), None, None, t0),
            Some((0, Reason::Start))
        );
        assert_eq!(c.choose(&ladder(), Some(0), None, t0), None, "no change");
        c.set_wish(Wish {
            max_height: Some(400),
            ..Wish::default()
        });
        assert_eq!(
            c.choose(&ladder(), Some(0), None, t0),
            Some((2, Reason::Asked))
        );
        c.set_wish(Wish {
            max_height: Some(100),
            ..Wish::default()
        });
        assert_eq!(
            c.choose(&ladder(), Some(2), None, t0).map(|c| c.0),
            Some(3),
            "nothing fits: the lowest"
        );
        assert_eq!(c.choose(&[], Some(2), None, t0), None);
    }

    #[test]
    fn a_pinned_layer_is_kept_whatever_the_estimate() {
        let t0 = Instant::now();
        let mut c = Chooser::default();
        c.set_wish(Wish {
            rid: Some("h".into()),
            ..Wish::default()
        });
        assert_eq!(
            c.choose(&ladder(), Some(0), Some(100_000), t0),
            Some((2, Reason::Pinned))
        );
        assert_eq!(c.choose(&ladder(), Some(2), Some(50_000_000), t0), None);
        // A pinned layer that stopped sending: automatic until it is back.
        let without_h: Vec<Candidate> = ladder().into_iter().filter(|l| l.rid != "h").collect();
        assert_eq!(
            c.choose(&without_h, Some(2), Some(50_000_000), t0),
            Some((0, Reason::Start))
        );
    }

    #[test]
    fn down_and_up_after_holds_and_never_up_straight_after_a_fall() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Chooser::default();
        // 3 Mb/s carries the top layer.
        assert_eq!(
            c.choose(&ladder(), None, Some(3_000_000), s(0))
                .map(|c| c.0),
            Some(0)
        );
        // The path falls to 450 kb/s: once that held for half a second, straight down to
        // what fits with room (q). A moment's dip is not a fall.
        assert_eq!(c.choose(&ladder(), Some(0), Some(450_000), s(20)), None);
        assert_eq!(c.choose(&ladder(), Some(0), Some(3_000_000), s(60)), None);
        assert_eq!(c.choose(&ladder(), Some(0), Some(450_000), s(100)), None);
        assert_eq!(
            c.choose(&ladder(), Some(0), Some(450_000), s(600)),
            Some((3, Reason::Down))
        );
        // Between the shares, nothing moves: h fits the keep share but not the up share.
        assert_eq!(c.choose(&ladder(), Some(3), Some(520_000), s(3000)), None);
        // The path is back: up once it held for 1.5 s, and 4 s after the fall.
        assert_eq!(c.choose(&ladder(), Some(3), Some(3_000_000), s(3200)), None);
        assert_eq!(
            c.choose(&ladder(), Some(3), Some(3_000_000), s(4000)),
            None,
            "not held long enough, too soon after the fall"
        );
        assert_eq!(
            c.choose(&ladder(), Some(3), Some(3_000_000), s(4800)),
            Some((0, Reason::Up))
        );
        // A dip that still carries the layer changes nothing.
        assert_eq!(c.choose(&ladder(), Some(0), Some(1_600_000), s(9000)), None);
        // An estimate that wavers around the next layer's rate resets the hold.
        let mut c = Chooser::default();
        c.choose(&ladder(), None, Some(200_000), s(0));
        assert_eq!(c.choose(&ladder(), Some(3), Some(700_000), s(5000)), None);
        assert_eq!(c.choose(&ladder(), Some(3), Some(500_000), s(6000)), None);
        assert_eq!(
            c.choose(&ladder(), Some(3), Some(700_000), s(6600)),
            None,
            "hold restarted"
        );
        assert_eq!(
            c.choose(&ladder(), Some(3), Some(700_000), s(8100)),
            Some((2, Reason::Up))
        );
    }

    #[test]
    fn a_layer_whose_rate_is_unknown_is_not_moved_up_to() {
        let t0 = Instant::now();
        let mut l = ladder();
        l[2].bitrate = 0;
        let mut c = Chooser::default();
        assert_eq!(
            c.choose(&l, None, Some(5_000_000), t0).map(|c| c.0),
            Some(2)
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(c.choose(&l, Some(2), Some(5_000_000), later), None);
    }

    #[test]
    fn the_estimator_probes_toward_the_next_layer() {
        let all = ladder();
        let all: Vec<&Candidate> = all.iter().collect();
        assert_eq!(targets(&all, Some(3), false), Some((500_000, 555_556)));
        assert_eq!(
            targets(&all, Some(3), true),
            Some((0, 555_556)),
            "a losing path: probes, no padding"
        );
        assert_eq!(
            targets(&all, Some(0), false),
            Some((0, 1_666_667)),
            "on top: room to stay, and no padding"
        );
        assert_eq!(targets(&all, Some(9), false), None);
        // Pinned to the lowest: no padding toward layers it will not get.
        let mut c = Chooser::default();
        c.set_wish(Wish {
            rid: Some("q".into()),
            ..Wish::default()
        });
        let l = ladder();
        assert_eq!(targets(&c.eligible(&l), Some(3), false), Some((0, 166_667)));
    }

    #[test]
    fn a_lossy_path_moves_down_whatever_the_estimate_and_holds_up_until_clean() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Chooser::default();
        let est = Some(900_000);
        assert_eq!(
            c.choose(&ladder(), None, est, s(0)).map(|c| c.0),
            Some(2),
            "h fits 900 kb/s"
        );
        // Settling after the start: a lossy report then is not counted, nor one while a
        // switch waits for its keyframe.
        c.note_loss(0.3, false, s(1000));
        c.note_loss(0.3, true, s(2000));
        assert_eq!(c.choose(&ladder(), Some(2), est, s(2100)), None);
        // One bad second is not enough, however long the next report takes; a second one
        // in a row is.
        c.note_loss(0.25, false, s(3000));
        assert_eq!(c.choose(&ladder(), Some(2), est, s(3950)), None);
        assert_eq!(c.choose(&ladder(), Some(2), est, s(4500)), None);
        c.note_loss(0.05, false, s(4600));
        c.note_loss(0.25, false, s(5600));
        assert_eq!(c.choose(&ladder(), Some(2), est, s(6550)), None);
        c.note_loss(0.2, false, s(6600));
        assert_eq!(
            c.choose(&ladder(), Some(2), est, s(6600)),
            Some((3, Reason::Lossy))
        );
        // The estimate carries h again, but the path lost within 2 s: no move up, and no
        // padding.
        c.note_loss(0.04, false, s(10_000));
        assert!(c.losing(s(10_500)));
        assert_eq!(c.choose(&ladder(), Some(3), est, s(11_000)), None);
        assert_eq!(c.choose(&ladder(), Some(3), est, s(11_900)), None);
        // Clean for 2 s, and the estimate held for 1 s: up.
        c.note_loss(0.0, false, s(11_000));
        c.note_loss(0.01, false, s(12_000));
        assert!(!c.losing(s(12_000)));
        assert_eq!(c.choose(&ladder(), Some(3), est, s(12_000)), None);
        assert_eq!(
            c.choose(&ladder(), Some(3), est, s(13_000)),
            Some((2, Reason::Up))
        );
        // On the lowest layer, loss has nowhere to go.
        let mut c = Chooser::default();
        c.choose(&ladder(), None, Some(200_000), s(0));
        c.note_loss(0.5, false, s(3000));
        c.note_loss(0.5, false, s(4000));
        assert_eq!(c.choose(&ladder(), Some(3), Some(200_000), s(4000)), None);
    }
}
