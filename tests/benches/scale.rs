//! A million sources (`cargo xtask bench`, root): what a spoofed-source flood costs
//! glance-limiter as its per-source table grows, and what the daemon does under one.
//! Writes target/bench/scale.json.
//!
//! Set-up as in the flood benchmark (`benches/flood.rs`): [`AttackTopology`], the live-frames
//! sender on CPU 0, the receiving veth's threaded NAPI pinned to the last CPU, everything at
//! nice -20. The flood sends SYNs to port 9292 from IPv6 sources rotating over a range of
//! 2001:db8:1::/96 (the IPv4 test ranges hold 256 addresses each; a million needs IPv6).
//!
//! 1. **Table size.** glance-limiter alone (no daemon) with its table sized 4,096, 65,536 and
//!    1,048,576 rows, flooded from exactly that many sources: a first pass fills the table,
//!    then the measured windows find every source in it, spread over the whole table (each
//!    packet a lookup of a different row, the cache-hostile case). Per packet: CPU time of the
//!    receiving NAPI thread and the program's own time (BPF statistics on throughout, so both
//!    include their two clock reads). An nftables ingress rule drops the flood after the
//!    program passed it, so the stack's answers stay out of the figures. One more case floods
//!    the default 65,536-row table from a million sources: every packet a new source that
//!    evicts another (the LRU's churn).
//! 2. **Spoofed flood against the daemon.** The real daemon (`limiter run`, default policy
//!    and table) protects the server; the operator's rules (a manual block, a manual allow)
//!    are in place; a legitimate client sends a request every 10 ms over its own link. The
//!    flood rotates over a million sources. Recorded: the tracked sources (never above the
//!    table's bound), the rules before and after (none lost), the daemon's CPU share and
//!    resident memory, the legitimate client's answers and latency.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_common::Counter;
use limiter_tests::{
    daemon::DaemonSetup,
    flood::{Flood, FloodReport, Payload, Sources},
    http::{connect_from, request, StandInServer},
    metrics::{self, Exposition},
    napi,
    netns::{rx_packets, AttackTopology, Netns},
    nft::NftTable,
    rig::FloodRig,
    summary::{self, bench_dir, median},
};
use limiter_user::loader::{Limiter, LoadOptions};
use serde::Serialize;

const PORT: u16 = 9292;
const WINDOW: Duration = Duration::from_millis(1500);
const WINDOWS: usize = 3;
const SPOOF_FIRST: &str = "2001:db8:1::";
const MILLION: u32 = 1 << 20;
const SPOOFED_FLOOD: Duration = Duration::from_secs(12);
const LEGIT_GAP: Duration = Duration::from_millis(10);
const FILL_LIMIT: Duration = Duration::from_secs(40);
/// The daemon's metrics listener, on the server namespace's own loopback.
const METRICS: &str = "127.0.0.1:9464";

#[derive(Serialize)]
struct TableCase {
    capacity: u32,
    sources: u32,
    /// Rows in the table after the fill (the LRU keeps a little slack).
    rows: usize,
    pps: f64,
    cpu_ns_per_pkt: f64,
    prog_ns_per_pkt: f64,
    /// Sources the program inserted per packet in the measured windows: 0 when every source
    /// is known, 1 when every packet evicts one.
    new_sources_per_pkt: f64,
}

#[derive(Serialize)]
struct SpoofedCase {
    sources: u32,
    seconds: f64,
    packets_sent: u64,
    packets_received: u64,
    source_capacity: u64,
    /// Sources the daemon tracks rates for (its tracker keeps up to twice the table, so a
    /// source evicted from the kernel keeps its history for a while).
    tracked_sources_max: u64,
    /// Rows of the kernel's per-source table (the daemon's `source_table_rows` metric).
    table_rows_max: usize,
    rules_before: usize,
    operator_rules_kept: bool,
    auto_rules_after: Vec<String>,
    daemon_cpu_percent: f64,
    daemon_rss_mib_max: f64,
    legit_requests: usize,
    legit_failures: usize,
    legit_p50_ms: f64,
    legit_p99_ms: f64,
    legit_p50_ms_no_flood: f64,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the scale benchmark needs network namespaces and BPF: run `cargo xtask bench` as root"
        );
        std::process::exit(1);
    }
    let rig = FloodRig::new();
    let (topo, receiver_cpu, iface) = (&rig.topo, rig.receiver_cpu, rig.receiver_iface());
    let flood = |count: u32, max_packets: u64, max_duration: Duration| {
        rig.flood(
            AttackTopology::ATTACKER_SERVER_V6.parse().unwrap(),
            PORT,
            Payload::Syn,
            Sources::Range {
                first: SPOOF_FIRST.parse().unwrap(),
                count,
            },
            max_packets,
            max_duration,
        )
    };

    let mut table = Vec::new();
    {
        let _bpf_stats =
            aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        let _drop_after = NftTable::new(
            &topo.server,
            "netdev",
            "glscale",
            &format!(
                "chain ingress {{ type filter hook ingress device {iface} priority 0; policy accept;
                     ip6 saddr {SPOOF_FIRST}/96 drop; }}"
            ),
        );
        for (capacity, sources) in [
            (4_096, 4_096),
            (65_536, 65_536),
            (MILLION, MILLION),
            (65_536, MILLION),
        ] {
            let case = table_case(topo, receiver_cpu, capacity, sources, &flood);
            eprintln!(
                "table {:>8} rows, {:>8} sources: {:>8.0} pps  {:>5.0} ns/pkt  program {:>4.0} ns  new/pkt {:.2}",
                case.capacity, case.sources, case.pps, case.cpu_ns_per_pkt, case.prog_ns_per_pkt, case.new_sources_per_pkt
            );
            table.push(case);
        }
    }

    let spoofed = spoofed_case(topo, receiver_cpu, &flood);
    println!("{}", serde_json::to_string_pretty(&spoofed).unwrap());
    print_table(&table);
    write_report(&table, &spoofed);
}

fn table_case(
    topo: &AttackTopology,
    receiver_cpu: usize,
    capacity: u32,
    sources: u32,
    flood: &impl Fn(u32, u64, Duration) -> Flood,
) -> TableCase {
    let iface = topo.attacker.server_iface;
    let mut limiter = Limiter::load(&LoadOptions {
        source_capacity: capacity,
    })
    .expect("load glance-limiter");
    limiter.set_protected_ports(&[PORT]).unwrap();
    topo.server
        .run(|| limiter.attach(iface))
        .expect("attach glance-limiter");
    let threads = napi::pin_receiver(iface, receiver_cpu);

    // The fill: until the table holds nearly every source (the receiving ring drops frames,
    // so one pass is not enough), within a bound.
    let filling = Instant::now();
    let mut rows = 0;
    while rows < sources as usize * 95 / 100 && filling.elapsed() < FILL_LIMIT {
        flood(sources, 2 * u64::from(sources), Duration::from_secs(5))
            .spawn_in(&topo.attacker.ns)
            .join()
            .expect("fill");
        rows = limiter.sources_batched().unwrap().len();
    }

    let (mut pps, mut cpu_ns, mut prog_ns, mut new_per_pkt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..WINDOWS {
        let cpu = || -> u64 {
            threads
                .iter()
                .map(|&pid| napi::thread_cpu_ns(pid).unwrap())
                .sum()
        };
        let (rx0, cpu0, stats0, new0) = (
            topo.server.run(|| rx_packets(iface)),
            cpu(),
            limiter.run_stats().unwrap(),
            limiter.counters().unwrap().get(Counter::SourceNew),
        );
        let report: FloodReport = flood(sources, 100_000_000, WINDOW)
            .spawn_in(&topo.attacker.ns)
            .join()
            .expect("flood");
        let (rx1, cpu1, stats1, new1) = (
            topo.server.run(|| rx_packets(iface)),
            cpu(),
            limiter.run_stats().unwrap(),
            limiter.counters().unwrap().get(Counter::SourceNew),
        );
        let packets = (rx1 - rx0).max(1) as f64;
        pps.push(packets / report.elapsed.as_secs_f64());
        cpu_ns.push((cpu1 - cpu0) as f64 / packets);
        let runs = (stats1.run_count - stats0.run_count).max(1) as f64;
        prog_ns.push((stats1.run_time - stats0.run_time).as_nanos() as f64 / runs);
        new_per_pkt.push((new1 - new0) as f64 / runs);
    }
    TableCase {
        capacity,
        sources,
        rows,
        pps: median(&pps),
        cpu_ns_per_pkt: median(&cpu_ns),
        prog_ns_per_pkt: median(&prog_ns),
        new_sources_per_pkt: median(&new_per_pkt),
    }
}

fn spoofed_case(
    topo: &AttackTopology,
    receiver_cpu: usize,
    flood: &impl Fn(u32, u64, Duration) -> Flood,
) -> SpoofedCase {
    let iface = topo.attacker.server_iface;
    let _server = StandInServer::start_in(&topo.server, PORT);
    let daemon = DaemonSetup::new(&topo.server, &topo.server_ifaces())
        .metrics_listen(METRICS)
        .start();
    let legit_src = AttackTopology::LEGIT_V4[0];
    // The operator's rules, which a flood must not push out.
    daemon.cli_ok(&["block", "2001:db8:ffff::/48", "--reason", "operator block"]);
    daemon.cli_ok(&[
        "allow",
        &format!("{legit_src}/32"),
        "--reason",
        "compute node",
    ]);
    let operator_rules = daemon.rules();
    // The default configuration's table.
    let capacity = u64::from(limiter_common::DEFAULT_SOURCE_CAPACITY);

    let pid = daemon.pid().expect("daemon running");

    let baseline = legit_run(topo, Duration::from_secs(2));
    napi::pin_receiver(iface, receiver_cpu);

    let stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let stop = stop.clone();
        topo.legit.ns.spawn(move || legit_client(legit_src, &stop))
    };
    thread::sleep(Duration::from_millis(100));
    let (rx0, cpu0) = (topo.server.run(|| rx_packets(iface)), process_cpu(pid));
    let started = Instant::now();
    let handle = flood(MILLION, 200_000_000, SPOOFED_FLOOD).spawn_in(&topo.attacker.ns);
    let (mut tracked_max, mut table_max, mut rss_max) = (0u64, 0usize, 0f64);
    let mut last_scrape = String::new();
    while started.elapsed() < SPOOFED_FLOOD {
        thread::sleep(Duration::from_millis(500));
        let status = daemon.status_json();
        tracked_max = tracked_max.max(status["tracked_sources"].as_u64().unwrap_or(0));
        if let Some((rows, text)) = scrape(&topo.server, "glance_limiter_source_table_rows") {
            table_max = table_max.max(rows as usize);
            last_scrape = text;
        }
        rss_max = rss_max.max(process_rss_mib(pid));
    }
    let report = handle.join().expect("flood");
    let seconds = started.elapsed().as_secs_f64();
    // The endpoint as an operator's Prometheus saw it at the flood's end.
    let scrape_path = bench_dir().join("scale-metrics.txt");
    fs::create_dir_all(scrape_path.parent().unwrap()).ok();
    fs::write(&scrape_path, &last_scrape).expect("write the scrape");
    let (rx1, cpu1) = (topo.server.run(|| rx_packets(iface)), process_cpu(pid));
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, failures) = legit.join().expect("legitimate client");
    latencies.sort_by(f64::total_cmp);

    let after = daemon.rules();
    let kept = operator_rules.iter().all(|r| after.contains(r));
    let auto_rules_after = after
        .iter()
        .filter(|r| r["origin"] == "auto")
        .map(|r| r["prefix"].as_str().unwrap_or("?").to_owned())
        .collect();
    // What the flood must not do, whatever the figures: lose a rule, or outgrow the bounds
    // (the table by a few rows at most: a batch read under churn can see a row and the row
    // that replaced it).
    assert!(
        kept,
        "operator rules lost: before {operator_rules:?}, after {after:?}"
    );
    assert!(
        table_max as u64 <= capacity + capacity / 100,
        "kernel table {table_max} rows, bound {capacity}"
    );
    assert!(
        tracked_max <= 2 * capacity,
        "tracker {tracked_max} sources, bound {}",
        2 * capacity
    );
    assert!(
        !latencies.is_empty(),
        "the legitimate client was never answered"
    );
    SpoofedCase {
        sources: MILLION,
        seconds,
        packets_sent: report.sent,
        packets_received: rx1 - rx0,
        source_capacity: capacity,
        tracked_sources_max: tracked_max,
        table_rows_max: table_max,
        rules_before: operator_rules.len(),
        operator_rules_kept: kept,
        auto_rules_after,
        daemon_cpu_percent: (cpu1 - cpu0) / seconds * 100.0,
        daemon_rss_mib_max: rss_max,
        legit_requests: latencies.len(),
        legit_failures: failures,
        legit_p50_ms: percentile(&latencies, 0.5),
        legit_p99_ms: percentile(&latencies, 0.99),
        legit_p50_ms_no_flood: baseline,
    }
}

/// One unlabelled sample from the daemon's metrics endpoint (the table's row count is only
/// there: walking the pinned table with get_next_key while the LRU churns counts rows twice).
fn scrape(server: &Netns, name: &str) -> Option<(f64, String)> {
    let addr = METRICS.parse().unwrap();
    let scrape = server.run(|| metrics::get(addr, "/metrics", None)).ok()?;
    let value = Exposition::parse(&scrape.body).ok()?.value(name, &[])?;
    Some((value, scrape.body))
}

/// The legitimate client's median latency over `duration` without a flood.
fn legit_run(topo: &AttackTopology, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let stop = stop.clone();
        topo.legit
            .ns
            .spawn(move || legit_client(AttackTopology::LEGIT_V4[0], &stop))
    };
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, _) = legit.join().expect("legitimate client");
    latencies.sort_by(f64::total_cmp);
    percentile(&latencies, 0.5)
}

/// Requests over keep-alive connections, one every [`LEGIT_GAP`], until `stop` (or 60 s):
/// the latency of each answered one in milliseconds, and how many failed (a failed
/// connection is replaced).
fn legit_client(src: &str, stop: &AtomicBool) -> (Vec<f64>, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut stream = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let started = Instant::now();
        let conn = match stream.take() {
            Some(s) => Ok(s),
            None => connect_from(src, AttackTopology::SERVER_V4, PORT, Duration::from_secs(2)),
        };
        match conn.and_then(|mut s| request(&mut s, "GET", "/v2/images", "").map(|st| (s, st))) {
            Ok((s, 200)) => {
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
                stream = Some(s);
            }
            _ => failures += 1,
        }
        thread::sleep(LEGIT_GAP);
    }
    (latencies, failures)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// User plus system time of a process, in seconds (/proc/PID/stat, USER_HZ ticks).
fn process_cpu(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are fixed.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn process_rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn print_table(table: &[TableCase]) {
    println!(
        "\n{:>9} {:>9} {:>9} {:>11} {:>9} {:>11} {:>8}",
        "capacity", "sources", "rows", "pps", "ns/pkt", "program ns", "new/pkt"
    );
    for c in table {
        println!(
            "{:>9} {:>9} {:>9} {:>11.0} {:>9.0} {:>11.0} {:>8.2}",
            c.capacity,
            c.sources,
            c.rows,
            c.pps,
            c.cpu_ns_per_pkt,
            c.prog_ns_per_pkt,
            c.new_sources_per_pkt
        );
    }
    let at = |rows: u32| {
        table
            .iter()
            .find(|c| c.capacity == rows && c.sources == rows)
            .unwrap()
    };
    let (small, large) = (at(4_096), at(MILLION));
    println!(
        "per-packet cost at 1M / at 4k: receive path {:.2}, program {:.2} (target <= 3)",
        large.cpu_ns_per_pkt / small.cpu_ns_per_pkt,
        large.prog_ns_per_pkt / small.prog_ns_per_pkt
    );
}

fn write_report(table: &[TableCase], spoofed: &SpoofedCase) {
    let report = serde_json::json!({
        "command": "cargo xtask bench",
        "window_ms": WINDOW.as_millis() as u64,
        "windows": WINDOWS,
        "table_size": table,
        "spoofed_flood": spoofed,
    });
    summary::write_report("scale.json", &report);
}
