//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+), which aya 0.14 does not wrap.
//!
//! Iterating a hash map with `get_next_key` + lookup costs two syscalls per entry (about 2.2 s
//! for a million rows); a batch lookup copies thousands of entries per syscall. For hash maps
//! the kernel walks bucket by bucket and hands back a bucket index as the resume token, so a
//! read never sees an entry twice even while the XDP program inserts and evicts rows. Like
//! any read of a live map it is not a snapshot: a row inserted into a bucket already visited
//! is missed, one evicted before its bucket is reached is not returned.

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::{
    maps::{MapData, MapError, MapType},
    Pod,
};

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
/// entries per syscall.
///
/// `K` and `V` must be exactly the map's key and value types: their sizes are checked against
/// what the kernel reports, since the kernel writes `key_size`/`value_size` bytes per entry.
pub fn lookup_all<K: Pod, V: Pod>(
    map: &MapData,
    name: &'static str,
    chunk: u32,
) -> Result<Vec<(K, V)>, BatchError> {
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
    let mut call = Syscall {
        fd: map.fd().as_fd(),
    };
    let (keys, values) = read_batches::<K, V>(&mut call, chunk, info.max_entries())
        .map_err(|source| BatchError::Lookup { map: name, source })?;
    Ok(keys.into_iter().zip(values).collect())
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
    fn call(&mut self, attr: &mut BatchAttr) -> io::Result<()>;
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
    fn call(&mut self, attr: &mut BatchAttr) -> io::Result<()> {
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

/// Reads every entry through `call`, `chunk` at a time, until the kernel says the map is done.
/// `max_entries` bounds how far the chunk may grow to fit one bucket.
fn read_batches<K: Pod, V: Pod>(
    call: &mut impl BatchCall,
    chunk: u32,
    max_entries: u32,
) -> io::Result<(Vec<K>, Vec<V>)> {
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    // u64 words so the token is aligned for whatever the kernel stores in it.
    let mut token = [0u64; TOKEN_BYTES / 8];
    let mut started = false;
    let mut chunk = chunk.max(1);
    loop {
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
        // SAFETY: by the `BatchCall` contract the first `written` (≤ `chunk` ≤ spare
        // capacity) slots past the current lengths were initialized, and `K`, `V` are `Pod`, so
        // any bytes are valid values.
        unsafe {
            keys.set_len(keys.len() + written as usize);
            values.set_len(values.len() + written as usize);
        }
        if finished {
            return Ok((keys, values));
        }
        started = true;
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    /// A kernel hash map in miniature, with the semantics of
    /// `__htab_map_lookup_and_delete_batch`: whole buckets only, a `u32` bucket index as token,
    /// `ENOSPC` when the first non-empty bucket does not fit, `ENOENT` after the last bucket.
    struct FakeHtab {
        buckets: Vec<Vec<(u32, u64)>>,
        calls: Vec<BatchAttr>,
        /// Returned on the next call instead of doing anything.
        fail_with: Option<i32>,
        /// Claims more entries than asked for (a kernel bug the reader must not trust).
        overreport: bool,
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
                calls: Vec::new(),
                fail_with: None,
                overreport: false,
            }
        }

        fn entries(&self) -> Vec<(u32, u64)> {
            self.buckets.iter().flatten().copied().collect()
        }
    }

    // SAFETY: writes at most `count` entries of the right sizes, updates `count` to what was
    // written, and a 4-byte token.
    unsafe impl BatchCall for FakeHtab {
        fn call(&mut self, attr: &mut BatchAttr) -> io::Result<()> {
            self.calls.push(*attr);
            if let Some(errno) = self.fail_with.take() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let max = attr.count as usize;
            attr.count = 0;
            let mut bucket = if attr.in_batch == 0 {
                0
            } else {
                // SAFETY: the reader passes its token buffer, at least 4 bytes.
                unsafe { ptr::read_unaligned(attr.in_batch as *const u32) as usize }
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
            // SAFETY: the token buffer holds TOKEN_BYTES ≥ 4 bytes.
            unsafe { ptr::write_unaligned(attr.out_batch as *mut u32, bucket as u32) };
            attr.count = total as u32;
            if self.overreport {
                attr.count = max as u32 + 1;
            }
            result
        }
    }

    fn read(fake: &mut FakeHtab, chunk: u32) -> io::Result<Vec<(u32, u64)>> {
        let (keys, values) = read_batches::<u32, u64>(fake, chunk, 1 << 20)?;
        assert_eq!(keys.len(), values.len());
        Ok(keys.into_iter().zip(values).collect())
    }

    #[test]
    fn an_empty_map_is_one_call_and_no_entries() {
        let mut fake = FakeHtab::new(&[0, 0, 0, 0]);
        assert_eq!(read(&mut fake, 4096).unwrap(), []);
        assert_eq!(fake.calls.len(), 1);
        assert_eq!(
            fake.calls[0].in_batch, 0,
            "the first call starts with no token"
        );
    }

    #[test]
    fn every_entry_is_read_once_whatever_the_chunk() {
        let sizes: Vec<usize> = (0..257).map(|i| [0, 1, 2, 0, 3, 1][i % 6]).collect();
        let mut fake = FakeHtab::new(&sizes);
        let expected = fake.entries();
        for chunk in [1, 2, 3, 5, 7, 64, 100, 4096] {
            fake.calls.clear();
            assert_eq!(read(&mut fake, chunk).unwrap(), expected, "chunk {chunk}");
            // After the first call, each resumes from the token the previous one wrote.
            assert_eq!(fake.calls[0].in_batch, 0);
            assert!(fake.calls[1..].iter().all(|c| c.in_batch == c.out_batch));
        }
    }

    #[test]
    fn the_last_partial_batch_before_enoent_is_kept() {
        // 4097 entries in buckets of one: two full batches of 4096 would end on ENOENT with
        // one entry in the second.
        let mut fake = FakeHtab::new(&[1; 4097]);
        let read = read(&mut fake, 4096).unwrap();
        assert_eq!(read.len(), 4097);
        assert_eq!(read, fake.entries());
        assert_eq!(fake.calls.len(), 2);
    }

    #[test]
    fn a_bucket_larger_than_the_chunk_grows_the_chunk() {
        let mut fake = FakeHtab::new(&[1, 5, 0, 2]);
        let read = read(&mut fake, 2).unwrap();
        assert_eq!(read, fake.entries());
        let asked: Vec<u32> = fake.calls.iter().map(|c| c.count).collect();
        // 2: bucket 0 only (the 5 do not fit); 2: ENOSPC; 4: ENOSPC; 8: the rest, then ENOENT.
        assert_eq!(asked, [2, 2, 4, 8]);
    }

    #[test]
    fn enospc_with_no_room_to_grow_is_an_error() {
        let mut fake = FakeHtab::new(&[3]);
        let err = read_batches::<u32, u64>(&mut fake, 1, 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn other_errors_are_returned() {
        let mut fake = FakeHtab::new(&[1, 1]);
        fake.fail_with = Some(libc::EINVAL);
        let err = read(&mut fake, 16).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_count_larger_than_asked_is_not_trusted() {
        let mut fake = FakeHtab::new(&[1, 1]);
        fake.overreport = true;
        let err = read(&mut fake, 16).unwrap_err();
        assert!(
            err.to_string().contains("17 entries for a batch of 16"),
            "{err}"
        );
    }
}
