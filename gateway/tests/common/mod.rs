//! What the gateway's integration tests share.

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
