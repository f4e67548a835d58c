//! Which sources a `stats` request asks for, and in which order: the sort key and address
//! filter of the live screen, and the selection of the first N by them. Shared by the daemon
//! (which selects), the screen (which orders what it received the same way) and the CLI, so
//! it sits below `cli` and `tui`: the screen's order and the daemon's are one function.

use std::{cmp::Ordering, fmt::Write as _, net::IpAddr, time::SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::protocol::{RatesView, SourceState, StateCounts};
use crate::metric::Metric;

/// What sources are ordered by: a column of the screen's table. On the wire, its name:
/// `"address"`, `"state"`, or a metric's [`Metric::sort_name`] (`"image_creates"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Address,
    Rate(Metric),
    /// Over threshold, banned (soonest end first), then the rest.
    State,
}

impl Default for SortKey {
    fn default() -> Self {
        SortKey::Rate(Metric::ImageCreatesPerMinute)
    }
}

impl SortKey {
    /// The figure a numeric key sorts by (0 for the address and the state).
    pub fn value(self, rates: &RatesView) -> f64 {
        match self {
            SortKey::Rate(metric) => rates.get(metric),
            SortKey::Address | SortKey::State => 0.0,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            SortKey::Address => "address",
            SortKey::Rate(metric) => metric.sort_name(),
            SortKey::State => "state",
        }
    }

    pub fn named(name: &str) -> Option<SortKey> {
        match name {
            "address" => Some(SortKey::Address),
            "state" => Some(SortKey::State),
            _ => Metric::ALL
                .into_iter()
                .find(|m| m.sort_name() == name)
                .map(SortKey::Rate),
        }
    }
}

impl Serialize for SortKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SortKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        SortKey::named(&name).ok_or_else(|| {
            let known: Vec<&str> = ["address", "state"]
                .into_iter()
                .chain(Metric::ALL.map(Metric::sort_name))
                .collect();
            serde::de::Error::custom(format!(
                "unknown sort key `{name}`: expected one of {}",
                known.join(", ")
            ))
        })
    }
}

/// An order of sources: `{"by":"image_creates","descending":true,"pin_important":true}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOrder {
    pub by: SortKey,
    #[serde(default)]
    pub descending: bool,
    /// Over-threshold sources first, then banned ones, whatever `by`.
    #[serde(default)]
    pub pin_important: bool,
}

impl Default for SourceOrder {
    /// The screen's: image creates, busiest first, the sources that matter pinned on top.
    fn default() -> Self {
        SourceOrder {
            by: SortKey::Rate(Metric::ImageCreatesPerMinute),
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

/// What a source is ordered on.
#[derive(Clone, Copy, Debug)]
pub struct SortFields<'a> {
    pub address: IpAddr,
    pub state: SourceState,
    /// The end of its ban; `None` while banned means until removed.
    pub banned_until: Option<SystemTime>,
    pub rates: &'a RatesView,
}

/// `order`, then the address: a total order, stable from one refresh to the next.
pub fn compare(a: &SortFields, b: &SortFields, order: SourceOrder) -> Ordering {
    let pinned = if order.pin_important {
        importance(a.state).cmp(&importance(b.state))
    } else {
        Ordering::Equal
    };
    let by_key = match order.by {
        SortKey::Address => a.address.cmp(&b.address),
        SortKey::State => importance(a.state)
            .cmp(&importance(b.state))
            .reverse()
            .then_with(|| a.banned_until.cmp(&b.banned_until)),
        key => key.value(a.rates).total_cmp(&key.value(b.rates)),
    };
    let by_key = if order.descending {
        by_key.reverse()
    } else {
        by_key
    };
    pinned.then(by_key).then_with(|| a.address.cmp(&b.address))
}

/// Keeps the first `top` of `items` by `cmp`, sorted; all of them sorted without `top`. A
/// partial selection first, so the first 100 of 100,000 cost a linear pass, not a sort.
pub fn select_first<T>(
    items: &mut Vec<T>,
    top: Option<usize>,
    mut cmp: impl FnMut(&T, &T) -> Ordering,
) {
    if let Some(top) = top.filter(|top| *top < items.len()) {
        if top == 0 {
            items.clear();
            return;
        }
        items.select_nth_unstable_by(top - 1, &mut cmp);
        items.truncate(top);
    }
    items.sort_unstable_by(cmp);
}

/// A source as the daemon selects it for a screen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ranked {
    pub address: IpAddr,
    pub rates: RatesView,
    pub state: SourceState,
    /// The end of its ban; `None` while banned means until removed.
    pub banned_until: Option<SystemTime>,
}

impl Ranked {
    pub fn fields(&self) -> SortFields<'_> {
        SortFields {
            address: self.address,
            state: self.state,
            banned_until: self.banned_until,
            rates: &self.rates,
        }
    }
}

/// What a screen asks of `stats`: the sources matching `filter` counted by state, and the
/// first `top` of them in `order`. `describe` gives a source's rates, state and end of ban;
/// it is called only for sources that match, since the state costs rule look-ups.
pub fn select_sources<R>(
    sources: impl IntoIterator<Item = (IpAddr, R)>,
    filter: &AddressFilter,
    order: SourceOrder,
    top: Option<usize>,
    mut describe: impl FnMut(IpAddr, &R) -> (RatesView, SourceState, Option<SystemTime>),
) -> (Vec<Ranked>, StateCounts) {
    let mut scratch = String::new();
    let mut counts = StateCounts::default();
    let mut ranked: Vec<Ranked> = sources
        .into_iter()
        .filter(|(address, _)| filter.matches(*address, &mut scratch))
        .map(|(address, raw)| {
            let (rates, state, banned_until) = describe(address, &raw);
            counts.add(state);
            Ranked {
                address,
                rates,
                state,
                banned_until,
            }
        })
        .collect();
    select_first(&mut ranked, top, |a, b| {
        compare(&a.fields(), &b.fields(), order)
    });
    (ranked, counts)
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
    /// Never fails: what is not a CIDR prefix is a text prefix (host bits are forgiven, a
    /// filter only selects what to look at).
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

    /// `scratch` is reused across calls so filtering 100k sources formats without allocating.
    pub fn matches(&self, address: IpAddr, scratch: &mut String) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_keep_their_wire_names() {
        let names = [
            ("address", SortKey::Address),
            (
                "new_connections",
                SortKey::Rate(Metric::NewConnectionsPerSecond),
            ),
            (
                "image_creates",
                SortKey::Rate(Metric::ImageCreatesPerMinute),
            ),
            ("other_writes", SortKey::Rate(Metric::OtherWritesPerMinute)),
            ("reads", SortKey::Rate(Metric::ReadsPerSecond)),
            ("packets", SortKey::Rate(Metric::PacketsPerSecond)),
            ("bytes", SortKey::Rate(Metric::BytesPerSecond)),
            ("state", SortKey::State),
        ];
        for (name, key) in names {
            let json = format!("\"{name}\"");
            assert_eq!(serde_json::to_string(&key).unwrap(), json);
            assert_eq!(serde_json::from_str::<SortKey>(&json).unwrap(), key);
        }
        let error = serde_json::from_str::<SortKey>("\"creates\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown sort key `creates`: expected one of address"),
            "{error}"
        );
    }

    #[test]
    fn the_first_n_are_those_a_full_sort_puts_first() {
        let mut items: Vec<u32> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let mut sorted = items.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        select_first(&mut items, Some(20), |a, b| b.cmp(a));
        assert_eq!(items, sorted[..20]);
        let mut none = vec![3, 1, 2];
        select_first(&mut none, Some(0), u32::cmp);
        assert!(none.is_empty());
        let mut all = vec![3, 1, 2];
        select_first(&mut all, None, u32::cmp);
        assert_eq!(all, [1, 2, 3]);
        let mut more_than_there_are = vec![3, 1, 2];
        select_first(&mut more_than_there_are, Some(10), u32::cmp);
        assert_eq!(more_than_there_are, [1, 2, 3]);
    }

    fn source(address: &str, creates: u64, bytes: f64) -> (IpAddr, RatesView) {
        let rates = RatesView {
            image_creates_per_minute: creates,
            bytes_per_second: bytes,
            ..RatesView::default()
        };
        (address.parse().unwrap(), rates)
    }

    /// Sources whose state the fake daemon decides by address: .66 banned, .99 over.
    fn describe(
        described: &mut Vec<IpAddr>,
    ) -> impl FnMut(IpAddr, &RatesView) -> (RatesView, SourceState, Option<SystemTime>) + '_ {
        |address, rates| {
            described.push(address);
            let state = match address.to_string().rsplit('.').next() {
                Some("66") => SourceState::Banned,
                Some("99") => SourceState::OverThreshold,
                _ => SourceState::Ok,
            };
            (*rates, state, None)
        }
    }

    fn addresses(ranked: &[Ranked]) -> Vec<String> {
        ranked.iter().map(|r| r.address.to_string()).collect()
    }

    #[test]
    fn the_daemon_selects_the_screens_first_rows_and_counts_the_matches() {
        let sources: Vec<(IpAddr, RatesView)> = (1..=200)
            .map(|i| source(&format!("198.51.100.{i}"), i % 50, (200 - i) as f64))
            .chain([source("203.0.113.5", 1000, 0.0)])
            .collect();
        let mut described = Vec::new();
        let (first, counts) = select_sources(
            sources.clone(),
            &AddressFilter::parse("198.51.100.0/24"),
            SourceOrder::default(),
            Some(4),
            describe(&mut described),
        );
        // Pinned: the over-threshold one, the banned one, then the most creates (49: .49,
        // .99 (pinned already), .149, .199), ties by address.
        assert_eq!(
            addresses(&first),
            [
                "198.51.100.99",
                "198.51.100.66",
                "198.51.100.49",
                "198.51.100.149"
            ]
        );
        assert_eq!(
            described.len(),
            200,
            "the state only of the sources that match"
        );
        assert_eq!(
            counts,
            StateCounts {
                ok: 198,
                over_threshold: 1,
                banned: 1,
                allowed: 0
            }
        );
        // By bytes, ascending, unpinned, with a text filter.
        let (first, counts) = select_sources(
            sources.clone(),
            &AddressFilter::parse("198.51.100.1"),
            SourceOrder {
                by: SortKey::Rate(Metric::BytesPerSecond),
                descending: false,
                pin_important: false,
            },
            Some(3),
            describe(&mut Vec::new()),
        );
        assert_eq!(
            addresses(&first),
            ["198.51.100.199", "198.51.100.198", "198.51.100.197"]
        );
        assert_eq!(counts.total(), 1 + 10 + 100, ".1, .10-.19, .100-.199");
        // What a full sort of everything would show first, whatever `top`.
        let (all, _) = select_sources(
            sources.clone(),
            &AddressFilter::All,
            SourceOrder::default(),
            None,
            describe(&mut Vec::new()),
        );
        let (some, _) = select_sources(
            sources,
            &AddressFilter::All,
            SourceOrder::default(),
            Some(30),
            describe(&mut Vec::new()),
        );
        assert_eq!(some, all[..30]);
        assert_eq!(all[2].address.to_string(), "203.0.113.5");
    }

    #[test]
    fn orders_serialize_as_words() {
        let order = SourceOrder::default();
        let text = serde_json::to_string(&order).unwrap();
        assert_eq!(
            text,
            r#"{"by":"image_creates","descending":true,"pin_important":true}"#
        );
        assert_eq!(serde_json::from_str::<SourceOrder>(&text).unwrap(), order);
        let short: SourceOrder = serde_json::from_str(r#"{"by":"address"}"#).unwrap();
        assert_eq!(
            (short.by, short.descending, short.pin_important),
            (SortKey::Address, false, false)
        );
        assert!(serde_json::from_str::<SourceOrder>(r#"{"by":"colour"}"#).is_err());
    }

    #[test]
    fn filters_by_text_prefix_or_cidr() {
        let mut scratch = String::new();
        let text = AddressFilter::parse("198.51.");
        assert!(text.matches("198.51.100.1".parse().unwrap(), &mut scratch));
        assert!(!text.matches("203.0.113.9".parse().unwrap(), &mut scratch));
        let net = AddressFilter::parse("2001:DB8::/32");
        assert!(net.matches("2001:db8::7".parse().unwrap(), &mut scratch));
        assert!(!net.matches("2001:db9::7".parse().unwrap(), &mut scratch));
        assert_eq!(AddressFilter::parse("  "), AddressFilter::All);
        assert_eq!(
            AddressFilter::parse("203.0.113.9/24"),
            AddressFilter::Net("203.0.113.0/24".parse().unwrap())
        );
    }
}
