//! The daemon's Prometheus endpoint end to end: `limiter run` with `metrics_listen` on the
//! loopback of the server namespace of an [`AttackTopology`], an image-create flood that gets
//! banned, and scrapes over HTTP from inside that namespace, read with an exposition reader
//! independent of the daemon's encoder. Also: no listener unless asked for, and a port in use
//! stops the start with a message naming the address and the setting.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    daemon::{detach_and_check, host_prefix, limiter_binary, DaemonSetup},
    http::{
        connect_from, image_create_flood, request, FloodLimits, StandInServer, StopOnDrop,
        FLOOD_CONNECT_TIMEOUT,
    },
    metrics::{self, Exposition},
    netns::{AttackTopology, Netns},
};

const GLANCE_PORT: u16 = 9292;
const METRICS: &str = "127.0.0.1:9464";
const CREATE: &str = r#"{"name":"metrics","disk_format":"raw","container_format":"bare"}"#;
const ATTACKER: &str = AttackTopology::ATTACKER_V4[0];
const LEGIT: &str = AttackTopology::LEGIT_V4[0];
/// Metrics reflect the last poll (every second): a few polls is the most any wait takes.
const METRICS_DEADLINE: Duration = Duration::from_secs(10);

/// One test at a time: each creates namespaces, attaches XDP and runs a daemon.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn metrics_addr() -> SocketAddr {
    METRICS.parse().unwrap()
}

/// Scrapes from inside `ns` until `accept` holds for the parsed exposition (each scrape must
/// parse); returns it and its text, or panics with the last one at the deadline.
fn scrape_until(
    ns: &Netns,
    what: &str,
    accept: impl Fn(&Exposition) -> bool,
) -> (Exposition, String) {
    let until = Instant::now() + METRICS_DEADLINE;
    loop {
        let scrape = ns
            .run(|| metrics::get(metrics_addr(), "/metrics", None))
            .unwrap_or_else(|e| panic!("GET http://{METRICS}/metrics: {e}"));
        assert_eq!(scrape.status, 200, "{}", scrape.body);
        assert_eq!(
            scrape.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let exposition = Exposition::parse(&scrape.body)
            .unwrap_or_else(|e| panic!("not a valid exposition: {e}\n{}", scrape.body));
        if accept(&exposition) {
            return (exposition, scrape.body);
        }
        assert!(
            Instant::now() < until,
            "no scrape showed {what} within {METRICS_DEADLINE:?}; the last:\n{}",
            scrape.body
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_show_an_attack_and_its_ban() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = AttackTopology::new();
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let daemon = DaemonSetup::new(&topo.server, &topo.server_ifaces())
        .metrics_listen(METRICS)
        .start();

    // A legitimate client, so that two sources are tracked.
    let legit_dst = topo.legit.server_addr_for(LEGIT);
    let served = topo.legit.ns.run(|| {
        connect_from(LEGIT, legit_dst, GLANCE_PORT, FLOOD_CONNECT_TIMEOUT)
            .and_then(|mut s| request(&mut s, "GET", "/v2/images", ""))
    });
    assert_eq!(served.expect("the legitimate client is served"), 200);

    // An image-create flood (100/s, past the default 60 a minute) until its requests go
    // unanswered: banned, and its retransmissions dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let limits = FloodLimits {
        max_attempts: 3_000,
        max_duration: Duration::from_secs(20),
        stop_after_failures: Some(3),
    };
    let dst = topo.attacker.server_addr_for(ATTACKER);
    let flood = {
        let stop = stop.clone();
        topo.attacker.ns.spawn(move || {
            image_create_flood(
                ATTACKER,
                dst,
                GLANCE_PORT,
                CREATE,
                Some(Duration::from_millis(10)),
                limits,
                &stop,
            )
        })
    };
    let rule = daemon.wait_for_rule(&host_prefix(ATTACKER), Duration::from_secs(15));
    // No ban: stop the flood now rather than at its own limits.
    stop.store(rule.is_none(), Ordering::Relaxed);
    let log = flood.join().expect("flood thread");
    let rule = rule.unwrap_or_else(|| panic!("no ban after {} creates", log.attempts.len()));
    assert_eq!(rule["origin"], "auto", "{rule}");

    let (exposition, text) = scrape_until(&topo.server, "the ban and its drops", |e| {
        e.value(
            "glance_limiter_packets_dropped_total",
            &[("reason", "blocked")],
        )
        .is_some_and(|v| v > 0.0)
            && e.value("glance_limiter_bans_total", &[("origin", "auto")])
                .is_some_and(|v| v >= 1.0)
    });
    println!("--- scrape during the attack ---\n{text}");
    let value = |name: &str, labels: &[(&str, &str)]| {
        exposition
            .value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };

    assert!(
        value("glance_limiter_tracked_sources", &[]) >= 2.0,
        "{text}"
    );
    assert!(
        value("glance_limiter_source_table_rows", &[]) >= 2.0,
        "{text}"
    );
    assert!(
        value(
            "glance_limiter_packets_passed_total",
            &[("reason", "protected")]
        ) > 0.0,
        "{text}"
    );
    assert!(
        value(
            "glance_limiter_active_rules",
            &[("action", "block"), ("origin", "auto")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            "glance_limiter_active_rules",
            &[("action", "block"), ("origin", "manual")]
        ),
        0.0
    );
    assert_eq!(
        value("glance_limiter_bans_total", &[("origin", "manual")]),
        0.0
    );
    // Opening the store wrote it, and the ban did.
    assert!(value("glance_limiter_rule_store_writes_total", &[]) >= 2.0);
    assert_eq!(
        value("glance_limiter_rule_store_write_failures_total", &[]),
        0.0
    );
    assert!(value("glance_limiter_poll_duration_seconds_count", &[]) > 0.0);
    assert_eq!(value("glance_limiter_poll_failures_total", &[]), 0.0);
    assert_eq!(value("glance_limiter_mode", &[("mode", "enforce")]), 1.0);
    for iface in topo.server_ifaces() {
        let attached = exposition
            .family("glance_limiter_interface_attached")
            .expect("the attach family")
            .samples
            .iter()
            .filter(|s| s.labels.get("interface").is_some_and(|i| i == iface))
            .collect::<Vec<_>>();
        assert_eq!(attached.len(), 1, "{iface} in\n{text}");
        assert_eq!(attached[0].value, 1.0);
        let mode = &attached[0].labels["mode"];
        assert!(mode == "native" || mode == "generic", "{mode}");
    }
    assert_eq!(
        exposition
            .family("glance_limiter_poll_duration_seconds")
            .map(|f| f.kind.as_str()),
        Some("histogram")
    );

    // The metrics are the kernel's counters as of the last poll: never ahead of `status`.
    let dropped = value(
        "glance_limiter_packets_dropped_total",
        &[("reason", "blocked")],
    );
    assert!(dropped <= daemon.counter("drop_blocked") as f64);

    // A manual unblock is an unban of an automatic rule, by removal. (The attacker's rate
    // over the last minute is still past the threshold, so the next poll may ban it again.)
    daemon.cli_ok(&["unblock", &host_prefix(ATTACKER)]);
    scrape_until(&topo.server, "the removal", |e| {
        e.value(
            "glance_limiter_unbans_total",
            &[("origin", "auto"), ("cause", "removed")],
        ) == Some(1.0)
            && e.value(
                "glance_limiter_unbans_total",
                &[("origin", "auto"), ("cause", "expired")],
            ) == Some(0.0)
    });

    // Prometheus asks for OpenMetrics first, and gets it.
    let openmetrics = topo
        .server
        .run(|| {
            metrics::get(
                metrics_addr(),
                "/metrics",
                Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.3"),
            )
        })
        .expect("an OpenMetrics scrape");
    assert_eq!(openmetrics.status, 200);
    assert!(
        openmetrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        openmetrics.headers
    );
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );
    drop(daemon);
}

/// Socket inodes of the TCP sockets that listen in `pid`'s network namespace.
fn listening_inodes(pid: u32) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; field 9 is the inode.
            if fields.get(3) == Some(&"0A") {
                inodes.extend(fields.get(9).map(|s| s.to_string()));
            }
        }
    }
    inodes
}

/// Socket inodes among `pid`'s open files.
fn socket_inodes(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's open files")
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn no_metrics_listener_unless_configured() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = AttackTopology::new();
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let daemon = DaemonSetup::new(&topo.server, &topo.server_ifaces()).start();
    // `nsenter` execs the daemon, so the child's pid is the daemon's.
    let pid = daemon.pid().expect("the daemon runs");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("the daemon's executable");
    assert_eq!(
        exe.canonicalize().ok(),
        limiter_binary().canonicalize().ok()
    );

    let listening = listening_inodes(pid);
    assert!(
        !listening.is_empty(),
        "the stand-in server listens in the namespace, so the table is readable"
    );
    let own = socket_inodes(pid);
    assert!(!own.is_empty(), "the daemon holds its control socket");
    let listening_own: Vec<&String> = own.iter().filter(|i| listening.contains(i)).collect();
    assert!(
        listening_own.is_empty(),
        "the daemon listens on TCP without metrics_listen: inodes {listening_own:?}"
    );
    let refused = topo
        .server
        .run(|| std::net::TcpStream::connect_timeout(&metrics_addr(), Duration::from_secs(2)));
    assert!(refused.is_err(), "something answers on {METRICS}");
    assert!(
        daemon
            .wait_for_log(&["metrics listening"], Duration::ZERO)
            .is_none(),
        "{}",
        daemon.log()
    );
}

/// Runs `argv` bounded to 20 s; returns its exit code and stderr.
fn run_bounded(argv: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start limiter run");
    let until = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("reap limiter run");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_metrics_port_in_use_stops_the_start_naming_address_and_setting() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let ns = Netns::new("m");
    // Whatever holds the port: here, a listener of the test's own in the namespace.
    let _taken = ns
        .run(|| TcpListener::bind(METRICS))
        .expect("bind the port first");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/glance-limiter-metrics-{}",
        std::process::id()
    ));
    let setup = DaemonSetup::new(&ns, &["lo"]).metrics_listen(METRICS);
    let from_file = setup.run_command(dir.path(), &pin_dir);
    let mut from_flag = from_file.clone();
    from_flag
        .argv
        .extend(["--metrics-listen".into(), METRICS.into()]);

    for (command, setting) in [
        (
            &from_file,
            format!("`metrics_listen` in {}", from_file.config.display()),
        ),
        (&from_flag, "--metrics-listen".to_string()),
    ] {
        let (code, stderr) = run_bounded(&command.argv);
        // Bound before the program is loaded: nothing to detach, but make sure.
        if pin_dir.exists() {
            detach_and_check(&limiter_binary(), &pin_dir);
            panic!("the daemon pinned {} before failing", pin_dir.display());
        }
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot listen for metrics on {METRICS} ({setting}): "
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains("another process listens on port 9464"),
            "{stderr}"
        );
        assert_eq!(stderr.matches("os error").count(), 1, "said once: {stderr}");
        assert!(
            stderr.contains(&format!("or remove {setting} to run without metrics")),
            "{stderr}"
        );
    }
}
