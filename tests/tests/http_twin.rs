//! The kernel's HTTP classifier (limiter-ebpf/src/http.rs) against its userspace twin
//! (`limiter_common::http_class`, the one the fuzzer runs): the same requests, near misses and
//! random bytes, under random path prefixes, go through the XDP program by
//! BPF_PROG_TEST_RUN and through the twin, and the class the source row counts must be the
//! twin's. This keeps the two in step: a change to either shows up here.

use std::{
    cell::{Cell, RefCell},
    net::IpAddr,
};

use limiter_common::{
    http_class::{classify, RequestClass},
    SourceStats,
};
use limiter_tests::frames::{Packet, TPID_8021Q};
use limiter_user::loader::{Limiter, LoadOptions, Verdict};
use proptest::{
    collection::vec,
    prelude::*,
    sample::select,
    test_runner::{Config, TestRunner},
};

const GLANCE: u16 = 9292;
const SOURCES: [&str; 2] = ["198.51.100.7", "2001:db8::7"];

/// Path prefixes to choose from: real ones, ones that contain others, the longest allowed.
const PREFIXES: [&str; 7] = [
    "/image",
    "/image-api",
    "/i",
    "/glance",
    "/v2",
    "/abcdefghijklmno",
    "/a/b/c/d/e/f/g/h",
];

/// One case: a payload, bytes of the frame past it, the prefixes in use, how it is framed.
#[derive(Clone, Debug)]
struct Case {
    payload: Vec<u8>,
    trailing: Vec<u8>,
    prefixes: Vec<&'static str>,
    source: &'static str,
    vlan: bool,
}

fn request_line() -> impl Strategy<Value = Vec<u8>> {
    // POST often: image creates need it, and most near misses are of it.
    let method = prop_oneof![
        3 => Just("POST "),
        2 => select(vec![
            "GET ", "HEAD ", "OPTIONS ", "PUT ", "PATCH ", "DELETE ", "POST", "POS ", "post ",
            "OPTIONS", "GET", "CONNECT ", "",
        ]),
    ];
    let prefix = select(vec![
        "",
        "",
        "",
        "/image",
        "/image-api",
        "/i",
        "/glance",
        "/v2",
        "/abcdefghijklmno",
        "/a/b/c/d/e/f/g/h",
        "/imag",
        "/image/",
    ]);
    let path = select(vec![
        "/v1/images",
        "/v2/images",
        "/v3/images",
        "/v2/image",
        "/v2/imagesx",
        "/v2/images/x",
        "/",
        "",
    ]);
    let tail = select(vec![
        "",
        " ",
        "?",
        "/",
        "/ ",
        "/?",
        "//",
        "/x",
        "? ",
        " HTTP/1.1\r\nHost: glance\r\n\r\n",
        "/ HTTP/1.1\r\n",
        "?marker=x HTTP/1.1\r\n",
    ]);
    (
        method,
        prefix,
        path,
        tail,
        vec(any::<u8>(), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(method, prefix, path, tail, noise, cut)| {
            let mut line = [method, prefix, path, tail].concat().into_bytes();
            line.extend(noise);
            // Cut anywhere, but mostly keep it whole.
            if cut.index(4) == 0 {
                line.truncate(cut.index(line.len() + 1));
            }
            line
        })
}

fn case() -> impl Strategy<Value = Case> {
    let payload = prop_oneof![
        8 => request_line(),
        1 => vec(any::<u8>(), 0..40),
    ];
    (
        payload,
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..24)],
        prop::sample::subsequence(PREFIXES.to_vec(), 0..=4).prop_shuffle(),
        select(SOURCES.to_vec()),
        any::<bool>(),
    )
        .prop_map(|(payload, trailing, prefixes, source, vlan)| Case {
            payload,
            trailing,
            prefixes,
            source,
            vlan,
        })
}

fn class_counts(row: Option<SourceStats>) -> [u64; 3] {
    row.map_or([0; 3], |s| {
        [s.image_create, s.other_write, s.read].map(u64::from)
    })
}

fn row(limiter: &Limiter, source: IpAddr) -> Option<SourceStats> {
    limiter
        .sources()
        .expect("read the source table")
        .into_iter()
        .find(|entry| entry.addr == source)
        .map(|entry| entry.stats)
}

/// The class the kernel counted for `case`, from the change of its source's row.
fn kernel_class(limiter: &mut Limiter, case: &Case) -> Result<Option<RequestClass>, TestCaseError> {
    let prefixes: Vec<String> = case.prefixes.iter().map(|p| p.to_string()).collect();
    limiter
        .set_path_prefixes(&prefixes)
        .expect("set path prefixes");
    let source: IpAddr = case.source.parse().expect("test source");
    let (frame, _) = frame(case);
    let before = class_counts(row(limiter, source));
    let verdict = limiter.test_run(&frame).expect("test run");
    prop_assert_eq!(verdict, Verdict::Pass);
    let after = class_counts(row(limiter, source));
    let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    Ok(match delta[..] {
        [0, 0, 0] => None,
        [1, 0, 0] => Some(RequestClass::ImageCreate),
        [0, 1, 0] => Some(RequestClass::OtherWrite),
        [0, 0, 1] => Some(RequestClass::Read),
        _ => {
            return Err(TestCaseError::fail(format!(
                "class counters moved by {delta:?}"
            )))
        }
    })
}

/// The frame `case` is sent in: the builder pads it to Ethernet's 60 bytes, then the case's
/// trailing bytes follow (bytes past the IP length, which the kernel may read but not count).
fn frame(case: &Case) -> (Vec<u8>, usize) {
    let mut packet = Packet::request(case.source, GLANCE, &case.payload);
    if case.vlan {
        packet = packet.vlans(&[TPID_8021Q]);
    }
    // Headers are at least 54 bytes, so a 64-byte payload is never padded.
    let mut probe = packet.clone();
    probe.payload = vec![0; 64];
    let payload_at = probe.build().len() - 64;
    let mut frame = packet.build();
    frame.extend_from_slice(&case.trailing);
    (frame, payload_at)
}

/// What the twin says, given what the kernel can see: the payload and the frame after it.
fn twin_class(case: &Case) -> Option<RequestClass> {
    let (frame, payload_at) = frame(case);
    let prefixes: Vec<&[u8]> = case.prefixes.iter().map(|p| p.as_bytes()).collect();
    classify(&frame[payload_at..], case.payload.len(), &prefixes)
}

#[test]
fn the_kernel_classifies_requests_as_the_userspace_twin_does() {
    limiter_tests::require_kernel!();
    let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the XDP program");
    limiter
        .set_protected_ports(&[GLANCE])
        .expect("protect 9292");
    // The runner's closure is `Fn`; setting the prefixes of each case needs `&mut`.
    let limiter = RefCell::new(limiter);
    let classified = Cell::new([0u32; 4]);
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            let kernel = kernel_class(&mut limiter.borrow_mut(), &case)?;
            let twin = twin_class(&case);
            prop_assert_eq!(
                kernel,
                twin,
                "payload {:?}, prefixes {:?}",
                String::from_utf8_lossy(&case.payload),
                case.prefixes
            );
            let mut seen = classified.get();
            seen[kernel.map_or(3, |c| c as usize)] += 1;
            classified.set(seen);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Every class came up, image creates under prefixes among them.
    let seen = classified.get();
    assert!(seen.iter().all(|n| *n > 50), "classes seen: {seen:?}");
}
