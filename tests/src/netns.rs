//! Network namespaces and veth pairs for tests, each removed by its guard on drop (also when
//! the test panics). Names carry the process id and a counter so parallel runs never collide.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

mod cluster;
mod lan;
mod proxy;

pub use cluster::{ClusterNode, ClusterTopology, GlanceNodes};
pub use lan::Lan;
pub use proxy::{ProxyClient, ProxyTopology};

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

/// A veth pair between two namespaces. One command creates both ends, each directly in its
/// namespace: the host's namespace never holds either interface.
fn veth_pair(a: &Netns, a_end: &str, b: &Netns, b_end: &str) {
    run(&[
        "ip",
        "link",
        "add",
        a_end,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_end,
        "netns",
        b.name(),
    ]);
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
        veth_pair(&server, server_iface, &client, client_iface);
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

impl Netns {
    /// Ids of the XDP programs attached to `iface` in this namespace, from `ip -j -d link`
    /// (the driver's slot and any others the kernel lists): one element per attachment.
    pub fn xdp_program_ids(&self, iface: &str) -> Vec<u64> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "-d", "link", "show", "dev", iface])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        assert!(
            out.status.success(),
            "ip link show {iface} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let xdp = &links[0]["xdp"];
        let mut ids: Vec<u64> = xdp["prog"]["id"].as_u64().into_iter().collect();
        if let Some(attached) = xdp["attached"].as_array() {
            ids.extend(attached.iter().filter_map(|a| a["prog"]["id"].as_u64()));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// One client network joined to the server namespace by a veth pair of its own.
pub struct ClientNet {
    pub ns: Netns,
    /// The pair's end inside the server namespace: where the daemon attaches.
    pub server_iface: &'static str,
    /// The pair's end inside `ns`.
    pub iface: &'static str,
    /// Source addresses of this network's clients.
    pub v4: &'static [&'static str],
    pub v6: &'static [&'static str],
    /// The server's IPv6 address on this link.
    pub server_v6: &'static str,
}

impl ClientNet {
    /// The server address a client with source `src` connects to (same family).
    pub fn server_addr_for(&self, src: &str) -> &'static str {
        if src.contains(':') {
            self.server_v6
        } else {
            AttackTopology::SERVER_V4
        }
    }
}

/// A Glance node between two client networks, each in its own namespace and on its own link:
/// an attacker's and a legitimate client's. The daemon attaches to both server-side veths.
///
/// IPv4: the server's one address, `203.0.113.1`, sits on the legitimate link
/// (`203.0.113.0/24`); the attacker's network `198.51.100.0/24` is routed to the server over
/// its own link, which carries no server IPv4 address. So the whole attacker /24 can be
/// blocked (the daemon refuses to block a prefix holding one of the node's own addresses), as
/// an operator would block a hostile network. IPv6: one /64 per link
/// (`2001:db8:100::/64` attacker, `2001:db8:200::/64` legitimate), the server `::1` on each.
pub struct AttackTopology {
    pub server: Netns,
    pub attacker: ClientNet,
    pub legit: ClientNet,
}

impl AttackTopology {
    pub const SERVER_V4: &'static str = "203.0.113.1";
    /// Several attacker sources: one can be banned while the next attacks, and a benchmark
    /// can use a fresh one per run.
    pub const ATTACKER_V4: [&'static str; 8] = [
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.5",
        "198.51.100.6",
        "198.51.100.7",
        "198.51.100.8",
        "198.51.100.9",
    ];
    /// Sixteen hosts of one /28 (`198.51.100.16/28`) for a flood spread over a network, in
    /// the attacker's namespace beside [`AttackTopology::ATTACKER_V4`].
    pub const SPREAD_V4: [&'static str; 16] = [
        "198.51.100.16",
        "198.51.100.17",
        "198.51.100.18",
        "198.51.100.19",
        "198.51.100.20",
        "198.51.100.21",
        "198.51.100.22",
        "198.51.100.23",
        "198.51.100.24",
        "198.51.100.25",
        "198.51.100.26",
        "198.51.100.27",
        "198.51.100.28",
        "198.51.100.29",
        "198.51.100.30",
        "198.51.100.31",
    ];
    pub const ATTACKER_V6: [&'static str; 3] =
        ["2001:db8:100::2", "2001:db8:100::3", "2001:db8:100::4"];
    pub const ATTACKER_SERVER_V6: &'static str = "2001:db8:100::1";
    pub const LEGIT_V4: [&'static str; 3] = ["203.0.113.2", "203.0.113.3", "203.0.113.4"];
    pub const LEGIT_V6: [&'static str; 2] = ["2001:db8:200::2", "2001:db8:200::3"];
    pub const LEGIT_SERVER_V6: &'static str = "2001:db8:200::1";

    pub fn new() -> Self {
        let server = Netns::new("s");
        let attacker = Netns::new("a");
        let legit = Netns::new("l");
        let (attack_iface, legit_iface, client_iface) =
            ("veth-attack", "veth-legit", "veth-glance");
        for (server_end, client) in [(attack_iface, &attacker), (legit_iface, &legit)] {
            veth_pair(&server, server_end, client, client_iface);
        }

        // The legitimate link: an ordinary shared subnet.
        server.add_addr(legit_iface, &format!("{}/24", Self::SERVER_V4));
        server.add_addr(legit_iface, &format!("{}/64", Self::LEGIT_SERVER_V6));
        for a in Self::LEGIT_V4 {
            legit.add_addr(client_iface, &format!("{a}/24"));
        }
        for a in Self::LEGIT_V6 {
            legit.add_addr(client_iface, &format!("{a}/64"));
        }

        // The attacker link: IPv6 as above; IPv4 routed both ways over the link (ARP answers
        // for any local address, so no server address is needed on it).
        server.add_addr(attack_iface, &format!("{}/64", Self::ATTACKER_SERVER_V6));
        for a in Self::ATTACKER_V4.iter().chain(&Self::SPREAD_V4) {
            attacker.add_addr(client_iface, &format!("{a}/24"));
        }
        for a in Self::ATTACKER_V6 {
            attacker.add_addr(client_iface, &format!("{a}/64"));
        }

        for iface in [attack_iface, legit_iface] {
            server.ip(&["link", "set", iface, "up"]);
        }
        for client in [&attacker, &legit] {
            client.ip(&["link", "set", client_iface, "up"]);
        }
        // Routes need their link up: one through a down device is refused.
        server.ip(&["route", "add", "198.51.100.0/24", "dev", attack_iface]);
        attacker.ip(&[
            "route",
            "add",
            &format!("{}/32", Self::SERVER_V4),
            "dev",
            client_iface,
        ]);

        AttackTopology {
            server,
            attacker: ClientNet {
                ns: attacker,
                server_iface: attack_iface,
                iface: client_iface,
                v4: &Self::ATTACKER_V4,
                v6: &Self::ATTACKER_V6,
                server_v6: Self::ATTACKER_SERVER_V6,
            },
            legit: ClientNet {
                ns: legit,
                server_iface: legit_iface,
                iface: client_iface,
                v4: &Self::LEGIT_V4,
                v6: &Self::LEGIT_V6,
                server_v6: Self::LEGIT_SERVER_V6,
            },
        }
    }

    /// Deletes the attacker's link (`ip link del veth-attack` in the server namespace: both
    /// ends of the pair go, with their addresses and routes), as an operator or a network
    /// manager would.
    pub fn delete_attacker_link(&self) {
        self.server.ip(&["link", "del", self.attacker.server_iface]);
    }

    /// Re-creates the attacker's link deleted by [`AttackTopology::delete_attacker_link`]:
    /// the same names and addresses, the attacker's end up and routed, the server's end
    /// still down. [`AttackTopology::attacker_link_up`] brings it up.
    pub fn recreate_attacker_link(&self) {
        let (server_end, client) = (self.attacker.server_iface, &self.attacker);
        veth_pair(&self.server, server_end, &client.ns, client.iface);
        self.server
            .add_addr(server_end, &format!("{}/64", Self::ATTACKER_SERVER_V6));
        for a in Self::ATTACKER_V4 {
            client.ns.add_addr(client.iface, &format!("{a}/24"));
        }
        for a in Self::ATTACKER_V6 {
            client.ns.add_addr(client.iface, &format!("{a}/64"));
        }
        client.ns.ip(&["link", "set", client.iface, "up"]);
        client.ns.ip(&[
            "route",
            "add",
            &format!("{}/32", Self::SERVER_V4),
            "dev",
            client.iface,
        ]);
    }

    /// Brings the server's end of the attacker's link up and routes the attacker network
    /// over it again (a route needs its link up; one is also flushed when the link goes
    /// down).
    pub fn attacker_link_up(&self) {
        let iface = self.attacker.server_iface;
        self.server.ip(&["link", "set", iface, "up"]);
        self.server
            .ip(&["route", "replace", "198.51.100.0/24", "dev", iface]);
    }

    /// The server-side interfaces, for `limiter run --iface A --iface B`.
    pub fn server_ifaces(&self) -> [&'static str; 2] {
        [self.attacker.server_iface, self.legit.server_iface]
    }

    /// Makes the clients' ends take what the limiter sends back with XDP_TX (its 429 in
    /// Glance's place), as a NIC does; see [`crate::napi::XdpPass`]. Held until dropped.
    pub fn deliver_xdp_tx_to_clients(&self) -> [crate::napi::XdpPass; 2] {
        [
            crate::napi::xdp_pass(&self.attacker.ns, self.attacker.iface),
            crate::napi::xdp_pass(&self.legit.ns, self.legit.iface),
        ]
    }
}

impl Default for AttackTopology {
    fn default() -> Self {
        Self::new()
    }
}

/// `rx_packets` of `iface` in the calling thread's network namespace (run it inside
/// [`Netns::run`]).
pub fn rx_packets(iface: &str) -> u64 {
    // /proc/thread-self: /proc/self/net would show the main thread's namespace.
    let text = fs::read_to_string("/proc/thread-self/net/dev").expect("/proc/net/dev");
    text.lines()
        .find_map(|line| {
            let (name, fields) = line.split_once(':')?;
            (name.trim() == iface).then(|| {
                fields
                    .split_whitespace()
                    .nth(1)
                    .expect("rx_packets")
                    .parse()
                    .unwrap()
            })
        })
        .unwrap_or_else(|| panic!("{iface} not in /proc/net/dev"))
}
