//! Wisp's gateway: sessions exposed as WHEP endpoints, fed by per-session transcoders or WHIP
//! publishers through shared-memory rings (see DESIGN.md).
//!
//! # Layout
//! - `auth.rs`: JWT keys, claims and scopes; verifying and minting tokens.
//! - `transcoder.rs`: one `wisp-transcoder` child: spawn with the ring, commands, events, stop.
//!
//! The HTTP surface, peers, sessions and fan-out join with the rest of the gateway issue.
#![forbid(unsafe_code)]

pub mod auth;
pub mod transcoder;
