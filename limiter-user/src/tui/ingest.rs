//! What the TUI does with what its source delivers: a new snapshot replaces the data and is
//! compared with the previous one (events, counter rates, histories); a failed refresh marks
//! the daemon unreachable; an action's outcome is logged.

use super::{
    app::{App, CounterRates, CounterSample, Flash, Link},
    events::{self, Event, EventKind},
    navigation,
    snapshot::{ActionId, Snapshot},
    view,
};
use crate::control::protocol::{RuleChange, Status};

pub fn snapshot(app: &mut App, mut snapshot: Snapshot) {
    let now = snapshot.taken;
    match &app.link {
        Link::Connecting => app.events.push(Event::new(
            now,
            EventKind::Connected,
            None,
            format!(
                "daemon {} ({}), {} rules in force",
                snapshot.status.daemon_version,
                snapshot.status.mode,
                snapshot.rules.iter().filter(|r| r.is_active(now)).count()
            ),
        )),
        Link::Unreachable { since, .. } => app.events.push(Event::new(
            now,
            EventKind::DaemonBack,
            None,
            format!(
                "the daemon answers again (unreachable for {})",
                crate::text::short_duration(now.duration_since(*since).unwrap_or_default())
            ),
        )),
        Link::Live => {}
    }
    if let Some(previous) = &app.data {
        app.events
            .extend(events::diff_rules(&previous.rules, &snapshot.rules, now));
    }
    app.events
        .extend(events::newly_over(&snapshot.rows, &mut app.was_over, now));
    let sample = counter_sample(&snapshot);
    app.counter_rates = counter_rates(app.last_counters, sample);
    app.last_counters = Some(sample);
    // The rules pane lists what is in force first, newest first: a fresh ban is on top.
    snapshot.rules.sort_by(|a, b| {
        b.is_active(now)
            .cmp(&a.is_active(now))
            .then(b.created.cmp(&a.created))
            .then(a.prefix.cmp(&b.prefix))
    });
    app.link = Link::Live;
    app.data = Some(snapshot);
    reorder(app);
    let watched: Vec<u32> = std::iter::once(app.selected)
        .chain(app.visible())
        .filter_map(|i| app.order.get(i).copied())
        .collect();
    let rows = app.data.as_ref().map_or(&[][..], |d| d.rows.as_slice());
    app.histories.record(rows, &watched);
}

/// Recomputes the table's order (after new data, a new sort or filter) and keeps the
/// selection on the same address when it is still shown.
pub fn reorder(app: &mut App) {
    app.order = view::order(app.rows(), app.sort, &app.filter);
    let rows = app.rows();
    let found = app.selected_address.and_then(|address| {
        app.order
            .iter()
            .position(|&i| rows[i as usize].address == address)
    });
    match found {
        Some(position) => app.selected = position,
        None => {
            app.selected = app.selected.min(app.order.len().saturating_sub(1));
            app.selected_address = app.selected_row().map(|r| r.address);
        }
    }
    navigation::keep_selection_visible(app);
}

pub fn unreachable(app: &mut App, error: String, now: std::time::SystemTime) {
    match &mut app.link {
        Link::Unreachable { error: current, .. } => *current = error,
        _ => {
            app.events.push(Event::new(
                now,
                EventKind::DaemonUnreachable,
                None,
                error.clone(),
            ));
            app.link = Link::Unreachable { error, since: now };
        }
    }
}

pub fn action_done(app: &mut App, id: ActionId, outcome: Result<RuleChange, String>) {
    let (what, subject) = match app.pending.iter().position(|sent| sent.id == id) {
        Some(index) => {
            let sent = app.pending.remove(index);
            (sent.what, sent.subject)
        }
        None => (format!("action {id}"), None),
    };
    let (kind, text) = match outcome {
        Ok(change) => (EventKind::Action, format!("{what}: {}", summarize(&change))),
        Err(error) => (EventKind::ActionFailed, format!("{what} failed: {error}")),
    };
    app.flash = Some(Flash {
        text: text.clone(),
        alarm: kind == EventKind::ActionFailed,
        at: app.now,
    });
    app.events.push(Event::new(app.now, kind, subject, text));
}

/// `1 added`, `1 removed, 1 absent`, as the CLI summarizes a change.
fn summarize(change: &RuleChange) -> String {
    let parts: Vec<String> = [
        ("added", change.added.len()),
        ("updated", change.updated.len()),
        ("unchanged", change.unchanged.len()),
        ("removed", change.removed.len()),
        ("absent", change.absent.len()),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(word, n)| format!("{n} {word}"))
    .collect();
    if parts.is_empty() {
        "nothing changed".to_string()
    } else {
        parts.join(", ")
    }
}

fn counter(status: &Status, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|name| status.counters.get(*name))
        .sum()
}

fn counter_sample(snapshot: &Snapshot) -> CounterSample {
    CounterSample {
        elapsed: snapshot.elapsed,
        protected_packets: counter(
            &snapshot.status,
            &["pass_protected", "pass_allowed", "drop_blocked"],
        ),
        drops: counter(&snapshot.status, &["drop_blocked", "drop_blocked_any_port"]),
    }
}

/// Per-second rates between two samples; unknown after a counter went backwards (the
/// program was reloaded) or without time between them.
pub fn counter_rates(before: Option<CounterSample>, after: CounterSample) -> CounterRates {
    let Some(before) = before else {
        return CounterRates::default();
    };
    let seconds = after.elapsed.saturating_sub(before.elapsed).as_secs_f64();
    let rate = |a: u64, b: u64| (seconds > 0.0 && b >= a).then(|| (b - a) as f64 / seconds);
    CounterRates {
        protected_packets: rate(before.protected_packets, after.protected_packets),
        drops: rate(before.drops, after.drops),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(secs: u64, protected: u64, drops: u64) -> CounterSample {
        CounterSample {
            elapsed: Duration::from_secs(secs),
            protected_packets: protected,
            drops,
        }
    }

    #[test]
    fn counter_rates_need_two_samples_and_monotonic_counters() {
        assert_eq!(
            counter_rates(None, sample(1, 100, 0)),
            CounterRates::default()
        );
        let rates = counter_rates(Some(sample(1, 100, 10)), sample(3, 1100, 410));
        assert_eq!(rates.protected_packets, Some(500.0));
        assert_eq!(rates.drops, Some(200.0));
        let reloaded = counter_rates(Some(sample(3, 1100, 410)), sample(4, 5, 0));
        assert_eq!(reloaded.protected_packets, None);
        let same_time = counter_rates(Some(sample(3, 1, 1)), sample(3, 2, 2));
        assert_eq!(same_time.drops, None);
    }

    #[test]
    fn changes_are_summarized_like_the_cli() {
        let change = RuleChange {
            absent: vec!["198.51.100.7/32".parse().unwrap()],
            ..RuleChange::default()
        };
        assert_eq!(summarize(&change), "1 absent");
        assert_eq!(summarize(&RuleChange::default()), "nothing changed");
    }
}
