//! Logging setup: one line per event, spans carry conn id, client IP and route.

use tracing_subscriber::EnvFilter;

/// `RUST_LOG` wins; otherwise `default` (e.g. "info").
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Logs go to stderr (stdout is the demo's story, or a pipe), coloured only on a terminal.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
