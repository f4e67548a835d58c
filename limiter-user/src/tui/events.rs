//! The event log: bans, unbans, expiries, allows, sources going over a threshold, the
//! operator's actions and the daemon's reachability.
//!
//! The control API has no event stream, so events are derived by comparing successive
//! refreshes: a rule that appears is a ban (or allow), one that disappears after its expiry
//! expired, one that disappears before it was removed. What happened between two refreshes is
//! seen as its net effect (a ban added and removed within one interval is never seen), and
//! times are those of the refresh that saw it, so at most one interval late.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::SystemTime,
};

use ipnet::IpNet;

use super::{format, snapshot::SourceRow};
use crate::{
    control::protocol::SourceState,
    rules::Action,
    store::{Origin, StoredRule},
};

/// Events kept; older ones are dropped.
pub const EVENT_LOG_LEN: usize = 500;
/// More changes of one kind in one refresh than this are logged as one summary line, so a
/// flood of bans does not wash every other event out of the log.
pub const MAX_EVENTS_PER_KIND: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Ban,
    BanChanged,
    Unban,
    BanExpired,
    Allow,
    AllowChanged,
    Unallow,
    AllowExpired,
    OverThreshold,
    /// An action the operator sent from this TUI, and what the daemon did with it.
    Action,
    ActionFailed,
    /// The first answer from the daemon.
    Connected,
    DaemonUnreachable,
    DaemonBack,
}

impl EventKind {
    /// The word on screen: stable, so tests and people can grep for it.
    pub const fn label(self) -> &'static str {
        match self {
            EventKind::Ban => "ban",
            EventKind::BanChanged => "ban changed",
            EventKind::Unban => "unban",
            EventKind::BanExpired => "ban expired",
            EventKind::Allow => "allow",
            EventKind::AllowChanged => "allow changed",
            EventKind::Unallow => "unallow",
            EventKind::AllowExpired => "allow expired",
            EventKind::OverThreshold => "over threshold",
            EventKind::Action => "action",
            EventKind::ActionFailed => "action failed",
            EventKind::Connected => "connected",
            EventKind::DaemonUnreachable => "unreachable",
            EventKind::DaemonBack => "reconnected",
        }
    }

    /// Whether it deserves the alarm style.
    pub const fn is_alarm(self) -> bool {
        matches!(
            self,
            EventKind::OverThreshold | EventKind::ActionFailed | EventKind::DaemonUnreachable
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
    /// The prefix concerned; `None` for a summary of many, or the daemon's reachability.
    pub subject: Option<IpNet>,
    pub detail: String,
}

impl Event {
    pub fn new(
        at: SystemTime,
        kind: EventKind,
        subject: Option<IpNet>,
        detail: impl Into<String>,
    ) -> Event {
        Event {
            at,
            kind,
            subject,
            detail: detail.into(),
        }
    }

    /// Whether the event concerns `address` (a ban of its /24 does).
    pub fn concerns(&self, address: IpAddr) -> bool {
        self.subject.is_some_and(|net| net.contains(&address))
    }
}

/// The newest [`EVENT_LOG_LEN`] events, oldest first.
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    events: VecDeque<Event>,
}

impl EventLog {
    pub fn push(&mut self, event: Event) {
        if self.events.len() == EVENT_LOG_LEN {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn extend(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.push(event);
        }
    }

    /// Newest first.
    pub fn newest(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What a rule says, in a few words: `auto, 10m: reason`.
pub fn describe_rule(rule: &StoredRule, now: SystemTime) -> String {
    let origin = match rule.origin {
        Origin::Auto => "auto",
        Origin::Manual => "manual",
    };
    let length = match rule.expires {
        None => "until removed".to_string(),
        Some(end) => format!("for {}", format::time_left(end, now)),
    };
    let reason = crate::text::clean(&rule.reason);
    if reason.is_empty() {
        format!("{origin}, {length}")
    } else {
        format!("{origin}, {length}: {reason}")
    }
}

/// The events between two rule lists seen at `now`.
pub fn diff_rules(before: &[StoredRule], after: &[StoredRule], now: SystemTime) -> Vec<Event> {
    let before_by_key: HashMap<_, _> = before.iter().map(|r| (r.key(), r)).collect();
    let after_by_key: HashMap<_, _> = after.iter().map(|r| (r.key(), r)).collect();
    let mut found: Vec<(EventKind, &StoredRule)> = Vec::new();
    for rule in after {
        match before_by_key.get(&rule.key()) {
            None => found.push((pick(rule.action, EventKind::Ban, EventKind::Allow), rule)),
            Some(old) if *old != rule => found.push((
                pick(rule.action, EventKind::BanChanged, EventKind::AllowChanged),
                rule,
            )),
            Some(_) => {}
        }
    }
    for rule in before {
        if !after_by_key.contains_key(&rule.key()) {
            let expired = rule.expires.is_some_and(|end| end <= now);
            let kind = match (rule.action, expired) {
                (Action::Block, true) => EventKind::BanExpired,
                (Action::Block, false) => EventKind::Unban,
                (Action::Allow, true) => EventKind::AllowExpired,
                (Action::Allow, false) => EventKind::Unallow,
            };
            found.push((kind, rule));
        }
    }
    summarize(found, now, |rule| {
        (Some(rule.prefix), describe_rule(rule, now))
    })
}

/// Sources that went over a threshold since the previous refresh. `was_over` holds the
/// addresses over a threshold at the previous refresh, and is replaced by the current ones.
pub fn newly_over(
    rows: &[SourceRow],
    was_over: &mut std::collections::HashSet<IpAddr>,
    now: SystemTime,
) -> Vec<Event> {
    let mut found = Vec::new();
    let mut over_now = std::collections::HashSet::new();
    for row in rows {
        if row.state == SourceState::OverThreshold {
            over_now.insert(row.address);
            if !was_over.contains(&row.address) {
                found.push((EventKind::OverThreshold, row));
            }
        }
    }
    *was_over = over_now;
    summarize(found, now, |row| {
        let r = &row.rates;
        (
            Some(IpNet::from(row.address)),
            format!(
                "conn/s {}, creates/min {}, writes/min {}",
                format::rate(r.new_connections_per_second),
                r.image_creates_per_minute,
                r.other_writes_per_minute
            ),
        )
    })
}

fn pick(action: Action, block: EventKind, allow: EventKind) -> EventKind {
    match action {
        Action::Block => block,
        Action::Allow => allow,
    }
}

/// One event per item, or per kind one summary line when a kind has too many.
fn summarize<T>(
    found: Vec<(EventKind, T)>,
    now: SystemTime,
    describe: impl Fn(&T) -> (Option<IpNet>, String),
) -> Vec<Event> {
    let mut counts: HashMap<EventKind, usize> = HashMap::new();
    for (kind, _) in &found {
        *counts.entry(*kind).or_default() += 1;
    }
    let mut events = Vec::new();
    let mut summarized = Vec::new();
    for (kind, item) in &found {
        let count = counts[kind];
        if count > MAX_EVENTS_PER_KIND {
            if !summarized.contains(kind) {
                summarized.push(*kind);
                events.push(Event::new(
                    now,
                    *kind,
                    None,
                    format!("{count} prefixes at once (too many to list; see the rules pane)"),
                ));
            }
        } else {
            let (subject, detail) = describe(item);
            events.push(Event::new(now, *kind, subject, detail));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::Scope;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_772_000 + secs)
    }

    fn block(prefix: &str, origin: Origin, expires: Option<u64>) -> StoredRule {
        StoredRule {
            prefix: prefix.parse().unwrap(),
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            origin,
            reason: "image creates over the threshold".into(),
            created: at(0),
            expires: expires.map(at),
            node: None,
        }
    }

    #[test]
    fn new_changed_removed_and_expired_rules() {
        let expiring = block("198.51.100.1/32", Origin::Auto, Some(60));
        let removed = block("198.51.100.2/32", Origin::Manual, Some(600));
        let extended = block("198.51.100.3/32", Origin::Auto, Some(600));
        let before = vec![expiring, removed, extended.clone()];
        let added = block("203.0.113.0/24", Origin::Auto, Some(660));
        let after = vec![
            StoredRule {
                expires: Some(at(1200)),
                ..extended
            },
            added,
        ];
        let events = diff_rules(&before, &after, at(60));
        let summary: Vec<(EventKind, String)> = events
            .iter()
            .map(|e| (e.kind, e.subject.unwrap().to_string()))
            .collect();
        assert_eq!(
            summary,
            [
                (EventKind::BanChanged, "198.51.100.3/32".into()),
                (EventKind::Ban, "203.0.113.0/24".into()),
                (EventKind::BanExpired, "198.51.100.1/32".into()),
                (EventKind::Unban, "198.51.100.2/32".into()),
            ]
        );
        assert_eq!(
            events[1].detail,
            "auto, for 10m: image creates over the threshold"
        );
        assert!(events[1].concerns("203.0.113.77".parse().unwrap()));
        assert!(diff_rules(&after, &after, at(61)).is_empty());
    }

    #[test]
    fn floods_are_summarized() {
        let rules: Vec<StoredRule> = (0..100)
            .map(|n| block(&format!("2001:db8::{n:x}/128"), Origin::Auto, Some(600)))
            .collect();
        let events = diff_rules(&[], &rules, at(1));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].subject, None);
        assert!(events[0].detail.starts_with("100 prefixes at once"));
    }

    #[test]
    fn the_log_is_bounded_and_newest_first() {
        let mut log = EventLog::default();
        for n in 0..(EVENT_LOG_LEN + 5) {
            log.push(Event::new(
                at(n as u64),
                EventKind::Ban,
                None,
                n.to_string(),
            ));
        }
        assert_eq!(log.len(), EVENT_LOG_LEN);
        assert_eq!(
            log.newest().next().unwrap().detail,
            (EVENT_LOG_LEN + 4).to_string()
        );
    }
}
