//! What a session tells its viewers on their control channels (DESIGN.md "Control and
//! events"): event texts (`{"event": …}`), and refusals with their codes, whether the session
//! refuses (its transcoder cannot seek, say) or a viewer's channel does (`rtc/channel.rs`).

use serde_json::{Map, Value};

/// Error codes of replies and `error` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The token lacks the scope, names another session, or has expired.
    Forbidden,
    /// Malformed JSON, an unknown op, bad arguments.
    BadRequest,
    /// The session cannot do this (e.g. seek on an input that cannot seek).
    NotSupported,
    /// More than the channel's request rate.
    RateLimited,
    /// The transcoder is not ready (starting, restarting, failed).
    Unavailable,
    /// A message over the channel's size limit.
    TooLarge,
    /// Chat text over the channel's limit.
    TooLong,
    /// The token expired and no fresh one came within the grace period.
    TokenExpired,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Forbidden => "forbidden",
            Code::BadRequest => "bad_request",
            Code::NotSupported => "not_supported",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::TooLarge => "too_large",
            Code::TooLong => "too_long",
            Code::TokenExpired => "token_expired",
        }
    }

    /// The code a reply's `error.code` names (a relayed session's node's reply); an unknown one
    /// is `Unavailable`.
    pub fn parse(code: &str) -> Code {
        [
            Code::Forbidden,
            Code::BadRequest,
            Code::NotSupported,
            Code::RateLimited,
            Code::Unavailable,
            Code::TooLarge,
            Code::TooLong,
            Code::TokenExpired,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
        .unwrap_or(Code::Unavailable)
    }

    /// The code a transcoder's refusal maps to (its own codes are a superset).
    pub fn from_transcoder(code: &str) -> Code {
        match code {
            "not_supported" => Code::NotSupported,
            "bad_request" => Code::BadRequest,
            _ => Code::Unavailable,
        }
    }
}

/// A refusal: the code and a sentence for a person.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Seconds as events carry them: to the millisecond (a frame at 30 fps is 33.3 ms).
pub fn seconds(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// `{"event":name,…fields}`.
pub fn event(name: &str, fields: Value) -> String {
    let mut m = Map::new();
    m.insert("event".into(), Value::String(name.into()));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m).to_string()
}
