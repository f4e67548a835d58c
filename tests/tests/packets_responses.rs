//! Packet-level tests of "responses seen" (issue 13): the XDP program records each image
//! create it passes to Glance against its connection, and the TC egress program counts
//! Glance's answer on that connection as a created record (2xx) or a failed create, for the
//! create's client, through BPF_PROG_TEST_RUN on both programs. Every run asserts the change
//! of every global counter.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use limiter_common::Counter;
use limiter_tests::{frames::Packet, require_kernel};
use limiter_user::{
    budget::ImageCreateBudget,
    loader::{CreateOutcomes, Limiter, LoadOptions, Verdict},
    proxy::ClientHeader,
};

use Counter::*;

const GLANCE: u16 = 9292;
const GLANCE_V4: &str = "198.51.100.1";
const GLANCE_V6: &str = "2001:db8:51::1";
const PROXY: &str = "198.51.100.2";
const CLIENT: &str = "203.0.113.7";
const CLIENT_V6: &str = "2001:db8:1::7";
const CREATE: &str = "POST /v2/images HTTP/1.1\r\nHost: glance\r\nContent-Length: 2\r\n\r\n{}";
/// TCX_NEXT: the egress program never changes a packet's fate.
const NEXT: i32 = -1;

struct Rig {
    limiter: Limiter,
}

impl Rig {
    fn new() -> Self {
        let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the programs");
        limiter.set_protected_ports(&[GLANCE]).expect("ports");
        limiter
            .set_trusted_proxies(&[IpNet::from(addr(PROXY))])
            .expect("proxies");
        limiter
            .set_client_header(ClientHeader::XForwardedFor)
            .expect("header");
        limiter.set_response_counting(true).expect("counting");
        Rig { limiter }
    }

    /// A frame into the XDP program: asserts the verdict and exactly `counters`.
    fn inbound(&self, frame: &[u8], verdict: Verdict, counters: &[Counter]) {
        limiter_tests::counters::check_run(&self.limiter, frame, verdict, counters);
    }

    /// A frame leaving the node through the egress program: it goes on untouched, and
    /// exactly `counters` went up.
    fn outbound(&self, frame: &[u8], counters: &[Counter]) {
        let before = self.limiter.counters().expect("counters");
        let got = self
            .limiter
            .test_run_egress(frame)
            .expect("egress test run");
        let after = self.limiter.counters().expect("counters");
        assert_eq!(got, NEXT);
        assert_eq!(
            limiter_tests::counters::changes(&before, &after),
            limiter_tests::counters::expected(counters),
            "{:?}",
            String::from_utf8_lossy(frame)
        );
    }

    fn outcomes(&self) -> HashMap<IpAddr, CreateOutcomes> {
        self.limiter.create_outcomes().expect("outcomes")
    }

    fn of(&self, who: &str) -> (u64, u64) {
        self.outcomes()
            .get(&addr(who))
            .map_or((0, 0), |o| (o.created, o.failed))
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn glance_of(peer: &str) -> &'static str {
    match addr(peer) {
        IpAddr::V4(_) => GLANCE_V4,
        IpAddr::V6(_) => GLANCE_V6,
    }
}

/// A request from `from`'s port `port` to Glance.
fn request(from: &str, port: u16, payload: &str) -> Vec<u8> {
    let mut p = Packet::request(from, GLANCE, payload.as_bytes());
    p.dst = addr(glance_of(from));
    p.src_port = port;
    p.build()
}

/// Glance's segment to `to`'s port `port` carrying `payload`.
fn answer(to: &str, port: u16, payload: &str) -> Vec<u8> {
    let mut p = Packet::request(glance_of(to), port, payload.as_bytes());
    p.dst = addr(to);
    p.src_port = GLANCE;
    p.build()
}

const CREATED: &str = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n{}";
const BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

#[test]
fn each_answer_to_a_create_counts_as_created_or_failed_for_its_client() {
    require_kernel!();
    let rig = Rig::new();
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[CreateSucceeded]);
    assert_eq!(rig.of(CLIENT), (1, 0));
    // A body segment of that answer, and a second answer with no create pending: nothing.
    rig.outbound(&answer(CLIENT, 41_000, "{\"id\": \"x\"}"), &[]);
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[]);
    // A bad create on the same keep-alive connection.
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected],
    );
    rig.outbound(&answer(CLIENT, 41_000, BAD_REQUEST), &[CreateFailed]);
    assert_eq!(rig.of(CLIENT), (1, 1));
    // Reads are not creates: their answers count nothing.
    rig.inbound(
        &request(CLIENT, 41_001, "GET /v2/images HTTP/1.1\r\n\r\n"),
        Verdict::Pass,
        &[PassProtected],
    );
    rig.outbound(&answer(CLIENT, 41_001, "HTTP/1.1 200 OK\r\n\r\n"), &[]);
    assert_eq!(rig.of(CLIENT), (1, 1));
}

#[test]
fn interim_answers_and_pipelined_creates_are_counted_right() {
    require_kernel!();
    let rig = Rig::new();
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected],
    );
    // 100 Continue is not the answer: the final one follows.
    rig.outbound(
        &answer(CLIENT, 41_000, "HTTP/1.1 100 Continue\r\n\r\n"),
        &[],
    );
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[CreateSucceeded]);
    rig.outbound(
        &answer(
            CLIENT,
            41_000,
            "HTTP/1.0 413 Request Entity Too Large\r\n\r\n",
        ),
        &[CreateFailed],
    );
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[]);
    assert_eq!(rig.of(CLIENT), (1, 1));
}

#[test]
fn near_misses_and_other_traffic_count_nothing() {
    require_kernel!();
    let rig = Rig::new();
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    for near_miss in [
        "HTTP/2 201 Created\r\n\r\n",
        "HTTP/1.1 20 Created\r\n\r\n",
        "HTTP/1.1  201 Created\r\n\r\n",
        "HTTP/1.1 2x1 Created\r\n\r\n",
        "http/1.1 201 Created\r\n\r\n",
        "HTTP/1.1",
        "",
    ] {
        rig.outbound(&answer(CLIENT, 41_000, near_miss), &[]);
    }
    // Another connection of the same client, another port of Glance, another client.
    rig.outbound(&answer(CLIENT, 41_001, CREATED), &[]);
    let mut other_port = Packet::request(GLANCE_V4, 41_000, CREATED.as_bytes());
    other_port.dst = addr(CLIENT);
    other_port.src_port = 8080;
    rig.outbound(&other_port.build(), &[]);
    rig.outbound(&answer("203.0.113.8", 41_000, CREATED), &[]);
    // Not TCP, not IP.
    let mut udp = Packet::request(GLANCE_V4, 41_000, CREATED.as_bytes()).protocol(17);
    udp.dst = addr(CLIENT);
    rig.outbound(&udp.build(), &[]);
    rig.outbound(&[0u8; 14], &[]);
    assert_eq!(rig.of(CLIENT), (0, 0));
    // The real answer still counts.
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[CreateSucceeded]);
}

#[test]
fn ipv6_answers_are_counted_too() {
    require_kernel!();
    let rig = Rig::new();
    rig.inbound(
        &request(CLIENT_V6, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    rig.outbound(&answer(CLIENT_V6, 41_000, BAD_REQUEST), &[CreateFailed]);
    assert_eq!(rig.of(CLIENT_V6), (0, 1));
}

#[test]
fn a_proxied_create_is_counted_for_the_client_the_proxy_named() {
    require_kernel!();
    let rig = Rig::new();
    let via = |client: &str| {
        request(
            PROXY,
            42_000,
            &format!(
                "POST /v2/images HTTP/1.1\r\nHost: glance\r\nX-Forwarded-For: {client}\r\n\r\n{{}}"
            ),
        )
    };
    rig.inbound(
        &via(CLIENT),
        Verdict::Pass,
        &[PassProtected, SourceNew, SourceNew, ProxiedRequest],
    );
    rig.outbound(&answer(PROXY, 42_000, CREATED), &[CreateSucceeded]);
    // The proxy reuses the connection for another client's create.
    rig.inbound(
        &via("203.0.113.8"),
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxiedRequest],
    );
    rig.outbound(&answer(PROXY, 42_000, BAD_REQUEST), &[CreateFailed]);
    assert_eq!(rig.of(CLIENT), (1, 0));
    assert_eq!(rig.of("203.0.113.8"), (0, 1));
    assert_eq!(rig.of(PROXY), (0, 0), "never the proxy's");
}

#[test]
fn creates_refused_over_budget_and_creates_without_counting_get_no_answer_counted() {
    require_kernel!();
    let mut rig = Rig::new();
    let hz = rig.limiter.clock().expect("clock").hz;
    rig.limiter
        .set_reject_response(hz)
        .expect("reject response");
    let budget = ImageCreateBudget::of_policy(Some(1), true, true).unwrap();
    rig.limiter
        .set_image_create_budget(Some(budget.kernel_config(hz)))
        .expect("budget");
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    rig.inbound(
        &request(CLIENT, 41_000, CREATE),
        Verdict::Tx,
        &[RejectOverBudget],
    );
    // Only the create Glance got is awaiting an answer.
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[CreateSucceeded]);
    rig.outbound(&answer(CLIENT, 41_000, CREATED), &[]);
    let outcome = rig.outcomes()[&addr(CLIENT)];
    assert_eq!(
        (outcome.created, outcome.failed, outcome.over_budget),
        (1, 0, 1)
    );

    // With counting off, creates are not recorded, so answers find nothing.
    rig.limiter
        .set_response_counting(false)
        .expect("counting off");
    rig.inbound(
        &request("203.0.113.9", 41_000, CREATE),
        Verdict::Pass,
        &[PassProtected, SourceNew],
    );
    rig.outbound(&answer("203.0.113.9", 41_000, CREATED), &[]);
}
