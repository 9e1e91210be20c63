//! A trickle-ICE or ICE-restart PATCH body (`application/trickle-ice-sdpfrag`) with its
//! `If-Match`, applied to a viewer's ICE session as `resource.rs` does: the first line of the
//! input is the If-Match value, the rest the fragment.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use str0m::config::DtlsCert;
use wisp::config::{VideoCodec, VideoFormat};
use wisp::rtc::offer::{Fragment, Offer, Served, valid_ice_credentials};
use wisp::rtc::answer::answer;
use wisp::rtc::ice::IceSession;

static CERT: LazyLock<DtlsCert> = LazyLock::new(|| {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate")
});

/// A browser-shaped WHEP offer the session is answered from.
const OFFER: &str = include_str!("../seeds/chromium-whep-offer.sdp");

fuzz_target!(|data: &[u8]| {
    let (if_match, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let Ok(fragment) = Fragment::parse(body) else {
        return;
    };
    if let (Some(u), Some(p)) = (&fragment.ufrag, &fragment.pwd) {
        let _ = valid_ice_credentials(u, p);
    }
    let offer = Offer::parse(OFFER.as_bytes()).expect("the seed offer parses");
    let video = VideoFormat::transcoded(VideoCodec::H264);
    let plan = offer
        .plan_whep(Served { video, audio: true })
        .expect("the seed offer plans");
    let candidates = ["127.0.0.1:8443".parse().expect("an address")];
    let mut answered =
        answer(&offer, plan, video, &CERT, &candidates, false, false).expect("the seed offer answers");
    let mut ice = IceSession {
        offer,
        ufrag: answered.ufrag,
        etag: "\"0123456789abcdef0123456789abcdef\"".into(),
    };
    let if_match = std::str::from_utf8(if_match).ok().map(str::trim);
    let _ = ice.patch(&mut answered.rtc, fragment, if_match);
});
