//! The real daemon and CLI for end-to-end tests: `limiter run` started inside a test's server
//! namespace, and `limiter` client commands run against its control socket.
//!
//! Everything a [`Daemon`] creates is its own and is removed by its guard, also when the test
//! panics: the configuration, rule store, socket and logs live in a temporary directory, and
//! the pins in a bpffs directory unique to the process and the daemon. On drop the daemon gets
//! SIGTERM (SIGKILL if it lingers); since a stopped daemon leaves the program attached and
//! pinned by design, the guard then runs `limiter detach --pin-dir` and checks the pin
//! directory is gone.

use std::{
    fmt::Write as _,
    fs::{self, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use crate::netns::Netns;

/// How long the daemon gets to answer its first `status` (it loads and attaches the program
/// and runs its first poll before it answers: about a second here).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the daemon gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// How often waits re-ask the daemon.
const WAIT_STEP: Duration = Duration::from_millis(20);

static NEXT_PIN_DIR: AtomicU32 = AtomicU32::new(0);

/// The `limiter` binary of the build the tests belong to: next to the directory of the test
/// executable (target/<profile>/deps/.. → target/<profile>/limiter), or next to a binary of
/// this crate (target/<profile>/demo). Cargo does not build
/// another package's binaries for `cargo test -p limiter-tests`, hence the hint.
///
/// Checked once per process: it must not be older than the sources it is built from.
pub fn limiter_binary() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED.get_or_init(find_limiter_binary).clone()
}

fn find_limiter_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let exe_dir = exe.parent().expect("the executable sits in a directory");
    // Test executables sit in target/<profile>/deps, binaries (the demo) beside `limiter`.
    let profile_dir = if exe_dir.ends_with("deps") {
        exe_dir
            .parent()
            .expect("target/<profile>/deps has a parent")
    } else {
        exe_dir
    };
    let binary = profile_dir.join("limiter");
    let build_it = format!(
        "build it: cargo build -p limiter-user --bin limiter{}",
        if profile_dir.ends_with("release") {
            " --release"
        } else {
            ""
        }
    );
    let built = fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing; {build_it}", binary.display()));
    // A binary older than its sources would test yesterday's daemon and pass or fail for
    // the wrong reasons.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    for dir in ["limiter-user/src", "limiter-common/src", "limiter-ebpf/src"] {
        if let Some((newer, _)) = newest_rust_file(&workspace.join(dir)).filter(|(_, t)| *t > built)
        {
            panic!(
                "{} is older than {}; {build_it}",
                binary.display(),
                newer.display()
            );
        }
    }
    binary
}

/// The most recently modified `.rs` file under `dir`, with its time.
fn newest_rust_file(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_rust_file(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (path, t))
        } else {
            None
        };
        if let Some((path, time)) = candidate {
            if newest.as_ref().is_none_or(|(_, t)| time > *t) {
                newest = Some((path, time));
            }
        }
    }
    newest
}

/// What a test daemon is told: the configuration file it gets and its command line.
#[derive(Clone, Debug)]
pub struct DaemonSetup {
    netns: PathBuf,
    ifaces: Vec<String>,
    mode_in_file: Option<String>,
    mode_flag: Option<String>,
    allowlist: Vec<String>,
    /// `[policy]` keys with their values as TOML text.
    policy: Vec<(String, String)>,
    /// `metrics_listen = "..."` in the configuration file.
    metrics_listen: Option<String>,
    /// `ports = [...]` in the configuration file (the default, 9292, if unset).
    ports: Option<Vec<u16>>,
    /// `trusted_proxies = [...]`, written only when not empty.
    trusted_proxies: Vec<String>,
    /// `client_address_header = "..."`, if set.
    client_address_header: Option<String>,
    /// `glance_path_prefixes = [...]`, written only when not empty.
    glance_path_prefixes: Vec<String>,
    /// `[cluster]` keys with their values as TOML text, written only when not empty.
    cluster: Vec<(String, String)>,
    /// `state_dir`: the daemon's temporary directory's `state` unless set.
    state_dir: Option<PathBuf>,
    /// `poll_interval`, as TOML text: a second unless set.
    poll_interval: String,
}

impl DaemonSetup {
    /// A daemon in `ns` attached to `ifaces` (names inside `ns`; never the host's), with the
    /// default policy and a poll every second.
    pub fn new(ns: &Netns, ifaces: &[&str]) -> Self {
        assert!(!ifaces.is_empty(), "name the interfaces explicitly");
        DaemonSetup {
            netns: ns.path(),
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            mode_in_file: None,
            mode_flag: None,
            allowlist: Vec::new(),
            poll_interval: "1s".to_owned(),
            policy: Vec::new(),
            metrics_listen: None,
            ports: None,
            trusted_proxies: Vec::new(),
            client_address_header: None,
            glance_path_prefixes: Vec::new(),
            cluster: Vec::new(),
            state_dir: None,
        }
    }

    /// `state_dir = "..."`: a directory the caller owns (a small tmpfs, say), instead of one
    /// in the daemon's temporary directory.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Shares rules and counts through etcd at `endpoints`, as node `node_name`, with the
    /// `role` given (`"glance"` or `"edge"`).
    pub fn cluster(mut self, endpoints: &[String], node_name: &str, role: &str) -> Self {
        let quoted: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        self.cluster = vec![
            ("etcd_endpoints".into(), format!("[{}]", quoted.join(", "))),
            ("node_name".into(), format!("{node_name:?}")),
            ("role".into(), format!("{role:?}")),
        ];
        self
    }

    /// One more `[cluster]` key (after [`DaemonSetup::cluster`]), its value as TOML text.
    pub fn cluster_key(mut self, key: &str, value: &str) -> Self {
        self.cluster.push((key.into(), value.into()));
        self
    }

    /// One more interface to attach to (a name inside the daemon's namespace; `"lo"` too,
    /// where the daemon falls back to generic XDP).
    pub fn iface(mut self, iface: &str) -> Self {
        self.ifaces.push(iface.to_owned());
        self
    }

    /// `ports = [...]`: the protected ports (9292 if never called).
    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports = Some(ports.to_vec());
        self
    }

    /// Adds an entry to `trusted_proxies` (`"198.51.100.2"`, `"2001:db8::/64"`).
    pub fn trusted_proxy(mut self, prefix: &str) -> Self {
        self.trusted_proxies.push(prefix.to_owned());
        self
    }

    /// `client_address_header = "..."` (`"X-Forwarded-For"` or `"Forwarded"`).
    pub fn client_address_header(mut self, header: &str) -> Self {
        self.client_address_header = Some(header.to_owned());
        self
    }

    /// Adds an entry to `glance_path_prefixes` (`"/image"`).
    pub fn glance_path_prefix(mut self, prefix: &str) -> Self {
        self.glance_path_prefixes.push(prefix.to_owned());
        self
    }

    /// `metrics_listen = "ADDR"` in the configuration file (an address inside the daemon's
    /// namespace: its own loopback is free to use).
    pub fn metrics_listen(mut self, addr: &str) -> Self {
        self.metrics_listen = Some(addr.to_owned());
        self
    }

    /// `mode = "..."` in the configuration file.
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode_in_file = Some(mode.to_owned());
        self
    }

    /// `--mode ...` on the command line (which wins over the file).
    pub fn mode_flag(mut self, mode: &str) -> Self {
        self.mode_flag = Some(mode.to_owned());
        self
    }

    /// Adds an entry to `allowlist`.
    /// Polls every `interval` (`"30s"`) instead of every second.
    pub fn poll_interval(mut self, interval: &str) -> Self {
        self.poll_interval = interval.to_owned();
        self
    }

    pub fn allow(mut self, prefix: &str) -> Self {
        self.allowlist.push(prefix.to_owned());
        self
    }

    /// Sets a `[policy]` key. Numbers and booleans are written as they are, anything else as
    /// a string: `policy("ban_ttl", "10s")`, `policy("new_connections_per_second", "5")`,
    /// `policy("image_creates_per_hour", "off")`, `policy("aggregate", "false")`.
    pub fn policy(mut self, key: &str, value: &str) -> Self {
        let is_bare = value == "true" || value == "false" || value.parse::<f64>().is_ok();
        let toml = if is_bare {
            value.to_owned()
        } else {
            format!("{value:?}")
        };
        self.policy.push((key.to_owned(), toml));
        self
    }

    fn config_text(&self, dir: &Path) -> String {
        let mut text = String::new();
        // Rust quotes these plain values (paths, addresses, words) as TOML does.
        let quoted = |s: &str| format!("{s:?}");
        writeln!(
            text,
            "state_dir = {}",
            quoted(&self.state_dir_in(dir).display().to_string())
        )
        .unwrap();
        writeln!(
            text,
            "socket = {}",
            quoted(&dir.join("limiter.sock").display().to_string())
        )
        .unwrap();
        // The default, written out: the detection tests' "two poll intervals" mean 2 s.
        writeln!(text, "poll_interval = {}", quoted(&self.poll_interval)).unwrap();
        if let Some(mode) = &self.mode_in_file {
            writeln!(text, "mode = {}", quoted(mode)).unwrap();
        }
        if let Some(addr) = &self.metrics_listen {
            writeln!(text, "metrics_listen = {}", quoted(addr)).unwrap();
        }
        let allowlist: Vec<String> = self.allowlist.iter().map(|a| quoted(a)).collect();
        writeln!(text, "allowlist = [{}]", allowlist.join(", ")).unwrap();
        if let Some(ports) = &self.ports {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            writeln!(text, "ports = [{}]", ports.join(", ")).unwrap();
        }
        let list = |items: &[String]| items.iter().map(|a| quoted(a)).collect::<Vec<_>>();
        if !self.trusted_proxies.is_empty() {
            let proxies = list(&self.trusted_proxies).join(", ");
            writeln!(text, "trusted_proxies = [{proxies}]").unwrap();
        }
        if let Some(header) = &self.client_address_header {
            writeln!(text, "client_address_header = {}", quoted(header)).unwrap();
        }
        if !self.glance_path_prefixes.is_empty() {
            let prefixes = list(&self.glance_path_prefixes).join(", ");
            writeln!(text, "glance_path_prefixes = [{prefixes}]").unwrap();
        }
        writeln!(text, "\n[policy]").unwrap();
        for (key, value) in &self.policy {
            writeln!(text, "{key} = {value}").unwrap();
        }
        if !self.cluster.is_empty() {
            writeln!(text, "\n[cluster]").unwrap();
            for (key, value) in &self.cluster {
                writeln!(text, "{key} = {value}").unwrap();
            }
        }
        text
    }

    fn state_dir_in(&self, dir: &Path) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| dir.join("state"))
    }

    /// Starts the daemon and waits until it answers on its socket.
    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-e2e-")
            .tempdir()
            .expect("a temporary directory for the daemon");
        let config = dir.path().join("limiter.toml");
        fs::write(&config, self.config_text(dir.path())).expect("write the configuration");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/glance-limiter-e2e-{}-{}",
            std::process::id(),
            NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let state_dir = self.state_dir_in(dir.path());
        let mut daemon = Daemon {
            binary: limiter_binary(),
            setup: self,
            config,
            socket: dir.path().join("limiter.sock"),
            state_dir,
            pin_dir,
            child: None,
            starts: 0,
            dir,
        };
        daemon.spawn();
        daemon
    }

    /// For a test that runs the daemon itself (`limiter run --tui` inside a terminal): writes
    /// the configuration into `dir`, with the state and the socket there as for
    /// [`DaemonSetup::start`], and returns the command line that [`Daemon`] would run. The
    /// caller owns the process and the pins in `pin_dir`, and must detach them.
    pub fn run_command(&self, dir: &Path, pin_dir: &Path) -> RunCommand {
        let config = dir.join("limiter.toml");
        fs::write(&config, self.config_text(dir)).expect("write the configuration");
        let mut argv: Vec<String> = vec![
            "nsenter".into(),
            format!("--net={}", self.netns.display()),
            limiter_binary().display().to_string(),
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--pin-dir".into(),
            pin_dir.display().to_string(),
        ];
        for iface in &self.ifaces {
            argv.extend(["--iface".into(), iface.clone()]);
        }
        if let Some(mode) = &self.mode_flag {
            argv.extend(["--mode".into(), mode.clone()]);
        }
        RunCommand {
            argv,
            socket: dir.join("limiter.sock"),
            config,
        }
    }
}

/// `limiter run` for a test that starts it itself: see [`DaemonSetup::run_command`].
#[derive(Clone, Debug)]
pub struct RunCommand {
    /// `nsenter --net=... limiter run --config ... --pin-dir ... --iface ...`; add flags.
    pub argv: Vec<String>,
    pub socket: PathBuf,
    pub config: PathBuf,
}

/// A running `limiter run` (or one just killed, between [`Daemon::kill_9`] and
/// [`Daemon::restart`]), with its configuration, state, socket, logs and pins.
pub struct Daemon {
    binary: PathBuf,
    setup: DaemonSetup,
    config: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    pin_dir: PathBuf,
    child: Option<Child>,
    /// How many times the daemon was started: each start logs to its own file.
    starts: u32,
    /// Last, so that it is removed after the daemon has stopped.
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Runs `limiter run` in the server namespace with `nsenter --net` (unlike `ip netns
    /// exec`, it leaves the mount namespace alone, so the host's bpffs stays where the pins
    /// go), logs to `daemon-<n>.log`, and waits until the socket answers. The daemon answers
    /// only after its first poll, which records the counters' baseline: traffic sent from
    /// then on is counted.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create the daemon's log");
        let child = self
            .run_command()
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start nsenter limiter run");
        self.child = Some(child);

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.cli(&["status", "--json"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("the daemon exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            thread::sleep(WAIT_STEP);
        }
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("daemon-{start}.log"))
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The rule store's file.
    pub fn rules_file(&self) -> PathBuf {
        self.state_dir.join("rules.json")
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn config_file(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon wrote to stdout and stderr, over all its starts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Waits until a log line contains every one of `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str], deadline: Duration) -> Option<String> {
        let until = Instant::now() + deadline;
        loop {
            let found = self
                .log()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_owned);
            if found.is_some() || Instant::now() >= until {
                return found;
            }
            thread::sleep(WAIT_STEP);
        }
    }

    /// `limiter --socket <this daemon's> ARGS`, from the host namespace (the socket is a
    /// file path).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, b"")
    }

    /// As [`Daemon::cli`], with `stdin` piped in (for `-` address lists).
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("LIMITER_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run limiter");
        // A writer thread, so that a CLI that answers before reading all of stdin (an error
        // on the command line) cannot deadlock the test on a full pipe.
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = stdin.to_vec();
        let writer = thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let output = child.wait_with_output().expect("wait for limiter");
        writer.join().ok();
        output
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "limiter {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.cli_ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("limiter {args:?}: {e}: {text}"))
    }

    /// `limiter list --json`, exactly as printed.
    pub fn list_raw(&self) -> String {
        self.cli_ok(&["list", "--json"])
    }

    /// `limiter list --json`: `{"rules": [...]}`.
    pub fn list_json(&self) -> Value {
        self.json(&["list", "--json"])
    }

    /// Every rule, as `limiter list --json` shows them.
    pub fn rules(&self) -> Vec<Value> {
        self.list_json()["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The block rule of exactly `prefix` (`198.51.100.2/32`), if there is one.
    pub fn block_rule(&self, prefix: &str) -> Option<Value> {
        self.rules()
            .into_iter()
            .find(|r| r["prefix"] == prefix && r["action"] == "block")
    }

    /// Waits until a block rule of exactly `prefix` exists; returns it, or `None` at the
    /// deadline.
    pub fn wait_for_rule(&self, prefix: &str, deadline: Duration) -> Option<Value> {
        let until = Instant::now() + deadline;
        loop {
            let rule = self.block_rule(prefix);
            if rule.is_some() || Instant::now() >= until {
                return rule;
            }
            thread::sleep(WAIT_STEP);
        }
    }

    /// Waits until no block rule of exactly `prefix` exists; returns whether that happened
    /// before the deadline.
    pub fn wait_for_no_rule(&self, prefix: &str, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            if self.block_rule(prefix).is_none() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            thread::sleep(WAIT_STEP);
        }
    }

    /// `limiter status --json`.
    pub fn status_json(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// A kernel counter by name (`drop_blocked`), from `limiter status --json`.
    pub fn counter(&self, name: &str) -> u64 {
        let status = self.status_json();
        status["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {status}"))
    }

    /// `limiter stats --json` (every tracked source).
    pub fn stats_json(&self) -> Value {
        self.json(&["stats", "--json", "--top", "1000"])
    }

    /// The `stats` entry of one source address, if the daemon tracks it.
    pub fn source_stats(&self, address: &str) -> Option<Value> {
        self.stats_json()["sources"]
            .as_array()?
            .iter()
            .find(|s| s["address"] == address)
            .cloned()
    }

    /// Waits until `stats` shows `address` and `accept` holds for its entry.
    pub fn wait_for_source(
        &self,
        address: &str,
        deadline: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let until = Instant::now() + deadline;
        loop {
            let found = self.source_stats(address).filter(|s| accept(s));
            if found.is_some() || Instant::now() >= until {
                return found;
            }
            thread::sleep(WAIT_STEP);
        }
    }

    /// SIGKILL, as a crash would: no clean-up of any kind runs in the daemon.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        child.kill().expect("SIGKILL the daemon");
        child.wait().expect("reap the daemon");
    }

    /// Starts the daemon again, expecting it to refuse to start: waits (up to the start
    /// deadline) for it to exit, and returns whether it failed and what that start logged.
    /// Panics if it answers its socket instead.
    pub fn restart_expecting_failure(&mut self) -> (std::process::ExitStatus, String) {
        if self.child.is_some() {
            self.stop();
        }
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create the daemon's log");
        let mut child = self
            .run_command()
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start nsenter limiter run");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the daemon") {
                return (status, fs::read_to_string(&log_path).unwrap_or_default());
            }
            if Instant::now() >= deadline || self.cli(&["status", "--json"]).status.success() {
                self.child = Some(child);
                panic!(
                    "the daemon was expected to refuse to start but runs:\n{}",
                    self.log()
                );
            }
            thread::sleep(WAIT_STEP);
        }
    }

    /// `nsenter --net=... limiter run ...` for this daemon, output not yet directed.
    fn run_command(&self) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.setup.netns.display()))
            .arg(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        for iface in &self.setup.ifaces {
            command.args(["--iface", iface]);
        }
        if let Some(mode) = &self.setup.mode_flag {
            command.args(["--mode", mode]);
        }
        command
            .env("LIMITER_LOG", "info")
            // The daemon colours its log even into a file; plain text is easier to search.
            .env("NO_COLOR", "1")
            .env_remove("LIMITER_SOCKET")
            .stdin(Stdio::null());
        command
    }

    /// Starts the daemon again with the same configuration, state, socket and pins.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// SIGTERM and wait (SIGKILL after [`STOP_DEADLINE`]). The program stays attached.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(WAIT_STEP);
        }
        eprintln!("warning: the daemon ignored SIGTERM for {STOP_DEADLINE:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `limiter detach --pin-dir <this daemon's>`: the program leaves the interfaces.
    pub fn detach(&self) -> Output {
        run_detach(&self.binary, &self.pin_dir)
    }
}

fn run_detach(binary: &Path, pin_dir: &Path) -> Output {
    Command::new(binary)
        .arg("detach")
        .arg("--pin-dir")
        .arg(pin_dir)
        .env_remove("LIMITER_LOG")
        .output()
        .expect("run limiter detach")
}

/// For guards of daemons the test kit did not start itself: `limiter detach` on `pin_dir`,
/// then a check that the pins are gone. A failure panics, or only warns while the test is
/// already panicking (a second panic would abort the whole test binary).
pub fn detach_and_check(binary: &Path, pin_dir: &Path) {
    let detach = run_detach(binary, pin_dir);
    let problem = if !detach.status.success() {
        Some(format!(
            "limiter detach --pin-dir {} failed: {}",
            pin_dir.display(),
            String::from_utf8_lossy(&detach.stderr)
        ))
    } else if pin_dir.exists() {
        Some(format!("{} is still there after detach", pin_dir.display()))
    } else {
        None
    };
    match problem {
        Some(problem) if thread::panicking() => eprintln!("warning: {problem}"),
        Some(problem) => panic!("{problem}"),
        None => {}
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- daemon log (last lines) ---\n{}", tail.join("\n"));
        }
        detach_and_check(&self.binary, &self.pin_dir);
    }
}

/// The host prefix of an address, as rules name it: `198.51.100.2/32`, `2001:db8::2/128`.
pub fn host_prefix(addr: &str) -> String {
    if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    }
}

/// A time as the daemon prints it (RFC 3339, UTC, maybe with a fraction of a second).
pub fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
}

/// A rule's lifetime as stored: `expires_at - created_at`; `None` for a rule without expiry.
pub fn rule_ttl(rule: &Value) -> Option<Duration> {
    let created = parse_time(rule["created_at"].as_str().expect("created_at"));
    let expires = parse_time(rule["expires_at"].as_str()?);
    Some(
        expires
            .duration_since(created)
            .expect("a rule expires after it was created"),
    )
}
