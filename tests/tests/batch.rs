//! The batched per-source reader (BPF_MAP_LOOKUP_BATCH) against the real table: it must
//! return exactly what iterating the map returns, at every chunk boundary.
//!
//! Each test loads its own program (own maps) and fills the table by running the program on
//! one SYN per source, so every row holds real counters and kernel timestamps.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use limiter_common::SourceStats;
use limiter_tests::frames::Packet;
use limiter_user::loader::{
    Limiter, LoadOptions, SourceEntry, Verdict, DEFAULT_BATCH_CHUNK, PARALLEL_BATCH_MIN_ENTRIES,
};

/// The Glance API port.
const GLANCE: u16 = 9292;

/// The `i`-th test source: 198.51.100.0/24, then 203.0.113.0/24, then 2001:db8::/32.
fn source(i: u32) -> IpAddr {
    match i {
        0..=255 => IpAddr::from([198, 51, 100, i as u8]),
        256..=511 => IpAddr::from([203, 0, 113, (i - 256) as u8]),
        _ => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0x0db8,
            0,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        )),
    }
}

fn load(capacity: u32) -> Limiter {
    let options = LoadOptions {
        source_capacity: capacity,
    };
    let mut limiter = Limiter::load(&options).expect("load the XDP program");
    limiter
        .set_protected_ports(&[GLANCE])
        .expect("protect the Glance port");
    limiter
}

/// One SYN from each of the first `n` sources.
fn fill(limiter: &Limiter, n: u32) {
    for i in 0..n {
        let frame = Packet::syn(&source(i).to_string(), GLANCE).build();
        assert_eq!(
            limiter.test_run(&frame).expect("run the program"),
            Verdict::Pass
        );
    }
}

/// The rows by address; fails if an address appears twice.
fn by_addr(entries: Vec<SourceEntry>, method: &str) -> HashMap<IpAddr, SourceStats> {
    let rows = entries.len();
    let table: HashMap<IpAddr, SourceStats> =
        entries.into_iter().map(|e| (e.addr, e.stats)).collect();
    assert_eq!(table.len(), rows, "{method} returned an address twice");
    table
}

fn assert_same_as_iterating(limiter: &Limiter, n: u32, chunks: &[u32]) {
    let iterated = by_addr(limiter.sources().expect("iterate the table"), "iterating");
    assert_eq!(
        iterated.len(),
        n as usize,
        "the table should hold every source"
    );
    for i in 0..n {
        let stats = iterated[&source(i)];
        assert_eq!((stats.syns, stats.packets), (1, 1), "{}", source(i));
    }
    for &chunk in chunks {
        let batched = by_addr(
            limiter
                .sources_batched_by(chunk)
                .unwrap_or_else(|e| panic!("batched read, chunk {chunk}: {e}")),
            "the batched reader",
        );
        assert_eq!(batched.len(), iterated.len(), "N = {n}, chunk {chunk}");
        // Whole rows, so every counter and timestamp matches, not only the set of addresses.
        assert!(batched == iterated, "N = {n}, chunk {chunk}: rows differ");
    }
    let default = by_addr(limiter.sources_batched().unwrap(), "sources_batched");
    assert!(default == iterated, "N = {n}: sources_batched differs");
    // The daemon's streamed read may hand a row over twice where parts meet, never another
    // row: on a quiet table both readings are the same, so the set is the table.
    let mut handed = 0usize;
    let mut streamed = HashMap::new();
    limiter
        .for_each_source(|e| {
            handed += 1;
            if let Some(earlier) = streamed.insert(e.addr, e.stats) {
                assert_eq!(earlier, e.stats, "{} read twice, differently", e.addr);
            }
        })
        .unwrap();
    assert!(streamed == iterated, "N = {n}: the streamed read differs");
    println!(
        "N = {n}: the streamed read handed over {handed} rows ({} twice)",
        handed - streamed.len()
    );
}

#[test]
fn batched_reads_equal_iterated_reads_at_every_chunk_boundary() {
    limiter_tests::require_kernel!();
    for n in [0, 1, 4095, 4096, 4097, 20_000] {
        let limiter = load(65_536);
        fill(&limiter, n);
        // The default chunk puts N around its boundary; a chunk of 1 makes every hash bucket
        // holding two rows return ENOSPC first, so the reader must grow its buffer.
        let chunks: &[u32] = if n <= 4097 {
            &[DEFAULT_BATCH_CHUNK, 1, 7]
        } else {
            &[DEFAULT_BATCH_CHUNK, 1000]
        };
        assert_same_as_iterating(&limiter, n, chunks);
    }
}

/// A table large enough to be read by several threads, each from its own range of hash
/// buckets, must still come back exactly once per row.
#[test]
fn parallel_batched_reads_equal_iterated_reads() {
    limiter_tests::require_kernel!();
    let capacity = 2 * PARALLEL_BATCH_MIN_ENTRIES;
    let rows = PARALLEL_BATCH_MIN_ENTRIES;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("one CPU: the reader stays single-threaded, so this checks only that path");
    }
    // Half full, so the LRU never evicts a row while the table fills.
    let limiter = load(capacity);
    fill(&limiter, rows);
    // The default chunk ends the first part's range mid-call; 1000 puts the boundary
    // elsewhere; a chunk larger than the table makes the first part's one call read the
    // whole map, all of it overlapping the later parts.
    assert_same_as_iterating(&limiter, rows, &[DEFAULT_BATCH_CHUNK, 1000, 2 * capacity]);
}

#[test]
fn batched_reads_follow_the_table_as_it_changes() {
    limiter_tests::require_kernel!();
    let limiter = load(65_536);
    fill(&limiter, 300);
    // More traffic from some sources changes their counters, not the set of rows.
    for i in (0..300).step_by(7) {
        let frame = Packet::request(
            &source(i).to_string(),
            GLANCE,
            b"POST /v2/images HTTP/1.1\r\n",
        )
        .build();
        limiter.test_run(&frame).unwrap();
    }
    let batched = by_addr(limiter.sources_batched().unwrap(), "the batched reader");
    assert_eq!(batched[&source(7)].image_create, 1);
    assert_eq!(batched[&source(8)].image_create, 0);
    assert!(batched == by_addr(limiter.sources().unwrap(), "iterating"));
}

/// Informational: how long each reader takes for a table of 65,536 rows. No assertion on
/// time; run with `--nocapture` to see it.
#[test]
fn time_batched_and_iterated_reads_of_65536_sources() {
    limiter_tests::require_kernel!();
    const ROWS: u32 = 65_536;
    // Twice the rows, so the LRU never evicts one while the table fills.
    let capacity = 2 * ROWS;
    let limiter = load(capacity);
    fill(&limiter, ROWS);

    let best_of = |read: &dyn Fn() -> Vec<SourceEntry>| {
        let mut best = Duration::MAX;
        let mut rows = 0;
        for _ in 0..3 {
            let started = Instant::now();
            rows = read().len();
            best = best.min(started.elapsed());
        }
        (best, rows)
    };
    let (iterated, iterated_rows) = best_of(&|| limiter.sources().unwrap());
    let (batched, batched_rows) = best_of(&|| limiter.sources_batched().unwrap());
    let (one_call, _) = best_of(&|| limiter.sources_batched_by(2 * ROWS).unwrap());
    println!(
        "{ROWS} sources (table capacity {capacity}), best of 3: iterating {iterated:?} \
         ({iterated_rows} rows), BPF_MAP_LOOKUP_BATCH by {DEFAULT_BATCH_CHUNK} {batched:?} \
         ({batched_rows} rows, {:.1}x faster), in one call {one_call:?}",
        iterated.as_secs_f64() / batched.as_secs_f64()
    );
    assert_eq!(
        (iterated_rows, batched_rows),
        (ROWS as usize, ROWS as usize)
    );
    assert_same_as_iterating(&limiter, ROWS, &[DEFAULT_BATCH_CHUNK]);
}
