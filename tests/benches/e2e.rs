//! The daemon end to end, measured (`cargo xtask bench`, root; the release `limiter` binary):
//!
//! - detection to first drop: a flood from the attacker namespace, repeated with a fresh
//!   source each run; from the moment the source crossed the threshold (known from what was
//!   sent: each connect is one SYN, each request one segment) to the start of its first
//!   attempt that got no answer. A connection flood against the stand-in server (the
//!   headline figure) and an image-create flood against the real Glance, if installed.
//!   Writes target/bench/detection.json.
//! - loading 10,000 rules: `limiter block -` with 10,000 distinct addresses on stdin, against
//!   a running daemon, wall time of the CLI call. Writes target/bench/rules_load.json.

use std::{
    sync::atomic::AtomicBool,
    time::{Duration, Instant, SystemTime},
};

use limiter_tests::{
    daemon::{host_prefix, parse_time, Daemon, DaemonSetup},
    glance::RealGlance,
    http::{
        connect_from, connection_flood, image_create_flood, FloodLimits, FloodLog, StandInServer,
    },
    netns::AttackTopology,
    summary::write_report,
};
use serde_json::json;

const GLANCE_PORT: u16 = 9292;
const RUNS: usize = 5;
const LOAD_ROUNDS: usize = 3;
const RULES: usize = 10_000;
/// Default policy: 50 new connections a second over 10 s, 60 image creates a minute.
const CONNECTION_THRESHOLD: usize = 500;
const CREATE_THRESHOLD: usize = 60;
const CREATE: &str = r#"{"name":"bench","disk_format":"raw","container_format":"bare"}"#;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the e2e benchmark runs the daemon in network namespaces: run `cargo xtask bench` as root");
        std::process::exit(1);
    }
    let topo = AttackTopology::new();

    let connection_runs = {
        let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
        let daemon = start_daemon(&topo);
        (0..RUNS)
            .map(|run| {
                spread_over_the_poll(run);
                connection_flood_detection(&topo, &daemon, AttackTopology::ATTACKER_V4[run])
            })
            .collect::<Vec<_>>()
    };
    let image_runs = if RealGlance::installed() {
        let _glance = RealGlance::start_for(&topo, GLANCE_PORT);
        let daemon = start_daemon(&topo);
        Some(
            (0..RUNS)
                .map(|run| {
                    spread_over_the_poll(run);
                    image_flood_detection(&topo, &daemon, AttackTopology::ATTACKER_V4[run])
                })
                .collect::<Vec<_>>(),
        )
    } else {
        eprintln!("real Glance is not installed (cargo xtask setup): image-create flood skipped");
        None
    };

    println!("detection to first drop (poll interval 1000 ms), {RUNS} runs each:");
    let connection = summary(&connection_runs);
    print_summary("connection flood, stand-in server", &connection);
    let mut detection = connection.clone();
    detection["flood"] = json!("connections, 1 SYN/ms, threshold 500 SYNs in 10 s");
    detection["server"] = json!("stand-in");
    if let Some(runs) = &image_runs {
        let image = summary(runs);
        print_summary("image-create flood, real Glance", &image);
        let mut image = image;
        image["flood"] = json!("POST /v2/images over one keep-alive connection, threshold 60/min");
        image["server"] = json!("real Glance");
        detection["image_create_flood"] = image;
    }
    detection["command"] = json!("cargo xtask bench");
    write_report("detection.json", &detection);

    let load = rules_load(&topo);
    write_report("rules_load.json", &load);
}

/// A daemon on both server-side veths, default policy except aggregation: each run's source
/// must be banned on its own, not swept into a /24 ban by the earlier runs' sources.
fn start_daemon(topo: &AttackTopology) -> Daemon {
    DaemonSetup::new(&topo.server, &topo.server_ifaces())
        .policy("aggregate", "false")
        .start()
}

/// Runs end a fixed time after a poll (the ban), so back-to-back runs would all cross their
/// threshold at the same moment of the poll cycle and measure the same delay. Starting run
/// `n` `n/RUNS` of an interval later spreads the crossings evenly over the cycle, as floods
/// arriving at random would be.
fn spread_over_the_poll(run: usize) {
    std::thread::sleep(Duration::from_millis((1000 * run / RUNS) as u64));
}

/// One detection measurement, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Threshold crossed → the first attempt that got no answer started.
    to_first_drop_ms: f64,
    /// Threshold crossed → `limiter list` showed the ban.
    to_rule_seen_ms: f64,
    /// The poll that decided the ban (the rule's `created_at`) → the first dropped attempt:
    /// what the daemon takes to store the rule and put it into the kernel.
    poll_to_first_drop_ms: f64,
}

fn connection_flood_detection(topo: &AttackTopology, daemon: &Daemon, src: &'static str) -> Run {
    let dst = topo.attacker.server_addr_for(src);
    let flood = topo.attacker.ns.spawn(move || {
        let limits = FloodLimits {
            max_attempts: 20_000,
            max_duration: Duration::from_secs(15),
            stop_after_failures: Some(1),
        };
        let pace = Some(Duration::from_millis(1));
        connection_flood(src, dst, GLANCE_PORT, pace, limits, &AtomicBool::new(false))
    });
    measure(daemon, src, flood, CONNECTION_THRESHOLD)
}

fn image_flood_detection(topo: &AttackTopology, daemon: &Daemon, src: &'static str) -> Run {
    let dst = topo.attacker.server_addr_for(src);
    let flood = topo.attacker.ns.spawn(move || {
        let limits = FloodLimits {
            max_attempts: 5_000,
            max_duration: Duration::from_secs(20),
            stop_after_failures: Some(1),
        };
        image_create_flood(
            src,
            dst,
            GLANCE_PORT,
            CREATE,
            None,
            limits,
            &AtomicBool::new(false),
        )
    });
    measure(daemon, src, flood, CREATE_THRESHOLD)
}

/// Watches for the ban while the flood runs; the `threshold`-th attempt crossed it.
fn measure(
    daemon: &Daemon,
    src: &str,
    flood: std::thread::JoinHandle<FloodLog>,
    threshold: usize,
) -> Run {
    // One reading of both clocks, to place attempts (Instant) against the rule's wall time.
    let (instant_zero, wall_zero) = (Instant::now(), SystemTime::now());
    let rule = daemon.wait_for_rule(&host_prefix(src), Duration::from_secs(20));
    let rule_seen = Instant::now();
    let log = flood.join().expect("flood thread");
    assert!(
        rule.is_some(),
        "{src} was not banned: {} attempts, {} answered, first failure {:?}; stats {}",
        log.attempts.len(),
        log.successes(),
        log.first_failure(),
        daemon.stats_json()
    );
    let first_failure = log.first_failure().expect("the flood was cut off");
    assert!(
        first_failure >= threshold,
        "{src}: attempt {first_failure} failed before the threshold"
    );
    let crossing = log.attempts[threshold - 1].started;
    let first_drop = log.attempts[first_failure].started;
    let first_drop_wall = wall_zero + (first_drop - instant_zero);
    let decided = parse_time(rule.as_ref().unwrap()["created_at"].as_str().unwrap());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let run = Run {
        to_first_drop_ms: ms(first_drop - crossing),
        to_rule_seen_ms: ms(rule_seen - crossing),
        poll_to_first_drop_ms: match first_drop_wall.duration_since(decided) {
            Ok(after) => ms(after),
            Err(before) => -ms(before.duration()),
        },
    };
    eprintln!("  {src}: {run:?}");
    run
}

fn summary(runs: &[Run]) -> serde_json::Value {
    let drops: Vec<f64> = runs.iter().map(|r| round(r.to_first_drop_ms)).collect();
    let rules: Vec<f64> = runs.iter().map(|r| round(r.to_rule_seen_ms)).collect();
    let installs: Vec<f64> = runs
        .iter()
        .map(|r| round(r.poll_to_first_drop_ms))
        .collect();
    json!({
        "runs_ms": drops,
        "median_ms": median(&drops),
        "worst_ms": drops.iter().cloned().fold(0.0, f64::max),
        "poll_interval_ms": 1000,
        "rule_seen_runs_ms": rules,
        "rule_seen_median_ms": median(&rules),
        "poll_to_first_drop_runs_ms": installs,
        "poll_to_first_drop_median_ms": median(&installs),
    })
}

fn print_summary(name: &str, s: &serde_json::Value) {
    println!(
        "  {name:<36} median {:>7.1} ms  worst {:>7.1} ms  runs {}  (poll → first drop: median {} ms)",
        s["median_ms"].as_f64().unwrap(),
        s["worst_ms"].as_f64().unwrap(),
        s["runs_ms"],
        s["poll_to_first_drop_median_ms"]
    );
}

/// `limiter block -` with 10,000 distinct IPv6 hosts, timed; the rules are removed again
/// (`unblock -`, also timed) between rounds, so each round starts from no rules.
fn rules_load(topo: &AttackTopology) -> serde_json::Value {
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let daemon = start_daemon(topo);
    // One of them is an attacker address, to check the load really blocks.
    let probe = AttackTopology::ATTACKER_V6[2];
    let mut addresses: Vec<String> = (1..RULES)
        .map(|i| format!("2001:db8:f00d::{i:x}"))
        .collect();
    addresses.push(probe.to_owned());
    let input = addresses.join("\n") + "\n";

    let (mut loads, mut unloads) = (Vec::new(), Vec::new());
    for round in 0..LOAD_ROUNDS {
        let started = Instant::now();
        let out = daemon.cli_with_stdin(
            &["block", "-", "--reason", "bench", "--json"],
            input.as_bytes(),
        );
        loads.push(started.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let change: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            change["added"].as_array().map(Vec::len),
            Some(RULES),
            "round {round}"
        );
        assert_eq!(daemon.status_json()["rules"]["block_manual"], RULES);
        if round == 0 {
            let blocked = topo.attacker.ns.run(|| {
                connect_from(
                    probe,
                    topo.attacker.server_addr_for(probe),
                    GLANCE_PORT,
                    Duration::from_millis(500),
                )
                .is_err()
            });
            assert!(blocked, "{probe} is blocked after the load");
        }

        let started = Instant::now();
        let out = daemon.cli_with_stdin(&["unblock", "-", "--json"], input.as_bytes());
        unloads.push(started.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(daemon.status_json()["rules"]["block_manual"], 0);
    }
    let ms = |ds: &[Duration]| {
        ds.iter()
            .map(|d| round(d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
    };
    let (loads, unloads) = (ms(&loads), ms(&unloads));
    let load_median = median(&loads);
    println!(
        "loading {RULES} rules with `limiter block -`: median {load_median:.1} ms (target < 1000 ms), \
         runs {loads:?}; removing them with `unblock -`: median {:.1} ms",
        median(&unloads)
    );
    json!({
        "command": "cargo xtask bench",
        "rules": RULES,
        "runs_ms": loads,
        "median_ms": load_median,
        "target_ms": 1000,
        "unblock_runs_ms": unloads,
        "unblock_median_ms": median(&unloads),
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        round((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0)
    }
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}
