//! What the gateway's integration tests share.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::path::PathBuf;

/// A binary of this workspace, built next to the test binary (`target/<profile>/NAME`).
/// `cargo build --workspace` builds them all (scripts/test does it before the tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: cargo build --workspace first (scripts/test does)",
        bin.display()
    );
    bin
}

/// What the dynamic loader prints for a transcoder whose runtime library is missing.
pub const LOADER_ERROR: &str =
    "error while loading shared libraries: libavfilter.so.8: cannot open shared object file";

/// A stand-in `wisp-transcoder` (in a new directory named after `tag`) that dies as one
/// whose shared libraries are missing does: `starting`, then the loader's line on stderr,
/// exit 127, no event. Returns the directory (remove it after) and the program.
pub fn unloadable_transcoder(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("wisp-{tag}-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let program = dir.join("wisp-transcoder");
    std::fs::write(
        &program,
        format!("#!/bin/sh\necho starting >&2\necho \"$0: {LOADER_ERROR}\" >&2\nexit 127\n"),
    )
    .expect("write the script");
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    (dir, program)
}

/// The gateway's `/metrics` page at `base` (`http://host:port`).
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics page")
}

/// The value of the sample named `name` (with its labels, if any) on a metrics page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
