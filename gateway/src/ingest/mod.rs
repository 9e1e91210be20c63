//! Live ingest beyond WHIP: RTMP and SRT publishers (OBS, FFmpeg, hardware encoders) become
//! live sessions, through a transcoder per publish (FFmpeg stays out of the gateway).
//!
//! # Layout
//! - `key.rs`: the session and token in an RTMP stream key or an SRT stream id.
//! - `flv.rs`: FLV tags, as the RTMP listener writes its publishers' messages.
//! - `publish.rs`: auth, the session's publisher claim, the transcoder reading a FIFO.
//! - `rtmp.rs`: the RTMP listener (handshake, connect, publish) and its connections.
//! - `srt.rs`: the SRT listener (stream id at the handshake) and its connections.
//! - `pull.rs`: pulled sessions: a URL read while the session has viewers, with backoff.
//! - `relay.rs`: edge relays: a session another node of the cluster holds, pulled from it
//!   over WHEP for this node's viewers, with their control sent back.

pub mod flv;
pub mod key;
pub mod publish;
pub mod pull;
pub mod relay;
pub mod rtmp;
pub mod srt;
