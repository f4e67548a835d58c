//! Image records each source created in the trailing hour, from Glance's answers as the
//! kernel's egress program counted them (a running total per source in its `CREATES`
//! entry): the figure of the `records_created_per_hour` threshold. A tracker of its own, as
//! those totals come from another table than the per-source rows the rate tracker reads, and
//! only for the few sources that create images.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use crate::rates::{millis, Ring};

/// Sixty buckets of a minute: an hour.
type HourRing = Ring<60, 60>;

#[derive(Debug, Default)]
pub struct CreatedRecords {
    sources: HashMap<IpAddr, Tracked>,
    /// The latest observation's time, in milliseconds of the engine's clock.
    now_ms: u64,
    /// Whether a first observation was made: the totals it finds were made before this
    /// daemon started (or before response counting), and count as none.
    primed: bool,
}

#[derive(Debug)]
struct Tracked {
    /// The kernel's running total at the latest observation.
    total: u64,
    ring: HourRing,
    advanced_to_ms: u64,
}

impl CreatedRecords {
    /// The kernel's running totals at `now` (every source with an entry, each once).
    pub fn observe(&mut self, now: Duration, totals: impl IntoIterator<Item = (IpAddr, u64)>) {
        let since_ms = self.now_ms;
        let now_ms = millis(now).max(since_ms);
        self.now_ms = now_ms;
        let mut seen = 0usize;
        for (addr, total) in totals {
            seen += 1;
            let primed = self.primed;
            let tracked = self.sources.entry(addr).or_insert_with(|| Tracked {
                // New since the previous observation, so all of its total is new; on the
                // first, a baseline.
                total: if primed { 0 } else { total },
                ring: HourRing::default(),
                advanced_to_ms: now_ms,
            });
            // A total that went down is an entry evicted and made again: all of it is new.
            let increase = if total >= tracked.total {
                total - tracked.total
            } else {
                total
            };
            tracked.total = total;
            tracked.ring.advance(tracked.advanced_to_ms, now_ms);
            tracked.advanced_to_ms = now_ms;
            tracked.ring.spread(increase, since_ms, now_ms);
        }
        self.primed = true;
        // Sources whose entry left the table are kept while their hour still counts.
        if self.sources.len() > seen {
            self.sources.retain(|_, tracked| {
                tracked.advanced_to_ms == now_ms
                    || tracked.ring.sum(tracked.advanced_to_ms, now_ms) > 0
            });
        }
    }

    /// Records `addr` created in the hour up to the latest observation. Free while no source
    /// creates images: the poll loop and `stats` ask it of every source.
    pub fn last_hour(&self, addr: IpAddr) -> u64 {
        if self.sources.is_empty() {
            return 0;
        }
        self.sources
            .get(&addr)
            .map_or(0, |t| t.ring.sum(t.advanced_to_ms, self.now_ms))
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8));

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn totals_found_at_the_first_observation_are_a_baseline() {
        let mut records = CreatedRecords::default();
        records.observe(at(1), [(A, 500)]);
        assert_eq!(records.last_hour(A), 0, "made before this daemon started");
        records.observe(at(2), [(A, 507), (B, 3)]);
        assert_eq!(records.last_hour(A), 7);
        assert_eq!(
            records.last_hour(B),
            3,
            "an entry new since the last observation"
        );
    }

    #[test]
    fn the_window_is_an_hour() {
        let mut records = CreatedRecords::default();
        // Polls on the minute, so each minute's creates fall in one bucket.
        records.observe(at(60), [(A, 0)]);
        for minute in 2..=90u64 {
            records.observe(at(minute * 60), [(A, (minute - 1) * 2)]);
        }
        // Two a minute: 120 in any hour.
        assert_eq!(records.last_hour(A), 120);
        // Quiet for an hour: none.
        records.observe(at(151 * 60), [(A, 178)]);
        assert_eq!(records.last_hour(A), 0);
    }

    #[test]
    fn an_entry_made_again_counts_from_zero_and_one_gone_is_kept_while_it_counts() {
        let mut records = CreatedRecords::default();
        records.observe(at(1), [(A, 40)]);
        records.observe(at(61), [(A, 50)]);
        assert_eq!(records.last_hour(A), 10);
        // Evicted and made again with 4 since.
        records.observe(at(121), [(A, 4)]);
        assert_eq!(records.last_hour(A), 14);
        // Gone from the table: its hour still counts, then it is forgotten.
        records.observe(at(181), []);
        assert_eq!(records.last_hour(A), 14);
        records.observe(at(121 + 3600), []);
        assert_eq!(records.last_hour(A), 0);
        assert!(records.is_empty());
    }
}
