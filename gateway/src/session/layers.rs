//! A source's video layers: the simulcast layers of a WHIP publisher, each on its own ring
//! track; each viewer is sent one of them.
//!
//! Owns what is known of each layer while the source runs (picture size, measured bitrate),
//! written by whoever fills the ring and read by viewers choosing their layer, and the order
//! of quality. Choosing is the viewer's (`rtc/layering.rs`); no I/O here.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// How long a layer may send nothing before it counts as stopped (a sender drops its top
/// layers when its own bandwidth estimate falls).
pub const ACTIVE_WITHIN_US: u64 = 1_500_000;

/// One video layer of a source.
#[derive(Debug)]
pub struct Layer {
    /// The ring track its packets are on.
    pub track: u8,
    /// Its name: the publisher's RID (RFC 8851).
    pub rid: String,
    /// width << 32 | height, from its keyframes (0: none seen yet).
    size: AtomicU64,
    /// Bits/s over the last measuring window (0: none measured).
    bitrate: AtomicU64,
    /// Capture time of its last packet (µs, ring clock; 0: none yet).
    last_us: AtomicU64,
}

impl Layer {
    pub fn new(track: u8, rid: impl Into<String>) -> Self {
        Self {
            track,
            rid: rid.into(),
            size: AtomicU64::new(0),
            bitrate: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
        }
    }

    /// A layer whose size and bitrate are known from the start (a rendition's target).
    pub fn with(track: u8, rid: impl Into<String>, width: u32, height: u32, bitrate: u64) -> Self {
        let l = Self::new(track, rid);
        l.set_size(width, height);
        l.set_bitrate(bitrate);
        l
    }

    pub fn size(&self) -> (u32, u32) {
        let s = self.size.load(Ordering::Relaxed);
        ((s >> 32) as u32, s as u32)
    }

    pub fn set_size(&self, width: u32, height: u32) {
        self.size.store(
            (u64::from(width) << 32) | u64::from(height),
            Ordering::Relaxed,
        );
    }

    pub fn bitrate(&self) -> u64 {
        self.bitrate.load(Ordering::Relaxed)
    }

    pub fn set_bitrate(&self, bps: u64) {
        self.bitrate.store(bps, Ordering::Relaxed);
    }

    /// A packet of this layer was captured at `capture_us`.
    pub fn saw(&self, capture_us: u64) {
        self.last_us.store(capture_us, Ordering::Relaxed);
    }

    /// Whether it sent within [`ACTIVE_WITHIN_US`] of `now_us` (a layer never seen is not
    /// active; one whose packets are not tracked, a VOD rendition, always is).
    pub fn active(&self, now_us: u64) -> bool {
        match self.last_us.load(Ordering::Relaxed) {
            u64::MAX => true,
            0 => false,
            t => now_us.saturating_sub(t) < ACTIVE_WITHIN_US,
        }
    }

    /// Marks the layer as always active (its writer keeps every layer going).
    pub fn always_active(self) -> Self {
        self.last_us.store(u64::MAX, Ordering::Relaxed);
        self
    }

    /// What the API and the WHEP `layers` event say of it.
    pub fn info(&self, now_us: u64) -> LayerInfo {
        let (width, height) = self.size();
        let active = self.active(now_us);
        LayerInfo {
            rid: self.rid.clone(),
            width: (width > 0).then_some(width),
            height: (height > 0).then_some(height),
            bitrate: if active { self.bitrate() } else { 0 },
            active,
        }
    }

    /// Its place in the order of quality: picture size first, then bitrate.
    pub fn rank(&self) -> (u64, u64) {
        let (w, h) = self.size();
        (u64::from(w) * u64::from(h), self.bitrate())
    }
}

/// A layer as the API and the WHEP `layers` event show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    pub rid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Bits/s; 0 for a layer not sending (the WHEP layer extension's "inactive").
    pub bitrate: u64,
    pub active: bool,
}

/// The indexes of `layers` from the lowest quality to the highest. Layers are told apart by
/// what they carry, not by name: Chromium names its layers q, h, f from low to high, OBS
/// names them 0, 1, 2 from high to low.
pub fn by_quality(layers: &[Layer]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..layers.len()).collect();
    // Stable: layers not measured yet keep their offered order.
    order.sort_by_key(|&i| layers[i].rank());
    order
}

/// The track of the best layer (what one-track readers such as recordings take).
pub fn top_track(layers: &[Layer]) -> Option<u8> {
    by_quality(layers).last().map(|&i| layers[i].track)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_rank_by_what_they_carry_not_by_name() {
        // OBS: rid 0 is the full picture.
        let obs = [Layer::new(0, "0"), Layer::new(2, "1"), Layer::new(3, "2")];
        obs[0].set_size(1280, 720);
        obs[1].set_size(640, 360);
        obs[2].set_size(320, 180);
        assert_eq!(by_quality(&obs), vec![2, 1, 0]);
        assert_eq!(top_track(&obs), Some(0));
        // Same size: the higher bitrate is the better layer.
        let two = [Layer::new(0, "a"), Layer::new(2, "b")];
        two[0].set_bitrate(900_000);
        two[1].set_bitrate(300_000);
        assert_eq!(by_quality(&two), vec![1, 0]);
    }

    #[test]
    fn a_layer_is_active_while_it_sends() {
        let l = Layer::new(0, "f");
        assert!(!l.active(10_000_000), "never seen");
        l.saw(10_000_000);
        assert!(l.active(11_000_000));
        assert!(!l.active(12_000_000), "quiet for 2 s");
        let vod = Layer::with(0, "720p", 1280, 720, 2_000_000).always_active();
        assert!(vod.active(u64::MAX - 1));
        assert_eq!(
            vod.info(0),
            LayerInfo {
                rid: "720p".into(),
                width: Some(1280),
                height: Some(720),
                bitrate: 2_000_000,
                active: true
            }
        );
    }
}
