//! A datagram on the RTC port, as its receive loop sorts it before any peer sees it: STUN,
//! DTLS, RTP or RTCP at all (RFC 7983), and the ICE ufrag a STUN binding request routes by.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wisp::rtc::udp::demultiplexable(data);
    let _ = wisp::rtc::udp::stun_ufrag(data);
});
