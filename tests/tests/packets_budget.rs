//! Packet-level tests of image-create budgets in the kernel (issue 13), through
//! BPF_PROG_TEST_RUN: the create past a source's budget is answered with 429 in Glance's
//! place at once, the client's next segment on that connection resets Glance's socket, and
//! nothing else is touched (other sources, other requests, allowlisted sources, monitor
//! mode). Each frame goes through [`Rig::check`], which asserts the verdict and the change of
//! every global counter.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use limiter_common::{Counter, SOURCE_REJECTED_CONNS};
use limiter_tests::{
    frames::{self, Packet, ACK, FIN, PSH, SYN},
    require_kernel,
};
use limiter_user::{
    budget::ImageCreateBudget,
    loader::{Limiter, LoadOptions, Verdict},
    proxy::ClientHeader,
    rules::{compile, Action, KernelRule, Scope},
};

use Counter::*;

const GLANCE: u16 = 9292;
const GLANCE_V4: &str = "198.51.100.1";
const GLANCE_V6: &str = "2001:db8:51::1";
const PROXY: &str = "198.51.100.2";
const CLIENT: &str = "203.0.113.7";
const OTHER: &str = "203.0.113.8";
const CLIENT_V6: &str = "2001:db8:1::7";
/// Creates a minute, so the burst: small enough to cross in a test, and the budget's
/// interval (20 s) long enough that no create is refunded while one runs.
const PER_MINUTE: u32 = 3;
const CREATE: &str = "POST /v2/images HTTP/1.1\r\nHost: glance\r\nContent-Length: 2\r\n\r\n{}";

struct Rig {
    limiter: Limiter,
}

impl Rig {
    fn new(enforce: bool) -> Self {
        let mut rig = Self::without_budget();
        let hz = rig.limiter.clock().expect("clock").hz;
        let budget = ImageCreateBudget::of_policy(Some(PER_MINUTE), true, enforce).unwrap();
        rig.limiter
            .set_image_create_budget(Some(budget.kernel_config(hz)))
            .expect("budget");
        rig
    }

    fn without_budget() -> Self {
        let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the XDP program");
        limiter.set_protected_ports(&[GLANCE]).expect("ports");
        limiter
            .set_trusted_proxies(&[IpNet::from(addr(PROXY))])
            .expect("proxies");
        limiter
            .set_client_header(ClientHeader::XForwardedFor)
            .expect("header");
        let hz = limiter.clock().expect("clock").hz;
        limiter.set_reject_response(hz).expect("reject response");
        Rig { limiter }
    }

    fn apply(&mut self, rules: &[(&str, Action)]) {
        let clock = self.limiter.clock().expect("clock");
        let rules: Vec<KernelRule> = rules
            .iter()
            .map(|(who, action)| KernelRule {
                net: IpNet::from(addr(who)),
                action: *action,
                scope: Scope::ProtectedPorts,
                expires: Some(clock.wall + Duration::from_secs(600)),
            })
            .collect();
        let compiled = compile(&rules, &clock).expect("compile");
        self.limiter.apply_rules(&compiled).expect("apply");
    }

    /// Runs `frame`: asserts the verdict and that exactly `counters` went up; returns the
    /// frame as the program left it.
    fn check(&self, frame: &[u8], verdict: Verdict, counters: &[Counter]) -> Vec<u8> {
        limiter_tests::counters::check_run(&self.limiter, frame, verdict, counters)
    }

    /// `who`'s image creates and flags as its kernel row has them.
    fn row(&self, who: &str) -> (u32, u16) {
        let rows = self.limiter.sources().expect("sources");
        let row = rows.iter().find(|e| e.addr == addr(who)).expect("a row");
        (row.stats.image_create, row.stats.flags)
    }

    fn over_budget(&self, who: &str) -> u64 {
        let outcomes = self.limiter.create_outcomes().expect("create outcomes");
        outcomes.get(&addr(who)).map_or(0, |o| o.over_budget)
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A segment from `from` to Glance on `from`'s port `port` carrying `payload`.
fn segment(from: &str, port: u16, payload: &str) -> Packet {
    let mut p = Packet::request(from, GLANCE, payload.as_bytes());
    p.dst = match addr(from) {
        IpAddr::V4(_) => addr(GLANCE_V4),
        IpAddr::V6(_) => addr(GLANCE_V6),
    };
    p.src_port = port;
    p
}

fn create(from: &str, port: u16) -> Vec<u8> {
    segment(from, port, CREATE).build()
}

const TCP_AT: usize = 14 + 20;

fn be32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(frame[at..at + 4].try_into().unwrap())
}

fn retry_after(reply: &[u8], tcp_at: usize) -> u64 {
    let text = String::from_utf8_lossy(&reply[tcp_at + 20..]).to_string();
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    assert!(text.contains("Connection: close\r\n"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Retry-After:"))
        .expect("Retry-After")
        .trim()
        .parse()
        .expect("seconds")
}

#[test]
fn the_create_past_the_budget_is_answered_429_and_glances_socket_reset() {
    require_kernel!();
    let rig = Rig::new(true);
    rig.check(
        &create(CLIENT, 41_000),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    for _ in 1..PER_MINUTE {
        rig.check(&create(CLIENT, 41_000), Verdict::Pass, &[PassProtected]);
    }
    let request = create(CLIENT, 41_000);
    let reply = rig.check(&request, Verdict::Tx, &[RejectOverBudget]);
    // Addresses and ports swapped, the whole request acknowledged, FIN set.
    assert_eq!(&reply[14 + 12..14 + 16], &request[14 + 16..14 + 20]);
    assert_eq!(&reply[14 + 16..14 + 20], &request[14 + 12..14 + 16]);
    assert_eq!(&reply[TCP_AT..TCP_AT + 2], &request[TCP_AT + 2..TCP_AT + 4]);
    let payload_len = (request.len() - TCP_AT - 20) as u32;
    assert_eq!(be32(&reply, TCP_AT + 4), be32(&request, TCP_AT + 8));
    assert_eq!(
        be32(&reply, TCP_AT + 8),
        be32(&request, TCP_AT + 4) + payload_len
    );
    assert_eq!(reply[TCP_AT + 13], FIN | PSH | ACK);
    frames::assert_checksums(&reply);
    // The next create fits one interval (60 s / 3) after the first ones.
    let retry = retry_after(&reply, TCP_AT);
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    // Counted all the same (the daemon's rate is of what a source attempts), and marked.
    let (creates, flags) = rig.row(CLIENT);
    assert_eq!(creates, PER_MINUTE + 1);
    assert_ne!(flags & SOURCE_REJECTED_CONNS, 0);
    assert_eq!(rig.over_budget(CLIENT), 1);

    // The client's next segment on that connection resets Glance's socket at the sequence
    // number it expects (the refused request never reached it).
    let mut next = segment(CLIENT, 41_000, "").flags(ACK | FIN);
    next.payload.clear();
    let reset = rig.check(&next.build(), Verdict::Pass, &[ResetOverBudget]);
    assert_eq!(reset.len(), 14 + 20 + 20);
    assert_eq!(reset[TCP_AT + 13], 0x04, "RST");
    assert_eq!(be32(&reset, TCP_AT + 4), be32(&request, TCP_AT + 4));
    frames::assert_checksums(&reset);
    // Then the connection is forgotten: what follows passes untouched.
    rig.check(&next.build(), Verdict::Pass, &[PassProtected]);

    // Reads of the same client pass; its next create on a new connection is refused too.
    let read = segment(CLIENT, 41_001, "GET /v2/images HTTP/1.1\r\n\r\n").build();
    rig.check(&read, Verdict::Pass, &[PassProtected]);
    rig.check(&create(CLIENT, 41_002), Verdict::Tx, &[RejectOverBudget]);
    assert_eq!(rig.over_budget(CLIENT), 2);
    // Another source has its own budget.
    rig.check(
        &create(OTHER, 41_000),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    assert_eq!(rig.over_budget(OTHER), 0);
}

#[test]
fn an_ipv6_client_over_budget_is_answered_too() {
    require_kernel!();
    let rig = Rig::new(true);
    rig.check(
        &create(CLIENT_V6, 41_000),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    for _ in 1..PER_MINUTE {
        rig.check(&create(CLIENT_V6, 41_000), Verdict::Pass, &[PassProtected]);
    }
    let request = create(CLIENT_V6, 41_000);
    let reply = rig.check(&request, Verdict::Tx, &[RejectOverBudget]);
    assert_eq!(&reply[14 + 8..14 + 24], &request[14 + 24..14 + 40]);
    retry_after(&reply, 14 + 40);
    frames::assert_checksums(&reply);
    let next = segment(CLIENT_V6, 41_000, "").flags(ACK);
    let reset = rig.check(&next.build(), Verdict::Pass, &[ResetOverBudget]);
    assert_eq!(reset[14 + 40 + 13], 0x04, "RST");
    frames::assert_checksums(&reset);
}

#[test]
fn a_new_connection_on_a_refused_ones_port_starts_clean() {
    require_kernel!();
    let mut rig = Rig::new(true);
    for _ in 0..PER_MINUTE {
        rig.test_pass(&create(CLIENT, 41_000));
    }
    rig.check(&create(CLIENT, 41_000), Verdict::Tx, &[RejectOverBudget]);
    // Rules change meanwhile (the verdict cache is read again): the mark stays.
    rig.apply(&[("203.0.113.99", Action::Block)]);
    let syn = segment(CLIENT, 41_000, "").flags(SYN);
    rig.check(&syn.build(), Verdict::Pass, &[PassProtected]);
    let ack = segment(CLIENT, 41_000, "").flags(ACK);
    rig.check(&ack.build(), Verdict::Pass, &[PassProtected]);
    // Another refused connection after the rules changed still gets its reset.
    rig.check(&create(CLIENT, 41_005), Verdict::Tx, &[RejectOverBudget]);
    let next = segment(CLIENT, 41_005, "").flags(ACK | FIN);
    rig.check(&next.build(), Verdict::Pass, &[ResetOverBudget]);
}

#[test]
fn monitor_mode_counts_creates_over_budget_and_passes_them() {
    require_kernel!();
    let rig = Rig::new(false);
    for _ in 0..PER_MINUTE {
        rig.test_pass(&create(CLIENT, 41_000));
    }
    for n in 1..=3 {
        rig.check(
            &create(CLIENT, 41_000),
            Verdict::Pass,
            &[PassProtected, OverBudgetObserved],
        );
        assert_eq!(rig.over_budget(CLIENT), n);
    }
    assert_eq!(rig.row(CLIENT), (PER_MINUTE + 3, 0));
}

#[test]
fn allowlisted_sources_reads_and_other_writes_are_never_refused() {
    require_kernel!();
    let mut rig = Rig::new(true);
    rig.apply(&[(CLIENT, Action::Allow)]);
    for _ in 0..PER_MINUTE * 3 {
        rig.test_pass(&create(CLIENT, 41_000));
    }
    assert_eq!(rig.over_budget(CLIENT), 0);
    for request in [
        "GET /v2/images HTTP/1.1\r\n\r\n",
        "PUT /v2/images/x/file HTTP/1.1\r\n\r\n",
        "POST /v2/images/x/import HTTP/1.1\r\n\r\n",
        "POST /v2/imagesx HTTP/1.1\r\n\r\n",
    ] {
        for _ in 0..PER_MINUTE * 3 {
            rig.test_pass(&segment(OTHER, 41_000, request).build());
        }
    }
    // All of that left OTHER's budget whole.
    for _ in 0..PER_MINUTE {
        rig.test_pass(&create(OTHER, 41_000));
    }
    rig.check(&create(OTHER, 41_000), Verdict::Tx, &[RejectOverBudget]);
}

#[test]
fn without_a_budget_nothing_is_refused() {
    require_kernel!();
    let rig = Rig::without_budget();
    for _ in 0..PER_MINUTE * 5 {
        rig.test_pass(&create(CLIENT, 41_000));
    }
    assert!(rig.limiter.create_outcomes().expect("outcomes").is_empty());
    // And switched off after being on.
    let mut rig = Rig::new(true);
    rig.limiter
        .set_image_create_budget(None)
        .expect("budget off");
    for _ in 0..PER_MINUTE * 5 {
        rig.test_pass(&create(CLIENT, 41_000));
    }
}

#[test]
fn a_proxied_client_over_budget_is_answered_and_the_proxys_other_clients_served() {
    require_kernel!();
    let rig = Rig::new(true);
    let via = |client: &str, port: u16| {
        segment(
            PROXY,
            port,
            &format!(
                "POST /v2/images HTTP/1.1\r\nHost: glance\r\nX-Forwarded-For: {client}\r\n\r\n{{}}"
            ),
        )
        .build()
    };
    rig.check(
        &via(CLIENT, 42_000),
        Verdict::Pass,
        &[PassProtected, SourceNew, SourceNew, ProxiedRequest],
    );
    for _ in 1..PER_MINUTE {
        rig.check(
            &via(CLIENT, 42_000),
            Verdict::Pass,
            &[PassProtected, ProxiedRequest],
        );
    }
    let reply = rig.check(
        &via(CLIENT, 42_000),
        Verdict::Tx,
        &[ProxiedRequest, RejectOverBudget],
    );
    retry_after(&reply, TCP_AT);
    frames::assert_checksums(&reply);
    assert_eq!(rig.over_budget(CLIENT), 1);
    assert_eq!(rig.over_budget(PROXY), 0);
    // The proxy's next segment on that connection closes Glance's socket; another client's
    // create through the same proxy is served.
    let next = segment(PROXY, 42_000, "").flags(ACK | FIN);
    rig.check(&next.build(), Verdict::Pass, &[ResetProxied]);
    rig.check(
        &via(OTHER, 42_001),
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxiedRequest],
    );
}

impl Rig {
    /// A frame that passes as an ordinary protected one (its counters not asserted).
    fn test_pass(&self, frame: &[u8]) {
        let verdict = self.limiter.test_run(frame).expect("test run");
        assert_eq!(
            verdict,
            Verdict::Pass,
            "{:?}",
            String::from_utf8_lossy(frame)
        );
    }
}

#[test]
fn a_refused_connection_is_reset_even_once_its_source_is_banned() {
    require_kernel!();
    let mut rig = Rig::new(true);
    for _ in 0..PER_MINUTE {
        rig.test_pass(&create(CLIENT, 41_000));
    }
    rig.check(&create(CLIENT, 41_000), Verdict::Tx, &[RejectOverBudget]);
    // The daemon's ban lands before the client's last segment on that connection.
    rig.apply(&[(CLIENT, Action::Block)]);
    let next = segment(CLIENT, 41_000, "").flags(ACK | FIN);
    rig.check(&next.build(), Verdict::Pass, &[ResetOverBudget]);
    // Everything else of it is dropped, as any banned source's.
    rig.check(&next.build(), Verdict::Drop, &[DropBlocked]);
    rig.check(&create(CLIENT, 41_001), Verdict::Drop, &[DropBlocked]);
    rig.check(&create(CLIENT, 41_001), Verdict::Drop, &[DropBlocked]);
}

#[test]
fn forgiving_a_prefix_gives_its_sources_a_whole_budget_again() {
    require_kernel!();
    let mut rig = Rig::new(true);
    for who in [CLIENT, OTHER] {
        for _ in 0..PER_MINUTE {
            rig.test_pass(&create(who, 41_000));
        }
        rig.check(&create(who, 41_000), Verdict::Tx, &[RejectOverBudget]);
    }
    let forgiven = rig
        .limiter
        .forgive_budgets(&[IpNet::from(addr(CLIENT))])
        .expect("forgive");
    assert_eq!(forgiven, 1);
    for _ in 0..PER_MINUTE {
        rig.test_pass(&create(CLIENT, 41_010));
    }
    rig.check(&create(CLIENT, 41_010), Verdict::Tx, &[RejectOverBudget]);
    // The other source's budget is as spent as it was.
    rig.check(&create(OTHER, 41_010), Verdict::Tx, &[RejectOverBudget]);
}

#[test]
fn a_create_over_budget_in_a_frame_the_answer_cannot_be_written_into_is_dropped() {
    require_kernel!();
    let rig = Rig::new(true);
    // IPv4 options (a record-route option): counted and judged like any frame, but the 429
    // is written only into plain headers.
    let with_options = |port: u16| {
        segment(CLIENT, port, CREATE)
            .ipv4_options(&[7, 7, 4, 0, 0, 0, 0])
            .build()
    };
    rig.check(
        &with_options(41_000),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    for _ in 1..PER_MINUTE {
        rig.check(&with_options(41_000), Verdict::Pass, &[PassProtected]);
    }
    rig.check(&with_options(41_000), Verdict::Drop, &[DropOverBudget]);
    assert_eq!(rig.over_budget(CLIENT), 1);
}

/// A budget spent to its last create without one refused (the policy's ban came first: its
/// threshold is the budget) is forgiven too, and a prefix forgives every source in it.
#[test]
fn a_budget_spent_without_a_refusal_is_forgiven_and_a_prefix_forgives_all_of_it() {
    require_kernel!();
    let mut rig = Rig::new(true);
    for who in [CLIENT, OTHER] {
        for _ in 0..PER_MINUTE {
            rig.test_pass(&create(who, 41_000));
        }
    }
    assert_eq!(rig.over_budget(CLIENT), 0, "never over budget");
    let forgiven = rig
        .limiter
        .forgive_budgets(&["203.0.113.0/24".parse().unwrap()])
        .expect("forgive");
    assert_eq!(forgiven, 2);
    for who in [CLIENT, OTHER] {
        for _ in 0..PER_MINUTE {
            rig.test_pass(&create(who, 41_010));
        }
        rig.check(&create(who, 41_010), Verdict::Tx, &[RejectOverBudget]);
    }
    // A source that never created has nothing to forgive.
    rig.test_pass(&segment(CLIENT_V6, 41_020, "GET /v2/images HTTP/1.1\r\n\r\n").build());
    let forgiven = rig
        .limiter
        .forgive_budgets(&[IpNet::from(addr(CLIENT_V6))])
        .expect("forgive");
    assert_eq!(forgiven, 0);
}
