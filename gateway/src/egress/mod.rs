//! Egress: what a session sends, turned into something else by a process that reads its ring
//! (DESIGN.md "Egress"): a recording to a file, HLS (a ladder of renditions the gateway
//! serves under `/hls/`), a restream to an RTMP or SRT server, or the audio as PCM over a
//! WebSocket the gateway dials.
//!
//! Owns the API model (what a POST may ask for and what GET shows), the registry of a
//! gateway's egresses, and their supervision; the muxing is the transcoder's (`wisp-transcoder
//! egress`). HTTP status codes are chosen in `http/mod.rs`, the handlers are in `http/api.rs`.
//!
//! # Layout
//! - `mod.rs`: the request model and its validation, the registry.
//! - `process.rs`: one `wisp-transcoder egress` child: spawn with the ring, events, stop.
//! - `supervise.rs`: one task per egress: waits for the session's source, runs the process,
//!   starts a new file for a new source, restarts after a crash, keeps the state the API shows.
//! - `websocket.rs`: the WebSocket egress's task: the connection it dials, the audio and events
//!   it sends.

mod process;
mod supervise;
mod websocket;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::VideoCodec;
use crate::metrics::Metrics;
use crate::session::{JoinError, Session};
pub use supervise::{Egress, EgressInfo, EgressState};

/// Every kind the API knows, as error messages list them.
pub const KINDS: &str = "record, hls, rtmp, srt, websocket";
/// The longest recording `max_seconds` may ask for: a week.
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;
/// Finished egresses a session keeps for GET (the oldest go first).
const KEEP_FINISHED: usize = 20;

/// What an egress makes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EgressSpec {
    /// The session, as sent, into a file under the recordings directory.
    Record {
        format: RecordFormat,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_seconds: Option<f64>,
    },
    /// The session pushed to an RTMP server (FLV: H.264 copied, AAC).
    Rtmp { url: String },
    /// The session pushed to an SRT listener (MPEG-TS: H.264 copied, AAC).
    Srt { url: String },
    /// The audio as PCM s16le over a WebSocket (`ws://`, `wss://`), with events as text.
    Websocket { url: String, audio: PcmFormat },
    /// A ladder of renditions as HLS (CMAF segments), served at `/hls/{session}/index.m3u8`.
    Hls {
        /// Empty: the source copied, 360p and 180p.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ladder: Vec<LadderRung>,
    },
}

/// The PCM a WebSocket egress sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PcmFormat {
    pub rate: u32,
    pub channels: u32,
}

/// One rendition of an HLS ladder: a height, and optionally a video bitrate. A rung as tall as
/// the source or taller is the source's video, copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LadderRung {
    pub height: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
}

/// At most this many renditions.
const MAX_RUNGS: usize = 6;

/// A recording's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    Mp4,
    Webm,
    Mkv,
    Ogg,
}

impl RecordFormat {
    pub const NAMES: &'static str = "mp4, webm, mkv, ogg";

    pub fn name(self) -> &'static str {
        match self {
            RecordFormat::Mp4 => "mp4",
            RecordFormat::Webm => "webm",
            RecordFormat::Mkv => "mkv",
            RecordFormat::Ogg => "ogg",
        }
    }

    /// Why this container cannot hold `video`, if it cannot (as the egress process would
    /// refuse it).
    pub fn refuses(self, video: VideoCodec) -> Option<String> {
        match (self, video) {
            (RecordFormat::Mp4, VideoCodec::Vp8) => Some(
                "MP4 recordings hold H.264 video, and this session's video is VP8: record webm \
                 or mkv"
                    .into(),
            ),
            (RecordFormat::Webm, VideoCodec::H264) => Some(
                "WebM holds VP8 video, and this session's video is H.264: record mp4 or mkv".into(),
            ),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mp4" => RecordFormat::Mp4,
            "webm" => RecordFormat::Webm,
            "mkv" => RecordFormat::Mkv,
            "ogg" => RecordFormat::Ogg,
            _ => return None,
        })
    }
}

/// Why an egress cannot start now.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("the session already has an HLS egress ({0}); DELETE it first")]
    HlsRunning(String),
    #[error("HLS of this session failed a moment ago: {0}")]
    Failed(String),
}

/// How long an on-demand HLS that failed is not started again.
pub const HLS_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an egress request is refused: it is the client's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
}

impl EgressSpec {
    /// Reads a POST body, naming what is wrong and what is allowed.
    pub fn parse(body: &[u8]) -> Result<Self, SpecError> {
        let invalid = |m: String| SpecError::Invalid(m);
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the egress is not JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(invalid(
                "an egress is a JSON object, e.g. {\"kind\":\"record\",\"format\":\"mp4\"}".into(),
            ));
        };
        let kind = match fields.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            _ => return Err(invalid(format!("give \"kind\": one of {KINDS}"))),
        };
        match kind {
            "record" => {
                const FIELDS: &str = "kind, format, max_seconds";
                if let Some(unknown) = fields
                    .keys()
                    .find(|k| !["kind", "format", "max_seconds"].contains(&k.as_str()))
                {
                    return Err(invalid(format!(
                        "unknown field {unknown:?} for a record egress (it takes {FIELDS})"
                    )));
                }
                let format = match fields.get("format") {
                    Some(Value::String(f)) => RecordFormat::parse(f).ok_or_else(|| {
                        invalid(format!(
                            "unknown format {f:?}; one of {}",
                            RecordFormat::NAMES
                        ))
                    })?,
                    _ => {
                        return Err(invalid(format!(
                            "give \"format\": one of {}",
                            RecordFormat::NAMES
                        )));
                    }
                };
                let max_seconds = match fields.get("max_seconds") {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_f64() {
                        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECONDS => Some(s),
                        _ => {
                            return Err(invalid(format!(
                                "\"max_seconds\" is a number of seconds, more than 0 and at \
                                 most {MAX_SECONDS}"
                            )));
                        }
                    },
                };
                Ok(EgressSpec::Record {
                    format,
                    max_seconds,
                })
            }
            "hls" => {
                if let Some(unknown) = fields
                    .keys()
                    .find(|k| !["kind", "ladder"].contains(&k.as_str()))
                {
                    return Err(invalid(format!(
                        "unknown field {unknown:?} for an hls egress (it takes kind, ladder)"
                    )));
                }
                let ladder = match fields.get("ladder") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(rungs)) if (1..=MAX_RUNGS).contains(&rungs.len()) => rungs
                        .iter()
                        .map(LadderRung::parse)
                        .collect::<Result<_, _>>()
                        .map_err(invalid)?,
                    Some(_) => {
                        return Err(invalid(format!(
                            "\"ladder\" is a list of 1 to {MAX_RUNGS} renditions, e.g. \
                             [{{\"height\":720}},{{\"height\":360,\"bitrate\":800000}}]"
                        )));
                    }
                };
                Ok(EgressSpec::Hls { ladder })
            }
            "rtmp" | "srt" => {
                if let Some(unknown) = fields
                    .keys()
                    .find(|k| !["kind", "url"].contains(&k.as_str()))
                {
                    return Err(invalid(format!(
                        "unknown field {unknown:?} for an {kind} egress (it takes kind, url)"
                    )));
                }
                let schemes: &[&str] = match kind {
                    "rtmp" => &["rtmp://", "rtmps://"],
                    _ => &["srt://"],
                };
                let url = match fields.get("url") {
                    Some(Value::String(u))
                        if schemes.iter().any(|s| u.starts_with(s))
                            && u.len() <= 2048
                            && !u.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                    {
                        u.clone()
                    }
                    _ => {
                        return Err(invalid(format!(
                            "give \"url\": the server to push to, {}",
                            match kind {
                                "rtmp" => "rtmp://HOST[:PORT]/APP/STREAM-KEY (or rtmps://)",
                                _ => "srt://HOST:PORT[?streamid=…]",
                            }
                        )));
                    }
                };
                Ok(match kind {
                    "rtmp" => EgressSpec::Rtmp { url },
                    _ => EgressSpec::Srt { url },
                })
            }
            "websocket" => {
                if let Some(unknown) = fields
                    .keys()
                    .find(|k| !["kind", "url", "audio"].contains(&k.as_str()))
                {
                    return Err(invalid(format!(
                        "unknown field {unknown:?} for a websocket egress (it takes kind, url, audio)"
                    )));
                }
                let url = match fields.get("url") {
                    Some(Value::String(u))
                        if (u.starts_with("ws://") || u.starts_with("wss://"))
                            && u.len() <= 2048
                            && !u.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                    {
                        u.clone()
                    }
                    _ => {
                        return Err(invalid(
                            "give \"url\": the WebSocket to send to, ws://HOST[:PORT]/PATH or wss://…"
                                .into(),
                        ));
                    }
                };
                let bad_audio = || {
                    invalid(
                        "\"audio\" is {\"rate\": 8000 to 48000, \"channels\": 1 or 2} \
                         (default 16000 Hz, mono)"
                            .into(),
                    )
                };
                let audio = match fields.get("audio") {
                    None | Some(Value::Null) => PcmFormat {
                        rate: 16_000,
                        channels: 1,
                    },
                    Some(Value::Object(a)) => {
                        if a.keys().any(|k| k != "rate" && k != "channels") {
                            return Err(bad_audio());
                        }
                        let rate = match a.get("rate") {
                            None => 16_000,
                            Some(r) => {
                                r.as_u64()
                                    .filter(|r| (8_000..=48_000).contains(r))
                                    .ok_or_else(bad_audio)? as u32
                            }
                        };
                        let channels = match a.get("channels") {
                            None => 1,
                            Some(c) => {
                                c.as_u64()
                                    .filter(|c| (1..=2).contains(c))
                                    .ok_or_else(bad_audio)? as u32
                            }
                        };
                        PcmFormat { rate, channels }
                    }
                    Some(_) => return Err(bad_audio()),
                };
                Ok(EgressSpec::Websocket { url, audio })
            }

            other => Err(invalid(format!(
                "unknown egress kind {other:?}; one of {KINDS}"
            ))),
        }
    }
}

impl LadderRung {
    fn parse(v: &Value) -> Result<Self, String> {
        let Value::Object(f) = v else {
            return Err("a rendition is an object: {\"height\":360,\"bitrate\":800000}".into());
        };
        if let Some(unknown) = f
            .keys()
            .find(|k| !["height", "bitrate"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field {unknown:?} for a rendition (it takes height, bitrate)"
            ));
        }
        let height = f
            .get("height")
            .and_then(Value::as_u64)
            .filter(|h| (32..=4320).contains(h))
            .ok_or("a rendition's \"height\" is a number of lines, 32 to 4320")?
            as u32;
        let bitrate = match f.get("bitrate") {
            None | Some(Value::Null) => None,
            Some(b) => Some(
                b.as_u64()
                    .filter(|b| (50_000..=50_000_000).contains(b))
                    .ok_or("a rendition's \"bitrate\" is bits per second, 50000 to 50000000")?,
            ),
        };
        Ok(Self { height, bitrate })
    }

    /// As `wisp-transcoder egress hls --rendition` takes it.
    pub fn arg(&self) -> String {
        match self.bitrate {
            Some(b) => format!("{}:{b}", self.height),
            None => self.height.to_string(),
        }
    }
}

/// A session definition's `egress` list, read as POSTs are; or the index of the first that is
/// refused, and why.
pub fn specs_of(values: &[Value]) -> Result<Vec<EgressSpec>, (usize, String)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| EgressSpec::parse(v.to_string().as_bytes()).map_err(|e| (i, e.to_string())))
        .collect()
}

/// What egresses need from the gateway.
#[derive(Debug, Clone)]
pub struct EgressContext {
    /// The `wisp-transcoder` executable (its `egress` mode).
    pub program: PathBuf,
    /// Recordings go under `{recordings}/{session}/`.
    pub recordings: PathBuf,
    /// HLS goes under `{hls}/{session}/`.
    pub hls: PathBuf,
    /// An on-demand HLS egress stops after this long with no request.
    pub idle_timeout: std::time::Duration,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway shuts down.
    pub cancel: CancellationToken,
}

/// A gateway's egresses, running and recently finished.
#[derive(Debug)]
pub struct Egresses {
    ctx: EgressContext,
    all: Mutex<Vec<Arc<Egress>>>,
}

impl Egresses {
    pub fn new(ctx: EgressContext) -> Self {
        Self {
            ctx,
            all: Mutex::new(Vec::new()),
        }
    }

    /// Starts an egress of `session`. It holds a consumer slot in the session (a VOD
    /// session's transcoder starts for it and keeps running) until it finishes. An
    /// `on_demand` one (HLS started by a player's request) stops after the idle timeout with no
    /// request.
    pub fn start(
        &self,
        session: &Arc<Session>,
        spec: EgressSpec,
        on_demand: bool,
    ) -> Result<Arc<Egress>, StartError> {
        let mut all = self.all.lock().expect("not poisoned");
        if matches!(spec, EgressSpec::Hls { .. })
            && let Some(running) = all
                .iter()
                .find(|e| e.session == session.name && e.is_hls() && !e.is_finished())
        {
            return Err(StartError::HlsRunning(running.id.clone()));
        }
        let slot = session.join_egress(&self.ctx.metrics)?;
        let hls_dir = self.ctx.hls.join(&session.name);
        let egress = Egress::new(&session.name, spec, on_demand, hls_dir);
        // Forget the oldest finished ones of this session beyond the ones kept.
        let finished: Vec<String> = all
            .iter()
            .filter(|e| e.session == session.name && e.is_finished())
            .map(|e| e.id.clone())
            .collect();
        if finished.len() >= KEEP_FINISHED {
            let gone = &finished[..finished.len() + 1 - KEEP_FINISHED];
            all.retain(|e| !gone.contains(&e.id));
        }
        all.push(egress.clone());
        drop(all);
        let span = tracing::info_span!("egress", session = %session.name, egress = %egress.id);
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            match egress.spec() {
                EgressSpec::Websocket { url, audio } => Box::pin(websocket::run(
                    egress.clone(),
                    slot,
                    self.ctx.clone(),
                    url,
                    audio,
                )),
                _ => Box::pin(supervise::run(egress.clone(), slot, self.ctx.clone())),
            };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        Ok(egress)
    }

    /// A session's egresses, oldest first.
    pub fn of(&self, session: &str) -> Vec<Arc<Egress>> {
        let all = self.all.lock().expect("not poisoned");
        all.iter()
            .filter(|e| e.session == session)
            .cloned()
            .collect()
    }

    /// One egress of a session.
    pub fn get(&self, session: &str, id: &str) -> Option<Arc<Egress>> {
        let all = self.all.lock().expect("not poisoned");
        all.iter()
            .find(|e| e.session == session && e.id == id)
            .cloned()
    }

    /// The session's HLS egress that is not finished, if any.
    pub fn hls_of(&self, session: &str) -> Option<Arc<Egress>> {
        let all = self.all.lock().expect("not poisoned");
        all.iter()
            .find(|e| e.session == session && e.is_hls() && !e.is_finished())
            .cloned()
    }

    /// The session's HLS egress, started on demand if none runs.
    /// One that failed a moment ago (a source HLS cannot take) is not tried again for
    /// [`HLS_RETRY_AFTER`]: players' requests do not each start a process.
    pub fn hls_on_demand(&self, session: &Arc<Session>) -> Result<Arc<Egress>, StartError> {
        if let Some(e) = self.hls_of(&session.name) {
            return Ok(e);
        }
        let failed = self
            .of(&session.name)
            .iter()
            .rev()
            .filter(|e| e.is_hls())
            .find_map(|e| e.failed_within(HLS_RETRY_AFTER));
        if let Some(why) = failed {
            return Err(StartError::Failed(why));
        }
        match self.start(session, EgressSpec::Hls { ladder: Vec::new() }, true) {
            // Another request started it in between.
            Err(StartError::HlsRunning(_)) => self
                .hls_of(&session.name)
                .ok_or(StartError::Join(JoinError::Stopping)),
            other => other,
        }
    }

    /// Egress processes running now.
    pub fn running(&self) -> usize {
        self.ctx
            .metrics
            .egresses
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Starts a session's HLS for good (`hls = "always"`).
pub fn start_hls(
    egresses: &crate::egress::Egresses,
    session: &std::sync::Arc<crate::session::Session>,
) {
    if session.spec.codec() != crate::config::VideoCodec::H264 {
        tracing::warn!(session = %session.name, "hls = \"always\" needs H.264 video; this session's is VP8");
        return;
    }
    let spec = crate::egress::EgressSpec::Hls { ladder: Vec::new() };
    match egresses.start(session, spec, false) {
        Ok(e) => {
            tracing::info!(session = %session.name, egress = %e.id, "HLS started (hls = always)")
        }
        Err(e) => tracing::warn!(session = %session.name, "HLS not started: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EgressSpec, SpecError> {
        EgressSpec::parse(json.as_bytes())
    }

    #[test]
    fn a_record_request_names_its_format_and_optional_length() {
        assert_eq!(
            parse(r#"{"kind":"record","format":"mp4"}"#),
            Ok(EgressSpec::Record {
                format: RecordFormat::Mp4,
                max_seconds: None
            })
        );
        assert_eq!(
            parse(r#"{"kind":"record","format":"ogg","max_seconds":12.5}"#),
            Ok(EgressSpec::Record {
                format: RecordFormat::Ogg,
                max_seconds: Some(12.5)
            })
        );
    }

    #[test]
    fn a_websocket_egress_names_its_url_and_pcm() {
        assert_eq!(
            parse(r#"{"kind":"websocket","url":"ws://127.0.0.1:9/asr"}"#),
            Ok(EgressSpec::Websocket {
                url: "ws://127.0.0.1:9/asr".into(),
                audio: PcmFormat {
                    rate: 16_000,
                    channels: 1
                }
            })
        );
        assert_eq!(
            parse(r#"{"kind":"websocket","url":"wss://a/b","audio":{"rate":48000,"channels":2}}"#),
            Ok(EgressSpec::Websocket {
                url: "wss://a/b".into(),
                audio: PcmFormat {
                    rate: 48_000,
                    channels: 2
                }
            })
        );
    }

    #[test]
    fn a_restream_names_its_server() {
        assert_eq!(
            parse(r#"{"kind":"rtmp","url":"rtmp://127.0.0.1/live/key"}"#),
            Ok(EgressSpec::Rtmp {
                url: "rtmp://127.0.0.1/live/key".into()
            })
        );
        assert_eq!(
            parse(r#"{"kind":"srt","url":"srt://127.0.0.1:9000?streamid=x"}"#),
            Ok(EgressSpec::Srt {
                url: "srt://127.0.0.1:9000?streamid=x".into()
            })
        );
    }

    #[test]
    fn an_hls_request_may_give_its_ladder() {
        assert_eq!(
            parse(r#"{"kind":"hls"}"#),
            Ok(EgressSpec::Hls { ladder: vec![] })
        );
        let spec =
            parse(r#"{"kind":"hls","ladder":[{"height":720},{"height":360,"bitrate":800000}]}"#)
                .unwrap();
        let EgressSpec::Hls { ladder } = spec else {
            panic!("{spec:?}")
        };
        let args: Vec<String> = ladder.iter().map(LadderRung::arg).collect();
        assert_eq!(args, ["720", "360:800000"]);
    }

    #[test]
    fn refusals_say_what_is_allowed() {
        let message = |json| match parse(json) {
            Err(SpecError::Invalid(m)) => m,
            other => panic!("{json}: {other:?}"),
        };
        assert!(message(r#"{"kind":"podcast"}"#).contains(KINDS));
        assert!(message(r#"{"format":"mp4"}"#).contains("give \"kind\""));
        assert!(message(r#"{"kind":"record"}"#).contains("mp4, webm, mkv, ogg"));
        assert!(message(r#"{"kind":"record","format":"avi"}"#).contains("unknown format \"avi\""));
        assert!(
            message(r#"{"kind":"record","format":"mp4","max_seconds":-1}"#).contains("max_seconds")
        );
        assert!(
            message(r#"{"kind":"record","format":"mp4","max_seconds":"10"}"#)
                .contains("max_seconds")
        );
        assert!(message(r#"{"kind":"record","format":"mp4","path":"/etc"}"#).contains("\"path\""));
        assert!(message(r#"["record"]"#).contains("JSON object"));
        assert!(message("{").contains("not JSON"));
        assert!(message(r#"{"kind":"websocket","url":"http://x/y"}"#).contains("ws://HOST"));
        assert!(
            message(r#"{"kind":"websocket","url":"ws://x/y","audio":{"rate":4000}}"#)
                .contains("8000 to 48000")
        );
        assert!(
            message(r#"{"kind":"websocket","url":"ws://x/y","audio":{"channels":6}}"#)
                .contains("1 or 2")
        );
        assert!(message(r#"{"kind":"rtmp"}"#).contains("rtmp://HOST"));
        assert!(message(r#"{"kind":"rtmp","url":"http://x/y"}"#).contains("rtmp://HOST"));
        assert!(message(r#"{"kind":"srt","url":"srt://a b"}"#).contains("srt://HOST:PORT"));
        assert!(message(r#"{"kind":"srt","url":"srt://h:1","latency":1}"#).contains("\"latency\""));
        assert!(message(r#"{"kind":"hls","ladder":[]}"#).contains("1 to 6 renditions"));
        assert!(message(r#"{"kind":"hls","ladder":[{"height":5}]}"#).contains("32 to 4320"));
        assert!(
            message(r#"{"kind":"hls","ladder":[{"height":360,"bitrate":1}]}"#).contains("bitrate")
        );
        assert!(
            message(r#"{"kind":"hls","ladder":[{"height":360,"fps":60}]}"#).contains("\"fps\"")
        );
        assert!(message(r#"{"kind":"hls","segments":4}"#).contains("\"segments\""));
    }
}
