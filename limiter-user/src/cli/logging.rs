//! Where the command line's logs go: to the journal, as structured fields, when systemd
//! connected stderr to it; otherwise as text on stderr. (`top` and `run --tui` own the
//! terminal and log through [`crate::tui::logging`] instead.)
//!
//! In the journal every field of an event becomes a field of its own, prefixed with
//! [`JOURNAL_FIELD_PREFIX`]: a ban's `source` is `LIMITER_SOURCE`, so
//! `journalctl -u glance-limiter LIMITER_SOURCE=198.51.100.7/32` finds every decision about it.

use std::{ffi::OsStr, io, os::unix::fs::MetadataExt};

use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};

/// Keeps our fields apart from the journal's own (`PRIORITY`, `MESSAGE_ID`, `CODE_FILE`...),
/// whatever a later log line calls its fields.
pub const JOURNAL_FIELD_PREFIX: &str = "LIMITER";

/// Where logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// journald's native protocol: one journal field per tracing field.
    Journal,
    /// Text lines on stderr.
    Stderr,
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose stderr (or stdout) is
/// the journal. Children inherit the variable even when their stderr goes elsewhere (a shell
/// started from a service, a redirect to a file), so it only counts when it names the stderr
/// this process actually has: the check systemd.exec(5) asks for.
pub fn choose_target(journal_stream: Option<&OsStr>, stderr: Option<(u64, u64)>) -> Target {
    let named = journal_stream
        .and_then(OsStr::to_str)
        .and_then(|value| value.split_once(':'))
        .and_then(|(dev, ino)| Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?)));
    match (named, stderr) {
        (Some(named), Some(actual)) if named == actual => Target::Journal,
        _ => Target::Stderr,
    }
}

/// Device and inode of this process's stderr, as `JOURNAL_STREAM` writes them.
fn stderr_identity() -> Option<(u64, u64)> {
    let metadata = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Installs the process's subscriber; `default_filter` applies unless `LIMITER_LOG` is set.
pub fn init(default_filter: &str) {
    let filter = || {
        EnvFilter::try_from_env("LIMITER_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter))
    };
    let target = choose_target(
        std::env::var_os("JOURNAL_STREAM").as_deref(),
        stderr_identity(),
    );
    if target == Target::Journal {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()));
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(journal)
                    .try_init();
            }
            // journald's socket is missing (a container without journald): stderr still
            // reaches the journal, as text.
            Err(error) => {
                if init_stderr(filter()) {
                    tracing::warn!(%error, "cannot reach journald's socket; logging as text");
                }
            }
        }
    } else {
        init_stderr(filter());
    }
}

/// Returns whether this call installed the subscriber.
fn init_stderr(filter: EnvFilter) -> bool {
    // Colour only on a terminal: under systemd or into a file, escape codes are noise.
    let colour =
        io::IsTerminal::is_terminal(&io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(io::stderr)
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(stream: Option<&str>, stderr: Option<(u64, u64)>) -> Target {
        choose_target(stream.map(OsStr::new), stderr)
    }

    #[test]
    fn the_journal_only_when_it_is_our_stderr() {
        assert_eq!(choose(Some("8:12345"), Some((8, 12345))), Target::Journal);
        // Inherited from a service but redirected: not ours.
        assert_eq!(choose(Some("8:12345"), Some((8, 999))), Target::Stderr);
        assert_eq!(choose(Some("9:12345"), Some((8, 12345))), Target::Stderr);
        assert_eq!(choose(None, Some((8, 12345))), Target::Stderr);
        assert_eq!(choose(Some("8:12345"), None), Target::Stderr);
    }

    #[test]
    fn a_malformed_journal_stream_means_stderr() {
        for value in [
            "",
            "8",
            "8:",
            ":12345",
            "a:b",
            "8:12345:1",
            "-8:12345",
            " 8:12345",
        ] {
            assert_eq!(
                choose(Some(value), Some((8, 12345))),
                Target::Stderr,
                "{value:?}"
            );
        }
    }
}
