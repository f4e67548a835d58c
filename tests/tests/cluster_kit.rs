//! The cluster test kit on its own, with no limiter: a three-member etcd on the cluster's LAN
//! keeps a quorum through a member's crash, loses it when every member stops and keeps its
//! data across the restart; and several real Glance nodes behind HAProxy's round-robin share
//! one MariaDB database, so an image created through one node is seen through the others.

use std::{
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use limiter_tests::{
    etcd::EtcdCluster,
    http::{connect_from, request},
    https::HttpsClient,
    napi::{xdp_pass, XdpPass},
    netns::ClusterTopology as Topo,
    wait::wait_for,
};

const FRONTEND_PORT: u16 = 9292;
const GLANCE_PORT: u16 = 9292;
/// How long the remaining members get to elect a leader (500 ms election timeout).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);
const CREATE: &str = r#"{"name":"cluster-kit","disk_format":"raw","container_format":"bare"}"#;

/// One test at a time: both use the same addresses in namespaces of their own, and Glance
/// nodes are several processes each on a two-core machine.
/// For a line of Glance's access log to be written after its response.
const LOG_DEADLINE: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn etcd_keeps_quorum_through_a_crash_and_data_through_a_full_stop() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new(1);
    let mut etcd = topo.start_etcd();
    assert_eq!(etcd.healthy_members(), vec![0, 1, 2]);
    assert_eq!(etcd.client_endpoints().len(), 3);

    // A limiter on a Glance node reaches every member's client URL.
    for endpoint in etcd.client_endpoints() {
        let health = etcd.etcdctl(
            &topo.nodes[0].ns,
            std::slice::from_ref(&endpoint),
            &["endpoint", "health"],
        );
        assert!(health.is_ok(), "from node 1 to {endpoint}: {health:?}");
    }

    // Written through one member, read through another.
    etcd.put_via(0, "kit/a", "one")
        .expect("put through member 0");
    assert_eq!(etcd.get_via(2, "kit/a"), Ok(Some("one".to_owned())));
    assert_eq!(etcd.get_via(1, "kit/missing"), Ok(None));

    // The leader crashes: the other two elect another and take writes.
    let leader = wait_for("a leader", FAILOVER_DEADLINE, || etcd.leader());
    etcd.kill_member(leader);
    let others: Vec<usize> = (0..3).filter(|&m| m != leader).collect();
    etcd.wait_healthy(&others, FAILOVER_DEADLINE);
    assert_eq!(etcd.healthy_members(), others);
    let new_leader = wait_for("a new leader", FAILOVER_DEADLINE, || etcd.leader());
    assert_ne!(new_leader, leader);
    etcd.put_via(others[0], "kit/b", "two")
        .expect("put with one member down");
    assert_eq!(etcd.get_via(others[1], "kit/b"), Ok(Some("two".to_owned())));
    etcd.put("kit/c", "three")
        .expect("put through every endpoint, one of them down");

    // Back on its data directory, the old leader catches up.
    etcd.start_member(leader);
    assert_eq!(etcd.healthy_members(), vec![0, 1, 2]);
    assert_eq!(etcd.get_via(leader, "kit/b"), Ok(Some("two".to_owned())));

    // No member running: every request fails.
    etcd.stop_all();
    assert!(etcd.healthy_members().is_empty());
    assert!(etcd.put("kit/d", "four").is_err());
    assert!(etcd.get("kit/a").is_err());

    // Started again, the cluster still holds what was written.
    etcd.start_all();
    for (key, value) in [("kit/a", "one"), ("kit/b", "two"), ("kit/c", "three")] {
        assert_eq!(etcd.get(key), Ok(Some(value.to_owned())), "{key}");
    }
    assert_eq!(etcd.del("kit/a"), Ok(1));
    assert_eq!(etcd.get("kit/a"), Ok(None));
    assert_eq!(
        etcd.client_endpoints()[0],
        format!("http://{}:2379", EtcdCluster::MEMBER_V4[0])
    );
}

#[test]
fn glance_nodes_behind_haproxy_share_one_database() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new(3);
    let db = topo.start_mariadb();
    let glance = topo.start_glance(&db, GLANCE_PORT);
    let lb = topo.haproxy(FRONTEND_PORT, GLANCE_PORT).start(&topo.lb);
    // Where limiters attach (a node's LAN interface, the load balancer's public one) takes
    // an XDP program, and traffic still flows through it (a pass-everything program standing
    // in for the limiter, with the peers ready for its XDP_TX answers).
    let _peers = topo.xdp_pass_peers();
    let _attached: Vec<XdpPass> = topo
        .nodes
        .iter()
        .map(|node| xdp_pass(&node.ns, Topo::LAN_IFACE))
        .chain([xdp_pass(&topo.lb, Topo::LB_PUBLIC_IFACE)])
        .collect();
    for node in &topo.nodes {
        assert_eq!(
            node.ns.xdp_program_ids(Topo::LAN_IFACE).len(),
            1,
            "{}",
            node.addr
        );
    }
    assert_eq!(topo.lb.xdp_program_ids(Topo::LB_PUBLIC_IFACE).len(), 1);

    let src = Topo::LEGIT_V4[0];
    let frontend = SocketAddr::new(Topo::FRONTEND_V4.parse().unwrap(), FRONTEND_PORT).to_string();
    let id = topo.client.run(|| {
        let mut client = HttpsClient::new(src, &frontend);
        let created = client.request("POST", "/v2/images", CREATE).unwrap();
        assert_eq!(created.status, 201, "create: {created:?}");
        let body: serde_json::Value = serde_json::from_slice(&created.body).expect("JSON");
        let id = body["id"].as_str().expect("an image id").to_owned();
        // Round-robin: each following request goes to the next node, and each finds the
        // image in the shared database.
        for _ in 0..glance.nodes.len() {
            let listed = client.request("GET", "/v2/images", "").unwrap();
            assert_eq!(listed.status, 200, "list: {listed:?}");
            let body: serde_json::Value = serde_json::from_slice(&listed.body).expect("JSON");
            let ids: Vec<&str> = body["images"]
                .as_array()
                .expect("an image list")
                .iter()
                .filter_map(|i| i["id"].as_str())
                .collect();
            assert_eq!(ids, vec![id.as_str()], "list through HAProxy");
        }
        id
    });

    // Every node served some of these requests, each seen in its own access log with the
    // client's address forwarded by HAProxy; and each node, asked directly (through the
    // load balancer's forwarding, not HAProxy), has the image.
    // Glance writes its access log after the response: the last request's line may come a
    // moment after the client had its answer.
    let served_per_node = || -> Vec<usize> {
        glance
            .nodes
            .iter()
            .map(|node| {
                let lines = [
                    node.access_log("POST", "/v2/images", 201),
                    node.access_log("GET", "/v2/images", 200),
                ]
                .concat();
                for line in &lines {
                    assert!(
                        line.contains(&format!("{src},{}", Topo::LB_PRIVATE_V4)),
                        "forwarded for {src} by HAProxy: {line}"
                    );
                }
                lines.len()
            })
            .collect()
    };
    let expected = 1 + glance.nodes.len();
    let served = wait_for(
        "every request in the nodes' access logs",
        LOG_DEADLINE,
        || {
            let served = served_per_node();
            (served.iter().sum::<usize>() >= expected).then_some(served)
        },
    );
    assert_eq!(
        served.iter().sum::<usize>(),
        1 + glance.nodes.len(),
        "requests per node {served:?}\n{}",
        lb.log_text()
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "round-robin over every node: {served:?}\n{}",
        lb.log_text()
    );
    for node in &topo.nodes {
        let status = topo.client.run(|| {
            let mut s = connect_from(src, node.addr, GLANCE_PORT, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {}: {e}", node.addr));
            request(&mut s, "GET", &format!("/v2/images/{id}"), "").unwrap()
        });
        assert_eq!(status, 200, "image {id} from {} directly", node.addr);
    }
    assert_eq!(db.image_count(), 1);
    for node in &glance.nodes {
        assert_eq!(node.image_count(), 1);
    }
}

#[test]
fn etcd_with_client_tls_accepts_only_clients_with_its_certificate() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new(1);
    let etcd = topo.start_etcd_tls();
    let tls = etcd.tls().expect("a TLS cluster has certificates");
    let endpoints = etcd.client_endpoints();
    assert!(
        endpoints.iter().all(|e| e.starts_with("https://")),
        "{endpoints:?}"
    );
    assert_eq!(etcd.healthy_members(), vec![0, 1, 2]);
    etcd.put_via(0, "kit/tls", "yes").expect("put over TLS");
    assert_eq!(etcd.get_via(2, "kit/tls"), Ok(Some("yes".to_owned())));

    // From a node: the cluster's client certificate is accepted; a client that trusts the
    // CA but has no certificate, one that trusts nothing, and plain HTTP are refused.
    let node = &topo.nodes[0].ns;
    let get = [
        "get",
        "kit/tls",
        "--print-value-only",
        "--command-timeout=1s",
    ];
    assert_eq!(etcd.etcdctl(node, &endpoints, &get), Ok("yes\n".to_owned()));
    let ca_only = [format!("--cacert={}", tls.ca.display())];
    let refused = etcd.etcdctl_with_tls(node, &endpoints, &ca_only, &get);
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let refused = etcd.etcdctl_with_tls(node, &endpoints, &[], &get);
    assert!(
        refused.is_err(),
        "untrusted server certificate: {refused:?}"
    );
    let plain: Vec<String> = endpoints
        .iter()
        .map(|e| e.replacen("https://", "http://", 1))
        .collect();
    let refused = etcd.etcdctl_with_tls(node, &plain, &[], &get);
    assert!(refused.is_err(), "plain HTTP: {refused:?}");
    for file in [&tls.ca, &tls.client_cert, &tls.client_key, &tls.server_cert] {
        assert!(file.is_file(), "{}", file.display());
    }
}
