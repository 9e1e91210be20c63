//! Bytes on the RTMP port as the listener reads them: the handshake (C0, C1, C2), then chunks
//! through rml_rtmp's server session (connect, publish with its stream key, media messages
//! written as FLV tags). rml_rtmp asserts on some malformed commands; the gateway catches that
//! per connection, so a caught panic here is the listener's designed behaviour, not a crash.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

static QUIET: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libFuzzer's hook aborts on any panic, caught or not; an uncaught one still aborts (it
    // cannot unwind out of the fuzzer's callback).
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = wisp::ingest::rtmp::read_as_listener(data);
});
