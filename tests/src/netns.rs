//! Network namespaces and veth pairs for tests, each removed by its guard on drop (also when
//! the test panics). Names carry the process id and a counter so parallel runs never collide.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add`, deleted (with every interface inside it)
/// on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace named `gl<pid>-<n><role>` with loopback up.
    pub fn new(role: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("gl{}-{}{}", std::process::id(), id, role);
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip ARGS` inside the namespace; panics with the command's stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }

    /// Adds `cidr` to `iface`. IPv6 addresses skip duplicate address detection, so they are
    /// usable at once.
    pub fn add_addr(&self, iface: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", iface, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", iface]);
        }
    }

    /// Runs `f` on a new thread that has entered this namespace (network namespace only, so
    /// the host's bpffs stays visible) and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        thread::scope(|s| {
            s.spawn(move || {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Spawns a thread inside this namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> thread::JoinHandle<R> {
        let path = self.path();
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

fn enter(path: &PathBuf) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    let error = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "setns({}): {error}", path.display());
}

/// Runs a command and panics with its output if it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: a server (the Glance node, where XDP attaches) and a
/// client side. Addresses come from the documentation ranges only.
pub struct Topology {
    pub server: Netns,
    pub client: Netns,
    /// Interface name inside `server` (where the program attaches).
    pub server_iface: &'static str,
    pub client_iface: &'static str,
}

impl Topology {
    pub const SERVER_V4: &'static str = "198.51.100.1";
    pub const SERVER_V6: &'static str = "2001:db8:100::1";
    /// Client source addresses: several, so one can be blocked while others still connect.
    pub const CLIENT_V4: [&'static str; 3] = ["198.51.100.2", "198.51.100.3", "198.51.100.4"];
    pub const CLIENT_V6: [&'static str; 2] = ["2001:db8:100::2", "2001:db8:100::3"];

    pub fn new() -> Self {
        let server = Netns::new("s");
        let client = Netns::new("c");
        let (server_iface, client_iface) = ("veth-glance", "veth-client");
        // One command creates both ends, each directly in its namespace: the host's
        // namespace never holds either interface.
        let veth_pair = format!(
            "ip link add {server_iface} netns {} type veth peer name {client_iface} netns {}",
            server.name(),
            client.name()
        );
        run(&veth_pair.split(' ').collect::<Vec<_>>());
        server.add_addr(server_iface, &format!("{}/24", Self::SERVER_V4));
        server.add_addr(server_iface, &format!("{}/64", Self::SERVER_V6));
        server.ip(&["link", "set", server_iface, "up"]);
        for a in Self::CLIENT_V4 {
            client.add_addr(client_iface, &format!("{a}/24"));
        }
        for a in Self::CLIENT_V6 {
            client.add_addr(client_iface, &format!("{a}/64"));
        }
        client.ip(&["link", "set", client_iface, "up"]);
        Topology {
            server,
            client,
            server_iface,
            client_iface,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
