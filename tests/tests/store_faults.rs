//! The rule store under faults, end to end (issue 12, item 7): the daemon's state directory
//! on a small tmpfs that fills up or turns read-only while the daemon runs, and a corrupt
//! `rules.json` at start over pinned maps that hold a ban.
//!
//! What must hold: the kernel keeps enforcing (old rules and new automatic bans), status,
//! metrics and log say the store is degraded, the saved `rules.json` stays byte for byte as
//! it was, and once writes work again the pending bans are written and the error clears. A
//! corrupt file at start is kept aside, the daemon refuses to start (also on a second try),
//! and the pinned program keeps dropping the banned source.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    daemon::{host_prefix, Daemon, DaemonSetup},
    http::{connection_flood, FloodLimits, StandInServer, StopOnDrop},
    metrics::{self, Exposition},
    netns::AttackTopology,
    tmpfs::Tmpfs,
};
use serde_json::Value;

const GLANCE_PORT: u16 = 9292;
/// The most any wait for the daemon to act on something takes: a few one-second polls.
const ACT_DEADLINE: Duration = Duration::from_secs(10);
/// Inside the server namespace: its own loopback.
const METRICS: &str = "127.0.0.1:9464";
/// Big enough for the rules of these tests, small enough to fill at once.
const TMPFS_KIB: u32 = 128;

const ATTACKER: &str = AttackTopology::ATTACKER_V4[0];
const LEGIT: &str = AttackTopology::LEGIT_V4[0];
/// Manual rules: documentation addresses no test traffic uses.
const MANUAL: &str = "203.0.113.77";
const MANUAL_REFUSED: &str = "203.0.113.78";

static SERIAL: Mutex<()> = Mutex::new(());

/// A daemon protecting the stand-in server. Fields drop in order: the daemon (stopped, then
/// detached), the server, the namespaces, and the lock last. A tmpfs the daemon's state is
/// on must be declared before the fixture, so that it is unmounted after.
struct Fixture {
    daemon: Daemon,
    _server: StandInServer,
    topo: AttackTopology,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new(state_dir: Option<&Tmpfs>) -> Self {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let topo = AttackTopology::new();
        let server = StandInServer::start_in(&topo.server, GLANCE_PORT);
        let mut setup = DaemonSetup::new(&topo.server, &topo.server_ifaces())
            .policy("new_connections_per_second", "5")
            .policy("ban_ttl", "10m")
            .metrics_listen(METRICS);
        if let Some(tmpfs) = state_dir {
            setup = setup.state_dir(&tmpfs.path().join("state"));
        }
        Fixture {
            daemon: setup.start(),
            _server: server,
            topo,
            _serial: serial,
        }
    }

    fn served(&self, src: &str) -> bool {
        self.topo.served(src, GLANCE_PORT)
    }

    fn assert_dropped(&self, src: &str, context: &str) {
        self.topo.assert_dropped(src, GLANCE_PORT, context);
    }

    /// Floods connections from `src` until the daemon lists a ban for it.
    fn flood_until_banned(&self, src: &'static str) -> Value {
        let net = self.topo.net_of(src);
        let dst = net.server_addr_for(src);
        let limits = FloodLimits {
            max_attempts: 5_000,
            max_duration: Duration::from_secs(15),
            stop_after_failures: Some(3),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_panic = StopOnDrop(stop.clone());
        let flag = stop.clone();
        let flood = net.ns.spawn(move || {
            connection_flood(
                src,
                dst,
                GLANCE_PORT,
                Some(Duration::from_millis(5)),
                limits,
                &flag,
            )
        });
        let rule = self
            .daemon
            .wait_for_rule(&host_prefix(src), Duration::from_secs(15));
        stop.store(true, Ordering::Relaxed);
        let log = flood.join().expect("flood thread");
        rule.unwrap_or_else(|| panic!("{src} was not banned: {} attempts", log.attempts.len()))
    }

    /// Scrapes the metrics until `accept` holds, or panics with the last scrape.
    fn scrape_until(&self, what: &str, accept: impl Fn(&Exposition) -> bool) -> Exposition {
        let until = Instant::now() + ACT_DEADLINE;
        loop {
            let scrape = self
                .topo
                .server
                .run(|| metrics::get(METRICS.parse().unwrap(), "/metrics", None))
                .unwrap_or_else(|e| panic!("GET http://{METRICS}/metrics: {e}"));
            let exposition = Exposition::parse(&scrape.body)
                .unwrap_or_else(|e| panic!("not a valid exposition: {e}\n{}", scrape.body));
            if accept(&exposition) {
                return exposition;
            }
            assert!(
                Instant::now() < until,
                "no scrape showed {what} within {ACT_DEADLINE:?}; the last:\n{}",
                scrape.body
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for `status --json` to satisfy `accept`; returns it.
    fn status_until(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + ACT_DEADLINE;
        loop {
            let status = self.daemon.status_json();
            if accept(&status) {
                return status;
            }
            assert!(
                Instant::now() < until,
                "status never showed {what} within {ACT_DEADLINE:?}; the last:\n{status:#}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn gauge(exposition: &Exposition, name: &str) -> Option<f64> {
    exposition.value(&format!("glance_limiter_{name}"), &[])
}

fn saved_prefixes(daemon: &Daemon) -> Vec<String> {
    let text = fs::read_to_string(daemon.rules_file()).expect("read rules.json");
    let file: Value = serde_json::from_str(&text).expect("rules.json parses");
    file["rules"]
        .as_array()
        .expect("a rules array")
        .iter()
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect()
}

/// The common course of the two run-time faults: `break_it` makes writes fail with an
/// error whose text contains `expected`, `repair` makes them work again.
fn writes_fail_and_resume(break_it: impl Fn(&Tmpfs), repair: impl Fn(&Tmpfs), expected: &str) {
    let tmpfs = Tmpfs::mount(TMPFS_KIB);
    let fx = Fixture::new(Some(&tmpfs));
    fx.daemon
        .cli_ok(&["block", MANUAL, "--reason", "before the fault"]);
    let saved = fs::read(fx.daemon.rules_file()).expect("read rules.json");
    assert!(fx.served(LEGIT), "the legitimate client is served");

    break_it(&tmpfs);

    // An operator's change is refused, says why, and changes nothing (kernel included).
    let refused = fx.daemon.cli(&["block", MANUAL_REFUSED]);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "block succeeded with {expected}");
    assert!(message.contains(expected), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(fx.daemon.block_rule(&host_prefix(MANUAL_REFUSED)).is_none());
    let status = fx.status_until("the store error", |s| s["store_error"].is_object());
    println!(
        "status after the refused block: {:#}",
        status["store_error"]
    );
    assert_eq!(status["store_error"]["unsaved"], false, "{status:#}");

    // An automatic ban is enforced all the same, and waits to be saved.
    let banned_at = Instant::now();
    fx.flood_until_banned(ATTACKER);
    fx.assert_dropped(ATTACKER, "banned while the store cannot be written");
    assert!(fx.served(LEGIT), "the legitimate client is still served");
    let status = fx.status_until("the unsaved ban", |s| s["store_error"]["unsaved"] == true);
    let error = &status["store_error"];
    assert!(
        error["error"].as_str().unwrap().contains(expected),
        "{error:#}"
    );
    assert!(error["failures"].as_u64().unwrap() >= 2, "{error:#}");
    humantime::parse_rfc3339(error["since"].as_str().unwrap()).expect("since is RFC 3339");
    let metrics = fx.scrape_until("the degraded store", |m| {
        gauge(m, "rule_store_degraded") == Some(1.0) && gauge(m, "rule_store_unsaved") == Some(1.0)
    });
    assert!(gauge(&metrics, "rule_store_degraded_since_seconds").unwrap() > 0.0);
    assert!(
        fx.daemon
            .wait_for_log(&["the rules file cannot be written"], ACT_DEADLINE)
            .is_some_and(|line| line.contains(expected)),
        "{}",
        fx.daemon.log()
    );
    assert!(
        fx.daemon
            .wait_for_log(&["bans enforced but not saved yet"], ACT_DEADLINE)
            .is_some(),
        "{}",
        fx.daemon.log()
    );
    // Nothing already stored is lost: the file is exactly as before the fault.
    assert_eq!(
        fs::read(fx.daemon.rules_file()).expect("read rules.json"),
        saved,
        "rules.json changed while it could not be written"
    );

    // Writes work again: the next poll saves the pending ban and the error clears.
    repair(&tmpfs);
    let repaired = Instant::now();
    fx.status_until("no store error", |s| s.get("store_error").is_none());
    println!(
        "store recovered {:?} after the repair ({:?} after the ban)",
        repaired.elapsed(),
        banned_at.elapsed()
    );
    let prefixes = saved_prefixes(&fx.daemon);
    assert!(
        prefixes.contains(&host_prefix(ATTACKER)) && prefixes.contains(&host_prefix(MANUAL)),
        "{prefixes:?}"
    );
    assert!(
        !prefixes.contains(&host_prefix(MANUAL_REFUSED)),
        "{prefixes:?}"
    );
    fx.scrape_until("the store recovered", |m| {
        gauge(m, "rule_store_degraded") == Some(0.0) && gauge(m, "rule_store_unsaved") == Some(0.0)
    });
    assert!(fx
        .daemon
        .wait_for_log(&["the rules file can be written again"], ACT_DEADLINE)
        .is_some());
    fx.assert_dropped(ATTACKER, "after the store recovered");
    drop(fx);
    drop(tmpfs);
}

#[test]
fn a_full_state_directory_keeps_bans_enforced_and_the_saved_rules_intact() {
    limiter_tests::require_kernel!();
    writes_fail_and_resume(Tmpfs::fill, Tmpfs::free, "No space left on device");
}

#[test]
fn a_read_only_state_directory_keeps_bans_enforced_and_the_saved_rules_intact() {
    limiter_tests::require_kernel!();
    writes_fail_and_resume(
        |t| t.set_read_only(true),
        |t| t.set_read_only(false),
        "Read-only file system",
    );
}

#[test]
fn a_corrupt_rules_file_at_start_is_kept_aside_and_the_pinned_ban_keeps_dropping() {
    limiter_tests::require_kernel!();
    let mut fx = Fixture::new(None);
    fx.daemon
        .cli_ok(&["block", ATTACKER, "--reason", "before the crash"]);
    fx.assert_dropped(ATTACKER, "blocked");
    fx.daemon.kill_9();
    // What a bad disk or a hand edit leaves: a truncated file.
    let rules_file = fx.daemon.rules_file();
    let garbage = b"{\"version\":1,\"rules\":[{\"prefix\":\"198.51.100.2/32\",\"act".to_vec();
    fs::write(&rules_file, &garbage).expect("corrupt rules.json");

    let (exit, log) = fx.daemon.restart_expecting_failure();
    assert!(!exit.success(), "{log}");
    println!("refused start: {}", log.lines().last().unwrap_or_default());
    assert!(log.contains("has been moved aside to"), "{log}");
    assert!(log.contains("keep applying"), "{log}");
    let copies: Vec<_> = fs::read_dir(fx.daemon.state_dir())
        .expect("read the state directory")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("rules.json.corrupt-")
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(log.contains(&copies[0].display().to_string()), "{log}");
    assert_eq!(
        fs::read(&copies[0]).unwrap(),
        garbage,
        "the copy is the file"
    );
    assert!(!rules_file.exists());
    fx.assert_dropped(ATTACKER, "after the refused start");
    assert!(fx.served(LEGIT), "the legitimate client is served");

    // A restart (systemd's Restart=on-failure) must not start empty and clear the ban.
    let (exit, log) = fx.daemon.restart_expecting_failure();
    assert!(!exit.success(), "{log}");
    assert!(log.contains("is missing but"), "{log}");
    assert!(!rules_file.exists(), "an empty rules file was written");
    fx.assert_dropped(ATTACKER, "after the second refused start");

    // The operator puts a repaired file back: the daemon starts with it.
    let repaired = format!(
        r#"{{"version":1,"rules":[{{"prefix":"{}","action":"block","scope":"protected_ports","origin":"manual","reason":"repaired","created_at":"2026-01-01T00:00:00Z","expires_at":null}}]}}"#,
        host_prefix(ATTACKER)
    );
    fs::write(&rules_file, repaired).expect("restore rules.json");
    fx.daemon.restart();
    assert!(fx.daemon.block_rule(&host_prefix(ATTACKER)).is_some());
    fx.assert_dropped(ATTACKER, "after the repaired start");
}
