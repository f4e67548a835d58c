//! The daemon follows its interfaces: a banned attacker's link deleted, re-created under the
//! same name and brought up is protected again within a second of `ip link set up`, and
//! `status` (text and JSON), the metrics and the log say what happened in between; a link
//! set down and up, and one renamed and renamed back, keep their attachment.
//!
//! "Refused" is measured, not assumed: a SYN from the banned address that times out while the
//! kernel's `drop_blocked` counter rises was dropped by the program (a link not yet usable
//! would time out too, but count nothing).

use std::{
    io,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant, SystemTime},
};

use limiter_tests::{
    daemon::{parse_time, Daemon, DaemonSetup},
    http::{connect_from, StandInServer},
    metrics::{self, Exposition},
    netns::AttackTopology,
};
use serde_json::Value;

const GLANCE_PORT: u16 = 9292;
const METRICS: &str = "127.0.0.1:9465";
const ATTACKER: &str = AttackTopology::ATTACKER_V4[0];
/// On the attacker's link, never banned: proves the link carries traffic.
const NEIGHBOUR: &str = AttackTopology::ATTACKER_V4[1];
const IFACE: &str = "veth-attack";
/// The most the daemon may take to notice a change (an event, or its check every second).
const NOTICE_DEADLINE: Duration = Duration::from_secs(3);
/// The bound: refused again within a second of the link's return.
const BACK_WITHIN: Duration = Duration::from_secs(1);
/// A SYN to be dropped gets this long to be answered: well past a veth round trip.
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);

static SERIAL: Mutex<()> = Mutex::new(());

/// Fields drop in order: the daemon (stopped, then detached), the server, the namespaces,
/// the lock.
struct Fixture {
    daemon: Daemon,
    _server: StandInServer,
    topo: AttackTopology,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    /// A daemon on both server-side veths, with metrics, and `ATTACKER` banned (dropped).
    fn with_banned_attacker() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let topo = AttackTopology::new();
        let server = StandInServer::start_in(&topo.server, GLANCE_PORT);
        let daemon = DaemonSetup::new(&topo.server, &topo.server_ifaces())
            .metrics_listen(METRICS)
            .start();
        let fx = Fixture {
            daemon,
            _server: server,
            topo,
            _serial: serial,
        };
        fx.daemon
            .cli_ok(&["block", ATTACKER, "--reason", "iface test"]);
        assert_eq!(fx.probe(ATTACKER), Probe::Refused, "banned before anything");
        assert!(fx.served(NEIGHBOUR), "an unbanned neighbour is served");
        fx
    }

    /// One SYN from `src` on the attacker's link.
    fn probe(&self, src: &str) -> Probe {
        let before = self.daemon.counter("drop_blocked");
        let dst = self.topo.attacker.server_addr_for(src);
        let result = self
            .topo
            .attacker
            .ns
            .run(|| connect_from(src, dst, GLANCE_PORT, PROBE_TIMEOUT));
        match result {
            Ok(_) => Probe::Connected,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if self.daemon.counter("drop_blocked") > before {
                    Probe::Refused
                } else {
                    Probe::Lost
                }
            }
            Err(e) => Probe::Failed(e.kind()),
        }
    }

    fn served(&self, src: &str) -> bool {
        self.topo.served(src, GLANCE_PORT)
    }

    /// `status --json`'s entry for `IFACE`.
    fn iface(&self) -> Value {
        let status = self.daemon.status_json();
        status["interfaces"]
            .as_array()
            .and_then(|list| list.iter().find(|i| i["name"] == IFACE).cloned())
            .unwrap_or_else(|| panic!("{IFACE} not in {status}"))
    }

    /// Waits until `IFACE`'s `state` is `state`; returns the entry.
    fn wait_for_state(&self, state: &str) -> Value {
        let until = Instant::now() + NOTICE_DEADLINE;
        loop {
            let entry = self.iface();
            if entry["state"] == state {
                return entry;
            }
            assert!(
                Instant::now() < until,
                "{IFACE} not {state} within {NOTICE_DEADLINE:?}: {entry}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the metrics show `glance_limiter_interface_attached` of `IFACE` at
    /// `value`; returns the exposition.
    fn wait_for_attached_metric(&self, value: f64) -> Exposition {
        let until = Instant::now() + NOTICE_DEADLINE;
        loop {
            let scrape = self
                .topo
                .server
                .run(|| metrics::get(METRICS.parse().unwrap(), "/metrics", None))
                .expect("a scrape");
            let exposition = Exposition::parse(&scrape.body).expect("a valid exposition");
            let found = exposition
                .family("glance_limiter_interface_attached")
                .and_then(|f| {
                    f.samples
                        .iter()
                        .find(|s| s.labels.get("interface").is_some_and(|i| i == IFACE))
                        .map(|s| s.value)
                });
            if found == Some(value) {
                return exposition;
            }
            assert!(
                Instant::now() < until,
                "interface_attached{{interface={IFACE}}} not {value} within \
                 {NOTICE_DEADLINE:?}:\n{}",
                scrape.body
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Dropped by the program (`drop_blocked` rose).
    Refused,
    Connected,
    /// Timed out without a drop by rule: the link is not usable yet.
    Lost,
    Failed(io::ErrorKind),
}

#[test]
fn a_recreated_interface_refuses_the_banned_attacker_again_within_a_second() {
    limiter_tests::require_kernel!();
    let fx = Fixture::with_banned_attacker();
    let before = fx.iface();
    assert_eq!(before["state"], "attached", "{before}");
    assert_eq!(before["reattachments"], 0, "{before}");
    let old_index = before["ifindex"].as_u64().expect("ifindex");

    fx.topo.delete_attacker_link();
    let missing = fx.wait_for_state("missing");
    assert_eq!(missing["attach_mode"], "none", "{missing}");
    assert!(missing["missing_since"].is_string(), "{missing}");
    let text = fx.daemon.cli_ok(&["status"]);
    assert!(
        text.contains(&format!("{IFACE} (MISSING since")),
        "status text:\n{text}"
    );
    fx.wait_for_attached_metric(0.0);
    assert!(
        fx.daemon
            .wait_for_log(&["WARN", "interface disappeared", IFACE], NOTICE_DEADLINE)
            .is_some(),
        "no warning in the log"
    );
    // The other interface is untouched.
    let status = fx.daemon.status_json();
    let legit = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == fx.topo.legit.server_iface)
        .cloned()
        .expect("the legitimate link");
    assert_eq!(legit["state"], "attached", "{legit}");

    let created_wall = SystemTime::now();
    fx.topo.recreate_attacker_link();
    let created = Instant::now();
    fx.topo.attacker_link_up();
    let up = Instant::now();
    let mut probes = Vec::new();
    let refused_after = loop {
        let sent = Instant::now();
        let probe = fx.probe(ATTACKER);
        if probe == Probe::Refused {
            break sent - up;
        }
        probes.push((sent - up, probe));
        assert!(
            Instant::now() < up + BACK_WITHIN,
            "the banned attacker was not refused within {BACK_WITHIN:?} of the link's return: \
             {probes:?}; status: {}",
            fx.iface()
        );
    };
    eprintln!(
        "refused again {:.0} ms after `ip link set up` ({:.0} ms after its addresses and routes were set); \
         earlier probes: {probes:?}",
        refused_after.as_secs_f64() * 1000.0,
        (refused_after + (up - created)).as_secs_f64() * 1000.0
    );
    assert!(refused_after < BACK_WITHIN);
    assert!(
        fx.served(NEIGHBOUR),
        "the link carries traffic: not dropping all"
    );

    // The gap is on record.
    let back = fx.wait_for_state("attached");
    let reattached = parse_time(back["reattached_at"].as_str().expect("reattached_at"));
    eprintln!(
        "status after the return: {back}; re-attached {:.0} ms after `ip link add`",
        reattached
            .duration_since(created_wall)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    );
    assert_eq!(back["reattachments"], 1, "{back}");
    assert!(back["reattached_at"].is_string(), "{back}");
    assert!(back["last_gap_ms"].as_u64().is_some(), "{back}");
    assert!(back.get("missing_since").is_none(), "{back}");
    assert_ne!(back["ifindex"].as_u64(), Some(old_index), "a new device");
    let mode = back["attach_mode"].as_str().unwrap();
    assert!(mode == "native" || mode == "generic", "{back}");
    let exposition = fx.wait_for_attached_metric(1.0);
    assert_eq!(
        exposition.value(
            "glance_limiter_interface_reattachments_total",
            &[("interface", IFACE)]
        ),
        Some(1.0)
    );
    assert!(fx
        .daemon
        .wait_for_log(&["INFO", "interface is back", IFACE], NOTICE_DEADLINE)
        .is_some());
}

#[test]
fn down_and_up_keep_the_attachment() {
    limiter_tests::require_kernel!();
    let fx = Fixture::with_banned_attacker();
    let index = fx.iface()["ifindex"].clone();
    fx.topo.server.ip(&["link", "set", IFACE, "down"]);
    let down = fx.wait_for_state("down");
    assert_eq!(down["ifindex"], index, "{down}");
    assert!(fx
        .daemon
        .cli_ok(&["status"])
        .contains(&format!("{IFACE} (")));
    fx.topo.attacker_link_up();
    let up = fx.wait_for_state("attached");
    assert_eq!((&up["ifindex"], &up["reattachments"]), (&index, &0.into()));
    assert_eq!(fx.probe(ATTACKER), Probe::Refused);
    assert!(fx.served(NEIGHBOUR));
}

#[test]
fn a_renamed_interface_keeps_the_program_and_gets_its_name_back() {
    limiter_tests::require_kernel!();
    let fx = Fixture::with_banned_attacker();
    let index = fx.iface()["ifindex"].clone();
    let server = &fx.topo.server;
    server.ip(&["link", "set", IFACE, "down"]);
    server.ip(&["link", "set", IFACE, "name", "veth-renamed"]);
    server.ip(&["link", "set", "veth-renamed", "up"]);
    server.ip(&["route", "replace", "198.51.100.0/24", "dev", "veth-renamed"]);
    let renamed = fx.wait_for_state("renamed");
    assert_eq!(renamed["renamed_to"], "veth-renamed", "{renamed}");
    assert_eq!(renamed["ifindex"], index, "{renamed}");
    fx.wait_for_attached_metric(0.0);
    // The program stayed on the device: the attacker is still refused there.
    assert_eq!(fx.probe(ATTACKER), Probe::Refused);

    server.ip(&["link", "set", "veth-renamed", "down"]);
    server.ip(&["link", "set", "veth-renamed", "name", IFACE]);
    fx.topo.attacker_link_up();
    let back = fx.wait_for_state("attached");
    assert_eq!(
        (&back["ifindex"], &back["reattachments"]),
        (&index, &0.into())
    );
    assert_eq!(fx.probe(ATTACKER), Probe::Refused);
    assert!(fx.served(NEIGHBOUR));
}
