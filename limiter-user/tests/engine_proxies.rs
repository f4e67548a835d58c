//! The daemon's engine with trusted proxies (`trusted_proxies`): a proxy's own address is never
//! banned automatically, whatever it sends, and a manual block that would cut one off is
//! refused unless forced. The real program is loaded (attached nowhere) and fed crafted frames
//! through BPF_PROG_TEST_RUN, so this needs root; without it the test says why and skips,
//! except in CI (`CI=true`), which runs as root and must run it.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use ipnet::IpNet;
use limiter_user::{
    config::Config,
    control::protocol::{ErrorKind, Reply, Request, ResponseLine, SourceState},
    daemon::Engine,
    loader::{Limiter, LoadOptions},
    policy::PolicyConfig,
    proxy::TrustedProxies,
    rules::{Action, Scope},
    store::RuleStore,
};

const PROXY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const GLANCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// Kernel-touching tests run one at a time.
static KERNEL: Mutex<()> = Mutex::new(());

/// The kernel, when it may be used here: as root. Elsewhere the test skips with a reason,
/// but not in CI, where a silent skip would hide that it never ran.
fn kernel() -> Option<MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(
            KERNEL
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI must run the engine tests as root");
    eprintln!("skipped: loading the XDP program needs root");
    None
}

/// An engine on the real program, with the proxies trusted and a threshold of 5 image creates
/// a minute.
fn engine(state: &tempfile::TempDir) -> Engine {
    let config = Config {
        trusted_proxies: TrustedProxies::new([net("198.51.100.2/32"), net("2001:db8::/64")]),
        policy: PolicyConfig {
            image_creates_per_minute: Some(5),
            // These tests send every create on one backend connection, which a 429 in
            // Glance's place would close (tests/tests/packets_budget.rs covers the budget
            // through a proxy): what they count is attribution.
            image_create_budget: false,
            ..PolicyConfig::default()
        },
        ..Config::default()
    };
    config.validate().unwrap();
    let limiter = Limiter::load(&LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading the program: {e}"));
    let store = RuleStore::open(state.path()).unwrap();
    Engine::new(limiter, store, config).unwrap_or_else(|e| panic!("starting the engine: {e}"))
}

/// An Ethernet + IPv4 + TCP frame to Glance (port 9292) carrying one image create.
fn image_create(source: Ipv4Addr) -> Vec<u8> {
    request(source, "")
}

/// An image create whose headers end with `headers` (each with its CRLF): from a trusted
/// proxy, `X-Forwarded-For: CLIENT\r\n` names the client.
fn request(source: Ipv4Addr, headers: &str) -> Vec<u8> {
    let payload = format!("POST /v2/images HTTP/1.1\r\nHost: glance\r\n{headers}\r\n");
    let payload = payload.as_bytes();
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    let total = u16::try_from(20 + 20 + payload.len()).unwrap();
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&GLANCE.octets());
    frame.extend_from_slice(&40_000u16.to_be_bytes());
    frame.extend_from_slice(&9292u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

fn rules(engine: &mut Engine) -> Vec<(IpNet, Action)> {
    match engine.handle(Request::List).result {
        Some(Reply::Rules(list)) => list.rules.iter().map(|r| (r.prefix, r.action)).collect(),
        other => panic!("list answered {other:?}"),
    }
}

fn block(prefixes: &[&str], force: bool) -> Request {
    Request::Block {
        prefixes: prefixes.iter().map(|p| net(p)).collect(),
        ttl_secs: Some(600),
        reason: Some("test".into()),
        scope: Scope::ProtectedPorts,
        force,
    }
}

fn refusal(response: &ResponseLine) -> &str {
    assert!(!response.ok, "{response:?}");
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::BadInput, "{error:?}");
    &error.message
}

#[test]
fn a_trusted_proxy_is_never_banned_automatically() {
    let Some(_kernel) = kernel() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let mut engine = engine(&state);
    engine.tick().unwrap();
    for source in [PROXY, CLIENT] {
        let frame = image_create(source);
        for _ in 0..20 {
            engine.limiter().test_run(&frame).unwrap();
        }
    }
    // The poll after the first (a baseline) sees both sources' creates.
    std::thread::sleep(Duration::from_millis(20));
    let report = engine.tick().unwrap();
    assert_eq!(report.rows, 2, "{report:?}");
    assert_eq!(
        rules(&mut engine),
        [(net("203.0.113.9/32"), Action::Block)],
        "the client over the threshold is banned, the proxy beside it is not"
    );
}

#[test]
fn a_manual_block_of_a_trusted_proxy_needs_force() {
    let Some(_kernel) = kernel() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let mut engine = engine(&state);

    let response = engine.handle(block(&["198.51.100.0/24"], false));
    let message = refusal(&response);
    assert!(
        message
            .starts_with("198.51.100.0/24 covers trusted proxy 198.51.100.2 (trusted_proxies[0]")
            && message.ends_with("repeat the block with --force"),
        "{message}"
    );
    // A batch is all or nothing: one prefix inside a trusted prefix refuses the others too.
    let response = engine.handle(block(&["203.0.113.0/24", "2001:db8::7/128"], false));
    let message = refusal(&response);
    assert!(
        message.contains("2001:db8::7/128 is inside trusted proxy 2001:db8::/64"),
        "{message}"
    );
    assert_eq!(rules(&mut engine), [], "nothing changed");

    let response = engine.handle(block(&["203.0.113.0/24", "2001:db8::7/128"], true));
    assert!(response.ok, "{response:?}");
    assert_eq!(
        rules(&mut engine),
        [
            (net("203.0.113.0/24"), Action::Block),
            (net("2001:db8::7/128"), Action::Block)
        ]
    );
    // Force overrides the proxy check only: the node itself stays protected.
    let response = engine.handle(block(&["127.0.0.0/8"], true));
    assert!(refusal(&response).contains("covers loopback"));
}

#[test]
fn stats_list_and_metrics_show_clients_by_their_proxy_and_the_proxy_apart() {
    let Some(_kernel) = kernel() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let mut engine = engine(&state);
    engine.tick().unwrap();
    let direct = Ipv4Addr::new(203, 0, 113, 10);
    let proxied = request(PROXY, &format!("X-Forwarded-For: {CLIENT}\r\n"));
    for _ in 0..8 {
        engine.limiter().test_run(&proxied).unwrap();
    }
    let anonymous = request(PROXY, "");
    for _ in 0..3 {
        engine.limiter().test_run(&anonymous).unwrap();
    }
    engine.limiter().test_run(&image_create(direct)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    engine.tick().unwrap();

    let stats = match engine
        .handle(Request::Stats {
            top: None,
            sort: None,
            filter: None,
        })
        .result
    {
        Some(Reply::Stats(stats)) => stats,
        other => panic!("stats answered {other:?}"),
    };
    assert_eq!(stats.tracked_sources, 3, "the proxy is tracked: {stats:?}");
    let sources: Vec<_> = stats
        .sources
        .iter()
        .map(|s| (s.address, s.via, s.state, s.totals.image_create))
        .collect();
    assert_eq!(
        sources,
        [
            (CLIENT.into(), Some(PROXY.into()), SourceState::Banned, 8),
            (direct.into(), None, SourceState::Ok, 1),
        ],
        "the proxy is not among the sources"
    );
    let [proxy] = &stats.proxies[..] else {
        panic!("one proxy: {:?}", stats.proxies)
    };
    assert_eq!(proxy.address, IpAddr::from(PROXY));
    assert_eq!(proxy.trusted_entry, Some(net("198.51.100.2/32")));
    assert!(!proxy.blocked);
    assert_eq!((proxy.totals.proxied, proxy.totals.unattributed), (8, 3));
    assert_eq!(proxy.totals.packets, 11);
    assert_eq!(
        (
            proxy.rates.proxied_per_minute,
            proxy.rates.unattributed_per_minute
        ),
        (8, 3),
        "the proxy's row appeared after the first poll: all of it is recent"
    );
    assert_eq!(stats.unseen_proxies, [net("2001:db8::/64")]);

    let list = match engine.handle(Request::List).result {
        Some(Reply::Rules(list)) => list,
        other => panic!("list answered {other:?}"),
    };
    assert_eq!(
        list.via.into_iter().collect::<Vec<_>>(),
        [(net("203.0.113.9/32"), IpAddr::from(PROXY))],
        "the ban of the client names its proxy"
    );

    let relayed: Vec<_> = engine
        .metrics_snapshot()
        .proxies
        .into_iter()
        .map(|p| (p.proxy, p.relayed, p.unattributed))
        .collect();
    assert_eq!(
        relayed,
        [
            ("198.51.100.2".to_string(), 8, 3),
            ("2001:db8::/64".to_string(), 0, 0)
        ]
    );
}
