//! `cargo xtask demo`: glance-limiter in front of a Glance stand-in, in throwaway network
//! namespaces. A client creates an image now and then; an attacker floods image creates over
//! one keep-alive connection. The program counts both; after a few seconds the attacker is
//! blocked and the client keeps working. Everything is bounded in time and removed on exit.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_common::Counter;
use limiter_tests::{
    http::{connect_from, request, StandInServer},
    netns::Topology,
};
use limiter_user::{
    loader::{Limiter, LoadOptions},
    rules::{compile, Action, KernelRule, Scope},
};

const GLANCE_PORT: u16 = 9292;
const SECONDS_BEFORE_BLOCK: u64 = 4;
const SECONDS_TOTAL: u64 = 10;
const CREATE_BODY: &str = r#"{"name":"demo","disk_format":"raw","container_format":"bare"}"#;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo creates network namespaces and loads XDP: run it as root");
        std::process::exit(1);
    }
    let topo = Topology::new();
    let server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let mut limiter = Limiter::load(&LoadOptions::default()).expect("load glance-limiter");
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    let mode = topo
        .server
        .run(|| limiter.attach(topo.server_iface))
        .expect("attach to the server's veth");
    let (client_addr, attacker_addr) = (Topology::CLIENT_V4[1], Topology::CLIENT_V4[0]);
    println!(
        "glance-limiter attached to {} ({}); Glance stand-in on {}:{GLANCE_PORT}",
        topo.server_iface,
        mode.as_str(),
        Topology::SERVER_V4
    );
    println!("client {client_addr}: one image create every 250 ms; attacker {attacker_addr}: as fast as it can\n");

    let stop = Arc::new(AtomicBool::new(false));
    let client = Arc::new(Tally::default());
    let attacker = Arc::new(Tally::default());
    let threads = [
        spawn_load(
            &topo,
            client_addr,
            Duration::from_millis(250),
            &stop,
            &client,
        ),
        spawn_load(&topo, attacker_addr, Duration::ZERO, &stop, &attacker),
    ];

    println!(
        "{:>4}  {:>22}  {:>22}  {:>10}",
        "sec", "attacker creates (ok)", "client creates (ok)", "drops"
    );
    let started = Instant::now();
    let mut previous = limiter.counters().unwrap();
    let mut last = (0, 0);
    for second in 1..=SECONDS_TOTAL {
        thread::sleep(
            Duration::from_secs(1).saturating_sub(
                started
                    .elapsed()
                    .saturating_sub(Duration::from_secs(second - 1)),
            ),
        );
        let counters = limiter.counters().unwrap();
        let drops = counters.since(&previous).get(Counter::DropBlocked);
        previous = counters;
        let now = (
            attacker.ok.load(Ordering::Relaxed),
            client.ok.load(Ordering::Relaxed),
        );
        println!(
            "{second:>4}  {:>22}  {:>22}  {:>10}",
            now.0 - last.0,
            now.1 - last.1,
            drops
        );
        last = now;
        if second == SECONDS_BEFORE_BLOCK {
            let kernel_view = limiter.sources().unwrap();
            for row in &kernel_view {
                println!(
                    "      kernel counts {}: {} SYNs, {} image creates",
                    row.addr, row.stats.syns, row.stats.image_create
                );
            }
            let rule = KernelRule {
                net: format!("{attacker_addr}/32").parse().unwrap(),
                action: Action::Block,
                scope: Scope::ProtectedPorts,
                expires: None,
            };
            limiter
                .apply_rules(&compile(&[rule], &limiter.clock().unwrap()).unwrap())
                .unwrap();
            println!(
                "      blocked {attacker_addr}/32 (by hand here; the daemon will do it on its own)"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().ok();
    }
    println!(
        "\nGlance stand-in answered {} requests; client creates ok {} failed {}; attacker creates ok {} failed {}",
        server.requests(),
        client.ok.load(Ordering::Relaxed),
        client.failed.load(Ordering::Relaxed),
        attacker.ok.load(Ordering::Relaxed),
        attacker.failed.load(Ordering::Relaxed),
    );
    println!("cleaning up: namespaces, veths and the XDP attachment go away now");
}

/// Image creates from `src` on one keep-alive connection, `pause` apart, until `stop`
/// (reconnecting after failures, with short timeouts so a blocked source gives up quickly).
fn spawn_load(
    topo: &Topology,
    src: &'static str,
    pause: Duration,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> thread::JoinHandle<()> {
    let (stop, tally) = (stop.clone(), tally.clone());
    topo.client.spawn(move || {
        let mut stream = None;
        while !stop.load(Ordering::Relaxed) {
            if stream.is_none() {
                stream = connect_from(
                    src,
                    Topology::SERVER_V4,
                    GLANCE_PORT,
                    Duration::from_millis(300),
                )
                .ok();
                if stream.is_none() {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(s) = &stream {
                    s.set_read_timeout(Some(Duration::from_millis(300))).ok();
                }
            }
            let s = stream.as_mut().expect("connected above");
            match request(s, "POST", "/v2/images", CREATE_BODY) {
                Ok(201) => tally.ok.fetch_add(1, Ordering::Relaxed),
                _ => {
                    stream = None;
                    tally.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            thread::sleep(pause);
        }
    })
}
