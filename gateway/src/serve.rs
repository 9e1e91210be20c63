//! `wisp serve`: starts the gateway from a resolved [`Config`] and runs it until SIGTERM or
//! SIGINT, then drains (STYLE.md "Shutdown").
//!
//! Owns startup order (keys, UDP port, DTLS certificate, sessions, HTTP listener), the printed
//! ready URL, and the drain: new POSTs get 503, peers are closed, transcoders are stopped
//! (`stop`, SIGTERM, SIGKILL at a deadline), then the process exits 0.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::{Claims, Minter, Verifier};
use crate::config::{Config, KeySource};
use crate::http::resource::Resources;
use crate::http::{AppState, app};
use crate::metrics::Metrics;
use crate::rtc::udp::RtcPort;
use crate::session::{Registry, Runtime};

/// Connections the `/metrics` listener of its own keeps open at most (scrapers are few).
const METRICS_CONNECTIONS: usize = 64;

/// Why the gateway could not start. The operator's to fix; the message says how.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("key {path}: {source}")]
    Key {
        path: String,
        source: crate::auth::KeyError,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] crate::rtc::udp::BindError),
    #[error("listening on HTTP {addr}: {source} (is another process using the port? see --http)")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cluster: --node-url is needed: other nodes cannot reach the HTTP address {0} (give \
         the URL they reach this node at, or a specific --http address)"
    )]
    NodeUrl(SocketAddr),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("generating the DTLS certificate failed")]
    Certificate,
    #[error("starting the fan-out workers: {0}")]
    Workers(std::io::Error),
    #[error("session {session:?}: egress {index}: {message}")]
    Egress {
        session: String,
        index: usize,
        message: String,
    },
    #[error("transcoder {0} not found: build it (cargo build --release) or pass --transcoder")]
    Transcoder(String),
    #[error(
        "listening for {what} on {addr}: {source} (is another process using the port? see \
         --{flag}, or --{flag} off)"
    )]
    Ingest {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the directory for ingest pipes {path}: {source}")]
    FifoDir {
        path: String,
        source: std::io::Error,
    },
}

/// A running gateway (what tests and `main` hold).
#[derive(Debug)]
pub struct Gateway {
    pub state: Arc<AppState>,
    pub http_addr: SocketAddr,
    /// A token printed at startup for the demo, when the gateway can mint one.
    pub demo_url: Option<String>,
    listener: Option<tokio::net::TcpListener>,
    /// `/metrics` on a listener of its own, when configured.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// RTMP publishers, when configured.
    rtmp_listener: Option<tokio::net::TcpListener>,
    /// SRT publishers, when configured.
    srt_listener: Option<crate::ingest::srt::Bound>,
    cancel: CancellationToken,
    /// How many HTTP connections may be open (below the descriptor limit).
    connection_cap: usize,
}

impl Gateway {
    /// Binds everything; nothing is served until [`Gateway::run`].
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let (verifier, minter) = load_keys(&config)?;
        let verifier = Arc::new(verifier);
        let nofile = crate::http::connections::raise_descriptor_limit();
        let connection_cap = crate::http::connections::connection_cap(&config.http_limits, nofile);
        if config.transcoder.components().count() > 1 && !config.transcoder.exists() {
            return Err(StartError::Transcoder(
                config.transcoder.display().to_string(),
            ));
        }
        let metrics = Arc::new(Metrics::default());
        let port = RtcPort::bind(
            config.rtc,
            &config.public_ips,
            config.udp_recv_buffer,
            config.workers,
            metrics.clone(),
        )
        .await?;
        let workers =
            crate::rtc::worker::Workers::start(config.workers, port.clone(), verifier.clone())
                .map_err(StartError::Workers)?;
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .ok_or(StartError::Certificate)?;
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|source| StartError::Http {
                addr: config.http,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: config.http,
            source,
        })?;
        let cluster = match &config.cluster {
            None => None,
            Some(c) => {
                let node = match &c.node_url {
                    Some(u) => u.clone(),
                    None if http_addr.ip().is_unspecified() => {
                        return Err(StartError::NodeUrl(http_addr));
                    }
                    None => format!("http://{http_addr}"),
                };
                let cluster = crate::cluster::Cluster::new(&c.redis, &node, c.capacity, c.costs)
                    .map_err(|e| StartError::Cluster(e.to_string()))?;
                let redis = crate::http::api::redacted(&c.redis);
                tracing::info!(node = %node, %redis, "joining the cluster");
                // Nodes forward requests with their clients' tokens and relays pull with
                // tokens they sign: every node must verify with the same key.
                if config.keys == crate::config::KeySource::Generated {
                    tracing::warn!(
                        "this node verifies tokens with its own generated secret: the other \
                         nodes' tokens, relays and forwarded requests will be refused here; \
                         give every node the same --jwt-secret-file (docs/cluster.md)"
                    );
                }
                Some(Arc::new(cluster))
            }
        };
        let metrics_listener = match config.metrics {
            crate::config::MetricsAt::Addr(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Http { addr, source })?;
                if let Ok(a) = l.local_addr() {
                    tracing::info!("metrics on http://{a}/metrics (and not on the HTTP listener)");
                }
                Some(l)
            }
            crate::config::MetricsAt::Main | crate::config::MetricsAt::Off => None,
        };
        let rtmp_listener = match config.rtmp {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Ingest {
                        what: "RTMP",
                        flag: "rtmp",
                        addr,
                        source,
                    })?;
                if let Ok(a) = l.local_addr() {
                    tracing::info!(
                        "RTMP publishers on rtmp://{a}/live (stream key NAME?token=JWT)"
                    );
                }
                Some(l)
            }
            None => None,
        };
        let srt_listener = match config.srt {
            Some(addr) => {
                let l =
                    crate::ingest::srt::bind(addr)
                        .await
                        .map_err(|source| StartError::Ingest {
                            what: "SRT",
                            flag: "srt",
                            addr,
                            source,
                        })?;
                tracing::info!(
                    "SRT publishers on srt://{} (udp; streamid=publish:NAME:JWT, MPEG-TS)",
                    l.addr
                );
                Some(l)
            }
            None => None,
        };
        let cancel = CancellationToken::new();
        let sessions = Registry::new(
            Runtime {
                transcoder: config.transcoder.clone(),
                idle_timeout: config.idle_timeout,
                metrics: metrics.clone(),
                slots: Arc::new(crate::session::slots::TranscoderSlots::new(
                    config.limits.max_transcoders,
                )),
            },
            cancel.child_token(),
        );
        let ingest = ingest_context(&config, &sessions, &verifier, &metrics)?;
        let egresses = crate::egress::Egresses::new(crate::egress::EgressContext {
            program: config.transcoder.clone(),
            recordings: config.recordings.clone(),
            hls: config.state_dir.join("hls"),
            idle_timeout: config.idle_timeout,
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });
        for (name, spec) in &config.sessions {
            let session = sessions
                .create(name.clone(), spec.clone())
                .expect("config sessions have unique names");
            crate::ingest::pull::spawn(session, ingest.clone(), config.idle_timeout);
        }
        port.spawn_receivers(cancel.clone());
        tracing::info!(
            http = %http_addr,
            rtc = ?port.candidates(),
            transcoder = %config.transcoder.display(),
            sessions = config.sessions.len(),
            workers = config.workers,
            "wisp is serving"
        );
        let demo_url = match (&minter, config.sessions.contains_key("demo")) {
            (Some(m), true) => {
                let host = match http_addr.ip() {
                    ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                    ip => ip,
                };
                let token = m.mint(&Claims {
                    iss: config.jwt_issuer.clone(),
                    aud: config.jwt_audience.clone(),
                    sub: Some("demo".into()),
                    ..Claims::new(
                        vec!["demo".into()],
                        "view playback",
                        crate::auth::now_secs() + 24 * 3600,
                    )
                });
                Some(format!(
                    "http://{}/play/demo?token={token}",
                    SocketAddr::new(host, http_addr.port())
                ))
            }
            _ => None,
        };
        for (name, spec) in &config.sessions {
            let Some(session) = sessions.get(name) else {
                continue;
            };
            if spec.hls.unwrap_or(config.hls) == crate::config::HlsMode::Always {
                crate::egress::start_hls(&egresses, &session);
            }
            let specs = crate::egress::specs_of(&spec.egress).map_err(|(index, message)| {
                StartError::Egress {
                    session: name.clone(),
                    index,
                    message,
                }
            })?;
            for egress in specs {
                match egresses.start(&session, egress, false) {
                    Ok(e) => {
                        tracing::info!(session = %name, egress = %e.id, "egress started with the session")
                    }
                    Err(e) => tracing::warn!(session = %name, "egress not started: {e}"),
                }
            }
        }
        let state = Arc::new(AppState {
            config,
            verifier,
            minter: minter.map(Arc::new),
            sessions,
            resources: Resources::default(),
            streams: Default::default(),
            port,
            workers,
            cert,
            metrics,
            draining: AtomicBool::new(false),
            ingest,
            egresses,
            cluster,
        });
        Ok(Self {
            state,
            http_addr,
            demo_url,
            listener: Some(listener),
            metrics_listener,
            rtmp_listener,
            srt_listener,
            cancel,
            connection_cap,
        })
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let listener = self.listener.take().expect("run is called once");
        if let Some(l) = self.rtmp_listener.take() {
            let ctx = self.state.ingest.clone();
            tokio::spawn(crate::ingest::rtmp::serve(l, ctx, self.cancel.clone()));
        }
        if let Some(bound) = self.srt_listener.take() {
            let ctx = self.state.ingest.clone();
            tokio::spawn(crate::ingest::srt::serve(bound, ctx, self.cancel.clone()));
        }
        if let Some(l) = self.metrics_listener.take() {
            let stop = self.cancel.clone();
            tokio::spawn(crate::http::connections::serve(
                l,
                crate::http::metrics_app(self.state.clone()),
                self.state.config.http_limits,
                METRICS_CONNECTIONS,
                self.state.metrics.clone(),
                async move { stop.cancelled().await },
            ));
        }
        if let Some(cluster) = self.state.cluster.clone() {
            let state = self.state.clone();
            let acting = self.state.clone();
            let stop = self.cancel.clone();
            tokio::spawn(async move {
                cluster
                    .heartbeat(stop, || cluster_load(&state), |beat| act(&acting, beat))
                    .await
            });
        }
        let state = self.state.clone();
        let cancel = self.cancel.clone();
        let drain = async move {
            shutdown.await;
            drain(&state, &cancel).await;
        };
        crate::http::connections::serve(
            listener,
            app(self.state.clone()),
            self.state.config.http_limits,
            self.connection_cap,
            self.state.metrics.clone(),
            drain,
        )
        .await;
        self.cancel.cancel();
        // The ingest FIFOs are gone with their publishes; their directory goes too.
        let _ = std::fs::remove_dir_all(&self.state.ingest.fifo_dir);
        tracing::info!("wisp stopped");
    }
}

/// What this node tells the cluster at a heartbeat.
fn cluster_load(state: &AppState) -> crate::cluster::Load {
    use crate::session::Kind;
    let (viewers, publishers) = state.resources.counts();
    let all = state.sessions.list();
    // Every session is listed (a relay too, with `relayed_from`, so the cluster's list says
    // where viewers are); relays are not claimed: their sessions are other nodes'.
    let infos: Vec<_> = all.iter().map(|s| s.info()).collect();
    let held: Vec<_> = all
        .iter()
        .zip(&infos)
        .filter(|(s, _)| s.relay().is_none())
        .collect();
    crate::cluster::Load {
        sessions: held.iter().map(|(s, _)| s.name.clone()).collect(),
        live: held
            .iter()
            .filter(|(s, _)| s.kind == Kind::Live)
            .map(|(s, _)| s.name.clone())
            .collect(),
        // The configuration's sessions are on every node; those made through the API are
        // this node's to hand on.
        vod: held
            .iter()
            .filter(|(s, _)| {
                !state.config.sessions.contains_key(&s.name)
                    && (!s.spec.inputs.is_empty() || s.spec.live.is_some())
            })
            .map(|(s, info)| crate::cluster::VodState {
                name: s.name.clone(),
                spec: s.spec.clone(),
                position: info.position,
            })
            .collect(),
        vod_sessions: held.iter().filter(|(s, _)| s.kind == Kind::Vod).count(),
        viewers,
        publishers,
        transcoders: state.metrics.transcoders.load(Ordering::Relaxed) as u64,
        info: serde_json::to_string(&infos).unwrap_or_else(|_| "[]".into()),
    }
}

/// Does what a heartbeat found: stops the VOD sessions another node took, and makes the one
/// this node took from a dead node, at its last position.
fn act(state: &Arc<AppState>, beat: crate::cluster::Beat) {
    for name in beat.lost {
        state.sessions.remove(&name);
    }
    if let Some(vod) = beat.adopted {
        let mut spec = vod.spec;
        if vod.position.is_some() {
            spec.start = vod.position;
        }
        // What Redis holds is checked as an API request is: a bad record is dropped.
        let checked = if crate::auth::valid_session_name(&vod.name) && vod.name != "*" {
            spec.validate().map_err(|e| e.to_string())
        } else {
            Err(format!("{:?} is not a session name", vod.name))
        };
        // This node's relay of the session (its node is gone) gives way to the session.
        if let Some(relayed) = state.sessions.get(&vod.name)
            && relayed.relay().is_some()
        {
            state.sessions.remove(&vod.name);
        }
        let made = checked.and_then(|()| {
            crate::http::api::open(state, vod.name.clone(), spec).map_err(|e| e.to_string())
        });
        if let Err(e) = made {
            tracing::error!(session = %vod.name, "could not make the session taken over: {e}");
            // Its name and record go: no other node is to try it again.
            if let Some(cluster) = state.cluster.clone() {
                let name = vod.name.clone();
                tokio::spawn(async move { cluster.forget(&name).await });
            }
        }
    }
}

/// What pulled sessions and the RTMP and SRT listeners share, with a private directory (mode
/// 0700, under the temporary directory) for the FIFOs their transcoders read.
fn ingest_context(
    config: &Config,
    sessions: &Registry,
    verifier: &Arc<Verifier>,
    metrics: &Arc<Metrics>,
) -> Result<crate::ingest::publish::IngestContext, StartError> {
    let dir = std::env::temp_dir().join(format!("wisp-ingest-{}", std::process::id()));
    let fail = |source| StartError::FifoDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(fail)?;
    Ok(crate::ingest::publish::IngestContext {
        sessions: sessions.clone(),
        verifier: verifier.clone(),
        max_publishers: config.limits.max_publishers,
        metrics: metrics.clone(),
        transcoder: config.transcoder.clone(),
        fifo_dir: dir,
        max_height: config.live.max_height,
    })
}

/// New POSTs get 503; peers close; transcoders stop. Waits up to 10 s for them.
async fn drain(state: &AppState, cancel: &CancellationToken) {
    tracing::info!("shutting down: refusing new viewers, closing peers, stopping transcoders");
    state.draining.store(true, Ordering::Relaxed);
    state.resources.close_all();
    cancel.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline
        && (state.metrics.transcoders.load(Ordering::Relaxed) > 0
            || state.egresses.running() > 0
            || !state.resources.is_empty())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

pub fn load_keys(config: &Config) -> Result<(Verifier, Option<Minter>), StartError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| StartError::KeyFile {
            path: p.display().to_string(),
            source,
        })
    };
    let key_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| StartError::Key { path, source }
    };
    let (verifier, minter) = match &config.keys {
        KeySource::SecretFile(p) => {
            let secret = read(p)?;
            let secret = secret.trim_ascii();
            (
                Verifier::hs256(secret).map_err(key_err(p))?,
                Some(Minter::hs256(secret).map_err(key_err(p))?),
            )
        }
        KeySource::PublicKey(p) => (
            Verifier::public_key_pem(&read(p)?).map_err(key_err(p))?,
            None,
        ),
        KeySource::Jwks(p) => {
            let text = String::from_utf8_lossy(&read(p)?).into_owned();
            (Verifier::jwks(&text).map_err(key_err(p))?, None)
        }
        KeySource::Generated => {
            let path = config.state_dir.join("jwt-secret");
            let secret = generated_secret(&config.state_dir, &path)?;
            tracing::info!(
                key = %path.display(),
                "no key configured: using the gateway's own HS256 secret \
                 (wisp token finds it: wisp token --sessions NAME --scope view)"
            );
            (
                Verifier::hs256(&secret).map_err(key_err(&path))?,
                Some(Minter::hs256(&secret).map_err(key_err(&path))?),
            )
        }
    };
    let verifier = verifier
        .with_issuer(config.jwt_issuer.clone())
        .with_audience(config.jwt_audience.clone());
    Ok((verifier, minter))
}

/// Reads the state directory's secret, or makes one (64 hex digits, mode 0600).
fn generated_secret(dir: &Path, path: &Path) -> Result<Vec<u8>, StartError> {
    let io = |source| StartError::StateDir {
        path: dir.display().to_string(),
        source,
    };
    if let Ok(existing) = std::fs::read(path) {
        let trimmed = existing.trim_ascii();
        if trimmed.len() >= 32 {
            return Ok(trimmed.to_vec());
        }
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let secret = format!("{}{}", crate::ids::random_id(), crate::ids::random_id());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(secret.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    Ok(secret.into_bytes())
}
