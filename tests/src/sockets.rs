//! The TCP sockets of a test namespace, as `ss` lists them: what a run left behind.

use std::{
    collections::BTreeMap,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How long half-open connections get to drain after a run (retransmission timeouts are
/// 200 ms and up; a FIN-WAIT-2 would stay 60 s, and must not happen at all).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// TCP states of a connection one side has begun to open or close and the other has not
/// finished: none may stay. TIME-WAIT is fine (the side that closed first keeps it).
pub const HALF_OPEN: [&str; 6] = [
    "SYN-RECV",
    "FIN-WAIT-1",
    "FIN-WAIT-2",
    "CLOSE-WAIT",
    "LAST-ACK",
    "CLOSING",
];

/// `ss -tan` in `ns`: (state, local, peer) of every TCP socket.
pub fn tcp_sockets(ns: &Netns) -> Vec<(String, String, String)> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["ss", "-tanH"])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "ss in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_owned(), f[3].to_owned(), f[4].to_owned()))
        })
        .collect()
}

/// Waits until no socket in `namespaces` is half open; prints the states it saw first and
/// how long draining took.
pub fn assert_no_half_open(namespaces: &[(&str, &Netns)]) {
    let started = Instant::now();
    let mut first = true;
    loop {
        let mut half_open = Vec::new();
        for (name, ns) in namespaces {
            let sockets = tcp_sockets(ns);
            if first {
                let mut states = BTreeMap::<&str, usize>::new();
                for (state, _, _) in &sockets {
                    *states.entry(state.as_str()).or_default() += 1;
                }
                let half: Vec<String> = sockets
                    .iter()
                    .filter(|(state, _, _)| HALF_OPEN.contains(&state.as_str()))
                    .map(|(state, local, peer)| format!("{state} {local} -> {peer}"))
                    .collect();
                eprintln!(
                    "  TCP sockets in the {name} namespace after the run: {states:?} {half:?}"
                );
            }
            half_open.extend(
                sockets
                    .into_iter()
                    .filter(|(state, _, _)| HALF_OPEN.contains(&state.as_str()))
                    .map(|s| (*name, s)),
            );
        }
        first = false;
        if half_open.is_empty() {
            eprintln!(
                "  no half-open socket {:?} after the run",
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < DRAIN_DEADLINE,
            "half-open sockets {DRAIN_DEADLINE:?} after the run: {half_open:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until no socket in `ns` other than a TIME-WAIT one has `peer` (an address) as its
/// peer: the connections a run opened from `peer` are all closed on this side.
pub fn assert_none_from(ns: &Netns, peer: &str) {
    let started = Instant::now();
    let of_peer = |sockets: Vec<(String, String, String)>| -> Vec<String> {
        sockets
            .into_iter()
            .filter(|(state, _, remote)| {
                state != "TIME-WAIT"
                    && remote
                        .rsplit_once(':')
                        .is_some_and(|(host, _)| host.trim_matches(['[', ']']) == peer)
            })
            .map(|(state, local, remote)| format!("{state} {local} <- {remote}"))
            .collect()
    };
    loop {
        let left = of_peer(tcp_sockets(ns));
        if left.is_empty() {
            eprintln!(
                "  no socket from {peer} left in {} {:?} after the run",
                ns.name(),
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < DRAIN_DEADLINE,
            "sockets from {peer} {DRAIN_DEADLINE:?} after the run: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
