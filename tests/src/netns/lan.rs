//! A switched network between test namespaces: a Linux bridge in a namespace of its own, and
//! one veth pair per attached namespace (the bridge's port at one end, the member's interface
//! at the other). Every member reaches every other one directly, as hosts on one management
//! network do; a member's interface is an ordinary veth end, where XDP attaches.
//!
//! The bridge's namespace holds no address and runs nothing: dropping the `Lan` deletes it,
//! and with it every port and (each veth pair going as a whole) every member's interface.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{veth_pair, Netns};

pub struct Lan {
    ns: Netns,
    ports: AtomicU32,
}

/// The bridge's name inside the LAN's namespace.
const BRIDGE: &str = "br0";

impl Lan {
    /// An empty LAN: a namespace with a bridge, up, spanning tree off (ports forward at once).
    pub fn new() -> Self {
        let ns = Netns::new("w");
        ns.ip(&["link", "add", BRIDGE, "type", "bridge", "stp_state", "0"]);
        ns.ip(&["link", "set", BRIDGE, "up"]);
        Lan {
            ns,
            ports: AtomicU32::new(0),
        }
    }

    /// Joins `member` to the LAN through its interface `iface` (created here) with the
    /// addresses `cidrs` (`"198.51.100.11/24"`, `"2001:db8:51::11/64"`), and brings it up.
    /// Returns the bridge's port for it, inside [`ns`](Self::ns): the veth's other end,
    /// which needs an XDP program (`napi::xdp_pass`) before a program on `iface` can answer
    /// with XDP_TX.
    pub fn attach(&self, member: &Netns, iface: &str, cidrs: &[&str]) -> String {
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::Relaxed));
        veth_pair(&self.ns, &port, member, iface);
        self.ns.ip(&["link", "set", &port, "master", BRIDGE, "up"]);
        for cidr in cidrs {
            member.add_addr(iface, cidr);
        }
        member.ip(&["link", "set", iface, "up"]);
        port
    }

    /// The bridge's namespace (for `tcpdump` or counters while debugging).
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}
