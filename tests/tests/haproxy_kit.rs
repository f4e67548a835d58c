//! The HAProxy test kit end to end, with no limiter: the real Glance behind a real HAProxy
//! (TLS frontend, `option forwardfor`) serves image creates and lists to clients in other
//! namespaces, over IPv4 and IPv6 on both sides; and a recording backend shows what HAProxy
//! 2.6 sends a Glance node: the PROXY protocol header (v2 and v1) naming the client, and
//! `X-Forwarded-For` with the client's address after a client's own forged entry.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc, Mutex, MutexGuard},
    time::Duration,
};

use limiter_tests::{
    glance::RealGlance,
    haproxy::{HaProxyConfig, HttpReuse, SendProxy},
    http::{FloodLimits, FloodLog, StopOnDrop},
    https::{self, HttpsClient},
    netns::{ProxyClient, ProxyTopology as Topo},
    proxy_protocol::ProxyHeader,
    recorder::{RecordedConnection, RecordingBackend},
};

const FRONTEND_PORT: u16 = 9292;
const GLANCE_PORT: u16 = 9292;
/// The recording backend's port (any free one in the Glance namespace).
const RECORDER_PORT: u16 = 9393;
const CREATE: &str = r#"{"name":"kit","disk_format":"raw","container_format":"bare"}"#;
/// A forged `X-Forwarded-For` entry: a header value only, never a destination.
const FORGED: &str = "198.51.100.66";
/// How long a backend may take to be seen UP, or to see a health check (checks every 2 s).
const CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// One test at a time: each runs HAProxy on the same addresses in its own namespaces, and
/// Glance is two processes on a two-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// HAProxy's frontend (address and port) of the same family as the source address `src`.
fn frontend(src: &str) -> String {
    SocketAddr::new(Topo::frontend_for(src).parse().unwrap(), FRONTEND_PORT).to_string()
}

/// HAProxy on both frontend addresses.
fn both_frontends() -> HaProxyConfig {
    HaProxyConfig::new()
        .bind(&format!("{}:{FRONTEND_PORT}", Topo::FRONTEND_V4))
        .bind(&format!("[{}]:{FRONTEND_PORT}", Topo::FRONTEND_V6))
}

fn assert_all(log: &FloodLog, status: u16, who: &str) {
    let counts = log.status_counts();
    assert!(
        !log.attempts.is_empty() && counts.keys().all(|s| *s == Some(status)),
        "{who}: expected only {status}, got {counts:?}"
    );
}

#[test]
fn real_glance_serves_creates_and_lists_through_haproxy() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new();
    // Bound to `::`: HAProxy reaches it over both families; probed from the load balancer.
    let glance = RealGlance::start_bound(
        &topo.glance,
        "::",
        GLANCE_PORT,
        &topo.lb,
        Topo::LB_BACKEND_V4,
        Topo::GLANCE_V4,
    );
    let lb = both_frontends()
        .server(&format!("{}:{GLANCE_PORT}", Topo::GLANCE_V4))
        .server(&format!("[{}]:{GLANCE_PORT}", Topo::GLANCE_V6))
        .health_checks(true)
        .start(&topo.lb);
    for server in ["glance1", "glance2"] {
        lb.wait_server_state(server, "UP", CHECK_DEADLINE);
    }

    // One client per family, each on one kept connection: create, then list.
    for src in [topo.client_a.v4[0], topo.client_a.v6[0]] {
        topo.client_a.ns.run(|| {
            let mut client = HttpsClient::new(src, &frontend(src));
            let created = client.request("POST", "/v2/images", CREATE).unwrap();
            assert_eq!(created.status, 201, "create from {src}: {created:?}");
            let listed = client.request("GET", "/v2/images", "").unwrap();
            assert_eq!(listed.status, 200, "list from {src}: {listed:?}");
            assert_eq!(client.connections_opened(), 1, "keep-alive from {src}");
        });
    }
    assert_eq!(glance.image_count(), 2);

    // A bounded flood from A while B lists on a new connection every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let limits = |n| FloodLimits {
        max_attempts: n,
        max_duration: Duration::from_secs(30),
        stop_after_failures: Some(3),
    };
    let lister = {
        let (src, stop) = (topo.client_b.v4[0], stop.clone());
        topo.client_b.ns.spawn(move || {
            let mut client = HttpsClient::new(src, &frontend(src)).keep_alive(false);
            let log = https::periodic_requests(
                &mut client,
                "GET",
                "/v2/images",
                "",
                Duration::from_millis(100),
                limits(10),
                &stop,
            );
            (log, client.connections_opened())
        })
    };
    let flood = topo.client_a.ns.run(|| {
        let src = topo.client_a.v4[1];
        let mut client = HttpsClient::new(src, &frontend(src));
        https::image_create_flood(&mut client, CREATE, None, limits(40), &stop)
    });
    let (listed, lister_connections) = lister.join().unwrap();
    assert_all(&flood, 201, "flood");
    assert_eq!(flood.attempts.len(), 40);
    assert_all(&listed, 200, "lister");
    assert_eq!(lister_connections, listed.attempts.len());
    assert_eq!(glance.image_count(), 42);
}

/// One request from `src` in `client`'s namespace; the client's address as HAProxy saw it.
fn one_request(client: &ProxyClient, src: &str, extra: &[(&str, &str)]) -> SocketAddr {
    client.ns.run(|| {
        let mut c = HttpsClient::new(src, &frontend(src));
        let response = c.request_with("GET", "/v2/images", extra, "").unwrap();
        assert_eq!(response.status, 200, "from {src}: {response:?}");
        c.local_addr().expect("connected")
    })
}

/// The connections that carried a request for `path`.
fn carrying<'a>(connections: &'a [RecordedConnection], path: &str) -> Vec<&'a RecordedConnection> {
    connections
        .iter()
        .filter(|c| {
            c.requests
                .iter()
                .any(|r| r.request_line.split(' ').nth(1) == Some(path))
        })
        .collect()
}

fn send_proxy_names_the_client(mode: SendProxy) {
    let topo = Topo::new();
    let recorder = RecordingBackend::start_in(&topo.glance, RECORDER_PORT, true);
    // `http-reuse always`, the most sharing HAProxy allows: a PROXY header still has to
    // name the client whose request the connection carries.
    let lb = both_frontends()
        .server(&format!("{}:{RECORDER_PORT}", Topo::GLANCE_V4))
        .send_proxy(mode)
        .http_reuse(HttpReuse::Always)
        .health_checks(true)
        .start(&topo.lb);
    let a = one_request(&topo.client_a, topo.client_a.v4[0], &[]);
    let b = one_request(&topo.client_b, topo.client_b.v6[0], &[]);
    let a_again = one_request(&topo.client_a, topo.client_a.v4[1], &[]);

    let connections = recorder.connections();
    let mut seen = Vec::new();
    for c in carrying(&connections, "/v2/images") {
        let header = c
            .proxy
            .clone()
            .expect("a header")
            .expect("a well-formed header");
        match (&header, mode) {
            (ProxyHeader::V1 { .. }, SendProxy::V1) | (ProxyHeader::V2 { .. }, SendProxy::V2) => {}
            _ => panic!("{mode:?}: got {header:?}"),
        }
        assert_eq!(
            c.requests.len(),
            1,
            "one request per client connection: {c:?}"
        );
        seen.push((header.src().unwrap(), header.dst().unwrap()));
        eprintln!("{mode:?} request connection from {}: {header:?}", c.peer);
    }
    let front =
        |client: SocketAddr| -> SocketAddr { frontend(&client.ip().to_string()).parse().unwrap() };
    assert_eq!(
        seen,
        vec![(a, front(a)), (b, front(b)), (a_again, front(a_again))]
    );

    // Health checks carry a header too, which a limiter must not take for a client's: v2
    // says LOCAL, v1 names HAProxy's own connection.
    let checks = recorder.wait_until("health check", CHECK_DEADLINE, |cs| {
        !carrying(cs, "/healthcheck").is_empty()
    });
    let check = carrying(&checks, "/healthcheck")[0].clone();
    eprintln!(
        "{mode:?} health check from {}: {:?}",
        check.peer, check.proxy
    );
    let header = check
        .proxy
        .expect("a header")
        .expect("a well-formed header");
    match mode {
        SendProxy::V2 => assert!(
            matches!(header, ProxyHeader::V2 { local: true, .. }),
            "{header:?}"
        ),
        SendProxy::V1 => {
            let own = SocketAddr::new(Topo::LB_BACKEND_V4.parse().unwrap(), check.peer.port());
            assert_eq!(header.src(), Some(own));
            let server = SocketAddr::new(Topo::GLANCE_V4.parse().unwrap(), RECORDER_PORT);
            assert_eq!(header.dst(), Some(server));
        }
        SendProxy::None => unreachable!(),
    }
    drop(lb);
}

#[test]
fn send_proxy_v2_names_the_client() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    send_proxy_names_the_client(SendProxy::V2);
}

#[test]
fn send_proxy_v1_names_the_client() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    send_proxy_names_the_client(SendProxy::V1);
}

#[test]
fn forwardfor_appends_the_client_after_a_forged_entry() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let topo = Topo::new();
    let recorder = RecordingBackend::start_in(&topo.glance, RECORDER_PORT, false);
    let server = format!("[{}]:{RECORDER_PORT}", Topo::GLANCE_V6);
    {
        let _lb = both_frontends().server(&server).start(&topo.lb);
        let a = one_request(
            &topo.client_a,
            topo.client_a.v4[0],
            &[("X-Forwarded-For", FORGED)],
        );
        let b = one_request(&topo.client_b, topo.client_b.v6[0], &[]);
        let requests = recorder.requests();
        for (_, r) in &requests {
            eprintln!("forwardfor: {} {:?}", r.request_line, r.headers);
        }
        assert_eq!(requests.len(), 2);
        // The client's own line untouched, then HAProxy's, as a line of its own.
        let a_ip = a.ip().to_string();
        assert_eq!(
            requests[0].1.header_values("x-forwarded-for"),
            [FORGED, a_ip.as_str()]
        );
        assert_eq!(
            requests[0].1.forwarded_for(),
            Some(format!("{FORGED}, {a_ip}"))
        );
        assert_eq!(requests[1].1.forwarded_for(), Some(b.ip().to_string()));
    }
    let _lb = both_frontends()
        .server(&server)
        .forwardfor(false)
        .start(&topo.lb);
    one_request(
        &topo.client_a,
        topo.client_a.v4[0],
        &[("X-Forwarded-For", FORGED)],
    );
    let requests = recorder.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].1.forwarded_for().as_deref(), Some(FORGED));
}
