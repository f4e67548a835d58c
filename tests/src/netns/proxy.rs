//! A load balancer between its clients and a Glance node, each in its own namespace: the
//! shape of a cloud where HAProxy fronts Glance (see the `haproxy` module).
//!
//! ```text
//!  client_a ──(203.0.113.0/25, 2001:db8:1::/64)──┐
//!                                                 lb ──(198.51.100.0/24, 2001:db8:51::/64)── glance
//!  client_b ──(203.0.113.128/25, 2001:db8:2::/64)─┘
//! ```
//!
//! The frontend addresses (`FRONTEND_V4`, `FRONTEND_V6`) sit on client A's link; client B
//! reaches them through its default route to the load balancer. The load balancer's
//! namespace also forwards, so a client can reach Glance directly, bypassing HAProxy (a
//! test of what a limiter trusts must be able to send a forged `X-Forwarded-For` straight to
//! the node). Every address comes from the documentation ranges, and every link carries
//! IPv4 and IPv6.

use super::{veth_pair, Netns};

/// One client network: its namespace, its addresses and the load balancer's on its link.
pub struct ProxyClient {
    pub ns: Netns,
    /// The client's end of its link (inside `ns`).
    pub iface: &'static str,
    /// The load balancer's end of this link (inside the load balancer's namespace).
    pub lb_iface: &'static str,
    pub v4: &'static [&'static str],
    pub v6: &'static [&'static str],
}

pub struct ProxyTopology {
    /// The Glance node.
    pub glance: Netns,
    /// The load balancer (HAProxy runs here).
    pub lb: Netns,
    pub client_a: ProxyClient,
    pub client_b: ProxyClient,
}

impl ProxyTopology {
    pub const GLANCE_V4: &'static str = "198.51.100.1";
    pub const GLANCE_V6: &'static str = "2001:db8:51::1";
    /// The load balancer's address on the Glance link: where the node sees HAProxy's
    /// connections come from.
    pub const LB_BACKEND_V4: &'static str = "198.51.100.2";
    pub const LB_BACKEND_V6: &'static str = "2001:db8:51::2";
    /// HAProxy's frontend (on client A's link).
    pub const FRONTEND_V4: &'static str = "203.0.113.1";
    pub const FRONTEND_V6: &'static str = "2001:db8:1::1";
    pub const CLIENT_A_V4: [&'static str; 3] = ["203.0.113.2", "203.0.113.3", "203.0.113.4"];
    pub const CLIENT_A_V6: [&'static str; 2] = ["2001:db8:1::2", "2001:db8:1::3"];
    /// The load balancer on client B's link (client B's gateway).
    pub const LB_B_V4: &'static str = "203.0.113.129";
    pub const LB_B_V6: &'static str = "2001:db8:2::1";
    pub const CLIENT_B_V4: [&'static str; 3] = ["203.0.113.130", "203.0.113.131", "203.0.113.132"];
    pub const CLIENT_B_V6: [&'static str; 2] = ["2001:db8:2::2", "2001:db8:2::3"];

    pub fn new() -> Self {
        let glance = Netns::new("g");
        let lb = Netns::new("p");
        let client_a = Netns::new("a");
        let client_b = Netns::new("b");
        veth_pair(&lb, "veth-glance", &glance, "veth-lb");
        veth_pair(&lb, "veth-a", &client_a, "veth-lb");
        veth_pair(&lb, "veth-b", &client_b, "veth-lb");

        let link = |ns: &Netns, iface: &str, v4: &[&str], v4_len: u8, v6: &[&str]| {
            for a in v4 {
                ns.add_addr(iface, &format!("{a}/{v4_len}"));
            }
            for a in v6 {
                ns.add_addr(iface, &format!("{a}/64"));
            }
            ns.ip(&["link", "set", iface, "up"]);
        };
        link(
            &lb,
            "veth-glance",
            &[Self::LB_BACKEND_V4],
            24,
            &[Self::LB_BACKEND_V6],
        );
        link(
            &glance,
            "veth-lb",
            &[Self::GLANCE_V4],
            24,
            &[Self::GLANCE_V6],
        );
        link(
            &lb,
            "veth-a",
            &[Self::FRONTEND_V4],
            25,
            &[Self::FRONTEND_V6],
        );
        link(
            &client_a,
            "veth-lb",
            &Self::CLIENT_A_V4,
            25,
            &Self::CLIENT_A_V6,
        );
        link(&lb, "veth-b", &[Self::LB_B_V4], 25, &[Self::LB_B_V6]);
        link(
            &client_b,
            "veth-lb",
            &Self::CLIENT_B_V4,
            25,
            &Self::CLIENT_B_V6,
        );

        // Everyone but the load balancer routes through it; it forwards, so clients and
        // Glance reach each other too (only for tests that bypass HAProxy on purpose).
        for (ns, v4, v6) in [
            (&glance, Self::LB_BACKEND_V4, Self::LB_BACKEND_V6),
            (&client_a, Self::FRONTEND_V4, Self::FRONTEND_V6),
            (&client_b, Self::LB_B_V4, Self::LB_B_V6),
        ] {
            ns.ip(&["route", "add", "default", "via", v4]);
            ns.ip(&["-6", "route", "add", "default", "via", v6]);
        }
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            super::run(&["ip", "netns", "exec", lb.name(), "sysctl", "-qw", key]);
        }

        ProxyTopology {
            glance,
            lb,
            client_a: ProxyClient {
                ns: client_a,
                iface: "veth-lb",
                lb_iface: "veth-a",
                v4: &Self::CLIENT_A_V4,
                v6: &Self::CLIENT_A_V6,
            },
            client_b: ProxyClient {
                ns: client_b,
                iface: "veth-lb",
                lb_iface: "veth-b",
                v4: &Self::CLIENT_B_V4,
                v6: &Self::CLIENT_B_V6,
            },
        }
    }

    /// The Glance node's end of its link to the load balancer (where a limiter attaches).
    pub const GLANCE_IFACE: &'static str = "veth-lb";

    /// HAProxy's frontend address of the same family as the client address `src`.
    pub fn frontend_for(src: &str) -> &'static str {
        if src.contains(':') {
            Self::FRONTEND_V6
        } else {
            Self::FRONTEND_V4
        }
    }
}

impl Default for ProxyTopology {
    fn default() -> Self {
        Self::new()
    }
}
