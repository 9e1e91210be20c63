//! An SDP offer as a WHEP viewer or a WHIP publisher POSTs it: read, planned against what a
//! session serves (or takes), and answered by str0m with the gateway's settings, as
//! `whep::post` and `whip::post` do. No input may panic, hang or grow memory without bound.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use str0m::config::DtlsCert;
use wisp::config::{VideoCodec, VideoFormat};
use wisp::rtc::offer::{Offer, Served};
use wisp::rtc::answer::answer;

static CERT: LazyLock<DtlsCert> = LazyLock::new(|| {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate")
});

fuzz_target!(|data: &[u8]| {
    let candidates = ["127.0.0.1:8443".parse().expect("an address")];
    // A viewer of a transcoded session (H.264 or VP8) and of a live one sending H.264 high.
    if let Ok(offer) = Offer::parse(data) {
        let offer = offer.one_way("recvonly");
        for video in [
            VideoFormat::transcoded(VideoCodec::H264),
            VideoFormat::transcoded(VideoCodec::Vp8),
            VideoFormat::h264(0x64001f, true),
        ] {
            let _ = offer.first_video_format(&[VideoCodec::H264, VideoCodec::Vp8]);
            if let Ok(plan) = offer.plan_whep(Served { video, audio: true }) {
                let _ = answer(&offer, plan, video, &CERT, &candidates, false, false);
            }
        }
    }
    // A publisher.
    if let Ok(offer) = Offer::parse(data) {
        let offer = offer.one_way("sendonly");
        if let Ok((plan, video)) = offer.plan_whip(&[VideoCodec::H264, VideoCodec::Vp8]) {
            let _ = answer(&offer, plan, video, &CERT, &candidates, true, false);
        }
    }
});
