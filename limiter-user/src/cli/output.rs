//! What the commands print: aligned tables and summaries for people, the protocol's JSON for
//! programs. Pure functions of the reply and the current time.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, SystemTime},
};

use super::proxies;
pub use crate::text::{bytes, clean, short_duration};
use crate::{
    control::protocol::{
        ClusterHealth, InterfaceView, Reply, RuleChange, RuleList, SourceState, SourceView, Stats,
        Status, StoreErrorView,
    },
    loader::DetachReport,
    recommend::Recommendation,
    rules::{Action, Scope},
    store::{Origin, StoredRule},
    text::{node_and_role, nodes, ClusterPhrase},
};

/// A reply exactly as the protocol carries it in `result`, on one line.
pub fn json(reply: &Reply) -> String {
    serde_json::to_string(reply).expect("replies are plain data")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Columns padded to their widest cell, two spaces apart, no trailing spaces.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |cell: &str| cell.chars().count();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (header, _))| {
                self.rows
                    .iter()
                    .map(|row| width(&row[i]))
                    .chain([width(header)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `2025-06-01T10:30:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `in 29m`, `3m ago`, or `now`.
pub fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) if ahead.as_secs() > 0 => format!("in {}", short_duration(ahead)),
        Ok(_) => "now".to_string(),
        Err(past) => format!("{} ago", short_duration(past.duration())),
    }
}

/// A rule's end: `never`, or the time with how far away it is.
pub fn expiry(expires: Option<SystemTime>, now: SystemTime) -> String {
    match expires {
        None => "never".to_string(),
        Some(time) if time > now => format!("{} ({})", rfc3339(time), relative(time, now)),
        Some(time) => format!("{} (expired {})", rfc3339(time), relative(time, now)),
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        clean(text)
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Block => "block",
        Action::Allow => "allow",
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::ProtectedPorts => "protected ports",
        Scope::AllPorts => "all ports",
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Auto => "auto",
        Origin::Manual => "manual",
    }
}

fn rule_cells(rule: &StoredRule, now: SystemTime) -> Vec<String> {
    vec![
        rule.prefix.to_string(),
        action_name(rule.action).to_string(),
        scope_name(rule.scope).to_string(),
        origin_name(rule.origin).to_string(),
        expiry(rule.expires, now),
        or_dash(&rule.reason),
    ]
}

/// What a block/unblock/allow/unallow did: one row per rule named, then a summary line.
/// `action` is the kind of rule the command was about, for prefixes that had none.
pub fn rule_change(change: &RuleChange, action: Action, now: SystemTime) -> String {
    let mut table = Table::new(&[
        ("RESULT", Align::Left),
        ("PREFIX", Align::Left),
        ("ACTION", Align::Left),
        ("SCOPE", Align::Left),
        ("ORIGIN", Align::Left),
        ("EXPIRES", Align::Left),
        ("REASON", Align::Left),
    ]);
    let groups = [
        ("added", &change.added),
        ("updated", &change.updated),
        ("unchanged", &change.unchanged),
        ("removed", &change.removed),
    ];
    for (result, rules) in groups {
        for rule in rules {
            let mut cells = vec![result.to_string()];
            cells.extend(rule_cells(rule, now));
            table.row(cells);
        }
    }
    for prefix in &change.absent {
        table.row(vec![
            "absent".to_string(),
            prefix.to_string(),
            action_name(action).to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("there was no {} rule", action_name(action)),
        ]);
    }
    let counts: Vec<String> = groups
        .iter()
        .map(|(result, rules)| (*result, rules.len()))
        .chain([("absent", change.absent.len())])
        .filter(|(_, count)| *count > 0)
        .map(|(result, count)| format!("{count} {result}"))
        .collect();
    if counts.is_empty() {
        return "no rules named; nothing changed\n".to_string();
    }
    format!("{}{}\n", table.render(), counts.join(", "))
}

/// `limiter list`. Behind trusted proxies, a `VIA` column names the proxy a blocked address
/// last came through; in a cluster, a `NODE` column the node each rule came from (`-`: this
/// node, before the cluster).
pub fn rule_list(list: &RuleList, now: SystemTime) -> String {
    if list.rules.is_empty() {
        return "no rules\n".to_string();
    }
    let with_via = !list.via.is_empty();
    let with_node = list.rules.iter().any(|rule| rule.node.is_some());
    let mut columns = vec![("PREFIX", Align::Left)];
    if with_via {
        columns.push(("VIA", Align::Left));
    }
    columns.extend([
        ("ACTION", Align::Left),
        ("SCOPE", Align::Left),
        ("ORIGIN", Align::Left),
    ]);
    if with_node {
        columns.push(("NODE", Align::Left));
    }
    columns.extend([
        ("CREATED", Align::Left),
        ("EXPIRES", Align::Left),
        ("REASON", Align::Left),
    ]);
    let mut table = Table::new(&columns);
    for rule in &list.rules {
        let mut cells = rule_cells(rule, now);
        cells.insert(4, rfc3339(rule.created));
        if with_node {
            cells.insert(4, or_dash(rule.node.as_deref().unwrap_or_default()));
        }
        if with_via {
            cells.insert(1, proxies::via_cell(list.via.get(&rule.prefix).copied()));
        }
        table.row(cells);
    }
    let count = list.rules.len();
    format!(
        "{}{count} rule{}\n",
        table.render(),
        if count == 1 { "" } else { "s" }
    )
}

fn state_name(state: SourceState) -> &'static str {
    match state {
        SourceState::Ok => "ok",
        SourceState::OverThreshold => "over threshold",
        SourceState::Banned => "banned",
        SourceState::Allowed => "allowed",
    }
}

/// The end of a ban, with how far away it is.
fn banned_until(source: &SourceView, now: SystemTime) -> String {
    match source.banned_until {
        None => "-".to_string(),
        Some(time) => expiry(Some(time), now),
    }
}

/// `limiter stats`. Behind trusted proxies, a `VIA` column names the proxy each proxied
/// source came through, and the proxies' own load follows in a table of its own.
pub fn stats(stats: &Stats, now: SystemTime) -> String {
    let mut out = format!(
        "{} sources tracked, {} shown (busiest first)\n",
        stats.tracked_sources,
        stats.sources.len()
    );
    if !stats.sources.is_empty() {
        out.push_str(&source_table(stats, now));
    }
    out.push_str(&proxies::section(stats));
    out
}

fn source_table(stats: &Stats, now: SystemTime) -> String {
    let with_via = stats.sources.iter().any(|s| s.via.is_some());
    let mut columns = vec![("ADDRESS", Align::Left)];
    if with_via {
        columns.push(("VIA", Align::Left));
    }
    columns.extend([
        ("STATE", Align::Left),
        ("CONN/S", Align::Right),
        ("CREATES/MIN", Align::Right),
        ("CREATES/H", Align::Right),
        ("WRITES/MIN", Align::Right),
        ("READS/S", Align::Right),
        ("PACKETS/S", Align::Right),
        ("BYTES/S", Align::Right),
        ("BANNED UNTIL", Align::Left),
    ]);
    let mut table = Table::new(&columns);
    for source in &stats.sources {
        let rates = &source.rates;
        let mut cells = vec![
            source.address.to_string(),
            state_name(source.state).to_string(),
            format!("{:.1}", rates.new_connections_per_second),
            rates.image_creates_per_minute.to_string(),
            rates.image_creates_per_hour.to_string(),
            rates.other_writes_per_minute.to_string(),
            format!("{:.1}", rates.reads_per_second),
            format!("{:.0}", rates.packets_per_second),
            bytes(rates.bytes_per_second),
            banned_until(source, now),
        ];
        if with_via {
            cells.insert(1, proxies::via_cell(source.via));
        }
        table.row(cells);
    }
    table.render()
}

/// One interface of `status`: `eth0 (native)`, `eth0 (native, DOWN)`, `eth0 (MISSING since
/// T (12s), re-attaches when it returns)`, `eth0 (RENAMED to eth9 since T (3s), the program
/// stays on eth9)`, `eth0 (FAILED since T (5s): error)`; after a re-attachment,
/// `eth0 (native, re-attached at T after 3.2s without)`.
fn interface(i: &InterfaceView, now: SystemTime) -> String {
    let since = |text: &Option<String>| match text {
        Some(at) => {
            let ago = humantime::parse_rfc3339_weak(at)
                .ok()
                .map(|t| now.duration_since(t).unwrap_or_default());
            match ago {
                Some(ago) => format!(" since {} ({})", clean(at), short_duration(ago)),
                None => format!(" since {}", clean(at)),
            }
        }
        None => String::new(),
    };
    let mode = i.attach_mode.to_string();
    let detail = match i.state.as_deref() {
        None | Some("attached") => mode,
        Some("down") => format!("{mode}, DOWN"),
        Some("missing") => format!(
            "MISSING{}, re-attaches when it returns",
            since(&i.missing_since)
        ),
        Some("renamed") => {
            let to = clean(i.renamed_to.as_deref().unwrap_or("?"));
            format!(
                "RENAMED to {to}{}, the program stays on {to}",
                since(&i.missing_since)
            )
        }
        Some("failed") => format!(
            "FAILED{}: {}",
            since(&i.missing_since),
            clean(i.error.as_deref().unwrap_or("attach failed"))
        ),
        Some(other) => clean(other),
    };
    let back = match (&i.reattached_at, i.last_gap_ms) {
        (Some(at), Some(gap)) if i.is_protected() => format!(
            ", re-attached at {} after {:.1}s without",
            clean(at),
            gap as f64 / 1000.0
        ),
        _ => String::new(),
    };
    format!("{} ({detail}{back})", clean(&i.name))
}

/// `limiter status`; `now` for how long the cluster has been degraded.
pub fn status(status: &Status, now: SystemTime) -> String {
    let interfaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| interface(i, now))
        .collect();
    let ports: Vec<String> = status.ports.iter().map(u16::to_string).collect();
    let poll = humantime::format_duration(Duration::from_millis(status.poll_interval_ms));
    let rules = &status.rules;
    let fields = [
        (
            "daemon",
            format!(
                "{}, up {}",
                clean(&status.daemon_version),
                short_duration(Duration::from_secs(status.uptime_secs))
            ),
        ),
        ("mode", status.mode.to_string()),
        ("interfaces", or_dash(&interfaces.join(", "))),
        ("ports", or_dash(&ports.join(", "))),
        (
            "poll",
            format!("every {poll}, last took {:.1} ms", status.last_poll_ms),
        ),
        ("sources", format!("{} tracked", status.tracked_sources)),
        (
            "rules",
            format!(
                "{} manual blocks, {} automatic blocks, {} allows",
                rules.block_manual, rules.block_auto, rules.allow
            ),
        ),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        let _ = writeln!(out, "{name:<12}{value}");
    }
    if let Some(health) = &status.cluster {
        let _ = writeln!(out, "{:<12}{}", "cluster", cluster_health(health, now));
    }
    if let Some(trouble) = &status.store_error {
        let _ = writeln!(out, "{:<12}{}", "store", store_error(trouble, now));
    }
    if !status.counters.is_empty() {
        out.push_str("counters\n");
        let width = status.counters.keys().map(String::len).max().unwrap_or(0);
        let digits = status
            .counters
            .values()
            .map(|v| v.to_string().len())
            .max()
            .unwrap_or(0);
        for (name, value) in &status.counters {
            let _ = writeln!(out, "  {:<width$}  {value:>digits$}", clean(name));
        }
    }
    out
}

/// `CANNOT WRITE since … (3 failed writes; bans waiting to be saved): <error>`.
fn store_error(trouble: &StoreErrorView, now: SystemTime) -> String {
    let since = match humantime::parse_rfc3339(&trouble.since) {
        Ok(since) => format!(
            "{} ({} ago)",
            clean(&trouble.since),
            short_duration(now.duration_since(since).unwrap_or_default())
        ),
        Err(_) => clean(&trouble.since),
    };
    let pending = if trouble.unsaved {
        "rules in force wait in memory to be saved"
    } else {
        "every rule in force is saved"
    };
    format!(
        "CANNOT WRITE the rules file since {since}, {} failed writes; {pending}; the kernel \
         keeps enforcing: {}",
        trouble.failures,
        clean(&trouble.error)
    )
}

/// `glance-1 (glance), connected, 3 nodes`; degraded, since when and for how long (the node
/// count then says nothing: the others are not heard from).
fn cluster_health(health: &ClusterHealth, now: SystemTime) -> String {
    let phrase = ClusterPhrase::of(health, now);
    let state = phrase.text(str::to_string);
    if phrase.is_degraded() {
        format!("{}, {state}, etcd unreachable", node_and_role(health))
    } else {
        format!(
            "{}, {state}, {}; {}",
            node_and_role(health),
            nodes(health.nodes_seen),
            crate::text::cluster_rates(health)
        )
    }
}

/// `limiter detach`.
pub fn detach(report: &DetachReport, pin_dir: &Path) -> String {
    if report.links.is_empty() && report.maps.is_empty() {
        return format!(
            "nothing is pinned under {}; nothing to remove\n",
            pin_dir.display()
        );
    }
    let mut out = String::new();
    for iface in &report.links {
        let _ = writeln!(out, "detached from {iface}");
    }
    for map in &report.maps {
        let _ = writeln!(out, "removed map {map}");
    }
    let _ = writeln!(out, "removed {}", pin_dir.display());
    out
}

/// `limiter recommend`: the figures per metric, the proposal, and whom each policy would
/// have banned.
pub fn recommendation(advice: &Recommendation) -> String {
    let mut out = format!(
        "From {} sources seen{} ({} offenders left out): the {} percentile of the others' \
         peaks, times {}.\n",
        advice.sources_seen,
        advice
            .since
            .as_deref()
            .map(|since| format!(" since {since}"))
            .unwrap_or_default(),
        advice.offenders,
        ordinal(advice.percentile),
        advice.margin
    );
    let mut table = Table::new(&[
        ("METRIC", Align::Left),
        ("CURRENT", Align::Right),
        ("PROPOSED", Align::Right),
        ("LEGIT SOURCES", Align::Right),
        ("LEGIT PCTL", Align::Right),
        ("LEGIT MAX", Align::Right),
        ("OFFENDERS MIN", Align::Right),
    ]);
    let limit = |value: Option<u32>| value.map_or("off".to_string(), |v| v.to_string());
    let figure = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1}"));
    for m in &advice.metrics {
        table.row(vec![
            m.metric.key().to_string(),
            limit(m.current),
            limit(m.proposed),
            m.legitimate_sources.to_string(),
            figure(m.legitimate_percentile_peak),
            figure(m.legitimate_max_peak),
            figure(m.offender_min_peak),
        ]);
    }
    out.push_str(&table.render());
    for (title, banned) in [
        ("the current thresholds", &advice.banned_by_current),
        ("the proposed thresholds", &advice.banned_by_proposed),
    ] {
        let _ = writeln!(
            out,
            "\nWould have been banned under {title}: {}",
            banned.len()
        );
        for ban in banned.iter() {
            let _ = writeln!(
                out,
                "  {}  {} peak {} >= {} at {}{}",
                ban.address,
                ban.metric,
                ban.peak,
                ban.threshold,
                ban.at,
                if ban.offender { "  (offender)" } else { "" }
            );
        }
    }
    let changes: Vec<String> = advice
        .metrics
        .iter()
        .filter(|m| m.proposed != m.current)
        .filter_map(|m| Some(format!("{} = {}", m.metric, m.proposed?)))
        .collect();
    if changes.is_empty() {
        out.push_str("\nNo change proposed.\n");
    } else {
        let _ = writeln!(out, "\nTo use them, in [policy]:");
        for change in changes {
            let _ = writeln!(out, "  {change}");
        }
    }
    out
}

fn ordinal(percentile: f64) -> String {
    let whole = percentile.round();
    if (percentile - whole).abs() > f64::EPSILON {
        return format!("{percentile}th");
    }
    let n = whole as u64;
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{RatesView, RuleCounts, Totals};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    // 2025-06-01T10:00:00Z
    const NOW: u64 = 1_748_772_000;

    fn rule(prefix: &str, expires: Option<u64>) -> StoredRule {
        StoredRule {
            prefix: prefix.parse().unwrap(),
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            origin: Origin::Manual,
            reason: "flood".into(),
            created: at(NOW - 60),
            expires: expires.map(at),
            node: None,
        }
    }

    #[test]
    fn times_relative_to_now() {
        assert_eq!(relative(at(NOW + 1795), at(NOW)), "in 29m");
        assert_eq!(relative(at(NOW - 180), at(NOW)), "3m ago");
        assert_eq!(relative(at(NOW), at(NOW)), "now");
        assert_eq!(
            expiry(Some(at(NOW + 1795)), at(NOW)),
            "2025-06-01T10:29:55Z (in 29m)"
        );
        assert_eq!(
            expiry(Some(at(NOW - 120)), at(NOW)),
            "2025-06-01T09:58:00Z (expired 2m ago)"
        );
        assert_eq!(expiry(None, at(NOW)), "never");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&[("NAME", Align::Left), ("COUNT", Align::Right)]);
        table.row(vec!["a".into(), "5".into()]);
        table.row(vec!["longer".into(), "12345".into()]);
        assert_eq!(
            table.render(),
            "NAME    COUNT\na           5\nlonger  12345\n"
        );
    }

    #[test]
    fn rule_lists_show_every_field() {
        let list = RuleList {
            rules: vec![
                rule("198.51.100.7/32", Some(NOW + 1795)),
                rule("203.0.113.0/24", None),
            ],
            ..RuleList::default()
        };
        assert_eq!(
            rule_list(&list, at(NOW)),
            "\
PREFIX           ACTION  SCOPE            ORIGIN  CREATED               EXPIRES                        REASON
198.51.100.7/32  block   protected ports  manual  2025-06-01T09:59:00Z  2025-06-01T10:29:55Z (in 29m)  flood
203.0.113.0/24   block   protected ports  manual  2025-06-01T09:59:00Z  never                          flood
2 rules
"
        );
        assert_eq!(rule_list(&RuleList::default(), at(NOW)), "no rules\n");
    }

    #[test]
    fn changes_list_each_rule_and_sum_up() {
        let change = RuleChange {
            added: vec![rule("198.51.100.7/32", None)],
            absent: vec!["10.0.0.0/8".parse().unwrap()],
            ..RuleChange::default()
        };
        let text = rule_change(&change, Action::Block, at(NOW));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RESULT  PREFIX"), "{text}");
        assert!(
            lines[1].starts_with("added   198.51.100.7/32  block"),
            "{text}"
        );
        assert!(lines[2].ends_with("there was no block rule"), "{text}");
        assert_eq!(lines[3], "1 added, 1 absent");
        assert_eq!(
            rule_change(&RuleChange::default(), Action::Allow, at(NOW)),
            "no rules named; nothing changed\n"
        );
    }

    #[test]
    fn stats_show_rates_and_bans() {
        let stats = Stats {
            tracked_sources: 1234,
            sources: vec![SourceView {
                address: "198.51.100.7".parse().unwrap(),
                state: SourceState::Banned,
                rates: RatesView {
                    new_connections_per_second: 12.25,
                    image_creates_per_minute: 300,
                    image_creates_per_hour: 900,
                    other_writes_per_minute: 0,
                    records_created_per_hour: 0,
                    reads_per_second: 0.5,
                    packets_per_second: 820.4,
                    bytes_per_second: 1_572_864.0,
                },
                totals: Totals::default(),
                banned_until: Some(humantime::parse_rfc3339("2025-06-01T10:10:00Z").unwrap()),
                via: None,
                creates: None,
            }],
            ..Stats::default()
        };
        let text = super::stats(&stats, at(NOW));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1234 sources tracked, 1 shown (busiest first)");
        assert!(
            lines[1].starts_with("ADDRESS       STATE   CONN/S  CREATES/MIN"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("198.51.100.7  banned    12.2          300        900"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("1.5 MiB  2025-06-01T10:10:00Z (in 10m)"),
            "{text}"
        );
    }

    #[test]
    fn stats_behind_a_proxy_name_it_and_show_its_load_apart() {
        let source = |address: &str, via: Option<&str>| SourceView {
            address: address.parse().unwrap(),
            state: SourceState::Ok,
            rates: RatesView {
                image_creates_per_minute: 20,
                ..RatesView::default()
            },
            totals: Totals::default(),
            banned_until: None,
            via: via.map(|v| v.parse().unwrap()),
            creates: None,
        };
        let stats = Stats {
            tracked_sources: 3,
            sources: vec![
                source("203.0.113.9", Some("198.51.100.2")),
                source("2001:db8::1234", None),
            ],
            proxies: vec![crate::control::protocol::ProxyView {
                address: "198.51.100.2".parse().unwrap(),
                trusted_entry: Some("198.51.100.2/32".parse().unwrap()),
                blocked: false,
                rates: crate::control::protocol::ProxyRates {
                    proxied_per_minute: 300,
                    unattributed_per_minute: 2,
                    packets_per_second: 820.0,
                    ..Default::default()
                },
                totals: crate::control::protocol::ProxyTotals {
                    proxied: 9120,
                    unattributed: 14,
                    ..Default::default()
                },
            }],
            unseen_proxies: vec!["198.51.100.3/32".parse().unwrap()],
            matched: None,
        };
        assert_eq!(
            super::stats(&stats, at(NOW)),
            "\
3 sources tracked, 2 shown (busiest first)
ADDRESS         VIA           STATE  CONN/S  CREATES/MIN  CREATES/H  WRITES/MIN  READS/S  PACKETS/S  BYTES/S  BANNED UNTIL
203.0.113.9     198.51.100.2  ok        0.0           20          0           0      0.0          0      0 B  -
2001:db8::1234  -             ok        0.0           20          0           0      0.0          0      0 B  -

Trusted proxies (what they relay is counted as the clients they name)
PROXY         RELAYED/MIN  UNATTRIBUTED/MIN  RELAYED  UNATTRIBUTED  CONN/S  PACKETS/S  BYTES/S
198.51.100.2          300                 2     9120            14     0.0        820      0 B
not seen yet (trusted_proxies entries without traffic): 198.51.100.3
"
        );
        // No proxied source shown: no VIA column; the proxies still follow.
        let direct_only = Stats {
            sources: vec![source("2001:db8::1234", None)],
            ..stats.clone()
        };
        let text = super::stats(&direct_only, at(NOW));
        assert!(text.contains("\nADDRESS         STATE"), "{text}");
        assert!(text.contains("\nTrusted proxies"), "{text}");
        // Nothing shown at all, the proxies still.
        let idle = Stats {
            sources: vec![],
            ..stats
        };
        let text = super::stats(&idle, at(NOW));
        assert!(
            text.starts_with("3 sources tracked, 0 shown (busiest first)\n\nTrusted proxies"),
            "{text}"
        );
    }

    #[test]
    fn rule_lists_name_the_proxy_a_blocked_address_came_through() {
        let list = RuleList {
            rules: vec![
                rule("198.51.100.7/32", Some(NOW + 1795)),
                rule("203.0.113.0/24", None),
            ],
            via: [(
                "198.51.100.7/32".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            )]
            .into(),
        };
        assert_eq!(
            rule_list(&list, at(NOW)),
            "\
PREFIX           VIA           ACTION  SCOPE            ORIGIN  CREATED               EXPIRES                        REASON
198.51.100.7/32  198.51.100.2  block   protected ports  manual  2025-06-01T09:59:00Z  2025-06-01T10:29:55Z (in 29m)  flood
203.0.113.0/24   -             block   protected ports  manual  2025-06-01T09:59:00Z  never                          flood
2 rules
"
        );
    }

    #[test]
    fn status_lists_the_daemons_state() {
        let status = Status {
            daemon_version: "0.1.0".into(),
            mode: crate::config::Mode::Enforce,
            interfaces: vec![InterfaceView {
                name: "eth0".into(),
                attach_mode: crate::control::protocol::AttachedAs::Native,
                ..Default::default()
            }],
            ports: vec![9292],
            uptime_secs: 7380,
            poll_interval_ms: 1000,
            last_poll_ms: 3.21,
            tracked_sources: 12,
            rules: RuleCounts {
                block_auto: 5,
                block_manual: 2,
                allow: 3,
            },
            counters: [
                ("drop_blocked".to_string(), 7),
                ("pass_protected".to_string(), 12345),
            ]
            .into(),
            cluster: None,
            store_error: None,
        };
        assert_eq!(
            super::status(&status, at(NOW)),
            "\
daemon      0.1.0, up 2h 3m
mode        enforce
interfaces  eth0 (native)
ports       9292
poll        every 1s, last took 3.2 ms
sources     12 tracked
rules       2 manual blocks, 5 automatic blocks, 3 allows
counters
  drop_blocked        7
  pass_protected  12345
"
        );
    }

    #[test]
    fn status_says_when_the_rules_file_cannot_be_written() {
        let text = super::status(
            &Status {
                store_error: Some(StoreErrorView {
                    since: "2025-06-01T09:58:00Z".into(),
                    failures: 120,
                    error:
                        "cannot save the rules (writing rules.json.tmp: No space left on device)"
                            .into(),
                    unsaved: true,
                }),
                ..Status::default()
            },
            at(NOW),
        );
        assert_eq!(
            text.lines().last().unwrap(),
            "store       CANNOT WRITE the rules file since 2025-06-01T09:58:00Z (2m ago), 120 failed \
             writes; rules in force wait in memory to be saved; the kernel keeps enforcing: \
             cannot save the rules (writing rules.json.tmp: No space left on device)"
        );
    }

    #[test]
    fn status_says_which_interface_is_missing_down_renamed_or_back() {
        let view = |state: &str| InterfaceView {
            name: "veth-attack".into(),
            attach_mode: crate::control::protocol::AttachedAs::Native,
            state: Some(state.into()),
            ..Default::default()
        };
        let now = at(NOW);
        assert_eq!(interface(&view("attached"), now), "veth-attack (native)");
        assert_eq!(interface(&view("down"), now), "veth-attack (native, DOWN)");
        let missing = InterfaceView {
            attach_mode: crate::control::protocol::AttachedAs::None,
            missing_since: Some("2025-06-01T09:59:48Z".into()),
            ..view("missing")
        };
        assert_eq!(
            interface(&missing, now),
            "veth-attack (MISSING since 2025-06-01T09:59:48Z (12s), re-attaches when it returns)"
        );
        let renamed = InterfaceView {
            renamed_to: Some("veth-x".into()),
            missing_since: Some("2025-06-01T09:59:57Z".into()),
            ..view("renamed")
        };
        assert_eq!(
            interface(&renamed, now),
            "veth-attack (RENAMED to veth-x since 2025-06-01T09:59:57Z (3s), the program stays \
             on veth-x)"
        );
        let failed = InterfaceView {
            error: Some("busy".into()),
            missing_since: Some("2025-06-01T09:59:55Z".into()),
            ..view("failed")
        };
        assert_eq!(
            interface(&failed, now),
            "veth-attack (FAILED since 2025-06-01T09:59:55Z (5s): busy)"
        );
        let back = InterfaceView {
            reattached_at: Some("2025-06-01T09:59:58.250Z".into()),
            last_gap_ms: Some(3160),
            reattachments: 1,
            ..view("attached")
        };
        assert_eq!(
            interface(&back, now),
            "veth-attack (native, re-attached at 2025-06-01T09:59:58.250Z after 3.2s without)"
        );
    }

    #[test]
    fn status_in_a_cluster_says_how_it_stands() {
        use crate::cluster::{status::ClusterState, Role};
        let health = |state, since: Option<&str>| ClusterHealth {
            node: "glance-1".into(),
            role: Role::Glance,
            state,
            degraded_since: since.map(str::to_string),
            nodes_seen: 3,
            image_creates_per_minute: 142,
            new_connections_per_second: 12.5,
        };
        let line = |cluster| {
            let text = super::status(
                &Status {
                    cluster: Some(cluster),
                    ..Status::default()
                },
                at(NOW),
            );
            let last = text.lines().last().unwrap().to_string();
            assert!(!text.contains("counters"), "{text}");
            last
        };
        assert_eq!(
            line(health(ClusterState::Connected, None)),
            "cluster     glance-1 (glance), connected, 3 nodes; 142 creates/min, 12.5 new conn/s cluster-wide"
        );
        assert_eq!(
            line(health(ClusterState::Connecting, None)),
            "cluster     glance-1 (glance), connecting to etcd, 3 nodes; 142 creates/min, 12.5 new conn/s cluster-wide"
        );
        // NOW is 2025-06-01T10:00:00Z.
        assert_eq!(
            line(health(ClusterState::Degraded, Some("2025-06-01T08:55:00Z"))),
            "cluster     glance-1 (glance), DEGRADED since 2025-06-01T08:55:00Z (1h 5m), etcd \
             unreachable"
        );
        let alone = super::status(&Status::default(), at(NOW));
        assert!(!alone.contains("cluster"), "{alone}");
    }

    #[test]
    fn rule_lists_in_a_cluster_name_the_node_of_each_rule() {
        let from = |prefix, node: Option<&str>| StoredRule {
            node: node.map(str::to_string),
            ..rule(prefix, None)
        };
        let list = RuleList {
            rules: vec![
                from("198.51.100.7/32", Some("glance-2")),
                from("203.0.113.0/24", None),
            ],
            via: [(
                "198.51.100.7/32".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            )]
            .into(),
        };
        assert_eq!(
            rule_list(&list, at(NOW)),
            "\
PREFIX           VIA           ACTION  SCOPE            ORIGIN  NODE      CREATED               EXPIRES  REASON
198.51.100.7/32  198.51.100.2  block   protected ports  manual  glance-2  2025-06-01T09:59:00Z  never    flood
203.0.113.0/24   -             block   protected ports  manual  -         2025-06-01T09:59:00Z  never    flood
2 rules
"
        );
    }

    #[test]
    fn detach_says_what_it_removed_or_that_nothing_was_there() {
        let dir = Path::new("/sys/fs/bpf/glance-limiter");
        let report = DetachReport {
            links: vec!["eth0".into()],
            maps: vec!["SOURCES".into()],
        };
        assert_eq!(
            detach(&report, dir),
            "detached from eth0\nremoved map SOURCES\nremoved /sys/fs/bpf/glance-limiter\n"
        );
        assert!(detach(&DetachReport::default(), dir).starts_with("nothing is pinned"));
    }

    #[test]
    fn json_is_the_protocols_result() {
        let reply = Reply::Rules(RuleList::default());
        assert_eq!(json(&reply), r#"{"rules":[]}"#);
    }
}
