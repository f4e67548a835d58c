//! Per-source rates from the kernel's cumulative counters (pure: time is passed in).
//!
//! The XDP program only counts; every poll the daemon hands [`RateTracker::observe`] each
//! source's cumulative [`Counts`] and the time, and the tracker turns the increase since the
//! previous poll into counts per trailing window, which is what the policy's thresholds compare
//! against:
//!
//! | figure | window | buckets |
//! | --- | --- | --- |
//! | new connections (SYNs) | 10 s, reported as a per-second mean | 10 × 1 s |
//! | image creates | 60 s | 12 × 5 s |
//! | image creates | 3600 s | 60 × 1 min |
//! | other writes | 60 s | 12 × 5 s |
//! | SYNs, reads, packets, bytes per second | the last poll interval (display only) | — |
//!
//! The 10 s mean for connections is deliberate: a client that opens a burst of connections in
//! one second (a parallel download, a restart) stays under a per-second threshold unless it
//! keeps it up.
//!
//! # Granularity
//! A window is the `N` buckets ending with the one that holds "now", and bucket `k` holds the
//! events in `(k·B, (k+1)·B]`. When a poll lands on a bucket boundary (as it does when the
//! daemon polls every whole second of the clock it passes in), a window covers exactly its
//! nominal length. Otherwise it covers between `(N−1)·B` and `N·B`: at worst it misses the
//! events of the oldest 1 s / 5 s / 1 min — 10 %, 8.3 % and 1.7 % of a steady rate. The error
//! only ever under-counts, so bucketing can delay a ban by up to one bucket's worth of events but
//! never causes one; nothing older than a window is ever counted in it.
//!
//! # Attribution
//! The counters only say how much happened between two polls, not when. The increase is spread
//! evenly over that span (a steady rate is the only assumption that needs no more information):
//! - a poll that arrives late (a stalled daemon, a slow map dump) does not turn 30 s of normal
//!   traffic into a 10 s burst: a third of it lands in the 10 s window;
//! - the span starts at the last poll that listed the source; for a source that is new to the
//!   tracker it starts at the previous poll, since a row absent then was inserted afterwards;
//! - a source left out of the previous poll was idle through it (the daemon skips only rows
//!   with no activity since the poll before), so its span starts at the previous poll too: a
//!   burst after an hour's silence is a burst, not an hour's steady trickle;
//! - whatever part of the span lies before a ring's oldest bucket is outside that window and
//!   is dropped.
//!
//! The very first poll only records a baseline: after a daemon restart the kernel rows carry
//! totals from long before, and counting those as one interval would ban every busy client.
//!
//! # Resets
//! The kernel table evicts its least recently used row when full, so a source can come back
//! with its counters restarted. Any counter going down marks such a reset, and the new values
//! are then the increase (the counts between the last poll and the eviction are lost). A row that
//! was evicted and refilled past its old values within one interval cannot be told apart from an
//! ordinary increase; that under-counts one interval, and only for a source that was idle
//! enough to be evicted.
//!
//! # Memory
//! A million tracked sources must fit in a few hundred megabytes (issue 12: ≤ 250 bytes a
//! source, the poll's peak included). Each source is one [`SOURCE_SLOT_BYTES`] (160) byte slot
//! in a dense vector: its address (16), the last counters (48), bookkeeping (48) and the 10 s
//! connection ring (40), plus a pointer to its write rings. The three write rings (a minute of
//! creates and of other writes, an hour of creates: 336 bytes) are allocated only for a source
//! that has written, and freed once they are empty again, so a SYN flood from a million spoofed
//! addresses costs no write rings at all. An index maps each address to its slot (20 bytes an
//! entry, at most twice as many entries as sources right after it grows). The slots grow by
//! doubling, but only the pages in use are resident.
//!
//! A source is forgotten once it is missing from the latest poll and has been idle longer than
//! the longest window (one hour); a source still listed by the kernel is kept, because
//! forgetting it would make its lifetime totals look new when it is next seen. Beyond
//! `max_sources`, sources missing from the latest poll are forgotten, longest idle first, so the
//! tracker stays within `max(max_sources, sources in the latest poll)` sources.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use limiter_common::SourceStats;

/// The window the new-connection rate is averaged over.
pub const NEW_CONNECTION_WINDOW: Duration = Duration::from_secs(10);
/// The window of the per-minute counts.
pub const MINUTE_WINDOW: Duration = Duration::from_secs(60);
/// The window of the per-hour counts; also how long an idle, departed source is remembered.
pub const HOUR_WINDOW: Duration = Duration::from_secs(3600);

/// Bytes of one tracked source's slot (its index entry and write rings not included).
pub const SOURCE_SLOT_BYTES: usize = std::mem::size_of::<SourceWindow>();
/// Bytes of one source's write rings, allocated only while it has writes in a window.
pub const WRITE_RINGS_BYTES: usize = std::mem::size_of::<WriteRings>();
/// Bytes of one index entry (address → slot), before the hash table's slack.
pub const INDEX_ENTRY_BYTES: usize = std::mem::size_of::<(AddrKey, u32)>();

/// One source's cumulative counters as read from the kernel table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub syns: u64,
    pub image_create: u64,
    pub other_write: u64,
    pub read: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The kernel row existed before the previous poll. When such a row is new to the
    /// tracker (it was idle and skipped, or forgotten), its counters are lifetime totals,
    /// not new activity: they become a baseline instead of an increase.
    pub row_predates_last_poll: bool,
}

impl From<&SourceStats> for Counts {
    fn from(stats: &SourceStats) -> Self {
        Counts {
            syns: stats.syns.into(),
            image_create: stats.image_create.into(),
            other_write: stats.other_write.into(),
            read: stats.read.into(),
            packets: stats.packets.into(),
            bytes: stats.bytes,
            row_predates_last_poll: false,
        }
    }
}

impl Counts {
    fn fields(&self) -> [u64; 6] {
        [
            self.syns,
            self.image_create,
            self.other_write,
            self.read,
            self.packets,
            self.bytes,
        ]
    }

    /// The increase since `earlier`, or `None` if the row was reset (evicted and re-created).
    ///
    /// The kernel keeps packets, SYNs and requests in 32 bits that wrap (`SourceStats`), so
    /// their increase is taken modulo 2^32; one beyond 2^31 is a counter that went down, since
    /// no source sends two billion of one kind between two polls. Bytes are 64 bits and never
    /// wrap: a count that went down is a reset.
    fn increase_since(&self, earlier: &Counts) -> Option<Counts> {
        let wrapping = |now: u64, before: u64| {
            let increase = (now as u32).wrapping_sub(before as u32);
            (increase <= u32::MAX / 2).then_some(u64::from(increase))
        };
        Some(Counts {
            syns: wrapping(self.syns, earlier.syns)?,
            image_create: wrapping(self.image_create, earlier.image_create)?,
            other_write: wrapping(self.other_write, earlier.other_write)?,
            read: wrapping(self.read, earlier.read)?,
            packets: wrapping(self.packets, earlier.packets)?,
            bytes: self.bytes.checked_sub(earlier.bytes)?,
            row_predates_last_poll: false,
        })
    }

    fn is_zero(&self) -> bool {
        self.fields().iter().all(|v| *v == 0)
    }
}

/// The cumulative counters a slot keeps from one poll to the next ([`Counts`] without the
/// per-poll flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals([u64; 6]);

impl From<Counts> for Totals {
    fn from(counts: Counts) -> Self {
        Totals(counts.fields())
    }
}

impl From<Totals> for Counts {
    fn from(Totals([syns, image_create, other_write, read, packets, bytes]): Totals) -> Self {
        Counts {
            syns,
            image_create,
            other_write,
            read,
            packets,
            bytes,
            row_predates_last_poll: false,
        }
    }
}

/// An address as the index keys it: IPv4 as its IPv4-mapped IPv6 form, so that one key type
/// (16 bytes, alignment 1) serves both families.
type AddrKey = [u8; 16];

fn addr_key(addr: IpAddr) -> AddrKey {
    crate::net::addr_to_key(addr)
}

fn key_addr(key: AddrKey) -> IpAddr {
    crate::net::key_to_addr(key)
}

/// One source's activity as of the tracker's latest poll.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// SYNs in the trailing [`NEW_CONNECTION_WINDOW`]; see
    /// [`Rates::new_connections_per_second`].
    pub new_connections_in_window: u64,
    /// SYNs per second over the last poll interval (display only: one busy second is no
    /// reason to ban).
    pub new_connections_per_second_last_interval: f64,
    /// Image creates in the trailing minute.
    pub image_creates_last_minute: u64,
    /// Image creates in the trailing hour.
    pub image_creates_last_hour: u64,
    /// Other writes (other POST, PUT, PATCH, DELETE) in the trailing minute.
    pub other_writes_last_minute: u64,
    /// Image records created in the trailing hour: not from the kernel rows this tracker
    /// reads but from Glance's answers (`created_records`), filled in by the engine.
    pub records_created_last_hour: u64,
    /// Over the last poll interval, for display.
    pub reads_per_second: f64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

impl Rates {
    /// Mean new connections per second over [`NEW_CONNECTION_WINDOW`]. For the first seconds
    /// of a source's history this is low on purpose: the window is divided by its full length.
    pub fn new_connections_per_second(&self) -> f64 {
        self.new_connections_in_window as f64 / NEW_CONNECTION_WINDOW.as_secs_f64()
    }
}

/// What one [`RateTracker::observe`] call did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObserveSummary {
    /// Sources the tracker had not seen before (or had forgotten).
    pub new_sources: usize,
    /// Sources whose counters went down: their kernel row was evicted and re-created.
    pub resets: usize,
    /// Sources forgotten because they left the kernel table and stayed idle for an hour.
    pub forgotten_idle: usize,
    /// Sources forgotten early because the tracker was over `max_sources`.
    pub forgotten_over_capacity: usize,
}

/// Sliding-window counts for every source the kernel reports.
#[derive(Clone, Debug)]
pub struct RateTracker {
    /// Every tracked source, densely: removal moves the last slot into the hole.
    slots: Vec<SourceWindow>,
    /// Address → position in `slots`.
    index: HashMap<AddrKey, u32>,
    max_sources: usize,
    /// Time of the latest poll, in milliseconds on the caller's clock.
    now_ms: u64,
    /// Number of polls so far (wrapping); a source listed in the latest one has
    /// `listed_in_poll == polls`.
    polls: u32,
    /// Time of the poll before the latest one.
    previous_poll_ms: u64,
    /// The first poll only records each source's counters: see the module docs.
    baseline_taken: bool,
}

impl RateTracker {
    /// A tracker that keeps at most `max_sources` sources beyond those listed in the latest
    /// poll. Give at least the kernel table's capacity, so that only sources that have left the
    /// kernel table are ever forgotten early.
    pub fn new(max_sources: usize) -> Self {
        RateTracker {
            slots: Vec::new(),
            index: HashMap::new(),
            max_sources,
            now_ms: 0,
            polls: 0,
            previous_poll_ms: 0,
            baseline_taken: false,
        }
    }

    /// Takes one poll: `now` on a monotonic clock of the caller's choosing (time since the
    /// daemon started, say), and each source's cumulative counters. A `now` earlier than the
    /// previous one is taken as equal to it. Sources missing from `sources` keep their history.
    pub fn observe(
        &mut self,
        now: Duration,
        sources: impl IntoIterator<Item = (IpAddr, Counts)>,
    ) -> ObserveSummary {
        let mut poll = self.begin_poll(now);
        for (addr, counts) in sources {
            let _ = self.observe_source(&mut poll, addr, counts);
        }
        self.end_poll(poll)
    }

    /// [`RateTracker::observe`] in steps, for a caller that reads the sources a chunk at a
    /// time and does not hold them all: `begin_poll`, then [`RateTracker::observe_source`] for
    /// each, then [`RateTracker::end_poll`]. Until `end_poll`, the figures of sources not yet
    /// observed in this poll are those of the previous one.
    pub fn begin_poll(&mut self, now: Duration) -> Poll {
        let now_ms = millis(now).max(self.now_ms);
        let is_baseline = !std::mem::replace(&mut self.baseline_taken, true);
        self.previous_poll_ms = self.now_ms;
        self.now_ms = now_ms;
        self.polls = self.polls.wrapping_add(1);
        Poll {
            is_baseline,
            summary: ObserveSummary::default(),
        }
    }

    /// One source's cumulative counters in the poll `poll` began; returns its figures as of
    /// this poll (while its slot is at hand: a caller that needs them saves a lookup).
    pub fn observe_source(&mut self, poll: &mut Poll, addr: IpAddr, counts: Counts) -> Rates {
        self.observe_source_counted(poll, addr, counts).0
    }

    /// [`RateTracker::observe_source`], and the increase it recorded (zero for a baseline):
    /// what a sum over sources, such as a prefix's, adds.
    pub fn observe_source_counted(
        &mut self,
        poll: &mut Poll,
        addr: IpAddr,
        counts: Counts,
    ) -> (Rates, Counts) {
        let (now_ms, poll_number) = (self.now_ms, self.polls);
        let key = addr_key(addr);
        match self.index.get(&key) {
            Some(&slot) => {
                let window = &mut self.slots[slot as usize];
                let last = Counts::from(window.last);
                let increase = match counts.increase_since(&last) {
                    Some(increase) => increase,
                    None => {
                        poll.summary.resets += 1;
                        counts
                    }
                };
                // Left out of the previous poll, the source was idle then (callers leave
                // out only rows with no activity since the poll before): all of the increase
                // came after it, and spreading it back to the last listing would hide a
                // burst after a quiet spell.
                let since_ms = if window.listed_in_poll == poll_number.wrapping_sub(1) {
                    window.listed_at_ms
                } else {
                    self.previous_poll_ms.max(window.listed_at_ms)
                };
                window.record(increase, since_ms, now_ms, poll_number);
                window.last = Totals::from(counts);
                (window.rates(now_ms, poll_number), increase)
            }
            None => {
                poll.summary.new_sources += 1;
                let mut window = SourceWindow::new(key, counts, now_ms, poll_number);
                let recorded = if !poll.is_baseline && !counts.row_predates_last_poll {
                    window.record(counts, self.previous_poll_ms, now_ms, poll_number);
                    Counts {
                        row_predates_last_poll: false,
                        ..counts
                    }
                } else {
                    Counts::default()
                };
                let rates = window.rates(now_ms, poll_number);
                let slot = u32::try_from(self.slots.len())
                    .expect("fewer than 2^32 sources: the kernel table holds at most 2^24");
                self.slots.push(window);
                self.index.insert(key, slot);
                (rates, recorded)
            }
        }
    }

    /// Ends the poll: forgets what has been idle too long or is over capacity.
    pub fn end_poll(&mut self, poll: Poll) -> ObserveSummary {
        let mut summary = poll.summary;
        summary.forgotten_idle = self.forget_idle();
        summary.forgotten_over_capacity = self.forget_over_capacity();
        summary
    }

    /// The source's figures as of the latest poll, if it is tracked.
    pub fn rates(&self, addr: IpAddr) -> Option<Rates> {
        self.window(addr)
            .map(|window| window.rates(self.now_ms, self.polls))
    }

    fn window(&self, addr: IpAddr) -> Option<&SourceWindow> {
        let slot = *self.index.get(&addr_key(addr))?;
        Some(&self.slots[slot as usize])
    }

    /// The source's cumulative counters as of the last poll that saw them change (or first
    /// listed it): lifetime totals for display, without keeping a copy of the kernel table.
    pub fn last_counts(&self, addr: IpAddr) -> Option<Counts> {
        self.window(addr).map(|window| window.last.into())
    }

    /// Every tracked source with its figures, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, Rates)> + '_ {
        self.slots
            .iter()
            .map(|window| (key_addr(window.key), window.rates(self.now_ms, self.polls)))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The time of the latest poll.
    pub fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms)
    }

    fn forget_idle(&mut self) -> usize {
        let (now_ms, poll) = (self.now_ms, self.polls);
        self.forget(|window| window.listed_in_poll != poll && window.idle_for_an_hour(now_ms))
    }

    /// Beyond `max_sources`, forgets departed sources, longest idle first, down to 7/8 of the
    /// bound so that the sort is not repeated every poll under churn.
    fn forget_over_capacity(&mut self) -> usize {
        if self.slots.len() <= self.max_sources {
            return 0;
        }
        let poll = self.polls;
        let mut departed: Vec<u32> = self
            .slots
            .iter()
            .filter(|window| window.listed_in_poll != poll)
            .map(|window| window.last_active_sec)
            .collect();
        let target = self.max_sources - self.max_sources / 8;
        let excess = self.slots.len().saturating_sub(target).min(departed.len());
        if excess == 0 {
            return 0;
        }
        // The idle time at which `excess` departed sources go: all idle longer, and as many
        // idle exactly that long as are still needed.
        let (_, &mut cutoff, _) = departed.select_nth_unstable(excess - 1);
        let mut at_cutoff = excess - departed.iter().filter(|&&sec| sec < cutoff).count();
        self.forget(|window| {
            if window.listed_in_poll == poll || window.last_active_sec > cutoff {
                return false;
            }
            if window.last_active_sec < cutoff {
                return true;
            }
            let take = at_cutoff > 0;
            at_cutoff = at_cutoff.saturating_sub(1);
            take
        })
    }

    /// Removes the sources `forgotten` picks (in one pass, keeping the slots dense) and returns
    /// how many.
    fn forget(&mut self, mut forgotten: impl FnMut(&SourceWindow) -> bool) -> usize {
        let before = self.slots.len();
        let mut kept = 0usize;
        for position in 0..before {
            if forgotten(&self.slots[position]) {
                self.index.remove(&self.slots[position].key);
                continue;
            }
            if kept != position {
                self.slots.swap(kept, position);
                let moved = self.slots[kept].key;
                *self.index.get_mut(&moved).expect("every slot is indexed") = kept as u32;
            }
            kept += 1;
        }
        self.slots.truncate(kept);
        before - kept
    }
}

/// A poll in progress: see [`RateTracker::begin_poll`].
#[derive(Debug)]
pub struct Poll {
    is_baseline: bool,
    summary: ObserveSummary,
}

/// One source's history. Kept small: the tracker may hold a million of these.
#[derive(Clone, Debug)]
struct SourceWindow {
    key: AddrKey,
    /// Cumulative counters at the last poll that listed the source.
    last: Totals,
    /// When the source was last listed.
    listed_at_ms: u64,
    /// When the rings were last advanced: the last poll with an increase. Idle polls leave
    /// the rings alone (a poll of a million mostly idle sources must not rewrite every ring);
    /// the buckets after this time are known to be empty.
    rings_at_ms: u64,
    last_interval: IntervalIncrease,
    listed_in_poll: u32,
    /// When a counter last went up, in whole seconds.
    last_active_sec: u32,
    syns: Ring<10, 1>,
    /// `None` while every write ring is empty (most sources never write).
    writes: Option<Box<WriteRings>>,
}

/// A source's write windows, allocated on its first write.
#[derive(Clone, Debug, Default)]
struct WriteRings {
    image_creates_minute: Ring<12, 5>,
    other_writes_minute: Ring<12, 5>,
    image_creates_hour: Ring<60, 60>,
}

impl WriteRings {
    fn advance(&mut self, from_ms: u64, to_ms: u64) {
        self.image_creates_minute.advance(from_ms, to_ms);
        self.other_writes_minute.advance(from_ms, to_ms);
        self.image_creates_hour.advance(from_ms, to_ms);
    }

    fn is_empty(&self) -> bool {
        self.image_creates_minute.is_empty()
            && self.other_writes_minute.is_empty()
            && self.image_creates_hour.is_empty()
    }
}

/// The display-only figures of the last interval.
#[derive(Clone, Copy, Debug, Default)]
struct IntervalIncrease {
    bytes: u64,
    syns: u32,
    reads: u32,
    packets: u32,
    span_ms: u32,
}

impl SourceWindow {
    fn new(key: AddrKey, counts: Counts, now_ms: u64, poll: u32) -> Self {
        SourceWindow {
            key,
            last: Totals::from(counts),
            listed_at_ms: now_ms,
            rings_at_ms: now_ms,
            last_interval: IntervalIncrease::default(),
            listed_in_poll: poll,
            last_active_sec: seconds(now_ms),
            syns: Ring::default(),
            writes: None,
        }
    }

    /// Spreads `increase` evenly over `(since_ms, now_ms]`.
    fn record(&mut self, increase: Counts, since_ms: u64, now_ms: u64, poll: u32) {
        let windowed = increase.syns | increase.image_create | increase.other_write;
        if windowed != 0 {
            let advanced_from = self.rings_at_ms;
            self.syns.advance(advanced_from, now_ms);
            self.syns.spread(increase.syns, since_ms, now_ms);
            let wrote = increase.image_create | increase.other_write != 0;
            if wrote && self.writes.is_none() {
                self.writes = Some(Box::default());
            }
            if let Some(writes) = &mut self.writes {
                writes.advance(advanced_from, now_ms);
                writes
                    .image_creates_minute
                    .spread(increase.image_create, since_ms, now_ms);
                writes
                    .other_writes_minute
                    .spread(increase.other_write, since_ms, now_ms);
                writes
                    .image_creates_hour
                    .spread(increase.image_create, since_ms, now_ms);
                if writes.is_empty() {
                    self.writes = None;
                }
            }
            self.rings_at_ms = now_ms;
        }

        self.last_interval = IntervalIncrease {
            bytes: increase.bytes,
            syns: saturate(increase.syns),
            reads: saturate(increase.read),
            packets: saturate(increase.packets),
            span_ms: saturate(now_ms.saturating_sub(since_ms)),
        };
        if !increase.is_zero() {
            self.last_active_sec = seconds(now_ms);
        }
        self.listed_at_ms = now_ms;
        self.listed_in_poll = poll;
    }

    fn idle_for_an_hour(&self, now_ms: u64) -> bool {
        let idle_secs = u64::from(seconds(now_ms).saturating_sub(self.last_active_sec));
        idle_secs > HOUR_WINDOW.as_secs()
    }

    fn rates(&self, now_ms: u64, latest_poll: u32) -> Rates {
        let current = self.listed_in_poll == latest_poll && self.last_interval.span_ms > 0;
        let per_second = |amount: u64| {
            if current {
                amount as f64 * 1000.0 / f64::from(self.last_interval.span_ms)
            } else {
                0.0
            }
        };
        let advanced_to = self.rings_at_ms;
        let write_sum = |sum: fn(&WriteRings, u64, u64) -> u64| {
            self.writes
                .as_deref()
                .map_or(0, |writes| sum(writes, advanced_to, now_ms))
        };
        Rates {
            new_connections_in_window: self.syns.sum(advanced_to, now_ms),
            new_connections_per_second_last_interval: per_second(self.last_interval.syns.into()),
            image_creates_last_minute: write_sum(|w, from, to| {
                w.image_creates_minute.sum(from, to)
            }),
            image_creates_last_hour: write_sum(|w, from, to| w.image_creates_hour.sum(from, to)),
            other_writes_last_minute: write_sum(|w, from, to| w.other_writes_minute.sum(from, to)),
            records_created_last_hour: 0,
            reads_per_second: per_second(self.last_interval.reads.into()),
            packets_per_second: per_second(self.last_interval.packets.into()),
            bytes_per_second: per_second(self.last_interval.bytes),
        }
    }
}

/// `BUCKETS` counts of `BUCKET_SECS` each. Bucket `k` (absolute, stored at `k % BUCKETS`)
/// holds the events in `(k·B, (k+1)·B]` milliseconds; it is valid while `k` is among the last
/// `BUCKETS` buckets up to the time the ring was advanced to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ring<const BUCKETS: usize, const BUCKET_SECS: u64> {
    counts: [u32; BUCKETS],
}

impl<const BUCKETS: usize, const BUCKET_SECS: u64> Default for Ring<BUCKETS, BUCKET_SECS> {
    fn default() -> Self {
        Ring {
            counts: [0; BUCKETS],
        }
    }
}

impl<const BUCKETS: usize, const BUCKET_SECS: u64> Ring<BUCKETS, BUCKET_SECS> {
    const BUCKET_MS: u64 = BUCKET_SECS * 1000;
    const LEN: u64 = BUCKETS as u64;

    /// The bucket holding time `ms`. Buckets are closed on the right, so that a poll on a
    /// boundary has a full current bucket and its window spans exactly the nominal length.
    fn bucket_of(ms: u64) -> u64 {
        ms.saturating_sub(1) / Self::BUCKET_MS
    }

    fn slot(bucket: u64) -> usize {
        (bucket % Self::LEN) as usize
    }

    /// Empties the buckets that begin after `from_ms` and by `to_ms`: they are reused for
    /// newer time.
    pub(crate) fn advance(&mut self, from_ms: u64, to_ms: u64) {
        let (from, to) = (Self::bucket_of(from_ms), Self::bucket_of(to_ms));
        if to.saturating_sub(from) >= Self::LEN {
            self.counts = [0; BUCKETS];
            return;
        }
        for bucket in from + 1..=to {
            self.counts[Self::slot(bucket)] = 0;
        }
    }

    /// Adds `amount` spread evenly over `(since_ms, now_ms]`; the ring must be advanced to
    /// `now_ms`. The shares are differences of a rounded-down running total, so they add up to
    /// exactly `amount` (less what falls before the oldest bucket).
    pub(crate) fn spread(&mut self, amount: u64, since_ms: u64, now_ms: u64) {
        if amount == 0 {
            return;
        }
        let newest = Self::bucket_of(now_ms);
        if now_ms <= since_ms {
            self.add(newest, amount);
            return;
        }
        let span = u128::from(now_ms - since_ms);
        let share_until = |ms: u64| (u128::from(amount) * u128::from(ms - since_ms) / span) as u64;
        let oldest = (newest + 1).saturating_sub(Self::LEN);
        for bucket in Self::bucket_of(since_ms + 1).max(oldest)..=newest {
            let start = (bucket * Self::BUCKET_MS).max(since_ms);
            let end = ((bucket + 1) * Self::BUCKET_MS).min(now_ms);
            if end > start {
                self.add(bucket, share_until(end) - share_until(start));
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.counts.iter().all(|&count| count == 0)
    }

    fn add(&mut self, bucket: u64, amount: u64) {
        let slot = &mut self.counts[Self::slot(bucket)];
        *slot = slot.saturating_add(saturate(amount));
    }

    /// Events in the window ending at `now_ms` for a ring advanced to `advanced_to_ms`
    /// (not later than `now_ms`): the buckets since then are empty, older ones have left.
    pub(crate) fn sum(&self, advanced_to_ms: u64, now_ms: u64) -> u64 {
        let newest_valid = Self::bucket_of(advanced_to_ms);
        let oldest_in_window = (Self::bucket_of(now_ms) + 1).saturating_sub(Self::LEN);
        if newest_valid < oldest_in_window {
            return 0;
        }
        (oldest_in_window..=newest_valid)
            .map(|bucket| u64::from(self.counts[Self::slot(bucket)]))
            .sum()
    }
}

pub(crate) fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

fn seconds(ms: u64) -> u32 {
    saturate(ms / 1000)
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    const B: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9));

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn syns(n: u64) -> Counts {
        Counts {
            syns: n,
            packets: n,
            ..Counts::default()
        }
    }

    fn creates(n: u64) -> Counts {
        Counts {
            image_create: n,
            packets: n,
            ..Counts::default()
        }
    }

    /// Polls `A` once a second from `from` to `to` seconds, its counters given by `counts`.
    fn poll_each_second(
        tracker: &mut RateTracker,
        from: u64,
        to: u64,
        counts: impl Fn(u64) -> Counts,
    ) {
        for t in from..=to {
            tracker.observe(secs(t), [(A, counts(t))]);
        }
    }

    #[test]
    fn a_source_fits_the_memory_budget_for_a_million_sources() {
        assert_eq!(SOURCE_SLOT_BYTES, 160);
        assert_eq!(INDEX_ENTRY_BYTES, 20);
        assert_eq!(WRITE_RINGS_BYTES, 336);
        // The budget is 250 bytes a source: the slot, plus an index entry and its control
        // byte in a table at most half full.
        const { assert!(SOURCE_SLOT_BYTES + 2 * (INDEX_ENTRY_BYTES + 1) <= 250) };
    }

    #[test]
    fn the_kernels_32_bit_counters_wrap_without_a_reset() {
        let mut tracker = RateTracker::new(1000);
        let near_the_top = Counts {
            syns: u64::from(u32::MAX) - 5,
            image_create: u64::from(u32::MAX),
            packets: u64::from(u32::MAX) - 9,
            bytes: 1 << 40,
            ..Counts::default()
        };
        tracker.observe(secs(1), [(A, near_the_top)]);
        let wrapped = Counts {
            syns: 10,
            image_create: 3,
            packets: 20,
            bytes: (1 << 40) + 2_000,
            ..Counts::default()
        };
        let summary = tracker.observe(secs(2), [(A, wrapped)]);
        assert_eq!(summary.resets, 0);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.new_connections_in_window, 16);
        assert_eq!(rates.image_creates_last_minute, 4);
        assert_eq!(rates.packets_per_second, 30.0);
        assert_eq!(rates.bytes_per_second, 2_000.0);
        // Going down is a reset: the new values are the increase.
        let summary = tracker.observe(secs(3), [(A, syns(2))]);
        assert_eq!(summary.resets, 1);
    }

    #[test]
    fn write_rings_exist_only_while_a_window_holds_writes() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(1), []);
        tracker.observe(secs(2), [(A, syns(50)), (B, creates(3))]);
        let writes = |addr| tracker.window(addr).unwrap().writes.is_some();
        assert!(!writes(A), "SYNs alone need no write rings");
        assert!(writes(B));
        // An hour and more later, a SYN advances the rings: the creates have left every
        // window, and the rings go.
        let b_later = Counts {
            syns: 1,
            ..creates(3)
        };
        tracker.observe(secs(3700), [(B, b_later)]);
        assert!(tracker.window(B).unwrap().writes.is_none());
        assert_eq!(tracker.rates(B).unwrap().image_creates_last_hour, 0);
    }

    #[test]
    fn forgetting_keeps_every_other_source_findable() {
        let mut tracker = RateTracker::new(4);
        tracker.observe(secs(1), []);
        let addr = |i: u8| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i));
        // Ten sources, each active at its own second, then gone from the table.
        let mut forgotten = 0;
        for i in 0..10u8 {
            let summary =
                tracker.observe(secs(2 + u64::from(i)), [(addr(i), syns(u64::from(i) + 1))]);
            forgotten += summary.forgotten_over_capacity;
        }
        // Over capacity (4): the longest idle go first, down to 7/8 of the bound.
        forgotten += tracker
            .observe(secs(20), [(addr(9), syns(10))])
            .forgotten_over_capacity;
        assert_eq!(forgotten + tracker.len(), 10);
        assert!(tracker.len() <= 4, "{}", tracker.len());
        for i in 0..10u8 {
            let tracked = tracker.rates(addr(i)).is_some();
            let expected = tracker.iter().any(|(a, _)| a == addr(i));
            assert_eq!(tracked, expected, "{i}");
        }
        assert!(
            tracker.rates(addr(9)).is_some(),
            "the source still listed stays"
        );
        assert!(
            tracker.rates(addr(8)).is_some(),
            "the most recently active departed stays"
        );
        assert!(tracker.rates(addr(0)).is_none(), "the longest idle goes");
    }

    #[test]
    fn an_unknown_row_that_predates_the_last_poll_is_a_baseline_not_a_burst() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(1), std::iter::empty());
        // Lifetime totals of a row the tracker never saw (idle before, or a restart).
        let old_row = Counts {
            image_create: 5000,
            row_predates_last_poll: true,
            ..Counts::default()
        };
        tracker.observe(secs(2), [(A, old_row)]);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 0);
        // A row created since the previous poll: everything in it is new.
        tracker.observe(secs(3), [(B, creates(40))]);
        assert_eq!(tracker.rates(B).unwrap().image_creates_last_minute, 40);
        // And the old row's later activity counts from its baseline.
        let later = Counts {
            image_create: 5070,
            ..old_row
        };
        tracker.observe(secs(4), [(A, later)]);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 70);
    }

    #[test]
    fn idle_polls_leave_the_windows_sliding() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(1), std::iter::empty());
        tracker.observe(secs(2), [(A, creates(30))]);
        // The source stays listed with the same counters: its rings are not touched, but the
        // minute still ends on time (to the 5 s bucket).
        for t in 3..=60 {
            tracker.observe(secs(t), [(A, creates(30))]);
            assert_eq!(
                tracker.rates(A).unwrap().image_creates_last_minute,
                30,
                "{t}"
            );
        }
        tracker.observe(secs(66), [(A, creates(30))]);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 0);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_hour, 30);
    }

    #[test]
    fn steady_rates_are_reported_exactly_when_polls_land_on_seconds() {
        let mut tracker = RateTracker::new(1000);
        poll_each_second(&mut tracker, 0, 3600, |t| Counts {
            syns: 5 * t,
            image_create: t,
            other_write: 2 * t,
            read: 7 * t,
            packets: 20 * t,
            bytes: 20_000 * t,
            row_predates_last_poll: false,
        });
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.new_connections_in_window, 50);
        assert_eq!(rates.new_connections_per_second(), 5.0);
        assert_eq!(rates.new_connections_per_second_last_interval, 5.0);
        assert_eq!(rates.image_creates_last_minute, 60);
        assert_eq!(rates.image_creates_last_hour, 3600);
        assert_eq!(rates.other_writes_last_minute, 120);
        assert_eq!(rates.reads_per_second, 7.0);
        assert_eq!(rates.packets_per_second, 20.0);
        assert_eq!(rates.bytes_per_second, 20_000.0);
    }

    #[test]
    fn unaligned_polls_undercount_by_at_most_one_bucket() {
        let mut tracker = RateTracker::new(1000);
        for t in 0..=3700u64 {
            // Polls 400 ms past each second; 12 SYNs and 12 image creates a second.
            let counts = Counts {
                syns: 12 * t,
                image_create: 12 * t,
                ..Counts::default()
            };
            tracker.observe(Duration::from_millis(t * 1000 + 400), [(A, counts)]);
            let rates = tracker.rates(A).unwrap();
            if t >= 10 {
                let syns = rates.new_connections_in_window;
                assert!((108..=120).contains(&syns), "{t}: {syns}");
            }
            if t >= 60 {
                let minute = rates.image_creates_last_minute;
                assert!((660..=720).contains(&minute), "{t}: {minute}");
            }
            if t >= 3600 {
                let hour = rates.image_creates_last_hour;
                assert!((12 * 3540..=12 * 3600).contains(&hour), "{t}: {hour}");
            }
        }
    }

    #[test]
    fn the_first_poll_is_only_a_baseline() {
        let mut tracker = RateTracker::new(1000);
        let summary = tracker.observe(secs(5), [(A, creates(1_000_000))]);
        assert_eq!(summary.new_sources, 1);
        assert_eq!(tracker.rates(A).unwrap(), Rates::default());
        tracker.observe(secs(6), [(A, creates(1_000_010))]);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 10);
    }

    #[test]
    fn a_source_new_after_the_first_poll_counts_from_the_previous_poll() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(1), []);
        tracker.observe(secs(2), [(B, creates(90))]);
        let rates = tracker.rates(B).unwrap();
        assert_eq!(rates.image_creates_last_minute, 90);
        assert_eq!(rates.packets_per_second, 90.0);
    }

    #[test]
    fn a_one_second_burst_is_diluted_over_ten_seconds() {
        let mut tracker = RateTracker::new(1000);
        poll_each_second(&mut tracker, 0, 20, |_| syns(0));
        tracker.observe(secs(21), [(A, syns(300))]);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.new_connections_per_second_last_interval, 300.0);
        assert_eq!(rates.new_connections_per_second(), 30.0);

        poll_each_second(&mut tracker, 22, 30, |_| syns(300));
        let rates = tracker.rates(A).unwrap();
        assert_eq!(
            rates.new_connections_per_second(),
            30.0,
            "still in the window"
        );
        assert_eq!(rates.new_connections_per_second_last_interval, 0.0);
        tracker.observe(secs(31), [(A, syns(300))]);
        assert_eq!(tracker.rates(A).unwrap().new_connections_in_window, 0);
    }

    #[test]
    fn counts_leave_each_window_when_it_has_passed() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(0))]);
        tracker.observe(secs(1), [(A, creates(40))]);
        let at = |tracker: &mut RateTracker, t: u64| {
            tracker.observe(secs(t), [(A, creates(40))]);
            tracker.rates(A).unwrap()
        };
        assert_eq!(at(&mut tracker, 60).image_creates_last_minute, 40);
        // Events of (0 s, 1 s] sit in the 5 s bucket (0 s, 5 s], which leaves at 61 s.
        assert_eq!(at(&mut tracker, 61).image_creates_last_minute, 0);
        assert_eq!(at(&mut tracker, 61).image_creates_last_hour, 40);
        assert_eq!(at(&mut tracker, 3600).image_creates_last_hour, 40);
        assert_eq!(at(&mut tracker, 3601).image_creates_last_hour, 0);
    }

    #[test]
    fn a_counter_going_down_restarts_from_the_new_value() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(500))]);
        tracker.observe(secs(1), [(A, creates(520))]);
        // Evicted and re-inserted: the row now holds only what came after.
        let summary = tracker.observe(secs(2), [(A, creates(7))]);
        assert_eq!(summary.resets, 1);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 27);
        tracker.observe(secs(3), [(A, creates(10))]);
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 30);
    }

    #[test]
    fn a_late_poll_spreads_its_increase_over_the_gap() {
        let mut tracker = RateTracker::new(1000);
        poll_each_second(&mut tracker, 0, 100, |_| syns(0));
        // 30 s without a poll, during which the source opened 10 connections a second.
        tracker.observe(secs(130), [(A, syns(300))]);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.new_connections_per_second(), 10.0, "not 30/s");
        assert_eq!(rates.new_connections_per_second_last_interval, 10.0);
    }

    #[test]
    fn a_gap_longer_than_a_window_keeps_only_the_part_inside_it() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(0))]);
        // 7200 creates over two hours: one a second.
        tracker.observe(secs(7200), [(A, creates(7200))]);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.image_creates_last_minute, 60);
        assert_eq!(rates.image_creates_last_hour, 3600);
    }

    #[test]
    fn the_windows_are_the_ones_the_thresholds_name() {
        use crate::metric::Metric;
        let window = |m: Metric| m.threshold_window().unwrap();
        assert_eq!(
            window(Metric::NewConnectionsPerSecond),
            NEW_CONNECTION_WINDOW
        );
        assert_eq!(window(Metric::ImageCreatesPerMinute), MINUTE_WINDOW);
        assert_eq!(window(Metric::OtherWritesPerMinute), MINUTE_WINDOW);
        assert_eq!(window(Metric::ImageCreatesPerHour), HOUR_WINDOW);
    }

    #[test]
    fn a_source_left_out_of_a_poll_counts_from_that_poll() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(0)), (B, creates(0))]);
        // A is left out: idle since the poll before, as the daemon skips only such rows.
        tracker.observe(secs(10), [(B, creates(0))]);
        tracker.observe(secs(20), [(A, creates(20)), (B, creates(0))]);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.image_creates_last_minute, 20);
        assert_eq!(
            rates.packets_per_second, 2.0,
            "20 in the 10 s since the poll A was left out of"
        );
    }

    #[test]
    fn a_burst_after_an_idle_hour_is_a_burst() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(0)), (B, creates(0))]);
        tracker.observe(secs(1), [(A, creates(1)), (B, creates(0))]);
        for second in 2..3000 {
            tracker.observe(secs(second), [(B, creates(0))]);
        }
        tracker.observe(secs(3000), [(A, creates(301)), (B, creates(0))]);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(
            rates.image_creates_last_minute, 300,
            "spread over the idle 50 minutes it would have been 6"
        );
        assert_eq!(rates.image_creates_last_hour, 301);
    }

    #[test]
    fn a_missing_source_keeps_its_history_but_shows_no_current_rate() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(0))]);
        tracker.observe(secs(1), [(A, creates(30))]);
        tracker.observe(secs(2), []);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.image_creates_last_minute, 30);
        assert_eq!(rates.packets_per_second, 0.0);
    }

    #[test]
    fn departed_sources_are_forgotten_after_an_hour_idle() {
        let mut tracker = RateTracker::new(1000);
        tracker.observe(secs(0), [(A, creates(0)), (B, creates(0))]);
        tracker.observe(secs(10), [(A, creates(5)), (B, creates(0))]);
        // A leaves the kernel table; B stays, idle.
        tracker.observe(secs(3610), [(B, creates(0))]);
        assert_eq!(tracker.len(), 2, "A was active at 10 s: not yet an hour");
        let summary = tracker.observe(secs(3611), [(B, creates(0))]);
        assert_eq!(summary.forgotten_idle, 1);
        assert!(tracker.rates(A).is_none());
        // B is idle too, but still listed: forgetting it would make its totals look new.
        tracker.observe(secs(9000), [(B, creates(0))]);
        assert!(tracker.rates(B).is_some());
    }

    #[test]
    fn over_capacity_departed_sources_go_first_longest_idle_first() {
        let mut tracker = RateTracker::new(8);
        let addr = |i: u8| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i));
        tracker.observe(secs(0), (0..8).map(|i| (addr(i), creates(0))));
        // Sources 0..4 are active at increasing times, then everyone but 7 departs.
        for i in 0..4u8 {
            tracker.observe(secs(1 + u64::from(i)), [(addr(i), creates(1))]);
        }
        let summary = tracker.observe(secs(10), (7..12).map(|i| (addr(i), creates(0))));
        // 12 tracked, bound 8: down to 7. Never-active 4, 5, 6 go first, then 0 and 1.
        assert_eq!(summary.forgotten_over_capacity, 5);
        assert_eq!(tracker.len(), 7);
        for gone in [4, 5, 6, 0, 1] {
            assert!(tracker.rates(addr(gone)).is_none(), "{gone}");
        }
        for kept in [2, 3, 7, 8, 9, 10, 11] {
            assert!(tracker.rates(addr(kept)).is_some(), "{kept}");
        }
    }

    #[test]
    fn listed_sources_are_never_forgotten_for_capacity() {
        let mut tracker = RateTracker::new(2);
        let addr = |i: u8| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i));
        let summary = tracker.observe(secs(0), (0..5).map(|i| (addr(i), creates(0))));
        assert_eq!(summary.forgotten_over_capacity, 0);
        assert_eq!(tracker.len(), 5);
    }

    #[test]
    fn time_going_backwards_is_taken_as_no_time_passing() {
        let mut tracker = RateTracker::new(10);
        tracker.observe(secs(100), [(A, creates(0))]);
        tracker.observe(secs(50), [(A, creates(6))]);
        assert_eq!(tracker.now(), secs(100));
        assert_eq!(tracker.rates(A).unwrap().image_creates_last_minute, 6);
    }

    #[test]
    fn ipv4_mapped_sources_are_the_ipv4_source() {
        let mut tracker = RateTracker::new(10);
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
        tracker.observe(secs(0), [(mapped, creates(0))]);
        tracker.observe(secs(1), [(A, creates(3))]);
        assert_eq!(tracker.len(), 1);
        assert_eq!(tracker.rates(mapped).unwrap().image_creates_last_minute, 3);
    }

    #[test]
    fn many_sources_are_tracked_independently() {
        let mut tracker = RateTracker::new(200_000);
        let addr = |i: u32| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i)));
        tracker.observe(secs(0), (0..100_000).map(|i| (addr(i), creates(0))));
        tracker.observe(
            secs(1),
            (0..100_000).map(|i| (addr(i), creates(u64::from(i % 100)))),
        );
        assert_eq!(tracker.len(), 100_000);
        for (addr, rates) in tracker.iter() {
            let IpAddr::V6(v6) = addr else {
                panic!("{addr} was not observed")
            };
            let i = u128::from(v6) as u32;
            assert_eq!(
                rates.image_creates_last_minute,
                u64::from(i % 100),
                "{addr}"
            );
        }
    }

    #[test]
    fn huge_increases_saturate_instead_of_wrapping() {
        let mut tracker = RateTracker::new(10);
        tracker.observe(secs(0), [(A, creates(0))]);
        tracker.observe(secs(1), [(A, creates(u64::MAX))]);
        let rates = tracker.rates(A).unwrap();
        assert_eq!(rates.image_creates_last_minute, u64::from(u32::MAX));
    }
}
