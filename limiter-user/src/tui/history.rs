//! Each source's recent rates, kept by the TUI from successive refreshes (the control API only
//! gives the current rates), for the detail pane's sparklines.
//!
//! Bounded twice, so 100k tracked sources cost the same as a thousand: a ring of
//! [`HISTORY_LEN`] samples per source (`f32` per metric, ~3.4 KB), and histories for at most
//! [`MAX_HISTORIES`] sources, chosen each refresh in this order: the selected source, the rows
//! on screen, sources that already have a history, sources over a threshold or banned, and the
//! daemon's busiest. A source not sampled for [`HISTORY_LEN`] refreshes is forgotten. Refreshes
//! a source missed (not fetched, daemon unreachable) are gaps (`NaN`), drawn as blanks, never
//! invented zeros.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use super::snapshot::SourceRow;
use crate::{control::protocol::RatesView, metric::Metric};

/// Samples per source: two minutes at the default one-second refresh.
pub const HISTORY_LEN: usize = 120;
/// Sources with a history at most (~3.5 MB in all).
pub const MAX_HISTORIES: usize = 1024;
/// The daemon's busiest sources sampled even when nobody looks at them, so a source that is
/// selected during an attack already has its last minutes.
pub const BUSIEST_SAMPLED: usize = 256;

type Sample = [f32; Metric::ALL.len()];

/// One source's samples, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    samples: VecDeque<Sample>,
    /// The refresh the newest sample belongs to.
    last_refresh: u64,
}

impl History {
    /// One metric's samples, oldest first (`NaN`: no data for that refresh).
    pub fn series(&self, metric: Metric) -> impl ExactSizeIterator<Item = f32> + '_ {
        let index = Metric::ALL.iter().position(|m| *m == metric).unwrap_or(0);
        self.samples.iter().map(move |sample| sample[index])
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn push(&mut self, refresh: u64, rates: &RatesView) {
        if !self.samples.is_empty() {
            let missed = refresh.saturating_sub(self.last_refresh + 1);
            for _ in 0..missed.min(HISTORY_LEN as u64) {
                self.push_sample([f32::NAN; Metric::ALL.len()]);
            }
        }
        self.push_sample(Metric::ALL.map(|m| rates.get(m) as f32));
        self.last_refresh = refresh;
    }

    fn push_sample(&mut self, sample: Sample) {
        if self.samples.len() == HISTORY_LEN {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }
}

/// Every history the TUI keeps.
#[derive(Clone, Debug, Default)]
pub struct Histories {
    by_source: HashMap<IpAddr, History>,
    /// Counts refreshes: a sample's position in time.
    refresh: u64,
}

impl Histories {
    pub fn get(&self, address: &IpAddr) -> Option<&History> {
        self.by_source.get(address)
    }

    pub fn len(&self) -> usize {
        self.by_source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// Samples one refresh. `rows` are in the daemon's order (busiest first); `watched` are
    /// the indices of the selected row and the rows on screen.
    pub fn record(&mut self, rows: &[SourceRow], watched: &[u32]) {
        self.refresh += 1;
        let mut sampled: HashSet<u32> = HashSet::new();
        for &i in watched {
            if (i as usize) < rows.len() {
                self.sample(&mut sampled, rows, i);
            }
        }
        for (i, row) in rows.iter().enumerate() {
            if sampled.len() >= MAX_HISTORIES {
                break;
            }
            let wanted = self.by_source.contains_key(&row.address)
                || super::view::importance(row.state) < 2
                || i < BUSIEST_SAMPLED;
            if wanted {
                self.sample(&mut sampled, rows, i as u32);
            }
        }
        self.forget_stale();
    }

    fn sample(&mut self, sampled: &mut HashSet<u32>, rows: &[SourceRow], index: u32) {
        if sampled.len() < MAX_HISTORIES && sampled.insert(index) {
            let row = &rows[index as usize];
            self.by_source
                .entry(row.address)
                .or_default()
                .push(self.refresh, &row.rates);
        }
    }

    /// Drops histories not sampled for a whole ring, then the stalest beyond the cap.
    fn forget_stale(&mut self) {
        let oldest_kept = self.refresh.saturating_sub(HISTORY_LEN as u64);
        self.by_source.retain(|_, h| h.last_refresh > oldest_kept);
        if self.by_source.len() > MAX_HISTORIES {
            let mut ages: Vec<(u64, IpAddr)> = self
                .by_source
                .iter()
                .map(|(addr, h)| (h.last_refresh, *addr))
                .collect();
            let excess = ages.len() - MAX_HISTORIES;
            ages.select_nth_unstable(excess - 1);
            for (_, addr) in &ages[..excess] {
                self.by_source.remove(addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{SourceState, Totals};

    fn row(n: u32, state: SourceState, creates: u64) -> SourceRow {
        SourceRow {
            address: IpAddr::from([198, 51, 100, (n % 250) as u8]),
            state,
            banned_until: None,
            rates: RatesView {
                image_creates_per_minute: creates,
                ..RatesView::default()
            },
            totals: Totals::default(),
            via: None,
            creates: None,
        }
    }

    fn v6(n: u32) -> SourceRow {
        SourceRow {
            address: format!("2001:db8::{n:x}").parse().unwrap(),
            ..row(0, SourceState::Ok, 0)
        }
    }

    #[test]
    fn samples_accumulate_in_a_bounded_ring() {
        let mut histories = Histories::default();
        for creates in 0..(HISTORY_LEN as u64 + 30) {
            histories.record(&[row(7, SourceState::Ok, creates)], &[]);
        }
        let history = histories.get(&"198.51.100.7".parse().unwrap()).unwrap();
        assert_eq!(history.len(), HISTORY_LEN);
        let series: Vec<f32> = history.series(Metric::ImageCreatesPerMinute).collect();
        assert_eq!(series.first(), Some(&30.0));
        assert_eq!(series.last(), Some(&(HISTORY_LEN as f32 + 29.0)));
    }

    #[test]
    fn missed_refreshes_are_gaps_not_zeros() {
        let mut histories = Histories::default();
        histories.record(&[row(7, SourceState::Ok, 5)], &[]);
        histories.record(&[], &[]);
        histories.record(&[], &[]);
        histories.record(&[row(7, SourceState::Ok, 9)], &[]);
        let history = histories.get(&"198.51.100.7".parse().unwrap()).unwrap();
        let series: Vec<f32> = history.series(Metric::ImageCreatesPerMinute).collect();
        assert_eq!(series.len(), 4);
        assert_eq!(series[0], 5.0);
        assert!(series[1].is_nan() && series[2].is_nan());
        assert_eq!(series[3], 9.0);
    }

    #[test]
    fn quiet_sources_beyond_the_busiest_are_not_sampled_unless_watched() {
        let rows: Vec<SourceRow> = (0..(BUSIEST_SAMPLED as u32 + 10)).map(v6).collect();
        let mut histories = Histories::default();
        let quiet = BUSIEST_SAMPLED as u32 + 5;
        histories.record(&rows, &[]);
        assert_eq!(histories.len(), BUSIEST_SAMPLED);
        assert!(histories.get(&rows[quiet as usize].address).is_none());
        histories.record(&rows, &[quiet]);
        assert_eq!(
            histories.get(&rows[quiet as usize].address).unwrap().len(),
            1
        );
    }

    #[test]
    fn histories_are_capped_with_many_offenders() {
        let rows: Vec<SourceRow> = (0..5000)
            .map(|n| SourceRow {
                state: SourceState::Banned,
                ..v6(n)
            })
            .collect();
        let mut histories = Histories::default();
        for _ in 0..3 {
            histories.record(&rows, &[4999]);
        }
        assert_eq!(histories.len(), MAX_HISTORIES);
        assert!(
            histories.get(&rows[4999].address).is_some(),
            "watched first"
        );
    }

    #[test]
    fn departed_sources_are_forgotten_after_a_ring() {
        let mut histories = Histories::default();
        histories.record(&[row(1, SourceState::Ok, 1)], &[]);
        for _ in 0..HISTORY_LEN {
            histories.record(&[], &[]);
        }
        assert!(histories.is_empty());
    }
}
