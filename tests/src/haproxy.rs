//! A real HAProxy (Debian's 2.6, installed by `cargo xtask setup`) in front of Glance inside a
//! test namespace: `haproxy -f CFG -db` in the foreground, entering only the network
//! namespace (as the daemon does), with its configuration, self-signed certificate, admin
//! socket and log (its stderr) in a temporary directory. On drop its process group is killed
//! and the directory removed, also when the test panics.
//!
//! The certificate comes from the `openssl` command (one `req -x509`, as an operator would
//! make it): no crate to build, and the same OpenSSL that HAProxy and the kit's TLS client
//! (see `https`) link.
//!
//! What HAProxy 2.6.12 (Debian 12) was seen to do here, and tests/tests/haproxy_kit.rs
//! checks:
//! - `option forwardfor`, client sending its own `X-Forwarded-For: F`: the backend gets the
//!   client's line untouched, then a line of HAProxy's own, `x-forwarded-for: C`, so the
//!   list reads `F, C` and the client's address is the last entry. Every header name reaches
//!   the backend in lower case (HTTP/1 through HAProxy's internal representation), the
//!   client's own lines too. Without the option, the client's line passes alone.
//! - `send-proxy-v2`: each backend connection starts with a v2 header, command PROXY, family
//!   TCP4 or TCP6 as the client's (an IPv6 client over an IPv4 backend connection gives
//!   TCP6), naming the client's address and port and the frontend address it connected to;
//!   no TLVs. Health checks send a v2 header with the LOCAL command.
//! - `send-proxy`: the v1 line `PROXY TCP4|TCP6 client frontend cport fport`; health checks
//!   send one that names HAProxy's own connection (its backend-side address and port, the
//!   server's address and port).
//! - With a PROXY mode and `http-reuse always`, each client connection's request arrived on
//!   a backend connection of its own, whose header named that client.

mod config;

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::{net::UnixStream, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

pub use config::{HaProxyConfig, HttpReuse, SendProxy, BACKEND, FRONTEND};

use crate::netns::Netns;

/// How long HAProxy gets to accept on every frontend address (tens of milliseconds here).
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long HAProxy gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
const LOG_FILE: &str = "haproxy.log";
/// The certificate's name; clients do not check it (see `https`).
pub const SERVER_NAME: &str = "glance.example";

pub struct HaProxy {
    child: Child,
    dir: tempfile::TempDir,
    config: String,
}

impl HaProxyConfig {
    /// Starts HAProxy inside `ns` and waits until every frontend address accepts a TCP
    /// connection (from inside `ns`, so no client's traffic is involved); panics with
    /// HAProxy's stderr if it exits or does not accept in time.
    pub fn start(self, ns: &Netns) -> HaProxy {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-haproxy-")
            .tempdir()
            .expect("HAProxy's directory");
        if self.tls {
            self_signed_pem(dir.path());
        }
        let config = self.render(dir.path());
        let config_path = dir.path().join("haproxy.cfg");
        fs::write(&config_path, &config).expect("write haproxy.cfg");
        let log = fs::File::create(dir.path().join(LOG_FILE)).expect("HAProxy's log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("haproxy")
            .arg("-f")
            .arg(&config_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            // Its own process group: the guard kills it whole, and a Ctrl-C meant for the
            // test runner does not reach it first.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter haproxy (cargo xtask setup): {e}"));
        // The guard exists before the wait: a failed start still kills it.
        let mut haproxy = HaProxy { child, dir, config };
        haproxy.wait_accepting(ns, &self.binds);
        haproxy
    }
}

impl HaProxy {
    fn wait_accepting(&mut self, ns: &Netns, binds: &[std::net::SocketAddr]) {
        let started = Instant::now();
        for addr in binds {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    // The guard prints the configuration as the panic unwinds through it.
                    panic!(
                        "haproxy exited ({status}) before accepting on {addr} \
                         (installed? cargo xtask setup):\n{}",
                        self.log_text()
                    );
                }
                let accepted =
                    ns.run(|| TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok());
                if accepted {
                    break;
                }
                assert!(
                    started.elapsed() < START_DEADLINE,
                    "haproxy did not accept on {addr} within {START_DEADLINE:?}:\n{}",
                    self.log_text()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The configuration it runs (print it when a test fails).
    pub fn config_text(&self) -> &str {
        &self.config
    }

    /// Its stderr so far: warnings, errors and a line per request (`option httplog`).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// Its directory (configuration, certificate, admin socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One command on the admin socket (`show stat`, `show info`, `disable server ...`) and
    /// its answer.
    pub fn admin(&self, command: &str) -> String {
        let path = self.dir.path().join(config::STATS_SOCKET);
        let mut socket = UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("HAProxy's admin socket {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        socket
            .write_all(format!("{command}\n").as_bytes())
            .expect("write to the admin socket");
        // Without `prompt`, HAProxy closes the socket after answering.
        let mut answer = String::new();
        socket
            .read_to_string(&mut answer)
            .expect("read the admin socket");
        answer
    }

    /// Each backend server's name and state from `show stat` (`UP`, `DOWN`, `no check`, or a
    /// transition such as `UP 1/3`).
    pub fn server_states(&self) -> Vec<(String, String)> {
        let csv = self.admin("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .unwrap_or_else(|| panic!("unexpected `show stat` answer: {csv}"))
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|c| *c == name).expect(name);
        let (proxy, server, status) = (column("pxname"), column("svname"), column("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|row| row.len() > status && row[proxy] == BACKEND && row[server] != "BACKEND")
            .map(|row| (row[server].to_owned(), row[status].to_owned()))
            .collect()
    }

    /// Waits until server `name` (`glance1`, …) is in `state` (`UP`, `DOWN`); panics with
    /// the log after `deadline`.
    pub fn wait_server_state(&self, name: &str, state: &str, deadline: Duration) {
        let started = Instant::now();
        loop {
            let states = self.server_states();
            if states.iter().any(|(n, s)| n == name && s == state) {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "{name} not {state} within {deadline:?}: {states:?}\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        if thread::panicking() {
            // What a failed test needs to see: the configuration and the last requests.
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "HAProxy configuration:\n{}\nHAProxy log (last {} lines):\n{}",
                self.config,
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let group = -(self.child.id() as i32);
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever is left of the group goes now.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A self-signed certificate and its key for [`SERVER_NAME`], valid two days, in one PEM
/// file as HAProxy's `crt` wants them.
fn self_signed_pem(dir: &Path) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={SERVER_NAME}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (cargo xtask setup): {e}"));
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pem = fs::read(&cert).expect("certificate");
    pem.extend(fs::read(&key).expect("key"));
    fs::write(dir.join(config::PEM_FILE), pem).expect("write the PEM file");
}
