//! Several Glance nodes behind one load balancer, sharing a database and an etcd cluster: the
//! shape of a cloud whose limiters share bans (see `etcd`, `mariadb`, `glance::SharedBackend`).
//!
//! ```text
//!                                         ┌── node 1  198.51.100.11   (veth-lan: a limiter)
//!  client ──(203.0.113.0/24, ── lb ──LAN──┼── node 2  198.51.100.12   …
//!            2001:db8:1::/64)   .1     │  ├── etcd    198.51.100.21-23 (EtcdCluster::start_on)
//!           attackers, legit     198.51.100.1 └── MariaDB 198.51.100.31
//! ```
//!
//! The private side is one switched LAN (a bridge, [`Lan`]): every node reaches every etcd
//! member and the database directly, as hosts on a management network do. HAProxy runs in
//! `lb`; its public interface faces the client namespace, where attackers and legitimate
//! clients have addresses of their own (an edge limiter attaches to `lb`'s public interface,
//! a node's limiter to the node's interface on the LAN). `lb` also forwards, so a client can
//! reach a node directly, bypassing HAProxy (a test of what a limiter trusts needs that).
//! Nothing is started here: [`start_etcd`](ClusterTopology::start_etcd),
//! [`start_mariadb`](ClusterTopology::start_mariadb) and
//! [`start_glance`](ClusterTopology::start_glance) start what a test needs.

use std::path::Path;

use super::{veth_pair, Lan, Netns};
use crate::{
    etcd::EtcdCluster,
    glance::{RealGlance, SharedBackend},
    haproxy::HaProxyConfig,
    mariadb::MariaDb,
    napi::{xdp_pass, XdpPass},
};

/// One Glance node's namespace and its address on the LAN.
pub struct ClusterNode {
    pub ns: Netns,
    pub addr: &'static str,
    /// The LAN's end of the node's link (in `lan.ns()`).
    pub lan_port: String,
}

pub struct ClusterTopology {
    /// The load balancer (HAProxy runs here).
    pub lb: Netns,
    /// Attackers and legitimate clients, each with addresses of their own.
    pub client: Netns,
    pub nodes: Vec<ClusterNode>,
    /// The database's namespace.
    pub db: Netns,
    pub lan: Lan,
}

impl ClusterTopology {
    /// The load balancer on the LAN: where nodes see HAProxy's connections come from.
    pub const LB_PRIVATE_V4: &'static str = "198.51.100.1";
    /// Node addresses, in order; at most this many nodes.
    pub const NODE_V4: [&'static str; 9] = [
        "198.51.100.11",
        "198.51.100.12",
        "198.51.100.13",
        "198.51.100.14",
        "198.51.100.15",
        "198.51.100.16",
        "198.51.100.17",
        "198.51.100.18",
        "198.51.100.19",
    ];
    pub const DB_V4: &'static str = "198.51.100.31";
    /// HAProxy's frontend, on the public link.
    pub const FRONTEND_V4: &'static str = "203.0.113.1";
    pub const FRONTEND_V6: &'static str = "2001:db8:1::1";
    pub const ATTACKER_V4: [&'static str; 8] = [
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.4",
        "203.0.113.5",
        "203.0.113.6",
        "203.0.113.7",
        "203.0.113.8",
        "203.0.113.9",
    ];
    pub const ATTACKER_V6: [&'static str; 2] = ["2001:db8:1::2", "2001:db8:1::3"];
    pub const LEGIT_V4: [&'static str; 3] = ["203.0.113.100", "203.0.113.101", "203.0.113.102"];
    pub const LEGIT_V6: [&'static str; 2] = ["2001:db8:1::100", "2001:db8:1::101"];
    /// Every namespace's interface on the LAN (a node's is where its limiter attaches).
    pub const LAN_IFACE: &'static str = "veth-lan";
    /// The load balancer's public interface (where an edge limiter attaches).
    pub const LB_PUBLIC_IFACE: &'static str = "veth-pub";
    /// The client's end of the public link.
    pub const CLIENT_IFACE: &'static str = "veth-lb";

    /// The network for `nodes` Glance nodes (1 to 9), with nothing running.
    pub fn new(nodes: usize) -> Self {
        assert!(
            (1..=Self::NODE_V4.len()).contains(&nodes),
            "1 to {} nodes, not {nodes}",
            Self::NODE_V4.len()
        );
        let lan = Lan::new();
        let lb = Netns::new("p");
        let client = Netns::new("c");
        let db = Netns::new("d");
        lan.attach(
            &lb,
            Self::LAN_IFACE,
            &[&format!("{}/24", Self::LB_PRIVATE_V4)],
        );
        lan.attach(&db, Self::LAN_IFACE, &[&format!("{}/24", Self::DB_V4)]);
        let nodes: Vec<ClusterNode> = Self::NODE_V4[..nodes]
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let ns = Netns::new(&format!("n{}", i + 1));
                let lan_port = lan.attach(&ns, Self::LAN_IFACE, &[&format!("{addr}/24")]);
                // Replies to clients that bypass HAProxy go back through it.
                ns.ip(&["route", "add", "default", "via", Self::LB_PRIVATE_V4]);
                ClusterNode { ns, addr, lan_port }
            })
            .collect();

        veth_pair(&lb, Self::LB_PUBLIC_IFACE, &client, Self::CLIENT_IFACE);
        lb.add_addr(Self::LB_PUBLIC_IFACE, &format!("{}/24", Self::FRONTEND_V4));
        lb.add_addr(Self::LB_PUBLIC_IFACE, &format!("{}/64", Self::FRONTEND_V6));
        lb.ip(&["link", "set", Self::LB_PUBLIC_IFACE, "up"]);
        for a in Self::ATTACKER_V4.iter().chain(&Self::LEGIT_V4) {
            client.add_addr(Self::CLIENT_IFACE, &format!("{a}/24"));
        }
        for a in Self::ATTACKER_V6.iter().chain(&Self::LEGIT_V6) {
            client.add_addr(Self::CLIENT_IFACE, &format!("{a}/64"));
        }
        client.ip(&["link", "set", Self::CLIENT_IFACE, "up"]);
        client.ip(&["route", "add", "default", "via", Self::FRONTEND_V4]);
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            super::run(&["ip", "netns", "exec", lb.name(), "sysctl", "-qw", key]);
        }

        ClusterTopology {
            lb,
            client,
            nodes,
            db,
            lan,
        }
    }

    /// An XDP program that passes everything on the far end of every link a limiter may
    /// attach to (each node's LAN port, the client's end of the public link): a veth delivers
    /// what a limiter sends back with XDP_TX only then (see `napi::xdp_pass`). Detached when
    /// dropped.
    pub fn xdp_pass_peers(&self) -> Vec<XdpPass> {
        let mut peers: Vec<XdpPass> = self
            .nodes
            .iter()
            .map(|node| xdp_pass(self.lan.ns(), &node.lan_port))
            .collect();
        peers.push(xdp_pass(&self.client, Self::CLIENT_IFACE));
        peers
    }

    /// A three-member etcd on the LAN ([`EtcdCluster::MEMBER_V4`]), healthy.
    pub fn start_etcd(&self) -> EtcdCluster {
        EtcdCluster::start_on(&self.lan)
    }

    /// As [`start_etcd`](Self::start_etcd), with client TLS and client-certificate
    /// authentication ([`EtcdCluster::tls`]).
    pub fn start_etcd_tls(&self) -> EtcdCluster {
        EtcdCluster::start_tls_on(&self.lan)
    }

    /// MariaDB in the database namespace, on [`DB_V4`](Self::DB_V4), with the `glance`
    /// database and user.
    pub fn start_mariadb(&self) -> MariaDb {
        MariaDb::start_in(&self.db, Self::DB_V4)
    }

    /// Glance on every node, on `port`, sharing `db` and one image directory: the schema is
    /// created once (from the first node), then each node starts and is probed from the
    /// load balancer's LAN address.
    pub fn start_glance(&self, db: &MariaDb, port: u16) -> GlanceNodes {
        let images = tempfile::Builder::new()
            .prefix("glance-limiter-images-")
            .tempdir()
            .expect("the shared image directory");
        let shared = SharedBackend {
            database_url: db.glance_url(),
            image_dir: images.path().to_owned(),
        };
        RealGlance::db_sync(&self.nodes[0].ns, &shared.database_url);
        let nodes = self
            .nodes
            .iter()
            .map(|node| {
                RealGlance::start_shared(
                    &node.ns,
                    node.addr,
                    port,
                    &self.lb,
                    Self::LB_PRIVATE_V4,
                    node.addr,
                    &shared,
                )
            })
            .collect();
        GlanceNodes { nodes, images }
    }

    /// HAProxy's configuration for this topology: frontends on both public addresses at
    /// `frontend_port` (TLS, `option forwardfor`, round-robin: see [`HaProxyConfig`]), one
    /// server per node at `glance_port`, `glance1` being node 1. Start it in `lb`.
    pub fn haproxy(&self, frontend_port: u16, glance_port: u16) -> HaProxyConfig {
        let mut config = HaProxyConfig::new()
            .bind(&format!("{}:{frontend_port}", Self::FRONTEND_V4))
            .bind(&format!("[{}]:{frontend_port}", Self::FRONTEND_V6));
        for node in &self.nodes {
            config = config.server(&format!("{}:{glance_port}", node.addr));
        }
        config
    }

    /// HAProxy's frontend address of the same family as the client address `src`.
    pub fn frontend_for(src: &str) -> &'static str {
        if src.contains(':') {
            Self::FRONTEND_V6
        } else {
            Self::FRONTEND_V4
        }
    }
}

/// The Glance nodes of a [`ClusterTopology`] and their shared image directory, removed after
/// every node has stopped.
pub struct GlanceNodes {
    pub nodes: Vec<RealGlance>,
    images: tempfile::TempDir,
}

impl GlanceNodes {
    pub fn image_dir(&self) -> &Path {
        self.images.path()
    }
}
