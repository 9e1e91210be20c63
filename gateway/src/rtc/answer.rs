//! The SDP answer to a viewer's or publisher's offer: a str0m `Rtc` made for it (ICE-lite,
//! RTP mode, the session's codecs only, the shared DTLS certificate), the answer with the
//! touches str0m does not make, and the media sections it negotiated.

use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::media::{Mid, Pt};
use str0m::rtp::Extension;
use str0m::{Candidate, Rtc, RtcConfig};

use crate::config::{VideoCodec, VideoFormat};
use crate::rtc::offer::{Kind, Offer, Plan};

/// Packets str0m may queue between write and poll, per viewer (a keyframe's worth).
const SEND_BUFFER_VIDEO: usize = 256;
/// Audio is not retransmitted; str0m needs a little room between write and poll.
const SEND_BUFFER_AUDIO: usize = 16;

/// Why an offer could not be answered. The client's.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("str0m refused the offer: {0}")]
    Refused(String),
    #[error("the offer has nothing in common with this session: {0}")]
    NothingInCommon(String),
}

/// The result of answering an offer: the answer and what the viewer or publisher needs.
#[derive(Debug)]
pub struct Answered {
    pub answer: String,
    pub rtc: Rtc,
    pub ufrag: String,
    pub tracks: Tracks,
}

/// The viewer's media sections and payload types, read from the answer.
#[derive(Debug, Clone, Default)]
pub struct Tracks {
    pub video: Option<(Mid, Pt, u32)>,
    pub audio: Option<(Mid, Pt, u32)>,
}

/// A viewer's send bandwidth estimate starts here, before feedback says more: a middle
/// layer's worth. A viewer on a good path moves up within a couple of seconds; one on a
/// poor path starting on a 2 Mb/s layer would get no whole keyframe until it moved down.
pub const INITIAL_ESTIMATE_BPS: u64 = 2_000_000;

/// Builds an `Rtc` for one viewer (or, with `publisher`, a WHIP publisher) and answers its
/// offer. With `bwe`, a viewer's send bandwidth is estimated (transport-wide CC feedback,
/// str0m's estimator and pacer): for sessions with layers to choose from.
pub fn answer(
    offer: &Offer,
    plan: Plan,
    video: VideoFormat,
    cert: &DtlsCert,
    candidates: &[std::net::SocketAddr],
    publisher: bool,
    bwe: bool,
) -> Result<Answered, AnswerError> {
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .set_dtls_cert(cert.clone())
        // Only the MID extension (BUNDLE demultiplexing). Without bandwidth estimation,
        // transport-wide CC would only cost: a sequence number per packet, and a feedback
        // packet every ~50 ms from every viewer to decrypt and parse.
        .clear_extension_map()
        .set_extension(4, Extension::RtpMid)
        // str0m's queue between write and poll (default 1000 packets per viewer).
        .set_send_buffer_video(SEND_BUFFER_VIDEO)
        .set_send_buffer_audio(SEND_BUFFER_AUDIO);
    if publisher {
        // A publisher's sender-side bandwidth estimation (Chromium's) works from transport-wide
        // CC feedback, which str0m sends; without it, it has only receiver reports' loss.
        config = config.set_extension(3, Extension::TransportSequenceNumber);
        // Simulcast layers are told apart by RID (RFC 8852); their repair streams by
        // repaired RID.
        config = config
            .set_extension(10, Extension::RtpStreamId)
            .set_extension(11, Extension::RepairedRtpStreamId);
    }
    if bwe && !publisher {
        // Layer choice follows the estimate; without layers it would only cost (above).
        config = config
            .set_extension(3, Extension::TransportSequenceNumber)
            .enable_bwe(Some(str0m::bwe::Bitrate::bps(INITIAL_ESTIMATE_BPS)));
    }
    if !publisher {
        // A viewer's round-trip time (from its receiver reports) sizes its resend cache; the
        // loss each second steers its layer (`rtc/layering.rs`).
        let every = if bwe {
            crate::rtc::viewer::LOSS_INTERVAL
        } else {
            crate::rtc::viewer::STATS_INTERVAL
        };
        config = config.set_stats_interval(Some(every));
    }
    if plan.audio {
        config = config.enable_opus(true, false);
    }
    if plan.video {
        match video.codec {
            // Payload types are placeholders: accept_offer renumbers to the offer's. A viewer
            // always gets packetization mode 1 (it carries single NAL units too); a publisher
            // gets the mode it offered.
            VideoCodec::H264 => {
                let mode1 = video.mode1 || !publisher;
                config.codec_config().add_h264(
                    102.into(),
                    Some(103.into()),
                    mode1,
                    video.profile_level_id,
                );
            }
            VideoCodec::Vp8 => config = config.enable_vp8(true),
        }
    }
    let mut rtc = config.build(Instant::now());
    for addr in candidates {
        match Candidate::host(*addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::warn!(%addr, "unusable local candidate: {e}"),
        }
    }
    let answer = accept_offer(&mut rtc, &offer.text).map_err(AnswerError::Refused)?;
    let answer = finish_answer(&answer);
    let tracks = tracks_of(&answer);
    if (plan.video && tracks.video.is_none()) || (plan.audio && tracks.audio.is_none()) {
        return Err(AnswerError::NothingInCommon(format!(
            "no common {} format",
            if plan.video && tracks.video.is_none() {
                video.describe()
            } else {
                "opus".into()
            }
        )));
    }
    let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
    Ok(Answered {
        answer,
        rtc,
        ufrag,
        tracks,
    })
}

/// Has `rtc` accept the offer `text`; the answer, or why not. str0m has asserted on offers
/// the gateway's own checks let through (see `rtc/offer.rs`, found by fuzzing): a panic in it
/// refuses this offer instead of dropping the client's connection with no answer.
pub fn accept_offer(rtc: &mut Rtc, text: &str) -> Result<String, String> {
    let run = std::panic::AssertUnwindSafe(|| {
        let sdp = SdpOffer::from_sdp_string(text).map_err(|e| e.to_string())?;
        rtc.sdp_api()
            .accept_offer(sdp)
            .map(|a| a.to_sdp_string())
            .map_err(|e| e.to_string())
    });
    std::panic::catch_unwind(run).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        tracing::error!("str0m panicked on an offer (refused; a str0m bug to report): {what}");
        Err(format!("the offer could not be read ({what})"))
    })
}

/// Final touches str0m does not make: one msid stream for every media section
/// (draft-ietf-wish-whep §4.6.2; str0m invents one per section), and `a=end-of-candidates`
/// after the full candidate list (RFC 9725 §4.3.2: the server cannot trickle).
fn finish_answer(answer: &str) -> String {
    let stream_ids: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:"))
        .filter_map(|v| v.split_whitespace().next())
        .collect();
    let mut out = String::with_capacity(answer.len() + 64);
    let mut ended = false;
    let mut lines = answer.lines().peekable();
    while let Some(line) = lines.next() {
        let mut line = line.to_string();
        if let Some(first) = stream_ids.first() {
            if line.starts_with("a=msid-semantic:") {
                line = format!("a=msid-semantic: WMS {first}");
            } else {
                for other in stream_ids.iter().skip(1).filter(|s| *s != first) {
                    line = line.replace(other, first);
                }
            }
        }
        out.push_str(&line);
        out.push_str("\r\n");
        let next_is_candidate = lines.peek().is_some_and(|n| n.starts_with("a=candidate:"));
        if line.starts_with("a=candidate:") && !next_is_candidate && !ended {
            out.push_str("a=end-of-candidates\r\n");
            ended = true;
        }
    }
    out
}

/// Reads the negotiated sections from our answer: the first media format of each active
/// section (sending to a viewer, receiving from a publisher) that is not a repair format
/// (rtx, red, ulpfec).
fn tracks_of(answer: &str) -> Tracks {
    let mut tracks = Tracks::default();
    let Ok(parsed) = Offer::parse(answer.as_bytes()) else {
        return tracks;
    };
    for s in parsed.sections.iter().filter(|s| !s.rejected) {
        if !matches!(
            s.direction.as_deref(),
            Some("sendonly" | "sendrecv" | "recvonly")
        ) {
            continue;
        }
        let Some(mid) = &s.mid else { continue };
        let Some(f) = s.formats.iter().find(|f| {
            !["rtx", "red", "ulpfec", "flexfec-03"]
                .iter()
                .any(|n| f.name.eq_ignore_ascii_case(n))
        }) else {
            continue;
        };
        let entry = Some((Mid::from(mid.as_str()), Pt::from(f.pt), f.clock));
        match s.kind {
            Kind::Video if tracks.video.is_none() => tracks.video = entry,
            Kind::Audio if tracks.audio.is_none() => tracks.audio = entry,
            _ => {}
        }
    }
    tracks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_str0m_refuses_the_offer_instead_of_the_connection() {
        // This offer passes str0m's own parsing and then trips an assertion in it (the
        // gateway's offer checks refuse it earlier; this is the net behind them).
        let text = include_str!("../../tests/offers/fuzz-pt-reused-across-sections.sdp");
        let mut rtc = RtcConfig::new().set_ice_lite(true).build(Instant::now());
        let e = accept_offer(&mut rtc, text).expect_err("refused");
        assert!(e.contains("Pt locked multiple times"), "{e}");
        // The good offer after it is answered by a fresh connection as before.
        let mut rtc = RtcConfig::new().set_ice_lite(true).build(Instant::now());
        let good = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
                    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
                    a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
                    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
                    a=setup:actpass\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(accept_offer(&mut rtc, good).is_ok());
    }
}
