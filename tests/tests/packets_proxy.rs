//! Packet-level tests of attribution through trusted proxies (issue 10), through
//! BPF_PROG_TEST_RUN: every header form and its near misses, the PROXY protocol v1 and v2,
//! path prefixes, and the rejection of a banned client's request in Glance's place. Each frame
//! goes through [`Rig::check`], which asserts the verdict and the change of every global
//! counter, so a frame cannot do something its test does not mention.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use ipnet::IpNet;
use limiter_common::{relay_slot, Counter, SourceAddr, SourceStats};
use limiter_tests::{
    frames::{self, Packet, ACK, FIN, PSH, SYN},
    require_kernel,
};
use limiter_user::{
    loader::{Limiter, LoadOptions, Verdict},
    net,
    proxy::ClientHeader,
    rules::{compile, Action, KernelRule, Scope},
};

use Counter::*;

const GLANCE: u16 = 9292;
const GLANCE_V4: &str = "198.51.100.1";
const GLANCE_V6: &str = "2001:db8:51::1";
const PROXY_V4: &str = "198.51.100.2";
const PROXY_V6: &str = "2001:db8:51::2";
/// A second trusted proxy, in front of the first.
const OUTER_PROXY: &str = "198.51.100.3";
const CLIENT: &str = "203.0.113.7";
const CLIENT_V6: &str = "2001:db8:1::7";
const CREATE: &str =
    "POST /v2/images HTTP/1.1\r\nHost: glance\r\nContent-Type: application/json\r\n";

/// A proxy's first request for a client: both get a row, and the request is the client's.
const FIRST_THROUGH_PROXY: &[Counter] = &[PassProtected, SourceNew, SourceNew, ProxiedRequest];

struct Rig {
    limiter: Limiter,
}

impl Rig {
    fn new(header: ClientHeader) -> Self {
        Self::with_prefixes(header, &[])
    }

    fn with_prefixes(header: ClientHeader, prefixes: &[&str]) -> Self {
        let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the XDP program");
        limiter.set_protected_ports(&[GLANCE]).expect("ports");
        let proxies: Vec<IpNet> = [PROXY_V4, PROXY_V6, OUTER_PROXY]
            .iter()
            .map(|p| IpNet::from(addr(p)))
            .collect();
        limiter.set_trusted_proxies(&proxies).expect("proxies");
        limiter.set_client_header(header).expect("header");
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        limiter.set_path_prefixes(&prefixes).expect("prefixes");
        let hz = limiter.clock().expect("clock").hz;
        limiter.set_reject_response(hz).expect("reject response");
        Rig { limiter }
    }

    fn block(&mut self, who: &str, ttl: Duration) {
        let clock = self.limiter.clock().expect("clock");
        let rule = KernelRule {
            net: IpNet::from(addr(who)),
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            expires: Some(clock.wall + ttl),
        };
        let compiled = compile(&[rule], &clock).expect("compile");
        self.limiter.apply_rules(&compiled).expect("apply");
    }

    fn rows(&self) -> HashMap<IpAddr, SourceStats> {
        self.limiter
            .sources()
            .expect("sources")
            .into_iter()
            .map(|e| (e.addr, e.stats))
            .collect()
    }

    fn row(&self, who: &str) -> Option<SourceStats> {
        self.rows().get(&addr(who)).copied()
    }

    /// The proxy that carried `client`'s latest request, as the kernel's CLIENT_VIA has it.
    fn via(&self, client: &str) -> Option<IpAddr> {
        self.limiter
            .client_via()
            .expect("client via")
            .get(&addr(client))
            .copied()
    }

    /// `(proxied, unattributed)` as the kernel's PROXY_RELAYS has them for `proxy`.
    fn relays(&self, proxy: &str) -> (u64, u64) {
        self.limiter
            .proxy_relays()
            .expect("proxy relays")
            .get(&addr(proxy))
            .map_or((0, 0), |r| (r.proxied, r.unattributed))
    }

    /// Trusts exactly `proxies` from now on.
    fn trust(&mut self, proxies: &[&str]) {
        let proxies: Vec<IpNet> = proxies.iter().map(|p| IpNet::from(addr(p))).collect();
        self.limiter.set_trusted_proxies(&proxies).expect("proxies");
    }

    /// Runs `frame`: asserts the verdict and that exactly `counters` went up (one each, a
    /// counter listed twice by two); returns the frame as the program left it.
    fn check(&self, frame: &[u8], verdict: Verdict, counters: &[Counter]) -> Vec<u8> {
        limiter_tests::counters::check_run(&self.limiter, frame, verdict, counters)
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A segment from `from` (a proxy or a client) to Glance carrying `payload`.
fn segment(from: &str, payload: &str) -> Packet {
    let mut p = Packet::request(from, GLANCE, payload.as_bytes());
    p.dst = match addr(from) {
        IpAddr::V4(_) => addr(GLANCE_V4),
        IpAddr::V6(_) => addr(GLANCE_V6),
    };
    p
}

/// An image create from `proxy` whose headers end with `last_headers` (each with its CRLF).
fn create_via(proxy: &str, last_headers: &str) -> Vec<u8> {
    segment(
        proxy,
        &format!("{CREATE}{last_headers}\r\n{{\"name\":\"x\"}}"),
    )
    .build()
}

/// What a proxied client's row must show after `n` image creates through `proxy`.
fn assert_client(rig: &Rig, client: &str, proxy: &str, creates: u32) {
    let row = rig
        .row(client)
        .unwrap_or_else(|| panic!("no row for client {client}"));
    assert_eq!(row.image_create, creates, "{client} image creates");
    assert_eq!(
        rig.via(client),
        Some(addr(proxy)),
        "{client} came through {proxy}"
    );
}

#[test]
fn x_forwarded_for_names_the_client_and_never_the_proxy() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let frame = create_via(PROXY_V4, &format!("X-Forwarded-For: {CLIENT}\r\n"));
    rig.check(&frame, Verdict::Pass, FIRST_THROUGH_PROXY);
    assert_client(&rig, CLIENT, PROXY_V4, 1);
    let proxy = rig.row(PROXY_V4).expect("proxy row");
    assert_eq!(
        (proxy.image_create, proxy.other_write, proxy.read),
        (0, 0, 0),
        "nothing a proxy relays is its own"
    );
    assert_eq!(proxy.packets, 1);
    assert_eq!(rig.relays(PROXY_V4), (1, 0));
    // Lower-case names (HAProxy 2.6 sends them so), and a second request on the same
    // connection for another client: attribution is per request.
    let frame = create_via(PROXY_V4, "x-forwarded-for: 203.0.113.8\r\n");
    rig.check(
        &frame,
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxiedRequest],
    );
    assert_client(&rig, "203.0.113.8", PROXY_V4, 1);
    assert_client(&rig, CLIENT, PROXY_V4, 1);
}

#[test]
fn forged_entries_left_of_the_proxys_are_ignored() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    // The client's own line, then HAProxy's (what HAProxy 2.6 sends).
    let frame = create_via(
        PROXY_V4,
        &format!("X-Forwarded-For: 192.0.2.1\r\nx-forwarded-for: {CLIENT}\r\n"),
    );
    rig.check(&frame, Verdict::Pass, FIRST_THROUGH_PROXY);
    assert_client(&rig, CLIENT, PROXY_V4, 1);
    assert!(
        rig.row("192.0.2.1").is_none(),
        "the forged address counts nothing"
    );
    // One line with a forged entry, the client, and a trusted proxy that appended itself.
    let frame = create_via(
        PROXY_V4,
        &format!("X-Forwarded-For: 192.0.2.1, {CLIENT}, {OUTER_PROXY}\r\n"),
    );
    rig.check(&frame, Verdict::Pass, &[PassProtected, ProxiedRequest]);
    assert_client(&rig, CLIENT, PROXY_V4, 2);
}

#[test]
fn a_direct_clients_own_header_is_ignored() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let frame = create_via(CLIENT, "X-Forwarded-For: 192.0.2.1\r\n");
    rig.check(&frame, Verdict::Pass, &[PassProtected, SourceNew]);
    let row = rig.row(CLIENT).expect("counted as itself");
    assert_eq!((row.image_create, rig.via(CLIENT)), (1, None));
    assert!(rig.row("192.0.2.1").is_none());
}

#[test]
fn ipv6_clients_through_ipv4_proxies_and_the_reverse() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let frame = create_via(PROXY_V4, &format!("X-Forwarded-For: {CLIENT_V6}\r\n"));
    rig.check(&frame, Verdict::Pass, FIRST_THROUGH_PROXY);
    assert_client(&rig, CLIENT_V6, PROXY_V4, 1);
    let frame = create_via(PROXY_V6, &format!("X-Forwarded-For: {CLIENT}\r\n"));
    rig.check(&frame, Verdict::Pass, FIRST_THROUGH_PROXY);
    assert_client(&rig, CLIENT, PROXY_V6, 1);
    // Bracketed, with a port, and the IPv4-mapped form of an IPv4 client.
    for value in [
        "[2001:db8:1::7]",
        "[2001:db8:1::7]:4711",
        "2001:DB8:1:0:0:0:0:7",
    ] {
        let frame = create_via(PROXY_V4, &format!("X-Forwarded-For: {value}\r\n"));
        rig.check(&frame, Verdict::Pass, &[PassProtected, ProxiedRequest]);
    }
    assert_client(&rig, CLIENT_V6, PROXY_V4, 4);
    // (Through the proxy it came through before: a client that moves to another proxy is
    // shown behind it from its next jiffy, see below.)
    let frame = create_via(PROXY_V6, "X-Forwarded-For: ::ffff:203.0.113.7\r\n");
    rig.check(&frame, Verdict::Pass, &[PassProtected, ProxiedRequest]);
    assert_client(&rig, CLIENT, PROXY_V6, 2);
}

#[test]
fn forwarded_for_in_every_form() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::Forwarded);
    let frame = create_via(
        PROXY_V4,
        &format!("Forwarded: for={CLIENT};proto=https\r\n"),
    );
    rig.check(&frame, Verdict::Pass, FIRST_THROUGH_PROXY);
    for value in [
        format!("for=192.0.2.1, For=\"{CLIENT}:47011\";by={PROXY_V4}"),
        format!("proto=http;for={CLIENT}"),
        format!("for=\"[2001:db8::1]\", for={CLIENT}, for={OUTER_PROXY}"),
    ] {
        let frame = create_via(PROXY_V4, &format!("forwarded: {value}\r\n"));
        rig.check(&frame, Verdict::Pass, &[PassProtected, ProxiedRequest]);
    }
    assert_client(&rig, CLIENT, PROXY_V4, 4);
    let frame = create_via(
        PROXY_V4,
        &format!("Forwarded: for=\"[{CLIENT_V6}]:4711\"\r\n"),
    );
    rig.check(
        &frame,
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxiedRequest],
    );
    assert_client(&rig, CLIENT_V6, PROXY_V4, 1);
    // With Forwarded configured, an X-Forwarded-For line (which a client could forge) is
    // not read.
    let frame = create_via(PROXY_V4, &format!("X-Forwarded-For: {CLIENT}\r\n"));
    rig.check(&frame, Verdict::Pass, &[PassProtected, UnattributedRequest]);
}

#[test]
fn near_misses_are_unattributed_never_the_proxy() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let unattributed = [
        // No header.
        String::new(),
        // Names that are not it.
        format!("X-Forwarded-Formerly: {CLIENT}\r\n"),
        format!("X-Forwarded-Fo: {CLIENT}\r\n"),
        format!("X-Forwarded-For {CLIENT}\r\n"),
        // Values that are not an address.
        "X-Forwarded-For: unknown\r\n".to_string(),
        "X-Forwarded-For: 203.0.113\r\n".to_string(),
        "X-Forwarded-For: 203.0.113.07\r\n".to_string(),
        "X-Forwarded-For: 2001:db8::1::2\r\n".to_string(),
        "X-Forwarded-For: \r\n".to_string(),
        // Only trusted proxies.
        format!("X-Forwarded-For: {OUTER_PROXY}\r\n"),
    ];
    for (i, headers) in unattributed.iter().enumerate() {
        let frame = create_via(PROXY_V4, headers);
        let mut counters = vec![PassProtected, UnattributedRequest];
        if i == 0 {
            counters.push(SourceNew);
        }
        rig.check(&frame, Verdict::Pass, &counters);
    }
    // In the body, after the end of the headers.
    let frame = segment(
        PROXY_V4,
        &format!("{CREATE}\r\nX-Forwarded-For: {CLIENT}\r\n"),
    )
    .build();
    rig.check(&frame, Verdict::Pass, &[PassProtected, UnattributedRequest]);
    // Headers that continue in the next segment (no end of the header block here).
    let frame = segment(PROXY_V4, &format!("{CREATE}X-Forwarded-For: {CLIENT}\r\n")).build();
    rig.check(&frame, Verdict::Pass, &[PassProtected, UnattributedRequest]);
    let proxy = rig.row(PROXY_V4).expect("proxy row");
    assert_eq!(rig.relays(PROXY_V4), (0, 12));
    assert_eq!(proxy.image_create, 0, "never counted as the proxy's own");
    assert!(rig.row(CLIENT).is_none());
    // Not a request at all: nothing to attribute.
    let frame = segment(PROXY_V4, "\x16\x03\x01 garbage that is no request line").build();
    rig.check(&frame, Verdict::Pass, &[PassProtected]);
}

#[test]
fn the_client_header_after_fifty_others_and_a_kilobyte() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let mut headers: String = (0..50)
        .map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(10)))
        .collect();
    headers.push_str(&format!("X-Forwarded-For: {CLIENT}\r\n"));
    assert!(headers.len() > 1024);
    rig.check(
        &create_via(PROXY_V4, &headers),
        Verdict::Pass,
        FIRST_THROUGH_PROXY,
    );
    assert_client(&rig, CLIENT, PROXY_V4, 1);
    // Past what the program reads (2 KB from the request line): unattributed.
    let far: String = (0..60)
        .map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(40)))
        .collect();
    rig.check(
        &create_via(PROXY_V4, &format!("{far}X-Forwarded-For: {CLIENT}\r\n")),
        Verdict::Pass,
        &[PassProtected, UnattributedRequest],
    );
}

/// The header scan reads 32-byte chunks inline, then hands what is left to a word-by-word
/// loop: the client's line and the end of the block are found wherever they fall (every
/// byte of a chunk, either scan, a segment ending at the empty line or with a body), and an
/// earlier forged line never wins.
#[test]
fn the_client_line_is_found_at_every_offset_and_in_either_scan() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let forged = "192.0.2.1";
    let mut sent = 0;
    // 20 fillers: under the inline scan's 1,280 bytes; 34: past it, into the loop.
    for fillers in [20usize, 34] {
        for pad in 0..40usize {
            for body in ["{\"name\":\"x\"}", ""] {
                let mut headers = format!(
                    "X-Forwarded-For: {forged}\r\nX-Pad: {}\r\n",
                    "p".repeat(pad)
                );
                headers.extend(
                    (0..fillers).map(|i| format!("X-Filler-{i:02}: {}\r\n", "v".repeat(20))),
                );
                headers.push_str(&format!("X-Forwarded-For: {CLIENT}\r\n"));
                let frame = segment(PROXY_V4, &format!("{CREATE}{headers}\r\n{body}")).build();
                assert_eq!(
                    rig.limiter.test_run(&frame).expect("test run"),
                    Verdict::Pass,
                    "{fillers} fillers, pad {pad}, body {body:?}"
                );
                sent += 1;
                let row = rig.row(CLIENT).expect("the client has a row");
                assert_eq!(
                    row.image_create, sent,
                    "{fillers} fillers, pad {pad}, body {body:?}: the client counted"
                );
            }
        }
    }
    assert!(
        rig.row(forged).is_none(),
        "the forged address is never counted"
    );
}

/// A client value that runs over several of the inline scan's chunks ends at its own line
/// end, wherever that falls, and the lines after it are not read into it.
#[test]
fn a_long_client_value_ends_at_its_own_line_end_wherever_it_falls() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    // Forged entries a client wrote, then the one its proxy appended: about 100 bytes.
    let forged: Vec<String> = (1..=9).map(|i| format!("192.0.2.{i}")).collect();
    let value = format!("{}, {CLIENT}", forged.join(", "));
    assert!(value.len() > 3 * 32, "the value spans chunks");
    let mut sent = 0;
    for pad in 0..40usize {
        let mut headers = format!("X-Pad: {}\r\nX-Forwarded-For: {value}\r\n", "p".repeat(pad));
        headers.extend((0..6).map(|i| format!("X-Filler-{i:02}: {}\r\n", "v".repeat(20))));
        let frame = segment(
            PROXY_V4,
            &format!("{CREATE}{headers}\r\n{{\"name\":\"x\"}}"),
        )
        .build();
        assert_eq!(
            rig.limiter.test_run(&frame).expect("test run"),
            Verdict::Pass,
            "pad {pad}"
        );
        sent += 1;
        let row = rig
            .row(CLIENT)
            .unwrap_or_else(|| panic!("pad {pad}: the client has no row"));
        assert_eq!(row.image_create, sent, "pad {pad}: the client counted");
    }
    for entry in &forged {
        assert!(rig.row(entry).is_none(), "{entry} is never counted");
    }
}

/// A PROXY v2 header for a TCP connection from `client`.
fn proxy_v2(command: u8, client: IpAddr) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.push(0x20 | command);
    match client {
        IpAddr::V4(c) => {
            b.push(0x11);
            b.extend_from_slice(&12u16.to_be_bytes());
            b.extend_from_slice(&c.octets());
            b.extend_from_slice(&Ipv4Addr::new(198, 51, 100, 1).octets());
        }
        IpAddr::V6(c) => {
            b.push(0x21);
            b.extend_from_slice(&36u16.to_be_bytes());
            b.extend_from_slice(&c.octets());
            b.extend_from_slice(&"2001:db8:51::1".parse::<Ipv6Addr>().unwrap().octets());
        }
    }
    b.extend_from_slice(&40000u16.to_be_bytes());
    b.extend_from_slice(&GLANCE.to_be_bytes());
    b
}

fn raw_segment(from: &str, src_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::request(from, GLANCE, payload);
    p.dst = addr(GLANCE_V4);
    p.src_port = src_port;
    p.build()
}

#[test]
fn proxy_protocol_v2_names_the_client_of_the_whole_connection() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let request = format!("{CREATE}\r\n");
    // Header and first request in one segment; a forged X-Forwarded-For is not read.
    let mut first = proxy_v2(1, addr(CLIENT));
    first.extend_from_slice(format!("{CREATE}X-Forwarded-For: 192.0.2.1\r\n\r\n").as_bytes());
    rig.check(
        &raw_segment(PROXY_V4, 41000, &first),
        Verdict::Pass,
        &[
            PassProtected,
            SourceNew,
            SourceNew,
            ProxyHeader,
            ProxiedRequest,
        ],
    );
    // Later requests on the connection, with no header of their own.
    rig.check(
        &raw_segment(PROXY_V4, 41000, request.as_bytes()),
        Verdict::Pass,
        &[PassProtected, ProxiedRequest],
    );
    assert_client(&rig, CLIENT, PROXY_V4, 2);
    assert!(rig.row("192.0.2.1").is_none());
    // Header alone in its segment, then the request; an IPv6 client.
    rig.check(
        &raw_segment(PROXY_V4, 41001, &proxy_v2(1, addr(CLIENT_V6))),
        Verdict::Pass,
        &[PassProtected, ProxyHeader],
    );
    rig.check(
        &raw_segment(PROXY_V4, 41001, request.as_bytes()),
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxiedRequest],
    );
    assert_client(&rig, CLIENT_V6, PROXY_V4, 1);
    // LOCAL (HAProxy's health checks): unattributed.
    let mut local = proxy_v2(0, addr(PROXY_V4));
    local.extend_from_slice(b"GET /healthcheck HTTP/1.1\r\n\r\n");
    rig.check(
        &raw_segment(PROXY_V4, 41002, &local),
        Verdict::Pass,
        &[PassProtected, ProxyHeader, UnattributedRequest],
    );
    // Truncated: the length runs past the segment.
    let mut truncated = proxy_v2(1, addr(CLIENT));
    truncated[15] = 200;
    truncated.extend_from_slice(request.as_bytes());
    rig.check(
        &raw_segment(PROXY_V4, 41003, &truncated),
        Verdict::Pass,
        &[PassProtected, ProxyHeader],
    );
    rig.check(
        &raw_segment(PROXY_V4, 41003, request.as_bytes()),
        Verdict::Pass,
        &[PassProtected, UnattributedRequest],
    );
    // A new connection from a reused port starts afresh.
    let mut syn = Packet::syn(PROXY_V4, GLANCE);
    syn.dst = addr(GLANCE_V4);
    syn.src_port = 41000;
    rig.check(&syn.build(), Verdict::Pass, &[PassProtected]);
    rig.check(
        &raw_segment(PROXY_V4, 41000, request.as_bytes()),
        Verdict::Pass,
        &[PassProtected, UnattributedRequest],
    );
}

#[test]
fn proxy_protocol_v1_lines() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let request = format!("{CREATE}\r\n");
    let line = format!("PROXY TCP4 {CLIENT} 198.51.100.1 56324 9292\r\n{request}");
    rig.check(
        &raw_segment(PROXY_V4, 42000, line.as_bytes()),
        Verdict::Pass,
        &[
            PassProtected,
            SourceNew,
            SourceNew,
            ProxyHeader,
            ProxiedRequest,
        ],
    );
    let line = format!("PROXY TCP6 {CLIENT_V6} 2001:db8:51::1 56324 9292\r\n{request}");
    rig.check(
        &raw_segment(PROXY_V4, 42001, line.as_bytes()),
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxyHeader, ProxiedRequest],
    );
    assert_client(&rig, CLIENT, PROXY_V4, 1);
    assert_client(&rig, CLIENT_V6, PROXY_V4, 1);
    for (port, line) in [
        (42002, format!("PROXY UNKNOWN\r\n{request}")),
        (
            42003,
            format!("PROXY TCP4 203.0.113.999 198.51.100.1 1 2\r\n{request}"),
        ),
        // No line end within 107 bytes.
        (42004, format!("PROXY TCP4 {CLIENT} {}", "x".repeat(120))),
    ] {
        let counters: &[Counter] = if port == 42004 {
            &[PassProtected, ProxyHeader]
        } else {
            &[PassProtected, ProxyHeader, UnattributedRequest]
        };
        rig.check(
            &raw_segment(PROXY_V4, port, line.as_bytes()),
            Verdict::Pass,
            counters,
        );
    }
}

#[test]
fn a_banned_clients_request_is_answered_429_and_glances_socket_reset() {
    require_kernel!();
    let mut rig = Rig::new(ClientHeader::XForwardedFor);
    rig.block(CLIENT, Duration::from_secs(600));
    let mut packet = segment(
        PROXY_V4,
        &format!("{CREATE}X-Forwarded-For: {CLIENT}\r\n\r\n{{}}"),
    );
    packet.src_port = 43000;
    packet.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
    let request = packet.build();
    let reply = rig.check(&request, Verdict::Tx, &[SourceNew, RejectProxied]);
    let tcp_at = 14 + 20;
    // Addresses and ports swapped; our sequence is what the proxy acknowledged, and all of
    // the request is acknowledged.
    assert_eq!(&reply[14 + 12..14 + 16], &request[14 + 16..14 + 20]);
    assert_eq!(&reply[14 + 16..14 + 20], &request[14 + 12..14 + 16]);
    assert_eq!(&reply[tcp_at..tcp_at + 2], &request[tcp_at + 2..tcp_at + 4]);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let payload_len = (request.len() - tcp_at - 32) as u32;
    assert_eq!(be32(&reply, tcp_at + 4), be32(&request, tcp_at + 8));
    assert_eq!(
        be32(&reply, tcp_at + 8),
        be32(&request, tcp_at + 4) + payload_len
    );
    assert_eq!(reply[tcp_at + 13], FIN | PSH | ACK);
    // Timestamps echoed back.
    assert_eq!(&reply[tcp_at + 24..tcp_at + 28], &[0, 0, 0, 9]);
    assert_eq!(&reply[tcp_at + 28..tcp_at + 32], &[0, 0, 0, 7]);
    let text = String::from_utf8_lossy(&reply[tcp_at + 32..]).to_string();
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    let retry: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After:"))
        .expect("Retry-After")
        .trim()
        .parse()
        .expect("seconds");
    assert!((590..=600).contains(&retry), "Retry-After {retry}");
    assert!(text.contains("Connection: close\r\n"));
    frames::assert_checksums(&reply);
    assert!(
        rig.row(CLIENT).is_none(),
        "a banned client's request counts nothing"
    );
    // The proxy's next segment on that connection becomes a reset for Glance's socket, at
    // the sequence number it expects.
    let mut next = Packet::tcp(PROXY_V4, GLANCE).flags(ACK | FIN);
    next.dst = addr(GLANCE_V4);
    next.src_port = 43000;
    let reset = rig.check(&next.build(), Verdict::Pass, &[ResetProxied]);
    assert_eq!(reset.len(), 14 + 20 + 20);
    assert_eq!(reset[tcp_at + 13], 0x04, "RST");
    assert_eq!(be32(&reset, tcp_at + 4), be32(&request, tcp_at + 4));
    frames::assert_checksums(&reset);
    // Then the connection is forgotten: what follows passes untouched.
    rig.check(&next.build(), Verdict::Pass, &[PassProtected]);
    // Another client on the same proxy is served.
    let other = create_via(PROXY_V4, "X-Forwarded-For: 203.0.113.8\r\n");
    rig.check(
        &other,
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxiedRequest],
    );
}

/// On a PROXY-protocol connection the main program hands a known client's request straight
/// to the client stage; a connection refused so must still end in a reset, also when the
/// proxy's next segment is the request again (a retransmission, or `retry-on`), and a later
/// connection from the same port starts afresh.
#[test]
fn a_refused_request_on_a_proxy_protocol_connection_resets_it_whatever_comes_next() {
    require_kernel!();
    let mut rig = Rig::new(ClientHeader::XForwardedFor);
    let request = format!("{CREATE}\r\n");
    rig.check(
        &raw_segment(PROXY_V4, 42000, &proxy_v2(1, addr(CLIENT))),
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxyHeader],
    );
    rig.check(
        &raw_segment(PROXY_V4, 42000, request.as_bytes()),
        Verdict::Pass,
        &[SourceNew, PassProtected, ProxiedRequest],
    );
    // The rest of the request (its body) passes as the proxy's, counting nothing for the
    // client.
    rig.check(
        &raw_segment(
            PROXY_V4,
            42000,
            br#"{"name": "cirros", "disk_format": "qcow2"}"#,
        ),
        Verdict::Pass,
        &[PassProtected],
    );
    assert_client(&rig, CLIENT, PROXY_V4, 1);
    rig.block(CLIENT, Duration::from_secs(600));
    let refused = rig.check(
        &raw_segment(PROXY_V4, 42000, request.as_bytes()),
        Verdict::Tx,
        &[RejectProxied],
    );
    let tcp_at = 14 + 20;
    assert!(String::from_utf8_lossy(&refused[tcp_at + 20..]).starts_with("HTTP/1.1 429 "));
    let reset = rig.check(
        &raw_segment(PROXY_V4, 42000, request.as_bytes()),
        Verdict::Pass,
        &[ResetProxied],
    );
    assert_eq!(reset[tcp_at + 13], 0x04, "RST");
    // The connection is forgotten: its port's next connection names its own client.
    let mut syn = Packet::syn(PROXY_V4, GLANCE);
    syn.dst = addr(GLANCE_V4);
    syn.src_port = 42000;
    rig.check(&syn.build(), Verdict::Pass, &[PassProtected]);
    let mut first = proxy_v2(1, addr(CLIENT_V6));
    first.extend_from_slice(request.as_bytes());
    rig.check(
        &raw_segment(PROXY_V4, 42000, &first),
        Verdict::Pass,
        &[PassProtected, SourceNew, ProxyHeader, ProxiedRequest],
    );
    assert_client(&rig, CLIENT_V6, PROXY_V4, 1);
}

/// A CPU counts a proxy's relays in the per-CPU slot its address selects; proxies whose slot
/// another proxy already holds are counted in the shared table. Whichever holds them, every
/// proxy's figures are exact.
#[test]
fn relays_are_exact_for_proxies_that_share_a_per_cpu_slot() {
    require_kernel!();
    let mut rig = Rig::new(ClientHeader::XForwardedFor);
    let slot = |a: &str| relay_slot(&SourceAddr::from_octets(net::addr_to_key(addr(a))));
    let candidates: Vec<String> = (10..=250).map(|i| format!("198.51.100.{i}")).collect();
    let sharing: Vec<&str> = candidates
        .iter()
        .map(String::as_str)
        .filter(|a| slot(a) == slot(PROXY_V4))
        .take(2)
        .collect();
    let apart = candidates
        .iter()
        .map(String::as_str)
        .find(|a| slot(a) != slot(PROXY_V4))
        .expect("an address in another slot");
    assert_eq!(
        sharing.len(),
        2,
        "two addresses sharing the first proxy's slot"
    );
    // On each CPU the test runs on, the first of these counted there takes the slot and the
    // others sharing it go to the shared table.
    let proxies = [PROXY_V4, sharing[0], apart, sharing[1]];
    rig.trust(&proxies);
    for round in 0..3 {
        for (i, proxy) in proxies.iter().enumerate() {
            for _ in 0..=i {
                let frame = create_via(proxy, &format!("X-Forwarded-For: 203.0.113.{round}\r\n"));
                assert_eq!(rig.limiter.test_run(&frame).unwrap(), Verdict::Pass);
            }
            let unattributed = create_via(proxy, "");
            assert_eq!(rig.limiter.test_run(&unattributed).unwrap(), Verdict::Pass);
        }
    }
    for (i, proxy) in proxies.iter().enumerate() {
        assert_eq!(
            rig.relays(proxy),
            (3 * (i as u64 + 1), 3),
            "{proxy}: (proxied, unattributed)"
        );
    }
}

#[test]
fn a_banned_ipv6_client_through_an_ipv6_proxy_is_answered_too() {
    require_kernel!();
    let mut rig = Rig::new(ClientHeader::XForwardedFor);
    rig.block(CLIENT_V6, Duration::from_secs(60));
    let request = create_via(PROXY_V6, &format!("X-Forwarded-For: {CLIENT_V6}\r\n"));
    let reply = rig.check(&request, Verdict::Tx, &[SourceNew, RejectProxied]);
    assert_eq!(&reply[14 + 8..14 + 24], &request[14 + 24..14 + 40]);
    let text = String::from_utf8_lossy(&reply[14 + 40 + 20..]).to_string();
    assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
    frames::assert_checksums(&reply);
}

#[test]
fn path_prefixes_make_prefixed_creates_image_creates() {
    require_kernel!();
    let rig = Rig::with_prefixes(ClientHeader::XForwardedFor, &["/image", "/glance/api"]);
    for (i, path) in [
        "/image/v2/images",
        "/glance/api/v1/images/",
        "/v2/images?x=1",
    ]
    .iter()
    .enumerate()
    {
        let frame = segment(CLIENT, &format!("POST {path} HTTP/1.1\r\n\r\n")).build();
        let counters: &[Counter] = if i == 0 {
            &[PassProtected, SourceNew]
        } else {
            &[PassProtected]
        };
        rig.check(&frame, Verdict::Pass, counters);
    }
    for path in ["/imagex/v2/images", "/image/v2/imagesx", "/image/v3/images"] {
        let frame = segment(CLIENT, &format!("POST {path} HTTP/1.1\r\n\r\n")).build();
        rig.check(&frame, Verdict::Pass, &[PassProtected]);
    }
    let row = rig.row(CLIENT).expect("row");
    assert_eq!((row.image_create, row.other_write), (3, 3));
    let plain = Rig::new(ClientHeader::XForwardedFor);
    let frame = segment(CLIENT, "POST /image/v2/images HTTP/1.1\r\n\r\n").build();
    plain.check(&frame, Verdict::Pass, &[PassProtected, SourceNew]);
    assert_eq!(plain.row(CLIENT).expect("row").other_write, 1);
}

/// Checks the IPv4 header checksum (if IPv4) and the TCP checksum of an untagged frame.
#[test]
fn untrusted_sources_go_nowhere_near_the_proxy_path() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let mut syn = Packet::syn(CLIENT, GLANCE);
    syn.dst = addr(GLANCE_V4);
    rig.check(&syn.build(), Verdict::Pass, &[PassProtected, SourceNew]);
    let frame = segment(CLIENT, &format!("{CREATE}\r\n")).build();
    rig.check(&frame, Verdict::Pass, &[PassProtected]);
    let row = rig.row(CLIENT).expect("row");
    assert_eq!((row.syns, row.image_create, row.flags), (1, 1, 0));
    let _ = SYN;
}

#[test]
fn a_frame_that_cannot_be_rewritten_is_dropped_not_passed() {
    require_kernel!();
    let mut rig = Rig::new(ClientHeader::XForwardedFor);
    rig.block(CLIENT, Duration::from_secs(60));
    // IPv4 options (a proxy sends none): the response is not built; the request still must
    // not reach Glance.
    let frame = segment(
        PROXY_V4,
        &format!("{CREATE}X-Forwarded-For: {CLIENT}\r\n\r\n"),
    )
    .ipv4_options(&[1, 1, 1, 1])
    .build();
    rig.check(&frame, Verdict::Drop, &[SourceNew, DropProxied]);
}

#[test]
fn the_longest_matching_prefix_decides() {
    require_kernel!();
    // `/image` is a prefix of `/image-api`: the request under the longer one is still seen.
    let rig = Rig::with_prefixes(ClientHeader::XForwardedFor, &["/image", "/image-api"]);
    for (i, path) in ["/image-api/v2/images", "/image/v2/images"]
        .iter()
        .enumerate()
    {
        let frame = segment(CLIENT, &format!("POST {path} HTTP/1.1\r\n\r\n")).build();
        let counters: &[Counter] = if i == 0 {
            &[PassProtected, SourceNew]
        } else {
            &[PassProtected]
        };
        rig.check(&frame, Verdict::Pass, counters);
    }
    let row = rig.row(CLIENT).expect("row");
    assert_eq!((row.image_create, row.other_write), (2, 0));
}

/// A proxy under a block that an allow rule exempts it from: its segments pass as allowed,
/// also where the proxy or client program passes them (the main program hands the proxy's
/// verdict over), and its clients are attributed as any proxy's.
#[test]
fn a_proxy_exempted_from_a_block_passes_as_allowed_in_every_stage() {
    require_kernel!();
    let mut rig = Rig::new(ClientHeader::XForwardedFor);
    let clock = rig.limiter.clock().expect("clock");
    let rule = |net: &str, action| KernelRule {
        net: net.parse().unwrap(),
        action,
        scope: Scope::ProtectedPorts,
        expires: Some(clock.wall + Duration::from_secs(600)),
    };
    let prefix = format!("{}/24", PROXY_V4);
    let proxy_net = IpNet::from(addr(PROXY_V4)).trunc().to_string();
    let rules = [
        rule(&prefix, Action::Block),
        rule(&proxy_net, Action::Allow),
    ];
    let compiled = compile(&rules, &clock).expect("compile");
    rig.limiter.apply_rules(&compiled).expect("apply");
    let frame = create_via(PROXY_V4, &format!("X-Forwarded-For: {CLIENT}\r\n"));
    rig.check(
        &frame,
        Verdict::Pass,
        &[PassAllowed, SourceNew, SourceNew, ProxiedRequest],
    );
    assert_client(&rig, CLIENT, PROXY_V4, 1);
    // No client named: the proxy program passes it, as allowed all the same.
    let frame = create_via(PROXY_V4, "X-Forwarded-Formerly: 203.0.113.9\r\n");
    rig.check(&frame, Verdict::Pass, &[PassAllowed, UnattributedRequest]);
    // A proxy the block covers and nothing exempts passes as protected: the other value.
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let frame = create_via(PROXY_V4, "X-Forwarded-Formerly: 203.0.113.9\r\n");
    rig.check(
        &frame,
        Verdict::Pass,
        &[PassProtected, SourceNew, UnattributedRequest],
    );
}

/// The proxy a client is shown behind is recorded once a jiffy (not a lookup per request):
/// a client that moves to another proxy is shown behind it from its next jiffy on.
#[test]
fn a_client_that_moves_to_another_proxy_is_shown_behind_it() {
    require_kernel!();
    let rig = Rig::new(ClientHeader::XForwardedFor);
    let through = |proxy: &str| create_via(proxy, &format!("X-Forwarded-For: {CLIENT}\r\n"));
    rig.check(&through(PROXY_V4), Verdict::Pass, FIRST_THROUGH_PROXY);
    assert_eq!(rig.via(CLIENT), Some(addr(PROXY_V4)));
    // A jiffy is at most 10 ms; the deadline is for a busy machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut requests = 0;
    while rig.via(CLIENT) != Some(addr(OUTER_PROXY)) {
        assert!(
            std::time::Instant::now() < deadline,
            "still shown behind {:?} after {requests} requests through {OUTER_PROXY}",
            rig.via(CLIENT)
        );
        rig.limiter.test_run(&through(OUTER_PROXY)).expect("run");
        requests += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_client(&rig, CLIENT, OUTER_PROXY, 1 + requests);
}
