//! Daemon-side costs, measured side by side in one run: reading the per-source table with
//! batch lookups against get_next_key walking, at 64k and 1M tracked sources, and the whole
//! poll (read + rates + policy). Writes target/bench/daemon.json. `cargo xtask bench` (root).
//!
//! Then the daemon's poll time and memory against the number of tracked sources (4k to 1M),
//! each size in a process of its own (this binary again, with `DAEMON_SCALE_POINT=N`) so
//! that one size's freed memory does not count towards the next: target/bench/daemon_scale.json.

use std::{
    fs,
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use limiter_tests::{frames::Packet, summary::write_report};
use limiter_user::{
    config::Config,
    daemon::Engine,
    loader::{Limiter, LoadOptions},
    policy::{NeverBan, Policy, PolicyConfig},
    prefixes::PrefixSet,
    rates::{Counts, RateTracker},
    store::RuleStore,
};
use serde::{Deserialize, Serialize};

const GLANCE_PORT: u16 = 9292;
const ROUNDS: usize = 5;

#[derive(Serialize)]
struct Case {
    name: String,
    sources: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    target_ms: Option<f64>,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the daemon benchmark loads BPF programs: run `cargo xtask bench` as root");
        std::process::exit(1);
    }
    if let Ok(sources) = std::env::var(SCALE_POINT_VAR) {
        let point = scale_point(sources.parse().expect("a number of sources"));
        println!("{}", serde_json::to_string(&point).unwrap());
        return;
    }
    let mut cases = Vec::new();
    for (sources, target_ms) in [(65_536usize, 25.0), (1_000_000, 500.0)] {
        cases.extend(poll_cases(sources, target_ms));
    }
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "case", "sources", "median ms", "min ms", "max ms", "target"
    );
    for c in &cases {
        println!(
            "{:<28} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>10}",
            c.name,
            c.sources,
            c.median_ms,
            c.min_ms,
            c.max_ms,
            c.target_ms.map_or("-".to_owned(), |t| format!("<= {t:.0}"))
        );
    }
    write_report(
        "daemon.json",
        &serde_json::json!({ "command": "cargo xtask bench", "cases": cases }),
    );

    let points: Vec<ScalePoint> = SCALE_POINTS.iter().map(|&n| run_scale_point(n)).collect();
    println!(
        "\n{:>9} {:>14} {:>15} {:>10} {:>10} {:>12}",
        "sources", "poll ms (idle)", "first poll ms", "RSS MiB", "peak MiB", "kernel MiB"
    );
    for p in &points {
        println!(
            "{:>9} {:>14.1} {:>15.1} {:>10.1} {:>10.1} {:>12.1}",
            p.sources,
            p.poll_ms_median,
            p.first_poll_ms,
            p.rss_mib,
            p.rss_peak_mib,
            p.kernel_table_mib
        );
    }
    write_report(
        "daemon_scale.json",
        &serde_json::json!({ "command": "cargo xtask bench", "points": points }),
    );
}

const SCALE_POINT_VAR: &str = "DAEMON_SCALE_POINT";
const SCALE_POINTS: [usize; 5] = [4_096, 16_384, 65_536, 262_144, 1_048_576];

#[derive(Serialize, Deserialize)]
struct ScalePoint {
    sources: usize,
    /// Rows the table held after the fill.
    rows: usize,
    /// The daemon's poll (Engine::tick) on the idle table, median of [`ROUNDS`].
    poll_ms_median: f64,
    /// The first poll, which sees every row as new: every source active.
    first_poll_ms: f64,
    /// Resident memory of the process after the polls, and its peak.
    rss_mib: f64,
    rss_peak_mib: f64,
    /// Kernel memory of the per-source table (the map's `memlock` as the kernel reports it).
    #[serde(default)]
    kernel_table_mib: f64,
}

fn run_scale_point(sources: usize) -> ScalePoint {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(SCALE_POINT_VAR, sources.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run one scale point");
    assert!(out.status.success(), "scale point {sources} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a result line")).expect("a scale point")
}

/// One process, one table size: fill, then the daemon's engine over it.
fn scale_point(sources: usize) -> ScalePoint {
    let limiter = filled_limiter(sources);
    let rows = count_rows(&limiter);
    let state = tempfile::tempdir().unwrap();
    let config = Config {
        state_dir: state.path().to_owned(),
        source_capacity: sources as u32,
        ..Config::default()
    };
    let store = RuleStore::open(state.path()).unwrap();
    let mut engine = Engine::new(limiter, store, config).unwrap();
    let t = Instant::now();
    engine.tick().unwrap();
    let first_poll = t.elapsed();
    let mut ticks = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        engine.tick().unwrap();
        ticks.push(t.elapsed());
    }
    ticks.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    ScalePoint {
        sources,
        rows,
        poll_ms_median: ms(ticks[ticks.len() / 2]),
        first_poll_ms: ms(first_poll),
        rss_mib: status_kib("VmRSS:") / 1024.0,
        rss_peak_mib: status_kib("VmHWM:") / 1024.0,
        kernel_table_mib: source_table_memlock(sources) as f64 / (1024.0 * 1024.0),
    }
}

/// The `memlock` of this process's per-source table: the LRU hash map (type 9) with 16-byte
/// keys and `sources` entries, found through /proc/self/fdinfo.
fn source_table_memlock(sources: usize) -> u64 {
    let Ok(fds) = fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let entries = sources.to_string();
        if field("map_type:").as_deref() == Some("9")
            && field("key_size:").as_deref() == Some("16")
            && field("max_entries:").as_deref() == Some(entries.as_str())
            && field("value_size:").as_deref()
                == Some(
                    size_of::<limiter_common::SourceStats>()
                        .to_string()
                        .as_str(),
                )
        {
            return field("memlock:").and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    0
}

fn status_kib(field: &str) -> f64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// A glance-limiter whose table holds `sources` rows (IPv6 sources, one SYN each through
/// BPF_PROG_TEST_RUN), sized as the daemon would size it.
fn filled_limiter(sources: usize) -> Limiter {
    let mut limiter = Limiter::load(&LoadOptions {
        source_capacity: sources as u32,
    })
    .expect("load");
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    let started = Instant::now();
    for i in 0..sources as u128 {
        let addr = Ipv6Addr::from(0x2001_0db8_0002_0000_0000_0000_0000_0000u128 | i);
        limiter
            .test_run(&Packet::syn(&addr.to_string(), GLANCE_PORT).build())
            .unwrap();
    }
    let rows = count_rows(&limiter);
    eprintln!("filled {rows} of {sources} rows in {:?}", started.elapsed());
    // The LRU may evict a little before it is full: a few percent is the same table.
    assert!(rows >= sources * 95 / 100, "only {rows} rows");
    limiter
}

/// The table's rows, counted as they stream past: holding them would add a copy of the table
/// to the process's peak memory, which the scale points measure for the daemon alone. (A row
/// where two parts of the read meet may be counted twice: a few in a million.)
fn count_rows(limiter: &Limiter) -> usize {
    let mut rows = 0;
    limiter.for_each_source(|_| rows += 1).unwrap();
    rows
}

/// Fills a table of exactly `sources` rows, then times each way of reading it and the poll.
fn poll_cases(sources: usize, target_ms: f64) -> Vec<Case> {
    let limiter = filled_limiter(sources);

    let mut batched = Vec::new();
    let mut walked = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let rows = limiter.sources_batched().unwrap();
        batched.push(t.elapsed());
        let t = Instant::now();
        let walked_rows = limiter.sources().unwrap();
        walked.push(t.elapsed());
        assert_eq!(rows.len(), walked_rows.len());
    }

    // The rate tracker and policy over every row, as on the daemon's first poll (and on any
    // poll where every source is active).
    let mut tracker = RateTracker::new(sources * 2);
    let mut policy = Policy::new(PolicyConfig::default());
    let never_ban = NeverBan::default();
    let bans = PrefixSet::new();
    let (mut observes, mut evaluates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let rows = limiter.sources_batched().unwrap();
        let now = Duration::from_secs(round as u64 + 1);
        let t_observe = Instant::now();
        tracker.observe(now, rows.iter().map(|r| (r.addr, Counts::from(&r.stats))));
        observes.push(t_observe.elapsed());
        let t_evaluate = Instant::now();
        let decisions = policy.evaluate(now, tracker.iter(), &never_ban, &bans);
        evaluates.push(t_evaluate.elapsed());
        assert!(decisions.is_empty());
    }

    // The daemon's real poll (Engine::tick): table read, then rates and decisions for the
    // sources active since the previous poll only. The table is idle here, as it is between
    // the bursts of a spoofed flood; the first tick sees every row as new.
    let state = tempfile::tempdir().unwrap();
    let config = Config {
        state_dir: state.path().to_owned(),
        source_capacity: sources as u32,
        ..Config::default()
    };
    let store = RuleStore::open(state.path()).unwrap();
    let mut engine = Engine::new(limiter, store, config).unwrap();
    let t = Instant::now();
    engine.tick().unwrap();
    let first_tick = vec![t.elapsed()];
    let mut ticks = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        engine.tick().unwrap();
        ticks.push(t.elapsed());
    }
    let label = if sources >= 1_000_000 { "1M" } else { "64k" };
    vec![
        case(
            format!("read-batched-{label}"),
            sources,
            batched,
            Some(target_ms),
        ),
        case(format!("read-get-next-key-{label}"), sources, walked, None),
        case(format!("rates-observe-{label}"), sources, observes, None),
        case(format!("policy-evaluate-{label}"), sources, evaluates, None),
        case(
            format!("daemon-first-poll-{label}"),
            sources,
            first_tick,
            None,
        ),
        case(
            format!("daemon-poll-{label}"),
            sources,
            ticks,
            Some(target_ms),
        ),
    ]
}

fn case(name: String, sources: usize, mut times: Vec<Duration>, target_ms: Option<f64>) -> Case {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Case {
        name,
        sources,
        median_ms: ms(times[times.len() / 2]),
        min_ms: ms(times[0]),
        max_ms: ms(*times.last().unwrap()),
        target_ms,
    }
}
