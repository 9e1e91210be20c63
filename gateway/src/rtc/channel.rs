//! The viewer's control channel (DESIGN.md "Control and events"): a WebRTC data channel
//! labelled `control` on which a viewer sends JSON requests and receives replies and events.
//!
//! Owns the wire format (requests, replies, events), the limits (message size, request rate,
//! chat length) and the scope each operation needs. Sans-IO: [`Steering::on_message`] turns
//! bytes into what the peer must do; carrying that out (the session, the data channel, token
//! verification) is `rtc/viewer.rs`'s. Scopes are enforced here, never by the client. The
//! codes, refusals and event texts sessions send too are `session/news.rs`'s.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use wisp_control::{Command, InputRef};

use crate::auth::{Grant, Scope};
pub use crate::session::news::{Code, Refusal, event, seconds};

/// The data channel's label.
pub const LABEL: &str = "control";
/// Longest request accepted, bytes.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Longest chat text, characters.
pub const MAX_CHAT_CHARS: usize = 500;
/// Longest chat sender name a relay passes on, characters.
const MAX_FROM_CHARS: usize = 128;
/// Requests a viewer may send per second (a burst of this many, refilled at this rate).
pub const REQUESTS_PER_SECOND: f64 = 20.0;
/// `auth_expiring` goes out this long before the token's `exp`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60);
/// After `exp`, a viewer has this long to send a fresh token before it is disconnected.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(30);

/// The operations a viewer may request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Play,
    Pause,
    Seek {
        #[serde(default)]
        to: Option<f64>,
        #[serde(default)]
        frame: Option<u64>,
    },
    Step {
        frames: i64,
    },
    SelectAudio {
        input: InputRef,
        #[serde(default)]
        channels: Option<Vec<u32>>,
    },
    Status,
    Chat {
        text: String,
        /// Who said it, as an edge relay passes on its viewers' chat (honoured for relays'
        /// tokens only).
        #[serde(default, rename = "as")]
        from: Option<String>,
    },
    Auth {
        token: String,
    },
    /// The viewer's own video layer: `rid` pins one, none is automatic; `maxWidth` and
    /// `maxHeight` cap the picture (its window).
    Layer {
        #[serde(default)]
        rid: Option<String>,
        #[serde(default, rename = "maxWidth")]
        max_width: Option<u32>,
        #[serde(default, rename = "maxHeight")]
        max_height: Option<u32>,
    },
}

impl Op {
    /// The scope the op needs beyond a valid token for the session.
    fn scope(&self) -> Option<Scope> {
        match self {
            Op::Play | Op::Pause | Op::Seek { .. } | Op::Step { .. } => Some(Scope::Playback),
            Op::SelectAudio { .. } => Some(Scope::Audio),
            Op::Chat { .. } => Some(Scope::Chat),
            // A viewer's layer is its own business.
            Op::Status | Op::Auth { .. } | Op::Layer { .. } => None,
        }
    }
}

/// What the peer must do with a message. Every variant but `Reply` ends in exactly one reply
/// the peer sends when it is done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this reply now; nothing else happens.
    Reply(String),
    /// Hand this command to the session's source and reply with its outcome.
    Command { id: Value, command: Command },
    /// Send `text` to every viewer of the session, then reply ok; `from`: who said it, as a
    /// relay's token may say.
    Chat {
        id: Value,
        text: String,
        from: Option<String>,
    },
    /// Verify `token`, make it this viewer's if it names the session, and reply.
    Auth { id: Value, token: String },
    /// Reply with the session's playback state.
    Status { id: Value },
    /// Make this the viewer's layer wish and reply with its layers.
    Layer {
        id: Value,
        wish: crate::rtc::layering::Wish,
    },
}

/// One viewer's side of the control channel: its request budget.
#[derive(Debug)]
pub struct Steering {
    tokens: f64,
    refilled: Instant,
}

impl Steering {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: REQUESTS_PER_SECOND,
            refilled: now,
        }
    }

    /// Takes one request's worth of budget, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * REQUESTS_PER_SECOND).min(REQUESTS_PER_SECOND);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Decides what a message from the viewer asks for. `grant` is the viewer's current
    /// token, `session` the session it watches, `now_secs` Unix time (for `exp`).
    pub fn on_message(
        &mut self,
        data: &[u8],
        now: Instant,
        grant: &Grant,
        session: &str,
        now_secs: u64,
    ) -> Action {
        if data.len() > MAX_MESSAGE {
            return Action::Reply(reply_error(
                &Value::Null,
                &Refusal::new(
                    Code::TooLarge,
                    format!(
                        "message of {} bytes; the limit is {MAX_MESSAGE}",
                        data.len()
                    ),
                ),
            ));
        }
        // A relay carries the requests of every viewer of its edge (each under its own limit
        // there): it is not limited here.
        let relay = grant
            .sub
            .as_deref()
            .is_some_and(|s| s.starts_with(crate::ingest::relay::SUB));
        let limited = !relay && !self.take(now);
        let mut request: Map<String, Value> = match serde_json::from_slice(data) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return bad(&Value::Null, "a request is a JSON object"),
            Err(e) => return bad(&Value::Null, &format!("not JSON: {e}")),
        };
        let id = request.remove("id").unwrap_or(Value::Null);
        if limited {
            return Action::Reply(reply_error(
                &id,
                &Refusal::new(
                    Code::RateLimited,
                    format!("more than {REQUESTS_PER_SECOND} requests a second; slow down"),
                ),
            ));
        }
        if !matches!(id, Value::Number(_) | Value::String(_)) {
            return bad(&id, "a request needs an \"id\" (a number or a string)");
        }
        let op: Op = match serde_json::from_value(Value::Object(request)) {
            Ok(op) => op,
            Err(e) => return bad(&id, &e.to_string()),
        };
        if !matches!(op, Op::Auth { .. } | Op::Status) {
            if let Err(r) = allowed(grant, session, op.scope(), now_secs) {
                return Action::Reply(reply_error(&id, &r));
            }
        }
        match op {
            Op::Play => Action::Command {
                id,
                command: Command::Play,
            },
            Op::Pause => Action::Command {
                id,
                command: Command::Pause,
            },
            Op::Seek { to, frame } => match (to, frame) {
                (Some(t), None) if t.is_finite() && t >= 0.0 => Action::Command {
                    id,
                    command: Command::Seek {
                        to: Some(t),
                        frame: None,
                    },
                },
                (Some(_), None) => bad(&id, "seek \"to\" must be 0 or more seconds"),
                (None, Some(f)) => Action::Command {
                    id,
                    command: Command::Seek {
                        to: None,
                        frame: Some(f),
                    },
                },
                (Some(_), Some(_)) => bad(
                    &id,
                    "seek takes \"to\" (seconds) or \"frame\" (an index), not both",
                ),
                (None, None) => bad(
                    &id,
                    "seek needs \"to\" (seconds, 0 or more) or \"frame\" (an index)",
                ),
            },
            Op::Step { frames } if frames == 0 || frames.unsigned_abs() > 10_000 => {
                bad(&id, "step takes \"frames\": a non-zero count within ±10000")
            }
            Op::Step { frames } => Action::Command {
                id,
                command: Command::Step { frames },
            },
            Op::SelectAudio { input, channels } => Action::Command {
                id,
                command: Command::SelectAudio { input, channels },
            },
            Op::Chat { text, from } => {
                let chars = text.chars().count();
                if text.trim().is_empty() {
                    bad(&id, "chat text is empty")
                } else if chars > MAX_CHAT_CHARS {
                    Action::Reply(reply_error(
                        &id,
                        &Refusal::new(
                            Code::TooLong,
                            format!(
                                "chat text of {chars} characters; the limit is {MAX_CHAT_CHARS}"
                            ),
                        ),
                    ))
                } else {
                    // Only a relay speaks for others: its token's sub says it is one.
                    let from = from
                        .filter(|f| relay && !f.trim().is_empty())
                        .map(|f| f.chars().take(MAX_FROM_CHARS).collect());
                    Action::Chat { id, text, from }
                }
            }
            Op::Auth { token } => Action::Auth { id, token },
            Op::Status => Action::Status { id },
            Op::Layer {
                rid,
                max_width,
                max_height,
            } => Action::Layer {
                id,
                wish: crate::rtc::layering::Wish {
                    rid: rid.filter(|r| !r.is_empty()),
                    max_width,
                    max_height,
                },
            },
        }
    }
}

/// Whether `grant` allows an op needing `scope` on `session` at `now_secs`.
pub fn allowed(
    grant: &Grant,
    session: &str,
    scope: Option<Scope>,
    now_secs: u64,
) -> Result<(), Refusal> {
    if now_secs >= grant.exp {
        return Err(Refusal::new(
            Code::Forbidden,
            "the token has expired; send a fresh one with the \"auth\" op",
        ));
    }
    if !grant.covers(session) {
        return Err(Refusal::new(
            Code::Forbidden,
            format!("the token does not name session {session:?}"),
        ));
    }
    match scope {
        Some(scope) if !grant.scopes.contains(&scope) => Err(Refusal::new(
            Code::Forbidden,
            format!("the token lacks scope '{scope}'"),
        )),
        _ => Ok(()),
    }
}

fn bad(id: &Value, message: &str) -> Action {
    Action::Reply(reply_error(
        id,
        &Refusal::new(Code::BadRequest, message.to_string()),
    ))
}

/// `{"id":…,"ok":true,…fields}`.
pub fn reply_ok(id: &Value, fields: Map<String, Value>) -> String {
    let mut m = Map::new();
    m.insert("id".into(), id.clone());
    m.insert("ok".into(), Value::Bool(true));
    m.extend(fields);
    Value::Object(m).to_string()
}

/// `{"id":…,"error":{"code":…,"message":…}}`.
pub fn reply_error(id: &Value, refusal: &Refusal) -> String {
    json!({
        "id": id,
        "error": {"code": refusal.code.as_str(), "message": refusal.message},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn grant(scopes: &[Scope], sessions: &[&str]) -> Grant {
        Grant {
            sub: Some("alice".into()),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().copied().collect::<BTreeSet<_>>(),
            exp: NOW + 3600,
        }
    }

    fn run(msg: &str, g: &Grant) -> Action {
        Steering::new(Instant::now()).on_message(msg.as_bytes(), Instant::now(), g, "demo", NOW)
    }

    fn error_code(a: &Action) -> String {
        let Action::Reply(r) = a else {
            panic!("expected a reply, got {a:?}")
        };
        let v: Value = serde_json::from_str(r).expect("json");
        v["error"]["code"].as_str().expect("an error").to_string()
    }

    #[test]
    fn every_op_needs_its_scope_and_only_that() {
        let cases = [
            (r#"{"id":1,"op":"play"}"#, Some(Scope::Playback)),
            (r#"{"id":1,"op":"pause"}"#, Some(Scope::Playback)),
            (r#"{"id":1,"op":"seek","to":20}"#, Some(Scope::Playback)),
            (r#"{"id":1,"op":"seek","frame":600}"#, Some(Scope::Playback)),
            (r#"{"id":1,"op":"step","frames":-1}"#, Some(Scope::Playback)),
            (
                r#"{"id":1,"op":"select_audio","input":1,"channels":[0,1]}"#,
                Some(Scope::Audio),
            ),
            (r#"{"id":1,"op":"chat","text":"hi"}"#, Some(Scope::Chat)),
            (r#"{"id":1,"op":"status"}"#, None),
            (r#"{"id":1,"op":"auth","token":"x"}"#, None),
        ];
        for (msg, scope) in cases {
            let all = grant(&Scope::ALL, &["demo"]);
            assert!(!matches!(run(msg, &all), Action::Reply(_)), "{msg}");
            let view_only = grant(&[Scope::View], &["demo"]);
            let a = run(msg, &view_only);
            match scope {
                Some(_) => assert_eq!(error_code(&a), "forbidden", "{msg}"),
                None => assert!(!matches!(a, Action::Reply(_)), "{msg}"),
            }
            if let Some(scope) = scope {
                let just_that = grant(&[Scope::View, scope], &["demo"]);
                assert!(!matches!(run(msg, &just_that), Action::Reply(_)), "{msg}");
                let other_session = grant(&Scope::ALL, &["other"]);
                assert_eq!(error_code(&run(msg, &other_session)), "forbidden");
                let mut expired = grant(&Scope::ALL, &["demo"]);
                expired.exp = NOW;
                assert_eq!(error_code(&run(msg, &expired)), "forbidden");
            }
        }
    }

    #[test]
    fn requests_become_commands_with_their_id() {
        let g = grant(&Scope::ALL, &["*"]);
        assert_eq!(
            run(r#"{"id":"a7","op":"seek","to":12.5}"#, &g),
            Action::Command {
                id: json!("a7"),
                command: Command::Seek {
                    to: Some(12.5),
                    frame: None
                }
            }
        );
        assert_eq!(
            run(r#"{"id":3,"op":"chat","text":"hello"}"#, &g),
            Action::Chat {
                id: json!(3),
                text: "hello".into(),
                from: None,
            }
        );
    }

    #[test]
    fn only_a_relay_says_who_said_a_chat() {
        let msg = r#"{"id":3,"op":"chat","text":"hello","as":"bob"}"#;
        let viewer = grant(&Scope::ALL, &["demo"]);
        assert_eq!(
            run(msg, &viewer),
            Action::Chat {
                id: json!(3),
                text: "hello".into(),
                from: None,
            },
            "a viewer cannot speak as someone else"
        );
        let relay = Grant {
            sub: Some("relay:http://10.0.0.3:8080".into()),
            ..viewer
        };
        assert_eq!(
            run(msg, &relay),
            Action::Chat {
                id: json!(3),
                text: "hello".into(),
                from: Some("bob".into()),
            }
        );
    }

    #[test]
    fn malformed_requests_get_bad_request_with_the_id_when_there_is_one() {
        let g = grant(&Scope::ALL, &["demo"]);
        for msg in [
            "not json",
            "[1,2]",
            r#"{"op":"play"}"#,
            r#"{"id":1,"op":"rewind"}"#,
            r#"{"id":1,"op":"seek"}"#,
            r#"{"id":1,"op":"seek","to":-1}"#,
            r#"{"id":1,"op":"seek","to":1,"frame":2}"#,
            r#"{"id":1,"op":"step","frames":0}"#,
            r#"{"id":1,"op":"seek","to":1,"speed":2}"#,
            r#"{"id":1,"op":"chat","text":"  "}"#,
            r#"{"id":{"x":1},"op":"play"}"#,
        ] {
            assert_eq!(error_code(&run(msg, &g)), "bad_request", "{msg}");
        }
        let Action::Reply(r) = run(r#"{"id":5,"op":"rewind"}"#, &g) else {
            panic!()
        };
        assert!(
            r.starts_with(
                r#"{"id":5,"error":{"code":"bad_request","message":"unknown variant `rewind`"#
            ),
            "{r}"
        );
    }

    #[test]
    fn a_bad_seek_is_told_what_is_wrong_with_it() {
        let g = grant(&Scope::ALL, &["demo"]);
        let message = |msg: &str| match run(msg, &g) {
            Action::Reply(r) => r,
            other => panic!("{msg}: {other:?}"),
        };
        for (msg, says) in [
            (
                r#"{"id":1,"op":"seek","to":-1e308}"#,
                "must be 0 or more seconds",
            ),
            (
                r#"{"id":1,"op":"seek","to":-0.5}"#,
                "must be 0 or more seconds",
            ),
            (r#"{"id":1,"op":"seek","to":1,"frame":2}"#, "not both"),
            (r#"{"id":1,"op":"seek"}"#, "seek needs"),
        ] {
            let r = message(msg);
            assert!(r.contains(says), "{msg}: {r}");
        }
    }

    #[test]
    fn limits_on_size_chat_length_and_rate() {
        let g = grant(&Scope::ALL, &["demo"]);
        let big = format!(
            r#"{{"id":1,"op":"chat","text":"{}"}}"#,
            "x".repeat(MAX_MESSAGE)
        );
        assert_eq!(error_code(&run(&big, &g)), "too_large");
        let long = format!(r#"{{"id":1,"op":"chat","text":"{}"}}"#, "é".repeat(501));
        assert_eq!(error_code(&run(&long, &g)), "too_long");
        let ok = format!(r#"{{"id":1,"op":"chat","text":"{}"}}"#, "é".repeat(500));
        assert!(matches!(run(&ok, &g), Action::Chat { .. }));

        let t0 = Instant::now();
        let mut s = Steering::new(t0);
        let status = br#"{"id":1,"op":"status"}"#;
        for _ in 0..20 {
            assert!(matches!(
                s.on_message(status, t0, &g, "demo", NOW),
                Action::Status { .. }
            ));
        }
        assert_eq!(
            error_code(&s.on_message(status, t0, &g, "demo", NOW)),
            "rate_limited"
        );
        // Refilled at 20 a second: 100 ms later two more.
        let later = t0 + Duration::from_millis(100);
        assert!(matches!(
            s.on_message(status, later, &g, "demo", NOW),
            Action::Status { .. }
        ));
        assert!(matches!(
            s.on_message(status, later, &g, "demo", NOW),
            Action::Status { .. }
        ));
        assert_eq!(
            error_code(&s.on_message(status, later, &g, "demo", NOW)),
            "rate_limited"
        );
    }

    #[test]
    fn replies_and_events_have_their_wire_shape() {
        let mut f = Map::new();
        f.insert("state".into(), json!("paused"));
        assert_eq!(
            reply_ok(&json!(1), f),
            r#"{"id":1,"ok":true,"state":"paused"}"#
        );
        assert_eq!(
            event("position", json!({"position": 20.0})),
            r#"{"event":"position","position":20.0}"#
        );
    }
}
