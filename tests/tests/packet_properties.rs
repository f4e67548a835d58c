//! Property tests of the XDP program through BPF_PROG_TEST_RUN: thousands of random frames
//! (valid frames of every shape, the same randomly damaged, and plain random bytes), judged
//! against `limiter_tests::reference`, an independent reading of the same bytes.
//!
//! Each property loads one program and runs every case on it: loading per case would cost
//! more than all the cases together. Failures are not persisted to files (the cases are
//! printed instead).

use std::{cell::Cell, net::IpAddr};

use limiter_common::Counter;
use limiter_tests::{
    frames::{Ext, Packet, TPID_8021AD, TPID_8021Q, UDP},
    reference,
};
use limiter_user::{
    loader::{Counters, Limiter, LoadOptions, Verdict},
    rules::{compile, Action, KernelRule, Scope},
};
use proptest::{
    collection::vec,
    prelude::*,
    sample::{select, Index},
    test_runner::{Config, TestRunner},
};

const GLANCE: u16 = 9292;
const ETH_HEADER_LEN: usize = 14;

/// Sources under a block rule in the property tests.
const BLOCKED: [&str; 2] = ["198.51.100.66", "2001:db8::66"];
/// Sources under no rule (IPv4, IPv6, and an IPv4-mapped IPv6 one).
const UNBLOCKED: [&str; 5] = [
    "198.51.100.7",
    "203.0.113.9",
    "2001:db8::7",
    "2001:db8:ffff::1",
    "::ffff:198.51.100.8",
];

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A program with port 9292 protected and `rules` applied.
fn limiter_with(rules: &[KernelRule]) -> Limiter {
    let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the XDP program");
    limiter
        .set_protected_ports(&[GLANCE])
        .expect("protect 9292");
    let clock = limiter.clock().expect("kernel clock");
    let compiled = compile(rules, &clock).expect("rules compile");
    limiter.apply_rules(&compiled).expect("apply rules");
    limiter
}

fn host_rule(src: &str, action: Action, scope: Scope) -> KernelRule {
    let addr: IpAddr = src.parse().expect("test address");
    KernelRule {
        net: addr.into(),
        action,
        scope,
        expires: None,
    }
}

fn is_one_of(addr: IpAddr, sources: &[&str]) -> bool {
    sources
        .iter()
        .any(|s| s.parse::<IpAddr>().ok() == Some(addr))
}

/// Runs `frame`; `None` for frames under 14 bytes, which the kernel refuses to run (checked).
fn run(limiter: &Limiter, frame: &[u8]) -> Result<Option<Verdict>, TestCaseError> {
    let result = limiter.test_run(frame);
    if frame.len() < ETH_HEADER_LEN {
        prop_assert!(
            result.is_err(),
            "the kernel runs a {}-byte frame",
            frame.len()
        );
        return Ok(None);
    }
    match result {
        Ok(verdict) => Ok(Some(verdict)),
        Err(e) => Err(TestCaseError::fail(format!("test run failed: {e}"))),
    }
}

fn counters(limiter: &Limiter) -> Counters {
    limiter.counters().expect("read counters")
}

/// The one verdict counter a frame incremented, after checking that it incremented exactly
/// one, by one, and no event it could not have caused.
fn verdict_counter(delta: &Counters) -> Result<Counter, TestCaseError> {
    let verdicts: Vec<(Counter, u64)> = delta
        .iter()
        .filter(|(c, n)| c.is_verdict() && *n != 0)
        .collect();
    prop_assert_eq!(
        verdicts.len(),
        1,
        "verdict counters changed: {:?}",
        verdicts
    );
    let (counter, n) = verdicts[0];
    prop_assert_eq!(n, 1, "{:?} went up by {}", counter, n);
    prop_assert_eq!(delta.get(Counter::SourceInsertFailed), 0);
    prop_assert!(delta.get(Counter::SourceNew) <= 1);
    if delta.get(Counter::SourceNew) == 1 {
        prop_assert!(
            matches!(counter, Counter::PassProtected | Counter::PassAllowed),
            "a new source row for a frame counted as {:?}",
            counter
        );
    }
    Ok(counter)
}

// ---------------------------------------------------------------------------------------------
// Frame generators
// ---------------------------------------------------------------------------------------------

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        select(vec![
            &b"POST /v2/images HTTP/1.1\r\nHost: glance\r\n\r\n"[..],
            b"POST /v1/images/?x HTTP/1.1\r\n",
            b"POST /v2/images/ID/members HTTP/1.1\r\n",
            b"GET /v2/images HTTP/1.1\r\n",
            b"DELETE /v2/images/x HTTP/1.1\r\n",
            b"GET / HTTP/1.0\r\n",
        ])
        .prop_map(|p| p.to_vec()),
        vec(any::<u8>(), 0..64),
    ]
}

/// VLAN tags, mostly the two real TPIDs, sometimes anything.
fn vlan_tags(count: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u16>> {
    vec(
        prop_oneof![4 => Just(TPID_8021Q), 4 => Just(TPID_8021AD), 1 => any::<u16>()],
        count,
    )
}

/// An IPv6 extension header; fragments only first fragments unless `later_fragments`.
fn ext_header(later_fragments: bool) -> impl Strategy<Value = Ext> {
    let max_offset = if later_fragments { 3 } else { 0 };
    prop_oneof![
        (0u8..4).prop_map(|len8| Ext::HopByHop { len8 }),
        (0u8..4).prop_map(|len8| Ext::Routing { len8 }),
        (0u8..4).prop_map(|len8| Ext::DestOptions { len8 }),
        (0u16..=max_offset, any::<bool>())
            .prop_map(|(offset, more)| Ext::Fragment { offset, more }),
    ]
}

/// A frame the program reads completely: TCP to 9292, at most two VLAN tags, IPv4 options
/// (up to the 40 bytes a header holds), at most 8 extension headers, first fragments only.
fn valid_packet(sources: Vec<&'static str>) -> impl Strategy<Value = Packet> {
    (
        select(sources),
        vlan_tags(0..=2).prop_filter("real TPIDs", |t| {
            t.iter().all(|t| *t == TPID_8021Q || *t == TPID_8021AD)
        }),
        vec(any::<u8>(), 0..=40),
        any::<bool>(),
        vec(ext_header(false), 0..=8),
        any::<u8>(),
        vec(any::<u8>(), 0..=40),
        payload(),
    )
        .prop_map(
            |(src, tags, ip_options, more_fragments, ext, flags, tcp_options, payload)| {
                let mut p = Packet::tcp(src, GLANCE)
                    .flags(flags)
                    .vlans(&tags)
                    .tcp_options(&tcp_options);
                p.payload = payload;
                match p.src {
                    IpAddr::V4(_) => p.ipv4_options(&ip_options).ipv4_fragment(0, more_fragments),
                    IpAddr::V6(_) => p.ipv6_ext(&ext),
                }
            },
        )
}

/// A packet of any shape the builder makes: any source of ours, any port, any protocol,
/// up to three tags, later fragments, too many extension headers, oversized options.
fn any_packet() -> impl Strategy<Value = Packet> {
    // Half from blocked sources, so that both sides of the block are well exercised.
    let source = prop_oneof![select(BLOCKED.to_vec()), select(UNBLOCKED.to_vec())];
    (
        (
            source,
            prop_oneof![3 => Just(GLANCE), 1 => Just(80), 1 => any::<u16>()],
            prop_oneof![6 => Just(6u8), 1 => Just(UDP), 1 => any::<u8>()],
            vlan_tags(0..=3),
        ),
        (
            vec(any::<u8>(), 0..=44),
            prop_oneof![4 => Just(0u16), 1 => 0u16..0x2000],
            any::<bool>(),
            vec(ext_header(true), 0..=10),
        ),
        (any::<u8>(), vec(any::<u8>(), 0..=44), payload()),
    )
        .prop_map(
            |(
                (src, port, protocol, tags),
                (ip_options, fragment_offset, more_fragments, ext),
                (flags, tcp_options, payload),
            )| {
                let mut p = Packet::tcp(src, port)
                    .protocol(protocol)
                    .vlans(&tags)
                    .flags(flags)
                    .tcp_options(&tcp_options);
                p.payload = payload;
                match p.src {
                    IpAddr::V4(_) => p
                        .ipv4_options(&ip_options)
                        .ipv4_fragment(fragment_offset, more_fragments),
                    IpAddr::V6(_) => p.ipv6_ext(&ext),
                }
            },
        )
}

/// Damage done to a built frame.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite a byte anywhere.
    Set(Index, u8),
    /// Overwrite a byte among the first 128, where the headers are.
    SetHeaderByte(u8, u8),
    /// Cut the frame.
    Truncate(Index),
    /// Append bytes.
    Extend(Vec<u8>),
}

impl Mutation {
    fn apply(&self, frame: &mut Vec<u8>) {
        match self {
            Mutation::Set(at, value) if !frame.is_empty() => {
                let at = at.index(frame.len());
                frame[at] = *value;
            }
            Mutation::SetHeaderByte(at, value) => {
                if let Some(byte) = frame.get_mut(usize::from(*at & 0x7f)) {
                    *byte = *value;
                }
            }
            Mutation::Truncate(at) => frame.truncate(at.index(frame.len() + 1)),
            Mutation::Extend(bytes) => frame.extend_from_slice(bytes),
            Mutation::Set(..) => {}
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetHeaderByte(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..32).prop_map(Mutation::Extend),
    ]
}

/// One frame to run, kept as how it was made so a failure shows it readably.
#[derive(Clone, Debug)]
enum Case {
    /// A built packet, as built.
    Valid(Packet),
    /// A built packet, then damaged.
    Mutated(Packet, Vec<Mutation>),
    Random(Vec<u8>),
}

impl Case {
    fn frame(&self) -> Vec<u8> {
        match self {
            Case::Valid(p) => p.build(),
            Case::Mutated(p, mutations) => {
                let mut frame = p.build();
                for m in mutations {
                    m.apply(&mut frame);
                }
                frame
            }
            Case::Random(bytes) => bytes.clone(),
        }
    }
}

fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..200)
}

/// Mostly damaged packets, some intact ones of any shape, some plain random bytes.
fn any_case() -> impl Strategy<Value = Case> {
    prop_oneof![
        6 => (any_packet(), vec(mutation(), 1..4)).prop_map(|(p, m)| Case::Mutated(p, m)),
        2 => any_packet().prop_map(Case::Valid),
        1 => random_bytes().prop_map(Case::Random),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

#[test]
fn without_rules_arbitrary_bytes_always_pass() {
    limiter_tests::require_kernel!();
    let limiter = limiter_with(&[]);
    let ran = Cell::new(0u32);
    runner(4000)
        .run(&random_bytes(), |frame| {
            let before = counters(&limiter);
            let Some(verdict) = run(&limiter, &frame)? else {
                prop_assert_eq!(counters(&limiter), before, "a refused run counts nothing");
                return Ok(());
            };
            // Never Drop (no rule exists) and never Aborted: always Pass.
            prop_assert_eq!(verdict, Verdict::Pass);
            let counter = verdict_counter(&counters(&limiter).since(&before))?;
            prop_assert!(!matches!(
                counter,
                Counter::DropBlocked | Counter::DropBlockedAnyPort
            ));
            ran.set(ran.get() + 1);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ran.get() > 3000,
        "only {} frames were long enough to run",
        ran.get()
    );
}

#[test]
fn only_tcp_to_the_protected_port_from_a_blocked_source_is_dropped() {
    limiter_tests::require_kernel!();
    let rules: Vec<_> = BLOCKED
        .iter()
        .map(|src| host_rule(src, Action::Block, Scope::ProtectedPorts))
        .collect();
    let limiter = limiter_with(&rules);
    let (dropped, passed) = (Cell::new(0u32), Cell::new(0u32));
    runner(5000)
        .run(&any_case(), |case| {
            let frame = case.frame();
            let Some(verdict) = run(&limiter, &frame)? else {
                return Ok(());
            };
            let reading = reference::read(&frame);
            let blocked_to_glance = reading.is_some_and(|r| {
                is_one_of(r.src, &BLOCKED) && (r.tcp_dst_port == Some(GLANCE) || r.transport_hidden)
            });
            prop_assert_ne!(verdict, Verdict::Aborted);
            if verdict == Verdict::Drop {
                // The property asked for: a drop is always TCP to 9292 from a blocked source.
                prop_assert!(
                    blocked_to_glance,
                    "dropped, but the reference reads {:?}",
                    reading
                );
                dropped.set(dropped.get() + 1);
            } else {
                // And the converse: every such frame is dropped (no way around the block by
                // shaping a frame the reference still reads as TCP to 9292).
                prop_assert_eq!(verdict, Verdict::Pass);
                prop_assert!(
                    !blocked_to_glance,
                    "passed, but the reference reads {:?}",
                    reading
                );
                passed.set(passed.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Not vacuous: both outcomes happened often.
    assert!(
        dropped.get() > 100 && passed.get() > 1000,
        "dropped {}, passed {}",
        dropped.get(),
        passed.get()
    );
}

#[test]
fn valid_frames_to_the_protected_port_are_dropped_exactly_when_blocked() {
    limiter_tests::require_kernel!();
    let rules: Vec<_> = BLOCKED
        .iter()
        .map(|src| host_rule(src, Action::Block, Scope::ProtectedPorts))
        .collect();
    let limiter = limiter_with(&rules);
    let sources: Vec<&str> = BLOCKED.iter().chain(UNBLOCKED.iter()).copied().collect();
    runner(3000)
        .run(&valid_packet(sources), |packet| {
            let frame = packet.build();
            // The generator and the reference agree on what this frame is.
            let reading = reference::read(&frame);
            prop_assert_eq!(
                reading.map(|r| (r.src, r.tcp_dst_port)),
                Some((mapped_to_ipv4(packet.src), Some(GLANCE)))
            );
            let before = counters(&limiter);
            let verdict = run(&limiter, &frame)?.expect("valid frames are long enough");
            let counter = verdict_counter(&counters(&limiter).since(&before))?;
            if is_one_of(mapped_to_ipv4(packet.src), &BLOCKED) {
                prop_assert_eq!((verdict, counter), (Verdict::Drop, Counter::DropBlocked));
            } else {
                prop_assert_eq!((verdict, counter), (Verdict::Pass, Counter::PassProtected));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// How the program (and the reference) see an IPv4-mapped IPv6 source: as the IPv4 source.
fn mapped_to_ipv4(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[test]
fn every_frame_increments_exactly_one_verdict_counter() {
    limiter_tests::require_kernel!();
    // Every kind of rule, so that every verdict counter can occur.
    let limiter = limiter_with(&[
        host_rule(BLOCKED[0], Action::Block, Scope::AllPorts),
        host_rule(BLOCKED[1], Action::Block, Scope::ProtectedPorts),
        host_rule("203.0.113.9", Action::Block, Scope::AllPorts),
        host_rule("203.0.113.9", Action::Allow, Scope::ProtectedPorts),
    ]);
    let seen = Cell::new([0u32; Counter::COUNT as usize]);
    runner(5000)
        .run(&any_case(), |case| {
            let frame = case.frame();
            let before = counters(&limiter);
            let Some(verdict) = run(&limiter, &frame)? else {
                return Ok(());
            };
            let counter = verdict_counter(&counters(&limiter).since(&before))?;
            let dropped = matches!(counter, Counter::DropBlocked | Counter::DropBlockedAnyPort);
            prop_assert_eq!(
                verdict,
                if dropped {
                    Verdict::Drop
                } else {
                    Verdict::Pass
                },
                "verdict for a frame counted as {:?}",
                counter
            );
            // What the counter claims agrees with the reference reading.
            let reading = reference::read(&frame);
            match counter {
                Counter::PassProtected | Counter::PassAllowed => {
                    prop_assert!(
                        reading.is_some_and(|r| r.tcp_dst_port == Some(GLANCE)),
                        "{:?}: {:?}",
                        counter,
                        reading
                    );
                }
                Counter::DropBlocked => {
                    prop_assert!(
                        reading
                            .is_some_and(|r| r.tcp_dst_port == Some(GLANCE) || r.transport_hidden),
                        "{:?}: {:?}",
                        counter,
                        reading
                    );
                }
                Counter::DropBlockedAnyPort => {
                    prop_assert!(
                        reading.is_some_and(|r| is_one_of(r.src, &[BLOCKED[0]])),
                        "{:?}: {:?}",
                        counter,
                        reading
                    );
                }
                _ => {}
            }
            let mut tally = seen.get();
            tally[counter as usize] += 1;
            seen.set(tally);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let tally = seen.get();
    // The verdicts of trusted proxies' segments need a configured proxy and a banned client
    // behind it (tests/tests/packets_proxy.rs produces each of them); those of image creates
    // over budget, a budget and a source past it (tests/tests/packets_budget.rs).
    let proxy_verdicts = [
        Counter::RejectProxied,
        Counter::ResetProxied,
        Counter::DropProxied,
        Counter::RejectOverBudget,
        Counter::ResetOverBudget,
        Counter::DropOverBudget,
    ];
    let missing: Vec<&str> = Counter::ALL
        .iter()
        .filter(|c| c.is_verdict() && !proxy_verdicts.contains(c) && tally[**c as usize] == 0)
        .map(|c| c.name())
        .collect();
    assert!(
        missing.is_empty(),
        "verdicts never produced: {missing:?} (tally {tally:?})"
    );
}
