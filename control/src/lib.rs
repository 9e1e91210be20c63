//! The protocol between the gateway and a `wisp-transcoder` child (DESIGN.md "Control and
//! events"): commands as JSON lines on the child's stdin, events as JSON lines on its stdout.
//!
//! Owns the message types only, so that both sides compile against one definition; reading
//! pipes, acting on commands and supervising processes belong to the two crates that use it.
//!
//! ```
//! use wisp_control::{Command, Event};
//! let line = serde_json::to_string(&Command::Seek { to: Some(12.5), frame: None }).unwrap();
//! assert_eq!(line, r#"{"op":"seek","to":12.5}"#);
//! let ev: Event = serde_json::from_str(r#"{"event":"position","position":1.5,"frame":45}"#).unwrap();
//! assert_eq!(ev, Event::Position { position: 1.5, frame: 45 });
//! ```
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// A command for a transcoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Play,
    Pause,
    /// Go to a time (`to`, seconds) or a frame (`frame`, counted from 0 at the output rate).
    Seek {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frame: Option<u64>,
    },
    /// While paused, emit exactly one frame `frames` away (negative: backwards).
    Step {
        frames: i64,
    },
    /// Take audio from input `input` (its id or position), rendering `channels` as stereo.
    SelectAudio {
        input: InputRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channels: Option<Vec<u32>>,
    },
    /// Make the next video frame a keyframe (a viewer joined or lost packets).
    Keyframe,
    /// Report state and position now.
    Status,
    /// Stop and exit.
    Stop,
}

/// An input named by its id string or its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    Index(usize),
    Id(String),
}

/// Playback state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayState {
    Playing,
    Paused,
    Ended,
}

/// A track as `ready` describes it, enough for the gateway to write SDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Ring track index.
    pub index: u8,
    /// `video` or `audio`.
    pub kind: String,
    /// Codec name as SDP writes it: `H264`, `VP8`, `opus`.
    pub codec: String,
    pub payload_type: u8,
    pub clock_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    pub ssrc: u32,
    #[serde(default)]
    pub fmtp: String,
    /// A video track that is one rendition of several (a ladder): what it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<LayerInfo>,
}

/// One rendition of a ladder: its name, picture and target bitrate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// `"360p"`: how viewers and the API name it.
    pub rid: String,
    pub width: u32,
    pub height: u32,
    /// Target bits/s.
    pub bitrate: u64,
}

/// An input as `ready` describes it, for audio selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    pub id: String,
    pub index: usize,
    pub audio_channels: Option<u32>,
}

/// An event from a transcoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Ready {
        tracks: Vec<TrackInfo>,
        /// Seconds, or null for endless sources (live URLs, the demo).
        duration: Option<f64>,
        fps: f64,
        width: u32,
        height: u32,
        #[serde(default)]
        inputs: Vec<InputInfo>,
        #[serde(default)]
        audio_input: Option<String>,
        #[serde(default)]
        audio_channels: Vec<u32>,
        /// What the source sends, as people name it: `"h264 High 1920x1080 30 fps"`,
        /// `"aac 44100 Hz 2 ch"` (none for the demo).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_video: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_audio: Option<String>,
    },
    State {
        state: PlayState,
        position: f64,
        frame: u64,
    },
    Position {
        position: f64,
        frame: u64,
    },
    /// `code`: `input` (cannot open), `bad_request`, `not_supported`, `ring`, `playback`, ...
    /// `id`: the request this refuses, when the command carried one (see [`request_line`]).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: String,
        message: String,
    },
    /// The command with this `id` was carried out (its `state`/`ready` event came first).
    Done {
        id: u64,
    },
    /// Totals, at exit.
    Stats {
        video_frames: u64,
        audio_frames: u64,
        packets: u64,
        bytes: u64,
        corrupt_packets: u64,
        peak_rss_kb: Option<u64>,
        /// Times the ring's readers were woken (each wakeup is a turn of every viewer's loop
        /// in the gateway).
        #[serde(default)]
        wakeups: u64,
    },
    /// An event this side does not know (the other side is newer). Never sent.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// An event from a transcoder in egress mode (`wisp-transcoder egress …`), one JSON line on
/// its stdout. Its only command is `stop` (or its stdin closing): finish the output and exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EgressEvent {
    /// The output is open and its header written: `output` is the file or URL, `video` and
    /// `audio` what it carries (`"h264 1280x720"`, `"opus 48000 Hz 2 ch"`).
    Started {
        output: String,
        /// When the output's first frame entered the ring (Unix time, ms): media time 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_unix_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        video: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
    },
    /// Written so far: bytes out, seconds of media.
    Progress { bytes: u64, seconds: f64 },
    /// The video lost packets: a keyframe would let it go on (the gateway asks the source).
    KeyframeRequest,
    /// Finished and closed (the file plays to its end): why it stopped (`stopped`,
    /// `max_seconds`, `source_ended`).
    Ended {
        reason: String,
        bytes: u64,
        seconds: f64,
    },
    /// `code`: `usage`, `ring`, `output` (cannot write where it was told), `not_supported`
    /// (the container cannot hold the session's codecs), `media`.
    Error { code: String, message: String },
    /// An event this side does not know (the other side is newer). Never sent.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// A command as one line, tagged with `id` when the sender wants a reply: the transcoder then
/// answers it with exactly one `done` or `error` event carrying that id.
pub fn request_line(id: Option<u64>, command: &Command) -> String {
    let mut value = serde_json::to_value(command).expect("commands serialize");
    if let (Some(id), serde_json::Value::Object(map)) = (id, &mut value) {
        map.insert("id".into(), id.into());
    }
    value.to_string()
}

/// Why a request line was refused, and the id it carried if one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub id: Option<u64>,
    pub message: String,
}

/// Parses a line written by [`request_line`] (the id is optional).
pub fn parse_request(line: &str) -> Result<(Option<u64>, Command), BadRequest> {
    let bad = |id, e: &dyn std::fmt::Display| BadRequest {
        id,
        message: format!("bad command {line:?}: {e}"),
    };
    let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(None, &e))?;
    let id = match value.as_object_mut().and_then(|m| m.remove("id")) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad(None, &"\"id\" must be a non-negative integer"))?,
        ),
    };
    let command = serde_json::from_value(value).map_err(|e| bad(id, &e))?;
    Ok((id, command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seek_target_reaches_the_transcoder_exactly() {
        // Found by fuzz/transcoder_control: parsed with serde_json's default (fast, not always
        // nearest) float reading, this target came back one unit in the last place off.
        for to in [1.6666666666666665e53, 0.1, 1.0 / 3.0, 12.033333333333333] {
            let line = request_line(
                Some(1),
                &Command::Seek {
                    to: Some(to),
                    frame: None,
                },
            );
            let (_, back) = parse_request(&line).unwrap();
            assert_eq!(
                back,
                Command::Seek {
                    to: Some(to),
                    frame: None
                },
                "{line}"
            );
        }
        let (_, c) = parse_request(
            r#"{"op":"seek","to":166666666666666666666666666666666666666666666666666663}"#,
        )
        .unwrap();
        let (_, again) = parse_request(&request_line(None, &c)).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn commands_round_trip_in_their_wire_form() {
        for (cmd, line) in [
            (Command::Play, r#"{"op":"play"}"#),
            (
                Command::Seek {
                    to: None,
                    frame: Some(300),
                },
                r#"{"op":"seek","frame":300}"#,
            ),
            (Command::Step { frames: -1 }, r#"{"op":"step","frames":-1}"#),
            (
                Command::SelectAudio {
                    input: InputRef::Id("dub".into()),
                    channels: Some(vec![0, 1]),
                },
                r#"{"op":"select_audio","input":"dub","channels":[0,1]}"#,
            ),
            (
                Command::SelectAudio {
                    input: InputRef::Index(1),
                    channels: None,
                },
                r#"{"op":"select_audio","input":1}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&cmd).expect("json"), line);
            assert_eq!(serde_json::from_str::<Command>(line).expect("parses"), cmd);
        }
        assert!(serde_json::from_str::<Command>(r#"{"op":"rewind"}"#).is_err());
    }

    #[test]
    fn requests_carry_an_optional_id_next_to_the_command() {
        let line = request_line(Some(7), &Command::Step { frames: 2 });
        assert_eq!(line, r#"{"op":"step","frames":2,"id":7}"#);
        assert_eq!(
            parse_request(&line),
            Ok((Some(7), Command::Step { frames: 2 }))
        );
        assert_eq!(request_line(None, &Command::Play), r#"{"op":"play"}"#);
        assert_eq!(parse_request(r#"{"op":"play"}"#), Ok((None, Command::Play)));
        let bad = parse_request(r#"{"op":"rewind","id":3}"#).expect_err("unknown op");
        assert_eq!(bad.id, Some(3));
        assert!(bad.message.contains("rewind"), "{}", bad.message);
        assert_eq!(
            parse_request(r#"{"op":"play","id":-1}"#)
                .expect_err("bad id")
                .id,
            None
        );
        assert!(parse_request("not json").is_err());
        let done: Event = serde_json::from_str(r#"{"event":"done","id":7}"#).expect("parses");
        assert_eq!(done, Event::Done { id: 7 });
        let refused = Event::Error {
            id: Some(7),
            code: "not_supported".into(),
            message: "this input cannot seek".into(),
        };
        assert_eq!(
            serde_json::to_string(&refused).expect("json"),
            r#"{"event":"error","id":7,"code":"not_supported","message":"this input cannot seek"}"#
        );
    }

    #[test]
    fn events_round_trip_and_unknown_ones_are_tolerated() {
        let ev = Event::State {
            state: PlayState::Paused,
            position: 1.5,
            frame: 45,
        };
        let line = serde_json::to_string(&ev).expect("json");
        assert_eq!(
            line,
            r#"{"event":"state","state":"paused","position":1.5,"frame":45}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).expect("parses"), ev);
        let newer = r#"{"event":"thumbnail","png":"..."}"#;
        assert_eq!(
            serde_json::from_str::<Event>(newer).expect("parses"),
            Event::Unknown
        );
    }
}
