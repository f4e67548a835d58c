//! The live screen's costs (`limiter top`, `limiter run --tui`), against issue 4's targets: a
//! frame with 100k tracked sources in under 10 ms, the TUI process under 50 MB resident with
//! 100k sources. Writes target/bench/tui.json. `cargo xtask bench` (root).
//!
//! - The screen thread: build and draw one frame, apply one refresh, decode one `stats`
//!   answer (`limiter_user::tui::bench`, fixed synthetic sources).
//! - The daemon's side of serving the screen: a real `Engine` over the real program, its table
//!   filled with N sources through `BPF_PROG_TEST_RUN` (one SYN each) and polled once, answers
//!   one refresh (`status`, `stats` of the busiest 10,000 or of all, `list`), with no ban and
//!   with 1,000 of the sources banned; the engine thread is busy for `handle`, the control
//!   server's thread for encoding the JSON line. Then one whole refresh as `limiter top` makes
//!   it, over the control socket (client decoding included).
//! - The resident memory of the real `limiter top` process (release build, in tmux) attached
//!   to that engine with 100k sources, with the default fetch limit and with `all`.

use std::{
    fs,
    net::Ipv6Addr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use limiter_tests::{
    daemon::limiter_binary,
    frames::Packet,
    summary::write_report,
    tmux::{find_line, Exit, TmuxSession},
};
use limiter_user::{
    config::Config,
    control::{
        access::Access,
        framing::encode_response,
        protocol::{Request, ResponseLine},
        server::{self, Limits},
    },
    daemon::Engine,
    loader::{Limiter, LoadOptions},
    store::RuleStore,
    tui::{bench as tui_bench, snapshot::ScreenQuery, transport::SocketTransport},
};
use serde::Serialize;

const GLANCE_PORT: u16 = 9292;
/// `limiter top`'s default `--max-sources`.
const DEFAULT_FETCH: usize = 10_000;
/// Bans in force while the daemon answers: a large attack's worth.
const BANS: usize = 1_000;
const FRAME_TARGET_MS: f64 = 10.0;
const MEMORY_TARGET_MB: f64 = 50.0;
/// Issue 12: ≤ 10 ms of `limiter top`'s CPU per refresh at 100k sources (≤ 1 % of a core at
/// one refresh a second; the bound is 5 %).
const REFRESH_CPU_TARGET_MS: f64 = 10.0;

#[derive(Serialize)]
struct Case {
    group: &'static str,
    name: String,
    sources: usize,
    /// Median for timings (ms), steady resident size for memory (MB).
    value: f64,
    /// Worst timing, or the peak resident size (VmHWM).
    max: f64,
    unit: &'static str,
    bytes: Option<usize>,
    target: Option<f64>,
}

impl Case {
    /// A timing in milliseconds, with no size and no target.
    fn ms(
        group: &'static str,
        name: impl Into<String>,
        sources: usize,
        value: f64,
        max: f64,
    ) -> Self {
        Case {
            group,
            name: name.into(),
            sources,
            value,
            max,
            unit: "ms",
            bytes: None,
            target: None,
        }
    }

    fn with_bytes(mut self, bytes: usize) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// `target` when it is `Some`.
    fn with_target(mut self, target: Option<f64>) -> Self {
        self.target = target;
        self
    }

    fn met(&self) -> Option<bool> {
        self.target.map(|t| self.value <= t && self.max <= t)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Median and maximum of `times`, in ms.
fn summary(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    (ms(times[times.len() / 2]), ms(*times.last().unwrap()))
}

fn main() {
    let mut cases = Vec::new();
    screen_cases(&mut cases);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for sources in [10_000, 100_000] {
            daemon_cases(sources, &mut cases);
        }
    } else {
        eprintln!(
            "the daemon-side and memory cases load BPF programs: run `cargo xtask bench` as root"
        );
    }
    print_table(&cases);
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap();
            v["met"] = serde_json::json!(c.met());
            v
        })
        .collect();
    write_report(
        "tui.json",
        &serde_json::json!({ "command": "cargo xtask bench", "cases": json }),
    );
}

fn print_table(cases: &[Case]) {
    println!(
        "{:<7} {:<52} {:>7} {:>9} {:>9} {:>4} {:>9} {:>10}",
        "group", "case", "sources", "median", "max/peak", "unit", "bytes", "target"
    );
    for c in cases {
        println!(
            "{:<7} {:<52} {:>7} {:>9.2} {:>9.2} {:>4} {:>9} {:>10}",
            c.group,
            c.name,
            c.sources,
            c.value,
            c.max,
            c.unit,
            c.bytes.map_or("-".to_owned(), |b| b.to_string()),
            match (c.target, c.met()) {
                (Some(t), Some(true)) => format!("<={t:.0} ok"),
                (Some(t), _) => format!("<={t:.0} MISS"),
                _ => "-".to_owned(),
            }
        );
    }
}

/// The screen thread's work, on synthetic sources (no kernel needed).
fn screen_cases(cases: &mut Vec<Case>) {
    for sources in [10_000, 100_000] {
        for (width, height) in [(80, 24), (200, 50)] {
            let t = tui_bench::frame_with_sources(sources, width, height, 200);
            cases.push(
                Case::ms(
                    "screen",
                    format!("frame {width}x{height} (mean, max of 200)"),
                    sources,
                    ms(t.mean),
                    ms(t.max),
                )
                .with_target((sources == 100_000).then_some(FRAME_TARGET_MS)),
            );
        }
        let t = tui_bench::ingest_with_sources(sources, 10);
        cases.push(Case::ms(
            "screen",
            "apply one refresh (mean, max of 10)",
            sources,
            ms(t.mean),
            ms(t.max),
        ));
        let (bytes, t) = tui_bench::decode_stats(sources, 5);
        cases.push(
            Case::ms(
                "screen",
                "decode stats answer (mean, max of 5)",
                sources,
                ms(t.mean),
                ms(t.max),
            )
            .with_bytes(bytes),
        );
        let t = tui_bench::decode_stats_typed(sources, 5);
        cases.push(
            Case::ms(
                "screen",
                "decode stats, typed by op (comparison)",
                sources,
                ms(t.mean),
                ms(t.max),
            )
            .with_bytes(bytes),
        );
    }
}

/// A real engine with `sources` tracked sources and [`BANS`] of them banned.
fn engine_with_sources(sources: usize, state: &std::path::Path) -> Engine {
    // Room to spare, so that the LRU evicts none of them.
    let capacity = (sources + sources / 4) as u32;
    let mut limiter = Limiter::load(&LoadOptions {
        source_capacity: capacity,
    })
    .expect("load the program");
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    let started = Instant::now();
    for i in 0..sources {
        limiter
            .test_run(&Packet::syn(&address(i).to_string(), GLANCE_PORT).build())
            .unwrap();
    }
    let config = Config {
        state_dir: state.to_owned(),
        source_capacity: capacity,
        ..Config::default()
    };
    let store = RuleStore::open(state).unwrap();
    let mut engine = Engine::new(limiter, store, config).unwrap();
    engine.tick().unwrap();
    eprintln!(
        "engine with {sources} sources ready in {:?}",
        started.elapsed()
    );
    engine
}

/// Bans `count` of the engine's `sources` sources, spread evenly, for an hour.
fn ban(engine: &mut Engine, sources: usize, count: usize) {
    let bans: Vec<IpNet> = (0..count)
        .map(|i| IpNet::from(std::net::IpAddr::V6(address(i * (sources / count)))))
        .collect();
    let banned = engine.handle(Request::Block {
        prefixes: bans,
        ttl_secs: Some(3600),
        reason: Some("benchmark".into()),
        scope: Default::default(),
        force: false,
    });
    assert!(banned.ok, "{banned:?}");
}

fn address(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0db8_0003_0000_0000_0000_0000_0000u128 | i as u128)
}

/// One request `rounds` times: the engine's time, the encoding's time, the line's length.
fn time_request(
    engine: &mut Engine,
    request: &Request,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let (mut handled, mut encoded, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        let t = Instant::now();
        let response: ResponseLine = engine.handle(request.clone());
        handled.push(t.elapsed());
        assert!(response.ok, "{:?}", response.error);
        let t = Instant::now();
        let line = encode_response(&response);
        encoded.push(t.elapsed());
        bytes = line.len();
    }
    (handled, encoded, bytes)
}

fn daemon_cases(sources: usize, cases: &mut Vec<Case>) {
    let state = tempfile::tempdir().unwrap();
    let mut engine = engine_with_sources(sources, state.path());
    let rounds = if sources >= 100_000 { 5 } else { 9 };
    // Without any ban first: what `stats` costs apart from matching sources against bans.
    for (name, request) in [
        (
            "stats top 10000, no bans",
            Request::Stats {
                top: Some(DEFAULT_FETCH),
                sort: None,
                filter: None,
            },
        ),
        (
            "stats all, no bans",
            Request::Stats {
                top: None,
                sort: None,
                filter: None,
            },
        ),
    ] {
        let (handled, _, bytes) = time_request(&mut engine, &request, rounds);
        let (median, max) = summary(handled);
        cases.push(
            Case::ms("daemon", format!("engine: {name}"), sources, median, max).with_bytes(bytes),
        );
    }
    ban(&mut engine, sources, BANS);
    let requests: [(&str, Request); 4] = [
        ("status", Request::Status),
        (
            "stats top 10000",
            Request::Stats {
                top: Some(DEFAULT_FETCH),
                sort: None,
                filter: None,
            },
        ),
        (
            "stats all",
            Request::Stats {
                top: None,
                sort: None,
                filter: None,
            },
        ),
        ("list (1,000 rules)", Request::List),
    ];
    // One refresh's worth, request by request, then the default refresh summed per round.
    let mut refresh_engine = vec![Duration::ZERO; rounds];
    let mut refresh_encode = vec![Duration::ZERO; rounds];
    let mut refresh_bytes = 0;
    for (name, request) in &requests {
        let (handled, encoded, bytes) = time_request(&mut engine, request, rounds);
        if *name != "stats all" {
            for i in 0..rounds {
                refresh_engine[i] += handled[i];
                refresh_encode[i] += encoded[i];
            }
            refresh_bytes += bytes;
        }
        let (median, max) = summary(handled);
        cases.push(
            Case::ms("daemon", format!("engine: {name}"), sources, median, max).with_bytes(bytes),
        );
        let (median, max) = summary(encoded);
        cases.push(
            Case::ms("daemon", format!("encode: {name}"), sources, median, max).with_bytes(bytes),
        );
    }
    // What `limiter top` asks now: its rows and margin in its order (every source's state is
    // needed first, as the screen pins by it), also with a filter.
    for (name, filter) in [
        ("stats screen query (top 200, pinned)", None),
        (
            "stats screen query, text filter",
            Some("2001:db8:3::1".to_string()),
        ),
    ] {
        let request = Request::Stats {
            top: Some(200),
            sort: Some(Default::default()),
            filter,
        };
        let (handled, encoded, bytes) = time_request(&mut engine, &request, rounds);
        let (median, max) = summary(handled);
        cases.push(
            Case::ms("daemon", format!("engine: {name}"), sources, median, max).with_bytes(bytes),
        );
        let (median, max) = summary(encoded);
        cases.push(
            Case::ms("daemon", format!("encode: {name}"), sources, median, max).with_bytes(bytes),
        );
    }
    let (median, max) = summary(refresh_engine);
    cases.push(
        Case::ms(
            "daemon",
            "engine: one default refresh",
            sources,
            median,
            max,
        )
        .with_bytes(refresh_bytes),
    );
    let (median, max) = summary(refresh_encode);
    cases.push(
        Case::ms(
            "daemon",
            "encode: one default refresh",
            sources,
            median,
            max,
        )
        .with_bytes(refresh_bytes),
    );

    // Served over the real control server, as the daemon does (the engine behind a lock
    // instead of its channel: one request at a time either way).
    let engine = Arc::new(Mutex::new(engine));
    let served = engine.clone();
    let socket = state.path().join("limiter.sock");
    let server = server::spawn(
        &socket,
        Access::for_daemon(None).unwrap(),
        Limits::default(),
        Arc::new(move |request: Request| served.lock().unwrap().handle(request)),
    )
    .expect("serve the engine");
    // As before screen queries (what an old daemon still gets), then as `limiter top` asks
    // now: its 80×24 screen's rows and margin in its order, then with a text filter typed.
    let screen = ScreenQuery::default();
    let filtered = ScreenQuery {
        filter: "2001:db8:3::1".into(),
        ..ScreenQuery::default()
    };
    for (fetch, query, label) in [
        (Some(DEFAULT_FETCH), None, "busiest 10000 (before)"),
        (None, None, "all (before)"),
        (Some(DEFAULT_FETCH), Some(&screen), "screen query"),
        (
            Some(DEFAULT_FETCH),
            Some(&filtered),
            "screen query, text filter",
        ),
    ] {
        let mut transport = SocketTransport::new(&socket, Duration::from_secs(30));
        let (wall, cpu) = tui_bench::client_refresh(&mut transport, fetch, query, rounds as u32)
            .expect("a refresh");
        cases.push(Case::ms(
            "client",
            format!("whole refresh, wall (mean, max), {label}"),
            sources,
            ms(wall.mean),
            ms(wall.max),
        ));
        cases.push(
            Case::ms(
                "client",
                format!("whole refresh, limiter top's CPU, {label}"),
                sources,
                ms(cpu.mean),
                ms(cpu.max),
            )
            .with_target((sources == 100_000).then_some(REFRESH_CPU_TARGET_MS)),
        );
    }
    if sources >= 100_000 {
        memory_cases(&socket, sources, cases);
    }
    server.stop();
    if sources >= 100_000 {
        // Ten times the bans (as many as `limiter block -` loads in the rule-load benchmark).
        let mut engine = Arc::try_unwrap(engine)
            .ok()
            .expect("the server has stopped")
            .into_inner()
            .unwrap();
        ban(&mut engine, sources, 10 * BANS);
        let request = Request::Stats {
            top: Some(DEFAULT_FETCH),
            sort: None,
            filter: None,
        };
        let (handled, _, bytes) = time_request(&mut engine, &request, 3);
        let (median, max) = summary(handled);
        cases.push(
            Case::ms(
                "daemon",
                format!("engine: stats top 10000, {} bans", 10 * BANS),
                sources,
                median,
                max,
            )
            .with_bytes(bytes),
        );
        // The answer is right, not only fast: every banned source says so, also one covered
        // by a wider prefix only.
        assert_eq!(banned_sources(&mut engine), 10 * BANS);
        let net = IpNet::new(std::net::IpAddr::V6(address(1)), 120)
            .unwrap()
            .trunc();
        let blocked = engine.handle(Request::Block {
            prefixes: vec![net],
            ttl_secs: None,
            reason: None,
            scope: Default::default(),
            force: false,
        });
        assert!(blocked.ok, "{blocked:?}");
        // The /120 holds sources 0 to 255, of which every tenth is banned already.
        let newly = (0..256)
            .filter(|i| i % (sources / (10 * BANS)) != 0)
            .count();
        assert_eq!(banned_sources(&mut engine), 10 * BANS + newly);
    }
}

/// How many sources `stats` reports banned.
fn banned_sources(engine: &mut Engine) -> usize {
    use limiter_user::control::protocol::{Reply, SourceState};
    match engine
        .handle(Request::Stats {
            top: None,
            sort: None,
            filter: None,
        })
        .result
    {
        Some(Reply::Stats(stats)) => stats
            .sources
            .iter()
            .filter(|s| s.state == SourceState::Banned)
            .count(),
        other => panic!("not a stats answer: {other:?}"),
    }
}

/// The real `limiter top` in tmux against the served engine: its resident size over several
/// refreshes (median of samples every 100 ms, i.e. mostly between refreshes) and its peak.
fn memory_cases(socket: &std::path::Path, sources: usize, cases: &mut Vec<Case>) {
    if !limiter_tests::tmux::tmux_available("tui bench: memory of limiter top") {
        return;
    }
    for (flag, label) in [
        ("10000", "default --max-sources 10000"),
        ("all", "--max-sources all"),
    ] {
        let top = TmuxSession::start(
            120,
            40,
            &[("NO_COLOR", "1")],
            &[
                limiter_binary().display().to_string(),
                "top".into(),
                "--socket".into(),
                socket.display().to_string(),
                "--max-sources".into(),
                flag.into(),
            ],
        );
        let tracked = format!("{sources} tracked");
        top.wait_for_screen("the sources", Duration::from_secs(30), |screen| {
            find_line(screen, &["Sources", &tracked]).is_some()
        });
        let pid = top.pane_pid().expect("the pid of limiter top");
        let mut samples = Vec::new();
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            if let Some((rss, _)) = process_memory(pid) {
                samples.push(rss);
            }
            thread::sleep(Duration::from_millis(100));
        }
        let (_, peak) = process_memory(pid).expect("limiter top is running");
        samples.sort();
        let screen = top.capture();
        let title = find_line(&screen, &["Sources"]).unwrap_or_default();
        eprintln!("limiter top {label}: {}", title.trim());
        top.send_keys(&["q"]);
        assert_eq!(
            top.wait_for_exit(Duration::from_secs(5)),
            Some(Exit::Code(0))
        );
        cases.push(Case {
            group: "memory",
            name: format!("limiter top resident, {label}"),
            sources,
            value: mb(samples[samples.len() / 2]),
            max: mb(peak),
            unit: "MB",
            bytes: None,
            target: Some(MEMORY_TARGET_MB),
        });
    }
}

/// VmRSS and VmHWM of process `pid`, in bytes.
fn process_memory(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
