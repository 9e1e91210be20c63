//! The HTTP surface (DESIGN.md "HTTP surface"): WHEP, WHIP, the session API, pages, HLS files
//! and metrics, every failure rendered as `application/problem+json`.
//!
//! # Layout
//! - `router.rs`: the routes, CORS and OPTIONS, the request body limits, health, readiness
//!   and metrics.
//! - `state.rs`: what every handler shares, and the bearer-token checks.
//! - `error.rs`: the one error enum; every error of the other modules is mapped to a status
//!   in one exhaustive match there.
//! - `headers.rs`: media types, the base URL clients reached us at, ICE-server `Link`s.
//! - `connections.rs`: the accept loop: connection cap, eviction, timeouts, shutdown.
//! - `whep.rs`: `POST /whep/{session}`: a viewer's offer answered, its resource created.
//! - `whip.rs`: `POST /whip/{session}`: publishing makes or takes over a live session.
//! - `extensions.rs`: the WHEP core extensions a viewer's resource serves: server-sent
//!   events and video layer selection.
//! - `resource.rs`: what WHEP and WHIP resources share: the registry of live (and recently
//!   ended) resources, the 201's headers, PATCH (trickle, ICE restart) and DELETE.
//! - `api.rs`: the session API, its egress endpoints, share-link tokens and the directory.
//! - `cluster.rs`: in a cluster, the API's requests about another node's session forwarded
//!   there.
//! - `hls.rs`: HLS files for players (`/hls/{session}/…`).
//! - `pages.rs`: the console, player and publish pages.

pub mod api;
pub mod cluster;
pub mod connections;
pub mod error;
pub mod extensions;
pub mod headers;
pub mod hls;
pub mod pages;
pub mod resource;
pub mod router;
pub mod state;
pub mod whep;
pub mod whip;

pub use error::ApiError;
pub use headers::{base_url, ice_server_links, media_type, require_type};
pub use router::{app, metrics_app};
pub use state::{AppState, Shared, authorize, bearer_token, grant};
