//! Logs while the TUI owns the terminal: to a file when asked (`--log-file`), otherwise
//! nowhere. Never to stderr, which is the screen.

use std::{fs::OpenOptions, path::Path, sync::Mutex};

use tracing_subscriber::EnvFilter;

pub fn init(log_file: Option<&Path>) -> Result<(), String> {
    let Some(path) = log_file else {
        // No subscriber: every event is discarded.
        return Ok(());
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            format!(
                "cannot open the log file {}: {e}; choose a writable path or leave out --log-file",
                path.display()
            )
        })?;
    let filter = EnvFilter::try_from_env("LIMITER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
}
