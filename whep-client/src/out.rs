//! Standard output for the CLI: every line goes through here.
//!
//! `println!` panics when stdout's reader is gone (`whep-client control … | head -1`, once
//! head has exited). Here a closed stdout is news for the caller instead: its run ends early but
//! cleanly (the WHEP resource is deleted), with the exit status it would have had. Owns nothing
//! else; what is printed is the callers'.

use std::io::Write;
use std::process::ExitCode;

/// Prints one line, flushed. Returns `false` once stdout's reader is gone: nobody wants more,
/// and the caller should wrap up. Any other failure to write (a full disk) loses the output,
/// so it ends the process with 1 and the reason on stderr.
#[must_use = "a closed stdout should end the run"]
pub fn line(text: impl std::fmt::Display) -> bool {
    match write_line(text) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            eprintln!("whep-client: writing to stdout: {e}");
            std::process::exit(1)
        }
    }
}

/// Prints a run's last line and returns its exit `status`, which a closed stdout does not
/// change: the status already says how the run went. Any other failure to write is one more
/// failure.
pub fn last_line(text: impl std::fmt::Display, status: ExitCode) -> ExitCode {
    match write_line(text) {
        Ok(()) => status,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => status,
        Err(e) => {
            eprintln!("whep-client: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}
