//! A real three-member etcd cluster (Debian's etcd 3.4, installed by `cargo xtask setup`) for
//! the limiter's shared bans: each member is an `etcd` process in a network namespace of its
//! own, on a [`Lan`] that limiter daemons in other namespaces join to reach every member's
//! client URL. `etcdctl` (`ETCDCTL_API=3`) gives tests their view: health, put, get, del.
//!
//! Members can be killed (SIGKILL) and started again on the same data directory, where they
//! rejoin; the whole cluster can be stopped and started with its data kept. On drop every
//! member's process group is killed, and the data directories, namespaces and links go, also
//! when the test panics (which prints the tail of each member's log).
//!
//! Election timing is shortened for tests (100 ms heartbeats, 500 ms election timeout): a
//! new leader within about a second of the old one's death, and leases as short as 1 s.
//!
//! With client TLS ([`EtcdCluster::start_tls_on`]) the client URLs are `https://`, and members
//! accept only clients with a certificate from the cluster's CA ([`EtcdTls`]); peers still
//! talk plain HTTP among themselves.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Lan, Netns};

mod tls;

pub use tls::EtcdTls;

/// How long a cluster gets to elect a leader and answer health checks on every member.
const START_DEADLINE: Duration = Duration::from_secs(30);
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
const HEARTBEAT_MS: &str = "100";
const ELECTION_MS: &str = "500";

pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
    tls: Option<EtcdTls>,
    /// The LAN of a standalone cluster (none when started on a caller's LAN). Dropped after
    /// the members' namespaces.
    _own_lan: Option<Lan>,
}

struct Member {
    ns: Netns,
    addr: &'static str,
    child: Option<Child>,
}

impl EtcdCluster {
    /// The members' addresses on the LAN (a /24).
    pub const MEMBER_V4: [&'static str; 3] = ["198.51.100.21", "198.51.100.22", "198.51.100.23"];
    /// Each member's interface on the LAN, inside its namespace.
    pub const IFACE: &'static str = "veth-lan";

    /// A cluster on a LAN of its own (reach it from another namespace through
    /// [`start_on`](Self::start_on) instead); returns once every member is healthy.
    pub fn start() -> Self {
        let lan = Lan::new();
        let mut cluster = Self::start_on(&lan);
        cluster._own_lan = Some(lan);
        cluster
    }

    /// A cluster whose members join `lan` at [`MEMBER_V4`](Self::MEMBER_V4); returns once
    /// every member is healthy.
    pub fn start_on(lan: &Lan) -> Self {
        Self::start_with(lan, false)
    }

    /// As [`start_on`](Self::start_on), with client TLS and client-certificate
    /// authentication: see [`tls`](Self::tls) for the CA and a client's certificate.
    pub fn start_tls_on(lan: &Lan) -> Self {
        Self::start_with(lan, true)
    }

    fn start_with(lan: &Lan, tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-etcd-")
            .tempdir()
            .expect("etcd's directory");
        let members = Self::MEMBER_V4
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let ns = Netns::new(&format!("e{i}"));
                lan.attach(&ns, Self::IFACE, &[&format!("{addr}/24")]);
                Member {
                    ns,
                    addr,
                    child: None,
                }
            })
            .collect();
        let token = dir
            .path()
            .file_name()
            .expect("a temporary directory has a name")
            .to_string_lossy()
            .into_owned();
        let tls = tls.then(|| EtcdTls::generate(dir.path(), &Self::MEMBER_V4));
        // The guard exists before any process: a failed start still kills them.
        let mut cluster = EtcdCluster {
            members,
            dir,
            token,
            tls,
            _own_lan: None,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&[0, 1, 2], START_DEADLINE);
        cluster
    }

    /// The CA and certificates of a TLS cluster.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Every member's client URL, `http://198.51.100.21:2379` (or `https://`) first.
    pub fn client_endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_endpoint(i))
            .collect()
    }

    pub fn client_endpoint(&self, i: usize) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme(), self.members[i].addr)
    }

    /// Member `i`'s namespace.
    pub fn member_ns(&self, i: usize) -> &Netns {
        &self.members[i].ns
    }

    /// Whether member `i`'s process is running (it may still be unhealthy).
    pub fn is_running(&mut self, i: usize) -> bool {
        let member = &mut self.members[i];
        match &mut member.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills member `i` with SIGKILL (a crash: no goodbye to its peers) and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory, where it rejoins the cluster. When a
    /// quorum is then running, waits until the member is healthy; otherwise returns at once
    /// (it cannot be healthy before its peers return).
    pub fn start_member(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "etcd member {i} is already running"
        );
        self.spawn(i);
        let running = (0..self.members.len())
            .filter(|&m| self.is_running(m))
            .count();
        if running > self.members.len() / 2 {
            self.wait_healthy(&[i], START_DEADLINE);
        }
    }

    /// Stops every member at once with SIGKILL, as a power cut would (etcd's write-ahead
    /// log keeps every acknowledged write); the data directories are kept for
    /// [`start_all`](Self::start_all). Not SIGTERM: members told to stop together wait on
    /// each other for seconds, which only slows the tests.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every stopped member and waits until all are healthy.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy(&[0, 1, 2], START_DEADLINE);
    }

    /// The members that answer `etcdctl endpoint health` (a linearizable read: a member
    /// without a quorum behind it is not healthy), in index order.
    pub fn healthy_members(&self) -> Vec<usize> {
        let endpoints = self.client_endpoints();
        // Whether or not some are unhealthy (exit status 1), the JSON lists every endpoint.
        let out = self.etcdctl_output(
            &self.members[0].ns,
            &endpoints,
            &[
                "--dial-timeout=500ms",
                "--command-timeout=1s",
                "endpoint",
                "health",
                "-w",
                "json",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Vec<serde_json::Value> =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                panic!(
                    "unexpected `etcdctl endpoint health` output ({e}): {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let mut healthy: Vec<usize> = report
            .iter()
            .filter(|r| r["health"].as_bool() == Some(true))
            .filter_map(|r| endpoints.iter().position(|e| r["endpoint"] == e.as_str()))
            .collect();
        healthy.sort_unstable();
        healthy
    }

    /// The member that leads now, as the members that answer `etcdctl endpoint status`
    /// report it; `None` when none answers or none knows a leader.
    pub fn leader(&self) -> Option<usize> {
        let endpoints = self.client_endpoints();
        let out = self.etcdctl_output(
            &self.members[0].ns,
            &endpoints,
            &[
                "--dial-timeout=500ms",
                "--command-timeout=1s",
                "endpoint",
                "status",
                "-w",
                "json",
            ],
        );
        let report: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_default();
        let leader_id = report
            .iter()
            .filter_map(|r| r["Status"]["leader"].as_u64())
            .find(|&id| id != 0)?;
        report
            .iter()
            .find(|r| r["Status"]["header"]["member_id"].as_u64() == Some(leader_id))
            .and_then(|r| endpoints.iter().position(|e| r["Endpoint"] == e.as_str()))
    }

    /// Waits until every member in `members` is healthy; panics with the members' logs after
    /// `deadline`.
    pub fn wait_healthy(&self, members: &[usize], deadline: Duration) {
        let started = Instant::now();
        loop {
            let healthy = self.healthy_members();
            if members.iter().all(|m| healthy.contains(m)) {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "etcd members {members:?} not healthy within {deadline:?} (healthy: \
                 {healthy:?})\n{}",
                self.logs_tail(20)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl put KEY VALUE` through every endpoint (the client picks a live one).
    pub fn put(&self, key: &str, value: &str) -> Result<(), String> {
        self.etcdctl(
            &self.members[0].ns,
            &self.client_endpoints(),
            &["put", key, value],
        )
        .map(drop)
    }

    /// `put` through member `i` only.
    pub fn put_via(&self, i: usize, key: &str, value: &str) -> Result<(), String> {
        self.etcdctl(
            &self.members[i].ns,
            &[self.client_endpoint(i)],
            &["put", key, value],
        )
        .map(drop)
    }

    /// `etcdctl get KEY` through every endpoint: the value, `None` if there is no such key.
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.etcdctl(&self.members[0].ns, &self.client_endpoints(), &["get", key])
            .map(|out| value_of(&out))
    }

    /// `get` through member `i` only (a linearizable read: it needs the quorum too).
    pub fn get_via(&self, i: usize, key: &str) -> Result<Option<String>, String> {
        self.etcdctl(
            &self.members[i].ns,
            &[self.client_endpoint(i)],
            &["get", key],
        )
        .map(|out| value_of(&out))
    }

    /// `etcdctl del KEY` through every endpoint: how many keys were deleted.
    pub fn del(&self, key: &str) -> Result<u64, String> {
        let out = self.etcdctl(&self.members[0].ns, &self.client_endpoints(), &["del", key])?;
        out.trim()
            .parse()
            .map_err(|e| format!("unexpected `etcdctl del` output `{out}`: {e}"))
    }

    /// `etcdctl ARGS` run inside `ns` against `endpoints`, with short timeouts (1 s to
    /// connect, 3 s per command; later flags in `args` override them) and, on a TLS cluster,
    /// the CA and client certificate: its stdout, or its stderr as the error. Any namespace
    /// that reaches the members will do, e.g. a Glance node's, to show that a daemon there
    /// can.
    pub fn etcdctl(
        &self,
        ns: &Netns,
        endpoints: &[String],
        args: &[&str],
    ) -> Result<String, String> {
        let tls = self
            .tls
            .as_ref()
            .map(EtcdTls::etcdctl_args)
            .unwrap_or_default();
        self.etcdctl_with_tls(ns, endpoints, &tls, args)
    }

    /// As [`etcdctl`](Self::etcdctl) with `tls_flags` (`--cacert=…`, `--cert=…`, `--key=…`,
    /// or none) instead of the cluster's: to check what the members refuse.
    pub fn etcdctl_with_tls(
        &self,
        ns: &Netns,
        endpoints: &[String],
        tls_flags: &[String],
        args: &[&str],
    ) -> Result<String, String> {
        let out = self.etcdctl_command(ns, endpoints, tls_flags, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn etcdctl_output(
        &self,
        ns: &Netns,
        endpoints: &[String],
        args: &[&str],
    ) -> std::process::Output {
        let tls = self
            .tls
            .as_ref()
            .map(EtcdTls::etcdctl_args)
            .unwrap_or_default();
        self.etcdctl_command(ns, endpoints, &tls, args)
    }

    fn etcdctl_command(
        &self,
        ns: &Netns,
        endpoints: &[String],
        tls_flags: &[String],
        args: &[&str],
    ) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("etcdctl")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=3s"])
            .args(tls_flags)
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run etcdctl (cargo xtask setup): {e}"))
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.data"))
    }

    /// Member `i`'s log (its stderr, kept across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self
            .members
            .iter()
            .enumerate()
            .map(|(m, member)| format!("m{m}=http://{}:{PEER_PORT}", member.addr))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[i];
        let (client, peer) = (
            self.client_endpoint(i),
            format!("http://{}:{PEER_PORT}", member.addr),
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd member's log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", member.ns.path().display()))
            .arg("etcd");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg(format!("--name=m{i}"))
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            // Read only on the first start; a restart takes its membership from the data.
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
            .arg(format!("--election-timeout={ELECTION_MS}"))
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            // Its own process group: killed whole, and out of reach of a Ctrl-C meant for
            // the test runner.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter etcd (cargo xtask setup): {e}"));
        self.members[i].child = Some(child);
    }

    /// The last `lines` lines of every member's log.
    fn logs_tail(&self, lines: usize) -> String {
        (0..self.members.len())
            .map(|i| format!("etcd m{i} log:\n{}", tail(&self.log_path(i), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                signal_group(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("{}", self.logs_tail(15));
        }
    }
}

fn signal_group(child: &Child, signal: i32) {
    // SAFETY: signalling our own child's process group.
    unsafe { libc::kill(-(child.id() as i32), signal) };
}

/// The value in `etcdctl get`'s simple output (`KEY\nVALUE\n`, nothing when absent).
fn value_of(out: &str) -> Option<String> {
    let (_key, value) = out.split_once('\n')?;
    Some(value.strip_suffix('\n').unwrap_or(value).to_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::value_of;

    #[test]
    fn get_output_gives_the_value_or_none() {
        assert_eq!(value_of(""), None);
        assert_eq!(value_of("k\nv\n"), Some("v".to_owned()));
        assert_eq!(value_of("k\n\n"), Some(String::new()));
        assert_eq!(value_of("k\na\nb\n"), Some("a\nb".to_owned()));
    }
}
