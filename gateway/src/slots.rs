//! Transcoder slots: the gateway runs at most `limits.max_transcoders` transcoders, and a VOD
//! session holds a slot from its transcoder's start until it stops (through restarts).
//!
//! Owns who holds a slot and which holders are idle (no viewers, waiting out the idle
//! timeout). When every slot is held and a session with a viewer needs one, the holder idle the
//! longest gives way: it is told through the callback it registered, and its slot changes hands
//! at once. It does not start or stop processes (the session task does, `session.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Tells a holder to stop its transcoder; the argument names the session taking the slot.
type GiveWay = Box<dyn FnOnce(&str) + Send>;

/// The gateway's transcoder slots.
pub struct TranscoderSlots {
    max: usize,
    held: Mutex<HashMap<u64, Holder>>,
}

struct Holder {
    /// Since when the holder has had no viewer (`None`: it has viewers).
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
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.lock().expect("not poisoned").len()
    }

    /// Whether session `id` holds a slot.
    pub fn holds(&self, id: u64) -> bool {
        self.held.lock().expect("not poisoned").contains_key(&id)
    }

    /// Whether a session could get a slot now: one is free, or an idle holder would give way.
    pub fn available(&self) -> bool {
        let held = self.held.lock().expect("not poisoned");
        held.len() < self.max || held.values().any(|h| h.idle_since.is_some())
    }

    /// Takes a slot for session `id` (`name` says who, to the holder that gives way). Holding
    /// one already is fine. With none free, the holder idle the longest is told to give way and
    /// its slot is taken. `false`: every slot is held by a session with viewers.
    pub fn take(&self, id: u64, name: &str, give_way: impl FnOnce(&str) + Send + 'static) -> bool {
        let mut held = self.held.lock().expect("not poisoned");
        if held.contains_key(&id) {
            return true;
        }
        if held.len() >= self.max {
            let victim = held
                .iter()
                .filter_map(|(id, h)| h.idle_since.map(|t| (*id, t)))
                .min_by_key(|(_, t)| *t)
                .map(|(id, _)| id);
            let Some(holder) = victim.and_then(|v| held.remove(&v)) else {
                return false;
            };
            // Told under the lock: a viewer joining the victim after this sees it holds no
            // slot, and its join reaches the victim's task after the order to give way.
            (holder.give_way)(name);
        }
        held.insert(
            id,
            Holder {
                idle_since: None,
                give_way: Box::new(give_way),
            },
        );
        true
    }

    /// Session `id` has no viewer now (`true`) or has one again (`false`).
    pub fn set_idle(&self, id: u64, idle: bool) {
        if let Some(h) = self.held.lock().expect("not poisoned").get_mut(&id) {
            h.idle_since = match (idle, h.idle_since) {
                (true, None) => Some(Instant::now()),
                (true, since) => since,
                (false, _) => None,
            };
        }
    }

    /// Session `id` no longer runs a transcoder (a no-op if its slot was taken from it).
    pub fn release(&self, id: u64) {
        self.held.lock().expect("not poisoned").remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_longest_idle_holder_gives_way_and_busy_ones_never_do() {
        let slots = TranscoderSlots::new(2);
        let told = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
        let tell = |id: u64| {
            let told = told.clone();
            move |taker: &str| told.lock().unwrap().push((id, taker.to_string()))
        };
        assert!(slots.take(1, "a", tell(1)));
        assert!(slots.take(2, "b", tell(2)));
        assert!(
            slots.take(1, "a", tell(1)),
            "a holder takes its own slot again"
        );
        assert!(!slots.available());
        assert!(!slots.take(3, "c", tell(3)), "both have viewers");
        slots.set_idle(2, true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        slots.set_idle(1, true);
        assert!(slots.available());
        assert!(slots.take(3, "c", tell(3)));
        assert_eq!(
            *told.lock().unwrap(),
            [(2, "c".to_string())],
            "b idled first"
        );
        assert!(!slots.holds(2) && slots.holds(3) && slots.holds(1));
        slots.set_idle(1, false);
        assert!(!slots.take(2, "b", tell(2)), "a has a viewer again");
        slots.release(3);
        assert!(slots.take(2, "b", tell(2)));
        assert_eq!(slots.held(), 2);
    }
}
