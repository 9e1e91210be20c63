//! `wisp`: the gateway's command line. Today: `wisp token`, which mints the JWTs that viewers,
//! publishers and operators present (DESIGN.md "Auth").
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wisp::auth::{self, Claims, Minter, Scope};

#[derive(Debug, Parser)]
#[command(version, about = "Wisp, a WHIP/WHEP media gateway")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print a signed JWT for the given sessions and scopes.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  wisp token --jwt-secret-file secret --sessions demo --scope \"view playback\" --ttl 3600"
)]
struct TokenArgs {
    /// HS256 key: the file's bytes, surrounding whitespace trimmed (at least 32 bytes).
    #[arg(
        long,
        env = "WISP_JWT_SECRET_FILE",
        required_unless_present = "jwt_private_key"
    )]
    jwt_secret_file: Option<PathBuf>,
    /// Sign with a private key instead (PEM: RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, conflicts_with = "jwt_secret_file")]
    jwt_private_key: Option<PathBuf>,
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
    match Cli::parse().command {
        Cmd::Token(args) => match token(args) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wisp token: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn token(args: TokenArgs) -> Result<String, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let minter = match (&args.jwt_secret_file, &args.jwt_private_key) {
        (Some(f), _) => Minter::hs256(read(f)?.trim_ascii()),
        (None, Some(f)) => Minter::private_key_pem(&read(f)?),
        (None, None) => unreachable!("clap requires one of the two"),
    }
    .map_err(|e| e.to_string())?;
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
        exp: now + args.ttl,
        nbf: None,
        iat: Some(now),
        iss: args.iss,
        aud: args.aud,
        sub: args.sub,
        sessions: args.sessions,
        scope,
    }))
}
