//! Upgrades in place. When the pinned per-source table (or the client → proxy table) of a
//! running older version does not fit this build — the previous row layout
//! ([`SourceRowV1`]), or another `source_capacity` — this build's program is loaded with fresh
//! tables, the old rows are carried over, and the pins are replaced; the pinned links then
//! swap the new program in atomically ([`Limiter::attach`](super::Limiter::attach)). The rule
//! tries, the ports and the configuration stay the pinned ones throughout, so the old program
//! keeps enforcing until the swap and the new one from it: no moment unprotected. What the
//! old program counts between the copy and the swap (well under a second of counts) is not
//! carried over.
//!
//! The global counters of an older version that had fewer are carried over the same way:
//! counters are only ever added at the end, so each old index means what it means here.
//!
//! Any other misfit (another map type, key size, an unknown layout) is still an error that
//! asks for `limiter detach`: guessing at bytes of unknown meaning is worse than starting over.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    maps::{HashMap, Map, MapData, MapType, PerCpuArray, PerCpuValues},
    Ebpf, Pod,
};
use limiter_common::{
    maps::Capacity, Counter, ProxyRelays, SourceAddr, SourceRowV1, SourceStats, CLIENT_VIA_MAP,
    COUNTERS_MAP, PROXY_RELAYS_MAP, SOURCES_MAP, SOURCE_ROW_V1_BYTES,
};
use tracing::info;

use super::{batch, maps::map_mut, LoadOptions, LoaderError};

/// A pinned table to carry over into this build's fresh one.
pub(super) struct Migration {
    pub name: &'static str,
    path: PathBuf,
    old: MapData,
    layout: Layout,
    old_entries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// The per-source table in [`SourceRowV1`] rows.
    SourcesV1,
    /// This build's layout, another capacity.
    Resized,
    /// The global counters of a version with fewer.
    FewerCounters,
}

/// The pinned tables under `pin_dir` that this build can carry over, and how. Tables that fit
/// as they are, or are missing, or do not fit in a way it cannot mend, are left to the
/// ordinary check.
pub(super) fn plan(pin_dir: &Path, options: &LoadOptions) -> Vec<Migration> {
    let sources = size_of::<SourceStats>() as u32;
    let via = size_of::<SourceAddr>() as u32;
    let candidates: [(&'static str, &[(u32, Layout)]); 2] = [
        (
            SOURCES_MAP,
            &[
                (SOURCE_ROW_V1_BYTES, Layout::SourcesV1),
                (sources, Layout::Resized),
            ],
        ),
        (CLIENT_VIA_MAP, &[(via, Layout::Resized)]),
    ];
    let mut plan = Vec::new();
    plan.extend(fewer_counters(pin_dir));
    for (name, layouts) in candidates {
        let path = pin_dir.join(name);
        let Ok(old) = MapData::from_pin(&path) else {
            continue;
        };
        let Ok(info) = old.info() else { continue };
        if !matches!(info.map_type(), Ok(MapType::LruHash)) || info.key_size() != 16 {
            continue;
        }
        let (value_size, entries) = (info.value_size(), info.max_entries());
        let Some(&(_, layout)) = layouts.iter().find(|(size, _)| *size == value_size) else {
            continue;
        };
        if layout == Layout::Resized
            && entries == Capacity::Sources.entries(options.source_capacity)
        {
            continue;
        }
        plan.push(Migration {
            name,
            path,
            old,
            layout,
            old_entries: entries,
        });
    }
    plan
}

/// The pinned global counters, if an older version pinned fewer than this build counts.
fn fewer_counters(pin_dir: &Path) -> Option<Migration> {
    let path = pin_dir.join(COUNTERS_MAP);
    let old = MapData::from_pin(&path).ok()?;
    let info = old.info().ok()?;
    let fits = matches!(info.map_type(), Ok(MapType::PerCpuArray))
        && info.key_size() == 4
        && info.value_size() == 8
        && info.max_entries() < Counter::COUNT;
    fits.then(|| Migration {
        name: COUNTERS_MAP,
        old_entries: info.max_entries(),
        path,
        old,
        layout: Layout::FewerCounters,
    })
}

/// Copies each planned table's rows into `ebpf`'s fresh one, then pins the fresh one in its
/// place.
pub(super) fn carry_over(ebpf: &mut Ebpf, plan: Vec<Migration>) -> Result<(), LoaderError> {
    for migration in plan {
        let started = Instant::now();
        let rows = match (migration.name, migration.layout) {
            (SOURCES_MAP, Layout::SourcesV1) => sources_from_v1(ebpf, &migration.old)?,
            (SOURCES_MAP, Layout::Resized) => {
                copy::<SourceStats>(ebpf, SOURCES_MAP, &migration.old)?
            }
            (_, Layout::FewerCounters) => counters(ebpf, migration.old, migration.old_entries)?,
            (_, _) => copy::<SourceAddr>(ebpf, CLIENT_VIA_MAP, &migration.old)?,
        };
        replace_pin(ebpf, migration.name, &migration.path)?;
        info!(
            map = migration.name,
            rows,
            from = ?migration.layout,
            old_capacity = migration.old_entries,
            took_ms = started.elapsed().as_millis() as u64,
            "carried the pinned table of the previous version over; the pinned links take \
             this version's program when it attaches"
        );
    }
    Ok(())
}

/// The old per-source rows, in this build's layout: counters kept (the SYN and request
/// counters' low 32 bits: they wrap from here on), the cached verdict left to be read again
/// from the tries at the row's next packet, a proxied client's proxy and a proxy's relays
/// moved to their own tables.
fn sources_from_v1(ebpf: &mut Ebpf, old: &MapData) -> Result<usize, LoaderError> {
    let rows = batch::lookup_all(old, SOURCES_MAP, batch::DEFAULT_BATCH_CHUNK, |k, v| (k, v))?;
    let mut via = Vec::new();
    let mut relays = Vec::new();
    {
        let mut table: HashMap<&mut MapData, SourceAddr, SourceStats> =
            HashMap::try_from(map_mut(ebpf, SOURCES_MAP)?).map_err(write_err(SOURCES_MAP))?;
        for (addr, row) in &rows {
            let row: &SourceRowV1 = row;
            table
                .insert(addr, upgraded(row), 0)
                .map_err(write_err(SOURCES_MAP))?;
            if row.via != SourceAddr::default() {
                via.push((*addr, row.via));
            }
            if row.proxied != 0 || row.unattributed != 0 {
                relays.push((
                    *addr,
                    ProxyRelays {
                        proxied: row.proxied,
                        unattributed: row.unattributed,
                    },
                ));
            }
        }
    }
    write_all(ebpf, CLIENT_VIA_MAP, &via)?;
    write_all(ebpf, PROXY_RELAYS_MAP, &relays)?;
    Ok(rows.len())
}

/// A [`SourceRowV1`] in this build's layout.
pub fn upgraded(row: &SourceRowV1) -> SourceStats {
    SourceStats {
        packets: row.packets as u32,
        budget_low: 0,
        bytes: row.bytes,
        first_seen: row.first_seen,
        last_seen: row.last_seen,
        // Zero: already past, so the next packet reads the tries (and caches the answer).
        verdict_until: 0,
        syns: row.syns as u32,
        image_create: row.image_create as u32,
        other_write: row.other_write as u32,
        read: row.read as u32,
        rules_generation: 0,
        flags: 0,
        // A whole budget: the older layout kept none.
        budget_high: 0,
    }
}

/// Each old counter's per-CPU values into the same index of this build's counters.
fn counters(ebpf: &mut Ebpf, old: MapData, old_entries: u32) -> Result<usize, LoaderError> {
    let read_err = |source| LoaderError::Map {
        map: COUNTERS_MAP,
        op: "read the old",
        source,
    };
    let old: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(old)).map_err(read_err)?;
    let values = (0..old_entries)
        .map(|index| old.get(&index, 0))
        .collect::<Result<Vec<PerCpuValues<u64>>, _>>()
        .map_err(read_err)?;
    let mut new: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(map_mut(ebpf, COUNTERS_MAP)?).map_err(write_err(COUNTERS_MAP))?;
    for (index, per_cpu) in values.into_iter().enumerate() {
        new.set(index as u32, per_cpu, 0)
            .map_err(write_err(COUNTERS_MAP))?;
    }
    Ok(old_entries as usize)
}

/// Copies every row of `old` into this build's `name` as it is.
fn copy<V: Pod + Send>(
    ebpf: &mut Ebpf,
    name: &'static str,
    old: &MapData,
) -> Result<usize, LoaderError> {
    let rows = batch::lookup_all(
        old,
        name,
        batch::DEFAULT_BATCH_CHUNK,
        |k: SourceAddr, v: V| (k, v),
    )?;
    write_all(ebpf, name, &rows)?;
    Ok(rows.len())
}

fn write_all<V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    rows: &[(SourceAddr, V)],
) -> Result<(), LoaderError> {
    let mut table: HashMap<&mut MapData, SourceAddr, V> =
        HashMap::try_from(map_mut(ebpf, name)?).map_err(write_err(name))?;
    for (key, value) in rows {
        table.insert(key, value, 0).map_err(write_err(name))?;
    }
    Ok(())
}

/// Pins this build's `name` at `path`, where the old table was pinned. Until the pin is
/// replaced the old one stays; a crash in between leaves it for the next start to carry
/// over again.
fn replace_pin(ebpf: &Ebpf, name: &'static str, path: &Path) -> Result<(), LoaderError> {
    let pin_error = |detail: String| LoaderError::Pin {
        path: path.to_owned(),
        detail,
    };
    fs::remove_file(path).map_err(|e| pin_error(e.to_string()))?;
    let map = ebpf
        .map(name)
        .ok_or_else(|| pin_error(format!("no map {name}")))?;
    map.pin(path).map_err(|e| pin_error(e.to_string()))
}

fn write_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> LoaderError {
    move |source| LoaderError::Map {
        map,
        op: "carry over",
        source,
    }
}
