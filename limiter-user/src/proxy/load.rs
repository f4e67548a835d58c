//! What each trusted proxy relayed: the `proxied` and `unattributed` counters of its row in
//! the kernel table, as totals and over the last minute, for `limiter stats`, `limiter top`
//! and the metrics. Pure: the engine hands [`ProxyLoads::observe`] each poll's proxy rows and
//! the time.
//!
//! A proxy's own connections, packets and bytes are those of an ordinary row and go through
//! the rate tracker like any source's; only the two relay counters need this. The minute is a
//! difference of the counters: the latest value less the value at the newest sample a minute
//! old (or the first sample, while the proxy has been seen for less than a minute). Samples are
//! kept only when a counter moved, so an idle proxy holds one. As in the rate tracker, the
//! first poll only takes a baseline (after a daemon restart the rows carry totals from before),
//! and so does a proxy new to the tracker whose row predates the previous poll; a row inserted
//! since counts whole, as relayed since the previous poll. A counter that goes down (the row
//! was evicted and re-created) counts its new value as the increase.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

/// Proxies followed at once. A trusted prefix may hold many addresses, and every source
/// address inside it gets a proxy's row; beyond this many, rows of new ones are not followed
/// (nor shown) until others leave the kernel table.
pub const MAX_TRACKED_PROXIES: usize = 1024;

/// The window of the per-minute counts.
pub const RELAY_WINDOW: Duration = Duration::from_secs(60);

/// A proxy row's relay counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Requests it carried that were counted as the client it named.
    pub proxied: u64,
    /// Requests it carried whose client could not be read.
    pub unattributed: u64,
}

impl RelayCounts {
    fn went_down_from(&self, earlier: &RelayCounts) -> bool {
        self.proxied < earlier.proxied || self.unattributed < earlier.unattributed
    }

    fn plus(&self, other: &RelayCounts) -> RelayCounts {
        RelayCounts {
            proxied: self.proxied.saturating_add(other.proxied),
            unattributed: self.unattributed.saturating_add(other.unattributed),
        }
    }

    fn minus(&self, other: &RelayCounts) -> RelayCounts {
        RelayCounts {
            proxied: self.proxied.saturating_sub(other.proxied),
            unattributed: self.unattributed.saturating_sub(other.unattributed),
        }
    }
}

/// A proxy's row as one poll read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyRow {
    pub addr: IpAddr,
    pub counts: RelayCounts,
    /// The kernel row existed before the previous poll: when the proxy is new to the tracker,
    /// its counters are a baseline, not new activity.
    pub row_predates_last_poll: bool,
}

/// One proxy's relay figures as of the latest poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayLoad {
    /// The row's counters: since the proxy entered the kernel table.
    pub totals: RelayCounts,
    /// In the trailing [`RELAY_WINDOW`].
    pub last_minute: RelayCounts,
}

/// Every proxy in the latest poll, with its recent history.
#[derive(Clone, Debug, Default)]
pub struct ProxyLoads {
    proxies: BTreeMap<IpAddr, History>,
    /// When the previous poll was taken; `None` before the first.
    last_poll_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct History {
    /// The row's counters at the last poll.
    last: RelayCounts,
    /// What the proxy relayed since it was first seen, across resets of its row.
    relayed: RelayCounts,
    /// `(milliseconds, relayed)` when it changed, oldest first; the first is at or before the
    /// start of the window once the proxy has been seen for a minute.
    samples: VecDeque<(u64, RelayCounts)>,
}

impl ProxyLoads {
    /// Takes one poll: `now` on the caller's monotonic clock, and every proxy row of the
    /// kernel table. Proxies missing from `rows` are forgotten.
    pub fn observe(&mut self, now: Duration, rows: impl IntoIterator<Item = ProxyRow>) {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let last_poll_ms = self.last_poll_ms.replace(now_ms);
        let mut previous = std::mem::take(&mut self.proxies);
        for row in rows {
            let addr = row.addr.to_canonical();
            let history = match previous.remove(&addr) {
                Some(mut history) => {
                    history.record(row.counts, now_ms);
                    history
                }
                None if self.proxies.len() + previous.len() >= MAX_TRACKED_PROXIES => continue,
                None => {
                    let since = last_poll_ms.filter(|_| !row.row_predates_last_poll);
                    History::new(row.counts, since, now_ms)
                }
            };
            self.proxies.insert(addr, history);
        }
    }

    /// The proxy's figures, if it was in the latest poll.
    pub fn get(&self, addr: IpAddr) -> Option<RelayLoad> {
        self.proxies.get(&addr.to_canonical()).map(History::load)
    }

    /// Every proxy of the latest poll, by address.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, RelayLoad)> + '_ {
        self.proxies
            .iter()
            .map(|(addr, history)| (*addr, history.load()))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.proxies.contains_key(&addr.to_canonical())
    }

    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }
}

impl History {
    /// A proxy new to the tracker: its counters are a baseline, or, with `since` (its row was
    /// inserted after the previous poll, at `since`), all relayed since then.
    fn new(counts: RelayCounts, since: Option<u64>, now_ms: u64) -> Self {
        let zero = RelayCounts::default();
        match since {
            Some(since) if counts != zero => History {
                last: counts,
                relayed: counts,
                samples: VecDeque::from([(since.min(now_ms), zero), (now_ms, counts)]),
            },
            _ => History {
                last: counts,
                relayed: zero,
                samples: VecDeque::from([(now_ms, zero)]),
            },
        }
    }

    fn record(&mut self, counts: RelayCounts, now_ms: u64) {
        let increase = if counts.went_down_from(&self.last) {
            counts
        } else {
            counts.minus(&self.last)
        };
        self.last = counts;
        if increase != RelayCounts::default() {
            self.relayed = self.relayed.plus(&increase);
            self.samples.push_back((now_ms, self.relayed));
        }
        // Keep the newest sample at or before the window's start: the value a minute ago.
        let start = now_ms.saturating_sub(window_ms());
        while self.samples.get(1).is_some_and(|(at, _)| *at <= start) {
            self.samples.pop_front();
        }
    }

    fn load(&self) -> RelayLoad {
        let before = self.samples.front().map(|(_, r)| *r).unwrap_or_default();
        RelayLoad {
            totals: self.last,
            last_minute: self.relayed.minus(&before),
        }
    }
}

fn window_ms() -> u64 {
    RELAY_WINDOW.as_secs() * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: &str = "198.51.100.2";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn counts(proxied: u64, unattributed: u64) -> RelayCounts {
        RelayCounts {
            proxied,
            unattributed,
        }
    }

    fn row(addr: &str, counts: RelayCounts) -> ProxyRow {
        ProxyRow {
            addr: ip(addr),
            counts,
            row_predates_last_poll: true,
        }
    }

    fn poll(loads: &mut ProxyLoads, secs: u64, proxied: u64, unattributed: u64) -> RelayLoad {
        loads.observe(
            Duration::from_secs(secs),
            [row(PROXY, counts(proxied, unattributed))],
        );
        loads.get(ip(PROXY)).unwrap()
    }

    #[test]
    fn the_first_poll_is_a_baseline_and_the_minute_slides() {
        let mut loads = ProxyLoads::default();
        // A restarted daemon finds lifetime totals: not relayed in the last minute.
        let first = poll(&mut loads, 0, 5000, 7);
        assert_eq!(first.totals, counts(5000, 7));
        assert_eq!(first.last_minute, counts(0, 0));
        // 100 requests a second for a minute, 1 unattributed every 10 s.
        let mut load = first;
        for secs in 1..=60 {
            load = poll(&mut loads, secs, 5000 + 100 * secs, 7 + secs / 10);
        }
        assert_eq!(load.last_minute, counts(6000, 6));
        // A minute later, still at 100 a second: the window holds only the last 60 s.
        for secs in 61..=120 {
            load = poll(&mut loads, secs, 5000 + 100 * secs, 13);
        }
        assert_eq!(load.last_minute, counts(6000, 0));
        assert_eq!(load.totals, counts(17_000, 13));
        // Quiet for a minute: nothing left in the window, one sample kept.
        for secs in 121..=181 {
            load = poll(&mut loads, secs, 17_000, 13);
        }
        assert_eq!(load.last_minute, counts(0, 0));
        assert_eq!(loads.proxies[&ip(PROXY)].samples.len(), 1);
    }

    #[test]
    fn a_proxy_that_appears_between_polls_counts_whole() {
        let mut loads = ProxyLoads::default();
        loads.observe(Duration::ZERO, []);
        let fresh = ProxyRow {
            row_predates_last_poll: false,
            ..row(PROXY, counts(25, 3))
        };
        loads.observe(Duration::from_secs(1), [fresh]);
        let load = loads.get(ip(PROXY)).unwrap();
        assert_eq!(
            (load.totals, load.last_minute),
            (counts(25, 3), counts(25, 3))
        );
        assert_eq!(poll(&mut loads, 30, 45, 3).last_minute, counts(45, 3));
        assert_eq!(poll(&mut loads, 61, 45, 3).last_minute, counts(20, 0));
        assert_eq!(poll(&mut loads, 91, 45, 3).last_minute, counts(0, 0));
        // An old row new to the tracker (idle until now) is a baseline.
        loads.observe(
            Duration::from_secs(92),
            [
                row(PROXY, counts(45, 3)),
                row("198.51.100.3", counts(900, 9)),
            ],
        );
        assert_eq!(
            loads.get(ip("198.51.100.3")).unwrap().last_minute,
            counts(0, 0)
        );
    }

    #[test]
    fn a_burst_after_a_quiet_spell_counts_once() {
        let mut loads = ProxyLoads::default();
        poll(&mut loads, 0, 10, 0);
        poll(&mut loads, 300, 10, 0);
        assert_eq!(poll(&mut loads, 301, 40, 2).last_minute, counts(30, 2));
        assert_eq!(poll(&mut loads, 360, 40, 2).last_minute, counts(30, 2));
        assert_eq!(poll(&mut loads, 362, 40, 2).last_minute, counts(0, 0));
    }

    #[test]
    fn a_reset_row_counts_its_new_values_as_the_increase() {
        let mut loads = ProxyLoads::default();
        poll(&mut loads, 0, 1000, 10);
        poll(&mut loads, 1, 1100, 10);
        let after_reset = poll(&mut loads, 2, 30, 1);
        assert_eq!(after_reset.totals, counts(30, 1));
        assert_eq!(after_reset.last_minute, counts(130, 1));
    }

    #[test]
    fn proxies_missing_from_a_poll_are_forgotten() {
        let mut loads = ProxyLoads::default();
        loads.observe(
            Duration::ZERO,
            [
                row(PROXY, counts(1, 0)),
                row("::ffff:198.51.100.3", counts(2, 0)),
            ],
        );
        assert_eq!(loads.len(), 2);
        assert!(loads.contains(ip("198.51.100.3")), "canonical form");
        loads.observe(Duration::from_secs(1), [row(PROXY, counts(3, 0))]);
        assert_eq!(
            loads.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            [ip(PROXY)]
        );
        assert!(loads.get(ip("198.51.100.3")).is_none());
    }

    #[test]
    fn new_proxies_beyond_the_bound_are_not_followed() {
        let mut loads = ProxyLoads::default();
        let many = |n: usize| {
            (0..n).map(|i| ProxyRow {
                addr: IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
                counts: counts(i as u64, 0),
                row_predates_last_poll: true,
            })
        };
        loads.observe(Duration::ZERO, many(MAX_TRACKED_PROXIES + 50));
        assert_eq!(loads.len(), MAX_TRACKED_PROXIES);
        // Those already followed stay followed.
        loads.observe(Duration::from_secs(1), many(MAX_TRACKED_PROXIES + 50).rev());
        assert_eq!(loads.len(), MAX_TRACKED_PROXIES);
        assert!(loads.contains(IpAddr::from([10, 0, 0, 0])));
        assert!(!loads.contains(IpAddr::from([10, 0, 4, 49])));
    }
}
