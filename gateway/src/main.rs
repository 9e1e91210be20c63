//! `wisp`: the gateway's command line. `wisp serve` runs the gateway; `wisp token` mints the
//! JWTs that viewers, publishers and operators present (DESIGN.md "Auth").
//!
//! Only clap types live here; `config.rs` resolves them with the environment and the file.
//! The `unsafe` here is the allocator's: the counting wrapper around jemalloc ([`Counting`])
//! and glibc's trim (see [`give_back_freed_memory`]).
#![deny(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc: the media path allocates and frees a datagram per packet
/// per viewer between long-lived per-viewer state, which left glibc's heap fragmented (RSS per
/// viewer measured in docs/benchmarks.md). Its background threads hand pages freed for ten
/// seconds back to the kernel on their own clock, so a gateway whose viewers left returns to
/// about its starting size (mimalloc, used before, kept tens of MiB: docs/soak.md).
/// Counted, so that `wisp_heap_bytes` shows the live heap next to the RSS (`wisp::heap`).
#[global_allocator]
static ALLOCATOR: Counting = Counting(tikv_jemallocator::Jemalloc);

/// jemalloc, reporting each block's size to `wisp::heap` (one uncontended atomic add).
struct Counting(tikv_jemallocator::Jemalloc);

// SAFETY: every call is passed unchanged to jemalloc, which upholds `GlobalAlloc`'s contract;
// the counting beside it neither allocates nor touches the blocks.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            wisp::heap::allocated(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            wisp::heap::allocated(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { self.0.dealloc(ptr, layout) };
        wisp::heap::freed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            wisp::heap::freed(layout.size());
            wisp::heap::allocated(new_size);
        }
        p
    }
}
use wisp::auth::{self, Claims, Minter, Scope};
use wisp::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(version, about = "Wisp, a WHIP/WHEP media gateway")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway (with the built-in `demo` session unless --no-demo).
    Serve(Box<ServeArgs>),
    /// Print a signed JWT for the given sessions and scopes.
    Token(Box<TokenArgs>),
}

/// Every option can also be set with its WISP_* environment variable or in the --config
/// file (flag > environment > file > default).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  wisp serve --http 127.0.0.1:8080 --rtc 127.0.0.1:8443")]
struct ServeArgs {
    /// TOML configuration file (sessions, limits, ICE servers and every option below).
    #[arg(long, env = "WISP_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 0.0.0.0:8080].
    #[arg(long, env = "WISP_HTTP")]
    http: Option<SocketAddr>,
    /// The one UDP address for all WebRTC [default: 0.0.0.0:8443].
    #[arg(long, env = "WISP_RTC")]
    rtc: Option<SocketAddr>,
    /// Address written into ICE candidates (NAT, containers); repeatable.
    #[arg(long, env = "WISP_PUBLIC_IP", value_delimiter = ',')]
    public_ip: Vec<IpAddr>,
    /// HS256 key: the file's bytes, surrounding whitespace trimmed (at least 32 bytes).
    #[arg(long, env = "WISP_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// Public key (PEM) for RS256, ES256 or EdDSA tokens.
    #[arg(long, env = "WISP_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// JWKS file with the public keys tokens may be signed with.
    #[arg(long, env = "WISP_JWKS")]
    jwks: Option<PathBuf>,
    /// The wisp-transcoder executable [default: next to wisp, else on PATH].
    #[arg(long, env = "WISP_TRANSCODER")]
    transcoder: Option<PathBuf>,
    /// Where a generated key is kept [default: $XDG_STATE_HOME/wisp or ~/.local/state/wisp].
    #[arg(long, env = "WISP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where recordings are written, as SESSION/UTC-START.EXT [default: STATE_DIR/recordings].
    #[arg(long, env = "WISP_RECORDINGS")]
    recordings: Option<PathBuf>,
    /// HLS of sessions without their own `hls` setting: on-demand (started by a player's
    /// request for /hls/NAME/index.m3u8), always, or off [default: on-demand].
    #[arg(long, env = "WISP_HLS")]
    hls: Option<wisp::config::HlsMode>,
    /// Seconds a transcoder keeps running with no viewer, and a live session stays with
    /// neither publisher nor viewer [default: 60].
    #[arg(long, env = "WISP_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,
    /// Do not define the built-in demo session.
    #[arg(long, env = "WISP_NO_DEMO")]
    no_demo: bool,
    /// List session names on / to visitors without a token (by default only a token's own
    /// sessions are listed, to it).
    #[arg(long, env = "WISP_PUBLIC_SESSIONS")]
    public_sessions: bool,
    /// Where /metrics is served: "main" (the HTTP listener), ADDR:PORT (a listener of its
    /// own, e.g. 127.0.0.1:9090), or "off" [default: main].
    #[arg(long, env = "WISP_METRICS")]
    metrics: Option<wisp::config::MetricsAt>,
    /// RTMP listener for publishers (OBS, FFmpeg: rtmp://HOST:PORT/live, stream key
    /// NAME?token=JWT), or "off" [default: 0.0.0.0:1935].
    #[arg(long, env = "WISP_RTMP")]
    rtmp: Option<wisp::config::Listen>,
    /// SRT listener for publishers (srt://HOST:PORT?streamid=publish:NAME:JWT, MPEG-TS), or
    /// "off" [default: 0.0.0.0:8890].
    #[arg(long, env = "WISP_SRT")]
    srt: Option<wisp::config::Listen>,
    /// Serve the console, player and publish pages from this folder's console.html,
    /// player.html and publish.html, read at each request (to customise them) [default:
    /// the built-in pages].
    #[arg(long, env = "WISP_ASSETS")]
    assets: Option<PathBuf>,
    /// Fan-out worker threads that drive viewers (each sends its viewers' media in one loop);
    /// 0 is one per core [default: 0].
    #[arg(long, env = "WISP_WORKERS")]
    workers: Option<usize>,
    /// Join a cluster: the Redis the nodes share their sessions in (redis://HOST:PORT/DB).
    /// Requests for a session another node owns are redirected there (307) [default: none,
    /// a node of its own].
    #[arg(long, env = "WISP_CLUSTER")]
    cluster: Option<String>,
    /// This node's HTTP URL as other nodes and clients reach it (http://HOST:PORT), for the
    /// cluster's redirects [default: http:// and the bound --http address].
    #[arg(long, env = "WISP_NODE_URL")]
    node_url: Option<String>,
    /// What this node can carry in the cluster's placement, in cores (a VOD session counts
    /// 0.25, a live session 0.05, a viewer 0.002 unless [cluster] says otherwise) [default:
    /// the number of cores].
    #[arg(long, env = "WISP_CAPACITY")]
    capacity: Option<f64>,
    /// Serve the sessions other nodes hold to this node's viewers through an edge relay (this
    /// node pulls the session over WHEP once, for all of them) instead of redirecting them
    /// [default: redirect].
    #[arg(long, env = "WISP_RELAY")]
    relay: bool,
    /// Check the configuration (the file, keys, sessions and their local inputs), print what
    /// would run, and exit: 0 if it is valid, 2 if not. Nothing is bound or started.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The key is found as `wisp serve` finds it: --jwt-secret-file, else the \
                      --config file's, else the secret `wisp serve` generated in its state \
                      directory (made by its first start).\n\nExamples:\n  \
                      wisp token --sessions demo --scope \"view playback\" --ttl 3600\n  \
                      wisp token --sessions '*' --scope admin\n  \
                      wisp token --jwt-private-key ed25519.pem --sessions cam --scope publish"
)]
struct TokenArgs {
    /// HS256 key: the file's bytes, surrounding whitespace trimmed (at least 32 bytes).
    #[arg(long, env = "WISP_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// Sign with a private key instead (PEM: RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, conflicts_with = "jwt_secret_file")]
    jwt_private_key: Option<PathBuf>,
    /// The gateway's TOML configuration: its key, issuer and audience are used.
    #[arg(long, env = "WISP_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's public key, read from its variable only so that the key is resolved as
    /// `wisp serve` resolves it (a token cannot be signed with it).
    #[arg(long, env = "WISP_JWT_PUBLIC_KEY", hide = true)]
    jwt_public_key: Option<PathBuf>,
    /// As --jwt-public-key, for a JWKS.
    #[arg(long, env = "WISP_JWKS", hide = true)]
    jwks: Option<PathBuf>,
    /// The gateway's state directory, where its generated secret is kept [default:
    /// $XDG_STATE_HOME/wisp or ~/.local/state/wisp].
    #[arg(long, env = "WISP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Comma-separated session names, or * for every session.
    #[arg(long, value_delimiter = ',', required = true)]
    sessions: Vec<String>,
    /// Space-separated scopes: view publish playback audio chat admin.
    #[arg(long, default_value = "view")]
    scope: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Subject (who the token is for), shown in logs.
    #[arg(long)]
    sub: Option<String>,
    /// Issuer claim, for gateways configured to require one.
    #[arg(long)]
    iss: Option<String>,
    /// Audience claim, for gateways configured to require one.
    #[arg(long)]
    aud: Option<String>,
}

fn main() -> ExitCode {
    wisp::heap::install();
    match Cli::parse().command {
        Cmd::Serve(args) => serve(*args),
        Cmd::Token(args) => match token(*args) {
            Ok(t) => {
                say(&t);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wisp token: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            wisp::config::log_filter(),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr's reader is gone: the gateway that read
        // it died) is dropped; reporting that on stderr too would panic.
        .log_internal_errors(false)
        .init();
    let overrides = Overrides {
        http: args.http,
        rtc: args.rtc,
        public_ip: args.public_ip,
        jwt_secret_file: args.jwt_secret_file,
        jwt_public_key: args.jwt_public_key,
        jwks: args.jwks,
        transcoder: args.transcoder,
        state_dir: args.state_dir,
        recordings: args.recordings,
        hls: args.hls,
        idle_timeout_secs: args.idle_timeout,
        no_demo: args.no_demo,
        public_sessions: args.public_sessions.then_some(true),
        metrics: args.metrics,
        rtmp: args.rtmp,
        srt: args.srt,
        assets: args.assets,
        workers: args.workers,
        cluster: args.cluster,
        node_url: args.node_url,
        capacity: args.capacity,
        relay: args.relay,
    };
    let config = match Config::resolve(overrides, args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wisp serve: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        return check(&config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(give_back_freed_memory)
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(async {
        let gateway = match wisp::serve::Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("wisp serve: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(url) = &gateway.demo_url {
            // Like Jupyter's token URL: open it in a browser to watch the demo.
            say(&format!("\n    Watch the demo: {url}"));
        }
        let host = match gateway.http_addr.ip() {
            ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        say(&format!(
            "    The console:    http://{} (paste a token from: wisp token --sessions '*' --scope admin)\n",
            SocketAddr::new(host, gateway.http_addr.port())
        ));
        gateway.run(wisp::serve::signals()).await;
        ExitCode::SUCCESS
    })
}

/// `wisp serve --check`: what would run, and every problem found without binding or starting
/// anything (the key is read, not generated; local inputs are opened, URLs are not).
fn check(config: &Config) -> ExitCode {
    let mut problems = Vec::new();
    let listen = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    say(&format!("http       {}", config.http));
    say(&format!("rtc        {} (UDP)", config.rtc));
    say(&format!("workers    {} (fan-out threads)", config.workers));
    if let Some(c) = &config.cluster {
        say(&format!(
            "cluster    {} (this node: {}, capacity {} cores; costs: VOD session {}, live \
             session {}, viewer {})",
            wisp::http::api::redacted(&c.redis),
            c.node_url
                .as_deref()
                .unwrap_or("http:// and the bound address"),
            c.capacity,
            c.costs.vod,
            c.costs.live,
            c.costs.viewer,
        ));
    }
    say(&format!("rtmp       {}", listen(config.rtmp)));
    say(&format!("srt        {} (UDP)", listen(config.srt)));
    say(&format!("state      {}", config.state_dir.display()));
    say(&format!("recordings {}", config.recordings.display()));
    use wisp::config::KeySource;
    let key = match &config.keys {
        KeySource::Generated => {
            let path = config.state_dir.join("jwt-secret");
            let note = if path.exists() {
                "exists"
            } else {
                "made at the first start"
            };
            format!("generated HS256 secret {} ({note})", path.display())
        }
        KeySource::SecretFile(p) => format!("HS256 secret {}", p.display()),
        KeySource::PublicKey(p) => format!("public key {}", p.display()),
        KeySource::Jwks(p) => format!("JWKS {}", p.display()),
    };
    if config.keys != KeySource::Generated
        && let Err(e) = wisp::serve::load_keys(config)
    {
        problems.push(e.to_string());
    }
    say(&format!("key        {key}"));
    let transcoder = &config.transcoder;
    let found = wisp::config::find_program(transcoder).is_some();
    if found {
        say(&format!("transcoder {}", transcoder.display()));
    } else {
        problems.push(format!(
            "the transcoder {} is not found (VOD, RTMP, SRT and pulled sessions need it): \
             give its path with --transcoder",
            transcoder.display()
        ));
    }
    if let Some(dir) = &config.assets {
        for page in ["console.html", "player.html", "publish.html"] {
            if let Err(e) = std::fs::read_to_string(dir.join(page)) {
                problems.push(format!("assets: {}: {e}", dir.join(page).display()));
            }
        }
        say(&format!("assets     {}", dir.display()));
    }
    for (name, spec) in &config.sessions {
        match spec.check_inputs() {
            Ok(urls) if urls.is_empty() => say(&format!("session    {name}")),
            Ok(urls) => say(&format!(
                "session    {name} (URLs not probed: {})",
                urls.join(" ")
            )),
            Err(e) => problems.push(format!("session {name:?}: {e}")),
        }
    }
    if problems.is_empty() {
        say("configuration OK");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("wisp serve --check: {p}");
        }
        ExitCode::from(2)
    }
}

/// Writes a line to stdout. A reader that went away (`wisp token | head -c 10`) is not an
/// error of ours: the rest is dropped, where `println!` would panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Hands the memory glibc's malloc holds free back to the kernel, at most once a second, when
/// a runtime thread runs out of work. Rust's allocations are jemalloc's, which does this on its
/// own; the C code's (AWS-LC's DTLS and SRTP state) are glibc's, which keeps freed chunks in
/// its arenas: a gateway whose viewers all left would keep what their handshakes used.
fn give_back_freed_memory() {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The arenas belong to the process, not the thread: one thread trims them, at most once a
    // second (trimming locks each arena in turn).
    static LAST_TRIM_S: AtomicU64 = AtomicU64::new(0);
    let second = wisp::auth::now_secs();
    let last = LAST_TRIM_S.load(Ordering::Relaxed);
    if second > last
        && LAST_TRIM_S
            .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        // SAFETY: it takes no pointers and may be called from any thread at any time; it only
        // returns memory glibc's arenas hold free.
        #[cfg(target_env = "gnu")]
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

fn token(args: TokenArgs) -> Result<String, String> {
    use wisp::config::KeySource;
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    // The same resolution as `wisp serve`, so that a token minted here is one the gateway
    // accepts; the file's issuer and audience come with it.
    let over = Overrides {
        jwt_secret_file: args.jwt_secret_file.clone(),
        jwt_public_key: args.jwt_public_key.clone(),
        jwks: args.jwks.clone(),
        state_dir: args.state_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::resolve(over, args.config.as_deref()).map_err(|e| e.to_string())?;
    let minter = match (&args.jwt_private_key, &config.keys) {
        (Some(f), _) => Minter::private_key_pem(&read(f)?),
        (None, KeySource::SecretFile(p)) => Minter::hs256(read(p)?.trim_ascii()),
        (None, KeySource::Generated) => {
            // Read, never made here: a secret made by this command in another state directory
            // than the gateway's would sign tokens the gateway refuses.
            let path = config.state_dir.join("jwt-secret");
            match std::fs::read(&path) {
                Ok(secret) => Minter::hs256(secret.trim_ascii()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!(
                        "no key: {} does not exist yet. `wisp serve` makes it at its first start \
                         with this state directory; or give the gateway's --state-dir, \
                         --config or --jwt-secret-file",
                        path.display()
                    ));
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        (None, KeySource::PublicKey(_) | KeySource::Jwks(_)) => {
            return Err(
                "the gateway verifies tokens with public keys (jwt_public_key or jwks): \
                        sign them with the private key, --jwt-private-key FILE"
                    .into(),
            );
        }
    }
    .map_err(|e| e.to_string())?;
    let (iss, aud) = (config.jwt_issuer, config.jwt_audience);
    if let Some(bad) = args.sessions.iter().find(|s| !auth::valid_session_name(s)) {
        return Err(format!(
            "'{bad}' is not a session name (1-64 of A-Z a-z 0-9 . _ -, or *)"
        ));
    }
    let scopes: Vec<Scope> = args
        .scope
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if scopes.is_empty() {
        return Err("give at least one scope".into());
    }
    if args.ttl == 0 {
        return Err("--ttl must be at least 1 second".into());
    }
    let now = auth::now_secs();
    let scope = scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(minter.mint(&Claims {
        iss: args.iss.or(iss),
        aud: args.aud.or(aud),
        sub: args.sub,
        ..Claims::new(args.sessions, scope, now + args.ttl)
    }))
}
