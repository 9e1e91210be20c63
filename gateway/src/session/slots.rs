//! Transcoder slots: the gateway runs at most `limits.max_transcoders` transcoders. A VOD
//! session holds a slot from the admission of its first viewer until its transcoder has stopped
//! and no viewer is left.
//!
//! Owns, under one lock, who holds a slot, how many viewers each holder has, and whether its
//! transcoder runs: admission (a viewer's join) is decided here atomically, so two joins cannot
//! both take the last slot and a viewer cannot be admitted to a session whose slot is being
//! taken. When every slot is held and a session needs one, the holder whose transcoder has idled
//! the longest (running, no viewers) gives way: it is told through the callback it registered,
//! with the lease it loses, and its slot changes hands at once. Sans-IO: the caller passes the
//! time; starting and stopping processes is the session task's (`session/mod.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Tells a holder to stop its transcoder: the session taking the slot, and the lease lost.
type GiveWay = Box<dyn FnOnce(&str, u64) + Send>;

/// The gateway's transcoder slots.
pub struct TranscoderSlots {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: HashMap<u64, Holder>,
    /// Numbers each new holding, so a session can tell its current slot from one it lost.
    next_lease: u64,
}

struct Holder {
    lease: u64,
    /// Admitted viewers not gone yet.
    viewers: usize,
    /// Whether the session's transcoder runs (between `started` and `stopped`).
    running: bool,
    /// Since when a running transcoder has had no viewer: the longest idle gives way first.
    idle_since: Option<Instant>,
    give_way: GiveWay,
}

impl std::fmt::Debug for TranscoderSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscoderSlots")
            .field("max", &self.max)
            .field("held", &self.held())
            .finish()
    }
}

impl TranscoderSlots {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            state: Mutex::new(State::default()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.state.lock().expect("not poisoned").held.len()
    }

    /// Admits a viewer of session `id` (`name` says who, to a holder that gives way): its
    /// session keeps or takes a slot. With none free, the holder idle the longest gives way.
    /// `false`: every slot is held by a session with viewers (or one starting for them).
    pub fn admit(
        &self,
        id: u64,
        name: &str,
        give_way: impl FnOnce(&str, u64) + Send + 'static,
    ) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(h) = state.held.get_mut(&id) {
            h.viewers += 1;
            h.idle_since = None;
            return true;
        }
        if state.held.len() >= self.max {
            let victim = state
                .held
                .iter()
                .filter(|(_, h)| h.viewers == 0 && h.running)
                .filter_map(|(id, h)| h.idle_since.map(|t| (*id, t)))
                .min_by_key(|(_, t)| *t)
                .map(|(id, _)| id);
            let Some(holder) = victim.and_then(|v| state.held.remove(&v)) else {
                return false;
            };
            // Told under the lock: a viewer admitted to the victim after this takes a new
            // lease, and its join reaches the victim's task after the order to give way.
            (holder.give_way)(name, holder.lease);
        }
        state.next_lease += 1;
        let lease = state.next_lease;
        state.held.insert(
            id,
            Holder {
                lease,
                viewers: 1,
                running: false,
                idle_since: None,
                give_way: Box::new(give_way),
            },
        );
        true
    }

    /// A viewer of session `id` left. Its last one leaving starts the idle clock of a running
    /// transcoder, or frees the slot of a session whose transcoder is not running.
    pub fn leave(&self, id: u64, now: Instant) {
        let mut state = self.state.lock().expect("not poisoned");
        let Some(h) = state.held.get_mut(&id) else {
            return;
        };
        h.viewers = h.viewers.saturating_sub(1);
        if h.viewers > 0 {
            return;
        }
        if h.running {
            h.idle_since = Some(now);
        } else {
            state.held.remove(&id);
        }
    }

    /// Session `id` started its transcoder: the lease it runs under, or `None` if it holds no
    /// slot (its viewers all left before it started).
    pub fn started(&self, id: u64, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().expect("not poisoned");
        let h = state.held.get_mut(&id)?;
        h.running = true;
        h.idle_since = (h.viewers == 0).then_some(now);
        Some(h.lease)
    }

    /// Session `id`'s transcoder under `lease` stopped. The slot is freed unless viewers wait
    /// (they get the next transcoder under the same lease). A lease lost to another session is
    /// a no-op.
    pub fn stopped(&self, id: u64, lease: u64) {
        let mut state = self.state.lock().expect("not poisoned");
        let Some(h) = state.held.get_mut(&id).filter(|h| h.lease == lease) else {
            return;
        };
        h.running = false;
        h.idle_since = None;
        if h.viewers == 0 {
            state.held.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    type Told = Arc<Mutex<Vec<(u64, String, u64)>>>;

    fn tell(told: &Told, id: u64) -> impl FnOnce(&str, u64) + Send + 'static {
        let told = told.clone();
        move |taker: &str, lease| told.lock().unwrap().push((id, taker.to_string(), lease))
    }

    #[test]
    fn the_longest_idle_transcoder_gives_way_and_busy_ones_never_do() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let slots = TranscoderSlots::new(2);
        let told = Told::default();
        assert!(slots.admit(1, "a", tell(&told, 1)));
        assert!(slots.admit(2, "b", tell(&told, 2)));
        let (la, lb) = (slots.started(1, t0).unwrap(), slots.started(2, t0).unwrap());
        assert!(slots.admit(1, "a", tell(&told, 1)), "a second viewer of a");
        assert!(!slots.admit(3, "c", tell(&told, 3)), "both have viewers");
        slots.leave(2, later(1));
        slots.leave(1, later(2));
        assert!(slots.admit(3, "c", tell(&told, 3)), "a still has a viewer");
        slots.leave(1, later(3));
        assert_eq!(*told.lock().unwrap(), [(2, "c".to_string(), lb)], "b idled");
        // b's viewer comes back: a new lease; a is idle, so it gives way.
        assert!(slots.admit(2, "b", tell(&told, 2)));
        assert_eq!(told.lock().unwrap()[1], (1, "b".to_string(), la));
        slots.stopped(2, lb);
        assert_eq!(slots.held(), 2, "a lost lease stops nothing");
        assert!(!slots.admit(4, "d", tell(&told, 4)));
    }

    #[test]
    fn a_slot_is_kept_for_waiting_viewers_and_freed_when_nobody_needs_it() {
        let t0 = Instant::now();
        let slots = TranscoderSlots::new(1);
        let told = Told::default();
        assert!(slots.admit(1, "a", tell(&told, 1)));
        let lease = slots.started(1, t0).unwrap();
        // The transcoder stops (crash, idle) while a viewer waits: the slot stays for it.
        slots.stopped(1, lease);
        assert_eq!(slots.held(), 1);
        assert!(
            !slots.admit(2, "b", tell(&told, 2)),
            "a slot with a waiting viewer is not idle"
        );
        assert_eq!(
            slots.started(1, t0),
            Some(lease),
            "restarted under its lease"
        );
        slots.leave(1, t0);
        slots.stopped(1, lease);
        assert_eq!(slots.held(), 0, "no transcoder, no viewer: free");
        // Viewers that all leave before the transcoder starts free the slot too.
        assert!(slots.admit(2, "b", tell(&told, 2)));
        slots.leave(2, t0);
        assert_eq!(slots.held(), 0);
        assert_eq!(slots.started(2, t0), None);
        assert!(told.lock().unwrap().is_empty());
    }
}
