//! The daemon end to end behind a real HAProxy 2.6 in front of the real Glance: an
//! image-create flood through the proxy is banned by the flooding client's own address (read
//! from `X-Forwarded-For`, or from a PROXY v2 header, on the Glance node's interface; on `lo`
//! when HAProxy shares the node), no rule ever covers HAProxy, the banned client gets the
//! limiter's 429 through HAProxy without Glance seeing its creates, a legitimate client behind
//! the same HAProxy is served throughout, and no half-open connection is left on either side.
//! Forged `X-Forwarded-For` entries name nobody, sent directly or through HAProxy; an IPv6
//! client over an IPv4 backend connection and the reverse are banned by their own addresses.
//!
//! Topology: `ProxyTopology` (two client networks, the load balancer's namespace, the Glance
//! node), with HAProxy where each test says. Every wait has a deadline on an observable
//! condition; every generator is bounded in requests and time.
//!
//! The load balancer's end of its veth to the Glance node carries an XDP program that passes
//! everything (`napi::xdp_pass`): without one, a veth does not deliver what the limiter sends
//! back with XDP_TX (see that function), and a banned client's request would get no answer.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use limiter_tests::{
    daemon::{host_prefix, Daemon, DaemonSetup},
    glance::RealGlance,
    haproxy::{HaProxyConfig, SendProxy},
    http::{FloodLimits, FloodLog, StopOnDrop},
    https::{self, HttpsClient},
    napi::{self, XdpPass},
    netns::{Netns, ProxyTopology as Topo},
    sockets,
    wait::wait_for,
};
use serde_json::Value;

/// HAProxy's frontends, and Glance where it has the node's addresses to itself.
const PORT: u16 = 9292;
/// Glance on the node's loopback, behind a HAProxy on the node itself.
const LOCAL_GLANCE_PORT: u16 = 9293;
const LOOPBACK: &str = "127.0.0.1";
const CREATE: &str = r#"{"name":"proxy-e2e","disk_format":"raw","container_format":"bare"}"#;
/// `image_creates_per_minute` of every test: a flood through HAProxy (tens of creates a
/// second) reaches it within a second.
const CREATES_PER_MINUTE: usize = 20;
/// What a ban should take from the flood's start (printed), and the deadline asserted,
/// generous for a busy two-core machine.
const BAN_TARGET: Duration = Duration::from_secs(5);
const BAN_DEADLINE: Duration = Duration::from_secs(20);
/// A forged `X-Forwarded-For` entry: a header value only, never a destination.
const FORGED: &str = "192.0.2.1";
/// How often a legitimate client lists images.
const LIST_EVERY: Duration = Duration::from_millis(200);
/// 429s in a row after which a flood through HAProxy gives up.
const PROXIED_REFUSALS: usize = 3;
/// How long a flooding client waits for an answer through HAProxy: past a poll or two, far
/// below HAProxy's `timeout server` (30 s), so an unanswered request shows quickly.
const PROXIED_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for a client that reaches Glance directly, whose requests a ban drops: Glance
/// answers a create in tens of milliseconds.
const DIRECT_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// One test at a time (namespaces, XDP, HAProxy and Glance each); poison-tolerant.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// `host:port`, IPv6 in brackets.
fn socket(host: &str, port: u16) -> String {
    SocketAddr::new(addr(host), port).to_string()
}

/// HAProxy's frontend on the load balancer, of the family of `src`.
fn frontend(src: &str) -> String {
    socket(Topo::frontend_for(src), PORT)
}

/// The Glance node's address of the family of `src`.
fn glance_addr_for(src: &str) -> &'static str {
    if src.contains(':') {
        Topo::GLANCE_V6
    } else {
        Topo::GLANCE_V4
    }
}

/// The load balancer's addresses on the Glance link: trusted, never to be blocked.
fn lb_addresses() -> Vec<IpAddr> {
    vec![addr(Topo::LB_BACKEND_V4), addr(Topo::LB_BACKEND_V6)]
}

/// A daemon on the Glance node with a threshold a flood through HAProxy reaches within a
/// second, and no aggregation (test clients share a /24). Trusts no proxy yet.
fn daemon_setup(topo: &Topo, ifaces: &[&str]) -> DaemonSetup {
    DaemonSetup::new(&topo.glance, ifaces)
        .policy("image_creates_per_minute", &CREATES_PER_MINUTE.to_string())
        .policy("aggregate", "false")
}

/// [`daemon_setup`] on the Glance node's link, trusting the load balancer.
fn daemon_behind_lb(topo: &Topo) -> Daemon {
    daemon_setup(topo, &[Topo::GLANCE_IFACE])
        .trusted_proxy(Topo::LB_BACKEND_V4)
        .trusted_proxy(Topo::LB_BACKEND_V6)
        .start()
}

/// Glance on both families and every address of its node, port 9292.
fn glance_on_node(topo: &Topo) -> RealGlance {
    RealGlance::start_bound(
        &topo.glance,
        "::",
        PORT,
        &topo.lb,
        Topo::LB_BACKEND_V4,
        Topo::GLANCE_V4,
    )
}

/// Glance on the node's loopback only, behind a HAProxy on the node.
fn glance_on_loopback(topo: &Topo) -> RealGlance {
    RealGlance::start_bound(
        &topo.glance,
        LOOPBACK,
        LOCAL_GLANCE_PORT,
        &topo.glance,
        LOOPBACK,
        LOOPBACK,
    )
}

/// HAProxy with a TLS frontend on both of the load balancer's frontend addresses.
fn lb_frontends() -> HaProxyConfig {
    HaProxyConfig::new()
        .bind(&socket(Topo::FRONTEND_V4, PORT))
        .bind(&socket(Topo::FRONTEND_V6, PORT))
}

/// See the module documentation.
fn deliver_xdp_tx_to_lb(topo: &Topo) -> XdpPass {
    napi::xdp_pass(&topo.lb, "veth-glance")
}

// ---- Traffic ----

/// A flooding client: image creates back to back on one kept connection (reconnecting after
/// an answer that closes it), until `failures` in a row fail, `stop`, or a bound.
fn spawn_flood(
    ns: &Netns,
    make: impl FnOnce() -> HttpsClient + Send + 'static,
    failures: usize,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<FloodLog> {
    let stop = stop.clone();
    ns.spawn(move || {
        let mut client = make();
        let limits = FloodLimits {
            // The budget's 429s come back in a millisecond or so: room for thousands before
            // the ban.
            max_attempts: 50_000,
            max_duration: Duration::from_secs(30),
            stop_after_failures: Some(failures),
        };
        https::image_create_flood(&mut client, CREATE, None, limits, &stop)
    })
}

/// A legitimate client: `GET /v2/images` every [`LIST_EVERY`] on a kept connection, until
/// `stop`, two minutes, or 600 requests.
fn spawn_lister(
    ns: &Netns,
    make: impl FnOnce() -> HttpsClient + Send + 'static,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<FloodLog> {
    let stop = stop.clone();
    ns.spawn(move || {
        let mut client = make();
        let limits = FloodLimits {
            max_attempts: 600,
            max_duration: Duration::from_secs(120),
            stop_after_failures: None,
        };
        https::periodic_requests(
            &mut client,
            "GET",
            "/v2/images",
            "",
            LIST_EVERY,
            limits,
            &stop,
        )
    })
}

/// A legitimate client listing from the start of a test to [`Lister::finish`], which checks
/// that it was never refused; stopped on drop if the test fails first.
struct Lister {
    handle: JoinHandle<FloodLog>,
    stop: Arc<AtomicBool>,
    _stop_on_panic: StopOnDrop,
    who: &'static str,
}

impl Lister {
    /// Starts listing from `src` in `ns` through `target`, and waits until the daemon counts
    /// its reads as its own: HAProxy, Glance and the daemon all work before any flood.
    fn start(ns: &Netns, src: &'static str, target: String, daemon: &Daemon) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        // The guard first, so that a failed wait below stops the client too.
        let lister = Lister {
            handle: spawn_lister(ns, move || HttpsClient::new(src, &target), &stop),
            _stop_on_panic: StopOnDrop(stop.clone()),
            stop,
            who: src,
        };
        let counted = daemon.wait_for_source(src, Duration::from_secs(10), |s| {
            s["totals"]["read"].as_u64() >= Some(1)
        });
        assert!(
            counted.is_some(),
            "{src} not counted: {}",
            daemon.stats_json()
        );
        lister
    }

    /// Stops it and checks every request was answered 2xx; returns how many it made.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let log = self.handle.join().expect("lister thread");
        assert!(log.attempts.len() >= 5, "{}: {log:?}", self.who);
        assert!(
            log.attempts.iter().all(|a| a.succeeded()),
            "{}: {} of {} requests failed: {:?}",
            self.who,
            log.failures(),
            log.attempts.len(),
            log.status_counts()
        );
        log.attempts.len()
    }
}

/// `n` creates, each on a new connection, from inside `ns`; every answer.
fn creates(
    ns: &Netns,
    make: impl Fn() -> HttpsClient + Send + Sync,
    n: usize,
) -> Vec<https::Response> {
    ns.run(|| {
        (0..n)
            .map(|_| {
                let mut client = make().keep_alive(false);
                client
                    .request("POST", "/v2/images", CREATE)
                    .unwrap_or_else(|e| panic!("a create got no answer: {e}"))
            })
            .collect()
    })
}

/// A flood's statuses are 201 until its first refusal, then only `refused` (429 through a
/// proxy, from the kernel's budget and then the ban; for a direct client the budget's 429
/// and, once banned, no answer); returns the index of the first refused request, which must
/// come after the threshold (the budget's burst).
fn served_until_refused(flood: &FloodLog, refused: &[Option<u16>], who: &str) -> usize {
    let counts = flood.status_counts();
    let first = flood
        .attempts
        .iter()
        .position(|a| a.status != Some(201))
        .unwrap_or_else(|| panic!("{who} was never refused: {counts:?}"));
    assert!(
        flood.attempts[first..]
            .iter()
            .all(|a| refused.contains(&a.status)),
        "{who}: 201 until refused, then {refused:?} only: {counts:?}"
    );
    assert!(first >= CREATES_PER_MINUTE, "{who}: {counts:?}");
    first
}

// ---- Rules and stats ----

/// Every rule, after checking that no block rule covers any of `never` (HAProxy's
/// addresses, forged ones): each list a test takes goes through here.
fn rules_sparing(daemon: &Daemon, never: &[IpAddr]) -> Vec<Value> {
    let rules = daemon.rules();
    for rule in rules.iter().filter(|r| r["action"] == "block") {
        let net: IpNet = rule["prefix"].as_str().expect("prefix").parse().unwrap();
        for a in never {
            assert!(
                !net.contains(a),
                "{rule} covers {a}, which must never be blocked"
            );
        }
    }
    rules
}

/// Waits for an automatic image-create ban of exactly `src`'s host prefix, checking every
/// list on the way; returns when it was seen.
fn wait_for_ban(daemon: &Daemon, src: &str, never: &[IpAddr]) -> Instant {
    let prefix = host_prefix(src);
    let deadline = Instant::now() + BAN_DEADLINE;
    loop {
        let rule = rules_sparing(daemon, never)
            .into_iter()
            .find(|r| r["prefix"] == prefix.as_str() && r["action"] == "block");
        if let Some(rule) = rule {
            assert_eq!(rule["origin"], "auto", "{rule}");
            let reason = rule["reason"].as_str().unwrap();
            assert!(reason.contains("image creates"), "{reason}");
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{src} not banned within {BAN_DEADLINE:?}; stats: {}; status: {}",
            daemon.stats_json(),
            daemon.status_json()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `stats` of a banned client: banned, its creates counted as its own, and the proxy it
/// came through (`None`: directly) if the output names one.
fn check_banned_stats(daemon: &Daemon, src: &str, proxy: Option<&str>) {
    let entry = daemon
        .source_stats(src)
        .unwrap_or_else(|| panic!("{src} not in stats: {}", daemon.stats_json()));
    assert_eq!(entry["state"], "banned", "{entry}");
    let creates = entry["totals"]["image_create"].as_u64().unwrap();
    assert!(creates >= CREATES_PER_MINUTE as u64, "{entry}");
    // A parallel change adds the proxy a client came through to `stats` (`via`); until it
    // lands the output has no such field, and there is nothing to check.
    match (entry.get("via").or_else(|| entry.get("proxy")), proxy) {
        (None, _) => eprintln!("stats has no `via` field yet: not checked"),
        (Some(via), Some(proxy)) => assert!(
            via.to_string().contains(proxy),
            "{src} came through {proxy}: {entry}"
        ),
        (Some(via), None) => assert!(
            via.is_null() || via.as_str() == Some(""),
            "{src} came directly: {entry}"
        ),
    }
}

// ---- The flood scenario ----

/// Who floods and who lists in [`flood_is_banned_behind_proxy`], and how they reach Glance.
struct Scenario<'a> {
    name: &'static str,
    topo: &'a Topo,
    glance: &'a RealGlance,
    daemon: &'a Daemon,
    /// Client A floods, client B lists; each connects to `target(src)`.
    attacker: &'static str,
    legit: &'static str,
    target: fn(&str) -> String,
    /// The proxy address the limiter sees the attacker's requests come from.
    proxy: &'static str,
    /// Addresses no rule may cover.
    never: Vec<IpAddr>,
}

impl<'a> Scenario<'a> {
    /// Client A floods and client B lists, both over IPv4 through the load balancer's
    /// frontend, which reaches Glance from its backend address.
    fn through_lb(
        name: &'static str,
        topo: &'a Topo,
        glance: &'a RealGlance,
        daemon: &'a Daemon,
    ) -> Self {
        Scenario {
            name,
            topo,
            glance,
            daemon,
            attacker: topo.client_a.v4[0],
            legit: topo.client_b.v4[0],
            target: frontend,
            proxy: Topo::LB_BACKEND_V4,
            never: lb_addresses(),
        }
    }
}

/// A legitimate client (client B) lists every 200 ms while the attacker (client A) floods
/// image creates, both over TLS through the same frontend. The attacker is banned by its own
/// address within the deadline, then gets 429 (with Retry-After) through HAProxy while
/// Glance sees none of its creates; after `limiter unblock` its next create is served; the
/// legitimate client never fails; no rule ever covers HAProxy; no request from a trusted
/// proxy was dropped or left unattributed.
fn flood_is_banned_behind_proxy(s: &Scenario) {
    let (topo, glance, daemon) = (s.topo, s.glance, s.daemon);
    let lister = Lister::start(&topo.client_b.ns, s.legit, (s.target)(s.legit), daemon);

    let stop_flood = Arc::new(AtomicBool::new(false));
    let _stop_flood_on_panic = StopOnDrop(stop_flood.clone());
    let images_before = glance.image_count();
    let attacker_client = || HttpsClient::new(s.attacker, &(s.target)(s.attacker));
    let flood_started = Instant::now();
    let flood = {
        let (src, target) = (s.attacker, (s.target)(s.attacker));
        spawn_flood(
            &topo.client_a.ns,
            move || HttpsClient::new(src, &target).io_timeout(PROXIED_IO_TIMEOUT),
            PROXIED_REFUSALS,
            &stop_flood,
        )
    };
    let ban_after = wait_for_ban(daemon, s.attacker, &s.never) - flood_started;
    let flood = flood.join().expect("flood thread");

    // Served until the ban, then the limiter's 429 relayed by HAProxy: no 5xx of HAProxy's,
    // no request left without an answer; Glance created exactly the creates answered 201.
    let served = served_until_refused(&flood, &[Some(429)], s.attacker);
    let crossing = flood.attempts[CREATES_PER_MINUTE - 1].started;
    let refused_after_crossing = flood.attempts[served].started - crossing;
    assert_eq!(glance.image_count() - images_before, served as u64);

    // Later creates of the banned client, each on a new connection: 429 with a Retry-After
    // within the ban (10 minutes), and Glance sees none.
    for response in creates(&topo.client_a.ns, attacker_client, 3) {
        assert_eq!(response.status, 429, "{response:?}");
        let retry_after: u64 = response
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After: {response:?}"));
        assert!((1..=600).contains(&retry_after), "{response:?}");
    }
    assert_eq!(glance.image_count() - images_before, served as u64);
    check_banned_stats(daemon, s.attacker, Some(s.proxy));
    if let Some(entry) = daemon.source_stats(s.proxy) {
        assert_ne!(entry["state"], "banned", "{entry}");
    }
    let status = daemon.status_json();
    let counter = |name: &str| status["counters"][name].as_u64().unwrap();
    // The limiter's 429s for it: the kernel budget's before the ban, the ban's after.
    let answered = counter("reject_proxied") + counter("reject_over_budget");
    assert!(answered >= 6, "{status}");
    assert_eq!(counter("drop_proxied"), 0, "{status}");
    assert_eq!(counter("unattributed_request"), 0, "{status}");

    // Unblocked, its next create is served: the unblock also gave it a whole budget again.
    // (Its creates of the last minute are still over the threshold, so the next poll bans it
    // again: a repeat offence.)
    daemon.cli_ok(&["unblock", s.attacker]);
    let after = creates(&topo.client_a.ns, attacker_client, 1);
    assert_eq!(after[0].status, 201, "{:?}", after[0]);

    let listed = lister.finish();
    rules_sparing(daemon, &s.never);
    eprintln!(
        "{}: {} banned {ban_after:?} after its flood began (target {BAN_TARGET:?}); first \
         429 {refused_after_crossing:?} after the {CREATES_PER_MINUTE}th create; {served} \
         creates served before the ban; {} reached the limiter's 429; the legitimate client's \
         {listed} lists all served",
        s.name, s.attacker, answered
    );
}

/// Items 1 and 6: HAProxy on a host of its own (TLS, `option forwardfor`) in front of
/// Glance; the daemon on the Glance node's interface reads `X-Forwarded-For`.
#[test]
fn forwardfor_flood_is_banned_by_client_address_and_haproxy_is_spared() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let started = Instant::now();
    let topo = Topo::new();
    let glance = glance_on_node(&topo);
    let _lb = lb_frontends()
        .server(&socket(Topo::GLANCE_V4, PORT))
        .start(&topo.lb);
    let _xdp_tx = deliver_xdp_tx_to_lb(&topo);
    let daemon = daemon_behind_lb(&topo);
    flood_is_banned_behind_proxy(&Scenario::through_lb("forwardfor", &topo, &glance, &daemon));
    sockets::assert_no_half_open(&[("Glance", &topo.glance), ("HAProxy", &topo.lb)]);
    eprintln!("forwardfor: {:?} in all", started.elapsed());
}

/// Item 2: the same with `send-proxy-v2` and no `option forwardfor`. Glance does not speak
/// the PROXY protocol, so a sidecar HAProxy on the Glance node takes it (`accept-proxy` on
/// the node's addresses, port 9292) and forwards to Glance on the node's loopback. The
/// daemon reads the PROXY v2 header on the Glance node's interface.
#[test]
fn proxy_v2_flood_is_banned_by_client_address_and_haproxy_is_spared() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let started = Instant::now();
    let topo = Topo::new();
    let glance = glance_on_loopback(&topo);
    let _sidecar = HaProxyConfig::new()
        .bind(&socket(Topo::GLANCE_V4, PORT))
        .bind(&socket(Topo::GLANCE_V6, PORT))
        .tls(false)
        .accept_proxy(true)
        .server(&socket(LOOPBACK, LOCAL_GLANCE_PORT))
        .start(&topo.glance);
    let _lb = lb_frontends()
        .forwardfor(false)
        .send_proxy(SendProxy::V2)
        .server(&socket(Topo::GLANCE_V4, PORT))
        .start(&topo.lb);
    let _xdp_tx = deliver_xdp_tx_to_lb(&topo);
    let daemon = daemon_behind_lb(&topo);
    flood_is_banned_behind_proxy(&Scenario::through_lb("proxy v2", &topo, &glance, &daemon));
    assert!(daemon.counter("proxy_header") > 0);
    sockets::assert_no_half_open(&[("Glance", &topo.glance), ("HAProxy", &topo.lb)]);
    eprintln!("proxy v2: {:?} in all", started.elapsed());
}

/// Item 3: HAProxy on the Glance node itself (TLS frontend on the node's addresses, Glance
/// on its loopback): HAProxy's requests reach Glance over `lo`, so the daemon attaches there
/// too (generic XDP: `lo` has no driver mode) and trusts 127.0.0.1. Only Glance's own port is
/// protected; the limiter's 429 goes back over `lo`.
#[test]
fn haproxy_on_the_glance_node_is_read_on_loopback() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let started = Instant::now();
    let topo = Topo::new();
    let glance = glance_on_loopback(&topo);
    let _haproxy = HaProxyConfig::new()
        .bind(&socket(Topo::GLANCE_V4, PORT))
        .bind(&socket(Topo::GLANCE_V6, PORT))
        .server(&socket(LOOPBACK, LOCAL_GLANCE_PORT))
        .start(&topo.glance);
    let daemon = daemon_setup(&topo, &[Topo::GLANCE_IFACE])
        .iface("lo")
        .ports(&[LOCAL_GLANCE_PORT])
        .trusted_proxy(LOOPBACK)
        .start();
    let modes: BTreeMap<String, String> = daemon.status_json()["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let text = |k: &str| i[k].as_str().unwrap().to_owned();
            (text("name"), text("attach_mode"))
        })
        .collect();
    assert_eq!(
        modes.get("lo").map(String::as_str),
        Some("generic"),
        "{modes:?}"
    );
    flood_is_banned_behind_proxy(&Scenario {
        name: "HAProxy on the node",
        topo: &topo,
        glance: &glance,
        daemon: &daemon,
        attacker: topo.client_a.v4[0],
        legit: topo.client_b.v4[0],
        target: |src| socket(glance_addr_for(src), PORT),
        proxy: LOOPBACK,
        never: vec![addr(LOOPBACK), addr(Topo::GLANCE_V4), addr(Topo::GLANCE_V6)],
    });
    sockets::assert_no_half_open(&[("Glance", &topo.glance)]);
    eprintln!("HAProxy on the node: {:?} in all", started.elapsed());
}

/// Item 4: forged `X-Forwarded-For: 192.0.2.1`. (a) A client that bypasses HAProxy and
/// reaches Glance directly is counted and banned as itself, its header ignored (it is no
/// trusted proxy); a ban drops its requests. (b) A client behind HAProxy is banned by its
/// real address, which HAProxy appends after the forged entry. No rule ever covers
/// 192.0.2.1, and the daemon never tracks it.
#[test]
fn forged_forwarded_for_names_nobody() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let started = Instant::now();
    let topo = Topo::new();
    let _glance = glance_on_node(&topo);
    let _lb = lb_frontends()
        .server(&socket(Topo::GLANCE_V4, PORT))
        .start(&topo.lb);
    let _xdp_tx = deliver_xdp_tx_to_lb(&topo);
    let daemon = daemon_behind_lb(&topo);
    let mut never = lb_addresses();
    never.push(addr(FORGED));
    let lister = Lister::start(
        &topo.client_b.ns,
        topo.client_b.v4[0],
        frontend(topo.client_b.v4[0]),
        &daemon,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());

    // (a) Directly, plain HTTP to the node.
    let direct = topo.client_a.v4[2];
    let stop_direct = Arc::new(AtomicBool::new(false));
    let _stop_direct_on_panic = StopOnDrop(stop_direct.clone());
    let flood_started = Instant::now();
    let flood = spawn_flood(
        &topo.client_a.ns,
        move || {
            HttpsClient::new(direct, &socket(Topo::GLANCE_V4, PORT))
                .plain()
                .header("X-Forwarded-For", FORGED)
                .io_timeout(DIRECT_IO_TIMEOUT)
        },
        // The budget's 429s go on until the ban; then a dropped request costs a timeout,
        // so the flood stops once one was dropped.
        usize::MAX,
        &stop_direct,
    );
    let ban_after = wait_for_ban(&daemon, direct, &never) - flood_started;
    wait_for("a banned request dropped", Duration::from_secs(10), || {
        (daemon.counter("drop_blocked") >= 1).then_some(())
    });
    stop_direct.store(true, Ordering::Relaxed);
    let flood = flood.join().expect("flood thread");
    served_until_refused(&flood, &[Some(429), None], direct);
    check_banned_stats(&daemon, direct, None);
    assert!(daemon.counter("drop_blocked") >= 1);
    eprintln!("forged, direct: {direct} banned {ban_after:?} after its flood began");

    // (b) Through HAProxy.
    let proxied = topo.client_b.v4[2];
    let flood_started = Instant::now();
    let flood = spawn_flood(
        &topo.client_b.ns,
        move || {
            HttpsClient::new(proxied, &frontend(proxied))
                .header("X-Forwarded-For", FORGED)
                .io_timeout(PROXIED_IO_TIMEOUT)
        },
        PROXIED_REFUSALS,
        &stop,
    );
    let ban_after = wait_for_ban(&daemon, proxied, &never) - flood_started;
    let flood = flood.join().expect("flood thread");
    served_until_refused(&flood, &[Some(429)], proxied);
    check_banned_stats(&daemon, proxied, Some(Topo::LB_BACKEND_V4));
    eprintln!("forged, through HAProxy: {proxied} banned {ban_after:?} after its flood began");

    assert_eq!(daemon.source_stats(FORGED), None, "{}", daemon.stats_json());
    let rules = rules_sparing(&daemon, &never);
    assert_eq!(rules.len(), 2, "{rules:?}");
    let listed = lister.finish();
    eprintln!(
        "forged: the legitimate client's {listed} lists all served; {:?} in all",
        started.elapsed()
    );
}

/// Item 5: an IPv6 client through an IPv4 backend connection and an IPv4 client through an
/// IPv6 one, flooding at the same time through two HAProxy instances on the load balancer
/// (IPv6 frontend to Glance's IPv4 address, IPv4 frontend to its IPv6 address): each is
/// banned by its own address and refused with 429; a legitimate IPv6 client is served.
#[test]
fn each_family_is_banned_by_its_own_address_over_the_other() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let started = Instant::now();
    let topo = Topo::new();
    let _glance = glance_on_node(&topo);
    let _v6_over_v4 = HaProxyConfig::new()
        .bind(&socket(Topo::FRONTEND_V6, PORT))
        .server(&socket(Topo::GLANCE_V4, PORT))
        .start(&topo.lb);
    let _v4_over_v6 = HaProxyConfig::new()
        .bind(&socket(Topo::FRONTEND_V4, PORT))
        .server(&socket(Topo::GLANCE_V6, PORT))
        .start(&topo.lb);
    let _xdp_tx = deliver_xdp_tx_to_lb(&topo);
    let daemon = daemon_behind_lb(&topo);
    let never = lb_addresses();
    let lister = Lister::start(
        &topo.client_b.ns,
        topo.client_b.v6[1],
        frontend(topo.client_b.v6[1]),
        &daemon,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    // (client, its namespace, the backend address the limiter sees it through)
    let attackers = [
        (topo.client_a.v6[0], &topo.client_a.ns, Topo::LB_BACKEND_V4),
        (topo.client_b.v4[0], &topo.client_b.ns, Topo::LB_BACKEND_V6),
    ];
    let flood_started = Instant::now();
    let floods: Vec<_> = attackers
        .iter()
        .map(|(src, ns, _)| {
            let src = *src;
            spawn_flood(
                ns,
                move || HttpsClient::new(src, &frontend(src)).io_timeout(PROXIED_IO_TIMEOUT),
                PROXIED_REFUSALS,
                &stop,
            )
        })
        .collect();
    for ((src, _, proxy), flood) in attackers.iter().zip(floods) {
        let ban_after = wait_for_ban(&daemon, src, &never) - flood_started;
        let flood = flood.join().expect("flood thread");
        served_until_refused(&flood, &[Some(429)], src);
        check_banned_stats(&daemon, src, Some(proxy));
        eprintln!("families: {src} (through {proxy}) banned {ban_after:?} after the floods began");
    }
    let rules = rules_sparing(&daemon, &never);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(daemon.counter("drop_proxied"), 0);
    let listed = lister.finish();
    eprintln!(
        "families: the legitimate client's {listed} lists all served; {:?} in all",
        started.elapsed()
    );
}
