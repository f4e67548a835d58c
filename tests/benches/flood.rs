//! Dropping a banned flood, side by side (`cargo xtask bench`, root; needs `nft`): glance-limiter
//! against an empty XDP drop program, nftables and the bare stack, each case run several times,
//! interleaved with the others in the same run. Writes target/bench/flood.json.
//!
//! Set-up: [`AttackTopology`]. The flood (see `limiter_tests::flood`, the live-frames sender:
//! `BPF_PROG_TEST_RUN` redirecting XDP frames into the attacker's veth) sends SYNs from one
//! fixed attacker source, 198.51.100.2, to 203.0.113.1:9292, where nothing listens (so the
//! unfiltered stack answers each with a RST); two more glance-limiter cases send from a banned
//! IPv6 source and send image-create segments. The legitimate client, on its own link, sends
//! keep-alive requests to a stand-in server on port 9293 of the server namespace;
//! glance-limiter protects both ports.
//!
//! Sender and receiver each get a CPU: the sender thread is pinned to CPU 0; the server's
//! attacker-side veth runs threaded NAPI (GRO on, so it does with or without XDP), its NAPI
//! thread pinned to the last CPU, where the whole receive path runs (XDP, nftables, the stack
//! and its RSTs). See `limiter_tests::napi`.
//!
//! How it is counted:
//! - `pps`: frames the server's attacker-side veth received during the flood window
//!   (`rx_packets` in /proc/net/dev of the server namespace), divided by the window: every
//!   frame the receiving CPU took. Frames it could not take overflow the veth's ring and are
//!   counted at the sender, not here. In the glance-limiter cases the program's own
//!   `DropBlocked` counter is checked against it.
//! - `cpu_ns_per_pkt`: CPU time of the receiving NAPI thread over the window
//!   (/proc/PID/schedstat, nanoseconds; this kernel has no IRQ time accounting, so the
//!   softirq work the thread runs, such as the stack's RSTs, counts as its own) divided by the
//!   packets received: the receive path's cost per packet, whatever else shares the CPU.
//!
//! The benchmark runs at nice -20 (its threads and the NAPI thread): on a shared machine,
//! work at normal priority then takes little from it.
//! - `legit_p50_ms`: median of the legitimate client's request latencies during the window
//!   (one request every 10 ms on one keep-alive connection), median over the runs.

use std::{
    net::IpAddr,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_common::Counter;
use limiter_tests::{
    flood::{Flood, Payload, Sources},
    http::{connect_from, request, StandInServer},
    napi,
    netns::{rx_packets, AttackTopology},
    nft::NftTable,
    rig::{FloodRig, SENDER_CPU},
    summary::{self, max, median, min},
};
use limiter_user::{
    loader::{Baseline, Limiter, LoadOptions, RunStats},
    rules::{compile, Action, KernelRule, Scope},
};
use serde::Serialize;

const FLOOD_PORT: u16 = 9292;
const LEGIT_PORT: u16 = 9293;
const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_millis(1500);
const MAX_PACKETS: u64 = 60_000_000;
const LEGIT_GAP: Duration = Duration::from_millis(10);

/// What a case floods with.
#[derive(Clone, Copy, PartialEq)]
enum Attack {
    None,
    SynV4,
    SynV6,
    CreateV4,
}

/// Cases: (name, what receives, what is sent). The filter is chosen by the name's prefix.
const CASES: [(&str, Attack); 10] = [
    ("no-flood", Attack::None),
    ("xdp-drop-all", Attack::SynV4),
    ("xdp-read-drop", Attack::SynV4),
    ("limiter-banned", Attack::SynV4),
    ("limiter-banned-ipv6", Attack::SynV6),
    ("limiter-banned-create", Attack::CreateV4),
    ("nft-ingress-set", Attack::SynV4),
    ("nft-prerouting-set", Attack::SynV4),
    ("nft-meter", Attack::SynV4),
    ("stack", Attack::SynV4),
];

#[derive(Default)]
struct Runs {
    pps: Vec<f64>,
    sender_pps: Vec<f64>,
    cpu_ns: Vec<f64>,
    prog_ns: Vec<f64>,
    legit_ms: Vec<f64>,
}

#[derive(Serialize)]
struct Case {
    name: &'static str,
    pps_median: f64,
    pps_min: f64,
    pps_max: f64,
    cpu_ns_per_pkt: f64,
    /// The XDP program's own time per run (BPF stats, one extra round), for the XDP cases.
    prog_ns_per_pkt: f64,
    legit_p50_ms: f64,
    legit_p50_ms_min: f64,
    legit_p50_ms_max: f64,
    sender_pps_median: f64,
    runs: usize,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the flood benchmark needs network namespaces and BPF: run `cargo xtask bench` as root"
        );
        std::process::exit(1);
    }
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("the flood benchmark needs `nft` (Debian: nftables; `cargo xtask setup`)");
        std::process::exit(1);
    }
    let rig = FloodRig::new();
    let topo = &rig.topo;
    let _server = StandInServer::start_in(&topo.server, LEGIT_PORT);
    let flood_for = |attack: Attack| {
        let (src, dst, payload): (IpAddr, &str, Payload) = match attack {
            Attack::None => return None,
            Attack::SynV4 => (
                AttackTopology::ATTACKER_V4[0].parse().unwrap(),
                AttackTopology::SERVER_V4,
                Payload::Syn,
            ),
            Attack::SynV6 => (
                AttackTopology::ATTACKER_V6[0].parse().unwrap(),
                AttackTopology::ATTACKER_SERVER_V6,
                Payload::Syn,
            ),
            Attack::CreateV4 => (
                AttackTopology::ATTACKER_V4[0].parse().unwrap(),
                AttackTopology::SERVER_V4,
                Payload::ImageCreate,
            ),
        };
        Some(rig.flood(
            dst.parse().unwrap(),
            FLOOD_PORT,
            payload,
            Sources::Fixed(src),
            MAX_PACKETS,
            WINDOW,
        ))
    };

    let mut runs: Vec<Runs> = CASES.iter().map(|_| Runs::default()).collect();
    for round in 0..ROUNDS {
        for (i, (name, attack)) in CASES.iter().enumerate() {
            let filter = Filter::install(name, topo);
            let napi_threads = rig.pin_receiver();
            let run = measure(topo, flood_for(*attack).as_ref(), &filter, &napi_threads);
            drop(filter);
            eprintln!(
                "round {round} {name:<22} {:>10.0} pps  {:>6.0} ns/pkt  legit p50 {:.2} ms  (sent {:.0}/s)",
                run.pps, run.cpu_ns, run.legit_ms, run.sender_pps
            );
            let r = &mut runs[i];
            r.pps.push(run.pps);
            r.sender_pps.push(run.sender_pps);
            r.cpu_ns.push(run.cpu_ns);
            r.legit_ms.push(run.legit_ms);
        }
    }
    // One more round of the XDP cases with the kernel's BPF statistics on (they cost every
    // program run two clock reads, so they stay off above): each program's own time per
    // packet on the real receive path.
    {
        let _bpf_stats =
            aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        for (i, (name, attack)) in CASES.iter().enumerate() {
            if !(name.starts_with("xdp") || name.starts_with("limiter")) {
                continue;
            }
            let filter = Filter::install(name, topo);
            let napi_threads = rig.pin_receiver();
            let run = measure(topo, flood_for(*attack).as_ref(), &filter, &napi_threads);
            eprintln!("stats  {name:<22} program {:.0} ns/pkt", run.prog_ns);
            runs[i].prog_ns.push(run.prog_ns);
        }
    }
    let cases: Vec<Case> = CASES
        .iter()
        .zip(runs)
        .map(|((name, _), r)| Case {
            name,
            pps_median: median(&r.pps),
            pps_min: min(&r.pps),
            pps_max: max(&r.pps),
            cpu_ns_per_pkt: median(&r.cpu_ns),
            prog_ns_per_pkt: r.prog_ns.first().copied().unwrap_or(0.0),
            legit_p50_ms: median(&r.legit_ms),
            legit_p50_ms_min: min(&r.legit_ms),
            legit_p50_ms_max: max(&r.legit_ms),
            sender_pps_median: median(&r.sender_pps),
            runs: r.pps.len(),
        })
        .collect();
    print_table(&cases);
    write_report(&cases, SENDER_CPU, rig.receiver_cpu);
}

/// What receives the flood on the server's attacker-side veth, removed on drop (the guards
/// are held for their `Drop`).
enum Filter {
    None,
    /// The empty dropping program, attached natively; dropping it detaches it.
    Xdp {
        _program: Baseline,
    },
    Limiter(Limiter),
    Nft {
        _table: NftTable,
    },
}

impl Filter {
    fn install(name: &str, topo: &AttackTopology) -> Filter {
        let iface = topo.attacker.server_iface;
        let banned = AttackTopology::ATTACKER_V4[0];
        match name {
            "no-flood" | "stack" => Filter::None,
            "xdp-drop-all" | "xdp-read-drop" => {
                let name = if name == "xdp-drop-all" {
                    Baseline::EMPTY_DROP
                } else {
                    Baseline::READ_DROP
                };
                let mut program = Baseline::load(name).expect("load a reference program");
                topo.server
                    .run(|| program.attach_native(iface))
                    .expect("attach a reference program (native)");
                Filter::Xdp { _program: program }
            }
            name if name.starts_with("limiter-banned") => {
                let mut limiter = Limiter::load(&LoadOptions {
                    source_capacity: 65_536,
                })
                .expect("load glance-limiter");
                limiter
                    .set_protected_ports(&[FLOOD_PORT, LEGIT_PORT])
                    .unwrap();
                let banned_v6 = AttackTopology::ATTACKER_V6[0];
                let rules = [format!("{banned}/32"), format!("{banned_v6}/128")].map(|net| {
                    KernelRule {
                        net: net.parse().unwrap(),
                        action: Action::Block,
                        scope: Scope::ProtectedPorts,
                        expires: None,
                    }
                });
                let clock = limiter.clock().unwrap();
                limiter
                    .apply_rules(&compile(&rules, &clock).unwrap())
                    .unwrap();
                // Both links, so the legitimate client's traffic goes through it too.
                topo.server.run(|| {
                    for iface in topo.server_ifaces() {
                        limiter.attach(iface).expect("attach glance-limiter");
                    }
                });
                Filter::Limiter(limiter)
            }
            "nft-ingress-set" => Filter::Nft { _table: NftTable::new(
                &topo.server,
                "netdev",
                "glbench",
                &format!(
                    "set banned {{ type ipv4_addr; elements = {{ {banned} }}; }}
                     chain ingress {{ type filter hook ingress device {iface} priority 0; policy accept;
                         ip saddr @banned drop; }}"
                ),
            ) },
            "nft-prerouting-set" => Filter::Nft { _table: NftTable::new(
                &topo.server,
                "inet",
                "glbench",
                &format!(
                    "set banned {{ type ipv4_addr; elements = {{ {banned} }}; }}
                     chain prerouting {{ type filter hook prerouting priority raw; policy accept;
                         ip saddr @banned drop; }}"
                ),
            ) },
            // A per-source rate limit, as an operator would write one: each source may open
            // 50 connections a second to the protected port; above that, drop.
            "nft-meter" => Filter::Nft { _table: NftTable::new(
                &topo.server,
                "inet",
                "glbench",
                &format!(
                    "set persource {{ type ipv4_addr; size 65536; flags dynamic,timeout; timeout 10s; }}
                     chain prerouting {{ type filter hook prerouting priority raw; policy accept;
                         tcp dport {FLOOD_PORT} tcp flags & (syn | ack) == syn update @persource {{ ip saddr limit rate over 50/second }} drop; }}"
                ),
            ) },
            other => panic!("unknown case {other}"),
        }
    }

    /// The XDP program's own time and runs, if this case has one.
    fn program_stats(&self) -> Option<RunStats> {
        match self {
            Filter::Limiter(l) => Some(l.run_stats().unwrap()),
            Filter::Xdp { _program } => Some(_program.run_stats().unwrap()),
            _ => None,
        }
    }

    fn dropped_by_program(&self) -> Option<u64> {
        match self {
            Filter::Limiter(l) => Some(l.counters().unwrap().get(Counter::DropBlocked)),
            _ => None,
        }
    }
}

struct Run {
    pps: f64,
    sender_pps: f64,
    cpu_ns: f64,
    prog_ns: f64,
    legit_ms: f64,
}

fn measure(
    topo: &AttackTopology,
    flood: Option<&Flood>,
    filter: &Filter,
    napi_threads: &[i32],
) -> Run {
    let iface = topo.attacker.server_iface;
    let rx = || topo.server.run(|| rx_packets(iface));
    let busy = || -> u64 {
        napi_threads
            .iter()
            .map(|&pid| napi::thread_cpu_ns(pid).expect("NAPI thread's CPU time"))
            .sum()
    };
    let legit_stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let stop = legit_stop.clone();
        let src = AttackTopology::LEGIT_V4[0];
        topo.legit.ns.spawn(move || legit_client(src, &stop))
    };
    // The legitimate client's connection is open before the window starts.
    thread::sleep(Duration::from_millis(50));
    let (rx0, busy0, drops0, prog0) = (
        rx(),
        busy(),
        filter.dropped_by_program(),
        filter.program_stats(),
    );
    let report = match flood {
        Some(f) => Some(f.clone().spawn_in(&topo.attacker.ns).join().expect("flood")),
        None => {
            thread::sleep(WINDOW);
            None
        }
    };
    let (rx1, busy1, drops1, prog1) = (
        rx(),
        busy(),
        filter.dropped_by_program(),
        filter.program_stats(),
    );
    legit_stop.store(true, Ordering::Relaxed);
    let mut latencies = legit.join().expect("legitimate client");
    assert!(!latencies.is_empty(), "the legitimate client got no answer");

    let packets = rx1 - rx0;
    if let (Some(d0), Some(d1)) = (drops0, drops1) {
        // Every frame the veth received is the banned flood (plus the odd neighbour frame).
        let dropped = d1 - d0;
        assert!(
            dropped as f64 >= packets as f64 * 0.99 && dropped <= packets,
            "program dropped {dropped} of {packets} received"
        );
    }
    let elapsed = report.map_or(WINDOW, |r| r.elapsed).as_secs_f64();
    let flooded = report.is_some() && packets > 0;
    Run {
        pps: if flooded {
            packets as f64 / elapsed
        } else {
            0.0
        },
        sender_pps: report.map_or(0.0, |r| r.pps()),
        cpu_ns: if flooded {
            (busy1 - busy0) as f64 / packets as f64
        } else {
            0.0
        },
        prog_ns: match (prog0, prog1) {
            (Some(a), Some(b)) if b.run_count > a.run_count => {
                (b.run_time - a.run_time).as_nanos() as f64 / (b.run_count - a.run_count) as f64
            }
            _ => 0.0,
        },
        legit_ms: {
            latencies.sort_by(f64::total_cmp);
            latencies[latencies.len() / 2]
        },
    }
}

/// Requests on one keep-alive connection, one every [`LEGIT_GAP`], until `stop` (or 60 s):
/// the latency of each in milliseconds.
fn legit_client(src: &str, stop: &AtomicBool) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = connect_from(
        src,
        AttackTopology::SERVER_V4,
        LEGIT_PORT,
        Duration::from_secs(5),
    )
    .expect("legitimate client connects");
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let started = Instant::now();
        let status = request(&mut stream, "GET", "/v2/images", "").expect("legitimate request");
        assert_eq!(status, 200);
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        thread::sleep(LEGIT_GAP);
    }
    latencies
}

fn print_table(cases: &[Case]) {
    println!(
        "{:<22} {:>11} {:>11} {:>11} {:>9} {:>10} {:>11}",
        "case", "pps median", "pps min", "pps max", "ns/pkt", "legit p50", "sender pps"
    );
    for c in cases {
        println!(
            "{:<22} {:>11.0} {:>11.0} {:>11.0} {:>9.0} {:>7.2} ms {:>11.0}",
            c.name,
            c.pps_median,
            c.pps_min,
            c.pps_max,
            c.cpu_ns_per_pkt,
            c.legit_p50_ms,
            c.sender_pps_median
        );
    }
    let get = |name: &str| cases.iter().find(|c| c.name == name).unwrap();
    let limiter = get("limiter-banned");
    println!("\ntarget                                     ratio   target  met");
    let ratios = [
        (
            "limiter-banned / xdp-drop-all (pps)",
            limiter.pps_median / get("xdp-drop-all").pps_median,
            0.8,
            true,
        ),
        (
            "limiter-banned / xdp-read-drop (pps)",
            limiter.pps_median / get("xdp-read-drop").pps_median,
            f64::NAN,
            true,
        ),
        (
            "limiter-banned / nft-meter (pps)",
            limiter.pps_median / get("nft-meter").pps_median,
            4.0,
            true,
        ),
        (
            "limiter-banned / stack (pps)",
            limiter.pps_median / get("stack").pps_median,
            15.0,
            true,
        ),
        (
            "legit p50 limiter-banned / no-flood",
            limiter.legit_p50_ms / get("no-flood").legit_p50_ms,
            1.5,
            false,
        ),
        (
            "legit p50 stack / no-flood (no limiter)",
            get("stack").legit_p50_ms / get("no-flood").legit_p50_ms,
            f64::NAN,
            false,
        ),
    ];
    for (what, ratio, target, at_least) in ratios {
        let met = if target.is_nan() {
            "-"
        } else if (at_least && ratio >= target) || (!at_least && ratio <= target) {
            "yes"
        } else {
            "NO"
        };
        let target = if target.is_nan() {
            "-".to_owned()
        } else {
            format!("{}{target}", if at_least { ">=" } else { "<=" })
        };
        println!("{what:<42} {ratio:>6.2} {target:>8}  {met}");
    }
}

fn write_report(cases: &[Case], sender_cpu: usize, receiver_cpu: usize) {
    let report = serde_json::json!({
        "command": "cargo xtask bench",
        "window_ms": WINDOW.as_millis() as u64,
        "rounds": ROUNDS,
        "sender": "BPF_PROG_TEST_RUN live frames redirected into the attacker's veth",
        "sender_cpu": sender_cpu,
        "receiver_cpu": receiver_cpu,
        "cases": cases,
    });
    summary::write_report("flood.json", &report);
}
