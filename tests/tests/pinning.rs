//! Restart without a gap: maps and the XDP link pinned under bpffs keep dropping a banned
//! source after the process that attached them is gone; a new instance adopts them (same
//! rules and counts, one attachment); detaching removes everything.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use limiter_tests::{
    http::{connect_from, request, StandInServer},
    netns::Topology,
};
use limiter_user::{
    loader::{detach_pinned, pinned_interfaces, Limiter, LoadOptions, PINNED_MAPS},
    rules::{compile, Action, KernelRule, Scope},
};

const GLANCE_PORT: u16 = 9292;
/// How long the kernel gets to release an unpinned link (milliseconds when idle).
const DETACH_DEADLINE: Duration = Duration::from_secs(10);
const BANNED: &str = Topology::CLIENT_V4[0];
const OTHER: &str = Topology::CLIENT_V4[1];

/// A pin directory of this test run, detached and removed on drop (also on panic).
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/glance-limiter-test-{}",
            std::process::id()
        ));
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = detach_pinned(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

fn load(pins: &Path) -> Limiter {
    let mut limiter =
        Limiter::load_pinned(&LoadOptions::default(), pins).expect("load with pinned maps");
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    limiter
}

fn block(limiter: &mut Limiter, addr: &str) {
    let rule = KernelRule {
        net: format!("{addr}/32").parse().unwrap(),
        action: Action::Block,
        scope: Scope::ProtectedPorts,
        expires: None,
    };
    let compiled = compile(&[rule], &limiter.clock().unwrap()).unwrap();
    limiter.apply_rules(&compiled).unwrap();
}

/// The ids of the TCX egress programs on `iface` in the server's namespace: the limiter's
/// egress program counts Glance's answers beside the XDP program, pinned the same way.
fn egress_program_ids(topo: &Topology, iface: &str) -> Vec<u32> {
    topo.server.run(|| {
        SchedClassifier::query_tcx(iface, TcAttachType::Egress)
            .map(|(_, programs)| programs.iter().map(|p| p.id()).collect())
            .unwrap_or_default()
    })
}

fn connects(topo: &Topology, src: &str) -> bool {
    let timeout = Duration::from_millis(700);
    topo.client.run(|| {
        connect_from(src, Topology::SERVER_V4, GLANCE_PORT, timeout)
            .and_then(|mut s| request(&mut s, "GET", "/v2/images", ""))
            .is_ok_and(|status| status == 200)
    })
}

#[test]
fn pinned_attachment_outlives_the_process_and_is_adopted_then_detached() {
    limiter_tests::require_kernel!();
    let topo = Topology::new();
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let pins = PinDir::new();

    // First instance: attach, see the banned source once, ban it.
    let mut first = load(&pins.0);
    topo.server
        .run(|| first.attach(topo.server_iface))
        .expect("attach");
    assert!(connects(&topo, BANNED), "before the ban");
    block(&mut first, BANNED);
    assert!(!connects(&topo, BANNED), "the ban drops the next connect");
    let programs_before = topo.server.xdp_program_ids(topo.server_iface);
    assert_eq!(
        programs_before.len(),
        1,
        "one attachment: {programs_before:?}"
    );
    assert_eq!(
        pinned_interfaces(&pins.0),
        vec![topo.server_iface.to_owned()]
    );
    let egress_before = egress_program_ids(&topo, topo.server_iface);
    assert_eq!(egress_before.len(), 1, "one egress attachment");
    assert!(pins
        .0
        .join(format!("egress-{}", topo.server_iface))
        .exists());

    // The process's handle goes away (as with kill -9): the kernel keeps dropping.
    drop(first);
    assert!(
        !connects(&topo, BANNED),
        "still banned with no process holding the program"
    );
    assert!(connects(&topo, OTHER), "others still served");
    assert_eq!(topo.server.xdp_program_ids(topo.server_iface).len(), 1);

    // Restart: same maps (the ban and the counts are there without re-applying anything),
    // the pinned link adopted, still exactly one attachment.
    let mut second = load(&pins.0);
    let rows = second.sources().unwrap();
    assert!(
        rows.iter()
            .any(|r| r.addr.to_string() == BANNED && r.stats.syns >= 1),
        "counts survive the restart: {rows:?}"
    );
    topo.server
        .run(|| second.attach(topo.server_iface))
        .expect("adopt");
    let programs_after = topo.server.xdp_program_ids(topo.server_iface);
    assert_eq!(
        programs_after.len(),
        1,
        "no second attachment: {programs_after:?}"
    );
    assert_ne!(
        programs_after, programs_before,
        "the new program was swapped in"
    );
    assert!(!connects(&topo, BANNED), "the ban survived the restart");
    assert!(connects(&topo, OTHER));
    let egress_after = egress_program_ids(&topo, topo.server_iface);
    assert_eq!(egress_after.len(), 1, "no second egress attachment");
    assert_ne!(
        egress_after, egress_before,
        "the new egress program was swapped in"
    );
    drop(second);

    // Detach removes the link and every map pin; traffic flows again.
    let report = detach_pinned(&pins.0).expect("detach");
    assert_eq!(report.links, vec![topo.server_iface.to_owned()]);
    let mut maps = report.maps.clone();
    maps.sort();
    let mut expected: Vec<String> = PINNED_MAPS.iter().map(|m| m.to_string()).collect();
    expected.sort();
    assert_eq!(maps, expected);
    assert!(!pins.0.exists());
    // The link goes when the kernel frees the unlinked pin's inode, after an RCU grace
    // period: on a busy machine, a moment after the unlink returns.
    let unlinked = Instant::now();
    while !topo.server.xdp_program_ids(topo.server_iface).is_empty() {
        assert!(
            unlinked.elapsed() < DETACH_DEADLINE,
            "XDP left the interface within {DETACH_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    while !egress_program_ids(&topo, topo.server_iface).is_empty() {
        assert!(
            unlinked.elapsed() < DETACH_DEADLINE,
            "the egress program left the interface within {DETACH_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(connects(&topo, BANNED), "no ban without the program");
    assert_eq!(
        detach_pinned(&pins.0).unwrap(),
        Default::default(),
        "detaching twice is harmless"
    );
}
