//! Which rows the table shows, in which order: sort by any column, rows that matter pinned on
//! top, filter by address prefix. Computed when the data, the sort or the filter changes, never
//! per frame, and kept as indices into the snapshot's rows so 100k sources are not copied.

use std::{cmp::Ordering, fmt::Write as _, net::IpAddr};

use ipnet::IpNet;

use super::{history::Metric, snapshot::SourceRow};
use crate::control::protocol::SourceState;

/// A column of the sources table, in screen order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Address,
    NewConnections,
    ImageCreates,
    OtherWrites,
    Reads,
    Packets,
    Bytes,
    State,
}

impl Column {
    pub const ALL: [Column; 8] = [
        Column::Address,
        Column::NewConnections,
        Column::ImageCreates,
        Column::OtherWrites,
        Column::Reads,
        Column::Packets,
        Column::Bytes,
        Column::State,
    ];

    /// Header at 80 columns.
    pub const fn short_name(self) -> &'static str {
        match self {
            Column::Address => "ADDRESS",
            Column::NewConnections => "CONN/S",
            Column::ImageCreates => "CREATE/M",
            Column::OtherWrites => "WRITE/M",
            Column::Reads => "READ/S",
            Column::Packets => "PKT/S",
            Column::Bytes => "BYTE/S",
            Column::State => "STATE",
        }
    }

    /// Header when there is room.
    pub const fn long_name(self) -> &'static str {
        match self {
            Column::Address => "ADDRESS",
            Column::NewConnections => "NEW CONN/S",
            Column::ImageCreates => "CREATES/MIN",
            Column::OtherWrites => "WRITES/MIN",
            Column::Reads => "READS/S",
            Column::Packets => "PACKETS/S",
            Column::Bytes => "BYTES/S",
            Column::State => "STATE",
        }
    }

    /// The rate a numeric column shows (the detail pane's sparklines plot the same ones).
    pub const fn metric(self) -> Option<Metric> {
        match self {
            Column::NewConnections => Some(Metric::NewConnections),
            Column::ImageCreates => Some(Metric::ImageCreates),
            Column::OtherWrites => Some(Metric::OtherWrites),
            Column::Reads => Some(Metric::Reads),
            Column::Packets => Some(Metric::Packets),
            Column::Bytes => Some(Metric::Bytes),
            Column::Address | Column::State => None,
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

impl Default for Sort {
    fn default() -> Self {
        Sort {
            column: Column::ImageCreates,
            descending: true,
            pin_important: true,
        }
    }
}

/// 0 sorts first. Over threshold (not handled yet) before banned (handled).
pub fn importance(state: SourceState) -> u8 {
    match state {
        SourceState::OverThreshold => 0,
        SourceState::Banned => 1,
        SourceState::Ok | SourceState::Allowed => 2,
    }
}

/// The address filter: a CIDR prefix (`198.51.100.0/24`) matches the addresses it contains;
/// anything else matches addresses whose text starts with it (`198.51.`, `2001:db8:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AddressFilter {
    #[default]
    All,
    Net(IpNet),
    Text(String),
}

impl AddressFilter {
    pub fn parse(text: &str) -> AddressFilter {
        let text = text.trim();
        if text.is_empty() {
            return AddressFilter::All;
        }
        if text.contains('/') {
            if let Ok(net) = text.parse::<IpNet>() {
                return AddressFilter::Net(net.trunc());
            }
        }
        AddressFilter::Text(text.to_ascii_lowercase())
    }

    pub fn is_all(&self) -> bool {
        matches!(self, AddressFilter::All)
    }

    /// `scratch` is reused across calls so filtering 100k rows formats without allocating.
    fn matches(&self, address: IpAddr, scratch: &mut String) -> bool {
        match self {
            AddressFilter::All => true,
            AddressFilter::Net(net) => net.contains(&address),
            AddressFilter::Text(prefix) => {
                scratch.clear();
                let _ = write!(scratch, "{address}");
                scratch.starts_with(prefix.as_str())
            }
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
    let pinned = if sort.pin_important {
        importance(a.state).cmp(&importance(b.state))
    } else {
        Ordering::Equal
    };
    let by_column = match sort.column {
        Column::Address => a.address.cmp(&b.address),
        Column::State => importance(a.state)
            .cmp(&importance(b.state))
            .reverse()
            .then_with(|| a.banned_until.cmp(&b.banned_until)),
        column => value(a, column).total_cmp(&value(b, column)),
    };
    let by_column = if sort.descending {
        by_column.reverse()
    } else {
        by_column
    };
    pinned
        .then(by_column)
        .then_with(|| a.address.cmp(&b.address))
}

/// The figure a numeric column shows.
pub fn value(row: &SourceRow, column: Column) -> f64 {
    column.metric().map_or(0.0, |metric| metric.of(&row.rates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{RatesView, Totals};

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
            column: Column::Bytes,
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
            column: Column::ImageCreates,
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
    fn columns_cycle_both_ways() {
        let mut column = Column::Address;
        for _ in 0..Column::ALL.len() {
            assert_eq!(column.next().previous(), column);
            column = column.next();
        }
        assert_eq!(column, Column::Address);
    }
}
