//! The `limiter` command line: the daemon (`run`, `detach`), the client commands that talk to
//! it over the control socket, and `check-config`. docs/CLI.md documents every command.
//!
//! - [`args`]: the clap types and value parsers (TTL, durations);
//! - [`addresses`]: IPs and prefixes from arguments and stdin, every bad one reported;
//! - [`output`]: tables and summaries for people, the protocol's JSON for programs;
//! - [`proxies`]: the trusted proxies' table and the `VIA` cells of `stats` and `list`;
//! - [`cluster`]: `cluster status`, this node, etcd and every node seen;
//! - [`logging`]: the journal's fields under systemd, text on stderr otherwise;
//! - [`commands`]: dispatch and exit codes (0 done, 1 operational failure, 2 bad input).

pub mod addresses;
pub mod args;
pub mod cluster;
pub mod commands;
pub mod logging;
pub mod output;
pub mod proxies;

pub use args::Cli;
pub use commands::{execute, parse, run, Failure, Invocation};

/// The whole command line as clap sees it, for what is generated from it: shell completions
/// and man pages (`cargo xtask dist`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
