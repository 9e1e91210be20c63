//! The gateway's configuration: one [`Config`], resolved once at startup from command-line flags,
//! `WISP_*` environment variables, the TOML file and defaults, in that order of precedence.
//!
//! Owns parsing and validation of every setting (bad values are refused here, with the setting's
//! name, before anything starts) and the session definitions of the file. It does not read
//! keys (see `auth.rs`) or start anything. `std::env::var` is used in this module only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::valid_session_name;

/// Settings that may come from a flag or its `WISP_*` variable (main.rs fills this from clap,
/// whose `env` attribute reads the variables). `None` means "not given": the file, then the
/// default, decides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub http: Option<SocketAddr>,
    pub rtc: Option<SocketAddr>,
    pub public_ip: Vec<IpAddr>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub transcoder: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub recordings: Option<PathBuf>,
    pub hls: Option<HlsMode>,
    pub idle_timeout_secs: Option<u64>,
    pub no_demo: bool,
    pub public_sessions: Option<bool>,
    pub metrics: Option<MetricsAt>,
    pub rtmp: Option<Listen>,
    pub srt: Option<Listen>,
    pub assets: Option<PathBuf>,
    pub workers: Option<usize>,
    pub cluster: Option<String>,
    pub node_url: Option<String>,
    pub capacity: Option<f64>,
    pub relay: bool,
}

/// An optional listener's address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

/// A listener setting that is neither `off` nor an address. The operator's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not \"off\" or an ADDR:PORT")]
pub struct BadListen(String);

impl Listen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(a) => Some(a),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = BadListen;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            addr => addr
                .parse()
                .map(Self::At)
                .map_err(|_| BadListen(addr.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAt {
    /// On the HTTP listener, with everything else, to anyone who reaches it (the default).
    Main,
    /// On a listener of its own (say a loopback or private address); not on the HTTP one.
    Addr(SocketAddr),
    /// Nowhere.
    Off,
}

/// A `metrics` setting that is none of its forms. The operator's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics: {0:?} is not \"main\", \"off\" or an ADDR:PORT")]
pub struct BadMetricsAt(String);

impl std::str::FromStr for MetricsAt {
    type Err = BadMetricsAt;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "main" => Ok(Self::Main),
            "off" => Ok(Self::Off),
            addr => addr
                .parse()
                .map(Self::Addr)
                .map_err(|_| BadMetricsAt(addr.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The TOML file, as written by an operator. Every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub rtc: Option<SocketAddr>,
    #[serde(default)]
    pub public_ip: Vec<IpAddr>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub transcoder: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// Where recordings are written (default: `<state_dir>/recordings`).
    pub recordings: Option<PathBuf>,
    /// HLS of every session (a session's own `hls` overrides it): `on-demand` (the default),
    /// `always` or `off`.
    pub hls: Option<HlsMode>,
    /// Seconds a VOD session's transcoder keeps running with no viewer (and a live session
    /// stays with neither publisher nor viewer).
    pub idle_timeout: Option<u64>,
    pub demo: Option<bool>,
    /// Origins allowed by CORS; `["*"]` (the default) allows any.
    pub cors_origins: Option<Vec<String>>,
    /// Refuse PATCHes without `If-Match` (428), as RFC 9725 §4.3.1 has it (the default).
    pub require_if_match: Option<bool>,
    /// Seconds a new WHEP or WHIP resource has to connect (ICE and DTLS) before it is removed.
    pub connect_timeout: Option<f64>,
    /// Bytes of kernel receive buffer asked for each RTC socket.
    pub udp_recv_buffer: Option<usize>,
    /// Fan-out worker threads driving viewers; 0: one per core.
    pub workers: Option<usize>,
    /// `GET /` lists session names to visitors without a token.
    pub public_sessions: Option<bool>,
    /// Where `/metrics` is served: `"main"` (the HTTP listener), an address, or `"off"`.
    pub metrics: Option<MetricsAt>,
    /// The RTMP listener's address, or `"off"`.
    pub rtmp: Option<Listen>,
    /// The SRT listener's address, or `"off"`.
    pub srt: Option<Listen>,
    /// A folder whose `console.html`, `player.html` and `publish.html` replace the built-in
    /// pages, read at each request (to customise them, or to work on them without a rebuild).
    pub assets: Option<PathBuf>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub live: LiveFile,
    #[serde(default)]
    pub cluster: ClusterFile,
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    #[serde(default)]
    pub sessions: Vec<SessionSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_transcoders: Option<usize>,
    pub max_viewers: Option<usize>,
    pub max_viewers_per_session: Option<usize>,
    pub max_publishers: Option<usize>,
    pub max_ingest_bitrate: Option<u64>,
    pub max_http_connections: Option<usize>,
    /// Seconds.
    pub http_header_timeout: Option<f64>,
    pub http_body_timeout: Option<f64>,
    pub http_idle_timeout: Option<f64>,
}

/// The `[cluster]` table: the nodes this one shares sessions with.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The Redis the nodes share, `redis://HOST:PORT/DB`.
    pub redis: Option<String>,
    /// The URL other nodes and clients reach this node's HTTP at.
    pub node_url: Option<String>,
    /// What this node can carry, in cores (the unit of the costs below).
    pub capacity: Option<f64>,
    /// What a VOD session (its transcoder), a live session and a viewer cost, in cores.
    pub cost_vod: Option<f64>,
    pub cost_live: Option<f64>,
    pub cost_viewer: Option<f64>,
    /// Serve sessions other nodes hold through an edge relay instead of redirecting viewers.
    pub relay: Option<bool>,
    /// A session's node sends viewers past this many to an edge (another node, which relays).
    pub relay_above: Option<usize>,
}

/// Scale-out (DESIGN.md "Scale-out"): nodes register in a shared Redis and redirect requests
/// for sessions owned elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `redis://HOST:PORT/DB`.
    pub redis: String,
    /// This node's HTTP URL (`http://HOST:PORT`, no trailing slash), as other nodes and
    /// clients reach it; `None`: the bound HTTP address, once bound (it must be specific).
    pub node_url: Option<String>,
    /// What this node can carry, in cores: new VOD sessions go to the node with the most
    /// left, and to none when no node has a VOD session's cost left.
    pub capacity: f64,
    pub costs: Costs,
    /// This node serves the sessions other nodes hold to its own viewers by relaying them
    /// (a WHEP pull from the session's node), instead of redirecting the viewers there.
    pub relay: bool,
    /// A session's viewers past this many are redirected to an edge: the other node with the
    /// most room, which relays the session (`None`: viewers stay on the session's node).
    pub relay_above: Option<usize>,
}

/// What the cluster's placement counts a node's work as, in cores (as LiveKit Egress's
/// `cpu_cost`): the defaults are what `docs/benchmarks.md` measured on a 2-core machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// A VOD session: its transcoder (a 720p30 H.264 encode, ~0.21 cores measured).
    pub vod: f64,
    /// A live session: its publisher's receive and the ring.
    pub live: f64,
    /// A viewer: the fan-out's ~2 ms of CPU per viewer-second.
    pub viewer: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            vod: 0.25,
            live: 0.05,
            viewer: 0.002,
        }
    }
}

/// The `[live]` table: how live (WHIP) sessions behave.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveFile {
    pub video_codecs: Option<Vec<VideoCodec>>,
    pub wait: Option<bool>,
    pub max_height: Option<u32>,
}

/// How live sessions behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Video codecs taken from a publisher, most wanted first (a publisher offering several
    /// gets the first of these it has). Default: H.264 (plays everywhere, Safari included),
    /// then VP8.
    pub video_codecs: Vec<VideoCodec>,
    /// A WHEP viewer of a live session with no publisher is answered 201 and waits for one
    /// (instead of 409 with `Retry-After`); a name nobody published yet becomes a live
    /// session then.
    pub wait: bool,
    /// RTMP, SRT and pulled sources taller than this are scaled down to it when transcoded
    /// (e.g. 720: a 1080p encoder's stream reaches viewers as 1280x720). `None`: their size.
    pub max_height: Option<u32>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            video_codecs: vec![VideoCodec::H264, VideoCodec::Vp8],
            wait: false,
            max_height: None,
        }
    }
}

/// Capacity limits; past them a POST gets 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions whose transcoder may run at once.
    pub max_transcoders: usize,
    /// Viewers across all sessions.
    pub max_viewers: usize,
    pub max_viewers_per_session: usize,
    /// WHIP publishers connected at once.
    pub max_publishers: usize,
    /// A publisher's bits/s (all its media). It is asked by REMB to stay below, and a session
    /// over it is logged and shown in its info; nothing is dropped.
    pub max_ingest_bitrate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_transcoders: 16,
            max_viewers: 2000,
            max_viewers_per_session: 1000,
            max_publishers: 64,
            max_ingest_bitrate: 20_000_000,
        }
    }
}

/// What an HTTP connection may take of the gateway (see `connections.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once (`None`: half the descriptor limit, at most 4096). Past it,
    /// the connection idle the longest is closed for a new one.
    pub max_connections: Option<usize>,
    /// A request's headers must arrive within this, from when the connection is ready to read
    /// them (opened, or done with the previous response).
    pub header_timeout: Duration,
    /// A request's body must arrive within this after its headers (else 408).
    pub body_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// The largest request body taken (413 past it).
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_body: 256 * 1024,
        }
    }
}

/// A STUN or TURN server given to clients in `Link` headers (RFC 9725 §4.6).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// Static TURN credentials.
    pub username: Option<String>,
    pub credential: Option<String>,
    /// Time-limited TURN REST credentials (the coturn `use-auth-secret` scheme): username
    /// `expiry:sub`, credential base64(HMAC-SHA1(secret, username)).
    pub rest_secret: Option<String>,
    /// Lifetime of REST credentials, seconds (default 86400).
    pub rest_ttl: Option<u64>,
}

/// A VOD session definition: the inputs and encode options of one transcoder. The same shape
/// in the TOML file and in `POST /api/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputSpec>,
    /// A live session pulled from a URL while it has viewers (instead of `inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<PullSpec>,
    pub video: Option<VideoSpec>,
    /// The video as several renditions (a ladder), each viewer getting the one its bandwidth
    /// carries, e.g. heights 720, 360 and 180: the tallest is the main picture (at most
    /// `video.height`), the others are encoded from it with the same keyframes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSpec>,
    /// The video codecs viewers may get, the main one first (e.g. `["h264", "vp8"]`): a
    /// viewer whose offer lacks the main codec gets the main picture in the next one it
    /// takes, from the same transcoder, instead of a 422. Default: `video.codec` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<VideoCodec>,
    pub audio: Option<AudioSpec>,
    /// Start at this media time, seconds.
    pub start: Option<f64>,
    #[serde(rename = "loop")]
    pub looping: Option<bool>,
    /// This session's HLS (default: the gateway's `hls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<HlsMode>,
    /// Egresses that start with the session and run for as long as it lives (`egress/`
    /// reads them: the same objects `POST /api/sessions/{name}/egress` takes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<serde_json::Value>,
}

impl std::str::FromStr for HlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on-demand" => Ok(HlsMode::OnDemand),
            "always" => Ok(HlsMode::Always),
            "off" => Ok(HlsMode::Off),
            other => Err(format!("{other:?}: one of on-demand, always, off")),
        }
    }
}

/// When a session is served as HLS (`/hls/{session}/index.m3u8`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HlsMode {
    /// Started by a player's first request, stopped after the idle timeout with none.
    #[default]
    OnDemand,
    /// From the session's start, for as long as it lives (a VOD session's transcoder with it).
    Always,
    /// Never.
    Off,
}

/// Where a pulled live session's media comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PullSpec {
    /// An RTSP, SRT, RTMP or HLS (`http(s)://….m3u8`) URL.
    pub url: String,
    /// `copy`: the source's H.264 goes to viewers as it is (it must be baseline, with its
    /// parameter sets in band); `transcode` (the default) makes it constrained baseline.
    #[serde(default, skip_serializing_if = "LiveVideo::is_transcode")]
    pub video: LiveVideo,
}

/// What a live session does with its source's video.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveVideo {
    #[default]
    Transcode,
    Copy,
}

impl LiveVideo {
    pub fn is_transcode(&self) -> bool {
        *self == LiveVideo::Transcode
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub url: String,
    pub channel_count: Option<u32>,
    pub id: Option<String>,
}

/// The transcoder's built-in test pattern, an input that is neither a file nor a URL.
pub const DEMO_INPUT: &str = "demo";

impl InputSpec {
    /// The file this input reads, if it is a local one: a path, or a `file:` URL. Anything
    /// else with a scheme (`https://…`, FFmpeg protocols such as `pipe:0`) is not.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        let url = self.url.as_str();
        if url == DEMO_INPUT {
            return None;
        }
        if let Some(rest) = url.strip_prefix("file://") {
            return Some(std::path::Path::new(rest));
        }
        if let Some(rest) = url.strip_prefix("file:") {
            return Some(std::path::Path::new(rest));
        }
        // FFmpeg's protocol syntax is `name:rest`; a one-letter name would be a drive letter,
        // which a Linux path does not have.
        let scheme = url.split(':').next().unwrap_or("");
        let has_scheme = url.contains(':')
            && scheme.len() > 1
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.');
        (!has_scheme).then(|| std::path::Path::new(url))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSpec {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    /// bits/s
    pub bitrate: Option<u64>,
    pub codec: Option<VideoCodec>,
}

/// One rendition of a VOD session's ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub height: u32,
    /// bits/s (default: the session's video bitrate scaled to the picture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
}

/// The most renditions a session's ladder has (the ring indexes 8 tracks; audio has one).
pub const MAX_LAYERS: usize = 7;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSpec {
    /// bits/s
    pub bitrate: Option<u64>,
    /// Source channels rendered as stereo (with `cho`, the first of them).
    pub channels: Option<u32>,
    pub cho: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    #[default]
    H264,
    Vp8,
}

impl VideoCodec {
    /// The codec SDP names `name` (`H264`, `vp8`: any case).
    pub fn from_name(name: &str) -> Option<Self> {
        [VideoCodec::H264, VideoCodec::Vp8]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// As the transcoder's `--codec` and the session API write it.
    pub fn arg(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Vp8 => "vp8",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H264",
            VideoCodec::Vp8 => "VP8",
        }
    }
}

/// An H.264 profile as SDP negotiation tells them apart (RFC 6184 §8.1: `profile_idc` and the
/// constraint flags of `profile-iop`, as in its Table 5). Two H.264 formats play the same
/// stream only with the same profile; the level is negotiable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    Extended,
    ConstrainedHigh,
    High,
    /// Any other `profile_idc` (High 10, 4:2:2, 4:4:4, ...), compared by its value.
    Other(u8),
}

impl H264Profile {
    /// The profile of a `profile-level-id` (three bytes: `profile_idc`, `profile-iop`,
    /// `level_idc`).
    pub fn of(profile_level_id: u32) -> Self {
        let idc = (profile_level_id >> 16) as u8;
        let iop = (profile_level_id >> 8) as u8;
        let set = |n: u8| iop & (0x80 >> n) != 0;
        match idc {
            0x42 if set(1) => Self::ConstrainedBaseline,
            0x42 => Self::Baseline,
            0x4d if set(0) => Self::ConstrainedBaseline,
            0x4d => Self::Main,
            0x58 if set(0) && set(1) => Self::ConstrainedBaseline,
            0x58 if set(0) => Self::Baseline,
            0x58 => Self::Extended,
            0x64 if set(4) && set(5) => Self::ConstrainedHigh,
            0x64 => Self::High,
            other => Self::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::ConstrainedBaseline => "constrained baseline".into(),
            Self::Baseline => "baseline".into(),
            Self::Main => "main".into(),
            Self::Extended => "extended".into(),
            Self::ConstrainedHigh => "constrained high".into(),
            Self::High => "high".into(),
            Self::Other(idc) => format!("profile_idc {idc}"),
        }
    }
}

/// What a video track carries, as viewers negotiate it: the codec and, for H.264, the
/// profile-level-id and packetization mode of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFormat {
    pub codec: VideoCodec,
    /// H.264 only (0 for VP8).
    pub profile_level_id: u32,
    /// H.264 only: packetization-mode=1 (FU-A and STAP-A; RFC 6184 §6.3); mode 0 is single
    /// NAL units, which a mode-1 receiver also takes.
    pub mode1: bool,
}

impl VideoFormat {
    /// What our transcoder produces: H.264 constrained baseline level 3.1 in packetization
    /// mode 1, or VP8.
    pub const fn transcoded(codec: VideoCodec) -> Self {
        match codec {
            VideoCodec::H264 => Self::h264(0x42e01f, true),
            VideoCodec::Vp8 => Self {
                codec,
                profile_level_id: 0,
                mode1: false,
            },
        }
    }

    pub const fn h264(profile_level_id: u32, mode1: bool) -> Self {
        Self {
            codec: VideoCodec::H264,
            profile_level_id,
            mode1,
        }
    }

    /// The H.264 profile (None for VP8).
    pub fn profile(&self) -> Option<H264Profile> {
        (self.codec == VideoCodec::H264).then(|| H264Profile::of(self.profile_level_id))
    }

    /// Whether a viewer that negotiated `self` can play a stream of `other`: the same codec,
    /// and for H.264 the same profile.
    pub fn plays(&self, other: &VideoFormat) -> bool {
        self.codec == other.codec && self.profile() == other.profile()
    }

    /// For messages and the session API: "H264 (high)", "VP8".
    pub fn describe(&self) -> String {
        match self.profile() {
            Some(p) => format!("{} ({})", self.codec.name(), p.name()),
            None => self.codec.name().into(),
        }
    }
}

/// Why a session definition was refused. The client's (API) or operator's (file) mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("session name {0:?} is not allowed: use 1-64 of [A-Za-z0-9._-]")]
    Name(String),
    #[error("a session needs at least one input (VOD) or a live url (pulled)")]
    NoInputs,
    #[error("a session has inputs (VOD) or a live url (pulled), not both")]
    InputsAndLive,
    #[error("live.url must be rtsp://, srt://, rtmp:// or an http(s):// .m3u8 playlist")]
    LiveUrl,
    #[error("input url must not be empty or start with '-'")]
    InputUrl,
    #[error("layers are for VOD sessions: a live session's layers are its publisher's (simulcast)")]
    LayersLive,
    #[error("codecs are for VOD sessions: a live session sends its publisher's codec")]
    CodecsLive,
    #[error("codecs lists the main codec first: video.codec is {0}")]
    CodecsOrder(&'static str),
    #[error("{0} is out of range")]
    Range(&'static str),
    /// A local input the transcoder could not open (the path is the gateway machine's).
    #[error("input {path}: {reason}")]
    Input { path: String, reason: String },
}

impl SessionSpec {
    /// The built-in demo: the transcoder's generated pattern, 1280x720@30, H.264 + Opus.
    pub fn demo() -> Self {
        Self {
            name: Some("demo".into()),
            inputs: vec![InputSpec {
                url: DEMO_INPUT.into(),
                channel_count: None,
                id: None,
            }],
            live: None,
            video: Some(VideoSpec {
                width: Some(1280),
                height: Some(720),
                fps: Some(30.0),
                ..VideoSpec::default()
            }),
            layers: Vec::new(),
            codecs: Vec::new(),
            audio: None,
            start: None,
            looping: None,
            hls: None,
            egress: Vec::new(),
        }
    }

    /// The main video codec: `video.codec`, else the first of `codecs`, else H.264.
    pub fn codec(&self) -> VideoCodec {
        self.video
            .as_ref()
            .and_then(|v| v.codec)
            .or(self.codecs.first().copied())
            .unwrap_or_default()
    }

    /// Every codec viewers may get, the main one first.
    pub fn served_codecs(&self) -> Vec<VideoCodec> {
        let mut all = vec![self.codec()];
        for c in &self.codecs {
            if !all.contains(c) {
                all.push(*c);
            }
        }
        all
    }

    /// Checks values a transcoder would refuse, so the API answers 422 rather than starting a
    /// process that fails.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name
            && !valid_session_name(name)
        {
            return Err(SpecError::Name(name.clone()));
        }
        if let Some(live) = &self.live {
            if !self.inputs.is_empty() {
                return Err(SpecError::InputsAndLive);
            }
            if !self.layers.is_empty() {
                return Err(SpecError::LayersLive);
            }
            if !self.codecs.is_empty() {
                return Err(SpecError::CodecsLive);
            }
            let scheme = live.url.split("://").next().unwrap_or("");
            let hls = live.url.contains(".m3u8");
            if !["rtsp", "rtsps", "srt", "rtmp", "rtmps"].contains(&scheme)
                && !((scheme == "http" || scheme == "https") && hls)
            {
                return Err(SpecError::LiveUrl);
            }
            return Ok(());
        }
        if self.inputs.is_empty() {
            return Err(SpecError::NoInputs);
        }
        for input in &self.inputs {
            if input.url.trim().is_empty() || input.url.starts_with('-') {
                return Err(SpecError::InputUrl);
            }
            if let Some(id) = &input.id
                && (id.is_empty() || id.contains(char::is_whitespace))
            {
                return Err(SpecError::Range("inputs[].id"));
            }
            if input.channel_count.is_some_and(|c| c == 0 || c > 64) {
                return Err(SpecError::Range("inputs[].channel_count"));
            }
        }
        if let Some(v) = &self.video {
            let dim = |d: Option<u32>| d.is_some_and(|d| !(16..=7680).contains(&d) || d % 2 != 0);
            if dim(v.width) {
                return Err(SpecError::Range("video.width (even, 16-7680)"));
            }
            if dim(v.height) {
                return Err(SpecError::Range("video.height (even, 16-7680)"));
            }
            if v.fps.is_some_and(|f| !(1.0..=120.0).contains(&f)) {
                return Err(SpecError::Range("video.fps (1-120)"));
            }
            if v.bitrate
                .is_some_and(|b| !(50_000..=50_000_000).contains(&b))
            {
                return Err(SpecError::Range("video.bitrate (50k-50M)"));
            }
        }
        if let Some(a) = &self.audio {
            if a.bitrate.is_some_and(|b| !(6_000..=510_000).contains(&b)) {
                return Err(SpecError::Range("audio.bitrate (6k-510k)"));
            }
            if a.channels.is_some_and(|c| c == 0 || c > 64) {
                return Err(SpecError::Range("audio.channels"));
            }
        }
        if self.start.is_some_and(|s| !s.is_finite() || s < 0.0) {
            return Err(SpecError::Range("start"));
        }
        if let (Some(v), Some(first)) = (
            self.video.as_ref().and_then(|v| v.codec),
            self.codecs.first(),
        ) && v != *first
        {
            return Err(SpecError::CodecsOrder(v.name()));
        }
        let mut seen = Vec::new();
        for c in &self.codecs {
            if seen.contains(c) {
                return Err(SpecError::Range("codecs (each at most once)"));
            }
            seen.push(*c);
        }
        // The ring's video tracks: the ladder's, and the main picture in each other codec.
        if self.layers.len().max(1) + self.served_codecs().len() - 1 > MAX_LAYERS {
            return Err(SpecError::Range(
                "layers and codecs (at most 7 video tracks: the ladder, and one per other codec)",
            ));
        }
        for l in &self.layers {
            if !(16..=4320).contains(&l.height) || l.height % 2 != 0 {
                return Err(SpecError::Range("layers[].height (even, 16-4320)"));
            }
            if l.bitrate
                .is_some_and(|b| !(50_000..=50_000_000).contains(&b))
            {
                return Err(SpecError::Range("layers[].bitrate (50k-50M)"));
            }
        }
        Ok(())
    }

    /// Checks that every local input (a path, or a `file:` URL) is a readable file, and returns
    /// the inputs that are URLs, which only opening them can check. It reads the file system,
    /// so it is apart from [`SessionSpec::validate`].
    pub fn check_inputs(&self) -> Result<Vec<&str>, SpecError> {
        let mut urls = Vec::new();
        for input in &self.inputs {
            let Some(path) = input.local_path() else {
                if input.url != DEMO_INPUT {
                    urls.push(input.url.as_str());
                }
                continue;
            };
            // The kind first: opening a FIFO would wait for a writer.
            let reason = match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => Some("is a folder, not a media file".to_string()),
                Ok(m) if !m.is_file() => Some("is not a regular file".to_string()),
                Ok(_) => std::fs::File::open(path).err().map(|e| e.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some("no such file on the gateway's machine".to_string())
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(reason) = reason {
                return Err(SpecError::Input {
                    path: path.display().to_string(),
                    reason,
                });
            }
        }
        Ok(urls)
    }

    /// The transcoder's arguments for this session (without the ring, which the supervisor adds).
    pub fn transcoder_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for input in &self.inputs {
            args.push("-i".into());
            args.push(input.url.clone());
            if let Some(n) = input.channel_count {
                args.push(format!("channel_count={n}"));
            }
            if let Some(id) = &input.id {
                args.push(format!("id={id}"));
            }
        }
        let mut opt = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v);
            }
        };
        if let Some(v) = &self.video {
            opt("--width", v.width.map(|x| x.to_string()));
            opt("--height", v.height.map(|x| x.to_string()));
            opt("--fps", v.fps.map(|x| x.to_string()));
            opt("--video-bitrate", v.bitrate.map(|x| x.to_string()));
        }
        // A ladder: its tallest rendition is the main picture (scaled down to it, at its
        // bitrate, unless the session sets its size and bitrate), the others lower renditions
        // of it (at most 6: the transcoder's limit).
        let mut ladder = self.layers.clone();
        ladder.sort_by_key(|l| std::cmp::Reverse(l.height));
        ladder.dedup_by_key(|l| l.height);
        let video = self.video.clone().unwrap_or_default();
        let sized = video.width.is_some() || video.height.is_some();
        if let Some(top) = ladder.first().copied()
            && !sized
        {
            opt("--max-height", Some(top.height.to_string()));
            if video.bitrate.is_none() {
                opt("--video-bitrate", top.bitrate.map(|b| b.to_string()));
            }
            ladder.remove(0);
        }
        // With a set height, rungs not below it are the main picture.
        ladder.retain(|l| video.height.is_none_or(|h| l.height < h));
        let alternates: Vec<VideoCodec> = self.served_codecs().into_iter().skip(1).collect();
        for l in ladder.iter().take(6usize.saturating_sub(alternates.len())) {
            opt(
                "--layer",
                Some(match l.bitrate {
                    Some(b) => format!("{}:{b}", l.height),
                    None => l.height.to_string(),
                }),
            );
        }
        opt("--codec", Some(self.codec().arg().into()));
        for c in alternates {
            opt("--alt-codec", Some(c.arg().into()));
        }
        if let Some(a) = &self.audio {
            opt("--audio-bitrate", a.bitrate.map(|x| x.to_string()));
            opt("--channels", a.channels.map(|x| x.to_string()));
            opt("--cho", a.cho.map(|x| x.to_string()));
        }
        opt("--start", self.start.map(|x| x.to_string()));
        if self.looping == Some(true) {
            args.push("--loop".into());
        }
        // The gateway decides when it ends: at the end of the media it waits (viewers may seek
        // back), commands come on stdin, and its stdin closing ends it (no orphans).
        args.extend(["--on-end", "wait", "--control", "stdin"].map(String::from));
        args
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    pub rtc: SocketAddr,
    /// Addresses written into ICE candidates instead of (or besides) the bound one.
    pub public_ips: Vec<IpAddr>,
    pub keys: KeySource,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub transcoder: PathBuf,
    pub state_dir: PathBuf,
    /// Recordings go under `{recordings}/{session}/`.
    pub recordings: PathBuf,
    /// HLS of sessions without their own setting.
    pub hls: HlsMode,
    pub idle_timeout: Duration,
    pub demo: bool,
    pub cors_origins: Vec<String>,
    /// A PATCH without `If-Match` gets 428 (RFC 9725 §4.3.1; on by default). Off accepts them:
    /// some browser clients (whip-whep 1.2.0's WHEPClient) send trickle PATCHes without it.
    pub require_if_match: bool,
    /// A WHEP or WHIP resource not connected (ICE and DTLS) within this is removed, with its
    /// viewer slot or publisher claim.
    pub connect_timeout: Duration,
    /// Receive buffer asked for each RTC socket, bytes: a burst that does not fit is dropped
    /// by the kernel (counted in `wisp_udp_kernel_drops_total`).
    pub udp_recv_buffer: usize,
    /// Fan-out worker threads driving viewers (`--workers`; 0 in the file or flag: one per
    /// core).
    pub workers: usize,
    /// `GET /` lists session names to anonymous visitors (off: only to a token naming them).
    pub public_sessions: bool,
    /// Where Prometheus metrics are served.
    pub metrics: MetricsAt,
    /// RTMP publishers (`None`: off).
    pub rtmp: Option<SocketAddr>,
    /// SRT publishers (`None`: off).
    pub srt: Option<SocketAddr>,
    /// Pages served from this folder instead of the built-in ones (`http/pages.rs`).
    pub assets: Option<PathBuf>,
    pub limits: Limits,
    pub http_limits: HttpLimits,
    pub live: Live,
    /// `None`: a node of its own (no Redis, no redirects).
    pub cluster: Option<Cluster>,
    pub ice_servers: Vec<IceServer>,
    pub sessions: BTreeMap<String, SessionSpec>,
}

/// Where the token-verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    SecretFile(PathBuf),
    PublicKey(PathBuf),
    Jwks(PathBuf),
    /// None configured: a secret generated once and kept in the state directory.
    Generated,
}

/// A configuration the operator must fix; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("give only one of jwt_secret_file, jwt_public_key and jwks")]
    TwoKeys,
    #[error("session {name:?} in the config file: {source}")]
    Session { name: String, source: SpecError },
    #[error("a session in the config file has no name")]
    Unnamed,
    #[error("session {0:?} is defined twice")]
    Duplicate(String),
    #[error("ice server {0:?}: {1}")]
    IceServer(String, &'static str),
    #[error("{0}")]
    Value(String),
}

impl Config {
    /// Resolves flags/env over the file (if any) over defaults.
    pub fn resolve(over: Overrides, file_path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match file_path {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let keys = {
            let secret = over.jwt_secret_file.or(file.jwt_secret_file);
            let public = over.jwt_public_key.or(file.jwt_public_key);
            let jwks = over.jwks.or(file.jwks);
            match (secret, public, jwks) {
                (None, None, None) => KeySource::Generated,
                (Some(p), None, None) => KeySource::SecretFile(p),
                (None, Some(p), None) => KeySource::PublicKey(p),
                (None, None, Some(p)) => KeySource::Jwks(p),
                _ => return Err(ConfigError::TwoKeys),
            }
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_transcoders: file
                .limits
                .max_transcoders
                .unwrap_or(defaults.max_transcoders),
            max_viewers: file.limits.max_viewers.unwrap_or(defaults.max_viewers),
            max_viewers_per_session: file
                .limits
                .max_viewers_per_session
                .unwrap_or(defaults.max_viewers_per_session),
            max_publishers: file
                .limits
                .max_publishers
                .unwrap_or(defaults.max_publishers),
            max_ingest_bitrate: file
                .limits
                .max_ingest_bitrate
                .unwrap_or(defaults.max_ingest_bitrate),
        };
        let http_limits = {
            let d = HttpLimits::default();
            let secs = |v: Option<f64>, name: &str, default: Duration| match v {
                None => Ok(default),
                Some(s) if s.is_finite() && (0.1..=3600.0).contains(&s) => {
                    Ok(Duration::from_secs_f64(s))
                }
                Some(_) => Err(ConfigError::Value(format!(
                    "limits.{name} must be 0.1-3600 seconds"
                ))),
            };
            if file.limits.max_http_connections == Some(0) {
                return Err(ConfigError::Value(
                    "limits.max_http_connections must be at least 1".into(),
                ));
            }
            HttpLimits {
                max_connections: file.limits.max_http_connections,
                header_timeout: secs(
                    file.limits.http_header_timeout,
                    "http_header_timeout",
                    d.header_timeout,
                )?,
                body_timeout: secs(
                    file.limits.http_body_timeout,
                    "http_body_timeout",
                    d.body_timeout,
                )?,
                idle_timeout: secs(
                    file.limits.http_idle_timeout,
                    "http_idle_timeout",
                    d.idle_timeout,
                )?,
                max_body: d.max_body,
            }
        };
        if !(50_000..=1_000_000_000).contains(&limits.max_ingest_bitrate) {
            return Err(ConfigError::Value(
                "limits.max_ingest_bitrate must be 50000-1000000000 bits/s".into(),
            ));
        }
        let live = {
            let defaults = Live::default();
            let video_codecs = file.live.video_codecs.unwrap_or(defaults.video_codecs);
            if video_codecs.is_empty() {
                return Err(ConfigError::Value(
                    "live.video_codecs needs at least one of \"h264\", \"vp8\"".into(),
                ));
            }
            let mut unique = Vec::new();
            for c in video_codecs {
                if unique.contains(&c) {
                    return Err(ConfigError::Value(format!(
                        "live.video_codecs names {} twice",
                        c.name()
                    )));
                }
                unique.push(c);
            }
            if let Some(h) = file.live.max_height
                && !(144..=4320).contains(&h)
            {
                return Err(ConfigError::Value(format!(
                    "live.max_height must be 144-4320 pixels, not {h}"
                )));
            }
            Live {
                video_codecs: unique,
                wait: file.live.wait.unwrap_or(defaults.wait),
                max_height: file.live.max_height.map(|h| h & !1),
            }
        };
        for server in &file.ice_servers {
            validate_ice_server(server)?;
        }
        let demo = !over.no_demo && file.demo.unwrap_or(true);
        let mut sessions = BTreeMap::new();
        if demo {
            sessions.insert("demo".to_string(), SessionSpec::demo());
        }
        for spec in file.sessions {
            let name = spec.name.clone().ok_or(ConfigError::Unnamed)?;
            spec.validate().map_err(|source| ConfigError::Session {
                name: name.clone(),
                source,
            })?;
            if sessions.insert(name.clone(), spec).is_some() {
                return Err(ConfigError::Duplicate(name));
            }
        }
        let connect_timeout = match file.connect_timeout {
            None => Duration::from_secs(30),
            Some(s) if s.is_finite() && (0.5..=600.0).contains(&s) => Duration::from_secs_f64(s),
            Some(_) => {
                return Err(ConfigError::Value(
                    "connect_timeout must be 0.5-600 seconds".into(),
                ));
            }
        };
        let udp_recv_buffer = file.udp_recv_buffer.unwrap_or(4 << 20);
        if !(4096..=(256 << 20)).contains(&udp_recv_buffer) {
            return Err(ConfigError::Value(
                "udp_recv_buffer must be 4096 to 268435456 bytes".into(),
            ));
        }
        let cluster = match over.cluster.or(file.cluster.redis) {
            None => None,
            Some(redis) => {
                if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
                    return Err(ConfigError::Value(format!(
                        "cluster must be a redis:// or rediss:// URL, not {redis:?}"
                    )));
                }
                let node_url = over.node_url.or(file.cluster.node_url);
                if let Some(u) = &node_url
                    && !(u.starts_with("http://") || u.starts_with("https://"))
                {
                    return Err(ConfigError::Value(format!(
                        "node_url must be an http:// or https:// URL, not {u:?}"
                    )));
                }
                let capacity = over.capacity.or(file.cluster.capacity).unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
                });
                let d = Costs::default();
                let costs = Costs {
                    vod: file.cluster.cost_vod.unwrap_or(d.vod),
                    live: file.cluster.cost_live.unwrap_or(d.live),
                    viewer: file.cluster.cost_viewer.unwrap_or(d.viewer),
                };
                for (what, v) in [
                    ("capacity", capacity),
                    ("cost_vod", costs.vod),
                    ("cost_live", costs.live),
                    ("cost_viewer", costs.viewer),
                ] {
                    if !(v.is_finite() && (0.0..=100_000.0).contains(&v)) {
                        return Err(ConfigError::Value(format!(
                            "cluster {what} must be 0 to 100000 cores, not {v}"
                        )));
                    }
                }
                Some(Cluster {
                    redis,
                    node_url: node_url.map(|u| u.trim_end_matches('/').to_string()),
                    capacity,
                    costs,
                    relay: over.relay || file.cluster.relay.unwrap_or(false),
                    relay_above: file.cluster.relay_above.filter(|n| *n > 0),
                })
            }
        };
        let workers = match over.workers.or(file.workers).unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n <= 256 => n,
            _ => {
                return Err(ConfigError::Value(
                    "workers must be 0 (one per core) to 256".into(),
                ));
            }
        };
        let mut public_ips = over.public_ip;
        if public_ips.is_empty() {
            public_ips = file.public_ip;
        }
        let idle = over.idle_timeout_secs.or(file.idle_timeout).unwrap_or(60);
        let state_dir = over
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(default_state_dir);
        let recordings = over
            .recordings
            .or(file.recordings)
            .unwrap_or_else(|| state_dir.join("recordings"));
        Ok(Self {
            http: over
                .http
                .or(file.http)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            rtc: over
                .rtc
                .or(file.rtc)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443))),
            public_ips,
            keys,
            jwt_issuer: file.jwt_issuer,
            jwt_audience: file.jwt_audience,
            transcoder: over
                .transcoder
                .or(file.transcoder)
                .unwrap_or_else(default_transcoder),
            state_dir,
            recordings,
            hls: over.hls.or(file.hls).unwrap_or_default(),
            idle_timeout: Duration::from_secs(idle),
            demo,
            cors_origins: file.cors_origins.unwrap_or_else(|| vec!["*".into()]),
            require_if_match: file.require_if_match.unwrap_or(true),
            connect_timeout,
            udp_recv_buffer,
            workers,
            public_sessions: over
                .public_sessions
                .or(file.public_sessions)
                .unwrap_or(false),
            metrics: over.metrics.or(file.metrics).unwrap_or(MetricsAt::Main),
            rtmp: over
                .rtmp
                .or(file.rtmp)
                .unwrap_or(Listen::At(SocketAddr::from(([0, 0, 0, 0], 1935))))
                .addr(),
            srt: over
                .srt
                .or(file.srt)
                .unwrap_or(Listen::At(SocketAddr::from(([0, 0, 0, 0], 8890))))
                .addr(),
            assets: over.assets.or(file.assets),
            limits,
            http_limits,
            live,
            cluster,
            ice_servers: file.ice_servers,
            sessions,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn validate_ice_server(s: &IceServer) -> Result<(), ConfigError> {
    let first = s.urls.first().cloned().unwrap_or_default();
    if s.urls.is_empty() {
        return Err(ConfigError::IceServer(first, "needs at least one url"));
    }
    for url in &s.urls {
        let scheme = url.split(':').next().unwrap_or("");
        match scheme {
            "stun" | "stuns" => {}
            "turn" | "turns" => {
                if s.rest_secret.is_none() && (s.username.is_none() || s.credential.is_none()) {
                    return Err(ConfigError::IceServer(
                        url.clone(),
                        "TURN needs username and credential, or rest_secret",
                    ));
                }
            }
            _ => {
                return Err(ConfigError::IceServer(
                    url.clone(),
                    "scheme must be stun, stuns, turn or turns",
                ));
            }
        }
        // RFC 8288 Link values cannot carry these unquoted; some clients split on them.
        if url.contains(['<', '>', '"', ' ', ',']) {
            return Err(ConfigError::IceServer(
                url.clone(),
                "url has a forbidden character",
            ));
        }
    }
    Ok(())
}

/// `wisp-transcoder` next to our own executable (how releases and `cargo build` lay them out),
/// else whatever `PATH` finds.
fn default_transcoder() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join("wisp-transcoder");
        if sibling.exists() {
            return sibling;
        }
        // Test binaries live in target/<profile>/deps.
        if let Some(parent) = dir.parent() {
            let up = parent.join("wisp-transcoder");
            if dir.ends_with("deps") && up.exists() {
                return up;
            }
        }
    }
    PathBuf::from("wisp-transcoder")
}

/// `$XDG_STATE_HOME/wisp`, else `~/.local/state/wisp`, else `./wisp-state`.
fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("wisp");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/wisp");
    }
    PathBuf::from("wisp-state")
}

/// Where a program runs from: a path as it is, a bare name looked up on `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The log filter: `WISP_LOG`, else `RUST_LOG`, else `info`.
pub fn log_filter() -> String {
    std::env::var("WISP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wisp.example.toml` loads, and the values it says are the defaults are the defaults.
    #[test]
    fn the_example_configuration_loads_and_states_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wisp.example.toml");
        let c = Config::resolve(Overrides::default(), Some(&example)).expect("the example loads");
        let d = Config::resolve(Overrides::default(), None).unwrap();
        assert_eq!(
            (c.http, c.rtc, c.rtmp, c.srt, c.metrics),
            (d.http, d.rtc, d.rtmp, d.srt, d.metrics)
        );
        assert_eq!(
            (c.keys, c.state_dir, c.assets),
            (d.keys, d.state_dir, d.assets)
        );
        assert_eq!(
            (c.demo, c.idle_timeout, c.hls),
            (d.demo, d.idle_timeout, d.hls)
        );
        assert_eq!(
            (c.public_sessions, c.cors_origins, c.require_if_match),
            (d.public_sessions, d.cors_origins, d.require_if_match)
        );
        assert_eq!(
            (c.connect_timeout, c.udp_recv_buffer, c.workers),
            (d.connect_timeout, d.udp_recv_buffer, d.workers)
        );
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.http_limits, d.http_limits);
        assert_eq!(c.live, d.live);
        assert!(c.ice_servers.is_empty());
        let pattern = &c.sessions["pattern"];
        assert_eq!(pattern.codec(), VideoCodec::Vp8);
        assert_eq!(pattern.check_inputs().unwrap(), Vec::<&str>::new());
        // The commented-out [cluster] table, taken in, states the default costs.
        let text = std::fs::read_to_string(&example).unwrap();
        let start = text.find("# [cluster]").expect("a [cluster] example");
        let table: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let f = write(&table);
        let cluster = Config::resolve(Overrides::default(), Some(&f.0))
            .expect("the [cluster] example loads")
            .cluster
            .unwrap();
        assert_eq!(cluster.costs, Costs::default());
    }

    #[test]
    fn local_inputs_are_told_from_urls() {
        let input = |url: &str| InputSpec {
            url: url.into(),
            channel_count: None,
            id: None,
        };
        let local = |url: &str| input(url).local_path().map(|p| p.display().to_string());
        assert_eq!(local("/media/a.mp4").as_deref(), Some("/media/a.mp4"));
        assert_eq!(local("film.mp4").as_deref(), Some("film.mp4"));
        assert_eq!(
            local("file:///media/a.mp4").as_deref(),
            Some("/media/a.mp4")
        );
        assert_eq!(local("file:a.mp4").as_deref(), Some("a.mp4"));
        for url in ["demo", "https://x/a.mp4", "pipe:0", "srt://h:1"] {
            assert_eq!(local(url), None, "{url}");
        }
        let spec = SessionSpec {
            inputs: vec![input("https://cdn/a.mp4"), input("/nonexistent/b.wav")],
            ..SessionSpec::default()
        };
        let err = spec.check_inputs().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/b.wav") && err.contains("no such file"),
            "{err}"
        );
        let spec = SessionSpec {
            inputs: vec![input("https://cdn/a.mp4"), input("/")],
            ..SessionSpec::default()
        };
        assert!(
            spec.check_inputs()
                .unwrap_err()
                .to_string()
                .contains("folder")
        );
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    /// A file removed on drop, without another dependency.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("wisp-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn the_cluster_comes_from_the_flag_or_the_file_and_takes_only_its_url_schemes() {
        let f = write(
            r#"
            [cluster]
            redis = "redis://10.0.0.5:6379/0"
            node_url = "http://10.0.0.11:8080/"
            capacity = 6
            cost_vod = 0.5
            "#,
        );
        let c = Config::resolve(Overrides::default(), Some(&f.0)).unwrap();
        assert_eq!(
            c.cluster,
            Some(Cluster {
                redis: "redis://10.0.0.5:6379/0".into(),
                node_url: Some("http://10.0.0.11:8080".into()),
                capacity: 6.0,
                costs: Costs {
                    vod: 0.5,
                    ..Costs::default()
                },
                relay: false,
                relay_above: None,
            })
        );
        let over = Overrides {
            cluster: Some("redis://127.0.0.1:6400/1".into()),
            ..Overrides::default()
        };
        let c = Config::resolve(over, Some(&f.0)).unwrap();
        assert_eq!(
            c.cluster.unwrap().redis,
            "redis://127.0.0.1:6400/1",
            "flag wins"
        );
        assert_eq!(
            Config::resolve(Overrides::default(), None).unwrap().cluster,
            None
        );
        for (cluster, node, says) in [
            ("http://10.0.0.5:6379", None, "cluster must be a redis://"),
            (
                "redis://10.0.0.5",
                Some("10.0.0.11:8080"),
                "node_url must be an http://",
            ),
        ] {
            let over = Overrides {
                cluster: Some(cluster.into()),
                node_url: node.map(String::from),
                ..Overrides::default()
            };
            let e = Config::resolve(over, None).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let f = write(
            r#"
            http = "127.0.0.1:9000"
            rtc = "127.0.0.1:9001"
            idle_timeout = 5
            [limits]
            max_viewers = 3
            [[sessions]]
            name = "film"
            inputs = [{ url = "/media/film.mp4", channel_count = 6, id = "main" }]
            video = { width = 640, height = 360, codec = "vp8" }
            loop = true
            "#,
        );
        let over = Overrides {
            http: Some("127.0.0.1:7000".parse().unwrap()),
            ..Overrides::default()
        };
        let c = Config::resolve(over, Some(&f.0)).unwrap();
        assert_eq!(c.http, "127.0.0.1:7000".parse().unwrap(), "flag wins");
        assert_eq!(
            c.rtc,
            "127.0.0.1:9001".parse().unwrap(),
            "file beats default"
        );
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_viewers, 3);
        assert_eq!(c.limits.max_transcoders, Limits::default().max_transcoders);
        assert_eq!(c.keys, KeySource::Generated);
        assert!(c.sessions.contains_key("demo"));
        let film = &c.sessions["film"];
        assert_eq!(film.codec(), VideoCodec::Vp8);
        let args = film.transcoder_args().join(" ");
        assert!(
            args.starts_with("-i /media/film.mp4 channel_count=6 id=main --width 640 --height 360"),
            "{args}"
        );
        assert!(
            args.contains("--codec vp8") && args.contains("--loop"),
            "{args}"
        );
        assert!(args.ends_with("--on-end wait --control stdin"), "{args}");
    }

    #[test]
    fn other_codecs_become_alt_codec_tracks_after_the_ladder() {
        let mut spec: SessionSpec = toml::from_str(
            r#"
            inputs = [{ url = "demo" }]
            codecs = ["vp8", "h264"]
            layers = [{ height = 720 }, { height = 360 }]
            "#,
        )
        .expect("parses");
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.codec(), VideoCodec::Vp8, "the first is the main one");
        assert_eq!(spec.served_codecs(), [VideoCodec::Vp8, VideoCodec::H264]);
        let args = spec.transcoder_args().join(" ");
        assert!(
            args.contains("--layer 360 --codec vp8 --alt-codec h264"),
            "{args}"
        );
        // Seven video tracks at most: six rungs and one other codec is one too many.
        spec.layers = (1..=7)
            .map(|i| LayerSpec {
                height: 100 * i,
                bitrate: None,
            })
            .collect();
        assert!(matches!(spec.validate(), Err(SpecError::Range(_))));
        spec.layers.truncate(6);
        assert_eq!(spec.validate(), Ok(()));
        spec.codecs = vec![VideoCodec::H264, VideoCodec::H264];
        assert!(matches!(spec.validate(), Err(SpecError::Range(_))));
        spec.codecs = vec![VideoCodec::H264, VideoCodec::Vp8];
        spec.video = Some(VideoSpec {
            codec: Some(VideoCodec::Vp8),
            ..VideoSpec::default()
        });
        assert_eq!(spec.validate(), Err(SpecError::CodecsOrder("VP8")));
        let pulled = SessionSpec {
            live: Some(PullSpec {
                url: "rtsp://cam/1".into(),
                video: LiveVideo::default(),
            }),
            codecs: vec![VideoCodec::H264, VideoCodec::Vp8],
            ..SessionSpec::default()
        };
        assert_eq!(pulled.validate(), Err(SpecError::CodecsLive));
    }

    #[test]
    fn a_ladder_becomes_the_main_picture_and_lower_layers() {
        let layer = |height, bitrate| LayerSpec { height, bitrate };
        let mut spec = SessionSpec {
            inputs: vec![InputSpec {
                url: "demo".into(),
                channel_count: None,
                id: None,
            }],
            layers: vec![
                layer(360, None),
                layer(720, Some(3_000_000)),
                layer(180, Some(200_000)),
            ],
            ..SessionSpec::default()
        };
        assert_eq!(spec.validate(), Ok(()));
        let args = spec.transcoder_args().join(" ");
        assert!(
            args.contains(
                "--max-height 720 --video-bitrate 3000000 --layer 360 --layer 180:200000"
            ),
            "the tallest is the main picture, at its bitrate: {args}"
        );
        // A set size: rungs below it only.
        spec.video = Some(VideoSpec {
            height: Some(480),
            ..VideoSpec::default()
        });
        let args = spec.transcoder_args().join(" ");
        assert!(
            !args.contains("--max-height") && !args.contains("--layer 720"),
            "{args}"
        );
        assert!(args.contains("--layer 360 --layer 180:200000"), "{args}");
        spec.layers = vec![layer(300, None); 8];
        assert!(matches!(spec.validate(), Err(SpecError::Range(_))));
        spec.layers = vec![layer(301, None)];
        assert!(matches!(spec.validate(), Err(SpecError::Range(_))));
        let pulled = SessionSpec {
            live: Some(PullSpec {
                url: "rtsp://cam/1".into(),
                video: LiveVideo::default(),
            }),
            layers: vec![layer(360, None)],
            ..SessionSpec::default()
        };
        assert_eq!(pulled.validate(), Err(SpecError::LayersLive));
    }

    #[test]
    fn live_settings_and_publisher_limits_come_from_the_file() {
        let c = Config::resolve(Overrides::default(), None).unwrap();
        assert_eq!(c.live, Live::default());
        assert_eq!(c.live.video_codecs, [VideoCodec::H264, VideoCodec::Vp8]);
        let f = write(
            "[live]\nvideo_codecs = [\"vp8\"]\nwait = true\nmax_height = 720\n\
             [limits]\nmax_publishers = 2\nmax_ingest_bitrate = 500000\n",
        );
        let c = Config::resolve(Overrides::default(), Some(&f.0)).unwrap();
        assert_eq!(c.live.video_codecs, [VideoCodec::Vp8]);
        assert!(c.live.wait);
        assert_eq!(c.live.max_height, Some(720));
        assert_eq!(c.limits.max_publishers, 2);
        assert_eq!(c.limits.max_ingest_bitrate, 500_000);
        for (text, needle) in [
            ("[live]\nvideo_codecs = []", "live.video_codecs"),
            ("[live]\nmax_height = 100", "live.max_height"),
            ("[live]\nvideo_codecs = [\"vp8\", \"vp8\"]", "twice"),
            ("[live]\nvideo_codecs = [\"av1\"]", "av1"),
            ("[limits]\nmax_ingest_bitrate = 10", "max_ingest_bitrate"),
        ] {
            let f = write(text);
            let e = Config::resolve(Overrides::default(), Some(&f.0)).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn mistakes_in_the_file_name_the_setting() {
        let f = write("htp = \"1.2.3.4:5\"");
        let e = Config::resolve(Overrides::default(), Some(&f.0)).unwrap_err();
        assert!(e.to_string().contains("htp"), "{e}");
        let f = write("[[sessions]]\nname = \"a b\"\ninputs = [{ url = \"x\" }]");
        let e = Config::resolve(Overrides::default(), Some(&f.0)).unwrap_err();
        assert!(e.to_string().contains("not allowed"), "{e}");
        let f = write("[[ice_servers]]\nurls = [\"turn:turn.example:3478\"]");
        let e = Config::resolve(Overrides::default(), Some(&f.0)).unwrap_err();
        assert!(e.to_string().contains("TURN needs"), "{e}");
        let f = write("[[sessions]]\nname = \"demo\"\ninputs = [{ url = \"x\" }]");
        let e = Config::resolve(Overrides::default(), Some(&f.0)).unwrap_err();
        assert!(matches!(e, ConfigError::Duplicate(_)), "{e}");
        let over = Overrides {
            jwt_secret_file: Some("a".into()),
            jwks: Some("b".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::resolve(over, None),
            Err(ConfigError::TwoKeys)
        ));
    }

    #[test]
    fn spec_validation_refuses_what_the_transcoder_would() {
        let mut s = SessionSpec::demo();
        assert_eq!(s.validate(), Ok(()));
        s.video.as_mut().unwrap().width = Some(641);
        assert!(matches!(s.validate(), Err(SpecError::Range(_))));
        let mut s = SessionSpec::demo();
        s.inputs[0].url = "--evil".into();
        assert_eq!(s.validate(), Err(SpecError::InputUrl));
        s.inputs.clear();
        assert_eq!(s.validate(), Err(SpecError::NoInputs));
    }
}
