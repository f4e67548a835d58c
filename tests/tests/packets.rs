//! Packet-level tests of the XDP program through BPF_PROG_TEST_RUN: every parse path, every
//! counter, the per-source table and the rules, one crafted frame at a time.
//!
//! Each test loads its own program (own maps), so tests run in parallel. Every frame goes
//! through [`Harness::check`], which asserts the verdict, the change of *every* global counter
//! and the change of the per-source table, so a test also fails if a frame does something it
//! does not mention.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use limiter_common::{
    Counter, SourceStats, NEVER, SOURCE_VERDICT_ALLOWED, SOURCE_VERDICT_BLOCKED,
    SOURCE_VERDICT_MASK, SOURCE_VERDICT_PASS,
};
use limiter_tests::frames::{
    ethernet_header, Ext, Packet, ACK, ETHERTYPE_ARP, FIN, PSH, SYN, TPID_8021AD, TPID_8021Q, UDP,
};
use limiter_user::{
    clock::KernelClock,
    loader::{Counters, Limiter, LoadOptions, Verdict},
    rules::{compile, Action, CompiledRules, KernelRule, Scope},
};

use Counter::*;

/// The Glance API port, the only protected port unless a test says otherwise.
const GLANCE: u16 = 9292;

// Offsets in a frame without VLAN tags, for editing fields the builder keeps valid.
const ETH_HEADER_LEN: usize = 14;
const IPV4_VERSION_IHL: usize = 14;
const IPV4_TOTAL_LENGTH: usize = 16;
const IPV4_FLAGS_FRAGMENT: usize = 20;
const IPV4_PROTOCOL: usize = 23;
const IPV6_PAYLOAD_LENGTH: usize = 18;
const IPV6_NEXT_HEADER: usize = 20;
/// The first extension header (or TCP) after a plain IPv6 header.
const IPV6_AFTER_HEADER: usize = 54;
const TCP_AFTER_IPV4: usize = 34;
const TCP_AFTER_IPV6: usize = 54;
/// Data offset (high nibble) within the TCP header.
const TCP_DATA_OFFSET: usize = 12;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// An HTTP request class, as counted in a source row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    ImageCreate,
    OtherWrite,
    Read,
}

/// What one frame must do to the per-source table.
#[derive(Clone, Copy, Debug)]
enum Row {
    /// Nothing: no row added, none changed.
    Untouched,
    /// The row of `src` (added if new) counts the frame: one packet and its bytes, plus a SYN
    /// and an HTTP request class if given.
    Counts {
        src: IpAddr,
        syn: bool,
        class: Option<Class>,
    },
}

impl Row {
    /// The row of `src` counts one packet and its bytes, nothing else.
    fn counts(src: &str) -> Self {
        Row::Counts {
            src: addr(src),
            syn: false,
            class: None,
        }
    }

    /// ... and a connection attempt.
    fn syn(self) -> Self {
        match self {
            Row::Counts { src, class, .. } => Row::Counts {
                src,
                syn: true,
                class,
            },
            Row::Untouched => panic!("syn() on Row::Untouched"),
        }
    }

    /// ... and an HTTP request of this class (`None`: explicitly no class).
    fn class(self, class: Option<Class>) -> Self {
        match self {
            Row::Counts { src, syn, .. } => Row::Counts { src, syn, class },
            Row::Untouched => panic!("class() on Row::Untouched"),
        }
    }
}

/// One loaded program with port 9292 protected, and the bookkeeping to check what each frame
/// does to it.
struct Harness {
    limiter: Limiter,
    /// Rule sets applied so far: the rules generation the program caches in the rows it
    /// touches.
    generation: u64,
}

/// A row's record of traffic: everything but the cached rule verdict (generation and
/// deadlines), which the program refreshes on any protected-port packet, dropped or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Record {
    syns: u64,
    packets: u64,
    bytes: u64,
    image_create: u64,
    other_write: u64,
    read: u64,
    first_seen: u64,
    last_seen: u64,
}

impl From<&SourceStats> for Record {
    fn from(s: &SourceStats) -> Self {
        Record {
            syns: s.syns.into(),
            packets: s.packets.into(),
            bytes: s.bytes,
            image_create: s.image_create.into(),
            other_write: s.other_write.into(),
            read: s.read.into(),
            first_seen: s.first_seen,
            last_seen: s.last_seen,
        }
    }
}

fn records(table: &HashMap<IpAddr, SourceStats>) -> HashMap<IpAddr, Record> {
    table.iter().map(|(a, s)| (*a, Record::from(s))).collect()
}

impl Harness {
    fn new() -> Self {
        Self::protecting(&[GLANCE])
    }

    fn protecting(ports: &[u16]) -> Self {
        let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the XDP program");
        limiter.set_protected_ports(ports).expect("protect ports");
        Harness {
            limiter,
            generation: 0,
        }
    }

    fn clock(&self) -> KernelClock {
        self.limiter.clock().expect("read the kernel clock")
    }

    /// Makes `rules` the whole rule set, compiled against the kernel's clock now.
    fn apply(&mut self, rules: &[KernelRule]) {
        let clock = self.clock();
        self.apply_with_clock(rules, &clock);
    }

    /// Makes `rules` the whole rule set, compiled against `clock`; returns what was written,
    /// so tests can show that an entry they expect to be ignored is really in the trie.
    fn apply_with_clock(&mut self, rules: &[KernelRule], clock: &KernelClock) -> CompiledRules {
        let compiled = compile(rules, clock).expect("rules compile");
        self.limiter.apply_rules(&compiled).expect("apply rules");
        self.generation += 1;
        compiled
    }

    fn counters(&self) -> Counters {
        self.limiter.counters().expect("read counters")
    }

    fn table(&self) -> HashMap<IpAddr, SourceStats> {
        self.limiter
            .sources()
            .expect("read the source table")
            .into_iter()
            .map(|entry| (entry.addr, entry.stats))
            .collect()
    }

    fn row(&self, src: &str) -> Option<SourceStats> {
        self.table().get(&addr(src)).copied()
    }

    /// Runs `frame` and asserts everything it changed: the counters in `counters` went up by
    /// one each (a counter listed twice by two), every other counter stayed, the verdict is
    /// the one its verdict counter names, and the source table changed as `row` says.
    fn check(&self, frame: &[u8], counters: &[Counter], row: Row) {
        let verdicts: Vec<_> = counters.iter().filter(|c| c.is_verdict()).collect();
        assert_eq!(
            verdicts.len(),
            1,
            "test bug: name exactly one verdict counter"
        );
        let expected_verdict = if is_drop(*verdicts[0]) {
            Verdict::Drop
        } else {
            Verdict::Pass
        };

        let (counters_before, table_before) = (self.counters(), self.table());
        let jiffies_before = self.clock().jiffies;
        let verdict = self.limiter.test_run(frame).expect("BPF_PROG_TEST_RUN");
        let jiffies_after = self.clock().jiffies;
        let (counters_after, table_after) = (self.counters(), self.table());

        let context = || format!("frame of {} bytes: {}", frame.len(), hex(frame));
        assert_eq!(verdict, expected_verdict, "verdict; {}", context());
        let changed = limiter_tests::counters::changes(&counters_before, &counters_after);
        let wanted = limiter_tests::counters::expected(counters);
        assert_eq!(changed, wanted, "counter changes; {}", context());

        // A row whose cached verdict changed must now hold the current rules' verdict.
        for (src, stats) in &table_after {
            let refreshed = table_before
                .get(src)
                .is_some_and(|b| b.rules_generation != stats.rules_generation);
            if refreshed {
                assert_eq!(
                    u64::from(stats.rules_generation),
                    self.generation,
                    "{src}; {}",
                    context()
                );
            }
        }

        let (mut before, mut after) = (records(&table_before), records(&table_after));
        let Row::Counts { src, syn, class } = row else {
            assert_eq!(
                after,
                before,
                "no row may be added or count anything; {}",
                context()
            );
            return;
        };
        let row_after = after
            .remove(&src)
            .unwrap_or_else(|| panic!("no row for {src}; {}", context()));
        let row_before = before.remove(&src);
        assert_eq!(after, before, "other rows must not change; {}", context());

        let one_if = |b: bool| u64::from(b);
        let old = row_before.unwrap_or_default();
        let expected = Record {
            syns: old.syns + one_if(syn),
            packets: old.packets + 1,
            bytes: old.bytes + frame.len() as u64,
            image_create: old.image_create + one_if(class == Some(Class::ImageCreate)),
            other_write: old.other_write + one_if(class == Some(Class::OtherWrite)),
            read: old.read + one_if(class == Some(Class::Read)),
            // Seen now; first seen now if new.
            first_seen: row_before.map_or(row_after.last_seen, |b| b.first_seen),
            last_seen: row_after.last_seen,
        };
        assert_eq!(row_after, expected, "row of {src}; {}", context());
        assert!(
            (jiffies_before..=jiffies_after).contains(&row_after.last_seen),
            "last_seen {} outside [{jiffies_before}, {jiffies_after}]",
            row_after.last_seen
        );
        assert_eq!(
            u64::from(table_after[&src].rules_generation),
            self.generation,
            "a counted row caches the verdict of the current rules"
        );
    }

    /// `frame` passes uncounted, for this reason.
    fn passes(&self, frame: &[u8], reason: Counter) {
        assert!(
            !is_drop(reason),
            "test bug: passes() names the drop counter {reason:?}"
        );
        self.check(frame, &[reason], Row::Untouched);
    }

    /// `frame` is dropped for this reason, and no row counts it.
    fn drops(&self, frame: &[u8], reason: Counter) {
        assert!(
            is_drop(reason),
            "test bug: drops() names the pass counter {reason:?}"
        );
        self.check(frame, &[reason], Row::Untouched);
    }
}

/// Whether `counter` is the verdict counter of a dropped frame.
fn is_drop(counter: Counter) -> bool {
    matches!(
        counter,
        DropBlocked | DropBlockedAnyPort | Counter::DropProxied
    )
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("test address {s}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn set_u8(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

/// `frame` (untagged; IPv4 without options, or IPv6 with one fragment header) with its IP
/// payload cut after `l4_bytes` bytes of the upper-layer header, lengths adjusted.
fn cut_ip_payload(frame: Vec<u8>, l4_bytes: usize) -> Vec<u8> {
    let (length_at, length, end) = if frame[12..14] == [0x08, 0x00] {
        (IPV4_TOTAL_LENGTH, 20 + l4_bytes, 14 + 20 + l4_bytes)
    } else {
        (14 + 4, 8 + l4_bytes, 14 + 40 + 8 + l4_bytes)
    };
    let mut cut = set_be16(frame, length_at, length as u16);
    cut.truncate(end);
    cut.resize(cut.len().max(60), 0);
    cut
}

fn set_be16(mut frame: Vec<u8>, at: usize, value: u16) -> Vec<u8> {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    frame
}

fn rule(net: &str, action: Action, scope: Scope) -> KernelRule {
    KernelRule {
        net: net.parse().unwrap_or_else(|_| panic!("test prefix {net}")),
        action,
        scope,
        expires: None,
    }
}

fn block(net: &str) -> KernelRule {
    rule(net, Action::Block, Scope::ProtectedPorts)
}

fn block_all_ports(net: &str) -> KernelRule {
    rule(net, Action::Block, Scope::AllPorts)
}

fn allow(net: &str) -> KernelRule {
    rule(net, Action::Allow, Scope::ProtectedPorts)
}

/// A clock ten seconds behind the kernel's: deadlines compiled against it land ten seconds
/// early, so a rule "expiring in 5 s" is already 5 s past in the kernel, with no sleeping.
fn clock_ten_seconds_behind(h: &Harness) -> (KernelClock, SystemTime) {
    let now = h.clock();
    let behind = KernelClock {
        wall: now.wall,
        jiffies: now.jiffies - 10 * u64::from(now.hz),
        hz: now.hz,
    };
    (behind, now.wall)
}

fn expiring(mut rule: KernelRule, at: SystemTime) -> KernelRule {
    rule.expires = Some(at);
    rule
}

/// An IPv4 and an IPv6 source for tests that cover both families.
const BOTH_FAMILIES: [&str; 2] = ["198.51.100.7", "2001:db8::7"];

// ---------------------------------------------------------------------------------------------
// Ethernet and VLAN tags
// ---------------------------------------------------------------------------------------------

#[test]
fn frames_shorter_than_an_ethernet_header_never_reach_the_program() {
    limiter_tests::require_kernel!();
    // BPF_PROG_TEST_RUN refuses packets under 14 bytes (EINVAL); this kernel also refuses them
    // behind XDP metadata (xdp_md.data), so the program's own "< 14 bytes: truncated" branch
    // cannot be reached from a test (nor from a NIC: drivers do not hand runt frames to XDP).
    // What can be checked: such runs fail without touching anything.
    let h = Harness::new();
    let syn = Packet::syn("198.51.100.7", GLANCE).build();
    let before = h.counters();
    for len in 0..ETH_HEADER_LEN {
        assert!(h.limiter.test_run(&syn[..len]).is_err(), "{len} bytes");
    }
    assert_eq!(h.counters(), before);
    // Exactly an Ethernet header is judged: an IPv4 header cut at 0 bytes, an ARP frame.
    h.passes(&syn[..ETH_HEADER_LEN], PassTruncated);
    h.passes(&ethernet_header(&[], ETHERTYPE_ARP), PassNotIp);
}

#[test]
fn non_ip_ethertypes_pass_as_not_ip() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    for ethertype in [
        ETHERTYPE_ARP,
        0x88cc, /* LLDP */
        0x8847, /* MPLS */
        0x0000,
        0xffff,
    ] {
        let mut frame = ethernet_header(&[], ethertype);
        frame.resize(60, 0xab);
        h.passes(&frame, PassNotIp);
        let mut tagged = ethernet_header(&[TPID_8021AD, TPID_8021Q], ethertype);
        tagged.resize(64, 0xab);
        h.passes(&tagged, PassNotIp);
    }
    // An IPv4 packet behind an unknown ethertype is not looked at.
    let mut frame = Packet::syn("198.51.100.7", GLANCE).build();
    frame[12..14].copy_from_slice(&0x0801u16.to_be_bytes());
    h.passes(&frame, PassNotIp);
}

#[test]
fn one_or_two_vlan_tags_in_any_order_are_looked_through() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let stacks: [&[u16]; 7] = [
        &[],
        &[TPID_8021Q],
        &[TPID_8021AD],
        &[TPID_8021AD, TPID_8021Q],
        &[TPID_8021Q, TPID_8021AD],
        &[TPID_8021Q, TPID_8021Q],
        &[TPID_8021AD, TPID_8021AD],
    ];
    for (i, tags) in stacks.iter().enumerate() {
        for src in [
            format!("198.51.100.{}", 10 + i),
            format!("2001:db8::{}", 10 + i),
        ] {
            let frame = Packet::syn(&src, GLANCE).vlans(tags).build();
            h.check(&frame, &[PassProtected, SourceNew], Row::counts(&src).syn());
        }
    }
}

#[test]
fn a_third_vlan_tag_passes_as_vlan_depth() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    // Even from a blocked source: the program does not look past two tags.
    h.apply(&[block_all_ports("198.51.100.66/32")]);
    for tags in [
        [TPID_8021Q, TPID_8021Q, TPID_8021Q],
        [TPID_8021AD, TPID_8021Q, TPID_8021AD],
        [TPID_8021AD, TPID_8021AD, TPID_8021Q],
    ] {
        for src in ["198.51.100.7", "2001:db8::7", "198.51.100.66"] {
            h.passes(
                &Packet::syn(src, GLANCE).vlans(&tags).build(),
                PassVlanDepth,
            );
        }
    }
}

#[test]
fn a_vlan_tag_cut_by_the_frame_end_passes_as_truncated() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::syn("198.51.100.7", GLANCE)
        .vlans(&[TPID_8021AD, TPID_8021Q])
        .build();
    // Ends after the outer TPID, inside the outer tag, after it, inside the inner tag.
    for len in [14, 15, 16, 17, 18, 19, 20, 21] {
        h.passes(&frame[..len], PassTruncated);
    }
}

// ---------------------------------------------------------------------------------------------
// IPv4
// ---------------------------------------------------------------------------------------------

#[test]
fn an_ipv4_syn_to_the_protected_port_adds_a_source_row() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::syn("198.51.100.7", GLANCE).build();
    h.check(
        &frame,
        &[PassProtected, SourceNew],
        Row::counts("198.51.100.7").syn(),
    );
    let row = h.row("198.51.100.7").expect("row");
    assert_eq!((row.syns, row.packets, row.bytes), (1, 1, 60));
    assert_eq!(
        (
            row.flags & SOURCE_VERDICT_MASK,
            row.verdict_until,
            row.rules_generation
        ),
        (SOURCE_VERDICT_PASS, NEVER, 0),
        "no rule covers it: passed until the rules change"
    );
    assert_eq!(h.table().len(), 1);
}

#[test]
fn later_packets_of_a_known_source_add_to_its_row() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let src = "198.51.100.7";
    h.check(
        &Packet::syn(src, GLANCE).build(),
        &[PassProtected, SourceNew],
        Row::counts(src).syn(),
    );
    for _ in 0..3 {
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassProtected],
            Row::counts(src).syn(),
        );
        h.check(
            &Packet::tcp(src, GLANCE).build(),
            &[PassProtected],
            Row::counts(src),
        );
    }
    let request = Packet::request(src, GLANCE, b"GET /v2/images HTTP/1.1\r\nHost: g\r\n\r\n");
    h.check(
        &request.build(),
        &[PassProtected],
        Row::counts(src).class(Some(Class::Read)),
    );
    let row = h.row(src).expect("row");
    assert_eq!((row.syns, row.packets, row.read), (4, 8, 1));
}

#[test]
fn only_syn_without_ack_counts_as_a_connection_attempt() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    for src in BOTH_FAMILIES {
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(src).syn(),
        );
        h.check(
            &Packet::syn(src, GLANCE).flags(SYN | FIN).build(),
            &[PassProtected],
            Row::counts(src).syn(),
        );
        h.check(
            &Packet::syn(src, GLANCE).flags(SYN | PSH).build(),
            &[PassProtected],
            Row::counts(src).syn(),
        );
        for flags in [SYN | ACK, ACK, ACK | PSH, FIN | ACK, 0, !SYN, 0xff] {
            let frame = Packet::tcp(src, GLANCE).flags(flags).build();
            h.check(&frame, &[PassProtected], Row::counts(src));
        }
    }
}

#[test]
fn ipv4_with_a_wrong_version_or_a_short_header_length_is_malformed() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    // Even from a source blocked on all ports: its address is not trusted before the header is.
    h.apply(&[block_all_ports("198.51.100.66/32")]);
    for src in ["198.51.100.7", "198.51.100.66"] {
        let frame = Packet::syn(src, GLANCE).build();
        for version_ihl in [0x00, 0x05, 0x65, 0x55, 0xf5, 0x40, 0x41, 0x44] {
            h.passes(
                &set_u8(frame.clone(), IPV4_VERSION_IHL, version_ihl),
                PassMalformed,
            );
        }
    }
}

#[test]
fn an_ipv4_total_length_shorter_than_its_header_is_malformed() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let plain = Packet::syn("198.51.100.7", GLANCE).build();
    for total in [0, 1, 19] {
        h.passes(
            &set_be16(plain.clone(), IPV4_TOTAL_LENGTH, total),
            PassMalformed,
        );
    }
    // With 8 bytes of options the header is 28 bytes: 27 is too short, 28 is a bare header.
    let with_options = Packet::syn("198.51.100.7", GLANCE)
        .ipv4_options(&[1, 1, 1, 1, 1, 1, 1, 1])
        .build();
    h.passes(
        &set_be16(with_options.clone(), IPV4_TOTAL_LENGTH, 27),
        PassMalformed,
    );
    // 28: header only, so the TCP header lies past the IP payload.
    h.passes(
        &set_be16(with_options, IPV4_TOTAL_LENGTH, 28),
        PassMalformed,
    );
    // IHL 15 (60 bytes) in a 40-byte packet.
    h.passes(&set_u8(plain, IPV4_VERSION_IHL, 0x4f), PassMalformed);
}

#[test]
fn an_ipv4_total_length_past_the_frame_is_truncated() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::request("198.51.100.7", GLANCE, b"GET / HTTP/1.1\r\n\r\n").build();
    let ip_len = (frame.len() - ETH_HEADER_LEN) as u16;
    for total in [ip_len + 1, ip_len + 100, 0xffff] {
        h.passes(
            &set_be16(frame.clone(), IPV4_TOTAL_LENGTH, total),
            PassTruncated,
        );
    }
    // The frame's real length is fine.
    h.check(
        &frame,
        &[PassProtected, SourceNew],
        Row::counts("198.51.100.7").class(Some(Class::Read)),
    );
}

#[test]
fn ipv4_options_are_skipped() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let router_alert = [148, 4, 0, 0];
    let record_route = {
        let mut o = vec![7, 39, 4];
        o.resize(39, 0);
        o
    };
    let options: [&[u8]; 5] = [&[1], &[1, 1, 1, 0], &router_alert, &[1; 20], &record_route];
    for (i, options) in options.iter().enumerate() {
        let src = format!("198.51.100.{}", 20 + i);
        let frame = Packet::request(&src, GLANCE, b"POST /v2/images HTTP/1.1\r\n")
            .ipv4_options(options)
            .build();
        h.check(
            &frame,
            &[PassProtected, SourceNew],
            Row::counts(&src).class(Some(Class::ImageCreate)),
        );
    }
}

#[test]
fn later_ipv4_fragments_pass_as_fragment() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    // Not even a protected-ports block drops them: they carry no TCP header to judge.
    h.apply(&[block("198.51.100.66/32")]);
    for src in ["198.51.100.7", "198.51.100.66"] {
        for (offset, more) in [(1, true), (1, false), (185, true), (0x1fff, false)] {
            let frame = Packet::syn(src, GLANCE).ipv4_fragment(offset, more).build();
            h.passes(&frame, PassFragment);
            // With "don't fragment" also set (nonsense, but it must not change the reading).
            let flags =
                u16::from_be_bytes([frame[IPV4_FLAGS_FRAGMENT], frame[IPV4_FLAGS_FRAGMENT + 1]]);
            h.passes(
                &set_be16(frame, IPV4_FLAGS_FRAGMENT, flags | 0x4000),
                PassFragment,
            );
        }
    }
}

#[test]
fn a_first_ipv4_fragment_is_read_like_a_whole_packet() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let src = "198.51.100.7";
    let first = Packet::syn(src, GLANCE).ipv4_fragment(0, true).build();
    h.check(&first, &[PassProtected, SourceNew], Row::counts(src).syn());
    let dont_fragment = set_be16(
        Packet::syn(src, GLANCE).build(),
        IPV4_FLAGS_FRAGMENT,
        0x4000,
    );
    h.check(&dont_fragment, &[PassProtected], Row::counts(src).syn());
    // And it is dropped from a blocked source.
    h.apply(&[block("198.51.100.66/32")]);
    h.drops(
        &Packet::syn("198.51.100.66", GLANCE)
            .ipv4_fragment(0, true)
            .build(),
        DropBlocked,
    );
}

#[test]
fn ip_that_is_not_tcp_passes_as_not_tcp() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    for src in BOTH_FAMILIES {
        h.passes(&Packet::syn(src, GLANCE).protocol(UDP).build(), PassNotTcp);
        // ICMP, ICMPv6, GRE, SCTP, "no next header".
        for protocol in [1, 58, 47, 132, 59] {
            h.passes(
                &Packet::syn(src, GLANCE).protocol(protocol).build(),
                PassNotTcp,
            );
        }
    }
    let behind_ext = Packet::syn("2001:db8::7", GLANCE)
        .ipv6_ext(&[Ext::HopByHop { len8: 0 }, Ext::DestOptions { len8: 1 }])
        .protocol(UDP);
    h.passes(&behind_ext.build(), PassNotTcp);
    // IPv4's protocol field is the only thing that makes it TCP.
    let tcp_as_udp = set_u8(
        Packet::syn("198.51.100.7", GLANCE).build(),
        IPV4_PROTOCOL,
        UDP,
    );
    h.passes(&tcp_as_udp, PassNotTcp);
}

#[test]
fn bytes_past_the_ip_length_count_in_bytes_but_are_not_payload() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let src = "198.51.100.7";
    // A 4-byte payload "GET " padded to the 60-byte minimum: bytes count the frame, the
    // request is too short to classify.
    let padded = Packet::request(src, GLANCE, b"GET ").build();
    assert_eq!(padded.len(), 60);
    h.check(
        &padded,
        &[PassProtected, SourceNew],
        Row::counts(src).class(None),
    );
    // A trailer after the IP packet that would complete a request line must not: the payload
    // ends where the IP length says.
    let mut trailer = Packet::request(src, GLANCE, b"GET ").build();
    trailer.truncate(ETH_HEADER_LEN + 20 + 20 + 4);
    trailer.extend_from_slice(b"/ HTTP/1.1\r\nHost: glance\r\n\r\n");
    h.check(&trailer, &[PassProtected], Row::counts(src).class(None));
    // IPv6: the payload length bounds it the same way.
    let v6 = "2001:db8::7";
    let mut trailer = Packet::request(v6, GLANCE, b"GET ").build();
    trailer.extend_from_slice(b"/ HTTP/1.1\r\nHost: glance\r\n\r\n");
    h.check(
        &trailer,
        &[PassProtected, SourceNew],
        Row::counts(v6).class(None),
    );
}

// ---------------------------------------------------------------------------------------------
// IPv6
// ---------------------------------------------------------------------------------------------

#[test]
fn an_ipv6_syn_to_the_protected_port_adds_a_source_row() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::syn("2001:db8::7", GLANCE).build();
    assert_eq!(frame.len(), 74);
    h.check(
        &frame,
        &[PassProtected, SourceNew],
        Row::counts("2001:db8::7").syn(),
    );
    assert_eq!(h.row("2001:db8::7").expect("row").bytes, 74);
}

#[test]
fn ipv6_with_a_wrong_version_is_malformed() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::syn("2001:db8::7", GLANCE).build();
    for first_byte in [0x00, 0x40, 0x45, 0x70, 0xf0] {
        h.passes(
            &set_u8(frame.clone(), ETH_HEADER_LEN, first_byte),
            PassMalformed,
        );
    }
    // Traffic class and flow label bits are not the version.
    h.check(
        &set_u8(frame.clone(), ETH_HEADER_LEN, 0x6f),
        &[PassProtected, SourceNew],
        Row::counts("2001:db8::7").syn(),
    );
}

#[test]
fn an_ipv6_header_or_payload_cut_by_the_frame_end_is_truncated() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::request("2001:db8::7", GLANCE, b"GET / HTTP/1.1\r\n\r\n").build();
    for len in [14, 15, 30, 53] {
        h.passes(&frame[..len], PassTruncated);
    }
    let payload = (frame.len() - IPV6_AFTER_HEADER) as u16;
    for claimed in [payload + 1, payload + 64, 0xffff] {
        h.passes(
            &set_be16(frame.clone(), IPV6_PAYLOAD_LENGTH, claimed),
            PassTruncated,
        );
    }
}

#[test]
fn ipv6_extension_headers_are_walked() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let chains: [&[Ext]; 9] = [
        &[Ext::HopByHop { len8: 0 }],
        &[Ext::HopByHop { len8: 3 }],
        &[Ext::Routing { len8: 0 }],
        &[Ext::DestOptions { len8: 255 }],
        // First fragment, and an atomic fragment (offset 0, no more): both carry TCP.
        &[Ext::Fragment {
            offset: 0,
            more: true,
        }],
        &[Ext::Fragment {
            offset: 0,
            more: false,
        }],
        &[Ext::HopByHop { len8: 0 }, Ext::Routing { len8: 2 }],
        &[
            Ext::HopByHop { len8: 1 },
            Ext::DestOptions { len8: 0 },
            Ext::Routing { len8: 0 },
            Ext::Fragment {
                offset: 0,
                more: true,
            },
            Ext::DestOptions { len8: 1 },
        ],
        &[Ext::DestOptions { len8: 0 }, Ext::DestOptions { len8: 0 }],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let src = format!("2001:db8::{:x}", 0x100 + i);
        let frame = Packet::request(&src, GLANCE, b"POST /v2/images?x HTTP/1.1\r\n")
            .ipv6_ext(chain)
            .build();
        h.check(
            &frame,
            &[PassProtected, SourceNew],
            Row::counts(&src).class(Some(Class::ImageCreate)),
        );
    }
}

/// `n` extension headers of every walked kind, all fragments first fragments.
fn ext_chain(n: usize) -> Vec<Ext> {
    let kinds = [
        Ext::HopByHop { len8: 0 },
        Ext::DestOptions { len8: 1 },
        Ext::Routing { len8: 0 },
        Ext::Fragment {
            offset: 0,
            more: true,
        },
    ];
    (0..n).map(|i| kinds[i % kinds.len()]).collect()
}

#[test]
fn eight_extension_headers_are_walked_and_a_ninth_is_over_the_limit() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[block("2001:db8::66/128")]);
    let eight = Packet::syn("2001:db8::7", GLANCE).ipv6_ext(&ext_chain(8));
    h.check(
        &eight.build(),
        &[PassProtected, SourceNew],
        Row::counts("2001:db8::7").syn(),
    );
    h.drops(
        &Packet::syn("2001:db8::66", GLANCE)
            .ipv6_ext(&ext_chain(8))
            .build(),
        DropBlocked,
    );
    for n in [9, 10, 20] {
        // Past the walk the port is unknown: passed uncounted, unless the source is blocked
        // (stacking headers must not slip past a ban).
        let frame = |src| Packet::syn(src, GLANCE).ipv6_ext(&ext_chain(n)).build();
        h.passes(&frame("2001:db8::7"), PassExtHeaderLimit);
        h.drops(&frame("2001:db8::66"), DropBlocked);
    }
}

#[test]
fn later_ipv6_fragments_pass_as_fragment() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[block("2001:db8::66/128")]);
    for src in ["2001:db8::7", "2001:db8::66"] {
        for (offset, more) in [(1, true), (1, false), (0x1fff, false)] {
            let fragment = Ext::Fragment { offset, more };
            let alone = Packet::syn(src, GLANCE).ipv6_ext(&[fragment]);
            h.passes(&alone.build(), PassFragment);
            let behind_others = Packet::syn(src, GLANCE).ipv6_ext(&[
                Ext::HopByHop { len8: 0 },
                Ext::Routing { len8: 1 },
                fragment,
                Ext::DestOptions { len8: 0 },
            ]);
            h.passes(&behind_others.build(), PassFragment);
        }
        // A later fragment as the 8th header is still found; as the 9th, the walk gave up.
        let mut chain = ext_chain(7);
        chain.push(Ext::Fragment {
            offset: 8,
            more: true,
        });
        h.passes(
            &Packet::syn(src, GLANCE).ipv6_ext(&chain).build(),
            PassFragment,
        );
        let mut chain = ext_chain(8);
        chain.push(Ext::Fragment {
            offset: 8,
            more: true,
        });
        let frame = Packet::syn(src, GLANCE).ipv6_ext(&chain).build();
        if src == "2001:db8::66" {
            h.drops(&frame, DropBlocked);
        } else {
            h.passes(&frame, PassExtHeaderLimit);
        }
    }
}

/// A first fragment too short for the TCP header (RFC 1858's tiny fragment): reassembly
/// restores the SYN to 9292, so a blocked source's must be dropped, though the port cannot
/// be read; an unblocked source's passes untouched and uncounted.
#[test]
fn tiny_first_fragments_are_judged_by_their_source() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[block("198.51.100.66/32"), block("2001:db8::66/128")]);
    for (src, blocked) in [
        ("198.51.100.7", false),
        ("198.51.100.66", true),
        ("2001:db8::7", false),
        ("2001:db8::66", true),
    ] {
        let whole = Packet::syn(src, GLANCE);
        let first_fragment = if src.contains(':') {
            whole.ipv6_ext(&[Ext::Fragment {
                offset: 0,
                more: true,
            }])
        } else {
            whole.ipv4_fragment(0, true)
        };
        // Only 8 bytes of the 20-byte TCP header in this fragment.
        let frame = cut_ip_payload(first_fragment.build(), 8);
        if blocked {
            h.drops(&frame, DropBlocked);
        } else {
            h.passes(&frame, PassFragment);
        }
    }
}

#[test]
fn extension_headers_past_the_ipv6_payload_are_malformed() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let frame = Packet::syn("2001:db8::7", GLANCE)
        .ipv6_ext(&[Ext::HopByHop { len8: 0 }, Ext::DestOptions { len8: 0 }])
        .build();
    // The frame holds the whole chain, but the payload length ends inside it.
    for payload in [0, 4, 8, 12] {
        h.passes(
            &set_be16(frame.clone(), IPV6_PAYLOAD_LENGTH, payload),
            PassMalformed,
        );
    }
    // A header claiming more 8-byte units than the payload holds. The next header named
    // after it must not be looked for out there.
    h.passes(
        &set_u8(frame.clone(), IPV6_AFTER_HEADER + 1, 200),
        PassMalformed,
    );
    // An empty payload whose next header is hop-by-hop, in a frame that goes on with zeros
    // (padding): zeros read as one hop-by-hop header after another, all past the payload.
    let mut empty = Packet::syn("2001:db8::7", GLANCE).build();
    empty[IPV6_AFTER_HEADER..].fill(0);
    let empty = set_be16(empty, IPV6_PAYLOAD_LENGTH, 0);
    h.passes(&set_u8(empty, IPV6_NEXT_HEADER, 0), PassMalformed);
    // The chain fits, but the TCP header after it does not.
    h.passes(
        &set_be16(frame.clone(), IPV6_PAYLOAD_LENGTH, 16),
        PassMalformed,
    );
    h.passes(
        &set_be16(frame, IPV6_PAYLOAD_LENGTH, 16 + 19),
        PassMalformed,
    );
}

#[test]
fn an_extension_header_cut_by_the_frame_end_is_truncated() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    // Empty payload (so the length check passes) and a next-header naming an extension
    // header: the frame ends before the fields the walk reads. No Ethernet padding here.
    for chain in [
        [Ext::HopByHop { len8: 0 }],
        [Ext::Fragment {
            offset: 0,
            more: true,
        }],
    ] {
        let frame = Packet::syn("2001:db8::7", GLANCE).ipv6_ext(&chain).build();
        let empty = set_be16(frame, IPV6_PAYLOAD_LENGTH, 0);
        h.passes(&empty[..IPV6_AFTER_HEADER], PassTruncated);
        h.passes(&empty[..IPV6_AFTER_HEADER + 1], PassTruncated);
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation at every length
// ---------------------------------------------------------------------------------------------

#[test]
fn every_truncation_of_a_valid_frame_passes_as_truncated() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    // A blocked source too: what cannot be read is never dropped.
    h.apply(&[
        block_all_ports("198.51.100.66/32"),
        block_all_ports("2001:db8::66/128"),
    ]);
    let payload = b"POST /v2/images HTTP/1.1\r\nHost: glance\r\n\r\n";
    let packets = [
        Packet::syn("198.51.100.7", GLANCE),
        Packet::syn("198.51.100.66", GLANCE),
        Packet::request("198.51.100.8", GLANCE, payload)
            .vlans(&[TPID_8021AD, TPID_8021Q])
            .ipv4_options(&[148, 4, 0, 0, 1, 1, 1, 1])
            .tcp_options(&[2, 4, 5, 0xb4, 1, 1, 4, 2]),
        Packet::syn("2001:db8::7", GLANCE),
        Packet::syn("2001:db8::66", GLANCE).ipv6_ext(&ext_chain(3)),
        Packet::request("2001:db8::8", GLANCE, payload)
            .vlans(&[TPID_8021Q])
            .ipv6_ext(&ext_chain(8))
            .tcp_options(&[1, 1, 1, 1]),
    ];
    for packet in &packets {
        let frame = packet.build();
        let eth = ETH_HEADER_LEN + 4 * packet.vlan_tags.len();
        // Where the IP packet ends; Ethernet padding may follow.
        let ip_end = eth
            + match packet.src {
                IpAddr::V4(_) => usize::from(u16::from_be_bytes([frame[eth + 2], frame[eth + 3]])),
                IpAddr::V6(_) => {
                    40 + usize::from(u16::from_be_bytes([frame[eth + 4], frame[eth + 5]]))
                }
            };
        let boundaries = packet.header_boundaries();
        assert!(
            boundaries.iter().all(|b| *b <= ip_end),
            "{boundaries:?} within {ip_end}"
        );
        for len in ETH_HEADER_LEN..ip_end {
            h.passes(&frame[..len], PassTruncated);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

#[test]
fn a_tcp_header_cut_by_the_frame_end_is_truncated() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    // The IP length says the TCP header is cut after 10 bytes, and the frame ends there.
    let v4 = set_be16(
        Packet::syn("198.51.100.7", GLANCE).build(),
        IPV4_TOTAL_LENGTH,
        20 + 10,
    );
    h.passes(&v4[..TCP_AFTER_IPV4 + 10], PassTruncated);
    let v6 = set_be16(
        Packet::syn("2001:db8::7", GLANCE).build(),
        IPV6_PAYLOAD_LENGTH,
        10,
    );
    h.passes(&v6[..TCP_AFTER_IPV6 + 10], PassTruncated);
}

#[test]
fn a_tcp_data_offset_below_five_is_malformed() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    for (src, tcp) in [
        ("198.51.100.7", TCP_AFTER_IPV4),
        ("2001:db8::7", TCP_AFTER_IPV6),
    ] {
        let frame = Packet::request(src, GLANCE, b"GET / HTTP/1.1\r\n\r\n").build();
        for words in 0..5u8 {
            h.passes(
                &set_u8(frame.clone(), tcp + TCP_DATA_OFFSET, words << 4),
                PassMalformed,
            );
        }
    }
}

#[test]
fn a_tcp_header_past_the_ip_payload_is_malformed() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    for (src, tcp) in [
        ("198.51.100.7", TCP_AFTER_IPV4),
        ("2001:db8::7", TCP_AFTER_IPV6),
    ] {
        let frame = Packet::syn(src, GLANCE).build();
        // A 24- and a 60-byte header claimed in a 20-byte segment.
        for words in [6u8, 15] {
            h.passes(
                &set_u8(frame.clone(), tcp + TCP_DATA_OFFSET, words << 4),
                PassMalformed,
            );
        }
    }
    // The IP packet ends inside the TCP header; the frame goes on (Ethernet padding).
    let padded = set_be16(
        Packet::syn("198.51.100.7", GLANCE).build(),
        IPV4_TOTAL_LENGTH,
        30,
    );
    assert_eq!(padded.len(), 60);
    h.passes(&padded, PassMalformed);
    let v6 = set_be16(
        Packet::syn("2001:db8::7", GLANCE).build(),
        IPV6_PAYLOAD_LENGTH,
        19,
    );
    h.passes(&v6, PassMalformed);
}

/// The plain IPv4 segment is read by a shortcut (`parse::ipv4_tcp`, one bounds check at fixed
/// offsets) that must agree with the layer-by-layer parse: header bits that do not matter are
/// ignored, and the segment ends where the IP length says, not where the frame does.
#[test]
fn the_plain_ipv4_shortcut_reads_what_the_layer_parse_reads() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let create =
        || Packet::request("198.51.100.7", GLANCE, b"POST /v2/images HTTP/1.1\r\n").build();
    let counted_create = Row::counts("198.51.100.7").class(Some(Class::ImageCreate));
    h.check(&create(), &[PassProtected, SourceNew], counted_create);
    // DSCP and ECN bits, then don't-fragment.
    h.check(
        &set_u8(create(), IPV4_VERSION_IHL + 1, 0xbb),
        &[PassProtected],
        counted_create,
    );
    h.check(
        &set_u8(create(), IPV4_FLAGS_FRAGMENT, 0x40),
        &[PassProtected],
        counted_create,
    );
    // Past the IP packet, a request line in the Ethernet trailer: not the segment's payload.
    let mut trailer = Packet::syn("198.51.100.7", GLANCE).build();
    // The builder pads a bare SYN to Ethernet's 60 bytes: the trailer replaces the padding.
    trailer.truncate(TCP_AFTER_IPV4 + 20);
    trailer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    h.check(
        &trailer,
        &[PassProtected],
        Row::counts("198.51.100.7").syn(),
    );
    // The IP packet one byte longer than the frame.
    let frame = create();
    let total = u16::try_from(frame.len() - ETH_HEADER_LEN + 1).unwrap();
    h.passes(&set_be16(frame, IPV4_TOTAL_LENGTH, total), PassTruncated);
}

#[test]
fn tcp_options_are_skipped_to_find_the_payload() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    // MSS, SACK permitted, timestamps, NOP, window scale: 20 bytes, a typical SYN's.
    let syn_options = [
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    let options: [&[u8]; 4] = [
        &[1],
        &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0],
        &syn_options,
        &[1; 40],
    ];
    for (i, options) in options.iter().enumerate() {
        for src in [
            format!("198.51.100.{}", 30 + i),
            format!("2001:db8::{}", 30 + i),
        ] {
            let frame = Packet::request(&src, GLANCE, b"POST /v1/images/ HTTP/1.1\r\n")
                .tcp_options(options)
                .build();
            h.check(
                &frame,
                &[PassProtected, SourceNew],
                Row::counts(&src).class(Some(Class::ImageCreate)),
            );
        }
    }
}

#[test]
fn other_ports_pass_without_a_source_row() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    // Neighbours of 9292 in value and in the port bitmap (64 ports to a word), the extremes.
    for port in [
        0,
        1,
        22,
        80,
        443,
        9291,
        9293,
        9292 - 64,
        9292 + 64,
        9292 ^ 0x8000,
        65535,
    ] {
        for src in BOTH_FAMILIES {
            h.passes(&Packet::syn(src, port).build(), PassOtherPort);
            h.passes(
                &Packet::request(src, port, b"POST /v2/images HTTP/1.1\r\n").build(),
                PassOtherPort,
            );
        }
    }
    // A reply from the Glance server's side (source port 9292) is not traffic to it.
    let mut reply = Packet::tcp("198.51.100.7", 40_000);
    reply.src_port = GLANCE;
    h.passes(&reply.build(), PassOtherPort);
    assert!(h.table().is_empty());
}

#[test]
fn every_configured_port_is_protected() {
    limiter_tests::require_kernel!();
    let mut h = Harness::protecting(&[1, 443, GLANCE, 65535]);
    for (i, port) in [1, 443, GLANCE, 65535].into_iter().enumerate() {
        let src = format!("198.51.100.{}", 40 + i);
        h.check(
            &Packet::syn(&src, port).build(),
            &[PassProtected, SourceNew],
            Row::counts(&src).syn(),
        );
    }
    h.passes(&Packet::syn("198.51.100.7", 444).build(), PassOtherPort);
    // Reconfiguring replaces the set.
    h.limiter.set_protected_ports(&[443]).expect("protect 443");
    h.passes(&Packet::syn("198.51.100.7", GLANCE).build(), PassOtherPort);
    h.check(
        &Packet::syn("198.51.100.41", 443).build(),
        &[PassProtected],
        Row::counts("198.51.100.41").syn(),
    );
    assert!(
        h.limiter.set_protected_ports(&[0]).is_err(),
        "port 0 is refused"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP request classes
// ---------------------------------------------------------------------------------------------

/// Sends each payload from one known source and checks the class counted.
fn check_classes(payloads: &[&[u8]], class: Option<Class>) {
    let h = Harness::new();
    for src in BOTH_FAMILIES {
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(src).syn(),
        );
        for payload in payloads {
            let frame = Packet::request(src, GLANCE, payload).build();
            h.check(&frame, &[PassProtected], Row::counts(src).class(class));
        }
    }
}

#[test]
fn image_create_requests_are_recognised() {
    limiter_tests::require_kernel!();
    check_classes(
        &[
            b"POST /v2/images HTTP/1.1\r\nHost: glance\r\nContent-Length: 2\r\n\r\n{}",
            b"POST /v1/images HTTP/1.1\r\n",
            b"POST /v2/images?name=x HTTP/1.1\r\n",
            b"POST /v2/images/ HTTP/1.1\r\n",
            b"POST /v2/images/?name=x HTTP/1.1\r\n",
            b"POST /v1/images/ HTTP/1.0\r\n",
            // The shortest: exactly 16 and 17 bytes.
            b"POST /v2/images ",
            b"POST /v2/images/?",
        ],
        Some(Class::ImageCreate),
    );
}

#[test]
fn near_misses_of_image_create_are_other_writes() {
    limiter_tests::require_kernel!();
    check_classes(
        &[
            b"POST /v2/imagesX HTTP/1.1\r\n",
            b"POST /v2/images/ID/members HTTP/1.1\r\n",
            b"POST /v2/images/ID HTTP/1.1\r\n",
            b"POST /v2/images/6f1c/actions/deactivate HTTP/1.1\r\n",
            b"POST /v2/images// HTTP/1.1\r\n",
            b"POST /v2/images#x HTTP/1.1\r\n",
            b"POST /v2/images\tHTTP/1.1\r\n",
            // The segment ends right after the slash: the path may go on, so not a create.
            b"POST /v2/images/",
            b"POST /v3/images HTTP/1.1\r\n",
            b"POST /v2/image HTTP/1.1\r\n",
            b"POST /V2/images HTTP/1.1\r\n",
            b"POST /v2/IMAGES HTTP/1.1\r\n",
            b"POST //v2/images HTTP/1.1\r\n",
            b"POST  /v2/images HTTP/1.1\r\n",
            b"POST /v2/tasks HTTP/1.1\r\n",
            b"POST http://glance/v2/images HTTP/1.1\r\n",
            b"POST / HTTP/1.1\r\n",
        ],
        Some(Class::OtherWrite),
    );
}

#[test]
fn puts_patches_and_deletes_are_other_writes() {
    limiter_tests::require_kernel!();
    check_classes(
        &[
            b"PUT /v2/images/6f1c/file HTTP/1.1\r\n",
            b"PATCH /v2/images/6f1c HTTP/1.1\r\n",
            b"DELETE /v2/images/6f1c HTTP/1.1\r\n",
            b"PUT /v2/images HTTP/1.1\r\n",
            b"DELETE / HTTP/1.1\r\n",
        ],
        Some(Class::OtherWrite),
    );
}

#[test]
fn gets_heads_and_options_are_reads() {
    limiter_tests::require_kernel!();
    check_classes(
        &[
            b"GET /v2/images HTTP/1.1\r\nHost: glance\r\n\r\n",
            b"GET /v2/images/6f1c/file HTTP/1.1\r\n",
            b"HEAD /v2/images/6f1c HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            // Exactly 16 bytes, the shortest request line classified.
            b"GET / HTTP/1.0\r\n",
        ],
        Some(Class::Read),
    );
}

#[test]
fn payloads_that_are_not_request_lines_are_not_classified() {
    limiter_tests::require_kernel!();
    check_classes(
        &[
            b"post /v2/images HTTP/1.1\r\n",
            b"Post /v2/images HTTP/1.1\r\n",
            b"get /v2/images HTTP/1.1\r\n",
            b"CONNECT glance:9292 HTTP/1.1\r\n",
            b"TRACE / HTTP/1.1\r\n",
            b"GETS / HTTP/1.1\r\n",
            b"POSTS /v2/images HTTP/1.1\r\n",
            b"PUTS / HTTP/1.1\r\n",
            b"OPTION / HTTP/1.1\r\n",
            b"DELETED / HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"\r\nPOST /v2/images HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            // Shorter than 16 bytes, even if they start like a request.
            b"POST /v2/images",
            b"GET / HTTP/1.0\r",
            b"GET /",
            b"P",
            // A TLS ClientHello's first bytes, and zeros.
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0, 0,
            ],
            &[0; 100],
        ],
        None,
    );
}

#[test]
fn requests_are_found_behind_tags_options_and_extension_headers() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let v4 = Packet::request("198.51.100.7", GLANCE, b"POST /v2/images HTTP/1.1\r\n")
        .vlans(&[TPID_8021AD, TPID_8021Q])
        .ipv4_options(&[1; 40])
        .tcp_options(&[1; 40]);
    h.check(
        &v4.build(),
        &[PassProtected, SourceNew],
        Row::counts("198.51.100.7").class(Some(Class::ImageCreate)),
    );
    let v6 = Packet::request("2001:db8::7", GLANCE, b"DELETE /v2/images/x HTTP/1.1\r\n")
        .vlans(&[TPID_8021Q, TPID_8021Q])
        .ipv6_ext(&ext_chain(8))
        .tcp_options(&[1; 40]);
    h.check(
        &v6.build(),
        &[PassProtected, SourceNew],
        Row::counts("2001:db8::7").class(Some(Class::OtherWrite)),
    );
    // A SYN carrying data (TCP Fast Open) counts both.
    let fast_open =
        Packet::request("198.51.100.7", GLANCE, b"GET /v2/images HTTP/1.1\r\n").flags(SYN);
    h.check(
        &fast_open.build(),
        &[PassProtected],
        Row::counts("198.51.100.7").syn().class(Some(Class::Read)),
    );
}

// ---------------------------------------------------------------------------------------------
// The source table
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv4_and_ipv6_sources_share_one_table() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    for src in [
        "198.51.100.7",
        "2001:db8::7",
        "203.0.113.9",
        "2001:db8:ffff::1",
    ] {
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(src).syn(),
        );
    }
    let table = h.table();
    assert_eq!(table.len(), 4);
    // IPv4 sources come back as IPv4, not as their internal IPv4-mapped form.
    assert!(table.contains_key(&addr("198.51.100.7")));
    assert!(table.contains_key(&addr("203.0.113.9")));
    assert!(!table.contains_key(&addr("::ffff:198.51.100.7")));
}

#[test]
fn an_ipv6_packet_from_an_ipv4_mapped_address_counts_as_that_ipv4_source() {
    limiter_tests::require_kernel!();
    // Pins how the shared key space treats a (never legitimate on the wire) IPv6 packet with
    // an IPv4-mapped source: it is the same source, for counting and for rules alike.
    let mut h = Harness::new();
    let v4 = "198.51.100.7";
    h.check(
        &Packet::syn(v4, GLANCE).build(),
        &[PassProtected, SourceNew],
        Row::counts(v4).syn(),
    );
    let mapped = Packet::syn("::ffff:198.51.100.7", GLANCE).build();
    assert_eq!(mapped[12..14], [0x86, 0xdd], "an IPv6 frame");
    h.check(&mapped, &[PassProtected], Row::counts(v4).syn());
    h.apply(&[block("198.51.100.66/32")]);
    h.drops(
        &Packet::syn("::ffff:198.51.100.66", GLANCE).build(),
        DropBlocked,
    );
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

#[test]
fn a_host_block_drops_protected_traffic_only() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[block("198.51.100.66/32"), block("2001:db8::66/128")]);
    for (blocked, neighbour) in [
        ("198.51.100.66", "198.51.100.67"),
        ("2001:db8::66", "2001:db8::67"),
    ] {
        // Dropped, and not added to the table (no row, no SourceNew), however often.
        for _ in 0..3 {
            h.drops(&Packet::syn(blocked, GLANCE).build(), DropBlocked);
            h.drops(
                &Packet::request(blocked, GLANCE, b"POST /v2/images HTTP/1.1\r\n").build(),
                DropBlocked,
            );
        }
        // Everything else from it passes: other ports, other protocols, fragments.
        h.passes(&Packet::syn(blocked, 22).build(), PassOtherPort);
        h.passes(
            &Packet::syn(blocked, GLANCE).protocol(UDP).build(),
            PassNotTcp,
        );
        let fragment = match addr(blocked) {
            IpAddr::V4(_) => Packet::syn(blocked, GLANCE).ipv4_fragment(1, false),
            IpAddr::V6(_) => Packet::syn(blocked, GLANCE).ipv6_ext(&[Ext::Fragment {
                offset: 1,
                more: false,
            }]),
        };
        h.passes(&fragment.build(), PassFragment);
        // The next address is not covered.
        h.check(
            &Packet::syn(neighbour, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(neighbour).syn(),
        );
    }
    assert_eq!(h.table().len(), 2, "only the neighbours have rows");
}

#[test]
fn a_prefix_block_covers_its_hosts_and_no_others() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[
        block("203.0.113.0/25"),
        block("2001:db8:0:1::/64"),
        block("2001:db8:aa::/48"),
    ]);
    for covered in [
        "203.0.113.0",
        "203.0.113.1",
        "203.0.113.127",
        "2001:db8:0:1::",
        "2001:db8:0:1::1",
        "2001:db8:0:1:ffff:ffff:ffff:ffff",
        "2001:db8:aa:ffff::1",
    ] {
        h.drops(&Packet::syn(covered, GLANCE).build(), DropBlocked);
    }
    for outside in [
        "203.0.113.128",
        "203.0.113.255",
        "198.51.100.1",
        "2001:db8:0:2::1",
        "2001:db8::1",
        "2001:db8:ab::1",
    ] {
        h.check(
            &Packet::syn(outside, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(outside).syn(),
        );
    }
}

#[test]
fn an_all_ports_block_drops_every_ip_packet_from_the_source() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[
        block_all_ports("198.51.100.66/32"),
        block_all_ports("2001:db8::66/128"),
    ]);
    for src in ["198.51.100.66", "2001:db8::66"] {
        h.drops(&Packet::syn(src, GLANCE).build(), DropBlocked);
        h.drops(&Packet::syn(src, 22).build(), DropBlockedAnyPort);
        h.drops(
            &Packet::syn(src, GLANCE).protocol(UDP).build(),
            DropBlockedAnyPort,
        );
        h.drops(
            &Packet::syn(src, 53).protocol(1).build(),
            DropBlockedAnyPort,
        );
        let (first, later) = match addr(src) {
            IpAddr::V4(_) => (
                Packet::syn(src, 22).ipv4_fragment(0, true),
                Packet::syn(src, GLANCE).ipv4_fragment(1, false),
            ),
            IpAddr::V6(_) => (
                Packet::syn(src, 22).ipv6_ext(&[Ext::Fragment {
                    offset: 0,
                    more: true,
                }]),
                Packet::syn(src, GLANCE).ipv6_ext(&[Ext::Fragment {
                    offset: 1,
                    more: false,
                }]),
            ),
        };
        h.drops(&first.build(), DropBlockedAnyPort);
        h.drops(&later.build(), DropBlockedAnyPort);
    }
    // What cannot be parsed far enough to know its source still passes.
    let ihl_four = set_u8(
        Packet::syn("198.51.100.66", 22).build(),
        IPV4_VERSION_IHL,
        0x44,
    );
    h.passes(&ihl_four, PassMalformed);
    // Other sources are untouched.
    h.passes(
        &Packet::syn("198.51.100.67", GLANCE).protocol(UDP).build(),
        PassNotTcp,
    );
    h.passes(&Packet::syn("2001:db8::67", 22).build(), PassOtherPort);
    assert!(h.table().is_empty());
}

#[test]
fn block_scopes_merge_across_covering_prefixes() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    // The host's own rule is narrower in scope than its prefix's: the prefix still applies.
    h.apply(&[block_all_ports("203.0.113.0/24"), block("203.0.113.5/32")]);
    h.drops(&Packet::syn("203.0.113.5", GLANCE).build(), DropBlocked);
    h.drops(
        &Packet::syn("203.0.113.5", GLANCE).protocol(UDP).build(),
        DropBlockedAnyPort,
    );
    h.drops(&Packet::syn("203.0.113.6", 22).build(), DropBlockedAnyPort);
    // And the reverse: an all-ports host inside a protected-ports prefix.
    h.apply(&[
        block("2001:db8:5::/64"),
        block_all_ports("2001:db8:5::5/128"),
    ]);
    h.drops(
        &Packet::syn("2001:db8:5::5", 22).build(),
        DropBlockedAnyPort,
    );
    h.drops(&Packet::syn("2001:db8:5::6", GLANCE).build(), DropBlocked);
    h.passes(&Packet::syn("2001:db8:5::6", 22).build(), PassOtherPort);
    h.passes(&Packet::syn("203.0.113.5", 22).build(), PassOtherPort);
}

#[test]
fn an_allow_rule_beats_a_block() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[
        // A host allowed inside a prefix blocked on all ports...
        block_all_ports("198.51.100.0/24"),
        allow("198.51.100.7/32"),
        // ...and a host blocked inside an allowed prefix.
        block("2001:db8::7/128"),
        allow("2001:db8::/64"),
    ]);
    for src in BOTH_FAMILIES {
        // Passed as allowed, and counted like any other source.
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassAllowed, SourceNew],
            Row::counts(src).syn(),
        );
        let request = Packet::request(src, GLANCE, b"POST /v2/images HTTP/1.1\r\n").build();
        h.check(
            &request,
            &[PassAllowed],
            Row::counts(src).class(Some(Class::ImageCreate)),
        );
        h.passes(&Packet::syn(src, 22).build(), PassOtherPort);
        h.passes(&Packet::syn(src, GLANCE).protocol(UDP).build(), PassNotTcp);
        let row = h.row(src).expect("row");
        assert_eq!(
            row.flags & SOURCE_VERDICT_MASK,
            SOURCE_VERDICT_ALLOWED,
            "{row:?}"
        );
        assert_eq!(row.verdict_until, NEVER, "neither rule ends: {row:?}");
    }
    // The rest of the blocked prefix is still blocked.
    h.drops(&Packet::syn("198.51.100.8", GLANCE).build(), DropBlocked);
    h.drops(&Packet::syn("198.51.100.8", 22).build(), DropBlockedAnyPort);
}

#[test]
fn an_allow_rule_alone_changes_nothing() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[allow("198.51.100.0/24"), allow("2001:db8::7/128")]);
    for src in BOTH_FAMILIES {
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(src).syn(),
        );
    }
}

#[test]
fn an_expired_block_has_no_effect_though_still_in_the_trie() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let (behind, now) = clock_ten_seconds_behind(&h);
    let in_five_seconds = now + Duration::from_secs(5);
    let compiled = h.apply_with_clock(
        &[
            expiring(block("198.51.100.7/32"), in_five_seconds),
            expiring(block_all_ports("2001:db8::7/128"), in_five_seconds),
            expiring(block_all_ports("203.0.113.0/24"), in_five_seconds),
        ],
        &behind,
    );
    assert_eq!(
        compiled.block.len(),
        3,
        "the rules are written, with past deadlines"
    );
    assert!(compiled
        .block
        .values()
        .all(|r| r.until_protected < h.clock().jiffies));
    for src in BOTH_FAMILIES {
        h.check(
            &Packet::syn(src, GLANCE).build(),
            &[PassProtected, SourceNew],
            Row::counts(src).syn(),
        );
        h.passes(&Packet::syn(src, 22).protocol(UDP).build(), PassNotTcp);
    }
    h.passes(&Packet::syn("203.0.113.9", 22).build(), PassOtherPort);
}

#[test]
fn an_expired_allow_no_longer_exempts() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let (behind, now) = clock_ten_seconds_behind(&h);
    h.apply_with_clock(
        &[
            block_all_ports("198.51.100.0/24"),
            expiring(allow("198.51.100.7/32"), now + Duration::from_secs(5)),
        ],
        &behind,
    );
    h.drops(&Packet::syn("198.51.100.7", GLANCE).build(), DropBlocked);
    h.drops(&Packet::syn("198.51.100.7", 22).build(), DropBlockedAnyPort);
}

/// A host rule whose deadline equals its covering prefix's must still be written: once the
/// prefix is removed, it alone keeps the host blocked. (A trie lookup answers for an absent
/// host with the prefix's value, which once made the sync skip writing it.)
#[test]
fn removing_a_prefix_keeps_a_host_rule_inside_it() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[block("198.51.100.0/24"), block("198.51.100.7/32")]);
    h.drops(&Packet::syn("198.51.100.7", GLANCE).build(), DropBlocked);
    h.apply(&[block("198.51.100.7/32")]);
    h.drops(&Packet::syn("198.51.100.7", GLANCE).build(), DropBlocked);
}

#[test]
fn an_expired_narrow_rule_does_not_hide_a_live_broader_one() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let (behind, now) = clock_ten_seconds_behind(&h);
    let past = now + Duration::from_secs(5);
    h.apply_with_clock(
        &[
            block_all_ports("198.51.100.0/24"),
            expiring(block_all_ports("198.51.100.7/32"), past),
            block("2001:db8:7::/64"),
            expiring(block("2001:db8:7::7/128"), past),
            // Allows: a live broad one under an expired narrow one still exempts.
            block("203.0.113.0/24"),
            allow("203.0.113.0/28"),
            expiring(allow("203.0.113.7/32"), past),
        ],
        &behind,
    );
    h.drops(&Packet::syn("198.51.100.7", GLANCE).build(), DropBlocked);
    h.drops(
        &Packet::syn("198.51.100.7", 22).protocol(UDP).build(),
        DropBlockedAnyPort,
    );
    h.drops(&Packet::syn("2001:db8:7::7", GLANCE).build(), DropBlocked);
    h.check(
        &Packet::syn("203.0.113.7", GLANCE).build(),
        &[PassAllowed, SourceNew],
        Row::counts("203.0.113.7").syn(),
    );
    // And the reverse: a live narrow rule inside an expired broad one.
    h.apply_with_clock(
        &[
            expiring(block("198.51.100.0/24"), past),
            block("198.51.100.9/32"),
        ],
        &behind,
    );
    h.drops(&Packet::syn("198.51.100.9", GLANCE).build(), DropBlocked);
    h.check(
        &Packet::syn("198.51.100.10", GLANCE).build(),
        &[PassProtected, SourceNew],
        Row::counts("198.51.100.10").syn(),
    );
}

#[test]
fn a_block_expiring_in_the_future_blocks() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let now = h.clock().wall;
    h.apply(&[
        expiring(block("198.51.100.66/32"), now + Duration::from_secs(3600)),
        expiring(
            block_all_ports("2001:db8::66/128"),
            now + Duration::from_secs(60),
        ),
    ]);
    h.drops(&Packet::syn("198.51.100.66", GLANCE).build(), DropBlocked);
    h.drops(&Packet::syn("2001:db8::66", GLANCE).build(), DropBlocked);
    h.drops(&Packet::syn("2001:db8::66", 22).build(), DropBlockedAnyPort);
    // The same, compiled against a clock ten seconds behind: 20 s becomes 10 s, still live.
    let (behind, now) = clock_ten_seconds_behind(&h);
    h.apply_with_clock(
        &[expiring(
            block("203.0.113.66/32"),
            now + Duration::from_secs(20),
        )],
        &behind,
    );
    h.drops(&Packet::syn("203.0.113.66", GLANCE).build(), DropBlocked);
    h.check(
        &Packet::syn("198.51.100.66", GLANCE).build(),
        &[PassProtected, SourceNew],
        Row::counts("198.51.100.66").syn(),
    );
}

#[test]
fn rule_changes_apply_to_the_next_packet_of_a_known_source() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    for src in BOTH_FAMILIES {
        let host = match addr(src) {
            IpAddr::V4(_) => format!("{src}/32"),
            IpAddr::V6(_) => format!("{src}/128"),
        };
        let syn = Packet::syn(src, GLANCE).build();
        let udp = Packet::syn(src, GLANCE).protocol(UDP).build();
        h.apply(&[]);
        h.check(&syn, &[PassProtected, SourceNew], Row::counts(src).syn());
        let counted = h.row(src).expect("row");

        // Blocked: the very next packet is dropped, and not counted in the row.
        h.apply(&[block(&host)]);
        h.drops(&syn, DropBlocked);
        h.drops(
            &Packet::request(src, GLANCE, b"POST /v2/images HTTP/1.1\r\n").build(),
            DropBlocked,
        );
        let after_drops = h.row(src).expect("row");
        assert_eq!(
            Record::from(&after_drops),
            Record::from(&counted),
            "drops are not counted"
        );

        // Unblocked: passes and counts again.
        h.apply(&[]);
        h.check(&syn, &[PassProtected], Row::counts(src).syn());

        // Blocked and allowed.
        h.apply(&[block(&host), allow(&host)]);
        h.check(&syn, &[PassAllowed], Row::counts(src).syn());

        // Blocked by a rule that has already expired.
        let (behind, now) = clock_ten_seconds_behind(&h);
        h.apply_with_clock(
            &[expiring(block(&host), now + Duration::from_secs(5))],
            &behind,
        );
        h.check(&syn, &[PassProtected], Row::counts(src).syn());

        // All ports, then lifted: other traffic follows too.
        h.apply(&[block_all_ports(&host)]);
        h.drops(&udp, DropBlockedAnyPort);
        h.drops(&syn, DropBlocked);
        h.apply(&[]);
        h.passes(&udp, PassNotTcp);
        h.check(&syn, &[PassProtected], Row::counts(src).syn());
    }
}

#[test]
fn ipv4_and_ipv6_rules_do_not_cover_each_other() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    h.apply(&[block_all_ports("0.0.0.0/0")]);
    h.drops(&Packet::syn("203.0.113.9", GLANCE).build(), DropBlocked);
    h.drops(&Packet::syn("198.51.100.7", 22).build(), DropBlockedAnyPort);
    h.check(
        &Packet::syn("2001:db8::7", GLANCE).build(),
        &[PassProtected, SourceNew],
        Row::counts("2001:db8::7").syn(),
    );
    h.passes(
        &Packet::syn("2001:db8::7", 22).protocol(UDP).build(),
        PassNotTcp,
    );

    h.apply(&[block_all_ports("2001:db8::/32")]);
    h.drops(&Packet::syn("2001:db8::7", GLANCE).build(), DropBlocked);
    h.check(
        &Packet::syn("198.51.100.7", GLANCE).build(),
        &[PassProtected, SourceNew],
        Row::counts("198.51.100.7").syn(),
    );
    h.passes(
        &Packet::syn("198.51.100.7", 22).protocol(UDP).build(),
        PassNotTcp,
    );
}

#[test]
fn ipv6_prefixes_over_the_ipv4_mapped_range_are_rejected() {
    limiter_tests::require_kernel!();
    let h = Harness::new();
    let clock = h.clock();
    for net in [
        "::/0",
        "::/64",
        "::ffff:0:0/96",
        "::ffff:0:0/95",
        "::ffff:198.51.100.0/120",
        "::ffff:198.51.100.7/128",
    ] {
        for action in [Action::Block, Action::Allow] {
            let rules = [rule(net, action, Scope::ProtectedPorts)];
            assert!(
                compile(&rules, &clock).is_err(),
                "{net} {action:?} must be rejected"
            );
            // Even next to valid rules: the whole set is refused.
            let rules = [
                block("198.51.100.66/32"),
                rule(net, action, Scope::AllPorts),
            ];
            assert!(
                compile(&rules, &clock).is_err(),
                "{net} {action:?} must be rejected"
            );
        }
    }
    // Neighbours that do not overlap it are fine.
    for net in ["2001:db8::/32", "2000::/3", "::1/128", "64:ff9b::/96"] {
        assert!(
            compile(&[block(net)], &clock).is_ok(),
            "{net} is a valid rule"
        );
    }
}

/// Back-to-back drops of one source take the program's one-entry cache of its last drop; the
/// cache must follow every rule change and the rule's expiry as the full path does.
#[test]
fn repeated_drops_of_one_source_follow_rule_changes_and_expiry() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let (a, b) = ("198.51.100.7", "198.51.100.8");
    let (frame_a, frame_b) = (
        Packet::syn(a, GLANCE).build(),
        Packet::syn(b, GLANCE).build(),
    );
    h.apply(&[block(&format!("{a}/32"))]);
    for _ in 0..3 {
        h.drops(&frame_a, DropBlocked);
    }
    // Another source between two drops of the first is judged on its own.
    h.check(&frame_b, &[PassProtected, SourceNew], Row::counts(b).syn());
    h.drops(&frame_a, DropBlocked);

    // The rules change: the first source is free at once, the second dropped.
    h.apply(&[block(&format!("{b}/32"))]);
    h.check(&frame_a, &[PassProtected, SourceNew], Row::counts(a).syn());
    h.drops(&frame_b, DropBlocked);
    h.drops(&frame_b, DropBlocked);

    // A block that ends in about a second: dropped (twice, so the second comes from the
    // cache), then passed once the deadline is behind.
    let (behind, now) = clock_ten_seconds_behind(&h);
    h.apply_with_clock(
        &[expiring(
            block(&format!("{b}/32")),
            now + Duration::from_secs(11),
        )],
        &behind,
    );
    h.drops(&frame_b, DropBlocked);
    h.drops(&frame_b, DropBlocked);
    std::thread::sleep(Duration::from_millis(1300));
    h.check(&frame_b, &[PassProtected], Row::counts(b).syn());
}

/// A row caches its verdict until the rules change or the verdict's own end: an allow that
/// ends while the block it exempted from goes on turns the cached pass into a drop, with no
/// rules change in between.
#[test]
fn a_cached_allow_ending_under_a_lasting_block_becomes_a_drop() {
    limiter_tests::require_kernel!();
    let mut h = Harness::new();
    let src = "198.51.100.9";
    let frame = Packet::syn(src, GLANCE).build();
    let (behind, now) = clock_ten_seconds_behind(&h);
    h.apply_with_clock(
        &[
            block(&format!("{src}/32")),
            expiring(allow(&format!("{src}/32")), now + Duration::from_secs(11)),
        ],
        &behind,
    );
    h.check(&frame, &[PassAllowed, SourceNew], Row::counts(src).syn());
    // The second from the row's cache.
    h.check(&frame, &[PassAllowed], Row::counts(src).syn());
    let row = h.row(src).expect("row");
    assert_eq!(
        row.flags & SOURCE_VERDICT_MASK,
        SOURCE_VERDICT_ALLOWED,
        "{row:?}"
    );
    assert_ne!(
        row.verdict_until, NEVER,
        "cached until the allow ends: {row:?}"
    );
    // The deadline is at least a second ahead; waiting longer only makes it surer.
    std::thread::sleep(Duration::from_millis(1300));
    h.drops(&frame, DropBlocked);
    let row = h.row(src).expect("row");
    assert_eq!(
        row.flags & SOURCE_VERDICT_MASK,
        SOURCE_VERDICT_BLOCKED,
        "{row:?}"
    );
    assert_eq!(row.verdict_until, NEVER, "the block has no end: {row:?}");
}
