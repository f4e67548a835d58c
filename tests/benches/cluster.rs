//! The cluster's costs (issue 11's targets: ban propagation p99 ≤ 1 s; ≤ 2 etcd writes per
//! node per poll whatever the number of sources; a 30-node cluster costing each node ≤ 2× a
//! 3-node one). Writes target/bench/cluster.json. `cargo xtask bench` (root).
//!
//! The synchronisation component is driven alone (`limiter_user::cluster::Cluster`, each
//! with its own rule store and etcd connection), as many simulated nodes in one namespace,
//! against a real three-member etcd on its own LAN (`EtcdCluster`):
//! - propagation: node 1 stores a ban; the time until nodes 2 and 3 hold it (they apply
//!   what etcd sends every millisecond here; the daemon does every 50 ms, which the report
//!   adds for the daemon's worst case);
//! - load: N nodes (3, 10, 30), each tracking 100,000 sources (20 of them attackers spread
//!   over every node), publish a summary per poll and sum the others'; per node and poll:
//!   etcd writes, bytes written, bytes of the others' summaries read, and the CPU time of
//!   building the summary and summing the others'.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant, SystemTime},
};

use limiter_tests::{
    etcd::EtcdCluster,
    netns::{Lan, Netns},
    summary::write_report,
};
use limiter_user::{
    cluster::{status::ClusterState, summary, Cluster, ClusterSettings},
    policy::PolicyConfig,
    rates::Rates,
    rules::{Action, Scope},
    store::{Origin, RuleStore, StoredRule},
};
use serde::Serialize;

const SIM_ADDR: &str = "198.51.100.50/24";
const PROPAGATIONS: usize = 200;
const SOURCES: usize = 100_000;
const ATTACKERS: usize = 20;
const POLL: Duration = Duration::from_secs(1);
const POLLS: usize = 10;
const DAEMON_WAKE: Duration = Duration::from_millis(50);

#[derive(Serialize)]
struct Propagation {
    samples: usize,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// p99 plus the daemon's wake-up interval: the worst a running daemon adds.
    daemon_p99_ms: f64,
    target_p99_ms: f64,
}

#[derive(Serialize)]
struct Load {
    nodes: usize,
    sources_per_node: usize,
    writes_per_node_per_poll: f64,
    writes_per_node_per_second: f64,
    bytes_written_per_node_per_second: f64,
    bytes_read_per_node_per_poll: f64,
    cpu_us_per_node_per_poll: f64,
    listed_per_summary: f64,
}

#[derive(Serialize)]
struct Report {
    propagation: Propagation,
    load: Vec<Load>,
    /// `cpu_us_per_node_per_poll` and `writes_per_node_per_poll` of 30 nodes over 3.
    cost_ratio_30_over_3: f64,
    writes_ratio_30_over_3: f64,
}

struct SimNode {
    cluster: Cluster,
    store: RuleStore,
    _dir: tempfile::TempDir,
}

fn start_nodes(ns: &Netns, endpoints: &[String], count: usize, tag: &str) -> Vec<SimNode> {
    (0..count)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            let settings = ClusterSettings {
                etcd_endpoints: endpoints.to_vec(),
                node_name: Some(format!("{tag}-{i}")),
                prefix: format!("/bench-{tag}/"),
                ..ClusterSettings::default()
            };
            let path = dir.path().to_path_buf();
            // The cluster's thread inherits the namespace of the thread that starts it.
            let cluster = ns.run(move || Cluster::start(settings, &path, POLL).unwrap());
            let store = RuleStore::open(dir.path()).unwrap();
            SimNode {
                cluster,
                store,
                _dir: dir,
            }
        })
        .collect()
}

fn wait_connected(nodes: &mut [SimNode]) {
    let start = Instant::now();
    while !nodes
        .iter()
        .all(|n| n.cluster.health().state == ClusterState::Connected)
    {
        for node in nodes.iter_mut() {
            node.cluster.apply_incoming(&mut node.store).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "nodes connect");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn has(store: &RuleStore, prefix: ipnet::IpNet) -> bool {
    store.rules().iter().any(|r| r.prefix == prefix)
}

fn propagation(ns: &Netns, endpoints: &[String]) -> Propagation {
    let mut nodes = start_nodes(ns, endpoints, 3, "prop");
    wait_connected(&mut nodes);
    let mut samples = Vec::new();
    for k in 0..PROPAGATIONS {
        let prefix: ipnet::IpNet = format!("2001:db8:b::{:x}/128", k + 1).parse().unwrap();
        let rule = StoredRule {
            prefix,
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            origin: Origin::Auto,
            reason: "bench".into(),
            created: SystemTime::now(),
            expires: Some(SystemTime::now() + Duration::from_secs(600)),
            node: Some(nodes[0].cluster.node().to_string()),
        };
        let start = Instant::now();
        let first = &mut nodes[0];
        let generation = first.cluster.will_change([rule.key()]).unwrap();
        first.store.upsert(vec![rule.clone()]).unwrap();
        first
            .cluster
            .changed(&first.store, [rule.key()], generation);
        loop {
            for node in nodes.iter_mut() {
                node.cluster.apply_incoming(&mut node.store).unwrap();
            }
            if has(&nodes[1].store, prefix) && has(&nodes[2].store, prefix) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "ban {k} arrives");
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let p99 = pick(0.99);
    Propagation {
        samples: samples.len(),
        median_ms: pick(0.5),
        p99_ms: p99,
        max_ms: *samples.last().unwrap(),
        daemon_p99_ms: p99 + DAEMON_WAKE.as_secs_f64() * 1000.0,
        target_p99_ms: 1000.0,
    }
}

/// A node's tracked sources: everyone a create a minute, the attackers fifteen (a quarter
/// of the default threshold on each of the nodes they are spread over).
fn tracked(node: usize) -> Vec<(IpAddr, Rates)> {
    (0..SOURCES)
        .map(|i| {
            let attacker = i < ATTACKERS;
            let segments = if attacker {
                [0x2001, 0xdb8, 0xa, 0, 0, 0, 0, i as u16]
            } else {
                [
                    0x2001,
                    0xdb8,
                    0xc,
                    node as u16,
                    0,
                    0,
                    (i >> 16) as u16,
                    i as u16,
                ]
            };
            let creates = if attacker { 15 } else { 1 };
            (
                IpAddr::V6(Ipv6Addr::from(segments)),
                Rates {
                    image_creates_last_minute: creates,
                    image_creates_last_hour: creates,
                    ..Rates::default()
                },
            )
        })
        .collect()
}

fn load(ns: &Netns, endpoints: &[String], count: usize) -> Load {
    let mut nodes = start_nodes(ns, endpoints, count, &format!("load{count}"));
    wait_connected(&mut nodes);
    let policy = PolicyConfig::default();
    let sources: Vec<Vec<(IpAddr, Rates)>> = (0..count).map(tracked).collect();
    // Until everyone sees everyone, publishing as a daemon would.
    let publish =
        |nodes: &mut [SimNode], cpu: &mut Duration, read: &mut usize, listed: &mut usize| {
            for (i, node) in nodes.iter_mut().enumerate() {
                let started = Instant::now();
                let peers = node.cluster.peers();
                let local = &sources[i];
                let combined = summary::combine(node.cluster.settings(), |_| None, peers.iter());
                let header = node.cluster.next_summary(SOURCES as u64);
                let fraction = node.cluster.publish_fraction();
                let built = summary::build(
                    node.cluster.settings(),
                    &policy,
                    header,
                    fraction,
                    local.iter().copied(),
                );
                *cpu += started.elapsed();
                *read += peers
                    .iter()
                    .map(|p| serde_json::to_vec(p).unwrap().len())
                    .sum::<usize>();
                *listed += built.sources.len();
                node.cluster.publish(built, peers.len(), combined.len());
                node.cluster.apply_incoming(&mut node.store).unwrap();
            }
        };
    let (mut cpu, mut read, mut listed) = (Duration::ZERO, 0, 0);
    let start = Instant::now();
    while nodes.iter().any(|n| n.cluster.peers().len() + 1 < count) {
        publish(&mut nodes, &mut cpu, &mut read, &mut listed);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "every node sees every other"
        );
        std::thread::sleep(POLL);
    }
    let before: Vec<(u64, u64)> = nodes.iter().map(|n| n.cluster.writes()).collect();
    let (mut cpu, mut read, mut listed) = (Duration::ZERO, 0, 0);
    let started = Instant::now();
    for _ in 0..POLLS {
        let poll_start = Instant::now();
        publish(&mut nodes, &mut cpu, &mut read, &mut listed);
        std::thread::sleep(POLL.saturating_sub(poll_start.elapsed()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last writes land before counting them.
    std::thread::sleep(Duration::from_millis(200));
    let (writes, bytes) = nodes
        .iter()
        .zip(&before)
        .map(|(n, (w0, b0))| {
            let (w, b) = n.cluster.writes();
            (w - w0, b - b0)
        })
        .fold((0, 0), |(w, b), (dw, db)| (w + dw, b + db));
    let per_node_poll = (count * POLLS) as f64;
    Load {
        nodes: count,
        sources_per_node: SOURCES,
        writes_per_node_per_poll: writes as f64 / per_node_poll,
        writes_per_node_per_second: writes as f64 / count as f64 / elapsed,
        bytes_written_per_node_per_second: bytes as f64 / count as f64 / elapsed,
        bytes_read_per_node_per_poll: read as f64 / per_node_poll,
        cpu_us_per_node_per_poll: cpu.as_secs_f64() * 1e6 / per_node_poll,
        listed_per_summary: listed as f64 / per_node_poll,
    }
}

fn main() {
    if !limiter_tests::privilege::kernel_tests_enabled("cluster bench") {
        return;
    }
    let lan = Lan::new();
    let etcd = EtcdCluster::start_on(&lan);
    let endpoints = etcd.client_endpoints();
    let ns = Netns::new("s");
    lan.attach(&ns, "veth-lan", &[SIM_ADDR]);

    let propagation = propagation(&ns, &endpoints);
    println!(
        "ban propagation over {} bans: median {:.1} ms, p99 {:.1} ms (daemon: +{} ms wake-up)",
        propagation.samples,
        propagation.median_ms,
        propagation.p99_ms,
        DAEMON_WAKE.as_millis()
    );
    let load: Vec<Load> = [3, 10, 30]
        .iter()
        .map(|n| load(&ns, &endpoints, *n))
        .collect();
    for l in &load {
        println!(
            "{:>2} nodes x {} sources: {:.2} writes/poll ({:.1}/s), {:.0} B/s written, {:.0} B read/poll, {:.0} us CPU/poll, {:.1} sources listed",
            l.nodes,
            l.sources_per_node,
            l.writes_per_node_per_poll,
            l.writes_per_node_per_second,
            l.bytes_written_per_node_per_second,
            l.bytes_read_per_node_per_poll,
            l.cpu_us_per_node_per_poll,
            l.listed_per_summary
        );
    }
    let (three, thirty) = (&load[0], &load[2]);
    let report = Report {
        cost_ratio_30_over_3: thirty.cpu_us_per_node_per_poll / three.cpu_us_per_node_per_poll,
        writes_ratio_30_over_3: thirty.writes_per_node_per_poll / three.writes_per_node_per_poll,
        propagation,
        load,
    };
    println!(
        "30 nodes over 3, per node: CPU x{:.2}, writes x{:.2}",
        report.cost_ratio_30_over_3, report.writes_ratio_30_over_3
    );
    write_report("cluster.json", &report);
}
