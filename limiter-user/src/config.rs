//! The daemon's configuration file (TOML): what it may hold, its defaults, and its checks.
//!
//! Every key is optional, and the defaults alone protect Glance on port 9292: a node without a
//! file is protected. Unknown keys are errors, because a misspelt key that is silently ignored
//! leaves a setting at its default while the operator believes it changed. Each problem is
//! reported with its key, its line when the file has one, and what to write instead; all of
//! them at once, so a file is fixed in one pass. docs/CONFIG.md explains every key.

use std::{
    collections::BTreeMap,
    fmt, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    cluster::ClusterSettings,
    duration_text, net_list,
    policy_config::{Metric, PolicyConfig, AGGREGATE_IPV4_PREFIXES, AGGREGATE_IPV6_PREFIXES},
    proxy::{self, ClientHeader, TrustedProxies},
};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/glance-limiter/limiter.toml";

/// Bounds of `poll_interval`: below 100 ms the map dump costs more than it tells; above a
/// minute a flood runs unchecked for too long.
pub const POLL_INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const POLL_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Bounds of `source_capacity`: below 1,024 rows ordinary clients evict each other; above a
/// million, the kernel table (~150 MB) and the rate tracker (~0.5-1 GB) outgrow a Glance node.
pub const SOURCE_CAPACITY_MIN: u32 = 1_024;
pub const SOURCE_CAPACITY_MAX: u32 = 1_000_000;
/// The kernel's IFNAMSIZ, less the terminating NUL.
const INTERFACE_NAME_MAX: usize = 15;

/// What the daemon does with its decisions.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Install the bans.
    #[default]
    Enforce,
    /// Log the bans it would install, and install none: for tuning thresholds.
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "monitor" => Ok(Mode::Monitor),
            other => Err(format!(
                "unknown mode `{other}`: use \"enforce\" (install bans) or \"monitor\" (only log \
                 them)"
            )),
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Interfaces to attach to; empty means the interface of the default route, which the
    /// caller resolves.
    pub interfaces: Vec<String>,
    /// TCP ports whose traffic is counted and whose sources can be banned.
    #[serde(deserialize_with = "port_list::deserialize")]
    pub ports: Vec<u16>,
    pub mode: Mode,
    /// How often the kernel counters are read and decisions taken.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    /// Rows of the kernel's per-source table.
    pub source_capacity: u32,
    /// Where the rule store and other state live.
    pub state_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// A group, besides root, allowed to use the control socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Addresses and prefixes never banned and exempt from every block.
    #[serde(with = "allowlist_text")]
    pub allowlist: Vec<IpNet>,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: no listener.
    #[serde(skip_serializing_if = "Option::is_none", with = "listen_text", default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Proxies (HAProxy) whose client-address header names the client: never banned, and
    /// their requests are counted for the client they name.
    pub trusted_proxies: TrustedProxies,
    /// The header the trusted proxies write the client's address into.
    pub client_address_header: ClientHeader,
    /// URL path prefixes Glance is served under besides the root (`/image`).
    pub glance_path_prefixes: Vec<String>,
    pub policy: PolicyConfig,
    /// `[cluster]`: rules and counts shared with the other nodes through etcd; `None`: this
    /// node decides alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: Vec::new(),
            ports: vec![9292],
            mode: Mode::Enforce,
            poll_interval: Duration::from_secs(1),
            source_capacity: limiter_common::DEFAULT_SOURCE_CAPACITY,
            state_dir: PathBuf::from("/var/lib/glance-limiter"),
            socket: PathBuf::from("/run/glance-limiter/limiter.sock"),
            socket_group: None,
            allowlist: Vec::new(),
            metrics_listen: None,
            trusted_proxies: TrustedProxies::default(),
            client_address_header: ClientHeader::default(),
            glance_path_prefixes: Vec::new(),
            policy: PolicyConfig::default(),
            cluster: None,
        }
    }
}

/// Values given on the command line, which win over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--iface` (repeatable); replaces `interfaces` when not empty.
    pub interfaces: Vec<String>,
    /// `--port` (repeatable); replaces `ports` when not empty.
    pub ports: Vec<u16>,
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--poll-interval`.
    pub poll_interval: Option<Duration>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
}

impl Overrides {
    /// The command-line flag that overrode a top-level key, if any.
    fn flag_for(&self, top_level_key: &str) -> Option<&'static str> {
        match top_level_key {
            "interfaces" if !self.interfaces.is_empty() => Some("--iface"),
            "ports" if !self.ports.is_empty() => Some("--port"),
            "mode" if self.mode.is_some() => Some("--mode"),
            "poll_interval" if self.poll_interval.is_some() => Some("--poll-interval"),
            "metrics_listen" if self.metrics_listen.is_some() => Some("--metrics-listen"),
            _ => None,
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `ports`, `policy.ban_ttl`, `allowlist[2]`, or a command-line flag.
    pub key: String,
    /// The line in the file, when the key is written there.
    pub line: Option<usize>,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}, `{}`: {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}{}", path.display(), read_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not TOML, a value of the wrong type, or an unknown key; toml's message gives the line.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error(
        "{origin}: invalid configuration (docs/CONFIG.md explains every key):{}",
        list(problems)
    )]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn read_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::NotFound => {
            "; create it (limiter.example.toml lists every key) or leave out --config to run \
             on the defaults"
        }
        io::ErrorKind::PermissionDenied => "; the daemon runs as root, so run the command as root",
        _ => "",
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

impl Config {
    /// Reads and checks the file at `path`, which must exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, &path.display().to_string())
    }

    /// Like [`Config::load`], but a missing file means the defaults: for the default path,
    /// which a node protected by the defaults alone does not have.
    pub fn load_or_default(path: &Path) -> Result<Config, ConfigError> {
        match Config::load(path) {
            Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            other => other,
        }
    }

    /// Parses and checks configuration text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, "configuration")
    }

    /// The configuration as TOML: every key, with its effective value.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("every field of Config has a TOML form")
    }

    /// Checks a configuration built in code; files are checked when parsed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: "configuration".into(),
                problems,
            })
        }
    }

    /// This configuration with the command line's values on top, checked again.
    pub fn with_overrides(mut self, overrides: &Overrides) -> Result<Config, ConfigError> {
        if !overrides.interfaces.is_empty() {
            self.interfaces = overrides.interfaces.clone();
        }
        if !overrides.ports.is_empty() {
            self.ports = overrides.ports.clone();
        }
        if let Some(mode) = overrides.mode {
            self.mode = mode;
        }
        if let Some(poll_interval) = overrides.poll_interval {
            self.poll_interval = poll_interval;
        }
        if let Some(listen) = overrides.metrics_listen {
            self.metrics_listen = Some(listen);
        }
        let problems: Vec<Problem> = self
            .problems()
            .into_iter()
            .map(|mut problem| {
                let top_level = problem.key.split(['.', '[']).next().unwrap_or_default();
                if let Some(flag) = overrides.flag_for(top_level) {
                    problem.key = flag.to_string();
                }
                problem
            })
            .collect();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Invalid {
                origin: "configuration with command-line overrides".into(),
                problems,
            })
        }
    }

    /// How many sources the daemon's rate tracker should keep: every row the kernel table can
    /// list, and as many again of sources that left it recently, up to a million.
    pub fn rate_tracker_capacity(&self) -> usize {
        let rows = self.source_capacity as usize;
        (2 * rows).min(rows.max(SOURCE_CAPACITY_MAX as usize))
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        check_interfaces(&self.interfaces, &mut problems);
        check_ports(&self.ports, &mut problems);
        check_general(self, &mut problems);
        check_allowlist(&self.allowlist, &mut problems);
        problems.extend(
            proxy::problems(&self.trusted_proxies, &self.glance_path_prefixes)
                .into_iter()
                .map(|p| Problem::new(p.key, p.message)),
        );
        check_policy(&self.policy, &mut problems);
        if let Some(cluster) = &self.cluster {
            problems.extend(
                cluster
                    .problems()
                    .into_iter()
                    .map(|(key, message)| Problem::new(format!("cluster.{key}"), message)),
            );
        }
        problems
    }
}

fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        origin: origin.to_string(),
        message: syntax_message(&error),
    })?;
    let mut problems = config.problems();
    if problems.is_empty() {
        return Ok(config);
    }
    let lines = KeyLines::of(text);
    for problem in &mut problems {
        problem.line = lines.line_of(&problem.key);
    }
    Err(ConfigError::Invalid {
        origin: origin.to_string(),
        problems,
    })
}

fn syntax_message(error: &toml::de::Error) -> String {
    let text = error.to_string();
    let text = text.trim_end();
    if error.message().starts_with("unknown field") {
        format!(
            "{text}\nCheck the key's spelling and the table it is in ([policy] keys go under \
             [policy]); docs/CONFIG.md lists every key."
        )
    } else {
        text.to_string()
    }
}

fn check_interfaces(interfaces: &[String], problems: &mut Vec<Problem>) {
    for (i, name) in interfaces.iter().enumerate() {
        let key = format!("interfaces[{i}]");
        let bad_char = name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if name.is_empty() || name == "." || name == ".." || bad_char {
            problems.push(Problem::new(
                key,
                format!(
                    "`{name}` is not an interface name; give names as `ip link` lists them \
                     (for example \"eth0\"), or an empty list for the default route's interface"
                ),
            ));
        } else if name.len() > INTERFACE_NAME_MAX {
            problems.push(Problem::new(
                key,
                format!(
                    "`{name}` is longer than the kernel's {INTERFACE_NAME_MAX}-character limit \
                     for interface names; check it against `ip link`"
                ),
            ));
        } else if interfaces[..i].contains(name) {
            problems.push(Problem::new(
                key,
                format!("`{name}` is listed twice; remove one"),
            ));
        }
    }
}

fn check_ports(ports: &[u16], problems: &mut Vec<Problem>) {
    if ports.is_empty() {
        problems.push(Problem::new(
            "ports",
            "no port to protect; list Glance's port, [9292], or leave the key out for that default",
        ));
    }
    for (i, port) in ports.iter().enumerate() {
        let key = format!("ports[{i}]");
        if *port == 0 {
            problems.push(Problem::new(
                key,
                "0 is not a TCP port; give ports 1-65535 (Glance listens on 9292)",
            ));
        } else if ports[..i].contains(port) {
            problems.push(Problem::new(
                key,
                format!("port {port} is listed twice; remove one"),
            ));
        }
    }
}

fn check_general(config: &Config, problems: &mut Vec<Problem>) {
    if !(POLL_INTERVAL_MIN..=POLL_INTERVAL_MAX).contains(&config.poll_interval) {
        problems.push(Problem::new(
            "poll_interval",
            format!(
                "{} is outside 100ms-60s; \"1s\" reacts to a flood within about a second at a \
                 negligible cost",
                humantime::format_duration(config.poll_interval)
            ),
        ));
    }
    if !(SOURCE_CAPACITY_MIN..=SOURCE_CAPACITY_MAX).contains(&config.source_capacity) {
        problems.push(Problem::new(
            "source_capacity",
            format!(
                "{} is outside {SOURCE_CAPACITY_MIN}-{SOURCE_CAPACITY_MAX}; the default, \
                 65536, holds far more clients than a Glance node has",
                config.source_capacity
            ),
        ));
    }
    for (key, path) in [("state_dir", &config.state_dir), ("socket", &config.socket)] {
        if !path.is_absolute() {
            problems.push(Problem::new(
                key,
                format!(
                    "`{}` is relative, so it would depend on the daemon's working directory; \
                     give an absolute path",
                    path.display()
                ),
            ));
        }
    }
    if config.socket.file_name().is_none() {
        problems.push(Problem::new(
            "socket",
            format!(
                "`{}` names a directory, not a socket file; for example \
                 \"/run/glance-limiter/limiter.sock\"",
                config.socket.display()
            ),
        ));
    }
    if let Some(listen) = config.metrics_listen {
        if listen.port() == 0 {
            problems.push(Problem::new(
                "metrics_listen",
                format!(
                    "port 0 would take a random port that no scraper knows; give a fixed one, \
                     for example \"{}\"",
                    SocketAddr::new(listen.ip(), 9464)
                ),
            ));
        }
    }
    if let Some(group) = &config.socket_group {
        if group.is_empty() || group.contains(|c: char| c == ':' || c.is_whitespace()) {
            problems.push(Problem::new(
                "socket_group",
                format!(
                    "`{group}` is not a group name; give a group from /etc/group, or leave the \
                     key out so that only root can use the socket"
                ),
            ));
        }
    }
}

fn check_allowlist(allowlist: &[IpNet], problems: &mut Vec<Problem>) {
    for (i, entry) in allowlist.iter().enumerate() {
        if let Some(message) = net_list::entry_problem(entry) {
            problems.push(Problem::new(format!("allowlist[{i}]"), message));
        }
    }
}

fn check_policy(policy: &PolicyConfig, problems: &mut Vec<Problem>) {
    for metric in Metric::THRESHOLDED {
        if policy.threshold(metric) == Some(0) {
            problems.push(Problem::new(
                format!("policy.{}", metric.key()),
                "0 would ban every source on its first request; give a positive number, or \
                 \"off\" to disable this check",
            ));
        }
        match (policy.prefix.threshold(metric), policy.threshold(metric)) {
            (Some(0), _) => problems.push(Problem::new(
                format!("policy.prefix.{}", metric.key()),
                "0 would ban every prefix on its first request; give a positive number, or \
                 \"off\" to disable this check",
            )),
            (Some(prefix), Some(host)) if prefix < host => problems.push(Problem::new(
                format!("policy.prefix.{}", metric.key()),
                format!(
                    "{prefix} is below the host limit ({host}): one host alone would get its \
                     whole prefix banned before its own ban; give at least {host} (twice is \
                     the default), or \"off\""
                ),
            )),
            _ => {}
        }
    }
    let ttl = |d: Duration| humantime::format_duration(d).to_string();
    if policy.ban_ttl < Duration::from_secs(1) {
        problems.push(Problem::new(
            "policy.ban_ttl",
            format!(
                "{} is too short to stop anything; give at least \"1s\" (the default is \
                 \"10m\")",
                ttl(policy.ban_ttl)
            ),
        ));
    }
    if policy.ban_ttl > policy.ban_ttl_max {
        problems.push(Problem::new(
            "policy.ban_ttl_max",
            format!(
                "{} is shorter than policy.ban_ttl ({}), so even a first ban would exceed it; \
                 raise ban_ttl_max or lower ban_ttl",
                ttl(policy.ban_ttl_max),
                ttl(policy.ban_ttl)
            ),
        ));
    }
    if !(1.0..=10.0).contains(&policy.ban_ttl_factor) {
        problems.push(Problem::new(
            "policy.ban_ttl_factor",
            format!(
                "{} is outside 1-10; 1 keeps every ban at ban_ttl, 2 doubles it per repeat \
                 offence",
                policy.ban_ttl_factor
            ),
        ));
    }
    if policy.offence_memory < policy.ban_ttl {
        problems.push(Problem::new(
            "policy.offence_memory",
            format!(
                "{} is shorter than policy.ban_ttl ({}), so an offence is forgotten before its \
                 ban ends and repeat offences never grow; make it at least ban_ttl_max (the \
                 default is \"24h\")",
                ttl(policy.offence_memory),
                ttl(policy.ban_ttl)
            ),
        ));
    }
    if policy.aggregate_min_sources < 2 {
        problems.push(Problem::new(
            "policy.aggregate_min_sources",
            format!(
                "{} would ban a whole prefix for a single source; give at least 2 (the default \
                 is 3), or set aggregate = false",
                policy.aggregate_min_sources
            ),
        ));
    }
    for (key, len, range, hint) in [
        (
            "policy.aggregate_ipv4_prefix",
            policy.aggregate_ipv4_prefix,
            AGGREGATE_IPV4_PREFIXES,
            "/24 is the usual size of one site's network",
        ),
        (
            "policy.aggregate_ipv6_prefix",
            policy.aggregate_ipv6_prefix,
            AGGREGATE_IPV6_PREFIXES,
            "/64 is what one IPv6 LAN or host is given",
        ),
    ] {
        if !range.contains(&len) {
            problems.push(Problem::new(
                key,
                format!(
                    "/{len} is outside /{}-/{}; {hint}",
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
}

/// Lines of the keys written in a file, to point problems found after parsing at them.
#[derive(Default)]
struct KeyLines {
    /// `ports`, `policy.ban_ttl`, `allowlist[2]`, ... → 1-based line.
    lines: BTreeMap<String, usize>,
}

impl KeyLines {
    fn of(text: &str) -> Self {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Spans {
            policy: BTreeMap<String, toml::Spanned<toml::Value>>,
            interfaces: Vec<toml::Spanned<toml::Value>>,
            ports: Vec<toml::Spanned<toml::Value>>,
            allowlist: Vec<toml::Spanned<toml::Value>>,
            trusted_proxies: Vec<toml::Spanned<toml::Value>>,
            glance_path_prefixes: Vec<toml::Spanned<toml::Value>>,
        }
        let line_at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut lines = BTreeMap::new();
        if let Ok(top) = toml::from_str::<BTreeMap<String, toml::Spanned<toml::Value>>>(text) {
            for (key, value) in top {
                lines.insert(key, line_at(value.span().start));
            }
        }
        if let Ok(spans) = toml::from_str::<Spans>(text) {
            for (key, value) in spans.policy {
                lines.insert(format!("policy.{key}"), line_at(value.span().start));
            }
            for (list, values) in [
                ("interfaces", spans.interfaces),
                ("ports", spans.ports),
                ("allowlist", spans.allowlist),
                ("trusted_proxies", spans.trusted_proxies),
                ("glance_path_prefixes", spans.glance_path_prefixes),
            ] {
                for (i, value) in values.iter().enumerate() {
                    lines.insert(format!("{list}[{i}]"), line_at(value.span().start));
                }
            }
        }
        KeyLines { lines }
    }

    fn line_of(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }
}

/// `metrics_listen` as "127.0.0.1:9464" or "[::1]:9464".
mod listen_text {
    use std::net::SocketAddr;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<SocketAddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(addr) => serializer.serialize_str(&addr.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_listen(&text)
            .map(Some)
            .map_err(de::Error::custom)
    }
}

/// An address and port to listen on, with a message that shows the forms when it is not one.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "`{text}` is not an address and port; write it like \"127.0.0.1:9464\" (this host \
             only), \"192.0.2.10:9464\" or \"[::1]:9464\""
        )
    })
}

/// Ports read as any integer first, so that an out-of-range one gets a message that says
/// what a port is rather than what a `u16` is.
mod port_list {
    use serde::{de, Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
        Vec::<i64>::deserialize(deserializer)?
            .into_iter()
            .map(|port| {
                u16::try_from(port).map_err(|_| {
                    de::Error::custom(format!(
                        "{port} is not a TCP port; give ports 1-65535 (Glance listens on 9292)"
                    ))
                })
            })
            .collect()
    }
}

/// Allowlist entries as "192.0.2.10" (one address) or "192.0.2.0/24" (a prefix).
mod allowlist_text {
    use ipnet::IpNet;
    use serde::{de, Deserialize, Deserializer, Serializer};

    use crate::net_list;

    pub fn serialize<S: Serializer>(value: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(value.iter().map(net_list::entry_text))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| {
                net_list::parse_entry(text).ok_or_else(|| {
                    de::Error::custom(format!(
                        "`{text}` is not an IP address or prefix; write one address \
                         (\"192.0.2.10\", \"2001:db8::10\") or a prefix (\"192.0.2.0/24\", \
                         \"2001:db8:10::/64\")"
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../limiter.example.toml");
    const CONFIG_DOC: &str = include_str!("../../docs/CONFIG.md");

    fn problems_of(text: &str) -> Vec<Problem> {
        match Config::from_toml_str(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn syntax_error_of(text: &str) -> String {
        match Config::from_toml_str(text) {
            Err(error @ ConfigError::Syntax { .. }) => error.to_string(),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    /// The example with every `#key = value` and `#[table]` line switched on.
    fn example_uncommented() -> String {
        EXAMPLE
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key of the configuration, `policy.` prefixed for the [policy] table.
    fn every_key() -> Vec<String> {
        let value = toml::Value::try_from(Config {
            socket_group: Some("limiter".into()),
            metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
            ..Config::default()
        })
        .unwrap();
        let table = value.as_table().unwrap();
        let mut keys = Vec::new();
        for (key, value) in table {
            if let toml::Value::Table(inner) = value {
                keys.extend(inner.keys().map(|inner_key| format!("{key}.{inner_key}")));
            } else {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// The example's `[cluster]` section (written `# key = value`), uncommented but for the
    /// TLS files, which need https:// endpoints and files that exist.
    #[test]
    fn prefix_thresholds_parse_and_are_checked() {
        let config = Config::from_toml_str(
            "[policy.prefix]\nimage_creates_per_minute = 200\nnew_connections_per_second = 400\n",
        )
        .unwrap();
        assert_eq!(config.policy.prefix.image_creates_per_minute, Some(200));
        assert_eq!(config.policy.prefix.image_creates_per_hour, Some(1200));
        assert_eq!(config.policy.prefix.new_connections_per_second, Some(400));
        assert_eq!(config.policy.prefix.other_writes_per_minute, None);

        let problems = problems_of("[policy.prefix]\nimage_creates_per_minute = 0\n");
        assert_eq!(problems[0].key, "policy.prefix.image_creates_per_minute");
        assert!(problems[0].message.contains("0 would ban every prefix"));
        let problems = problems_of("[policy.prefix]\nimage_creates_per_hour = 500\n");
        assert_eq!(problems[0].key, "policy.prefix.image_creates_per_hour");
        assert!(
            problems[0]
                .message
                .contains("500 is below the host limit (600)"),
            "{}",
            problems[0].message
        );
        // Below a host limit that is off is fine: there is no host ban to come first.
        Config::from_toml_str(
            "[policy]\nother_writes_per_minute = \"off\"\n[policy.prefix]\nother_writes_per_minute = 10\n",
        )
        .unwrap();
        assert!(Config::from_toml_str("[policy.prefix]\nreads_per_second = 10\n").is_err());
    }

    #[test]
    fn the_examples_cluster_section_parses() {
        let section: String = EXAMPLE
            .lines()
            .skip_while(|line| *line != "# [cluster]")
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| !line.contains("_file"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(section.contains("etcd_endpoints"), "{section}");
        let config = Config::from_toml_str(&section).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.etcd_endpoints.len(), 3);
        assert_eq!(
            cluster.scope(Metric::NewConnectionsPerSecond),
            crate::cluster::settings::Scope::Node
        );
        let doc = CONFIG_DOC;
        for key in [
            "etcd_endpoints",
            "node_name",
            "prefix",
            "role",
            "ca_file",
            "summary_max_sources",
            "threshold_scope",
        ] {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/CONFIG.md explains `{key}`"
            );
        }
    }

    #[test]
    fn cluster_problems_name_their_key() {
        let problems = problems_of("[cluster]\netcd_endpoints = []\nrole = \"edge\"\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "cluster.etcd_endpoints");
        let error = Config::from_toml_str("[cluster]\nrole = \"proxy\"\n").unwrap_err();
        assert!(error.to_string().contains("role"), "{error}");
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_example_is_all_defaults_whether_commented_or_not() {
        assert_eq!(Config::from_toml_str(EXAMPLE).unwrap(), Config::default());
        let uncommented = example_uncommented();
        assert_ne!(uncommented, EXAMPLE, "the example should show its settings");
        assert_eq!(
            Config::from_toml_str(&uncommented).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn the_example_and_the_docs_cover_every_key() {
        let uncommented = example_uncommented();
        for key in every_key() {
            let name = key.rsplit('.').next().unwrap();
            let in_example = uncommented.lines().chain(EXAMPLE.lines()).any(|line| {
                line.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{name} ="))
            });
            assert!(in_example, "limiter.example.toml does not show `{key}`");
            assert!(
                CONFIG_DOC.contains(&format!("`{name}`")),
                "docs/CONFIG.md does not explain `{key}`"
            );
        }
    }

    #[test]
    fn the_defaults_round_trip_through_toml() {
        let text = Config::default().to_toml_string();
        assert_eq!(Config::from_toml_str(&text).unwrap(), Config::default());
        let changed = Config {
            socket_group: Some("glance".into()),
            allowlist: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::7/128".parse().unwrap(),
            ],
            policy: PolicyConfig {
                image_creates_per_hour: None,
                ban_ttl_factor: 1.5,
                ..PolicyConfig::default()
            },
            ..Config::default()
        };
        let text = changed.to_toml_string();
        assert!(text.contains("image_creates_per_hour = \"off\""), "{text}");
        assert!(text.contains("\"2001:db8::7\""), "{text}");
        assert_eq!(Config::from_toml_str(&text).unwrap(), changed);
    }

    #[test]
    fn a_typical_file_parses() {
        let config = Config::from_toml_str(
            r#"
            interfaces = ["bond0", "eth1"]
            mode = "monitor"
            poll_interval = "500ms"
            socket_group = "glance-limiter"
            allowlist = ["192.0.2.10", "198.51.100.0/24", "2001:db8:10::/64"]

            [policy]
            image_creates_per_minute = 120
            other_writes_per_minute = "off"
            ban_ttl = "15m"
            ban_ttl_max = "1day"
            "#,
        )
        .unwrap();
        assert_eq!(config.interfaces, ["bond0", "eth1"]);
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.poll_interval, Duration::from_millis(500));
        assert_eq!(
            config.allowlist[0],
            "192.0.2.10/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(config.policy.image_creates_per_minute, Some(120));
        assert_eq!(config.policy.other_writes_per_minute, None);
        assert_eq!(config.policy.ban_ttl, Duration::from_secs(900));
        assert_eq!(config.policy.ban_ttl_max, Duration::from_secs(86_400));
        assert_eq!(
            config.policy.image_creates_per_hour,
            Some(600),
            "default kept"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let message = syntax_error_of("mode = \"enforce\"\nport = [9292]\n");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("unknown field `port`"), "{message}");
        assert!(message.contains("docs/CONFIG.md"), "{message}");
        let message = syntax_error_of("[policy]\nban_tll = \"1m\"\n");
        assert!(message.contains("unknown field `ban_tll`"), "{message}");
    }

    #[test]
    fn wrong_values_are_syntax_errors_with_their_line_and_a_fix() {
        let message = syntax_error_of("\nports = [9292, 70000]\n");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("70000 is not a TCP port"), "{message}");
        let message = syntax_error_of("mode = \"enforcing\"");
        assert!(
            message.contains("expected `enforce` or `monitor`"),
            "{message}"
        );
        let message = syntax_error_of("poll_interval = \"ten seconds\"");
        assert!(message.contains("write it like"), "{message}");
        let message = syntax_error_of("poll_interval = 1");
        assert!(message.contains("line 1"), "{message}");
        let message = syntax_error_of("allowlist = [\"10.0.0.300\"]");
        assert!(
            message.contains("is not an IP address or prefix"),
            "{message}"
        );
        let message = syntax_error_of("[policy]\nimage_creates_per_minute = \"none\"");
        assert!(message.contains("\"off\" to disable"), "{message}");
        let message = syntax_error_of("[policy]\nimage_creates_per_minute = -5");
        assert!(message.contains("positive whole number"), "{message}");
    }

    #[test]
    fn problems_name_their_key_and_line() {
        let problems = problems_of(
            "ports = [9292, 0, 9292]\n\
             poll_interval = \"10ms\"\n\
             source_capacity = 10\n\
             allowlist = [\"192.0.2.0/24\", \"192.0.2.7/24\", \"::ffff:10.1.2.3/128\", \"::/0\"]\n\
             [policy]\n\
             image_creates_per_hour = 0\n",
        );
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            found,
            [
                ("ports[1]", Some(1)),
                ("ports[2]", Some(1)),
                ("poll_interval", Some(2)),
                ("source_capacity", Some(3)),
                ("allowlist[1]", Some(4)),
                ("allowlist[2]", Some(4)),
                ("allowlist[3]", Some(4)),
                ("policy.image_creates_per_hour", Some(6)),
            ]
        );
        let host_bits = &problems[4].message;
        assert!(
            host_bits.contains("\"192.0.2.0/24\" for the network")
                && host_bits.contains("\"192.0.2.7\" for the single address"),
            "{host_bits}"
        );
        assert!(
            problems[5].message.contains("IPv4 form, \"10.1.2.3\""),
            "{}",
            problems[5].message
        );
        assert!(problems[6].message.contains("narrower IPv6 prefix"));
        assert!(problems[7].message.contains("\"off\""));
    }

    #[test]
    fn proxy_settings_parse_and_their_problems_have_lines() {
        let config = Config::from_toml_str(
            "trusted_proxies = [\"198.51.100.2\", \"2001:db8::/64\"]\n\
             client_address_header = \"forwarded\"\n\
             glance_path_prefixes = [\"/image\"]\n",
        )
        .unwrap();
        assert!(config
            .trusted_proxies
            .contains("2001:db8::9".parse().unwrap()));
        assert_eq!(config.client_address_header, ClientHeader::Forwarded);
        assert_eq!(config.glance_path_prefixes, ["/image"]);
        let text = config.to_toml_string();
        assert!(
            text.contains("client_address_header = \"Forwarded\""),
            "{text}"
        );
        assert_eq!(Config::from_toml_str(&text).unwrap(), config);

        let problems = problems_of(
            "trusted_proxies = [\n  \"198.51.100.2\",\n  \"0.0.0.0/0\",\n]\n\
             glance_path_prefixes = [\"/image\", \"image/\"]\n",
        );
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            found,
            [
                ("trusted_proxies[1]", Some(3)),
                ("glance_path_prefixes[1]", Some(5))
            ]
        );
        let message = syntax_error_of("\nclient_address_header = \"X-Real-IP\"");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn policy_relations_are_checked() {
        let problems = problems_of(
            "[policy]\n\
             ban_ttl = \"2h\"\n\
             ban_ttl_max = \"1h\"\n\
             ban_ttl_factor = 0.5\n\
             offence_memory = \"30m\"\n\
             aggregate_min_sources = 1\n\
             aggregate_ipv4_prefix = 32\n\
             aggregate_ipv6_prefix = 128\n",
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "policy.ban_ttl_max",
                "policy.ban_ttl_factor",
                "policy.offence_memory",
                "policy.aggregate_min_sources",
                "policy.aggregate_ipv4_prefix",
                "policy.aggregate_ipv6_prefix",
            ]
        );
        assert_eq!(problems[0].line, Some(3));
        assert!(problems[0]
            .message
            .contains("raise ban_ttl_max or lower ban_ttl"));
    }

    #[test]
    fn the_error_message_lists_every_problem() {
        let error = Config::from_toml_str("ports = []\nsocket = \"limiter.sock\"\n").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("configuration: invalid configuration"),
            "{message}"
        );
        assert!(
            message.contains("\n  - line 1, `ports`: no port to protect"),
            "{message}"
        );
        assert!(
            message.contains("\n  - line 2, `socket`: `limiter.sock` is relative"),
            "{message}"
        );
    }

    #[test]
    fn bad_interface_names_are_reported() {
        let problems = problems_of(
            "interfaces = [\"eth0\", \"eth0\", \"\", \"a-very-long-interface-name\", \"eth0:1\"]",
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "interfaces[1]",
                "interfaces[2]",
                "interfaces[3]",
                "interfaces[4]"
            ]
        );
    }

    #[test]
    fn overrides_win_and_are_checked_under_their_flag() {
        let file = Config::from_toml_str("interfaces = [\"eth0\"]\nmode = \"monitor\"").unwrap();
        let merged = file
            .clone()
            .with_overrides(&Overrides {
                interfaces: vec!["bond0".into()],
                mode: Some(Mode::Enforce),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(merged.interfaces, ["bond0"]);
        assert_eq!(merged.mode, Mode::Enforce);
        assert_eq!(merged.ports, [9292]);

        let unchanged = file.clone().with_overrides(&Overrides::default()).unwrap();
        assert_eq!(unchanged, file);

        let error = file
            .with_overrides(&Overrides {
                ports: vec![0],
                poll_interval: Some(Duration::from_secs(600)),
                ..Overrides::default()
            })
            .unwrap_err();
        let ConfigError::Invalid { problems, .. } = error else {
            panic!("{error:?}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["--port", "--poll-interval"]);
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        assert_eq!(Config::default().metrics_listen, None);
        assert!(!Config::default()
            .to_toml_string()
            .contains("metrics_listen"));
        let config = Config::from_toml_str("metrics_listen = \"[::1]:9464\"").unwrap();
        assert_eq!(config.metrics_listen, Some("[::1]:9464".parse().unwrap()));
        let text = config.to_toml_string();
        assert!(text.contains("metrics_listen = \"[::1]:9464\""), "{text}");
        assert_eq!(Config::from_toml_str(&text).unwrap(), config);

        let message = syntax_error_of("\nmetrics_listen = \"localhost:9464\"");
        assert!(message.contains("line 2"), "{message}");
        assert!(
            message.contains("`localhost:9464` is not an address and port"),
            "{message}"
        );
        let message = syntax_error_of("metrics_listen = \"127.0.0.1\"");
        assert!(message.contains("\"127.0.0.1:9464\""), "{message}");

        let problems = problems_of("\n\nmetrics_listen = \"0.0.0.0:0\"");
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].key.as_str(), problems[0].line),
            ("metrics_listen", Some(3))
        );
        assert!(
            problems[0].message.contains("\"0.0.0.0:9464\""),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn the_metrics_flag_overrides_the_file_and_is_checked_under_its_name() {
        let file = Config::from_toml_str("metrics_listen = \"127.0.0.1:9464\"").unwrap();
        let merged = file
            .clone()
            .with_overrides(&Overrides {
                metrics_listen: Some("127.0.0.1:9500".parse().unwrap()),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(
            merged.metrics_listen,
            Some("127.0.0.1:9500".parse().unwrap())
        );
        let ConfigError::Invalid { problems, .. } = file
            .with_overrides(&Overrides {
                metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
                ..Overrides::default()
            })
            .unwrap_err()
        else {
            panic!()
        };
        assert_eq!(problems[0].key, "--metrics-listen");
    }

    #[test]
    fn mode_parses_from_the_command_line() {
        assert_eq!("monitor".parse::<Mode>(), Ok(Mode::Monitor));
        assert!("off".parse::<Mode>().unwrap_err().contains("\"monitor\""));
    }

    #[test]
    fn files_are_read_and_a_missing_default_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limiter.toml");
        assert_eq!(Config::load_or_default(&path).unwrap(), Config::default());
        let error = Config::load(&path).unwrap_err();
        assert!(error.to_string().contains("leave out --config"), "{error}");

        std::fs::write(&path, "[policy]\nban_ttl = \"5m\"\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().policy.ban_ttl,
            Duration::from_secs(300)
        );
        std::fs::write(&path, "ports = [0]\n").unwrap();
        let message = Config::load_or_default(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn the_rate_tracker_holds_the_kernel_table_and_then_some() {
        let with_rows = |rows: u32| Config {
            source_capacity: rows,
            ..Config::default()
        };
        assert_eq!(with_rows(65_536).rate_tracker_capacity(), 131_072);
        assert_eq!(with_rows(1_000_000).rate_tracker_capacity(), 1_000_000);
        assert_eq!(with_rows(800_000).rate_tracker_capacity(), 1_000_000);
    }
}
