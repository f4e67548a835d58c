//! An upgrade from a running older version: its per-source table pinned in the previous row
//! layout (two cache lines a row), its program dropping a banned source through the pinned
//! block trie. This version loads, carries the old rows over into its one-cache-line table,
//! replaces the pin, and swaps its program into the pinned link: the banned source is never
//! let through and the others are never refused while that happens, and the old counts are
//! in the new table. A changed `source_capacity` is carried over the same way, and so are
//! tables pinned before a power-of-two capacity got one row more, and the global counters of
//! a version that had fewer.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, PerCpuArray, PerCpuValues},
    programs::{links::FdLink, Xdp, XdpMode},
    util::nr_cpus,
    EbpfLoader,
};
use limiter_common::{
    maps::Capacity, BlockRule, Counter, SourceStats, BLOCK_MAP, CLIENT_VIA_MAP, COUNTERS_MAP,
    PINNED_MAPS, PORTS_MAP, SOURCES_MAP, SOURCE_ROW_V1_BYTES,
};
use limiter_tests::{
    frames::Packet,
    http::{connect_from, request, StandInServer},
    netns::Topology,
};
use limiter_user::{
    ebpf_objects,
    loader::{detach_pinned, Limiter, LoadOptions},
    rules::{compile, Action, KernelRule, Scope},
};

const GLANCE_PORT: u16 = 9292;
const BANNED: &str = Topology::CLIENT_V4[0];
const OTHER: &str = Topology::CLIENT_V4[1];
/// The legitimate client's requests before the upgrade: counts the new table must hold.
const REQUESTS_BEFORE: usize = 5;

/// A pin directory of this test run, detached and removed on drop (also on panic).
struct PinDir(PathBuf);

impl PinDir {
    /// `test`: tells apart the directories of tests running at once.
    fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/glance-limiter-upgrade-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the pin directory");
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

/// This build's object loaded with every map pinned under `pins`, the maps named in `sizes`
/// at the entry counts an older version gave them: that version's pinned state, to upgrade
/// from.
fn pinned_as_older(pins: &PinDir, sizes: &[(&str, u32)]) -> aya::Ebpf {
    let mut loader = EbpfLoader::new();
    for &(name, entries) in sizes {
        loader.map_max_entries(name, entries);
    }
    for name in PINNED_MAPS {
        loader.map_pin_path(name, pins.0.join(name));
    }
    loader
        .load(ebpf_objects::LIMITER)
        .expect("the older version's maps")
}

/// The rows of `limiter`'s per-source table by address.
fn rows_by_address(limiter: &Limiter) -> HashMap<String, SourceStats> {
    limiter
        .sources()
        .unwrap()
        .into_iter()
        .map(|row| (row.addr.to_string(), row.stats))
        .collect()
}

/// The table key of the address `src`.
fn key(src: &str) -> limiter_common::SourceAddr {
    limiter_common::SourceAddr::from_octets(limiter_user::net::addr_to_key(src.parse().unwrap()))
}

fn ban_rules(
    limiter_clock: &limiter_user::clock::KernelClock,
) -> limiter_user::rules::CompiledRules {
    let rule = KernelRule {
        net: format!("{BANNED}/32").parse().unwrap(),
        action: Action::Block,
        scope: Scope::ProtectedPorts,
        expires: None,
    };
    compile(&[rule], limiter_clock).unwrap()
}

/// The older version, as a daemon of it leaves things: its table, the block trie (holding
/// the ban) and the ports pinned, its program attached to the server's interface through a
/// pinned link; then its process goes.
fn run_older_version(topo: &Topology, pins: &Path) {
    let mut old = EbpfLoader::new()
        .map_pin_path(SOURCES_MAP, pins.join(SOURCES_MAP))
        .map_pin_path(BLOCK_MAP, pins.join(BLOCK_MAP))
        .map_pin_path(PORTS_MAP, pins.join(PORTS_MAP))
        .load(ebpf_objects::LEGACY_V1)
        .expect("load the older version's program");
    {
        let mut ports: Array<&mut MapData, u64> =
            Array::try_from(old.map_mut(PORTS_MAP).unwrap()).unwrap();
        ports
            .set(u32::from(GLANCE_PORT >> 6), 1u64 << (GLANCE_PORT & 63), 0)
            .unwrap();
    }
    {
        // The clock of the rules is any limiter's: the same kernel.
        let clock = Limiter::load(&LoadOptions::default())
            .unwrap()
            .clock()
            .unwrap();
        let mut trie: LpmTrie<&mut MapData, [u8; 16], BlockRule> =
            LpmTrie::try_from(old.map_mut(BLOCK_MAP).unwrap()).unwrap();
        for (&(prefix_len, addr), value) in &ban_rules(&clock).block {
            trie.insert(&Key::new(prefix_len, addr), value, 0).unwrap();
        }
    }
    let program: &mut Xdp = old
        .program_mut("glance_limiter")
        .unwrap()
        .try_into()
        .unwrap();
    program
        .load()
        .expect("the older version's program verifies");
    let link_id = topo
        .server
        .run(|| program.attach(topo.server_iface, XdpMode::Driver))
        .expect("attach the older version");
    let link = FdLink::try_from(program.take_link(link_id).unwrap()).expect("a bpf link");
    link.pin(pins.join(format!("link-{}", topo.server_iface)))
        .expect("pin the older version's link");
}

/// A probe's handshake may take this long: time for a busy machine to schedule it, and short
/// of the SYN's first retransmission (1 s), so a SYN dropped during the swap is never hidden
/// by its retransmission getting through.
const PROBE_CONNECT: Duration = Duration::from_millis(900);

fn served(topo: &Topology, src: &str) -> bool {
    topo.client.run(|| {
        connect_from(src, Topology::SERVER_V4, GLANCE_PORT, PROBE_CONNECT)
            .and_then(|mut s| request(&mut s, "GET", "/v2/images", ""))
            .is_ok_and(|status| status == 200)
    })
}

#[test]
fn a_running_older_version_is_upgraded_in_place_without_a_gap() {
    limiter_tests::require_kernel!();
    let topo = Topology::new();
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let pins = PinDir::new("older");

    run_older_version(&topo, &pins.0);
    let old_layout = MapData::from_pin(pins.0.join(SOURCES_MAP)).unwrap();
    assert_eq!(old_layout.info().unwrap().value_size(), SOURCE_ROW_V1_BYTES);
    drop(old_layout);
    assert!(
        !served(&topo, BANNED),
        "the older version drops the banned source"
    );
    for _ in 0..REQUESTS_BEFORE {
        assert!(served(&topo, OTHER), "the older version serves the others");
    }
    let programs_before = topo.server.xdp_program_ids(topo.server_iface);
    assert_eq!(programs_before.len(), 1, "{programs_before:?}");

    // Probes run through the whole upgrade: the banned source must never get through, the
    // other never be refused.
    let stop = AtomicBool::new(false);
    let (banned_through, other_refused, probes) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let upgraded = thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if served(&topo, BANNED) {
                    banned_through.fetch_add(1, Ordering::Relaxed);
                }
                if !served(&topo, OTHER) {
                    other_refused.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        });
        // The new version starts as its daemon does: load over the pins, the ports and its
        // rule store's rules, then attach (adopting the pinned link).
        let mut limiter = Limiter::load_pinned(&LoadOptions::default(), &pins.0)
            .expect("load over the older version's pins");
        limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
        let clock = limiter.clock().unwrap();
        limiter.apply_rules(&ban_rules(&clock)).unwrap();
        topo.server
            .run(|| limiter.attach(topo.server_iface))
            .expect("adopt the pinned link");
        // A few probes after the swap too.
        let after = probes.load(Ordering::Relaxed) + 3;
        while probes.load(Ordering::Relaxed) < after {
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        limiter
    });
    let probes = probes.load(Ordering::Relaxed);
    println!("{probes} probe pairs across the upgrade");
    assert_eq!(
        banned_through.load(Ordering::Relaxed),
        0,
        "the ban never lapsed"
    );
    assert_eq!(
        other_refused.load(Ordering::Relaxed),
        0,
        "the others were always served"
    );

    // One attachment, now this version's program; the table in the new layout, pinned.
    let programs_after = topo.server.xdp_program_ids(topo.server_iface);
    assert_eq!(programs_after.len(), 1, "{programs_after:?}");
    assert_ne!(
        programs_after, programs_before,
        "the link runs the new program"
    );
    let pinned = MapData::from_pin(pins.0.join(SOURCES_MAP)).unwrap();
    assert_eq!(
        pinned.info().unwrap().value_size() as usize,
        size_of::<SourceStats>()
    );
    // The older version's counts were carried over (and the new program added to them).
    let rows = rows_by_address(&upgraded);
    let other = rows.get(OTHER).expect("the other client's row");
    assert!(
        other.syns as usize >= REQUESTS_BEFORE,
        "counts from before the upgrade: {other:?}"
    );
    assert!(served(&topo, OTHER) && !served(&topo, BANNED));
}

/// A changed `source_capacity` is carried over the same way: the rows move into a table of
/// the new size, whose pin replaces the old one.
#[test]
fn a_changed_source_capacity_carries_the_table_over() {
    limiter_tests::require_kernel!();
    let pins = PinDir::new("capacity");
    let options = |source_capacity| LoadOptions { source_capacity };
    let sources: Vec<String> = (1..=20).map(|i| format!("203.0.113.{i}")).collect();
    {
        let mut first = Limiter::load_pinned(&options(4096), &pins.0).unwrap();
        first.set_protected_ports(&[GLANCE_PORT]).unwrap();
        for src in &sources {
            first
                .test_run(&Packet::syn(src, GLANCE_PORT).build())
                .unwrap();
        }
    }
    let second = Limiter::load_pinned(&options(8192), &pins.0).expect("a larger table");
    let pinned = MapData::from_pin(pins.0.join(SOURCES_MAP)).unwrap();
    assert_eq!(
        pinned.info().unwrap().max_entries(),
        Capacity::Sources.entries(8192)
    );
    let rows = rows_by_address(&second);
    assert_eq!(rows.len(), sources.len(), "{rows:?}");
    assert!(sources.iter().all(|src| rows[src].syns == 1), "{rows:?}");
}

/// Versions before the wider table pinned the per-source tables at exactly the configured
/// capacity (65,536 by default: as many hash buckets as rows). With the same configuration
/// this build carries them over into tables of one row more, twice the buckets, and keeps
/// every row and every client's proxy.
#[test]
fn tables_pinned_at_a_power_of_two_are_widened_with_their_rows() {
    limiter_tests::require_kernel!();
    let pins = PinDir::new("widened");
    let capacity = 4096;
    let sources: Vec<String> = (1..=20).map(|i| format!("203.0.113.{i}")).collect();
    {
        let mut ebpf = pinned_as_older(
            &pins,
            &[(SOURCES_MAP, capacity), (CLIENT_VIA_MAP, capacity)],
        );
        let mut table: aya::maps::HashMap<_, limiter_common::SourceAddr, SourceStats> =
            aya::maps::HashMap::try_from(ebpf.map_mut(SOURCES_MAP).unwrap()).unwrap();
        for src in &sources {
            let row = SourceStats {
                syns: 7,
                ..SourceStats::default()
            };
            table.insert(key(src), row, 0).unwrap();
        }
        let mut via: aya::maps::HashMap<_, limiter_common::SourceAddr, limiter_common::SourceAddr> =
            aya::maps::HashMap::try_from(ebpf.map_mut(CLIENT_VIA_MAP).unwrap()).unwrap();
        via.insert(key(&sources[0]), key("198.51.100.2"), 0)
            .unwrap();
    }
    let options = LoadOptions {
        source_capacity: capacity,
    };
    let limiter = Limiter::load_pinned(&options, &pins.0).expect("carried over");
    for name in [SOURCES_MAP, CLIENT_VIA_MAP] {
        let pinned = MapData::from_pin(pins.0.join(name)).unwrap();
        let entries = pinned.info().unwrap().max_entries();
        assert_eq!(entries, capacity + 1, "{name}");
        assert_eq!(entries.next_power_of_two(), 2 * capacity, "{name}");
    }
    let rows = rows_by_address(&limiter);
    assert_eq!(rows.len(), sources.len(), "{rows:?}");
    assert!(sources.iter().all(|src| rows[src].syns == 7), "{rows:?}");
    let via = limiter.client_via().unwrap();
    let client: std::net::IpAddr = sources[0].parse().unwrap();
    assert_eq!(
        via.get(&client).map(|proxy| proxy.to_string()).as_deref(),
        Some("198.51.100.2"),
        "{via:?}"
    );
    assert_eq!(via.len(), 1, "{via:?}");
}

/// A version that counted fewer global counters pinned them: this build carries each over to
/// the same index (counters are only ever added at the end) and counts its new ones from 0.
#[test]
fn global_counters_of_a_version_with_fewer_are_carried_over() {
    limiter_tests::require_kernel!();
    let pins = PinDir::new("counters");
    let older = Counter::COUNT - 4;
    {
        let mut ebpf = pinned_as_older(&pins, &[(COUNTERS_MAP, older)]);
        let mut counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(ebpf.map_mut(COUNTERS_MAP).unwrap()).unwrap();
        let cpus = nr_cpus().unwrap();
        for index in 0..older {
            let values = PerCpuValues::try_from(vec![u64::from(index) + 1; cpus]).unwrap();
            counters.set(index, values, 0).unwrap();
        }
    }
    let limiter = Limiter::load_pinned(&LoadOptions::default(), &pins.0).expect("carried over");
    let pinned = MapData::from_pin(pins.0.join(COUNTERS_MAP)).unwrap();
    assert_eq!(pinned.info().unwrap().max_entries(), Counter::COUNT);
    let cpus = nr_cpus().unwrap() as u64;
    let counters = limiter.counters().unwrap();
    for counter in Counter::ALL {
        let index = counter as u32;
        let expected = if index < older {
            (u64::from(index) + 1) * cpus
        } else {
            0
        };
        assert_eq!(counters.get(counter), expected, "{}", counter.name());
    }
}

/// The version before the budget moved into the row kept rows of the same size: `packets` a
/// `u64` where this layout has `packets` and the budget's low half, `flags` a `u32` where it
/// has `flags` and the budget's high half. Such a row is adopted as it is (no migration):
/// its counts and flags read the same and its budget is whole. So is a row whose budget time
/// no budget could have set (the halves torn between two CPUs): never a create refused for
/// it. A budget time that is merely spent is honoured, so the field is what the program reads.
#[test]
fn rows_of_the_same_size_layout_before_the_budget_keep_their_counts_and_a_whole_budget() {
    use limiter_common::{BUDGET_TIME_MASK, BUDGET_TIME_SHIFT};
    use limiter_user::{budget::ImageCreateBudget, loader::Verdict};

    limiter_tests::require_kernel!();
    const PER_MINUTE: u32 = 3;
    const OLDER: &str = "203.0.113.31";
    const TORN: &str = "203.0.113.32";
    const SPENT: &str = "203.0.113.33";
    let pins = PinDir::new("budget");
    let mut limiter = Limiter::load_pinned(&LoadOptions::default(), &pins.0).unwrap();
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    let clock = limiter.clock().unwrap();
    limiter.set_reject_response(clock.hz).unwrap();
    let budget = ImageCreateBudget::of_policy(Some(PER_MINUTE), true, true)
        .unwrap()
        .kernel_config(clock.hz);
    limiter.set_image_create_budget(Some(budget)).unwrap();

    // The older layout's bytes: packets (u64) 7, bytes 700, first and last seen now, no
    // cached verdict, syns 2, one read, flags (u32) 0.
    let mut older = [0u8; 64];
    older[0..8].copy_from_slice(&7u64.to_ne_bytes());
    older[8..16].copy_from_slice(&700u64.to_ne_bytes());
    older[16..24].copy_from_slice(&clock.jiffies.to_ne_bytes());
    older[24..32].copy_from_slice(&clock.jiffies.to_ne_bytes());
    older[40..44].copy_from_slice(&2u32.to_ne_bytes());
    older[52..56].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: `SourceStats` is 64 bytes of plain integers, any bit pattern valid.
    let older: SourceStats = unsafe { std::mem::transmute(older) };
    assert_eq!((older.packets, older.budget_time(), older.flags), (7, 0, 0));

    let now_fixed = clock.jiffies << BUDGET_TIME_SHIFT;
    let with_budget_time = |time: u64| {
        let time = time & BUDGET_TIME_MASK;
        SourceStats {
            first_seen: clock.jiffies,
            last_seen: clock.jiffies,
            budget_low: time as u32,
            budget_high: (time >> 32) as u16,
            ..SourceStats::default()
        }
    };
    let window = budget.tolerance + budget.interval;
    let rows = [
        (OLDER, older),
        (TORN, with_budget_time(now_fixed + 5 * window)),
        (SPENT, with_budget_time(now_fixed + window - 1)),
    ];
    {
        let mut table: aya::maps::HashMap<MapData, limiter_common::SourceAddr, SourceStats> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
                MapData::from_pin(pins.0.join(SOURCES_MAP)).unwrap(),
            ))
            .unwrap();
        for (src, row) in rows {
            table.insert(key(src), row, 0).unwrap();
        }
    }

    let create = |src: &str| {
        let payload = b"POST /v2/images HTTP/1.1\r\nHost: glance\r\nContent-Length: 2\r\n\r\n{}";
        limiter
            .test_run(&Packet::request(src, GLANCE_PORT, payload).build())
            .unwrap()
    };
    assert_eq!(create(SPENT), Verdict::Tx, "a spent budget refuses");
    for src in [OLDER, TORN] {
        for n in 1..=PER_MINUTE {
            assert_eq!(
                create(src),
                Verdict::Pass,
                "{src}: create {n} is within budget"
            );
        }
        assert_eq!(
            create(src),
            Verdict::Tx,
            "{src}: the create past it is refused"
        );
    }
    let rows = rows_by_address(&limiter);
    let adopted = rows[OLDER];
    let creates = PER_MINUTE + 1;
    assert_eq!(
        (
            adopted.packets,
            adopted.syns,
            adopted.read,
            adopted.image_create
        ),
        (7 + creates, 2, 1, creates),
        "{adopted:?}"
    );
    assert!(adopted.bytes > 700, "{adopted:?}");
}
