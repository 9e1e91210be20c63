//! What a client's SDP offer and trickle-ICE fragments ask for, read before str0m sees them.
//!
//! Owns the gateway's offer policy for WHEP: which media sections it can serve, with which
//! codec, and why it refuses the rest (the 400 and 422 problem details). It parses with
//! `sdp-types` and never builds an answer (str0m does). Also parses
//! `application/trickle-ice-sdpfrag` bodies (RFC 8840) and rewrites an offer's ICE credentials
//! for an ICE restart.

use sdp_types::Session;

use crate::config::{H264Profile, VideoCodec, VideoFormat};

/// Why an offer cannot be served. Always the client's (or its browser's) side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not SDP at all: 400.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// SDP, but nothing this session can send: 422.
    #[error("{0}")]
    Unusable(String),
}

/// Media kinds of an offer's m-lines that matter to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
    Application,
    Other,
}

/// One m-line of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: Kind,
    pub mid: Option<String>,
    pub direction: Option<String>,
    /// `(payload type, encoding name, clock rate, fmtp)` for each format.
    pub formats: Vec<Format>,
    pub rejected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub pt: u8,
    pub name: String,
    pub clock: u32,
    pub fmtp: String,
}

/// A parsed offer: what we need to decide, plus the text for str0m.
#[derive(Debug, Clone)]
pub struct Offer {
    pub sections: Vec<Section>,
    pub text: String,
}

/// What the session sends, for matching offers against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub video: VideoFormat,
    pub audio: bool,
}

/// The result of matching: which kinds the viewer will receive, and whether it opened a data
/// channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub video: bool,
    pub audio: bool,
    pub data_channel: bool,
}

impl Offer {
    pub fn parse(body: &[u8]) -> Result<Self, OfferError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| OfferError::Malformed("the body is not UTF-8 text".into()))?;
        if !text.trim_start().starts_with("v=") {
            return Err(OfferError::Malformed(
                "an SDP offer starts with \"v=0\" (RFC 8866 §5)".into(),
            ));
        }
        let session = Session::parse(body).map_err(|e| OfferError::Malformed(e.to_string()))?;
        if session.medias.is_empty() {
            return Err(OfferError::Malformed("the offer has no m= sections".into()));
        }
        for m in &session.medias {
            if let Some(bad) = m
                .fmt
                .split_whitespace()
                .find(|f| f.parse::<u8>().is_ok_and(|pt| pt > 127))
            {
                return Err(OfferError::Malformed(format!(
                    "payload type {bad} in \"m={} ...\": RTP payload types are 0-127 \
                     (RFC 3550 §5.1)",
                    m.media
                )));
            }
        }
        let sections: Vec<Section> = session.medias.iter().map(section).collect();
        check_payload_types(&sections)?;
        Ok(Self {
            sections,
            text: text.to_string(),
        })
    }

    /// Decides what a WHEP viewer gets (draft-ietf-wish-whep §4.3.5, §4.6.2).
    pub fn plan_whep(&self, served: Served) -> Result<Plan, OfferError> {
        let mut plan = Plan {
            video: false,
            audio: false,
            data_channel: false,
        };
        let mut missing = Vec::new();
        for s in self.sections.iter().filter(|s| !s.rejected) {
            if matches!(s.direction.as_deref(), Some("sendonly" | "inactive")) {
                return Err(wrong_direction(
                    s,
                    "a WHEP player offers recvonly (draft-ietf-wish-whep §4.3.5)",
                ));
            }
            match s.kind {
                Kind::Video => {
                    if plan.video {
                        return Err(second_section("video"));
                    }
                    if !s.formats.iter().any(|f| viewer_takes(f, &served.video)) {
                        missing.push(requirement(&served.video));
                    }
                    plan.video = true;
                }
                Kind::Audio => {
                    if plan.audio {
                        return Err(second_section("audio"));
                    }
                    if served.audio && !has_opus(s) {
                        missing.push("opus/48000/2".into());
                    }
                    plan.audio = served.audio;
                }
                Kind::Application => plan.data_channel = true,
                Kind::Other => {}
            }
        }
        if !missing.is_empty() {
            return Err(OfferError::Unusable(format!(
                "this session sends {}{}; the offer lacks {}",
                served.video.describe(),
                if served.audio { " and Opus" } else { "" },
                missing.join(" and ")
            )));
        }
        if !plan.video && !plan.audio {
            return Err(OfferError::Unusable(
                "the offer has no audio or video section to receive into".into(),
            ));
        }
        Ok(plan)
    }

    /// Decides what a WHIP publisher sends (RFC 9725 §4.2): its video format, of the first codec
    /// of `preference` it offers (for H.264, see [`publisher_h264`]), and whether it sends
    /// audio. A live session needs video.
    pub fn plan_whip(&self, preference: &[VideoCodec]) -> Result<(Plan, VideoFormat), OfferError> {
        let mut plan = Plan {
            video: false,
            audio: false,
            data_channel: false,
        };
        let mut codec = None;
        for s in self.sections.iter().filter(|s| !s.rejected) {
            if matches!(s.kind, Kind::Audio | Kind::Video)
                && matches!(s.direction.as_deref(), Some("recvonly" | "inactive"))
            {
                return Err(wrong_direction(
                    s,
                    "a WHIP publisher offers sendonly (RFC 9725 §4.2)",
                ));
            }
            match s.kind {
                Kind::Video => {
                    if plan.video {
                        return Err(second_section("video"));
                    }
                    codec = preference.iter().find_map(|c| publisher_format(s, *c));
                    if codec.is_none() {
                        let names: Vec<&str> = s.formats.iter().map(|f| f.name.as_str()).collect();
                        return Err(OfferError::Unusable(format!(
                            "the offer's video is {}; this gateway takes {}",
                            if names.is_empty() {
                                "empty".into()
                            } else {
                                names.join(", ")
                            },
                            preference
                                .iter()
                                .map(|c| match c {
                                    VideoCodec::H264 => "H264/90000",
                                    VideoCodec::Vp8 => "VP8/90000",
                                })
                                .collect::<Vec<_>>()
                                .join(" or ")
                        )));
                    }
                    plan.video = true;
                }
                Kind::Audio => {
                    if plan.audio {
                        return Err(second_section("audio"));
                    }
                    if !has_opus(s) {
                        return Err(OfferError::Unusable(
                            "the offer's audio lacks opus/48000/2, the only audio codec taken"
                                .into(),
                        ));
                    }
                    plan.audio = true;
                }
                Kind::Application | Kind::Other => {}
            }
        }
        match codec {
            Some(c) => Ok((plan, c)),
            None => Err(OfferError::Unusable(
                "the offer has no video section; a live session needs video".into(),
            )),
        }
    }

    /// The offer with its `sendrecv` sections made one-way (`direction` is the client's:
    /// `recvonly` for a viewer, `sendonly` for a publisher), so that the answer is one-way too
    /// (draft-ietf-wish-whep §4.3.5, RFC 9725 §4.2: a client MAY offer sendrecv; the answer
    /// MUST be sendonly / recvonly).
    pub fn one_way(mut self, direction: &str) -> Self {
        if !self.text.lines().any(|l| l.trim_end() == "a=sendrecv") {
            return self;
        }
        let mut text = String::with_capacity(self.text.len());
        for line in self.text.lines() {
            if line.trim_end() == "a=sendrecv" {
                text.push_str("a=");
                text.push_str(direction);
            } else {
                text.push_str(line);
            }
            text.push_str("\r\n");
        }
        for s in &mut self.sections {
            if s.direction.as_deref() == Some("sendrecv") {
                s.direction = Some(direction.to_string());
            }
        }
        self.text = text;
        self
    }

    /// For a viewer that waits for a publisher: the first of `preference` that the offer's
    /// video section can receive, in the format browsers send (for H.264, constrained baseline
    /// as our transcoder's).
    pub fn first_video_format(&self, preference: &[VideoCodec]) -> Option<VideoFormat> {
        let video = self
            .sections
            .iter()
            .find(|s| !s.rejected && s.kind == Kind::Video)?;
        preference
            .iter()
            .map(|c| VideoFormat::transcoded(*c))
            .find(|want| video.formats.iter().any(|f| viewer_takes(f, want)))
    }

    /// The offer with new ICE credentials everywhere they appear (session and media level), as
    /// a client's re-offer would carry them for an ICE restart.
    pub fn with_ice_credentials(&self, ufrag: &str, pwd: &str) -> String {
        let mut out = String::with_capacity(self.text.len());
        for line in self.text.lines() {
            if line.starts_with("a=ice-ufrag:") {
                out.push_str("a=ice-ufrag:");
                out.push_str(ufrag);
            } else if line.starts_with("a=ice-pwd:") {
                out.push_str("a=ice-pwd:");
                out.push_str(pwd);
            } else if line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates") {
                // Old candidates belong to the old ICE session; new ones come in the PATCH.
                continue;
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
        }
        out
    }
}

/// An audio or video section whose direction does not suit the endpoint.
fn wrong_direction(s: &Section, expected: &str) -> OfferError {
    OfferError::Unusable(format!(
        "the offer's {} section (mid {}) is {}; {expected}",
        kind_name(s.kind),
        s.mid.as_deref().unwrap_or("?"),
        s.direction.as_deref().unwrap_or("")
    ))
}

fn second_section(kind: &str) -> OfferError {
    OfferError::Unusable(format!(
        "the offer has two {kind} sections; a session has one {kind} track"
    ))
}

/// What an offer's video format must be to carry `codec`.
fn requirement(want: &VideoFormat) -> String {
    match want.profile() {
        Some(p) => format!(
            "H264/90000 with packetization-mode=1 and a {} profile-level-id ({:06x})",
            p.name(),
            want.profile_level_id
        ),
        None => "VP8/90000".into(),
    }
}

fn has_opus(s: &Section) -> bool {
    s.formats
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case("opus") && f.clock == 48000)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Audio => "audio",
        Kind::Video => "video",
        Kind::Application => "application",
        Kind::Other => "other",
    }
}

/// Refuses what no SDP may say and str0m does not survive: a payload type outside 0-127, or
/// one that names two codecs (a bundled offer may reuse a payload type in another media
/// section only for the same codec: RFC 8843 §7.3.1).
fn check_payload_types(sections: &[Section]) -> Result<(), OfferError> {
    let mut seen: Vec<(u8, &str, u32)> = Vec::new();
    for f in sections.iter().flat_map(|s| &s.formats) {
        if f.pt > 127 {
            return Err(OfferError::Malformed(format!(
                "payload type {} in an a=rtpmap: RTP payload types are 0-127 (RFC 3550 §5.1)",
                f.pt
            )));
        }
        match seen.iter().find(|(pt, _, _)| *pt == f.pt) {
            Some((_, name, clock)) if !name.eq_ignore_ascii_case(&f.name) || *clock != f.clock => {
                return Err(OfferError::Malformed(format!(
                    "payload type {} is {name}/{clock} and {}/{}: a bundled offer may not \
                     reuse a payload type for another codec (RFC 8843 §7.3.1)",
                    f.pt, f.name, f.clock
                )));
            }
            Some(_) => {}
            None => seen.push((f.pt, &f.name, f.clock)),
        }
    }
    Ok(())
}

fn section(m: &sdp_types::Media) -> Section {
    let kind = match m.media.as_str() {
        "audio" => Kind::Audio,
        "video" => Kind::Video,
        "application" => Kind::Application,
        _ => Kind::Other,
    };
    let attr = |name: &str| {
        m.attributes
            .iter()
            .find(|a| a.attribute == name)
            .and_then(|a| a.value.clone())
    };
    let direction = ["sendrecv", "sendonly", "recvonly", "inactive"]
        .into_iter()
        .find(|d| m.attributes.iter().any(|a| a.attribute == *d))
        .map(String::from);
    let mut formats = Vec::new();
    for a in &m.attributes {
        if a.attribute != "rtpmap" {
            continue;
        }
        let Some(v) = &a.value else { continue };
        let Some((pt, rest)) = v.split_once(' ') else {
            continue;
        };
        let Ok(pt) = pt.parse::<u8>() else { continue };
        let mut parts = rest.split('/');
        let name = parts.next().unwrap_or("").to_string();
        let clock = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let fmtp = m
            .attributes
            .iter()
            .filter(|a| a.attribute == "fmtp")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (p, params) = v.split_once(' ')?;
                (p.parse::<u8>().ok()? == pt).then(|| params.to_string())
            })
            .unwrap_or_default();
        formats.push(Format {
            pt,
            name,
            clock,
            fmtp,
        });
    }
    Section {
        kind,
        mid: attr("mid"),
        direction,
        formats,
        rejected: m.port == 0 && !m.attributes.iter().any(|a| a.attribute == "bundle-only"),
    }
}

/// An H.264 format's profile-level-id (RFC 6184 §8.1; absent: 420010, baseline level 1.0)
/// and whether it is packetization-mode=1 (absent: mode 0). None for another codec.
fn h264_params(f: &Format) -> Option<(u32, bool)> {
    if !f.name.eq_ignore_ascii_case("H264") || f.clock != 90000 {
        return None;
    }
    let param = |key: &str| {
        f.fmtp.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            k.eq_ignore_ascii_case(key).then(|| v.trim().to_string())
        })
    };
    let mode1 = param("packetization-mode").as_deref() == Some("1");
    let plid = match param("profile-level-id") {
        Some(p) => u32::from_str_radix(&p, 16)
            .ok()
            .filter(|v| *v <= 0xff_ffff)?,
        None => 0x42_0010,
    };
    Some((plid, mode1))
}

/// Whether a viewer's format can receive a stream of `want`: VP8, or H.264 of the same profile
/// (any level: str0m treats it as negotiable, RFC 6184 §8.2.2) in packetization mode 1, which
/// carries what we forward (FU-A, STAP-A, single NAL units; RFC 6184 §6.3).
fn viewer_takes(f: &Format, want: &VideoFormat) -> bool {
    match want.codec {
        VideoCodec::Vp8 => is_vp8(f),
        VideoCodec::H264 => h264_params(f)
            .is_some_and(|(plid, mode1)| mode1 && VideoFormat::h264(plid, mode1).plays(want)),
    }
}

fn is_vp8(f: &Format) -> bool {
    f.name.eq_ignore_ascii_case("VP8") && f.clock == 90000
}

/// What a publisher's video section sends in `codec`, if it offers it. For H.264 the offer's
/// formats are ranked: constrained baseline in packetization mode 1 first (every browser
/// decodes it, Safari included, and it is what our transcoder sends), then any other profile in
/// mode 1 (FFmpeg's WHIP muxer describes its encoder's profile, often high), then mode 0; in
/// the offer's order within a rank. Viewers then need a format of that profile.
fn publisher_format(s: &Section, codec: VideoCodec) -> Option<VideoFormat> {
    match codec {
        VideoCodec::Vp8 => s
            .formats
            .iter()
            .any(is_vp8)
            .then(|| VideoFormat::transcoded(VideoCodec::Vp8)),
        VideoCodec::H264 => s
            .formats
            .iter()
            .filter_map(h264_params)
            .min_by_key(|&(plid, mode1)| {
                match (
                    H264Profile::of(plid) == H264Profile::ConstrainedBaseline,
                    mode1,
                ) {
                    (true, true) => 0,
                    (false, true) => 1,
                    (_, false) => 2,
                }
            })
            .map(|(plid, mode1)| VideoFormat::h264(plid, mode1)),
    }
}

/// A trickle-ICE fragment (RFC 8840 §9.2, RFC 9725 §4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `a=candidate:` values (without the `a=`), each kept as written.
    pub candidates: Vec<String>,
    pub end_of_candidates: bool,
}

impl Fragment {
    /// Reads a fragment leniently: unknown lines and extra m= blocks are ignored (clients such
    /// as whip.js send every mid), but a body with no SDP lines at all is malformed.
    pub fn parse(body: &[u8]) -> Result<Self, OfferError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| OfferError::Malformed("the fragment is not UTF-8 text".into()))?;
        let mut frag = Fragment::default();
        let mut sdp_lines = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((key, _)) = line.split_once('=') else {
                return Err(OfferError::Malformed(format!(
                    "{line:?} is not an SDP line (\"x=value\")"
                )));
            };
            if key.len() != 1 {
                return Err(OfferError::Malformed(format!(
                    "{line:?} is not an SDP line (\"x=value\")"
                )));
            }
            sdp_lines += 1;
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                frag.ufrag = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                frag.pwd = Some(v.to_string());
            } else if line.starts_with("a=candidate:") {
                frag.candidates.push(line[2..].to_string());
            } else if line.starts_with("a=end-of-candidates")
                || line.starts_with("a=end-of-candiadates")
            {
                frag.end_of_candidates = true;
            }
        }
        if sdp_lines == 0 {
            return Err(OfferError::Malformed("the fragment is empty".into()));
        }
        Ok(frag)
    }
}

/// ICE credentials must be 4-256 (ufrag) and 22-256 (pwd) ice-chars (RFC 8839 §5.4).
pub fn valid_ice_credentials(ufrag: &str, pwd: &str) -> bool {
    let ice_char = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    (4..=256).contains(&ufrag.len())
        && (22..=256).contains(&pwd.len())
        && ufrag.chars().all(ice_char)
        && pwd.chars().all(ice_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CHROME_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=mid:1\r\na=recvonly\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";

    const H264: Served = Served {
        video: VideoFormat::transcoded(VideoCodec::H264),
        audio: true,
    };

    #[test]
    fn a_browser_offer_plans_video_and_audio() {
        let offer = Offer::parse(CHROME_OFFER.as_bytes()).unwrap();
        assert_eq!(offer.sections.len(), 2);
        assert_eq!(offer.sections[0].formats.len(), 4);
        let plan = offer.plan_whep(H264).unwrap();
        assert!(plan.video && plan.audio && !plan.data_channel);
        let vp8 = Served {
            video: VideoFormat::transcoded(VideoCodec::Vp8),
            audio: true,
        };
        assert!(offer.plan_whep(vp8).is_ok());
    }

    #[test]
    fn refusals_say_what_is_missing() {
        assert!(matches!(
            Offer::parse(b"hello"),
            Err(OfferError::Malformed(_))
        ));
        assert!(matches!(Offer::parse(b""), Err(OfferError::Malformed(_))));
        assert!(matches!(
            Offer::parse(b"v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"),
            Err(OfferError::Malformed(_))
        ));
        // Only packetization-mode 0 H.264: nothing we can send.
        let offer = CHROME_OFFER
            .replace("packetization-mode=1", "packetization-mode=0")
            .replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 FOO/90000");
        let e = Offer::parse(offer.as_bytes())
            .unwrap()
            .plan_whep(H264)
            .unwrap_err();
        assert!(
            matches!(&e, OfferError::Unusable(m) if m.contains("packetization-mode=1")),
            "{e}"
        );
        let offer = CHROME_OFFER.replace("opus/48000/2", "PCMU/8000");
        let e = Offer::parse(offer.as_bytes())
            .unwrap()
            .plan_whep(H264)
            .unwrap_err();
        assert!(e.to_string().contains("opus"), "{e}");
        let offer = CHROME_OFFER.replace("a=recvonly", "a=sendonly");
        let e = Offer::parse(offer.as_bytes())
            .unwrap()
            .plan_whep(H264)
            .unwrap_err();
        assert!(e.to_string().contains("recvonly"), "{e}");
    }

    #[test]
    fn profiles_are_told_apart_as_rfc_6184_table_5_does() {
        use H264Profile::*;
        for (plid, profile) in [
            (0x42e01f, ConstrainedBaseline),
            (0x42c01f, ConstrainedBaseline),
            (0x42001f, Baseline),
            (0x4d801f, ConstrainedBaseline),
            (0x4d001f, Main),
            (0x58c01e, ConstrainedBaseline),
            (0x58801e, Baseline),
            (0x58001e, Extended),
            (0x640c1f, ConstrainedHigh),
            (0x64001f, High),
            (0x640028, High),
            (0x6e0028, Other(0x6e)),
        ] {
            assert_eq!(H264Profile::of(plid), profile, "{plid:06x}");
        }
    }

    /// A WHIP offer whose video section has these H.264 fmtp lines, in this order.
    fn whip_h264_offer(fmtps: &[&str]) -> Offer {
        let pts: Vec<String> = (0..fmtps.len()).map(|i| (100 + i).to_string()).collect();
        let mut sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n",
            pts.join(" ")
        );
        for (pt, fmtp) in pts.iter().zip(fmtps) {
            sdp.push_str(&format!(
                "a=rtpmap:{pt} H264/90000\r\na=fmtp:{pt} {fmtp}\r\n"
            ));
        }
        Offer::parse(sdp.as_bytes()).unwrap()
    }

    #[test]
    fn publishers_h264_prefers_constrained_baseline_mode_1_and_takes_other_profiles() {
        let take = |fmtps: &[&str]| {
            let (plan, format) = whip_h264_offer(fmtps)
                .plan_whip(&[VideoCodec::H264, VideoCodec::Vp8])
                .unwrap();
            assert!(plan.video);
            (format.profile_level_id, format.mode1)
        };
        // FFmpeg's WHIP muxer describes its encoder: libx264's default is high.
        assert_eq!(
            take(&["level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640028"]),
            (0x640028, true)
        );
        // A browser lists many; constrained baseline in mode 1 wins wherever it is.
        assert_eq!(
            take(&[
                "packetization-mode=1;profile-level-id=64001f",
                "packetization-mode=0;profile-level-id=42e01f",
                "packetization-mode=1;profile-level-id=42e01f",
            ]),
            (0x42e01f, true)
        );
        // Then another profile in mode 1, before any mode 0.
        assert_eq!(
            take(&[
                "packetization-mode=0;profile-level-id=42e01f",
                "packetization-mode=1;profile-level-id=4d001f",
            ]),
            (0x4d001f, true)
        );
        // Mode 0 alone (single NAL units) is taken too; no profile-level-id is baseline.
        assert_eq!(take(&["packetization-mode=0"]), (0x420010, false));
    }

    #[test]
    fn viewers_of_a_high_profile_stream_need_a_high_profile_format() {
        let high = Served {
            video: VideoFormat::h264(0x640028, true),
            audio: true,
        };
        // CHROME_OFFER has VP8 and constrained-baseline H.264 only.
        let e = Offer::parse(CHROME_OFFER.as_bytes())
            .unwrap()
            .plan_whep(high)
            .unwrap_err();
        assert!(
            matches!(&e, OfferError::Unusable(m)
                if m.contains("sends H264 (high)") && m.contains("a high profile-level-id (640028)")),
            "{e}"
        );
        // A viewer whose H.264 format has this profile-level-id instead of 42e01f.
        let offering = |plid: &str| {
            let offer = CHROME_OFFER.replace("profile-level-id=42e01f", plid);
            Offer::parse(offer.as_bytes()).unwrap().plan_whep(high)
        };
        // Any level of high will do (str0m treats the level as negotiable) ...
        assert!(offering("profile-level-id=64001f").is_ok());
        // ... but not a constrained-high one: another profile.
        assert!(offering("profile-level-id=640c1f").is_err());
    }

    #[test]
    fn fragments_are_read_leniently() {
        let f = Fragment::parse(
            b"a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\na=x-unknown:1\r\n\
a=end-of-candiadates\r\n",
        )
        .unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.candidates.len(), 1);
        assert!(f.end_of_candidates);
        assert!(Fragment::parse(b"garbage").is_err());
        assert!(Fragment::parse(b"").is_err());
        assert!(valid_ice_credentials("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1"));
        assert!(!valid_ice_credentials("EsAw", "abc"));
    }

    #[test]
    fn restart_rewrites_credentials_and_drops_old_candidates() {
        let offer = Offer::parse(
            CHROME_OFFER
                .replace(
                    "a=mid:1\r\n",
                    "a=mid:1\r\na=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\n",
                )
                .as_bytes(),
        )
        .unwrap();
        let text = offer.with_ice_credentials("NEW1", "NEWPASSWORD0123456789ab");
        assert_eq!(text.matches("a=ice-ufrag:NEW1").count(), 2);
        assert!(!text.contains("abcd") && !text.contains("a=candidate"));
    }
}
