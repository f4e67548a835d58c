//! Typed access to the program's maps. The only place that knows map names and value layouts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::IpAddr,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, IterableMap, MapData, MapError, PerCpuArray,
    },
    Ebpf, Pod,
};
use limiter_common::{
    AllowRule, BlockRule, Config, Counter, CpuRelays, ProxyRelays, SourceAddr, SourceStats,
    ALLOW_MAP, BLOCK_MAP, CLIENT_VIA_MAP, CONFIG_ANY_PORT_RULES, CONFIG_MAP, COUNTERS_MAP,
    PORTS_MAP, PORT_BITMAP_WORDS, PROXY_RELAYS_CPU_MAP, PROXY_RELAYS_MAP, PROXY_RELAY_SLOTS,
    SOURCES_MAP,
};

// The rule tries' keys as user space writes them are the kernel's, as the maps' spec says.
const _: () = assert!(size_of::<Key<[u8; 16]>>() == limiter_common::LPM_KEY_BYTES as usize);

use super::{batch, LoaderError};
use crate::{
    net,
    rules::{CompiledRules, TrieKey},
};

/// One row of the per-source table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub addr: IpAddr,
    pub stats: SourceStats,
}

/// Global counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: [u64; Counter::COUNT as usize],
}

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Packets seen: the sum of every verdict counter.
    pub fn packets(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_verdict())
            .map(|c| self.get(*c))
            .sum()
    }

    /// `(name, value)` for every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|c| (*c, self.get(*c)))
    }

    /// Counters accumulated since `earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut values = [0; Counter::COUNT as usize];
        for (i, v) in values.iter_mut().enumerate() {
            *v = self.values[i].wrapping_sub(earlier.values[i]);
        }
        Counters { values }
    }
}

pub(super) fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> LoaderError {
    move |source| LoaderError::Map { map, op, source }
}

pub(super) fn map_ref<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a aya::maps::Map, LoaderError> {
    ebpf.map(name).ok_or(LoaderError::Map {
        map: name,
        op: "open",
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })
}

pub(super) fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, LoaderError> {
    ebpf.map_mut(name).ok_or(LoaderError::Map {
        map: name,
        op: "open",
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })
}

pub(super) fn write_port_bitmap(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), LoaderError> {
    let mut words = vec![0u64; PORT_BITMAP_WORDS as usize];
    for port in ports {
        words[usize::from(port >> 6)] |= 1 << (port & 63);
    }
    let mut bitmap: Array<&mut MapData, u64> =
        Array::try_from(map_mut(ebpf, PORTS_MAP)?).map_err(map_err(PORTS_MAP, "open"))?;
    for (index, word) in words.iter().enumerate() {
        let index = index as u32;
        let current = bitmap.get(&index, 0).map_err(map_err(PORTS_MAP, "read"))?;
        if current != *word {
            bitmap
                .set(index, word, 0)
                .map_err(map_err(PORTS_MAP, "write"))?;
        }
    }
    Ok(())
}

/// `previous`: what the last successful call wrote, if this process made it (the tries then
/// hold exactly that, so the difference is computed in memory); `None` reads the tries.
pub(super) fn apply_rules(
    ebpf: &mut Ebpf,
    rules: &CompiledRules,
    previous: Option<&CompiledRules>,
) -> Result<(), LoaderError> {
    // Raise the "all ports" switch before the entries that need it, lower it after.
    if rules.any_port_rules {
        set_config_flag(ebpf, CONFIG_ANY_PORT_RULES, true)?;
    }
    sync_trie::<BlockRule>(ebpf, BLOCK_MAP, &rules.block, previous.map(|p| &p.block))?;
    sync_trie::<AllowRule>(ebpf, ALLOW_MAP, &rules.allow, previous.map(|p| &p.allow))?;
    if !rules.any_port_rules {
        set_config_flag(ebpf, CONFIG_ANY_PORT_RULES, false)?;
    }
    update_config(ebpf, |config| {
        config.rules_generation = config.rules_generation.wrapping_add(1)
    })
}

pub(super) fn sync_trie<V: Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &BTreeMap<TrieKey, V>,
    previous: Option<&BTreeMap<TrieKey, V>>,
) -> Result<(), LoaderError> {
    let mut trie: LpmTrie<&mut MapData, [u8; 16], V> =
        LpmTrie::try_from(map_mut(ebpf, name)?).map_err(map_err(name, "open"))?;
    let present: Vec<Key<[u8; 16]>> = match previous {
        Some(previous) => previous
            .keys()
            .map(|&(prefix_len, addr)| Key::new(prefix_len, addr))
            .collect(),
        None => trie
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(name, "list keys"))?,
    };
    let present_set: BTreeSet<TrieKey> = present
        .iter()
        .map(|key| (key.prefix_len(), key.data()))
        .collect();
    for (&(prefix_len, addr), value) in wanted {
        let key = Key::new(prefix_len, addr);
        // A trie lookup is a longest-prefix match: it answers for an absent prefix with the
        // value of one covering it. Only a prefix known to be present may be compared.
        let current = match previous {
            Some(previous) => previous.get(&(prefix_len, addr)).copied(),
            None if present_set.contains(&(prefix_len, addr)) => trie.get(&key, 0).ok(),
            None => None,
        };
        if current.as_ref() != Some(value) {
            trie.insert(&key, value, 0)
                .map_err(map_err(name, "insert"))?;
        }
    }
    for key in present {
        if !wanted.contains_key(&(key.prefix_len(), key.data())) {
            match trie.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name, "remove")(e)),
            }
        }
    }
    Ok(())
}

pub(super) fn set_config_flag(ebpf: &mut Ebpf, flag: u32, on: bool) -> Result<(), LoaderError> {
    update_config(ebpf, |config| {
        if on {
            config.flags |= flag
        } else {
            config.flags &= !flag
        }
    })
}

pub(super) fn update_config(
    ebpf: &mut Ebpf,
    change: impl FnOnce(&mut Config),
) -> Result<(), LoaderError> {
    let mut config: Array<&mut MapData, Config> =
        Array::try_from(map_mut(ebpf, CONFIG_MAP)?).map_err(map_err(CONFIG_MAP, "open"))?;
    let current = config.get(&0, 0).map_err(map_err(CONFIG_MAP, "read"))?;
    let mut wanted = current;
    change(&mut wanted);
    if wanted != current {
        config
            .set(0, wanted, 0)
            .map_err(map_err(CONFIG_MAP, "write"))?;
    }
    Ok(())
}

pub(super) fn read_sources(ebpf: &Ebpf) -> Result<Vec<SourceEntry>, LoaderError> {
    let table: HashMap<&MapData, SourceAddr, SourceStats> =
        HashMap::try_from(map_ref(ebpf, SOURCES_MAP)?).map_err(map_err(SOURCES_MAP, "open"))?;
    let mut entries = Vec::new();
    for item in table.iter() {
        match item {
            Ok((key, stats)) => entries.push(SourceEntry {
                addr: net::key_to_addr(key.octets()),
                stats,
            }),
            // Evicted between listing its key and reading it.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(SOURCES_MAP, "read")(e)),
        }
    }
    Ok(entries)
}

/// The same rows as [`read_sources`], read with BPF_MAP_LOOKUP_BATCH, `chunk` rows per syscall.
pub(super) fn read_sources_batched(
    ebpf: &Ebpf,
    chunk: u32,
) -> Result<Vec<SourceEntry>, LoaderError> {
    // aya's typed view checks the map type and sizes the object declares; `lookup_all` checks
    // them again against the kernel before letting it write into our buffers.
    let table: HashMap<&MapData, SourceAddr, SourceStats> =
        HashMap::try_from(map_ref(ebpf, SOURCES_MAP)?).map_err(map_err(SOURCES_MAP, "open"))?;
    Ok(batch::lookup_all(
        table.map(),
        SOURCES_MAP,
        chunk,
        |key: SourceAddr, stats: SourceStats| SourceEntry {
            addr: net::key_to_addr(key.octets()),
            stats,
        },
    )?)
}

/// [`read_sources_batched`] without holding the table: each row goes to `each` as its chunk
/// leaves the kernel. A row can come twice in one read (see [`batch::lookup_each`]).
pub(super) fn for_each_source_batched(
    ebpf: &Ebpf,
    chunk: u32,
    mut each: impl FnMut(SourceEntry),
) -> Result<(), LoaderError> {
    let table: HashMap<&MapData, SourceAddr, SourceStats> =
        HashMap::try_from(map_ref(ebpf, SOURCES_MAP)?).map_err(map_err(SOURCES_MAP, "open"))?;
    Ok(batch::lookup_each(
        table.map(),
        SOURCES_MAP,
        chunk,
        |keys: &[SourceAddr], values: &[SourceStats]| {
            for (key, stats) in keys.iter().zip(values) {
                each(SourceEntry {
                    addr: net::key_to_addr(key.octets()),
                    stats: *stats,
                });
            }
        },
    )?)
}

/// Client → the trusted proxy that carried its latest request.
pub(super) fn read_client_via(ebpf: &Ebpf) -> Result<StdHashMap<IpAddr, IpAddr>, LoaderError> {
    read_by_address(ebpf, CLIENT_VIA_MAP, |proxy: SourceAddr| {
        net::key_to_addr(proxy.octets())
    })
}

/// Trusted proxy → what it relayed: its entry in the shared table plus what each CPU counted
/// in a slot of its own (see [`PROXY_RELAYS_CPU_MAP`]). Both only grow, so the sum does too.
pub(super) fn read_proxy_relays(
    ebpf: &Ebpf,
) -> Result<StdHashMap<IpAddr, ProxyRelays>, LoaderError> {
    let mut relays = read_by_address(ebpf, PROXY_RELAYS_MAP, |relays: ProxyRelays| relays)?;
    let slots: PerCpuArray<&MapData, CpuRelays> =
        PerCpuArray::try_from(map_ref(ebpf, PROXY_RELAYS_CPU_MAP)?)
            .map_err(map_err(PROXY_RELAYS_CPU_MAP, "open"))?;
    for index in 0..PROXY_RELAY_SLOTS {
        let per_cpu = slots
            .get(&index, 0)
            .map_err(map_err(PROXY_RELAYS_CPU_MAP, "read"))?;
        for slot in per_cpu.iter() {
            if slot.relays == ProxyRelays::default() {
                continue;
            }
            let total = relays
                .entry(net::key_to_addr(slot.proxy.octets()))
                .or_default();
            total.proxied += slot.relays.proxied;
            total.unattributed += slot.relays.unattributed;
        }
    }
    Ok(relays)
}

/// Every entry of the hash map `name`, keyed by a source address, as address → `convert`ed
/// value.
pub(super) fn read_by_address<V: Pod + Send, T>(
    ebpf: &Ebpf,
    name: &'static str,
    convert: impl Fn(V) -> T,
) -> Result<StdHashMap<IpAddr, T>, LoaderError> {
    let table: HashMap<&MapData, SourceAddr, V> =
        HashMap::try_from(map_ref(ebpf, name)?).map_err(map_err(name, "open"))?;
    let mut read = StdHashMap::new();
    batch::lookup_each(
        table.map(),
        name,
        batch::DEFAULT_BATCH_CHUNK,
        |keys: &[SourceAddr], values: &[V]| {
            for (key, value) in keys.iter().zip(values) {
                read.insert(net::key_to_addr(key.octets()), convert(*value));
            }
        },
    )?;
    Ok(read)
}

pub(super) fn read_counters(ebpf: &Ebpf) -> Result<Counters, LoaderError> {
    let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map_ref(ebpf, COUNTERS_MAP)?)
        .map_err(map_err(COUNTERS_MAP, "open"))?;
    let mut counters = Counters::default();
    for counter in Counter::ALL {
        let per_cpu = array
            .get(&(counter as u32), 0)
            .map_err(map_err(COUNTERS_MAP, "read"))?;
        counters.values[counter as usize] = per_cpu.iter().sum();
    }
    Ok(counters)
}
