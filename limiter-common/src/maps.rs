//! The shape of every map the daemon pins, defined once: the kernel program declares its maps
//! with these names, capacities and types; user space checks a pinned map against the spec
//! before reusing it, and pins, migrates and removes exactly this list.

use core::mem::size_of;

use crate::{
    AllowRule, BlockRule, BudgetConfig, Config, ConnKey, ConnState, Counter, CpuRelays, PathPrefix,
    PendingCreates, ProxyRelays, RejectTemplate, SourceAddr, SourceCreates, SourceStats,
    TrustedProxy, ALLOW_MAP, BLOCK_MAP, BUDGET_CONFIG_MAP, CLIENT_VIA_MAP, CONFIG_MAP,
    COUNTERS_MAP, CREATES_CAPACITY, CREATES_MAP, CREATE_CONNS_MAP, MAX_PATH_PREFIXES,
    PATH_PREFIXES_MAP, PORTS_MAP, PORT_BITMAP_WORDS, PROXY_CONNS_MAP, PROXY_CONN_CAPACITY,
    PROXY_RELAYS_CAPACITY, PROXY_RELAYS_CPU_MAP, PROXY_RELAYS_MAP, PROXY_RELAY_SLOTS, REJECT_MAP,
    RULE_CAPACITY, SOURCES_MAP, TRUSTED_PROXIES_MAP,
};

/// Bytes of a key of the prefix tries (rules, trusted proxies): the kernel's
/// `bpf_lpm_trie_key_u8` with 16 data bytes, a `u32` prefix length in bits then the address
/// in the IPv4-mapped key space ([`SourceAddr`]'s bytes).
pub const LPM_KEY_BYTES: u32 = 4 + 16;

/// The map types the project uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    LruHash,
    LpmTrie,
    Array,
    PerCpuArray,
}

/// How many entries a map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    Fixed(u32),
    /// The per-source table's capacity, chosen by the configuration (`source_capacity`).
    Sources,
}

impl Capacity {
    /// The map's `max_entries` in the kernel.
    pub const fn entries(self, source_capacity: u32) -> u32 {
        match self {
            Capacity::Fixed(entries) => entries,
            Capacity::Sources => hash_entries_for_rows(source_capacity),
        }
    }
}

/// The `max_entries` of a hash table meant to hold `rows` rows. The kernel gives a hash map
/// `max_entries.next_power_of_two()` buckets, so a power-of-two size (the default 65,536)
/// gets one bucket per row: a lookup of a key the full table does not hold, which is every
/// new source's first packet, then walks a row on average, a cache miss into the whole
/// table. One entry more doubles the buckets (16 bytes each: 1 MiB more at 65,536) and
/// halves that walk; other sizes already have more buckets than rows.
pub const fn hash_entries_for_rows(rows: u32) -> u32 {
    if rows.is_power_of_two() && rows < u32::MAX / 2 {
        rows + 1
    } else {
        rows
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_bytes: u32,
    pub value_bytes: u32,
    pub capacity: Capacity,
}

const fn bytes<T>() -> u32 {
    size_of::<T>() as u32
}

/// Every map that holds state: all are pinned, so a restart loses neither rules nor counts,
/// nor what is known of proxies' backend connections. (`LAST_DROP`, the program's per-CPU
/// one-entry cache of its last drop, and `TEXT_WINDOW`, its scratch space, are not: the first
/// is checked against the rules generation on every use, the second rewritten before use.)
pub const PINNED_MAP_SPECS: [MapSpec; 16] = [
    MapSpec {
        name: SOURCES_MAP,
        kind: MapKind::LruHash,
        key_bytes: bytes::<SourceAddr>(),
        value_bytes: bytes::<SourceStats>(),
        capacity: Capacity::Sources,
    },
    MapSpec {
        name: CLIENT_VIA_MAP,
        kind: MapKind::LruHash,
        key_bytes: bytes::<SourceAddr>(),
        value_bytes: bytes::<SourceAddr>(),
        capacity: Capacity::Sources,
    },
    MapSpec {
        name: PROXY_RELAYS_MAP,
        kind: MapKind::LruHash,
        key_bytes: bytes::<SourceAddr>(),
        value_bytes: bytes::<ProxyRelays>(),
        capacity: Capacity::Fixed(PROXY_RELAYS_CAPACITY),
    },
    MapSpec {
        name: PROXY_RELAYS_CPU_MAP,
        kind: MapKind::PerCpuArray,
        key_bytes: 4,
        value_bytes: bytes::<CpuRelays>(),
        capacity: Capacity::Fixed(PROXY_RELAY_SLOTS),
    },
    MapSpec {
        name: BLOCK_MAP,
        kind: MapKind::LpmTrie,
        key_bytes: LPM_KEY_BYTES,
        value_bytes: bytes::<BlockRule>(),
        capacity: Capacity::Fixed(RULE_CAPACITY),
    },
    MapSpec {
        name: ALLOW_MAP,
        kind: MapKind::LpmTrie,
        key_bytes: LPM_KEY_BYTES,
        value_bytes: bytes::<AllowRule>(),
        capacity: Capacity::Fixed(RULE_CAPACITY),
    },
    MapSpec {
        name: PORTS_MAP,
        kind: MapKind::Array,
        key_bytes: 4,
        value_bytes: bytes::<u64>(),
        capacity: Capacity::Fixed(PORT_BITMAP_WORDS),
    },
    MapSpec {
        name: CONFIG_MAP,
        kind: MapKind::Array,
        key_bytes: 4,
        value_bytes: bytes::<Config>(),
        capacity: Capacity::Fixed(1),
    },
    MapSpec {
        name: COUNTERS_MAP,
        kind: MapKind::PerCpuArray,
        key_bytes: 4,
        value_bytes: bytes::<u64>(),
        capacity: Capacity::Fixed(Counter::COUNT),
    },
    MapSpec {
        name: TRUSTED_PROXIES_MAP,
        kind: MapKind::LpmTrie,
        key_bytes: LPM_KEY_BYTES,
        value_bytes: bytes::<TrustedProxy>(),
        capacity: Capacity::Fixed(RULE_CAPACITY),
    },
    MapSpec {
        name: PROXY_CONNS_MAP,
        kind: MapKind::LruHash,
        key_bytes: bytes::<ConnKey>(),
        value_bytes: bytes::<ConnState>(),
        capacity: Capacity::Fixed(PROXY_CONN_CAPACITY),
    },
    MapSpec {
        name: PATH_PREFIXES_MAP,
        kind: MapKind::Array,
        key_bytes: 4,
        value_bytes: bytes::<PathPrefix>(),
        capacity: Capacity::Fixed(MAX_PATH_PREFIXES),
    },
    MapSpec {
        name: REJECT_MAP,
        kind: MapKind::Array,
        key_bytes: 4,
        value_bytes: bytes::<RejectTemplate>(),
        capacity: Capacity::Fixed(1),
    },
    MapSpec {
        name: BUDGET_CONFIG_MAP,
        kind: MapKind::Array,
        key_bytes: 4,
        value_bytes: bytes::<BudgetConfig>(),
        capacity: Capacity::Fixed(1),
    },
    MapSpec {
        name: CREATES_MAP,
        kind: MapKind::LruHash,
        key_bytes: bytes::<SourceAddr>(),
        value_bytes: bytes::<SourceCreates>(),
        capacity: Capacity::Fixed(CREATES_CAPACITY),
    },
    MapSpec {
        name: CREATE_CONNS_MAP,
        kind: MapKind::LruHash,
        key_bytes: bytes::<ConnKey>(),
        value_bytes: bytes::<PendingCreates>(),
        capacity: Capacity::Fixed(PROXY_CONN_CAPACITY),
    },
];

/// The names of [`PINNED_MAP_SPECS`], in the same order.
pub const PINNED_MAPS: [&str; PINNED_MAP_SPECS.len()] = {
    let mut names = [""; PINNED_MAP_SPECS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = PINNED_MAP_SPECS[i].name;
        i += 1;
    }
    names
};

/// The spec of the pinned map `name`.
pub fn pinned_map_spec(name: &str) -> Option<&'static MapSpec> {
    PINNED_MAP_SPECS.iter().find(|spec| spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_of_two_table_gets_twice_as_many_buckets_as_rows() {
        for rows in [1_024, 65_536, 1 << 20] {
            let entries = hash_entries_for_rows(rows);
            assert_eq!(entries, rows + 1);
            assert_eq!(entries.next_power_of_two(), 2 * rows);
        }
    }

    #[test]
    fn other_sizes_keep_their_entries_and_already_have_more_buckets() {
        for rows in [1_025, 100_000, 1_000_000, 65_535] {
            assert_eq!(hash_entries_for_rows(rows), rows);
            assert!(rows.next_power_of_two() > rows);
        }
        assert_eq!(hash_entries_for_rows(1 << 31), 1 << 31, "no overflow");
    }

    #[test]
    fn only_the_source_sized_tables_are_widened() {
        assert_eq!(Capacity::Sources.entries(65_536), 65_537);
        assert_eq!(Capacity::Fixed(4096).entries(65_536), 4096);
    }
}
