//! The offers the suite sends and what it reads from answers.
//!
//! Offers are synthetic but shaped as real clients send them (CHECKLIST.md §1 "Test
//! notation", §3): a browser's (trickle, BUNDLE, every section on port 9, H.264 and VP8 with
//! RTX, Opus), OBS's (ICE and DTLS attributes at session level) and a passive-setup one
//! (FFmpeg's). Their fingerprint is made up: enough for every HTTP-level case.

/// Which protocol an offer is for: the direction of its sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// WHIP: the client sends.
    Whip,
    /// WHEP: the client receives.
    Whep,
}

impl Side {
    pub fn offer_direction(self) -> &'static str {
        match self {
            Side::Whip => "sendonly",
            Side::Whep => "recvonly",
        }
    }

    pub fn answer_direction(self) -> &'static str {
        match self {
            Side::Whip => "recvonly",
            Side::Whep => "sendonly",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Whip => "WHIP",
            Side::Whep => "WHEP",
        }
    }
}

/// The client's ICE credentials in an offer (trickle fragments must repeat them).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

impl Credentials {
    pub fn random() -> Self {
        Self {
            ufrag: random_token(8),
            pwd: random_token(24),
        }
    }
}

/// `n` random characters of `[a-z0-9]` (ICE credentials are ice-chars).
pub fn random_token(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(k) => filled += k,
            Err(_) => break,
        }
    }
    bytes
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

const FINGERPRINT: &str = "sha-256 5C:3B:2E:8A:91:0F:44:7D:C2:19:E6:58:AB:03:7F:D1:6E:90:42:B8:15:CA:7E:33:D9:01:6B:F4:28:A5:8C:E7";

/// A browser-shaped offer: BUNDLE of audio (mid 0) and video (mid 1), both on port 9 with
/// `rtcp-mux` and `rtcp-mux-only`, the same msid stream (WHIP), trickle, no candidates, DTLS
/// `setup`.
pub fn browser_offer(side: Side, creds: &Credentials, setup: &str) -> String {
    let dir = side.offer_direction();
    let msid = |track: &str| match side {
        Side::Whip => format!("a=msid:conformance-stream {track}\r\n"),
        Side::Whep => String::new(),
    };
    let common = format!(
        "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:{u}\r\na=ice-pwd:{p}\r\n\
         a=ice-options:trickle\r\na=fingerprint:{FINGERPRINT}\r\na=setup:{setup}\r\n",
        u = creds.ufrag,
        p = creds.pwd
    );
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{common}a=mid:0\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na={dir}\r\n{audio_msid}\
         a=rtcp-mux\r\na=rtcp-mux-only\r\na=rtpmap:111 opus/48000/2\r\n\
         a=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\n{common}a=mid:1\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na={dir}\r\n{video_msid}\
         a=rtcp-mux\r\na=rtcp-mux-only\r\na=rtcp-rsize\r\n\
         a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\n\
         a=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
         a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
         a=rtpmap:102 H264/90000\r\na=rtcp-fb:102 goog-remb\r\na=rtcp-fb:102 transport-cc\r\n\
         a=rtcp-fb:102 ccm fir\r\na=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n\
         a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
         a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n",
        audio_msid = msid("conformance-audio"),
        video_msid = msid("conformance-video"),
    )
}

/// A trickle fragment (RFC 8840) for the offer's first section with `candidates`.
pub fn trickle_fragment(creds: &Credentials, candidates: &[&str]) -> String {
    let mut f = format!(
        "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
         a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        creds.ufrag, creds.pwd
    );
    for c in candidates {
        f.push_str("a=candidate:");
        f.push_str(c);
        f.push_str("\r\n");
    }
    f.push_str("a=end-of-candidates\r\n");
    f
}

/// An ICE-restart fragment: new credentials, as a client's re-offer would carry them.
pub fn restart_fragment(new: &Credentials) -> String {
    format!(
        "a=ice-options:trickle\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
         a=mid:0\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n\
         a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n",
        new.ufrag, new.pwd
    )
}

/// An SDP split into its session part and media sections (lines without CRLF).
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub session: Vec<String>,
    pub media: Vec<Vec<String>>,
}

impl Parsed {
    pub fn new(text: &str) -> Self {
        let mut p = Parsed::default();
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if line.starts_with("m=") {
                p.media.push(vec![line.to_string()]);
            } else if let Some(m) = p.media.last_mut() {
                m.push(line.to_string());
            } else {
                p.session.push(line.to_string());
            }
        }
        p
    }

    /// Whether `text` is SDP a parser takes (RFC 8866 grammar, as sdp-types reads it).
    pub fn is_valid(text: &str) -> bool {
        sdp_types::Session::parse(text.as_bytes()).is_ok()
    }

    /// Sections not rejected (port 0 means rejected, RFC 8843 bundle-only aside).
    pub fn accepted(&self) -> impl Iterator<Item = &Vec<String>> {
        self.media.iter().filter(|m| {
            m[0].split_whitespace().nth(1) != Some("0") || m.iter().any(|l| l == "a=bundle-only")
        })
    }

    /// The value of the first `a=<name>:` (or flag `a=<name>`) in a section, else at session
    /// level.
    pub fn attr<'a>(&'a self, section: &'a [String], name: &str) -> Option<&'a str> {
        find_attr(section, name).or_else(|| find_attr(&self.session, name))
    }

    pub fn count(&self, name: &str) -> usize {
        let all = self.session.iter().chain(self.media.iter().flatten());
        all.filter(|l| find_attr(std::slice::from_ref(l), name).is_some())
            .count()
    }
}

/// A section's own attribute `name` (value, or "" for a flag).
pub fn find_attr<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix("a=")?.strip_prefix(name)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix(':')
        }
    })
}

/// A section's direction attribute.
pub fn direction(section: &[String]) -> Option<&str> {
    ["sendonly", "recvonly", "sendrecv", "inactive"]
        .into_iter()
        .find(|d| section.iter().any(|l| l == &format!("a={d}")))
}

/// The section's payload types from its m= line.
pub fn formats(section: &[String]) -> Vec<String> {
    section[0]
        .split_whitespace()
        .skip(3)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_offer_is_valid_sdp_with_two_bundled_sections() {
        let creds = Credentials::random();
        for side in [Side::Whip, Side::Whep] {
            let o = browser_offer(side, &creds, "actpass");
            assert!(Parsed::is_valid(&o), "{o}");
            let p = Parsed::new(&o);
            assert_eq!(p.media.len(), 2);
            for m in &p.media {
                assert_eq!(direction(m), Some(side.offer_direction()));
                assert_eq!(p.attr(m, "ice-ufrag"), Some(creds.ufrag.as_str()));
                assert_eq!(p.attr(m, "rtcp-mux"), Some(""));
            }
            assert_eq!(formats(&p.media[1]), ["96", "97", "102", "103"]);
        }
        assert_eq!(random_token(24).len(), 24);
        assert_ne!(random_token(24), random_token(24));
    }
}
