//! Which rows the table shows, in which order: sort by any column, rows that matter pinned on
//! top, filter by address prefix. Computed when the data, the sort or the filter changes, never
//! per frame, and kept as indices into the snapshot's rows so 100k sources are not copied.

use std::cmp::Ordering;

use super::snapshot::SourceRow;
pub use crate::control::query::{importance, AddressFilter};
use crate::{
    control::query::{self, SortFields, SortKey, SourceOrder},
    metric::Metric,
};

/// A column of the sources table, in screen order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Address,
    Rate(Metric),
    State,
}

impl Column {
    /// The screen's columns: the per-hour creates are in the detail pane, not the table.
    pub const ALL: [Column; 8] = [
        Column::Address,
        Column::Rate(Metric::NewConnectionsPerSecond),
        Column::Rate(Metric::ImageCreatesPerMinute),
        Column::Rate(Metric::OtherWritesPerMinute),
        Column::Rate(Metric::ReadsPerSecond),
        Column::Rate(Metric::PacketsPerSecond),
        Column::Rate(Metric::BytesPerSecond),
        Column::State,
    ];

    /// Header at 80 columns.
    pub const fn short_name(self) -> &'static str {
        match self {
            Column::Address => "ADDRESS",
            Column::Rate(metric) => metric.headers().0,
            Column::State => "STATE",
        }
    }

    /// Header when there is room.
    pub const fn long_name(self) -> &'static str {
        match self {
            Column::Address => "ADDRESS",
            Column::Rate(metric) => metric.headers().1,
            Column::State => "STATE",
        }
    }

    /// The rate a numeric column shows (the detail pane's sparklines plot the same ones).
    pub const fn metric(self) -> Option<Metric> {
        match self {
            Column::Rate(metric) => Some(metric),
            Column::Address | Column::State => None,
        }
    }

    /// The key the daemon sorts by for this column.
    pub const fn key(self) -> SortKey {
        match self {
            Column::Address => SortKey::Address,
            Column::Rate(metric) => SortKey::Rate(metric),
            Column::State => SortKey::State,
        }
    }

    /// The order a column is first sorted in: numbers busiest first, addresses ascending.
    pub const fn default_descending(self) -> bool {
        !matches!(self, Column::Address)
    }

    fn index(self) -> usize {
        Column::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    pub fn next(self) -> Column {
        Column::ALL[(self.index() + 1) % Column::ALL.len()]
    }

    pub fn previous(self) -> Column {
        Column::ALL[(self.index() + Column::ALL.len() - 1) % Column::ALL.len()]
    }
}

/// How rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
    /// Over-threshold rows first, then banned ones, whatever the column: the rows that need
    /// the operator are on the first screen.
    pub pin_important: bool,
}

impl Sort {
    /// The same order as the daemon takes it in a `stats` request.
    pub const fn order(self) -> SourceOrder {
        SourceOrder {
            by: self.column.key(),
            descending: self.descending,
            pin_important: self.pin_important,
        }
    }
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            column: Column::Rate(Metric::ImageCreatesPerMinute),
            descending: true,
            pin_important: true,
        }
    }
}

/// Indices of `rows` that pass `filter`, in `sort` order; ties by address, so the order is
/// stable from one refresh to the next.
pub fn order(rows: &[SourceRow], sort: Sort, filter: &AddressFilter) -> Vec<u32> {
    let mut scratch = String::new();
    let mut indices: Vec<u32> = (0..rows.len() as u32)
        .filter(|&i| filter.matches(rows[i as usize].address, &mut scratch))
        .collect();
    indices.sort_unstable_by(|&a, &b| compare(&rows[a as usize], &rows[b as usize], sort));
    indices
}

fn compare(a: &SourceRow, b: &SourceRow, sort: Sort) -> Ordering {
    query::compare(&fields(a), &fields(b), sort.order())
}

fn fields(row: &SourceRow) -> SortFields<'_> {
    SortFields {
        address: row.address,
        state: row.state,
        banned_until: row.banned_until,
        rates: &row.rates,
    }
}

/// The figure a numeric column shows.
pub fn value(row: &SourceRow, column: Column) -> f64 {
    column.metric().map_or(0.0, |metric| row.rates.get(metric))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{RatesView, SourceState, Totals};

    fn row(address: &str, state: SourceState, creates: u64, bytes: f64) -> SourceRow {
        SourceRow {
            address: address.parse().unwrap(),
            state,
            banned_until: None,
            rates: RatesView {
                image_creates_per_minute: creates,
                bytes_per_second: bytes,
                ..RatesView::default()
            },
            totals: Totals::default(),
            via: None,
            creates: None,
        }
    }

    fn addresses(rows: &[SourceRow], order: &[u32]) -> Vec<String> {
        order
            .iter()
            .map(|&i| rows[i as usize].address.to_string())
            .collect()
    }

    fn sample() -> Vec<SourceRow> {
        vec![
            row("198.51.100.1", SourceState::Ok, 5, 100.0),
            row("198.51.100.2", SourceState::Banned, 0, 0.0),
            row("203.0.113.9", SourceState::OverThreshold, 90, 10.0),
            row("2001:db8::7", SourceState::Ok, 20, 5000.0),
        ]
    }

    #[test]
    fn rows_that_matter_come_first_whatever_the_column() {
        let rows = sample();
        let sort = Sort {
            column: Column::Rate(Metric::BytesPerSecond),
            descending: true,
            pin_important: true,
        };
        assert_eq!(
            addresses(&rows, &order(&rows, sort, &AddressFilter::All)),
            ["203.0.113.9", "198.51.100.2", "2001:db8::7", "198.51.100.1"]
        );
        let unpinned = Sort {
            pin_important: false,
            ..sort
        };
        assert_eq!(
            addresses(&rows, &order(&rows, unpinned, &AddressFilter::All)),
            ["2001:db8::7", "198.51.100.1", "203.0.113.9", "198.51.100.2"]
        );
    }

    #[test]
    fn ascending_and_ties_by_address() {
        let rows = vec![
            row("198.51.100.9", SourceState::Ok, 1, 0.0),
            row("198.51.100.3", SourceState::Ok, 1, 0.0),
            row("198.51.100.5", SourceState::Ok, 0, 0.0),
        ];
        let sort = Sort {
            column: Column::Rate(Metric::ImageCreatesPerMinute),
            descending: false,
            pin_important: true,
        };
        assert_eq!(
            addresses(&rows, &order(&rows, sort, &AddressFilter::All)),
            ["198.51.100.5", "198.51.100.3", "198.51.100.9"]
        );
    }

    #[test]
    fn filters_by_text_prefix_or_cidr() {
        let rows = sample();
        let sort = Sort {
            column: Column::Address,
            descending: false,
            pin_important: false,
        };
        let by_text = order(&rows, sort, &AddressFilter::parse("198.51."));
        assert_eq!(addresses(&rows, &by_text), ["198.51.100.1", "198.51.100.2"]);
        let by_net = order(&rows, sort, &AddressFilter::parse("2001:DB8::/32"));
        assert_eq!(addresses(&rows, &by_net), ["2001:db8::7"]);
        assert_eq!(AddressFilter::parse("  "), AddressFilter::All);
        // Host bits are forgiven in a filter: it only selects what to look at.
        assert_eq!(
            AddressFilter::parse("203.0.113.9/24"),
            AddressFilter::Net("203.0.113.0/24".parse().unwrap())
        );
    }

    #[test]
    fn every_column_sorts_by_its_own_figure_at_the_daemon() {
        let rates = RatesView {
            new_connections_per_second: 1.0,
            image_creates_per_minute: 2,
            other_writes_per_minute: 3,
            reads_per_second: 4.0,
            packets_per_second: 5.0,
            bytes_per_second: 6.0,
            ..RatesView::default()
        };
        for column in Column::ALL {
            let local = column.metric().map_or(0.0, |m| rates.get(m));
            assert_eq!(column.key().value(&rates), local, "{column:?}");
        }
        assert_eq!(Sort::default().order(), SourceOrder::default());
    }

    #[test]
    fn columns_cycle_both_ways() {
        let mut column = Column::Address;
        for _ in 0..Column::ALL.len() {
            assert_eq!(column.next().previous(), column);
            column = column.next();
        }
        assert_eq!(column, Column::Address);
    }
}
