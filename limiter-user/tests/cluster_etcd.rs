//! The cluster's synchronisation against a real etcd (Debian's `etcd-server`, one member on
//! the loopback, started here): rules travel both ways, summaries arrive, an outage loses
//! nothing and brings nothing expired back. The daemons around it are tested in
//! tests/tests/cluster_e2e.rs; here the engine's side ([`Cluster`]) is driven alone, with a
//! rule store per node.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use limiter_user::{
    cluster::{status::ClusterState, Cluster, ClusterSettings},
    rules::{Action, Scope},
    store::{Origin, RuleStore, StoredRule},
};

const DEADLINE: Duration = Duration::from_secs(15);

/// One etcd member on 127.0.0.1, killed (and its data removed) on drop.
struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_installed() -> bool {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "etcd is not installed; `cargo xtask setup` installs it (Debian etcd-server)"
        );
        eprintln!("SKIPPED: etcd is not installed (cargo xtask setup installs it)");
    }
    found
}

impl Etcd {
    fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            data: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.resume();
        etcd
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (again) on the same data and ports, and waits until it answers.
    fn resume(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(self.data.path().join("member"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("solo={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        wait_for("etcd to answer", || {
            Command::new("etcdctl")
                .args(["--endpoints", &self.endpoint(), "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node: its store, and its side of the cluster.
struct Node {
    store: RuleStore,
    cluster: Option<Cluster>,
    dir: PathBuf,
    settings: ClusterSettings,
    /// Where a stand-in store lives while the node's own is closed for a restart.
    scratch: tempfile::TempDir,
}

impl Node {
    fn start(etcd: &Etcd, name: &str, dir: &Path) -> Node {
        let settings = ClusterSettings {
            etcd_endpoints: vec![etcd.endpoint()],
            node_name: Some(name.into()),
            ..ClusterSettings::default()
        };
        let store = RuleStore::open(dir).unwrap();
        let cluster = Cluster::start(settings.clone(), dir, Duration::from_millis(200)).unwrap();
        Node {
            store,
            cluster: Some(cluster),
            dir: dir.to_path_buf(),
            settings,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn cluster(&mut self) -> &mut Cluster {
        self.cluster.as_mut().unwrap()
    }

    /// What the engine does between polls.
    fn step(&mut self) {
        let cluster = self.cluster.as_mut().unwrap();
        cluster.apply_incoming(&mut self.store).unwrap();
    }

    fn block(&mut self, net: &str, ttl: Option<Duration>) {
        let rule = StoredRule {
            prefix: net.parse().unwrap(),
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            origin: Origin::Manual,
            reason: "test".into(),
            created: SystemTime::now(),
            expires: ttl.map(|t| SystemTime::now() + t),
            node: Some(self.cluster().node().to_string()),
        };
        let key = rule.key();
        let generation = self.cluster().will_change([key]).unwrap();
        self.store.upsert(vec![rule]).unwrap();
        let cluster = self.cluster.as_mut().unwrap();
        cluster.changed(&self.store, [key], generation);
    }

    fn unblock(&mut self, net: &str) {
        let prefix: IpNet = net.parse().unwrap();
        let key = (prefix, Action::Block);
        let generation = self.cluster().will_change([key]).unwrap();
        self.store.remove(&[prefix], Action::Block).unwrap();
        let cluster = self.cluster.as_mut().unwrap();
        cluster.changed(&self.store, [key], generation);
    }

    fn has(&self, net: &str) -> bool {
        let prefix: IpNet = net.parse().unwrap();
        self.store
            .active(SystemTime::now())
            .any(|r| r.prefix == prefix && r.action == Action::Block)
    }

    fn state(&self) -> ClusterState {
        self.cluster.as_ref().unwrap().health().state
    }

    /// As after a restart: the store and the journal reopened from disk.
    fn restart(&mut self) {
        self.cluster = None;
        let dir = self.dir.clone();
        // The directory's lock goes with the old store.
        self.store = RuleStore::open(self.scratch.path()).unwrap();
        self.store = RuleStore::open(&dir).unwrap();
        self.cluster =
            Some(Cluster::start(self.settings.clone(), &dir, Duration::from_millis(200)).unwrap());
    }
}

fn until(nodes: &mut [&mut Node], what: &str, mut done: impl FnMut(&[&mut Node]) -> bool) {
    wait_for(what, || {
        for node in nodes.iter_mut() {
            node.step();
        }
        done(nodes)
    });
}

/// Nodes `glance-1` and `glance-2`, in `dirs`, once both reached etcd.
fn two_connected_nodes(etcd: &Etcd, dirs: &[tempfile::TempDir; 2]) -> (Node, Node) {
    let mut a = Node::start(etcd, "glance-1", dirs[0].path());
    let mut b = Node::start(etcd, "glance-2", dirs[1].path());
    until(&mut [&mut a, &mut b], "both connected", |n| {
        n.iter().all(|n| n.state() == ClusterState::Connected)
    });
    (a, b)
}

#[test]
fn rules_travel_both_ways_and_expire_everywhere() {
    if !etcd_installed() {
        return;
    }
    let etcd = Etcd::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (mut a, mut b) = two_connected_nodes(&etcd, &dirs);

    a.block("203.0.113.9/32", None);
    until(&mut [&mut a, &mut b], "the block on node 2", |n| {
        n[1].has("203.0.113.9/32")
    });
    let there = b
        .store
        .rules()
        .iter()
        .find(|r| r.prefix == "203.0.113.9/32".parse::<IpNet>().unwrap())
        .unwrap()
        .clone();
    assert_eq!(there.node.as_deref(), Some("glance-1"));
    assert_eq!(there.origin, Origin::Manual);

    b.unblock("203.0.113.9/32");
    until(&mut [&mut a, &mut b], "the unblock on node 1", |n| {
        !n[0].has("203.0.113.9/32")
    });

    // A lease ends the rule everywhere (etcd deletes it; each node also expires it itself).
    a.block("203.0.113.10/32", Some(Duration::from_secs(3)));
    until(&mut [&mut a, &mut b], "the expiring block on node 2", |n| {
        n[1].has("203.0.113.10/32")
    });
    until(&mut [&mut a, &mut b], "the block's expiry", |n| {
        !n[0].has("203.0.113.10/32") && !n[1].has("203.0.113.10/32")
    });
    assert!(a.cluster().status().pending_changes == 0);
}

#[test]
fn an_outage_loses_nothing_and_brings_nothing_expired_back() {
    if !etcd_installed() {
        return;
    }
    let mut etcd = Etcd::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = Node::start(&etcd, "glance-1", dirs[0].path());
    let mut b = Node::start(&etcd, "glance-2", dirs[1].path());
    a.block("203.0.113.1/32", None);
    a.block("203.0.113.2/32", None);
    until(&mut [&mut a, &mut b], "both blocks on node 2", |n| {
        n[1].has("203.0.113.1/32") && n[1].has("203.0.113.2/32")
    });

    etcd.kill();
    until(&mut [&mut a, &mut b], "both degraded", |n| {
        n.iter().all(|n| n.state() == ClusterState::Degraded)
    });
    assert!(a.cluster().health().degraded_since.is_some());
    // During the outage: a new block on node 1, an unblock on node 2, a short block that
    // ends before etcd returns; and node 1 restarts.
    a.block("203.0.113.3/32", None);
    b.unblock("203.0.113.1/32");
    a.block("203.0.113.4/32", Some(Duration::from_secs(1)));
    a.restart();
    assert!(
        a.has("203.0.113.2/32") && a.has("203.0.113.3/32"),
        "rules survive a restart"
    );
    wait_for("the short block to end", || !a.has("203.0.113.4/32"));
    assert!(b.has("203.0.113.2/32"), "an outage undoes nothing");

    etcd.resume();
    until(&mut [&mut a, &mut b], "reconciled", |n| {
        n.iter().all(|n| n.state() == ClusterState::Connected)
            && n[1].has("203.0.113.3/32")
            && !n[0].has("203.0.113.1/32")
    });
    for node in [&a, &b] {
        assert!(node.has("203.0.113.2/32"));
        assert!(node.has("203.0.113.3/32"));
        assert!(!node.has("203.0.113.1/32"));
        assert!(!node.has("203.0.113.4/32"), "nothing expired comes back");
    }
    until(&mut [&mut a, &mut b], "nothing pending", |n| {
        n.iter()
            .all(|n| n.cluster.as_ref().unwrap().status().pending_changes == 0)
    });
}

#[test]
fn summaries_reach_the_other_nodes_and_leave_with_them() {
    if !etcd_installed() {
        return;
    }
    let etcd = Etcd::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (mut a, mut b) = two_connected_nodes(&etcd, &dirs);
    let mut summary = a.cluster().next_summary(7);
    summary.sources.push((
        "203.0.113.9".parse().unwrap(),
        limiter_user::cluster::summary::Counts4([0, 40, 40, 0]),
    ));
    a.cluster().publish(summary.clone(), 1, 0);
    wait_for("node 2 to see node 1's summary", || {
        b.cluster().peers().iter().any(|p| p.node == "glance-1")
    });
    assert_eq!(b.cluster().peers()[0].sources, summary.sources);
    let status = b.cluster().status();
    assert!(status.nodes.iter().any(|n| n.name == "glance-1"));
    // A stopped node revokes its lease: it leaves the others' view at once.
    a.cluster = None;
    wait_for("node 1 to leave node 2's view", || {
        !b.cluster()
            .status()
            .nodes
            .iter()
            .any(|n| n.name == "glance-1")
    });
}
