//! Wisp's gateway: sessions exposed as WHEP endpoints, fed by per-session transcoders or WHIP
//! publishers through shared-memory rings (see DESIGN.md).
//!
//! # Layout
//! By concept, each folder using only those below it (no circles):
//! - `http/`: the HTTP surface: router, state, errors, WHEP, WHIP, resources' PATCH and
//!   DELETE, the session API, HLS files, pages (see its own layout).
//! - `rtc/`: WebRTC: the UDP port, answers, ICE sessions, the sans-IO viewer and WHIP
//!   publisher cores, the viewer's control channel, the fan-out workers that drive viewers
//!   (see its own layout).
//! - `ingest/`: RTMP and SRT publishers and pulled URLs become live sessions through a
//!   transcoder per publish (see its own layout).
//! - `egress/`: recordings, HLS and restreams by `wisp-transcoder egress` processes: the
//!   request model, the registry, supervision (see its own layout).
//! - `cluster.rs`: scale-out: the Redis directory of nodes and session owners, redirects.
//! - `session/`: the session registry and handle; just-in-time transcoders, restarts,
//!   keyframe throttling; live sessions and their one publisher; transcoder slots; the
//!   per-viewer header rewrite (see its own layout).
//! - `serve.rs`: startup, the printed ready URL, signal-driven drain.
//! - `config.rs`: flags > `WISP_*` env > TOML file > defaults, and session definitions.
//! - `auth.rs`: JWT keys, claims and scopes; verifying and minting tokens.
//! - `ids.rs`: random ids and entity-tags.
//! - `metrics.rs`: counters and the Prometheus text.
//! - `heap.rs`: the live heap, as the `wisp` binary's counting allocator reports it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod egress;
pub mod heap;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod metrics;
pub mod rtc;
pub mod serve;
pub mod session;
