//! Per-packet cost of the XDP program through BPF_PROG_TEST_RUN, each case measured against
//! an empty XDP_PASS program in the same run, interleaved, so that machine noise hits both.
//! Writes target/bench/xdp.json. Run with `cargo xtask bench` (root).

use std::{net::Ipv6Addr, time::Duration};

use limiter_tests::{frames::Packet, summary};
use limiter_user::{
    loader::{Baseline, Limiter, LoadOptions, Verdict},
    rules::{compile, Action, KernelRule, Scope},
};
use serde::Serialize;

/// Runs per measurement for the repeat-based cases, and measurements per case.
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 9;
/// Single-shot runs for the new-source case (each needs a source never seen before).
const NEW_SOURCE_RUNS: usize = 20_000;
const TABLE_CAPACITY: u32 = 65_536;
const GLANCE_PORT: u16 = 9292;

#[derive(Serialize)]
struct Case {
    name: &'static str,
    median_ns: f64,
    empty_ns: f64,
    /// `median_ns - empty_ns`: what the program adds to an empty one.
    delta_ns: f64,
    /// The target for `delta_ns` from the issue.
    target_delta_ns: f64,
    min_ns: f64,
    max_ns: f64,
}

#[derive(Serialize)]
struct Report {
    command: &'static str,
    cases: Vec<Case>,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the XDP benchmark loads BPF programs: run `cargo xtask bench` as root");
        std::process::exit(1);
    }
    let mut limiter = Limiter::load(&LoadOptions {
        source_capacity: TABLE_CAPACITY,
    })
    .expect("load glance-limiter");
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    let empty = Baseline::load(Baseline::EMPTY_PASS).expect("load empty program");

    let known = "198.51.100.7";
    let banned = "198.51.100.99";
    // Realistic rule load: a thousand banned IPv6 hosts, a few prefixes, an allowlist.
    let mut rules: Vec<KernelRule> = (0..1000u16)
        .map(|i| rule(&format!("2001:db8:bad::{i:x}/128"), Action::Block))
        .collect();
    rules.push(rule("203.0.113.0/26", Action::Block));
    rules.push(rule("2001:db8:ba5e::/48", Action::Block));
    rules.push(rule("198.51.100.200/29", Action::Allow));
    // The banned source was seen before its ban, as an offender always is.
    assert_eq!(
        limiter
            .test_run(&Packet::syn(banned, GLANCE_PORT).build())
            .unwrap(),
        Verdict::Pass
    );
    rules.push(rule(&format!("{banned}/32"), Action::Block));
    let clock = limiter.clock().unwrap();
    rules.retain(|r| r.net.prefix_len() == 32);
    limiter
        .apply_rules(&compile(&rules, &clock).unwrap())
        .unwrap();

    let mut cases = Vec::new();
    let repeated = [
        ("other-port", Packet::syn(known, 22).build(), Verdict::Pass, 10.0),
        ("syn-known", Packet::syn(known, GLANCE_PORT).build(), Verdict::Pass, 40.0),
        (
            "image-create",
            Packet::request(
                known,
                GLANCE_PORT,
                b"POST /v2/images HTTP/1.1\r\nHost: glance:9292\r\nContent-Type: application/json\r\nContent-Length: 62\r\n\r\n",
            )
            .build(),
            Verdict::Pass,
            40.0,
        ),
        ("blocked", Packet::syn(banned, GLANCE_PORT).build(), Verdict::Drop, 40.0),
    ];
    for (name, frame, expected, target) in &repeated {
        // Warm: the known source enters the table, caches take the frame.
        assert_eq!(limiter.test_run(frame).unwrap(), *expected, "{name}");
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..ROUNDS {
            let (verdict, d) = limiter.time_run(frame, REPEAT).unwrap();
            assert_eq!(verdict, *expected, "{name}");
            ours.push(nanos(d));
            base.push(nanos(empty.time_run(frame, REPEAT).unwrap().1));
        }
        cases.push(case(name, ours, base, *target));
    }

    cases.extend(proxied_requests(&empty));
    cases.push(new_source_into_full_table(&limiter, &empty));
    print_table(&cases);
    write_report(cases);
}

/// Requests through a trusted proxy (issue 10): an image create with 1 KB of headers and the
/// client in the last one, and a request on a connection whose PROXY v2 header named the
/// client; and what a direct client's image create costs with trusted proxies configured
/// against without, interleaved in one run (the feature must cost untrusted sources nothing).
fn proxied_requests(empty: &Baseline) -> Vec<Case> {
    let proxy = "198.51.100.2";
    let load = |proxies: &[&str]| {
        let mut limiter = Limiter::load(&LoadOptions {
            source_capacity: TABLE_CAPACITY,
        })
        .expect("load glance-limiter");
        limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
        let nets: Vec<ipnet::IpNet> = proxies.iter().map(|p| p.parse().unwrap()).collect();
        limiter.set_trusted_proxies(&nets).unwrap();
        let hz = limiter.clock().unwrap().hz;
        limiter.set_reject_response(hz).unwrap();
        limiter
    };
    let with_proxies = load(&["198.51.100.2/32", "2001:db8:51::/64"]);
    let without = load(&[]);
    let mut headers: String = (0..24)
        .map(|i| format!("X-Header-{i:02}: {}\r\n", "v".repeat(28)))
        .collect();
    headers.push_str("X-Forwarded-For: 203.0.113.7\r\n");
    let request = format!(
        "POST /v2/images HTTP/1.1\r\nHost: glance:9292\r\nContent-Type: application/json\r\n\
         {headers}\r\n{{\"name\":\"x\",\"disk_format\":\"raw\",\"container_format\":\"bare\"}}"
    );
    let header_bytes = request.find("\r\n\r\n").unwrap();
    assert!(
        (1000..1200).contains(&header_bytes),
        "{header_bytes} bytes of headers"
    );
    // Its own connection: the PROXY v2 one below would otherwise name its client.
    let mut proxied = Packet::request(proxy, GLANCE_PORT, request.as_bytes());
    proxied.src_port = 40_001;
    let proxied = proxied.build();
    let mut pp2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    pp2.extend_from_slice(&[203, 0, 113, 8, 198, 51, 100, 1, 0x9c, 0x40, 0x24, 0x4c]);
    let opening = Packet::request(proxy, GLANCE_PORT, &pp2).build();
    assert_eq!(with_proxies.test_run(&opening).unwrap(), Verdict::Pass);
    let on_proxied_connection = Packet::request(
        proxy,
        GLANCE_PORT,
        b"POST /v2/images HTTP/1.1\r\nHost: glance:9292\r\nContent-Length: 62\r\n\r\n",
    )
    .build();
    let direct = Packet::request(
        "198.51.100.7",
        GLANCE_PORT,
        b"POST /v2/images HTTP/1.1\r\nHost: glance:9292\r\nContent-Type: application/json\r\nContent-Length: 62\r\n\r\n",
    )
    .build();
    let timed = |limiter: &Limiter, frame: &[u8]| {
        let (verdict, d) = limiter.time_run(frame, REPEAT).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        nanos(d)
    };
    for frame in [&proxied, &on_proxied_connection, &direct] {
        timed(&with_proxies, frame);
        timed(&without, frame);
    }
    let mut cases = Vec::new();
    for (name, frame, target) in [
        ("proxied-xff-1kb", &proxied, 150.0),
        ("proxied-pp2-conn", &on_proxied_connection, 150.0),
    ] {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.push(timed(&with_proxies, frame));
            base.push(nanos(empty.time_run(frame, REPEAT).unwrap().1));
        }
        cases.push(case(name, ours, base, target));
    }
    // Untrusted sources: the same direct image create on the program with trusted proxies
    // configured ("ours") against the program without ("empty" column), interleaved.
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(timed(&with_proxies, &direct));
        base.push(timed(&without, &direct));
    }
    cases.push(case("direct-vs-no-proxies", ours, base, 5.0));
    // The proxied requests really were attributed: the client rows counted them.
    let clients = with_proxies.sources().unwrap();
    for client in ["203.0.113.7", "203.0.113.8"] {
        let addr: std::net::IpAddr = client.parse().unwrap();
        let row = clients.iter().find(|e| e.addr == addr);
        assert!(
            row.is_some_and(|e| e.stats.image_create > 0),
            "{client} not attributed"
        );
    }
    cases
}

/// Fills the table to capacity, then measures single runs each from a source never seen:
/// every one inserts and evicts the least recently used row.
fn new_source_into_full_table(limiter: &Limiter, empty: &Baseline) -> Case {
    let source = |i: u32| -> String {
        let addr = Ipv6Addr::from(0x2001_0db8_0001_0000_0000_0000_0000_0000u128 | u128::from(i));
        addr.to_string()
    };
    for i in 0..TABLE_CAPACITY {
        limiter
            .test_run(&Packet::syn(&source(i), GLANCE_PORT).build())
            .unwrap();
    }
    let rows = limiter.sources().unwrap().len();
    assert!(
        rows >= TABLE_CAPACITY as usize * 9 / 10,
        "table not full: {rows} rows"
    );
    // Frames built beforehand: building one between runs would evict the program's maps and
    // code from the caches, which back-to-back packets do not do.
    let frames: Vec<Vec<u8>> = (0..NEW_SOURCE_RUNS as u32)
        .map(|i| Packet::syn(&source(TABLE_CAPACITY + i), GLANCE_PORT).build())
        .collect();
    let mut ours = Vec::with_capacity(frames.len());
    for frame in &frames {
        let (verdict, d) = limiter.time_run(frame, 1).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        ours.push(nanos(d));
    }
    let base = frames
        .iter()
        .map(|frame| nanos(empty.time_run(frame, 1).unwrap().1))
        .collect();
    case("new-source-full", ours, base, 400.0)
}

fn rule(net: &str, action: Action) -> KernelRule {
    KernelRule {
        net: net.parse().unwrap(),
        action,
        scope: Scope::ProtectedPorts,
        expires: None,
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn case(name: &'static str, ours: Vec<f64>, base: Vec<f64>, target_delta_ns: f64) -> Case {
    let min_ns = ours.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ns = ours.iter().copied().fold(0.0, f64::max);
    let (median_ns, empty_ns) = (median(ours), median(base));
    Case {
        name,
        median_ns,
        empty_ns,
        delta_ns: median_ns - empty_ns,
        target_delta_ns,
        min_ns,
        max_ns,
    }
}

fn print_table(cases: &[Case]) {
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10}  met",
        "case", "median ns", "empty ns", "delta ns", "target"
    );
    for c in cases {
        println!(
            "{:<16} {:>10.0} {:>10.0} {:>10.0} {:>10}  {}",
            c.name,
            c.median_ns,
            c.empty_ns,
            c.delta_ns,
            format!("<= {:.0}", c.target_delta_ns),
            if c.delta_ns <= c.target_delta_ns {
                "yes"
            } else {
                "NO"
            }
        );
    }
}

fn write_report(cases: Vec<Case>) {
    let report = Report {
        command: "cargo xtask bench",
        cases,
    };
    summary::write_report("xdp.json", &report);
}
