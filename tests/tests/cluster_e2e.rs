//! Limiters on three real Glance nodes behind the real HAProxy (round-robin, one MariaDB
//! database), sharing rules and counts through a real three-member etcd, and one on the load
//! balancer in the edge role: a flood spread over the nodes is banned by its cluster-wide rate
//! on every node, manual rules travel between nodes, the edge drops banned clients before
//! HAProxy, and etcd's faults (a member lost, all of it stopped, a node restarted meanwhile)
//! lose nothing and undo nothing.
//!
//! Topology: `ClusterTopology` (tests/src/netns/cluster.rs). Every wait has a deadline on an
//! observable condition; every generator is bounded in requests and time.

use std::{
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use limiter_tests::{
    daemon::{host_prefix, Daemon, DaemonSetup},
    http::connect_from,
    https::HttpsClient,
    netns::{ClusterTopology as Topo, Netns},
    wait::wait_for,
};
use serde_json::Value;

const PORT: u16 = 9292;
const CREATE: &str = r#"{"name":"cluster-e2e","disk_format":"raw","container_format":"bare"}"#;
/// Every node's `image_creates_per_minute`: the spread flood sends this many creates in all
/// and then half as many again, so no node alone (a third of them) comes near it.
const CREATES_PER_MINUTE: usize = 18;
/// The issue's targets (a cluster-wide ban on every node, a manual rule on another), printed
/// next to what this run measured. Tests check behaviour, not speed: on a machine whose CPUs
/// another job keeps busy a second can pass between two steps, so the asserted bound is the
/// deadline below; `cargo xtask bench` (tests/benches/cluster.rs) measures the times.
const CLUSTER_BAN_TARGET: Duration = Duration::from_secs(3);
const RULE_TRAVEL_TARGET: Duration = Duration::from_secs(1);
/// For every wait (bans, rules travelling, etcd elections, daemons starting), generous for a
/// busy two-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A daemon log's last lines, for a failure's message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn node_name(i: usize) -> String {
    format!("glance-{}", i + 1)
}

/// A limiter on node `i`'s LAN interface, trusting HAProxy, in the cluster.
fn node_daemon(topo: &Topo, endpoints: &[String], i: usize) -> Daemon {
    DaemonSetup::new(&topo.nodes[i].ns, &[Topo::LAN_IFACE])
        .trusted_proxy(Topo::LB_PRIVATE_V4)
        .policy("image_creates_per_minute", &CREATES_PER_MINUTE.to_string())
        .policy("aggregate", "false")
        .cluster(endpoints, &node_name(i), "glance")
        .start()
}

fn cluster_status(daemon: &Daemon) -> Value {
    let text = daemon.cli_ok(&["cluster", "status", "--json"]);
    let reply: Value = serde_json::from_str(&text).expect("cluster status --json is JSON");
    reply.get("cluster").cloned().unwrap_or(reply)
}

fn state(daemon: &Daemon) -> String {
    cluster_status(daemon)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One connection attempt: long enough for a handshake on a busy machine, short of the
/// SYN's first retransmission at 1 s (a ban drops the SYN, so a banned source times out).
const CONNECT_ATTEMPT: Duration = Duration::from_millis(900);
/// How long a source that should get through may take to: attempts are repeated until then,
/// as a handshake under a CPU hog can miss one attempt's time.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

fn try_connect(ns: &Netns, src: &str, dst: &str) -> bool {
    let (src, dst) = (src.to_string(), dst.to_string());
    ns.run(move || connect_from(&src, &dst, PORT, CONNECT_ATTEMPT).is_ok())
}

/// Whether a TCP connection from `src` to `dst:PORT` opens within [`CONNECT_DEADLINE`].
fn connects(ns: &Netns, src: &str, dst: &str) -> bool {
    let until = Instant::now() + CONNECT_DEADLINE;
    loop {
        if try_connect(ns, src, dst) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

/// Whether a connection attempt from `src` to `dst:PORT` goes unanswered (its SYN dropped).
fn refused(ns: &Netns, src: &str, dst: &str) -> bool {
    !try_connect(ns, src, dst)
}

/// `count` image creates from `src` through HAProxy on one keep-alive connection; the
/// instant of each answer and its status (`None`: no answer).
fn creates_through_lb(topo: &Topo, src: &str, count: usize) -> Vec<(Instant, Option<u16>)> {
    let frontend = SocketAddr::new(Topo::FRONTEND_V4.parse().unwrap(), PORT).to_string();
    let src = src.to_string();
    topo.client.run(move || {
        let mut client = HttpsClient::new(&src, &frontend).io_timeout(Duration::from_secs(5));
        (0..count)
            .map(|_| {
                let status = client
                    .request("POST", "/v2/images", CREATE)
                    .ok()
                    .map(|r| r.status);
                (Instant::now(), status)
            })
            .collect()
    })
}

/// `count` image creates from `src` straight to a node (through the load balancer's
/// forwarding, not HAProxy), each on a new connection.
fn creates_direct(topo: &Topo, src: &str, node: &str, count: usize) -> Vec<Option<u16>> {
    let dst = SocketAddr::new(node.parse().unwrap(), PORT).to_string();
    let src = src.to_string();
    topo.client.run(move || {
        (0..count)
            .map(|_| {
                HttpsClient::new(&src, &dst)
                    .plain()
                    .keep_alive(false)
                    .io_timeout(Duration::from_secs(1))
                    .request("POST", "/v2/images", CREATE)
                    .ok()
                    .map(|r| r.status)
            })
            .collect()
    })
}

#[test]
fn three_nodes_and_an_edge_share_their_defence_through_etcd() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new(3);
    let mut etcd = topo.start_etcd();
    let endpoints = etcd.client_endpoints();
    let db = topo.start_mariadb();
    let glance = topo.start_glance(&db, PORT);
    let lb = topo.haproxy(PORT, PORT).start(&topo.lb);
    let _peers = topo.xdp_pass_peers();
    let mut nodes: Vec<Daemon> = (0..3).map(|i| node_daemon(&topo, &endpoints, i)).collect();
    let edge = DaemonSetup::new(&topo.lb, &[Topo::LB_PUBLIC_IFACE])
        .ports(&[PORT])
        .cluster(&endpoints, "edge", "edge")
        .start();
    for daemon in nodes.iter().chain([&edge]) {
        wait_for("every limiter connected to etcd", DEADLINE, || {
            (state(daemon) == "connected").then_some(())
        });
    }
    wait_for("node 1 to see the other three", DEADLINE, || {
        let seen = cluster_status(&nodes[0])["nodes"].as_array()?.len();
        (seen == 4).then_some(())
    });

    // 1. A flood spread over the three nodes: a third of it each, under the threshold
    //    everywhere; summed, above it. Banned on every node by its cluster-wide rate.
    let attacker = Topo::ATTACKER_V4[0];
    let total = CREATES_PER_MINUTE * 3 / 2;
    let answers = creates_through_lb(&topo, attacker, total);
    let crossed = answers
        .iter()
        .filter(|(_, status)| *status == Some(201))
        .nth(CREATES_PER_MINUTE - 1)
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("the flood never crossed the threshold: {answers:?}"));
    let attacker_rule = host_prefix(attacker);
    for (i, node) in nodes.iter().enumerate() {
        let rule = node
            .wait_for_rule(&attacker_rule, DEADLINE)
            .unwrap_or_else(|| panic!("node {} never banned the spread flood", i + 1));
        let banned_after = crossed.elapsed();
        println!(
            "node {}: the spread flood is banned {banned_after:?} after crossing (target \
             {CLUSTER_BAN_TARGET:?}; rule: {rule})",
            i + 1
        );
    }
    let created_per_node: Vec<usize> = glance
        .nodes
        .iter()
        .map(|g| g.access_log("POST", "/v2/images", 201).len())
        .collect();
    assert!(
        created_per_node.iter().all(|n| *n < CREATES_PER_MINUTE),
        "every node stayed under its threshold: {created_per_node:?}"
    );
    let reason = nodes[0].block_rule(&attacker_rule).unwrap()["reason"].to_string();
    assert!(reason.contains("across the cluster"), "{reason}");

    // 2. The edge drops the banned client before HAProxy; others still get through.
    wait_for("the edge to drop the banned client", DEADLINE, || {
        refused(&topo.client, attacker, Topo::FRONTEND_V4).then_some(())
    });
    assert!(connects(&topo.client, Topo::LEGIT_V4[0], Topo::FRONTEND_V4));
    assert!(edge.block_rule(&attacker_rule).is_some());

    // 3. A manual block on node 1 drops on node 3 within a second; node 3's unblock lifts it
    //    on node 1.
    let blocked = Topo::ATTACKER_V4[1];
    let blocked_rule = host_prefix(blocked);
    assert!(connects(&topo.client, blocked, topo.nodes[2].addr));
    nodes[0].cli_ok(&["block", blocked, "--reason", "cluster test"]);
    let start = Instant::now();
    let rule = wait_for("node 3 to get node 1's block", DEADLINE, || {
        nodes[2].block_rule(&blocked_rule)
    });
    let travelled = start.elapsed();
    println!(
        "a manual block travels node 1 -> node 3 in {travelled:?} (target {RULE_TRAVEL_TARGET:?})"
    );
    assert_eq!(
        rule["node"], "glance-1",
        "the rule records its node: {rule}"
    );
    assert!(refused(&topo.client, blocked, topo.nodes[2].addr));
    let listed = nodes[2].cli_ok(&["list"]);
    println!("limiter list on node 3:\n{listed}");
    assert!(listed.contains("glance-1"), "`list` shows the node");
    nodes[2].cli_ok(&["unblock", blocked]);
    let start = Instant::now();
    assert!(nodes[0].wait_for_no_rule(&blocked_rule, DEADLINE));
    let travelled = start.elapsed();
    println!(
        "an unblock travels node 3 -> node 1 in {travelled:?} (target {RULE_TRAVEL_TARGET:?})"
    );
    assert!(connects(&topo.client, blocked, topo.nodes[0].addr));

    // 4. One etcd member lost: nothing changes.
    let leader = etcd.leader().expect("a leader");
    etcd.kill_member(leader);
    let second = Topo::ATTACKER_V4[2];
    nodes[1].cli_ok(&["block", second]);
    for (i, node) in nodes.iter().enumerate() {
        assert!(
            node.wait_for_rule(&host_prefix(second), DEADLINE).is_some(),
            "node {} with one etcd member down:\n--- node 2 ---\n{}\n--- node {} ---\n{}",
            i + 1,
            tail(&nodes[1].log()),
            i + 1,
            tail(&node.log())
        );
    }
    assert!(nodes.iter().all(|n| state(n) == "connected"));

    // 5. All of etcd stopped: degraded, bans hold, local decisions go on, a node restarts
    //    with its rules; changes made meanwhile wait.
    etcd.stop_all();
    for (i, node) in nodes.iter().enumerate() {
        wait_for(&format!("node {} degraded", i + 1), DEADLINE, || {
            (state(node) == "degraded").then_some(())
        });
        assert!(cluster_status(node)["degraded_since"].is_string());
        assert_eq!(node.status_json()["cluster"]["state"], "degraded");
    }
    for node in &nodes {
        assert!(node.block_rule(&attacker_rule).is_some(), "bans hold");
    }
    assert!(refused(&topo.client, second, topo.nodes[0].addr));
    // A flood straight at node 1 is banned there on node 1's own counts.
    let local = Topo::ATTACKER_V4[3];
    let direct = creates_direct(&topo, local, topo.nodes[0].addr, CREATES_PER_MINUTE + 2);
    assert!(
        nodes[0]
            .wait_for_rule(&host_prefix(local), DEADLINE)
            .is_some(),
        "a local decision during the outage: {direct:?}"
    );
    // Made during the outage: an unblock on node 2, a block that ends before etcd is back.
    nodes[1].cli_ok(&["unblock", second]);
    let short = Topo::ATTACKER_V4[4];
    nodes[0].cli_ok(&["block", short, "--ttl", "2s"]);
    nodes[2].restart();
    wait_for("node 3 back", DEADLINE, || {
        (nodes[2].cli(&["status"]).status.success()).then_some(())
    });
    assert!(
        nodes[2].block_rule(&attacker_rule).is_some(),
        "a node restarted during the outage keeps its rules"
    );
    assert!(nodes[0].wait_for_no_rule(&host_prefix(short), DEADLINE));

    // 6. etcd back: reconciled everywhere.
    etcd.start_all();
    for (i, node) in nodes.iter().enumerate() {
        wait_for(&format!("node {} reconciled", i + 1), DEADLINE, || {
            let ok = state(node) == "connected"
                && node.block_rule(&host_prefix(local)).is_some()
                && node.block_rule(&host_prefix(second)).is_none();
            ok.then_some(())
        });
        assert!(node.block_rule(&attacker_rule).is_some());
        assert!(
            node.block_rule(&host_prefix(short)).is_none(),
            "nothing expired comes back"
        );
    }
    assert!(edge.wait_for_rule(&host_prefix(local), DEADLINE).is_some());
    let status = nodes[0].cli_ok(&["cluster", "status"]);
    println!("{status}");
    drop(lb);
}

/// etcd with client TLS and `--client-cert-auth`, as real deployments run it: a node with the
/// CA and a client certificate connects and shares a rule; a node without the certificate is
/// refused, says so in `cluster status`, and keeps working alone (its own rules apply).
#[test]
fn etcd_over_tls_with_client_certificates() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new(2);
    let etcd = topo.start_etcd_tls();
    let tls = etcd.tls().expect("a TLS cluster has certificates");
    let endpoints = etcd.client_endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("https://")));
    let quoted = |path: &std::path::Path| format!("{:?}", path.display().to_string());
    let trusted = DaemonSetup::new(&topo.nodes[0].ns, &[Topo::LAN_IFACE])
        .cluster(&endpoints, "glance-1", "glance")
        .cluster_key("ca_file", &quoted(&tls.ca))
        .cluster_key("cert_file", &quoted(&tls.client_cert))
        .cluster_key("key_file", &quoted(&tls.client_key))
        .start();
    let stranger = DaemonSetup::new(&topo.nodes[1].ns, &[Topo::LAN_IFACE])
        .cluster(&endpoints, "glance-2", "glance")
        .cluster_key("ca_file", &quoted(&tls.ca))
        .start();
    wait_for("the node with a certificate connected", DEADLINE, || {
        (state(&trusted) == "connected").then_some(())
    });
    let refused = wait_for("the node without one degraded", DEADLINE, || {
        let status = cluster_status(&stranger);
        (status["state"] == "degraded").then_some(status)
    });
    assert!(
        refused["last_error"].is_string(),
        "the refusal is explained: {refused}"
    );

    let blocked = Topo::ATTACKER_V4[0];
    trusted.cli_ok(&["block", blocked]);
    stranger.cli_ok(&["block", Topo::ATTACKER_V4[1]]);
    let key = format!("/glance-limiter/rules/block/{blocked}_32");
    let stored = wait_for("the rule in etcd", DEADLINE, || {
        etcd.get(&key).ok().flatten()
    });
    let record: Value = serde_json::from_str(&stored).expect("a rule record is JSON");
    assert_eq!(record["node"], "glance-1");
    assert!(
        stranger.block_rule(&host_prefix(blocked)).is_none(),
        "nothing reaches a node etcd refused"
    );
    assert!(
        stranger
            .block_rule(&host_prefix(Topo::ATTACKER_V4[1]))
            .is_some(),
        "a node etcd refused keeps its own rules"
    );
}
