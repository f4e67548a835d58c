//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+), which aya 0.14 does not wrap.
//!
//! Iterating a hash map with `get_next_key` + lookup costs two syscalls per entry (about 2.2 s
//! for a million rows); a batch lookup copies thousands of entries per syscall. For hash maps
//! the kernel walks bucket by bucket and hands back a bucket index as the resume token, so a
//! read never sees an entry twice even while the XDP program inserts and evicts rows. Like
//! any read of a live map it is not a snapshot: a row inserted into a bucket already visited
//! is missed, one evicted before its bucket is reached is not returned.
//!
//! That copy is bound by random memory accesses (about half a second for a million rows), so
//! large tables are read by several threads, each starting at its own bucket index; see
//! [`read_parallel`] for how the overlap where two parts meet is removed exactly.

use std::{
    collections::HashSet,
    io,
    mem::{offset_of, size_of},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use aya::{
    maps::{MapData, MapError, MapType},
    Pod,
};
use tracing::warn;

/// Entries asked for per syscall: 4096 source rows are about 420 KB of keys and values.
pub const DEFAULT_BATCH_CHUNK: u32 = 4096;

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("cannot read the kernel's description of map {map}: {source}")]
    Info {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "map {map} is a {found:?} map, but batch reads here support only hash and LRU hash maps \
         (per-CPU maps lay values out per CPU); read it by iterating instead"
    )]
    UnsupportedMap { map: &'static str, found: MapType },
    #[error(
        "map {map} holds {kernel}-byte {what}s but the reader expects {expected} bytes; \
         userspace and the loaded BPF program disagree on the layout: rebuild and reload both"
    )]
    Layout {
        map: &'static str,
        what: &'static str,
        kernel: u32,
        expected: usize,
    },
    #[error(
        "BPF_MAP_LOOKUP_BATCH on map {map} failed: {source}; batch lookups need Linux 5.6 or \
         newer (older kernels: read the map by iterating)"
    )]
    Lookup {
        map: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Every `(key, value)` of the hash or LRU hash map `map` (named `name` in errors), `chunk`
/// entries per syscall, each turned into a `T` by `convert` as it leaves the kernel's
/// buffers (a million rows are not copied once more as pairs).
///
/// `K` and `V` must be exactly the map's key and value types: their sizes are checked against
/// what the kernel reports, since the kernel writes `key_size`/`value_size` bytes per entry.
pub fn lookup_all<K: Pod + Send, V: Pod + Send, T>(
    map: &MapData,
    name: &'static str,
    chunk: u32,
    convert: impl Fn(K, V) -> T,
) -> Result<Vec<T>, BatchError> {
    let (call, max_entries) = checked::<K, V>(map, name)?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    read_all(
        &call,
        chunk,
        max_entries,
        parallel_parts(max_entries, cpus),
        &PARALLEL_OFF,
        convert,
    )
    .map_err(|source| BatchError::Lookup { map: name, source })
}

/// Every `(key, value)` of the hash or LRU hash map `map`, handed to `each` a syscall's worth
/// at a time on the calling thread while the next ones are read: memory stays at a few chunks
/// whatever the table's size. The price of not holding the whole table: where two parts of a
/// parallel read meet, and when a parallel read fails and the map is read again by one thread,
/// an entry can be handed over twice (with values read at two instants), so `each` must
/// tolerate that (keep the later, say). Types as [`lookup_all`].
pub fn lookup_each<K: Pod + Send, V: Pod + Send>(
    map: &MapData,
    name: &'static str,
    chunk: u32,
    each: impl FnMut(&[K], &[V]),
) -> Result<(), BatchError> {
    let (call, max_entries) = checked::<K, V>(map, name)?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    stream_all(
        &call,
        chunk,
        max_entries,
        parallel_parts(max_entries, cpus),
        &PARALLEL_OFF,
        each,
    )
    .map_err(|source| BatchError::Lookup { map: name, source })
}

/// One switch for the process: a kernel that refuses start tokens refuses them every time.
static PARALLEL_OFF: AtomicBool = AtomicBool::new(false);

/// The batch syscall on `map` and its `max_entries`, once the map is a hash map whose key and
/// value sizes are exactly `K`'s and `V`'s.
fn checked<'map, K: Pod, V: Pod>(
    map: &'map MapData,
    name: &'static str,
) -> Result<(Syscall<'map>, u32), BatchError> {
    let info = map
        .info()
        .map_err(|source| BatchError::Info { map: name, source })?;
    let map_type = info
        .map_type()
        .map_err(|source| BatchError::Info { map: name, source })?;
    if !matches!(map_type, MapType::Hash | MapType::LruHash) {
        return Err(BatchError::UnsupportedMap {
            map: name,
            found: map_type,
        });
    }
    for (what, kernel, expected) in [
        ("key", info.key_size(), size_of::<K>()),
        ("value", info.value_size(), size_of::<V>()),
    ] {
        if usize::try_from(kernel).ok() != Some(expected) {
            return Err(BatchError::Layout {
                map: name,
                what,
                kernel,
                expected,
            });
        }
    }
    let call = Syscall {
        fd: map.fd().as_fd(),
    };
    Ok((call, info.max_entries()))
}

/// The `batch` member of the kernel's `union bpf_attr`, used by the `BPF_MAP_*_BATCH`
/// commands. The kernel zero-fills the rest of the union when given this shorter size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct BatchAttr {
    /// Resume token from the previous call; null to start at the beginning.
    in_batch: u64,
    /// Where the kernel writes the token to resume from.
    out_batch: u64,
    /// `count` keys of `key_size` bytes each.
    keys: u64,
    /// `count` values of `value_size` bytes each.
    values: u64,
    /// In: room in `keys` and `values`, in entries. Out: entries written.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

// The layout of `struct { __aligned_u64 in_batch, out_batch, keys, values; __u32 count,
// map_fd; __u64 elem_flags, flags; } batch` in include/uapi/linux/bpf.h.
const _: () = {
    assert!(offset_of!(BatchAttr, in_batch) == 0);
    assert!(offset_of!(BatchAttr, out_batch) == 8);
    assert!(offset_of!(BatchAttr, keys) == 16);
    assert!(offset_of!(BatchAttr, values) == 24);
    assert!(offset_of!(BatchAttr, count) == 32);
    assert!(offset_of!(BatchAttr, map_fd) == 36);
    assert!(offset_of!(BatchAttr, elem_flags) == 40);
    assert!(offset_of!(BatchAttr, flags) == 48);
    assert!(size_of::<BatchAttr>() == 56);
    assert!(TOKEN_BYTES >= size_of::<u32>() && TOKEN_BYTES.is_multiple_of(8));
};

/// One `BPF_MAP_LOOKUP_BATCH` call: the real syscall, or a fake kernel in tests.
///
/// # Safety
/// When `call` returns `Ok` or `ENOENT`, `attr.count` must be at most what it was on entry,
/// and exactly that many keys and values must have been written to `attr.keys` and
/// `attr.values` (`size_of::<K>()` and `size_of::<V>()` bytes each). Nothing may be written
/// past those entries, nor more than [`TOKEN_BYTES`] bytes to `attr.out_batch`.
unsafe trait BatchCall {
    fn call(&self, attr: &mut BatchAttr) -> io::Result<()>;
}

/// Room for the resume token. Hash maps write a `u32` bucket index; other map types write a
/// key (up to 16 bytes here, as the per-source key), so this is generous for any of them.
const TOKEN_BYTES: usize = 64;

struct Syscall<'fd> {
    fd: BorrowedFd<'fd>,
}

// SAFETY: `lookup_all` checked that the map is a hash or LRU hash map whose key and value sizes
// are `size_of::<K>()` and `size_of::<V>()`. For those maps the kernel writes at most `count`
// entries of exactly those sizes (fewer, and the updated count, at a bucket boundary), and a
// 4-byte bucket index as the token (`__htab_map_lookup_and_delete_batch`).
unsafe impl BatchCall for Syscall<'_> {
    fn call(&self, attr: &mut BatchAttr) -> io::Result<()> {
        attr.map_fd = self.fd.as_raw_fd() as u32;
        // SAFETY: `attr` is a live, writable `bpf_attr.batch` of the size passed, so the kernel
        // can read it and write back `count`; the buffers it points to are sized as the trait
        // contract says, and the borrowed fd stays open for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Before the map is read again by one thread: EINVAL and our own token checks mean the
/// parallel scheme does not fit this kernel, which will not change, so `parallel_off` keeps
/// later reads from trying; anything else (ENOMEM, EFAULT) may pass.
fn parallel_read_failed(error: &io::Error, parts: usize, parallel_off: &AtomicBool) {
    let unsupported =
        error.raw_os_error() == Some(libc::EINVAL) || error.kind() == io::ErrorKind::InvalidData;
    if unsupported {
        parallel_off.store(true, Ordering::Relaxed);
    }
    warn!(
        %error,
        parts,
        disabled = unsupported,
        "parallel batch read failed; reading the map with one thread instead"
    );
}

/// Tables at least this large (in `max_entries`) are read by several threads at once, each
/// over its own range of hash buckets: the kernel's copy is bound by random memory accesses,
/// so two CPUs nearly halve it. Below this, a thread costs more than it saves.
pub const PARALLEL_BATCH_MIN_ENTRIES: u32 = 131_072;

/// Most threads one read uses; beyond this the daemon would compete with the XDP program's
/// softirq work for little gain.
const MAX_PARALLEL_PARTS: usize = 4;

/// How many threads read a table of `max_entries` on a machine with `cpus` CPUs.
fn parallel_parts(max_entries: u32, cpus: usize) -> usize {
    if max_entries < PARALLEL_BATCH_MIN_ENTRIES {
        1
    } else {
        cpus.clamp(1, MAX_PARALLEL_PARTS)
    }
}

/// Every entry, read by `parts` threads when that is above one. Should the parallel read
/// fail (a kernel whose tokens are not the bucket indexes assumed here refuses a start token
/// with `EINVAL`), the map is read again by one thread, so the worst case is slower, never
/// wrong; `parallel_off` then keeps later reads from trying again.
fn read_all<K: Pod + Send, V: Pod + Send, T>(
    call: &(impl BatchCall + Sync),
    chunk: u32,
    max_entries: u32,
    parts: usize,
    parallel_off: &AtomicBool,
    convert: impl Fn(K, V) -> T,
) -> io::Result<Vec<T>> {
    if parts > 1 && !parallel_off.load(Ordering::Relaxed) {
        match read_parallel(call, chunk, max_entries, parts) {
            Ok(parts) => return Ok(merge(&parts, convert)),
            Err(error) => parallel_read_failed(&error, parts, parallel_off),
        }
    }
    let part = read_part::<K, V>(call, chunk, max_entries, None, None, None)?;
    Ok(part
        .keys
        .into_iter()
        .zip(part.values)
        .map(|(key, value)| convert(key, value))
        .collect())
}

/// Reads every entry through `call`, `chunk` at a time, until the kernel says the map is done.
/// `max_entries` bounds how far the chunk may grow to fit one bucket.
#[cfg(test)]
fn read_batches<K: Pod, V: Pod>(
    call: &impl BatchCall,
    chunk: u32,
    max_entries: u32,
) -> io::Result<(Vec<K>, Vec<V>)> {
    let part = read_part(call, chunk, max_entries, None, None, None)?;
    Ok((part.keys, part.values))
}

/// What one thread of a read got back.
#[derive(Debug)]
struct Part<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    /// For each call that returned entries: the bucket it started at, and `keys.len()` after it.
    calls: Vec<(u32, usize)>,
    /// Entries certainly from this part's own buckets: all but those of a last call that ran
    /// past the next part's first bucket, whose tail the next parts read too.
    settled: usize,
    /// The bucket after the last one read; `u64::MAX` once the kernel said the map is done.
    end: u64,
}

impl<K, V> Part<K, V> {
    /// Entries read by calls that started below bucket `end`: every entry of this part from a
    /// bucket below `end` is among them (and the rest are from buckets at or past it).
    fn read_below(&self, end: u64) -> usize {
        let calls = self
            .calls
            .partition_point(|&(start, _)| u64::from(start) < end);
        calls.checked_sub(1).map_or(0, |last| self.calls[last].1)
    }
}

/// Reads from bucket `start` (from the beginning if `None`) until the kernel says the map is
/// done or, with `stop`, until the resume token reaches bucket `stop`. Tokens are interpreted
/// as bucket indexes only with a `stop`; without one this is the plain whole-map read.
///
/// With a `sink`, each call's entries go to it as they arrive instead of accumulating in the
/// part (whose `calls` and `settled` then mean nothing).
fn read_part<K: Pod, V: Pod>(
    call: &impl BatchCall,
    chunk: u32,
    max_entries: u32,
    start: Option<u32>,
    stop: Option<(u64, &AtomicBool)>,
    mut sink: Option<&mut dyn FnMut(Vec<K>, Vec<V>)>,
) -> io::Result<Part<K, V>> {
    let mut part = Part {
        keys: Vec::new(),
        values: Vec::new(),
        calls: Vec::new(),
        settled: 0,
        end: u64::MAX,
    };
    // u64 words so the token is aligned for whatever the kernel stores in it.
    let mut token = [0u64; TOKEN_BYTES / 8];
    let mut started = start.is_some();
    if let Some(bucket) = start {
        write_bucket(&mut token, bucket);
    }
    let mut chunk = chunk.max(1);
    loop {
        if let Some((_, abandon)) = stop {
            if abandon.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "stopped: another part of the read failed",
                ));
            }
        }
        let from = if started { read_bucket(&token) } else { 0 };
        let (keys, values) = (&mut part.keys, &mut part.values);
        keys.reserve(chunk as usize);
        values.reserve(chunk as usize);
        let mut attr = BatchAttr {
            // The first call must pass null: there is no token yet. Later calls pass the
            // token the previous call wrote; reading and writing one buffer is safe because
            // the kernel reads `in_batch` before it writes `out_batch`.
            in_batch: if started { token.as_ptr() as u64 } else { 0 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.spare_capacity_mut().as_mut_ptr() as u64,
            values: values.spare_capacity_mut().as_mut_ptr() as u64,
            count: chunk,
            ..BatchAttr::default()
        };
        let finished = match call.call(&mut attr) {
            Ok(()) => false,
            // The map is done; this call's entries (possibly none) are still valid.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // The next bucket holds more entries than `chunk` (nothing was copied): ask for
            // more room and retry from the same place.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                // The kernel skipped empty buckets up to the one that did not fit: if that
                // one is the next part's, it is the next part's to grow for.
                if let Some((stop, _)) = stop {
                    let reached = u64::from(read_bucket(&token));
                    if reached < u64::from(from) {
                        // Later parts' calls are searched by start bucket, which must rise.
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("ENOSPC moved the batch token back from {from} to {reached}"),
                        ));
                    }
                    if reached >= stop {
                        part.settled = part.keys.len();
                        part.end = reached;
                        return Ok(part);
                    }
                }
                if chunk >= max_entries.max(1) {
                    return Err(e);
                }
                chunk = chunk.saturating_mul(2);
                continue;
            }
            Err(e) => return Err(e),
        };
        let written = attr.count;
        if written > chunk {
            return Err(io::Error::other(format!(
                "the kernel reported {written} entries for a batch of {chunk}"
            )));
        }
        let before = keys.len();
        // SAFETY: by the `BatchCall` contract the first `written` (≤ `chunk` ≤ spare
        // capacity) slots past the current lengths were initialized, and `K`, `V` are `Pod`, so
        // any bytes are valid values.
        unsafe {
            keys.set_len(before + written as usize);
            values.set_len(before + written as usize);
        }
        if let Some(sink) = sink.as_mut() {
            if written > 0 {
                sink(std::mem::take(keys), std::mem::take(values));
            }
        }
        part.calls.push((from, keys.len()));
        let Some((stop, _)) = stop else {
            if finished {
                part.settled = part.keys.len();
                return Ok(part);
            }
            started = true;
            continue;
        };
        let end = if finished {
            u64::MAX
        } else {
            u64::from(read_bucket(&token))
        };
        if !finished && end <= u64::from(from) {
            // A token that does not move forward is not a bucket index: splitting by bucket
            // would be unsound, and reading on might never end.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the batch token went from {from} to {end}, not forward"),
            ));
        }
        if finished || end >= stop {
            part.settled = if end > stop { before } else { part.keys.len() };
            part.end = end;
            return Ok(part);
        }
        started = true;
    }
}

fn write_bucket(token: &mut [u64; TOKEN_BYTES / 8], bucket: u32) {
    let mut bytes = token[0].to_ne_bytes();
    bytes[..4].copy_from_slice(&bucket.to_ne_bytes());
    token[0] = u64::from_ne_bytes(bytes);
}

/// The `u32` bucket index a hash map's batch call left in `token`.
fn read_bucket(token: &[u64; TOKEN_BYTES / 8]) -> u32 {
    let bytes = token[0].to_ne_bytes();
    u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Reads the map with `parts` threads, part k from bucket k·n/parts to the next part's first
/// bucket, where `n` is the kernel's bucket count, `roundup_pow_of_two(max_entries)`. A guess
/// that is off is slower, not wrong: a part starting past the last bucket gets `ENOENT` at
/// once, and the last part reads on until `ENOENT` whatever `n` is.
///
/// The kernel copies whole buckets until `count` entries, so a part's last call may run into
/// the next parts' buckets. Those entries are dropped from the earlier part when a later part
/// read the same key: a key always hashes to the same bucket, so only a genuine duplicate can
/// match, and only the few later calls that started below the earlier part's end are searched.
fn read_parallel<K: Pod + Send, V: Pod + Send>(
    call: &(impl BatchCall + Sync),
    chunk: u32,
    max_entries: u32,
    parts: usize,
) -> io::Result<Vec<Part<K, V>>> {
    let bounds = part_bounds(max_entries, parts);
    let abandon = AtomicBool::new(false);
    let read = |k: usize| {
        let start = (k > 0).then(|| bounds[k] as u32);
        let result = read_part::<K, V>(
            call,
            chunk,
            max_entries,
            start,
            Some((bounds[k + 1], &abandon)),
            None,
        );
        if result.is_err() {
            abandon.store(true, Ordering::Relaxed);
        }
        result
    };
    let results: Vec<io::Result<Part<K, V>>> = thread::scope(|scope| {
        let others: Vec<_> = (1..parts).map(|k| scope.spawn(move || read(k))).collect();
        let first = read(0);
        let others = others.into_iter().map(|thread| {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        std::iter::once(first).chain(others).collect()
    });
    first_failure(results)
}

/// The parts' results, or the failure that stopped the others (not one of the parts it
/// stopped).
fn first_failure<T>(results: Vec<io::Result<T>>) -> io::Result<Vec<T>> {
    let stopped = |e: &io::Error| e.kind() == io::ErrorKind::Interrupted;
    let mut parts = Vec::with_capacity(results.len());
    let mut failure: Option<io::Error> = None;
    for result in results {
        match result {
            Ok(part) => parts.push(part),
            Err(e) if failure.as_ref().is_none_or(|f| stopped(f) && !stopped(&e)) => {
                failure = Some(e);
            }
            Err(_) => {}
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(parts),
    }
}

/// Part k's first bucket for `parts` parts of a table of `max_entries` (and `u64::MAX` after
/// the last part): the kernel's bucket count is `roundup_pow_of_two(max_entries)`.
fn part_bounds(max_entries: u32, parts: usize) -> Vec<u64> {
    let buckets = u64::from(max_entries.max(1)).next_power_of_two();
    (0..=parts as u64)
        .map(|k| {
            if k == parts as u64 {
                u64::MAX
            } else {
                k * buckets / parts as u64
            }
        })
        .collect()
}

/// [`read_all`] handing each chunk to `each` as it arrives (see [`lookup_each`]). The parts'
/// threads send their chunks to this thread through a short queue, so a slow `each` slows the
/// reads instead of piling chunks up.
fn stream_all<K: Pod + Send, V: Pod + Send>(
    call: &(impl BatchCall + Sync),
    chunk: u32,
    max_entries: u32,
    parts: usize,
    parallel_off: &AtomicBool,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    if parts > 1 && !parallel_off.load(Ordering::Relaxed) {
        let bounds = part_bounds(max_entries, parts);
        let abandon = AtomicBool::new(false);
        let (bounds, abandon) = (&bounds, &abandon);
        let (chunks, received) = std::sync::mpsc::sync_channel::<(Vec<K>, Vec<V>)>(parts * 2);
        let results: Vec<io::Result<()>> = thread::scope(|scope| {
            let threads: Vec<_> = (0..parts)
                .map(|k| {
                    let chunks = chunks.clone();
                    scope.spawn(move || {
                        let mut send = |keys: Vec<K>, values: Vec<V>| {
                            // The receiver lives until every part is joined.
                            let _ = chunks.send((keys, values));
                        };
                        let start = (k > 0).then(|| bounds[k] as u32);
                        let result = read_part::<K, V>(
                            call,
                            chunk,
                            max_entries,
                            start,
                            Some((bounds[k + 1], abandon)),
                            Some(&mut send),
                        );
                        if result.is_err() {
                            abandon.store(true, Ordering::Relaxed);
                        }
                        result.map(drop)
                    })
                })
                .collect();
            drop(chunks);
            for (keys, values) in received {
                each(&keys, &values);
            }
            threads
                .into_iter()
                .map(|thread| {
                    thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        match first_failure(results) {
            Ok(_) => return Ok(()),
            Err(error) => parallel_read_failed(&error, parts, parallel_off),
        }
    }
    let mut each_chunk = |keys: Vec<K>, values: Vec<V>| each(&keys, &values);
    read_part::<K, V>(call, chunk, max_entries, None, None, Some(&mut each_chunk)).map(drop)
}

/// The parts' entries in bucket order, each once, converted.
fn merge<K: Pod, V: Pod, T>(parts: &[Part<K, V>], convert: impl Fn(K, V) -> T) -> Vec<T> {
    let total = parts.iter().map(|part| part.keys.len()).sum();
    let mut rows = Vec::with_capacity(total);
    for (k, part) in parts.iter().enumerate() {
        let pairs = part.keys.iter().copied().zip(part.values.iter().copied());
        rows.extend(
            pairs
                .clone()
                .take(part.settled)
                .map(|(key, value)| convert(key, value)),
        );
        if part.settled == part.keys.len() {
            continue;
        }
        let read_later: HashSet<&[u8]> = parts[k + 1..]
            .iter()
            .flat_map(|later| later.keys[..later.read_below(part.end)].iter().map(bytes))
            .collect();
        rows.extend(
            pairs
                .skip(part.settled)
                .filter(|(key, _)| !read_later.contains(bytes(key)))
                .map(|(key, value)| convert(key, value)),
        );
    }
    rows
}

fn bytes<K: Pod>(key: &K) -> &[u8] {
    // SAFETY: `Pod` types have no padding or invalid bytes, so all `size_of::<K>()` bytes of a
    // live `K` are initialized and may be viewed as `u8`s for as long as it is borrowed.
    unsafe { std::slice::from_raw_parts((key as *const K).cast::<u8>(), size_of::<K>()) }
}

#[cfg(test)]
mod tests {
    use std::{ptr, sync::Mutex};

    use super::*;

    /// A kernel hash map in miniature, with the semantics of
    /// `__htab_map_lookup_and_delete_batch`: whole buckets only, a `u32` bucket index as token,
    /// `ENOSPC` when the first non-empty bucket does not fit, `ENOENT` after the last bucket.
    ///
    /// Shared by the threads of a parallel read, so its mutable state sits behind a mutex.
    struct FakeHtab {
        buckets: Vec<Vec<(u32, u64)>>,
        calls: Mutex<Vec<BatchAttr>>,
        /// Returned on the next call instead of doing anything.
        fail_with: Mutex<Option<i32>>,
        /// Claims more entries than asked for (a kernel bug the reader must not trust).
        overreport: bool,
        /// Models a kernel whose tokens are opaque: a start token it did not hand out is
        /// `EINVAL`.
        opaque_tokens: bool,
        issued: Mutex<HashSet<u32>>,
        /// Hands back this token instead of the next bucket (a scheme the reader must detect).
        token_override: Option<u32>,
    }

    impl FakeHtab {
        fn new(bucket_sizes: &[usize]) -> Self {
            let mut next = 0u32;
            let buckets = bucket_sizes
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| {
                            next += 1;
                            (next, u64::from(next) * 1000)
                        })
                        .collect()
                })
                .collect();
            FakeHtab {
                buckets,
                calls: Mutex::new(Vec::new()),
                fail_with: Mutex::new(None),
                overreport: false,
                opaque_tokens: false,
                issued: Mutex::new(HashSet::new()),
                token_override: None,
            }
        }

        fn calls(&self) -> Vec<BatchAttr> {
            self.calls.lock().unwrap().clone()
        }

        fn entries(&self) -> Vec<(u32, u64)> {
            self.buckets.iter().flatten().copied().collect()
        }
    }

    // SAFETY: writes at most `count` entries of the right sizes, updates `count` to what was
    // written, and a 4-byte token.
    unsafe impl BatchCall for FakeHtab {
        fn call(&self, attr: &mut BatchAttr) -> io::Result<()> {
            self.calls.lock().unwrap().push(*attr);
            if let Some(errno) = self.fail_with.lock().unwrap().take() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let max = attr.count as usize;
            attr.count = 0;
            let mut bucket = if attr.in_batch == 0 {
                0
            } else {
                // SAFETY: the reader passes its token buffer, at least 4 bytes.
                let token = unsafe { ptr::read_unaligned(attr.in_batch as *const u32) };
                if self.opaque_tokens && !self.issued.lock().unwrap().contains(&token) {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                token as usize
            };
            if bucket >= self.buckets.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            let mut total = 0;
            let mut result = Ok(());
            loop {
                let entries = &self.buckets[bucket];
                if entries.len() > max - total {
                    if total == 0 {
                        result = Err(io::Error::from_raw_os_error(libc::ENOSPC));
                    }
                    break;
                }
                for (i, (key, value)) in entries.iter().enumerate() {
                    // SAFETY: `total + i < max`, and the reader reserved `max` slots.
                    unsafe {
                        ptr::write((attr.keys as *mut u32).add(total + i), *key);
                        ptr::write((attr.values as *mut u64).add(total + i), *value);
                    }
                }
                total += entries.len();
                bucket += 1;
                if bucket >= self.buckets.len() {
                    result = Err(io::Error::from_raw_os_error(libc::ENOENT));
                    break;
                }
            }
            let token = self.token_override.unwrap_or(bucket as u32);
            self.issued.lock().unwrap().insert(token);
            // SAFETY: the token buffer holds TOKEN_BYTES ≥ 4 bytes.
            unsafe { ptr::write_unaligned(attr.out_batch as *mut u32, token) };
            attr.count = total as u32;
            if self.overreport {
                attr.count = max as u32 + 1;
            }
            result
        }
    }

    fn read(fake: &FakeHtab, chunk: u32) -> io::Result<Vec<(u32, u64)>> {
        let (keys, values) = read_batches::<u32, u64>(fake, chunk, 1 << 20)?;
        assert_eq!(keys.len(), values.len());
        Ok(keys.into_iter().zip(values).collect())
    }

    #[test]
    fn an_empty_map_is_one_call_and_no_entries() {
        let fake = FakeHtab::new(&[0, 0, 0, 0]);
        assert_eq!(read(&fake, 4096).unwrap(), []);
        assert_eq!(fake.calls().len(), 1);
        assert_eq!(
            fake.calls()[0].in_batch,
            0,
            "the first call starts with no token"
        );
    }

    #[test]
    fn every_entry_is_read_once_whatever_the_chunk() {
        let sizes: Vec<usize> = (0..257).map(|i| [0, 1, 2, 0, 3, 1][i % 6]).collect();
        let fake = FakeHtab::new(&sizes);
        let expected = fake.entries();
        for chunk in [1, 2, 3, 5, 7, 64, 100, 4096] {
            fake.calls.lock().unwrap().clear();
            assert_eq!(read(&fake, chunk).unwrap(), expected, "chunk {chunk}");
            // After the first call, each resumes from the token the previous one wrote.
            let calls = fake.calls();
            assert_eq!(calls[0].in_batch, 0);
            assert!(calls[1..].iter().all(|c| c.in_batch == c.out_batch));
        }
    }

    #[test]
    fn the_last_partial_batch_before_enoent_is_kept() {
        // 4097 entries in buckets of one: two full batches of 4096 would end on ENOENT with
        // one entry in the second.
        let fake = FakeHtab::new(&[1; 4097]);
        let read = read(&fake, 4096).unwrap();
        assert_eq!(read.len(), 4097);
        assert_eq!(read, fake.entries());
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn a_bucket_larger_than_the_chunk_grows_the_chunk() {
        let fake = FakeHtab::new(&[1, 5, 0, 2]);
        let read = read(&fake, 2).unwrap();
        assert_eq!(read, fake.entries());
        let asked: Vec<u32> = fake.calls().iter().map(|c| c.count).collect();
        // 2: bucket 0 only (the 5 do not fit); 2: ENOSPC; 4: ENOSPC; 8: the rest, then ENOENT.
        assert_eq!(asked, [2, 2, 4, 8]);
    }

    #[test]
    fn enospc_with_no_room_to_grow_is_an_error() {
        let fake = FakeHtab::new(&[3]);
        let err = read_batches::<u32, u64>(&fake, 1, 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn other_errors_are_returned() {
        let fake = FakeHtab::new(&[1, 1]);
        *fake.fail_with.lock().unwrap() = Some(libc::EINVAL);
        let err = read(&fake, 16).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_count_larger_than_asked_is_not_trusted() {
        let mut fake = FakeHtab::new(&[1, 1]);
        fake.overreport = true;
        let err = read(&fake, 16).unwrap_err();
        assert!(
            err.to_string().contains("17 entries for a batch of 16"),
            "{err}"
        );
    }

    fn pair(key: u32, value: u64) -> (u32, u64) {
        (key, value)
    }

    fn read_split(fake: &FakeHtab, chunk: u32, max_entries: u32, parts: usize) -> Vec<(u32, u64)> {
        merge(
            &read_parallel::<u32, u64>(fake, chunk, max_entries, parts).unwrap(),
            pair,
        )
    }

    /// One part alone: from `start` to `stop`, as a thread of a parallel read runs it.
    fn read_one_part(fake: &FakeHtab, chunk: u32, start: Option<u32>, stop: u64) -> Part<u32, u64> {
        let abandon = AtomicBool::new(false);
        read_part(fake, chunk, 1 << 20, start, Some((stop, &abandon)), None).unwrap()
    }

    /// Bucket sizes with runs of empty buckets, single rows and the odd crowded bucket.
    fn uneven_sizes(buckets: usize) -> Vec<usize> {
        let mut state = 0x2545_f491_u32;
        (0..buckets)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                [0, 0, 1, 1, 2, 3, 0, 9][(state >> 29) as usize]
            })
            .collect()
    }

    #[test]
    fn only_large_tables_on_several_cpus_are_split() {
        assert_eq!(parallel_parts(PARALLEL_BATCH_MIN_ENTRIES - 1, 2), 1);
        assert_eq!(parallel_parts(PARALLEL_BATCH_MIN_ENTRIES, 2), 2);
        assert_eq!(parallel_parts(1 << 20, 1), 1);
        assert_eq!(parallel_parts(1 << 20, 3), 3);
        assert_eq!(parallel_parts(1 << 20, 64), MAX_PARALLEL_PARTS);
    }

    #[test]
    fn a_split_read_returns_every_entry_once_in_bucket_order() {
        // Every chunk from 1 to 12 moves the part boundaries across every position within
        // and between calls: ending on a boundary, crossing it, growing on ENOSPC.
        let fake = FakeHtab::new(&uneven_sizes(256));
        let expected = fake.entries();
        for parts in 2..=4 {
            for chunk in (1..=12).chain([64, 1000, 4096]) {
                assert_eq!(
                    read_split(&fake, chunk, 256, parts),
                    expected,
                    "{parts} parts, chunk {chunk}"
                );
            }
        }
    }

    /// Every `(key, value)` a streamed read handed over, in arrival order.
    fn streamed(fake: &FakeHtab, chunk: u32, buckets: u32, parts: usize) -> Vec<(u32, u64)> {
        let off = AtomicBool::new(false);
        let mut rows = Vec::new();
        stream_all::<u32, u64>(fake, chunk, buckets, parts, &off, |keys, values| {
            assert_eq!(keys.len(), values.len());
            assert!(!keys.is_empty(), "no empty chunks");
            rows.extend(keys.iter().copied().zip(values.iter().copied()));
        })
        .unwrap();
        rows
    }

    #[test]
    fn a_streamed_read_hands_over_every_entry_and_repeats_only_where_parts_meet() {
        let fake = FakeHtab::new(&uneven_sizes(256));
        let expected = fake.entries();
        for parts in 1..=4 {
            for chunk in (1..=12).chain([64, 1000, 4096]) {
                let mut rows = streamed(&fake, chunk, 256, parts);
                let handed = rows.len();
                rows.sort_unstable();
                rows.dedup();
                assert_eq!(rows, expected, "{parts} parts, chunk {chunk}");
                // A repeat comes from a call that crossed into the next part: at most a
                // grown chunk's worth per boundary.
                let repeats = handed - rows.len();
                assert!(
                    repeats <= (parts - 1) * 64.max(chunk as usize),
                    "{parts} parts, chunk {chunk}: {repeats} repeats"
                );
                if parts == 1 {
                    assert_eq!(repeats, 0);
                }
            }
        }
    }

    #[test]
    fn a_streamed_read_on_a_kernel_refusing_start_tokens_is_whole_all_the_same() {
        let mut fake = FakeHtab::new(&uneven_sizes(64));
        fake.opaque_tokens = true;
        let off = AtomicBool::new(false);
        let mut rows = Vec::new();
        stream_all::<u32, u64>(&fake, 4, 64, 2, &off, |keys, values| {
            rows.extend(keys.iter().copied().zip(values.iter().copied()));
        })
        .unwrap();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows, fake.entries());
        assert!(off.load(Ordering::Relaxed), "later reads use one thread");
    }

    #[test]
    fn a_streamed_read_reports_an_error_that_is_not_about_tokens() {
        let fake = FakeHtab::new(&uneven_sizes(64));
        *fake.fail_with.lock().unwrap() = Some(libc::EFAULT);
        let off = AtomicBool::new(false);
        // The parallel read fails, the one-thread read after it succeeds.
        let mut rows = Vec::new();
        stream_all::<u32, u64>(&fake, 4, 64, 1, &off, |keys, values| {
            rows.extend(keys.iter().copied().zip(values.iter().copied()));
        })
        .unwrap_err();
        assert!(!off.load(Ordering::Relaxed));
    }

    #[test]
    fn a_part_ending_on_the_next_parts_first_bucket_keeps_every_row() {
        let fake = FakeHtab::new(&[1; 8]);
        let part = read_one_part(&fake, 4, None, 4);
        assert_eq!((part.keys.len(), part.settled, part.end), (4, 4, 4));
        assert_eq!(fake.calls().len(), 1, "no call past the next part's start");
        assert_eq!(read_split(&fake, 4, 8, 2), fake.entries());
    }

    #[test]
    fn the_tail_of_a_call_crossing_into_the_next_part_is_dropped() {
        let fake = FakeHtab::new(&[1; 8]);
        // Buckets 0-2, then 3-5: bucket 3 is this part's, 4 and 5 the next part's.
        let part = read_one_part(&fake, 3, None, 4);
        assert_eq!(part.keys, [1, 2, 3, 4, 5, 6]);
        assert_eq!((part.settled, part.end), (3, 6));
        assert_eq!(read_split(&fake, 3, 8, 2), fake.entries());
    }

    #[test]
    fn a_grown_chunk_may_overshoot_several_of_the_next_parts_calls() {
        // Bucket 0 grows the chunk to 8; the next call then reads buckets 8-10 of the next
        // part, which reads them one call each. Bucket 0's rows share the crossing call and
        // must be kept.
        let mut sizes = vec![5, 0, 0, 0, 0, 0, 0, 0];
        sizes.extend([1; 8]);
        let fake = FakeHtab::new(&sizes);
        let part = read_one_part(&fake, 1, None, 8);
        assert_eq!((part.keys.len(), part.settled, part.end), (8, 0, 11));
        assert_eq!(read_split(&fake, 1, 16, 2), fake.entries());
    }

    #[test]
    fn an_overshoot_may_run_through_whole_parts() {
        // Four parts of four buckets; rows only in buckets 1 and 13. Part 0's single call
        // reads to the end of the map, parts 1 and 2 read bucket 13 too.
        let mut sizes = [0; 16];
        sizes[1] = 2;
        sizes[13] = 3;
        let fake = FakeHtab::new(&sizes);
        let part = read_one_part(&fake, 4096, None, 4);
        assert_eq!((part.keys.len(), part.settled, part.end), (5, 0, u64::MAX));
        assert_eq!(read_split(&fake, 4096, 16, 4), fake.entries());
        assert_eq!(read_split(&fake, 2, 16, 4), fake.entries());
    }

    #[test]
    fn empty_parts_and_empty_maps() {
        let fake = FakeHtab::new(&[0; 64]);
        assert_eq!(read_split(&fake, 16, 64, 4), []);
        let mut sizes = [1; 64];
        sizes[16..48].fill(0);
        let fake = FakeHtab::new(&sizes);
        for chunk in [1, 5, 4096] {
            assert_eq!(
                read_split(&fake, chunk, 64, 4),
                fake.entries(),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_later_part_grows_its_chunk_for_a_crowded_bucket() {
        let mut sizes = [1; 16];
        sizes[8] = 6;
        let fake = FakeHtab::new(&sizes);
        let part = read_one_part(&fake, 2, Some(8), u64::MAX);
        assert_eq!(part.keys.len(), 13);
        let grown: Vec<u32> = fake.calls().iter().map(|c| c.count).take(3).collect();
        assert_eq!(grown, [2, 4, 8]);
        assert_eq!(read_split(&fake, 2, 16, 2), fake.entries());
    }

    #[test]
    fn enospc_on_the_next_parts_bucket_ends_the_part_without_growing() {
        let fake = FakeHtab::new(&[0, 0, 0, 0, 5, 1, 1, 1]);
        let part = read_one_part(&fake, 2, None, 4);
        assert_eq!((part.keys.len(), part.settled, part.end), (0, 0, 4));
        assert_eq!(fake.calls().len(), 1);
        assert_eq!(read_split(&fake, 2, 8, 2), fake.entries());
    }

    #[test]
    fn a_wrong_guess_of_the_bucket_count_is_slower_not_wrong() {
        let sizes = uneven_sizes(64);
        let fake = FakeHtab::new(&sizes);
        // Guessed too many buckets: the later parts start past the end and find nothing.
        assert_eq!(read_split(&fake, 7, 1024, 4), fake.entries());
        // Too few: the last part reads on to the real end.
        assert_eq!(read_split(&fake, 7, 8, 4), fake.entries());
    }

    #[test]
    fn a_kernel_refusing_start_tokens_is_read_by_one_thread_from_then_on() {
        let sizes = uneven_sizes(64);
        let mut fake = FakeHtab::new(&sizes);
        fake.opaque_tokens = true;
        let off = AtomicBool::new(false);
        let err = read_parallel::<u32, u64>(&fake, 4, 64, 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let rows = read_all::<u32, u64, _>(&fake, 4, 64, 2, &off, pair).unwrap();
        assert_eq!(rows, fake.entries());
        assert!(off.load(Ordering::Relaxed));
        fake.calls.lock().unwrap().clear();
        assert_eq!(
            read_all::<u32, u64, _>(&fake, 4, 64, 2, &off, pair).unwrap(),
            rows
        );
        assert_eq!(
            fake.calls()[0].in_batch,
            0,
            "the later read starts at the beginning"
        );
    }

    #[test]
    fn tokens_that_do_not_move_forward_are_refused() {
        let mut fake = FakeHtab::new(&[1, 1, 1, 1]);
        fake.token_override = Some(0);
        let err = read_parallel::<u32, u64>(&fake, 1, 4, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_failing_part_stops_the_others_and_its_error_is_reported() {
        let fake = FakeHtab::new(&uneven_sizes(256));
        *fake.fail_with.lock().unwrap() = Some(libc::EIO);
        let err = read_parallel::<u32, u64>(&fake, 1, 256, 4).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        // A passing failure falls back for this read only.
        *fake.fail_with.lock().unwrap() = Some(libc::EIO);
        let off = AtomicBool::new(false);
        let rows = read_all::<u32, u64, _>(&fake, 1, 256, 4, &off, pair).unwrap();
        assert_eq!(rows, fake.entries());
        assert!(!off.load(Ordering::Relaxed));
    }
}
