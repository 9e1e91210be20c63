//! A message on a viewer's `control` data channel, as the gateway reads it
//! (`channel::Steering`): size limit, JSON, id, op, arguments, scope checks, rate limit.
#![no_main]

use std::collections::BTreeSet;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wisp::auth::{Grant, Scope};
use wisp::rtc::channel::Steering;

fuzz_target!(|data: &[u8]| {
    let grant = Grant {
        sub: Some("fuzz".into()),
        sessions: vec!["demo".into()],
        scopes: BTreeSet::from([Scope::View, Scope::Playback, Scope::Chat]),
        exp: 2_000_000_000,
    };
    let mut steering = Steering::new(Instant::now());
    // The same bytes several times: the rate limit's path too.
    for _ in 0..3 {
        let _ = steering.on_message(data, Instant::now(), &grant, "demo", 1_800_000_000);
    }
});
