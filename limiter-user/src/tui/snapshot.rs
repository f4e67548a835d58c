//! What a [`super::source::SnapshotSource`] delivers: one [`Snapshot`] per refresh (status,
//! sources, rules, as the control API returns them), loss of the daemon, and the outcome of
//! the actions the operator sent. Sources are converted to compact [`SourceRow`]s where the
//! snapshot is made (the fetching thread), so the UI thread never walks the protocol's
//! larger shapes.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use crate::{
    control::protocol::{
        CreatesView, ProxyView, RatesView, SourceOrder, SourceState, SourceView, Stats, Status,
        Totals,
    },
    store::StoredRule,
};

/// Identifies an action the UI handed to its [`super::source::ActionSink`], so its outcome
/// can be matched to what the operator asked for.
pub type ActionId = u64;

#[derive(Clone, Debug, PartialEq)]
pub enum Feed {
    Snapshot(Box<Snapshot>),
    /// The daemon could not be reached or did not answer; the source keeps retrying.
    Unreachable {
        error: String,
    },
    /// An action came back: what changed, or why nothing did.
    ActionDone {
        id: ActionId,
        outcome: Result<crate::control::protocol::RuleChange, String>,
    },
}

/// What the screen asks the daemon for at each refresh: the first `rows` sources in its
/// order that pass its filter. The daemon selects them; the screen orders and filters what it
/// receives the same way (so typing a filter acts at once, before the next answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScreenQuery {
    pub rows: usize,
    pub order: SourceOrder,
    /// As typed after `/` (trimmed); empty for every source.
    pub filter: String,
}

impl Default for ScreenQuery {
    /// What a screen asks before it has said anything: the default order, no filter.
    fn default() -> Self {
        ScreenQuery {
            rows: 2 * super::app::FETCH_STEP,
            order: SourceOrder::default(),
            filter: String::new(),
        }
    }
}

/// How many sources passed the filter at the daemon, for the filter it was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    pub filter: String,
    pub count: usize,
}

/// The daemon's state at one refresh.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Wall-clock time the snapshot was taken (events are stamped with it).
    pub taken: SystemTime,
    /// Monotonic time since the source started: rates of the kernel counters are differences
    /// over it, immune to wall-clock jumps.
    pub elapsed: Duration,
    pub status: Status,
    /// Every source the daemon tracks, which may be more than `rows` holds.
    pub tracked_sources: usize,
    /// In the daemon's order: busiest first (image creates/min, then new connections).
    pub rows: Vec<SourceRow>,
    /// Whether `rows` is the daemon's top N rather than every tracked source.
    pub truncated: bool,
    /// With an answer to a [`ScreenQuery`]: the sources that pass its filter, however many
    /// of them `rows` holds (a daemon from before queries sends every row asked instead).
    pub matched: Option<Matched>,
    pub rules: Vec<StoredRule>,
    /// The trusted proxies the daemon has seen, with their load (few: not per source).
    pub proxies: Vec<ProxyView>,
    /// `trusted_proxies` entries no proxy has been seen from.
    pub unseen_proxies: Vec<IpNet>,
}

/// One source, as the table and the history need it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRow {
    pub address: IpAddr,
    pub state: SourceState,
    /// The end of its ban; `None` while banned means until removed.
    pub banned_until: Option<SystemTime>,
    pub rates: RatesView,
    pub totals: Totals,
    /// The trusted proxy its latest proxied request came through.
    pub via: Option<IpAddr>,
    /// What became of its image creates (Glance's answers, the budget's refusals).
    pub creates: Option<CreatesView>,
}

impl SourceRow {
    pub fn from_view(view: SourceView) -> SourceRow {
        SourceRow {
            address: view.address,
            state: view.state,
            banned_until: view.banned_until,
            rates: view.rates,
            totals: view.totals,
            via: view.via,
            creates: view.creates,
        }
    }
}

/// Rows from a `stats` reply, keeping the daemon's order.
pub fn rows_from_stats(stats: Stats) -> (usize, Vec<SourceRow>) {
    let rows = stats
        .sources
        .into_iter()
        .map(SourceRow::from_view)
        .collect();
    (stats.tracked_sources, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_ends_are_parsed_once_off_the_wire() {
        let view = |until: &str| -> SourceView {
            serde_json::from_str(&format!(
                r#"{{"address":"198.51.100.7","state":"banned","rates":{},"totals":{},"banned_until":"{until}"}}"#,
                serde_json::to_string(&RatesView::default()).unwrap(),
                serde_json::to_string(&Totals::default()).unwrap(),
            ))
            .unwrap()
        };
        let row = SourceRow::from_view(view("2025-06-01T10:10:00Z"));
        assert_eq!(
            row.banned_until,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_772_600))
        );
        // An unparsable time is shown as "until removed" rather than dropping the row: the
        // state word still says banned.
        let garbled = SourceRow::from_view(view("soon"));
        assert_eq!(garbled.banned_until, None);
        assert_eq!(garbled.state, SourceState::Banned);
    }
}
