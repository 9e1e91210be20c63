//! The session API (`/api/sessions`, admin scope): create VOD sessions from inputs and encode
//! options, list and inspect them, stop them; start, list and stop their egresses
//! (`/api/sessions/{session}/egress`); mint share-link tokens (`/api/tokens`); list what any
//! token may see (`/api/directory`).
//!
//! Owns request handling; sessions themselves are `session/`'s, egresses `egress/`'s.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{Scope, valid_session_name};
use crate::cluster::Owner;
use crate::config::SessionSpec;
use crate::config::SpecError;
use crate::egress::{EgressInfo, EgressSpec};
use crate::http::error::{Internal, Invalid, NotFound, Placement};
use crate::http::{ApiError, Shared, authorize, base_url, require_type};
use crate::ids::random_id;
use crate::session::SessionInfo;

/// `GET /api/sessions`: in a cluster, every node's sessions, each with its `node`.
pub async fn list(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, "*", Scope::Admin)?;
    let here: Vec<SessionInfo> = s.sessions.list().iter().map(|x| x.info()).collect();
    let Some(cluster) = &s.cluster else {
        return Ok(Json(serde_json::to_value(here).map_err(Internal::Json)?).into_response());
    };
    // The whole cluster: this node's sessions now, the others' as of their last heartbeat,
    // each with its node. A session of the configuration is on every node: listed once per
    // node.
    let with_node = |v: serde_json::Value, node: &str| match v {
        serde_json::Value::Object(mut m) => {
            m.insert("node".into(), json!(node));
            Some(serde_json::Value::Object(m))
        }
        _ => None,
    };
    let mut all = Vec::new();
    for info in here {
        let v = serde_json::to_value(info).map_err(Internal::Json)?;
        all.extend(with_node(v, cluster.node_url()));
    }
    // Without Redis, this node's own (and a warning that says so).
    let nodes = match cluster.nodes().await {
        Ok(n) => n,
        Err(e) => {
            let mut resp = Json(serde_json::Value::Array(all)).into_response();
            resp.headers_mut().insert(
                header::WARNING,
                HeaderValue::from_static(
                    "199 wisp \"this node's sessions only: the cluster directory is unreachable\"",
                ),
            );
            tracing::debug!("session list of this node only: {e}");
            return Ok(resp);
        }
    };
    for node in nodes.iter().filter(|n| n.url != cluster.node_url()) {
        for v in node.sessions.clone() {
            all.extend(with_node(v, &node.url));
        }
    }
    Ok(Json(serde_json::Value::Array(all)).into_response())
}

/// `GET /api/sessions/{session}`.
pub async fn show(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SessionInfo>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let session = s
        .sessions
        .get(&name)
        .ok_or_else(|| NotFound::Session(name.to_string()))?;
    Ok(Json(session.info()))
}

/// `POST /api/sessions`: 201 `{"name", "whep_url"}`. The transcoder starts with the first
/// viewer.
pub async fn create(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    require_type(&headers, "application/json")?;
    let spec: SessionSpec = serde_json::from_slice(&body).map_err(Invalid::SessionDefinition)?;
    let name = match &spec.name {
        Some(n) if !valid_session_name(n) || n == "*" => {
            return Err(SpecError::Name(n.clone()).into());
        }
        Some(n) => n.clone(),
        None => random_id()[..12].to_string(),
    };
    authorize(&s, &headers, &name, Scope::Admin)?;
    spec.validate()?;
    // In a cluster, the session goes to the node with the most room: this one, or another
    // that is sent the request (and checks the inputs on its own file system).
    if let Some(cluster) = &s.cluster
        && !crate::http::cluster::forwarded(&headers)
    {
        if let Owner::There(node) = cluster.owner(&name).await? {
            return Err(Placement::Taken {
                session: name,
                node,
            }
            .into());
        }
        let nodes = cluster.nodes().await?;
        let total = nodes.len();
        let ranked = crate::cluster::rank(nodes, cluster.vod_cost());
        let Some(best) = ranked.first() else {
            tracing::warn!(
                session = %name,
                nodes = total,
                "no node has room for a new VOD session: 503"
            );
            return Err(Placement::NoRoom {
                cost: cluster.vod_cost(),
                nodes: total,
            }
            .into());
        };
        if best.url != cluster.node_url() {
            // The body with the name filled in, so a retry cannot make a second session.
            let mut named: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&body).map_err(Invalid::SessionDefinition)?;
            named.insert("name".into(), json!(name));
            let body = serde_json::to_vec(&named).map_err(Internal::Json)?;
            tracing::info!(session = %name, node = %best.url, room = best.room(), "placing a new VOD session");
            return crate::http::cluster::send(
                &best.url,
                axum::http::Method::POST,
                "/api/sessions",
                &headers,
                body,
            )
            .await;
        }
    }
    // A missing file is the client's to fix now, not a failure its first viewer meets. The
    // file system may be slow (a network mount): off the runtime's threads.
    let inputs = spec.clone();
    let urls: Vec<String> = tokio::task::spawn_blocking(move || {
        inputs
            .check_inputs()
            .map(|urls| urls.into_iter().map(String::from).collect())
    })
    .await
    .map_err(Internal::InputCheck)??;
    let warnings = probe_all(&urls).await;
    crate::egress::specs_of(&spec.egress)
        .map_err(|(index, why)| Invalid::EgressDefinition { index, why })?;
    let spec = SessionSpec {
        name: Some(name.clone()),
        ..spec
    };
    if let Some(cluster) = &s.cluster {
        // A session of this name here already: 409 before the claim, which is its.
        if s.sessions.get(&name).is_some() {
            return Err(crate::session::CreateError::Exists(name).into());
        }
        // The name is this node's now, unless another node holds it.
        if let Owner::There(node) = cluster.claim(&name).await? {
            return Err(Placement::Taken {
                session: name,
                node,
            }
            .into());
        }
    }
    if let Err(e) = open(&s, name.clone(), spec) {
        if let Some(cluster) = &s.cluster {
            let _ = cluster.forget(&name).await;
        }
        return Err(e);
    }
    let base = own_url(&s, &headers);
    tracing::info!(session = %name, "session created through the API");
    let mut resp = (
        StatusCode::CREATED,
        Json({
            let mut body = json!({
                "name": name,
                "whep_url": format!("{base}/whep/{name}"),
                "player_url": format!("{base}/play/{name}"),
            });
            if !warnings.is_empty() {
                body["warnings"] = json!(warnings);
            }
            body
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/api/sessions/{name}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Makes a session from its checked definition, with its egresses, its HLS if `always`, and
/// its pull if it is pulled (the API's and the cluster's way to make one).
pub fn open(s: &Shared, name: String, spec: SessionSpec) -> Result<(), ApiError> {
    let egresses = crate::egress::specs_of(&spec.egress)
        .map_err(|(index, why)| Invalid::EgressDefinition { index, why })?;
    let session = s.sessions.create(name.clone(), spec)?;
    for egress in egresses {
        if let Err(e) = s.egresses.start(&session, egress, false) {
            tracing::warn!(session = %name, "egress not started: {e}");
        }
    }
    if s.hls_mode(&session) == crate::config::HlsMode::Always {
        crate::egress::start_hls(&s.egresses, &session);
    }
    crate::ingest::pull::spawn(session, s.ingest.clone(), s.config.idle_timeout);
    Ok(())
}

/// This node's URL for absolute links: the cluster's node URL (the same whichever address a
/// request came in at), else the one the client used.
pub fn own_url(s: &Shared, headers: &HeaderMap) -> String {
    match &s.cluster {
        Some(c) => c.node_url().to_string(),
        None => base_url(headers, s.config.http),
    }
}

/// How long `POST /api/sessions` waits to reach an input URL's server.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tries a TCP connection to each URL's server; what fails becomes a warning in the answer
/// (and the log): the session is still made, since a server down now may be up when a
/// viewer comes. UDP schemes (SRT) and URLs without a host are not probed.
async fn probe_all(urls: &[String]) -> Vec<String> {
    let probes = urls.iter().filter_map(|url| {
        let (host, port) = server_of(url)?;
        let shown = redacted(url);
        Some(async move {
            let outcome =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port)))
                    .await;
            let why = match outcome {
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
            };
            tracing::warn!(url = %shown, "input server not reachable now: {why}");
            Some(format!(
                "input {shown}: cannot reach {host}:{port} now ({why}); the session is made, \
                 and its viewers will see the error if it stays unreachable"
            ))
        })
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A URL as logs and answers may show it: without a password or a query (signed URLs and
/// tokens live there).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let hidden = if authority.contains('@') { "…@" } else { "" };
    let query = if rest.contains('?') { "?…" } else { "" };
    format!("{scheme}://{hidden}{host}{path}{query}")
}

/// The host and TCP port an input URL's scheme connects to, if it is one probed.
fn server_of(url: &str) -> Option<(&str, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        "rtmp" => 1935,
        "rtmps" => 443,
        "rtsp" => 554,
        "rtsps" => 322,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then_some((host, port))
}

/// `DELETE /api/sessions/{session}`: stops it; its viewers are disconnected.
pub async fn remove(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    s.sessions
        .remove(&name)
        .ok_or_else(|| NotFound::Session(name.to_string()))?;
    // Stopped on purpose: no other node is to make it again.
    if let Some(cluster) = &s.cluster
        && let Err(e) = cluster.forget(&name).await
    {
        tracing::warn!(session = %name, "the cluster may make this session again: {e}");
    }
    tracing::info!(session = %name, "session deleted through the API");
    Ok(StatusCode::OK)
}

/// `POST /api/sessions/{session}/egress`: 201 with the egress (its `id`, state, file), and
/// `Location` for GET and DELETE. It starts at once: a VOD session's transcoder starts for it.
pub async fn egress_start(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    require_type(&headers, "application/json")?;
    let spec = EgressSpec::parse(&body)?;
    let session = s
        .sessions
        .get(&name)
        .ok_or_else(|| NotFound::Session(name.to_string()))?;
    // A VOD session's codec is known before it runs: refuse a container that cannot hold it
    // now rather than fail later. (A live session's is the publisher's, known at publish.)
    if session.kind == crate::session::Kind::Vod {
        let codec = session.spec.codec();
        let refusal = match &spec {
            EgressSpec::Record { format, .. } => format.refuses(codec),
            EgressSpec::Websocket { .. } => None,
            EgressSpec::Hls { .. } | EgressSpec::Rtmp { .. } | EgressSpec::Srt { .. } => {
                (codec != crate::config::VideoCodec::H264).then(|| {
                    "HLS and restreams take H.264 video, and this session's video is VP8"
                        .to_string()
                })
            }
        };
        if let Some(why) = refusal {
            return Err(Invalid::Codec(why).into());
        }
    }
    let egress = s.egresses.start(&session, spec, false)?;
    let base = own_url(&s, &headers);
    let mut resp = (StatusCode::CREATED, Json(egress.info())).into_response();
    let location = format!("{base}/api/sessions/{name}/egress/{}", egress.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /api/sessions/{session}/egress`: the session's egresses, running and recently
/// finished, oldest first.
pub async fn egress_list(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<EgressInfo>>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let egresses = s.egresses.of(&name);
    if egresses.is_empty() && s.sessions.get(&name).is_none() {
        return Err(NotFound::Session(name.to_string()).into());
    }
    Ok(Json(egresses.iter().map(|e| e.info()).collect()))
}

/// `GET /api/sessions/{session}/egress/{id}`.
pub async fn egress_show(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<EgressInfo>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let egress = egress_of(&s, &name, &id)?;
    Ok(Json(egress.info()))
}

/// `DELETE /api/sessions/{session}/egress/{id}`: stops it and answers once its output is
/// finished (the file closed), with its final state.
pub async fn egress_stop(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<EgressInfo>, ApiError> {
    authorize(&s, &headers, &name, Scope::Admin)?;
    let egress = egress_of(&s, &name, &id)?;
    let info = egress.stop(EGRESS_STOP_WAIT).await;
    tracing::info!(session = %name, egress = %id, "egress stopped through the API");
    Ok(Json(info))
}

/// The session's egress `id`, or the 404.
fn egress_of(
    s: &Shared,
    name: &str,
    id: &str,
) -> Result<std::sync::Arc<crate::egress::Egress>, ApiError> {
    s.egresses.get(name, id).ok_or_else(|| {
        NotFound::Egress {
            session: name.to_string(),
            id: id.to_string(),
        }
        .into()
    })
}

/// How long DELETE waits for an egress to finish its output.
const EGRESS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// One row of `GET /api/directory`: what any holder of a token naming the session may know.
#[derive(Debug, serde::Serialize)]
pub struct DirectoryEntry {
    pub name: String,
    pub kind: crate::session::Kind,
    pub state: &'static str,
    pub viewers: usize,
}

/// `GET /api/directory`: the sessions a token names (any scope), or with none, the sessions
/// shown to anonymous visitors (`public_sessions`; none by default). The console lists these
/// when it has no admin token. A token that does not verify is a 401, not an empty list.
pub async fn directory(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let grant = match crate::http::grant(&s, &headers) {
        Ok(g) => Some(g),
        Err(crate::auth::AuthError::Missing) => None,
        Err(e) => return Err(e.into()),
    };
    let sessions: Vec<serde_json::Value> = s
        .sessions
        .list()
        .into_iter()
        .filter(|x| match &grant {
            Some(g) => g.covers(&x.name),
            None => s.config.public_sessions,
        })
        .map(|x| {
            let info = x.info();
            json!(DirectoryEntry {
                name: info.name,
                kind: info.kind,
                state: info.state,
                viewers: info.viewers,
            })
        })
        .collect();
    // In a cluster, the other nodes' too (as of their last heartbeat).
    let mut sessions = sessions;
    if let Some(cluster) = &s.cluster {
        // Without Redis, this node's own.
        for node in cluster.nodes().await.unwrap_or_default() {
            if node.url == cluster.node_url() {
                continue;
            }
            for v in node.sessions {
                let name = v["name"].as_str().unwrap_or("");
                let shown = match &grant {
                    Some(g) => g.covers(name),
                    None => s.config.public_sessions,
                };
                if shown && !sessions.iter().any(|e| e["name"] == v["name"]) {
                    sessions.push(json!({
                        "name": v["name"],
                        "kind": v["kind"],
                        "state": v["state"],
                        "viewers": v["viewers"],
                    }));
                }
            }
        }
    }
    Ok(Json(json!({ "sessions": sessions, "anonymous": grant.is_none() })).into_response())
}

/// The body of `POST /api/tokens`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Session names, or `["*"]`.
    pub sessions: Vec<String>,
    /// Space-separated scopes (`view publish playback audio chat admin`).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Lifetime, seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    pub sub: Option<String>,
}

fn default_scope() -> String {
    "view".into()
}

fn default_ttl() -> u64 {
    3600
}

/// Longest lifetime `POST /api/tokens` grants: a share link is revoked only by its expiry.
pub const MAX_TOKEN_TTL: u64 = 30 * 24 * 3600;

/// `POST /api/tokens` (admin): 201 `{"token", "exp", "scope", "sessions", "links"}`, a token
/// signed with the gateway's key, and for one named session the links that use it: the
/// player and HLS (scope `view`), the publish page and the WHIP, RTMP and SRT settings to
/// paste into an encoder (scope `publish`). 501 when the gateway holds no signing key.
pub async fn mint_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, "*", Scope::Admin)?;
    require_type(&headers, "application/json")?;
    let req: TokenRequest = serde_json::from_slice(&body).map_err(Invalid::TokenRequest)?;
    let minter = s.minter.as_ref().ok_or(ApiError::NoSigningKey)?;
    if req.sessions.is_empty() {
        return Err(Invalid::NoSessions.into());
    }
    if let Some(bad) = req.sessions.iter().find(|n| !valid_session_name(n)) {
        return Err(Invalid::TokenSession(bad.clone()).into());
    }
    let scopes = req
        .scope
        .split_whitespace()
        .map(str::parse::<Scope>)
        .collect::<Result<std::collections::BTreeSet<_>, _>>()
        .map_err(Invalid::Scope)?;
    if scopes.is_empty() {
        return Err(Invalid::NoScope.into());
    }
    // Relays' tokens speak for other viewers (chat `as`) and are not rate limited.
    if req
        .sub
        .as_deref()
        .is_some_and(|sub| sub.starts_with(crate::ingest::relay::SUB))
    {
        return Err(Invalid::ReservedSub(crate::ingest::relay::SUB).into());
    }
    if req.ttl == 0 || req.ttl > MAX_TOKEN_TTL {
        return Err(Invalid::Ttl {
            ttl: req.ttl,
            max: MAX_TOKEN_TTL,
        }
        .into());
    }
    let scope = scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let exp = crate::auth::now_secs() + req.ttl;
    let token = minter.mint(&crate::auth::Claims {
        iss: s.config.jwt_issuer.clone(),
        aud: s.config.jwt_audience.clone(),
        sub: req.sub.clone(),
        ..crate::auth::Claims::new(req.sessions.clone(), scope.clone(), exp)
    });
    let mut links = serde_json::Map::new();
    if let [name] = req.sessions.as_slice()
        && name != "*"
    {
        let base = own_url(&s, &headers);
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
            .map(|a| a.host().to_string())
            .unwrap_or_else(|| s.config.http.ip().to_string());
        if scopes.contains(&Scope::View) {
            links.insert(
                "player".into(),
                json!(format!("{base}/play/{name}?token={token}")),
            );
            links.insert(
                "hls".into(),
                json!(format!("{base}/hls/{name}/index.m3u8?token={token}")),
            );
        }
        if scopes.contains(&Scope::Publish) {
            links.insert(
                "publish".into(),
                json!(format!("{base}/publish/{name}?token={token}")),
            );
            links.insert("whip".into(), json!(format!("{base}/whip/{name}")));
            if let Some(rtmp) = s.config.rtmp {
                links.insert(
                    "rtmp".into(),
                    json!({
                        "server": format!("rtmp://{host}:{}/live", rtmp.port()),
                        "stream_key": format!("{name}?token={token}"),
                    }),
                );
            }
            if let Some(srt) = s.config.srt {
                links.insert(
                    "srt".into(),
                    json!(format!(
                        "srt://{host}:{}?streamid=publish:{name}:{token}",
                        srt.port()
                    )),
                );
            }
        }
    }
    tracing::info!(sessions = ?req.sessions, %scope, ttl = req.ttl, sub = ?req.sub, "token minted through the API");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "exp": exp,
            "scope": scope,
            "sessions": req.sessions,
            "links": links,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::server_of;

    #[test]
    fn input_urls_name_their_server() {
        assert_eq!(
            server_of("http://cdn.example/a.mp4"),
            Some(("cdn.example", 80))
        );
        assert_eq!(
            server_of("https://u:p@cdn.example:8443/x?y"),
            Some(("cdn.example", 8443))
        );
        assert_eq!(server_of("rtsp://[::1]/cam"), Some(("::1", 554)));
        assert_eq!(
            server_of("rtmp://10.0.0.2:1936/live"),
            Some(("10.0.0.2", 1936))
        );
        assert_eq!(server_of("srt://10.0.0.2:9000"), None);
        assert_eq!(server_of("/media/film.mp4"), None);
        assert_eq!(server_of("http://host:notaport/"), None);
    }

    #[test]
    fn logged_urls_keep_no_secrets() {
        assert_eq!(
            super::redacted("https://u:p@cdn.example/a.mp4?sig=abc"),
            "https://…@cdn.example/a.mp4?…"
        );
        assert_eq!(super::redacted("rtsp://cam/s1"), "rtsp://cam/s1");
    }
}
