//! What the CLI takes from its environment, read here and nowhere else: the log filter.
//!
//! The token's variable, `WISP_TOKEN`, stands in for `--token` and is clap's to read, next to
//! the flag in `main.rs`. The library reads no environment at all.

/// The log filter when the environment sets none.
pub const DEFAULT_LOG_FILTER: &str = "warn";

/// The log filter: `WISP_LOG`, else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`].
pub fn log_filter() -> String {
    std::env::var("WISP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into())
}
