//! Runs a parsed command line: reads input, talks to the daemon or runs it, prints the result,
//! and decides the exit code (0 done, 1 operational failure, 2 bad input, nothing changed).

use std::{
    io::{self, BufRead, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
use ipnet::IpNet;

use super::{
    addresses,
    args::{
        BlockArgs, CheckConfigArgs, Cli, ClusterArgs, ClusterCommand, Command, DetachArgs,
        NewRuleArgs, RemoveArgs, RunArgs, TopArgs,
    },
    cluster, output,
};
use crate::{
    config::{self, Config, ConfigError, Overrides},
    control::{
        access,
        client::{self, Client, ClientError},
        framing::op_name,
        protocol::{ErrorKind, Reply, Request, RuleChange},
    },
    daemon::{self, RunOptions},
    operator_input::ttl_secs,
    rules::{Action, Scope},
};

/// Why a command failed, which decides its exit code. The message says what was wrong and
/// what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Failure {
    /// Exit 2: the input is wrong and nothing was changed.
    #[error("{0}")]
    BadInput(String),
    /// Exit 1: the daemon could not be reached or could not do it, or I/O failed.
    #[error("{0}")]
    Operational(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::BadInput(_) => 2,
            Failure::Operational(_) => 1,
        }
    }
}

/// A parsed command line and which global flags were typed on it (not taken from the
/// environment or defaults).
#[derive(Debug)]
pub struct Invocation {
    pub cli: Cli,
    pub typed_client_flags: Vec<&'static str>,
}

/// Parses the process's arguments. Usage errors exit here with clap's message and code 2;
/// `--help` and `--version` exit 0.
pub fn parse() -> Invocation {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let typed_client_flags = ["socket", "timeout"]
        .into_iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .collect();
    Invocation {
        cli,
        typed_client_flags,
    }
}

/// Runs the command and returns the process's exit code; errors go to stderr.
pub fn run(invocation: Invocation) -> ExitCode {
    init_logging(&invocation.cli.command);
    // Unlocked handles: `run` lasts as long as the daemon, and must not hold stdio's locks
    // against its other threads.
    let result = execute(
        invocation,
        &mut io::BufReader::new(io::stdin()),
        &mut io::stdout(),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

fn init_logging(command: &Command) {
    if matches!(command, Command::Top(_)) || matches!(command, Command::Run(args) if args.tui) {
        // The screen is the terminal: `top` logs to --log-file or nowhere (see `top`), and
        // `run --tui` to a file (see daemon::run).
        return;
    }
    // The daemon narrates; a client command stays quiet unless something is wrong.
    let default = if matches!(command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    super::logging::init(default);
}

/// Runs a command with the given stdin (for `-` addresses) and stdout.
pub fn execute(
    invocation: Invocation,
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
) -> Result<(), Failure> {
    let Invocation {
        cli,
        typed_client_flags,
    } = invocation;
    if let (false, Some(flag)) = (cli.command.is_client(), typed_client_flags.first()) {
        return Err(Failure::BadInput(format!(
            "--{flag} is for the commands that talk to the daemon; this command does not use \
             it{}",
            if matches!(cli.command, Command::Run(_)) {
                " (the daemon listens on `socket` from its configuration file)"
            } else {
                ""
            }
        )));
    }
    let daemon = Daemon {
        socket: cli.socket,
        timeout: cli.timeout,
    };
    let now = SystemTime::now;
    let text = match cli.command {
        Command::Run(args) => return run_daemon(args),
        Command::Detach(args) => detach(args)?,
        Command::Block(BlockArgs {
            rule,
            all_ports,
            force,
        }) => {
            let scope = if all_ports {
                Scope::AllPorts
            } else {
                Scope::ProtectedPorts
            };
            let NewRuleArgs {
                addresses,
                ttl,
                reason,
                json,
            } = rule;
            let make = |prefixes| Request::Block {
                prefixes,
                ttl_secs: ttl.map(ttl_secs),
                reason,
                scope,
                force,
            };
            change_rules(&daemon, &addresses, stdin, make, Action::Block, json)?
        }
        Command::Allow(args) => {
            let NewRuleArgs {
                addresses,
                ttl,
                reason,
                json,
            } = args.rule;
            let make = |prefixes| Request::Allow {
                prefixes,
                ttl_secs: ttl.map(ttl_secs),
                reason,
            };
            change_rules(&daemon, &addresses, stdin, make, Action::Allow, json)?
        }
        Command::Unblock(RemoveArgs { addresses, json }) => {
            let make = |prefixes| Request::Unblock { prefixes };
            change_rules(&daemon, &addresses, stdin, make, Action::Block, json)?
        }
        Command::Unallow(RemoveArgs { addresses, json }) => {
            let make = |prefixes| Request::Unallow { prefixes };
            change_rules(&daemon, &addresses, stdin, make, Action::Allow, json)?
        }
        Command::List(args) => match daemon.ask(Request::List)? {
            Reply::Rules(list) if !args.json => output::rule_list(&list, now()),
            reply @ Reply::Rules(_) => json_line(&reply),
            other => return Err(unexpected("list", &other)),
        },
        Command::Stats(args) => match daemon.ask(Request::Stats {
            top: Some(args.top),
            sort: None,
            filter: None,
        })? {
            Reply::Stats(stats) if !args.json => output::stats(&stats, now()),
            reply @ Reply::Stats(_) => json_line(&reply),
            other => return Err(unexpected("stats", &other)),
        },
        Command::Status(args) => match daemon.ask(Request::Status)? {
            Reply::Status(status) if !args.json => output::status(&status, now()),
            reply @ Reply::Status(_) => json_line(&reply),
            other => return Err(unexpected("status", &other)),
        },
        // A daemon without [cluster] answers bad_input, which exits 2 like any other.
        Command::Cluster(ClusterArgs {
            command: ClusterCommand::Status(args),
        }) => match daemon.ask(Request::ClusterStatus)? {
            Reply::Cluster(status) if !args.json => cluster::status(&status),
            reply @ Reply::Cluster(_) => json_line(&reply),
            other => return Err(unexpected("cluster status", &other)),
        },
        Command::Recommend(args) => match daemon.ask(Request::Recommend {
            percentile: Some(args.percentile),
            margin: Some(args.margin),
        })? {
            Reply::Recommendation(advice) if !args.json => output::recommendation(&advice),
            reply @ Reply::Recommendation(_) => json_line(&reply),
            other => return Err(unexpected("recommend", &other)),
        },
        Command::CheckConfig(args) => check_config(args)?,
        Command::Top(args) => return top(args, daemon),
    };
    emit(stdout, &text)
}

/// The daemon at the other end of the socket.
struct Daemon {
    socket: PathBuf,
    timeout: Duration,
}

impl Daemon {
    /// One request on a new connection; the daemon's errors become failures by kind.
    fn ask(&self, request: Request) -> Result<Reply, Failure> {
        let response = Client::connect(&self.socket, self.timeout)
            .and_then(|mut client| client.request(request))
            .map_err(client_failure)?;
        match client::into_reply(response) {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(Failure::Operational(
                "the daemon answered without a result; the daemon and this client are probably \
                 different releases: use the `limiter` of the running daemon's release"
                    .into(),
            )),
            Err(error) => Err(match error.kind {
                ErrorKind::BadInput => Failure::BadInput(error.message),
                ErrorKind::Operational | ErrorKind::Forbidden | ErrorKind::UnsupportedVersion => {
                    Failure::Operational(error.message)
                }
            }),
        }
    }
}

fn client_failure(error: ClientError) -> Failure {
    match error {
        // Refused before sending: the input is too big, and nothing changed.
        ClientError::RequestTooLarge { .. } => Failure::BadInput(error.to_string()),
        _ => Failure::Operational(error.to_string()),
    }
}

fn unexpected(op: &str, reply: &Reply) -> Failure {
    let shape = match reply {
        Reply::Changed(_) => "a rule change",
        Reply::Rules(_) => "a rule list",
        Reply::Stats(_) => "statistics",
        Reply::Status(_) => "a status",
        Reply::Cluster(_) => "a cluster status",
        Reply::Recommendation(_) => "a recommendation",
    };
    Failure::Operational(format!(
        "the daemon answered `{op}` with {shape}; the daemon and this client are probably \
         different releases: use the `limiter` of the running daemon's release"
    ))
}

/// block, unblock, allow, unallow: every address is parsed before anything is sent.
fn change_rules(
    daemon: &Daemon,
    arguments: &[String],
    stdin: &mut dyn BufRead,
    make_request: impl FnOnce(Vec<IpNet>) -> Request,
    action: Action,
    json: bool,
) -> Result<String, Failure> {
    let prefixes =
        addresses::collect(arguments, stdin).map_err(|e| Failure::BadInput(e.to_string()))?;
    let reply = if prefixes.is_empty() {
        // Only an empty stdin gets here: an empty list is a valid list with nothing to do.
        Reply::Changed(RuleChange::default())
    } else {
        let request = make_request(prefixes);
        let op = op_name(&request);
        match daemon.ask(request)? {
            reply @ Reply::Changed(_) => reply,
            other => return Err(unexpected(op, &other)),
        }
    };
    match reply {
        Reply::Changed(change) if !json => {
            Ok(output::rule_change(&change, action, SystemTime::now()))
        }
        reply => Ok(json_line(&reply)),
    }
}

fn json_line(reply: &Reply) -> String {
    let mut line = output::json(reply);
    line.push('\n');
    line
}

/// What `limiter run`'s flags tell the daemon; the configuration file is read by the daemon.
pub fn run_options(args: RunArgs) -> RunOptions {
    RunOptions {
        config: args.config,
        overrides: Overrides {
            interfaces: args.ifaces,
            ports: args.ports,
            mode: args.mode,
            poll_interval: args.poll_interval,
            metrics_listen: args.metrics_listen,
        },
        pin_dir: args.pin_dir,
        tui: args.tui.then_some(daemon::TuiOptions {
            log_file: args.log_file,
        }),
    }
}

fn run_daemon(args: RunArgs) -> Result<(), Failure> {
    daemon::run(run_options(args)).map_err(|error| {
        let message = format!("{error:#}");
        // A configuration the daemon refused is bad input; anything else is operational.
        let bad_config = error.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<ConfigError>(),
                Some(ConfigError::Syntax { .. } | ConfigError::Invalid { .. })
            )
        });
        if bad_config {
            Failure::BadInput(message)
        } else {
            Failure::Operational(message)
        }
    })
}

fn detach(args: DetachArgs) -> Result<String, Failure> {
    let report =
        daemon::detach(&args.pin_dir).map_err(|e| Failure::Operational(format!("{e:#}")))?;
    Ok(output::detach(&report, &args.pin_dir))
}

/// `limiter top`: the thresholds come from the daemon's configuration file (the control API
/// does not report them); an explicit `--config` that cannot be used is an error, a missing
/// default file means the built-in defaults.
fn top(args: TopArgs, daemon: Daemon) -> Result<(), Failure> {
    crate::tui::logging::init(args.log_file.as_deref()).map_err(Failure::Operational)?;
    let thresholds =
        crate::tui::settings::load_thresholds(args.config.as_deref()).map_err(|e| match e {
            ConfigError::Read { .. } => Failure::Operational(e.to_string()),
            _ => Failure::BadInput(e.to_string()),
        })?;
    let options = crate::tui::TopOptions {
        refresh: crate::tui::settings::Refresh {
            interval: args.interval,
            timeout: crate::tui::settings::refresh_timeout(args.interval, daemon.timeout),
            max_sources: args.max_sources.0,
        },
        action_timeout: daemon.timeout,
        socket: daemon.socket,
        thresholds,
    };
    crate::tui::run_top(options).map_err(|e| Failure::Operational(e.to_string()))
}

/// Exit 2 for a file with problems, 1 for one that cannot be read.
fn check_config(args: CheckConfigArgs) -> Result<String, Failure> {
    let config = Config::load(&args.file).map_err(|error| match error {
        ConfigError::Read { path, source } => Failure::Operational(unreadable(&path, &source)),
        ConfigError::Syntax { .. } | ConfigError::Invalid { .. } => {
            Failure::BadInput(error.to_string())
        }
    })?;
    warn_about_host(&config, &args.file);
    Ok(format!(
        "ok: {}\n# The effective configuration, defaults included:\n{}",
        args.file.display(),
        config.to_toml_string()
    ))
}

/// The configuration's own message suggests `run`'s flags; this one fits `check-config`.
fn unreadable(path: &Path, source: &io::Error) -> String {
    let hint = match source.kind() {
        io::ErrorKind::NotFound => format!(
            "check the path; without a file at {}, `limiter run` uses the built-in defaults \
             (limiter.example.toml lists every key)",
            config::DEFAULT_PATH
        ),
        io::ErrorKind::PermissionDenied => "run as root, as the daemon does".to_string(),
        _ => "check that it is a readable file".to_string(),
    };
    format!(
        "cannot read the configuration file {}: {source}; {hint}",
        path.display()
    )
}

/// What is valid in the file but would still stop the daemon on this host. A warning, not a
/// failure: a file may be checked on another machine (CI) than the one it is deployed to.
fn warn_about_host(config: &Config, file: &Path) {
    if let Some(group) = &config.socket_group {
        if let Err(error) = access::resolve_group(group) {
            eprintln!(
                "warning: {}: {error} (the daemon will refuse to start on this host)",
                file.display()
            );
        }
    }
    if let Some(problem) = config.metrics_listen.and_then(metrics_address_problem) {
        eprintln!(
            "warning: {}: `metrics_listen`: {problem} (the daemon will refuse to start on this \
             host)",
            file.display()
        );
    }
}

/// Whether this host has the address `metrics_listen` names. Probed on port 0, so a running
/// daemon that holds the configured port does not make a correct file look wrong.
fn metrics_address_problem(listen: SocketAddr) -> Option<String> {
    match std::net::TcpListener::bind(SocketAddr::new(listen.ip(), 0)) {
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Some(format!(
            "{} is not an address of this host (`ip addr` lists them)",
            listen.ip()
        )),
        Err(e) => Some(format!("cannot listen on {}: {e}", listen.ip())),
    }
}

/// Writes the result. A reader that went away (`limiter list | head`) is not an error.
fn emit(stdout: &mut dyn Write, text: &str) -> Result<(), Failure> {
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::Operational(format!(
            "cannot write the output: {e}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Mode;

    fn invocation(args: &[&str], typed_client_flags: Vec<&'static str>) -> Invocation {
        Invocation {
            cli: Cli::try_parse_from(args).unwrap(),
            typed_client_flags,
        }
    }

    #[test]
    fn run_flags_become_overrides() {
        let cli = Cli::try_parse_from([
            "limiter",
            "run",
            "--iface",
            "bond0",
            "--config",
            "/etc/x.toml",
            "--mode",
            "monitor",
            "--port",
            "9292",
            "--port",
            "9393",
            "--poll-interval",
            "2s",
            "--metrics-listen",
            "127.0.0.1:9464",
            "--pin-dir",
            "/sys/fs/bpf/x",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        let options = run_options(args);
        assert_eq!(options.config, Some(PathBuf::from("/etc/x.toml")));
        assert_eq!(
            options.overrides,
            Overrides {
                interfaces: vec!["bond0".into()],
                ports: vec![9292, 9393],
                mode: Some(Mode::Monitor),
                poll_interval: Some(Duration::from_secs(2)),
                metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
            }
        );
        assert_eq!(options.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
    }

    #[test]
    fn check_config_warns_of_a_metrics_address_this_host_lacks() {
        assert_eq!(
            metrics_address_problem("127.0.0.1:9464".parse().unwrap()),
            None
        );
        // TEST-NET-2 is never a host's address.
        let problem = metrics_address_problem("198.51.100.77:9464".parse().unwrap()).unwrap();
        assert!(
            problem.contains("198.51.100.77 is not an address of this host"),
            "{problem}"
        );
    }

    #[test]
    fn client_flags_on_other_commands_are_bad_input() {
        let mut out = Vec::new();
        let result = execute(
            invocation(
                &["limiter", "check-config", "--timeout", "5s"],
                vec!["timeout"],
            ),
            &mut "".as_bytes(),
            &mut out,
        );
        let failure = result.unwrap_err();
        assert_eq!(failure.exit_code(), 2);
        assert!(
            failure
                .to_string()
                .starts_with("--timeout is for the commands"),
            "{failure}"
        );
    }

    #[test]
    fn bad_addresses_fail_before_any_connection() {
        // The socket does not exist: reaching it would be exit 1, not 2.
        let args = [
            "limiter",
            "--socket",
            "/nonexistent/limiter.sock",
            "block",
            "10.0.0.1/8",
        ];
        let failure = execute(
            invocation(&args, vec![]),
            &mut "".as_bytes(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(failure.exit_code(), 2, "{failure}");
    }

    #[test]
    fn daemon_error_kinds_decide_the_exit_code() {
        assert_eq!(Failure::BadInput(String::new()).exit_code(), 2);
        assert_eq!(Failure::Operational(String::new()).exit_code(), 1);
        let too_large = client_failure(ClientError::RequestTooLarge { bytes: 5 << 20 });
        assert_eq!(
            too_large.exit_code(),
            2,
            "refused before sending: nothing changed"
        );
    }

    #[test]
    fn a_closed_stdout_is_not_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert_eq!(emit(&mut Closed, "rules"), Ok(()));
    }
}
