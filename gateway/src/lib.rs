//! Wisp's gateway: sessions exposed as WHEP endpoints, fed by per-session transcoders or WHIP
//! publishers through shared-memory rings (see DESIGN.md).
//!
//! # Layout
//! - `config.rs`: flags > `WISP_*` env > TOML file > defaults, and session definitions.
//! - `auth.rs`: JWT keys, claims and scopes; verifying and minting tokens.
//! - `serve.rs`: startup, the printed ready URL, signal-driven drain.
//! - `connections.rs`: the HTTP accept loop: connection cap, eviction, timeouts, shutdown.
//! - `http.rs`: router, shared state, CORS, problem+json errors, health and metrics endpoints.
//! - `whep.rs`: WHEP endpoint; resources' PATCH and DELETE (shared with WHIP), the registry.
//! - `whip.rs`: WHIP endpoint: publishing makes or takes over a live session.
//! - `resource.rs`: a resource's ICE session: trickle, ICE restart, entity-tags.
//! - `api.rs`: the session API (`/api/sessions`), its egress endpoints, share-link tokens
//!   (`/api/tokens`) and the directory of what a token may see (`/api/directory`).
//! - `egress/`: recordings of sessions by `wisp-transcoder egress` processes: the request
//!   model, the registry, supervision (see its own layout).
//! - `ingest/`: RTMP and SRT publishers and pulled URLs become live sessions through a
//!   transcoder per publish (see its own layout).
//! - `hls.rs`: HLS files for players (`/hls/{session}/…`): auth, on-demand start, playlists.
//! - `player.rs`: the built-in pages: the console (`/`), the player (`/play/{session}`) and
//!   the publish page (`/publish/{session}`).
//! - `offer.rs`: offer and trickle-fragment reading; which offers a session can serve.
//! - `rtc/`: answering offers; the viewer's sans-IO core and the fan-out workers that drive
//!   viewers (see its own layout).
//! - `publisher.rs`: one WHIP publisher's `Rtc`; its packets into the live session's ring.
//! - `fanout.rs`: per-viewer payload type, sequence and timestamp rebasing, keyframe start.
//! - `udp.rs`: the shared RTC port, host candidates, datagram demultiplexing.
//! - `session.rs`: session registry; just-in-time transcoders, restarts, keyframe throttling;
//!   live sessions and their one publisher.
//! - `slots.rs`: who holds one of `max_transcoders` slots; idle holders give way.
//! - `transcoder.rs`: one `wisp-transcoder` child: spawn with the ring, commands, events, stop.
//! - `metrics.rs`: counters and the Prometheus text.
//! - `heap.rs`: the live heap, as the `wisp` binary's counting allocator reports it.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod connections;
pub mod control;
pub mod egress;
pub mod fanout;
pub mod heap;
pub mod hls;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod offer;
pub mod player;
pub mod publisher;
pub mod resource;
pub mod rtc;
pub mod serve;
pub mod session;
pub mod slots;
pub mod transcoder;
pub mod udp;
pub mod whep;
pub mod whip;
