//! `wisp-conformance`: a black-box WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep)
//! conformance suite for any server.
//!
//! Every case is an item of the checklist in `docs/conformance.md` (CHECKLIST.md), with its
//! level, the section it cites, and what was sent and what came back. The exit status is 1 if
//! any MUST failed, 2 on bad usage or an unwritable report, else 0 (a reader of the report that
//! stops early, `| head`, changes nothing).

mod cases;
mod http;
mod report;
mod sdp;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use reqwest::Url;

use crate::cases::{Run, Settings};
use crate::report::{Report, Summary};
use crate::sdp::Side;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Each case with its verdict and what it saw, then a summary, for people.
    Text,
    /// One JSON document: the server, every case, the summary.
    Json,
    /// JUnit XML, for CI systems that show test results.
    Junit,
}

/// Tests a WHIP and/or WHEP server from the outside against RFC 9725 and draft-ietf-wish-whep.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A WHEP endpoint, e.g. http://127.0.0.1:8080/whep/demo (a stream that plays).
    #[arg(long)]
    whep: Option<Url>,
    /// A WHIP endpoint, e.g. http://127.0.0.1:8080/whip/test (nobody else publishing there).
    #[arg(long)]
    whip: Option<Url>,
    /// Bearer token for both endpoints (it needs the rights to publish and to view).
    #[arg(long, env = "WISP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How the report is written.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    output: Option<std::path::PathBuf>,
    /// Run only these case ids.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    only: Vec<String>,
    /// Leave out these case ids.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    skip: Vec<String>,
    /// A WHEP endpoint of a stream without a publisher, for WHEP-409-NO-PUBLISHER.
    #[arg(long)]
    whep_no_publisher: Option<Url>,
    /// Send this many POSTs in a row for WHxP-RATE (they create sessions on the server).
    #[arg(long, default_value_t = 0)]
    burst: usize,
    /// No WebRTC peer: HTTP-level cases only.
    #[arg(long)]
    no_media: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.whep.is_none() && args.whip.is_none() {
        eprintln!("wisp-conformance: give --whep URL, --whip URL or both");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut run = Run {
        http: http::Http::new(args.token.clone()),
        cases: Vec::new(),
        only: args.only.clone(),
        skip: args.skip.clone(),
        settings: Settings {
            whep_no_publisher: args.whep_no_publisher.clone(),
            burst: args.burst,
            no_media: args.no_media,
        },
    };
    runtime.block_on(async {
        if let Some(u) = &args.whip {
            cases::endpoint(&mut run, Side::Whip, u).await;
        }
        if let Some(u) = &args.whep {
            cases::endpoint(&mut run, Side::Whep, u).await;
        }
    });
    let summary = Summary::of(&run.cases);
    let failed = summary.must_failed > 0;
    let report = Report {
        server: serde_json::json!({
            "whep": args.whep.as_ref().map(Url::as_str),
            "whip": args.whip.as_ref().map(Url::as_str),
            "token": args.token.is_some(),
            "suite": concat!("wisp-conformance ", env!("CARGO_PKG_VERSION")),
        }),
        cases: &run.cases,
        summary,
    };
    let text = match args.format {
        Format::Text => report::text(&report),
        Format::Json => report::json(&report),
        Format::Junit => report::junit(&report),
    };
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("wisp-conformance: writing {}: {e}", path.display());
                return ExitCode::from(2);
            }
            eprint!("{}", report::text(&report).lines().last().unwrap_or(""));
            eprintln!();
        }
        None => {
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                // The reader took what it wanted (`| head`); the status still tells the result.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => {
                    eprintln!("wisp-conformance: writing the report: {e}");
                    return ExitCode::from(2);
                }
                Ok(()) => {}
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_says_what_it_is_for_in_help() {
        let cmd = super::Args::command();
        let missing: Vec<_> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter(|a| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "no --help text: {missing:?}");
    }
}
