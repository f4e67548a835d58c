//! The TUI's whole state: the latest data from the daemon, what the TUI derived from the
//! refreshes before it (rates of the kernel counters, histories, events), and what the
//! operator is doing (selection, sort, filter, a form or a confirmation). Changed only by
//! [`super::update::update`]; read by the pure render functions.

use std::{collections::HashSet, net::IpAddr, time::SystemTime};

use ipnet::IpNet;

use super::{
    events::EventLog,
    history::Histories,
    settings::Thresholds,
    snapshot::{ActionId, Snapshot, SourceRow},
    theme::Theme,
    view::{AddressFilter, Sort},
};
use crate::{control::protocol::Request, rules::Action, store::StoredRule};

/// The screen asks for sources in steps of this many: every row down to the bottom of the
/// table, and at least this many more, so scrolling a page seldom changes the request (each
/// change is asked at once).
pub const FETCH_STEP: usize = 100;

/// Whether the daemon answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Nothing heard yet.
    Connecting,
    Live,
    /// The last refresh failed; the source keeps retrying.
    Unreachable {
        error: String,
        since: SystemTime,
    },
}

/// The bottom pane shown in the compact layout (the wide one shows all three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pane {
    #[default]
    Detail,
    Rules,
    Events,
}

impl Pane {
    pub const ALL: [Pane; 3] = [Pane::Detail, Pane::Rules, Pane::Events];

    pub const fn title(self) -> &'static str {
        match self {
            Pane::Detail => "Detail",
            Pane::Rules => "Rules",
            Pane::Events => "Events",
        }
    }

    pub fn next(self) -> Pane {
        match self {
            Pane::Detail => Pane::Rules,
            Pane::Rules => Pane::Events,
            Pane::Events => Pane::Detail,
        }
    }
}

/// What the keyboard is doing.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Mode {
    #[default]
    Normal,
    /// Typing the address filter (applied as it is typed).
    Filter,
    /// Asking for a ban's or an allow's TTL and reason.
    Form(RuleForm),
    /// Waiting for yes or no.
    Confirm(Pending),
    Help,
}

/// The form behind `b` (ban) and `a` (allow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleForm {
    pub action: Action,
    pub target: IpNet,
    /// As typed: `30m`, `1h30m`; empty means until removed.
    pub ttl: String,
    pub reason: String,
    pub field: FormField,
    /// Why the last submit was refused (a bad TTL).
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormField {
    Ttl,
    Reason,
}

/// A request waiting for the operator's yes, with the question that describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub question: String,
    pub request: Request,
}

/// A one-line message in the footer (what an action did, why a key did nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    pub text: String,
    pub alarm: bool,
    pub at: SystemTime,
}

/// An action handed to the sink, until its outcome comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentAction {
    pub id: ActionId,
    /// `ban 198.51.100.7/32`.
    pub what: String,
    /// The first prefix it names, so its outcome shows in that source's history.
    pub subject: Option<IpNet>,
}

/// Rates of the kernel's global counters, from two successive `status` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CounterRates {
    /// Packets to the protected ports (passed, allowed and dropped), per second.
    pub protected_packets: Option<f64>,
    /// Packets dropped for a block, per second.
    pub drops: Option<f64>,
}

/// The counters a rate is computed from, and when they were read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterSample {
    pub elapsed: std::time::Duration,
    pub protected_packets: u64,
    pub drops: u64,
}

pub struct App {
    /// The clock, set by each tick; render functions read time only from here.
    pub now: SystemTime,
    pub theme: Theme,
    pub thresholds: Thresholds,
    /// Who runs the TUI, for the default reason of a ban.
    pub operator: String,
    pub link: Link,
    /// The latest refresh; its rules are sorted for the rules pane (newest first).
    pub data: Option<Snapshot>,
    pub counter_rates: CounterRates,
    pub last_counters: Option<CounterSample>,
    /// Indices into `data.rows` of the rows the table shows, in order.
    pub order: Vec<u32>,
    pub sort: Sort,
    pub filter: AddressFilter,
    pub filter_input: String,
    /// Position of the selection in `order`, and the address it is on (kept across
    /// refreshes and re-sorts).
    pub selected: usize,
    pub selected_address: Option<IpAddr>,
    /// First row of `order` on screen.
    pub offset: usize,
    /// Terminal size, for the table's height.
    pub screen: (u16, u16),
    pub histories: Histories,
    pub events: EventLog,
    /// Addresses over a threshold at the last refresh (to log only the new ones).
    pub was_over: HashSet<IpAddr>,
    pub mode: Mode,
    pub pane: Pane,
    pub flash: Option<Flash>,
    /// Actions sent and not answered yet.
    pub pending: Vec<SentAction>,
    pub next_action: ActionId,
    pub should_quit: bool,
}

impl App {
    pub fn new(now: SystemTime, theme: Theme, thresholds: Thresholds, operator: String) -> App {
        App {
            now,
            theme,
            thresholds,
            operator,
            link: Link::Connecting,
            data: None,
            counter_rates: CounterRates::default(),
            last_counters: None,
            order: Vec::new(),
            sort: Sort::default(),
            filter: AddressFilter::All,
            filter_input: String::new(),
            selected: 0,
            selected_address: None,
            offset: 0,
            screen: (80, 24),
            histories: Histories::default(),
            events: EventLog::default(),
            was_over: HashSet::new(),
            mode: Mode::Normal,
            pane: Pane::Detail,
            flash: None,
            pending: Vec::new(),
            next_action: 1,
            should_quit: false,
        }
    }

    pub fn rows(&self) -> &[SourceRow] {
        self.data.as_ref().map_or(&[], |d| d.rows.as_slice())
    }

    pub fn rules(&self) -> &[StoredRule] {
        self.data.as_ref().map_or(&[], |d| d.rules.as_slice())
    }

    pub fn selected_row(&self) -> Option<&SourceRow> {
        let index = *self.order.get(self.selected)?;
        self.rows().get(index as usize)
    }

    /// Rows the table shows at the current size.
    pub fn table_rows(&self) -> usize {
        super::render::layout::table_rows(
            self.screen.0,
            self.screen.1,
            self.header_lines(),
            self.proxy_items(),
        )
    }

    /// Lines of the header: a third for the cluster's state when the daemon has `[cluster]`.
    pub fn header_lines(&self) -> u16 {
        super::render::layout::header_lines(
            self.data
                .as_ref()
                .is_some_and(|d| d.status.cluster.is_some()),
        )
    }

    /// Lines the proxies panel would like: one per trusted proxy seen, one for the entries
    /// not seen; 0 without trusted proxies.
    pub fn proxy_items(&self) -> usize {
        self.data.as_ref().map_or(0, |d| {
            d.proxies.len() + usize::from(!d.unseen_proxies.is_empty())
        })
    }

    /// Indices (into `order`) of the rows on screen.
    pub fn visible(&self) -> std::ops::Range<usize> {
        let end = (self.offset + self.table_rows()).min(self.order.len());
        self.offset.min(end)..end
    }

    /// What to ask the daemon for: the rows down to the bottom of the table and a margin,
    /// in the table's order, through its filter.
    pub fn wanted(&self) -> super::snapshot::ScreenQuery {
        let bottom = self.offset + self.table_rows();
        super::snapshot::ScreenQuery {
            rows: (bottom / FETCH_STEP + 2) * FETCH_STEP,
            order: self.sort.order(),
            filter: self.filter_input.trim().to_string(),
        }
    }

    /// How many sources pass the filter: the daemon's count when it answered for this
    /// filter, else the rows at hand that do.
    pub fn shown(&self) -> usize {
        self.data
            .as_ref()
            .and_then(|d| d.matched.as_ref())
            .filter(|m| m.filter == self.filter_input.trim())
            .map_or(self.order.len(), |m| m.count.max(self.order.len()))
    }

    /// Rules of `action` in force that cover `address`, longest prefix first.
    pub fn covering_rules(&self, address: IpAddr, action: Action) -> Vec<&StoredRule> {
        let mut rules: Vec<&StoredRule> = self
            .rules()
            .iter()
            .filter(|r| r.action == action && r.prefix.contains(&address) && r.is_active(self.now))
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.prefix_len()));
        rules
    }
}
