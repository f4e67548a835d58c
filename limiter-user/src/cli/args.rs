//! The command line: every command, flag and value parser of `limiter` (clap derive).
//!
//! Addresses are taken as plain strings here and parsed in [`super::addresses`], so that every
//! bad one is reported at once (clap stops at the first) and `-` can stand for stdin.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{self, Mode},
    control::client,
    loader::DEFAULT_PIN_DIR,
    operator_input::{parse_duration, parse_interval, parse_max_sources, parse_ttl, MaxSources},
};

#[derive(Debug, Parser)]
#[command(
    name = "limiter",
    version,
    about = "Protects an OpenStack Glance API from image-create floods (OSSN-0076) with XDP",
    long_about = "Protects an OpenStack Glance API from image-create floods (OSSN-0076) with \
                  XDP.\n\n`limiter run` is the daemon; the other commands talk to it over its \
                  control socket. Exit codes: 0 done, 1 operational failure (no daemon, daemon \
                  error, I/O), 2 bad input (nothing changed). docs/CLI.md has every detail."
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "LIMITER_SOCKET",
        value_name = "PATH",
        default_value = client::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// How long to wait for the daemon's answer (90s, 2m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach, count, ban, serve the control socket (needs root).
    Run(RunArgs),
    /// Remove the pinned XDP attachments and maps; rules stay in the store.
    Detach(DetachArgs),
    /// Block addresses or prefixes (drops TCP to the protected ports, or everything with
    /// --all-ports).
    Block(BlockArgs),
    /// Remove block rules, manual or automatic.
    Unblock(RemoveArgs),
    /// Allow addresses or prefixes: never banned and exempt from every block.
    Allow(AllowArgs),
    /// Remove allow rules.
    Unallow(RemoveArgs),
    /// List every rule.
    List(JsonArgs),
    /// Show the busiest sources and their rates.
    Stats(StatsArgs),
    /// Show the daemon's state: mode, interfaces, rules, counters.
    Status(JsonArgs),
    /// The cluster this daemon shares rules and counts with through etcd (`[cluster]` in its
    /// configuration).
    Cluster(ClusterArgs),
    /// Propose thresholds from the peaks the daemon has seen, and list whom the current and
    /// the proposed ones would have banned (docs/CONFIG.md, "Tuning").
    Recommend(RecommendArgs),
    /// Check a configuration file and print the effective configuration.
    CheckConfig(CheckConfigArgs),
    /// Live screen for the engineer on call: sources, bans, rules, events; ban, unban and
    /// allow from the keyboard (docs/TUI.md).
    Top(TopArgs),
}

impl Command {
    /// Whether the command talks to the daemon (and so uses --socket and --timeout).
    pub fn is_client(&self) -> bool {
        !matches!(
            self,
            Command::Run(_) | Command::Detach(_) | Command::CheckConfig(_)
        )
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (repeatable); replaces `interfaces` in the configuration.
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Configuration file [default: /etc/glance-limiter/limiter.toml if it exists, else the
    /// built-in defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// enforce: install bans; monitor: only log them.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Protected TCP port (repeatable); replaces `ports` in the configuration.
    #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// How often counters are read and decisions taken (500ms, 1s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (127.0.0.1:9464); replaces
    /// `metrics_listen` in the configuration [default: no metrics listener].
    #[arg(long, value_name = "ADDR", value_parser = config::parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
    /// bpffs directory of the pinned maps and attachments.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Show the live interface (the same as `limiter top`) on this terminal; quitting it
    /// stops the daemon (the program stays attached).
    #[arg(long)]
    pub tui: bool,
    /// With --tui: where the daemon logs [default: limiter.log in the state directory].
    #[arg(long, value_name = "FILE", requires = "tui")]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// bpffs directory of the pinned maps and attachments.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    #[command(flatten)]
    pub rule: NewRuleArgs,
    /// Drop every packet from these sources (any protocol and port), not only TCP to the
    /// protected ports.
    #[arg(long)]
    pub all_ports: bool,
    /// Block even prefixes that cover a trusted proxy (trusted_proxies in the daemon's
    /// configuration) or lie inside one: every client behind that proxy is cut off.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct AllowArgs {
    #[command(flatten)]
    pub rule: NewRuleArgs,
}

/// What block and allow share.
#[derive(Debug, Args)]
pub struct NewRuleArgs {
    /// IP addresses (a host) or CIDR prefixes; `-` reads them from stdin, one per line.
    #[arg(required = true, value_name = "IP|CIDR|-")]
    pub addresses: Vec<String>,
    /// How long the rule lasts (90s, 30m, 12h, 7d, 1h30m) [default: until removed].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Why the rule exists (shown by `limiter list`).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// IP addresses or CIDR prefixes of the rules; `-` reads them from stdin, one per line.
    #[arg(required = true, value_name = "IP|CIDR|-")]
    pub addresses: Vec<String>,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the daemon's answer as JSON (the shapes in docs/CLI.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// The percentile of legitimate sources' peaks a proposal starts from (over 0, up to 100).
    #[arg(long, value_name = "P", default_value_t = crate::recommend::DEFAULT_PERCENTILE)]
    pub percentile: f64,
    /// The headroom over it: 2 proposes twice the percentile's peak (at least 1).
    #[arg(long, value_name = "X", default_value_t = crate::recommend::DEFAULT_MARGIN)]
    pub margin: f64,
    /// Print the daemon's answer as JSON (the shapes in docs/CLI.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// This node's state, etcd's endpoints, every node seen with its last publication and lag,
    /// shared rules and pending changes.
    Status(JsonArgs),
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// How many sources to show, busiest first.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = parse_top)]
    pub top: usize,
    /// Print the daemon's answer as JSON (the shapes in docs/CLI.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often to refresh (200ms to 10s).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Sources fetched per refresh, the daemon's busiest first, or `all`; sorting and
    /// filtering apply to those fetched.
    #[arg(long, value_name = "N|all", default_value = "10000", value_parser = parse_max_sources)]
    pub max_sources: MaxSources,
    /// The daemon's configuration file, read only for the thresholds marked on the
    /// sparklines [default: /etc/glance-limiter/limiter.toml if it exists, else the built-in
    /// defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write logs to this file; while the screen is on, logs go nowhere else.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The file to check.
    #[arg(value_name = "FILE", default_value = config::DEFAULT_PATH)]
    pub file: PathBuf,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err("a timeout of 0 cannot be met; give at least 1s (the default is 30s)".into());
    }
    Ok(timeout)
}

fn parse_top(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!(
            "`{text}` is not a number of sources; give a whole number of at least 1"
        )),
        Ok(top) => Ok(top),
    }
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse() {
        let cli = Cli::try_parse_from([
            "limiter",
            "block",
            "198.51.100.7",
            "-",
            "--ttl",
            "30m",
            "--all-ports",
            "--reason",
            "flood",
        ])
        .unwrap();
        let Command::Block(block) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(block.rule.addresses, ["198.51.100.7", "-"]);
        assert_eq!(block.rule.ttl, Some(Duration::from_secs(1800)));
        assert!(block.all_ports);
        assert!(!block.force);
        assert_eq!(cli.timeout, Duration::from_secs(30));
        let cli = Cli::try_parse_from(["limiter", "block", "198.51.100.0/24", "--force"]).unwrap();
        let Command::Block(block) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert!(block.force);

        let cli = Cli::try_parse_from([
            "limiter",
            "run",
            "--iface",
            "eth0",
            "--iface",
            "eth1",
            "--mode",
            "monitor",
            "--port",
            "9292",
            "--poll-interval",
            "500ms",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert_eq!(run.ifaces, ["eth0", "eth1"]);
        assert_eq!(run.mode, Some(Mode::Monitor));
        assert_eq!(run.poll_interval, Some(Duration::from_millis(500)));
        assert_eq!(run.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    }

    #[test]
    fn top_takes_an_interval_and_a_fetch_limit() {
        let cli = Cli::try_parse_from(["limiter", "top", "--socket", "/tmp/x.sock"]).unwrap();
        let Command::Top(top) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(top.interval, Duration::from_secs(1));
        assert_eq!(top.max_sources, MaxSources(Some(10_000)));
        let cli = Cli::try_parse_from([
            "limiter",
            "top",
            "--interval",
            "500ms",
            "--max-sources",
            "all",
        ])
        .unwrap();
        assert!(
            cli.command.is_client(),
            "top talks to the daemon: --socket applies"
        );
        let Command::Top(top) = cli.command else {
            panic!()
        };
        assert_eq!(top.interval, Duration::from_millis(500));
        assert_eq!(top.max_sources, MaxSources(None));
        for args in [
            &["limiter", "top", "--interval", "20s"][..],
            &["limiter", "top", "--max-sources", "0"],
        ] {
            assert_eq!(
                Cli::try_parse_from(args).unwrap_err().exit_code(),
                2,
                "{args:?}"
            );
        }
    }

    #[test]
    fn cluster_status_is_a_client_command_with_json() {
        let cli = Cli::try_parse_from(["limiter", "cluster", "status", "--json"]).unwrap();
        assert!(cli.command.is_client(), "--socket and --timeout apply");
        let Command::Cluster(ClusterArgs {
            command: ClusterCommand::Status(args),
        }) = cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert!(args.json);
        for args in [
            &["limiter", "cluster"][..],
            &["limiter", "cluster", "members"],
            &["limiter", "cluster", "status", "--top", "3"],
        ] {
            assert_eq!(
                Cli::try_parse_from(args).unwrap_err().exit_code(),
                2,
                "{args:?}"
            );
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            Cli::try_parse_from(["limiter", "list", "--socket", "/tmp/x.sock", "--json"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        let cli = Cli::try_parse_from(["limiter", "--timeout", "2m", "status"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(120));
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["limiter", "block"][..],
            &["limiter", "unblock", "10.0.0.1", "--ttl", "5m"],
            &["limiter", "allow", "10.0.0.1", "--all-ports"],
            &["limiter", "allow", "10.0.0.1", "--force"],
            &["limiter", "unblock", "10.0.0.1", "--force"],
            &["limiter", "stats", "--top", "0"],
            &["limiter", "run", "--port", "0"],
            &["limiter", "run", "--mode", "enforcing"],
            &["limiter", "list", "--bogus"],
        ] {
            let error = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
