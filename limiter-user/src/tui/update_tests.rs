//! Keys, `update` and dispatch, driven as the event loop drives them, with a sink that
//! records what would be sent to the daemon.

use std::{collections::VecDeque, io, time::Duration};

use ratatui::{
    backend::TestBackend,
    crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    Terminal,
};

use super::{
    app::{App, Link, Mode, SentAction, FETCH_STEP},
    event_loop::{self, Input},
    events::EventKind,
    fixtures::{at, attack_app, select},
    keys::action_for,
    snapshot::{ActionId, Feed, Matched, ScreenQuery},
    source::{ActionSink, SnapshotSource},
    update::{dispatch, update, Action},
};
use crate::{
    control::protocol::{Request, RuleChange, SortKey},
    rules::Scope,
};

/// Records every request instead of sending it.
#[derive(Default)]
struct RecordingSink {
    sent: Vec<(ActionId, Request)>,
}

impl ActionSink for RecordingSink {
    fn submit(&mut self, id: ActionId, request: Request) {
        self.sent.push((id, request));
    }
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// Types `keys` (a char per key; `\n` is Enter, `\t` Tab) through the key map and dispatch.
fn press(app: &mut App, sink: &mut RecordingSink, keys: &str) {
    for c in keys.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            '\t' => KeyCode::Tab,
            '\u{1b}' => KeyCode::Esc,
            '\u{8}' => KeyCode::Backspace,
            c => KeyCode::Char(c),
        };
        if let Some(action) = action_for(&app.mode, key(code)) {
            dispatch(app, action, sink);
        }
    }
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().unwrap()
}

#[test]
fn keys_mean_different_things_by_mode() {
    let normal = Mode::Normal;
    assert_eq!(
        action_for(&normal, key(KeyCode::Char('q'))),
        Some(Action::Quit)
    );
    assert_eq!(
        action_for(&normal, key(KeyCode::Char('j'))),
        Some(Action::MoveSelection(1))
    );
    assert_eq!(
        action_for(&normal, key(KeyCode::Char('b'))),
        Some(Action::Ban)
    );
    assert_eq!(
        action_for(&normal, key(KeyCode::Char('A'))),
        Some(Action::Unallow)
    );
    assert_eq!(action_for(&normal, key(KeyCode::Char('x'))), None);
    // Typing a filter or a reason never triggers a command.
    assert_eq!(
        action_for(&Mode::Filter, key(KeyCode::Char('q'))),
        Some(Action::FilterChar('q'))
    );
    assert_eq!(
        action_for(&Mode::Help, key(KeyCode::Char('q'))),
        Some(Action::Cancel)
    );
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(action_for(&Mode::Filter, ctrl_c), Some(Action::Quit));
    let release = KeyEvent {
        kind: KeyEventKind::Release,
        ..key(KeyCode::Char('q'))
    };
    assert_eq!(action_for(&normal, release), None);
}

#[test]
fn banning_asks_ttl_and_reason_then_confirmation_then_sends_a_block() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    select(&mut app, "203.0.113.9");
    press(&mut app, &mut sink, "b");
    assert!(matches!(app.mode, Mode::Form(_)));
    // TTL field: replace the default 1h with 30m; then the reason.
    press(&mut app, &mut sink, "\u{8}\u{8}30m\tINC-4521 scanner\n");
    let Mode::Confirm(pending) = &app.mode else {
        panic!("{:?}", app.mode)
    };
    assert_eq!(
        pending.question,
        "Ban 203.0.113.9/32 on the protected ports for 30m (reason: INC-4521 scanner)?"
    );
    assert!(sink.sent.is_empty(), "nothing is sent before the yes");
    press(&mut app, &mut sink, "y");
    assert_eq!(
        sink.sent,
        [(
            1,
            Request::Block {
                prefixes: vec![net("203.0.113.9/32")],
                ttl_secs: Some(1800),
                reason: Some("INC-4521 scanner".into()),
                scope: Scope::ProtectedPorts,
                force: false,
            }
        )]
    );
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(
        app.pending,
        [SentAction {
            id: 1,
            what: "ban 203.0.113.9/32".into(),
            subject: Some(net("203.0.113.9/32")),
        }]
    );
}

#[test]
fn no_at_the_confirmation_or_escape_in_the_form_sends_nothing() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    press(&mut app, &mut sink, "b\nn");
    press(&mut app, &mut sink, "b\u{1b}");
    press(&mut app, &mut sink, "u\u{1b}");
    assert!(sink.sent.is_empty());
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn a_bad_ttl_keeps_the_form_open_with_why() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    press(&mut app, &mut sink, "b\u{8}\u{8}30\n");
    let Mode::Form(form) = &app.mode else {
        panic!("{:?}", app.mode)
    };
    assert!(form.error.as_deref().unwrap().contains("has no unit"));
    assert!(sink.sent.is_empty());
}

#[test]
fn unban_removes_the_rules_that_cover_the_source() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    press(&mut app, &mut sink, "uy");
    select(&mut app, "203.0.113.200");
    press(&mut app, &mut sink, "uy");
    let requests: Vec<Request> = sink.sent.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(
        requests,
        [
            Request::Unblock {
                prefixes: vec![net("198.51.100.7/32")]
            },
            // Banned by an operator's /25: unbanning it lifts the /25.
            Request::Unblock {
                prefixes: vec![net("203.0.113.128/25")]
            },
        ]
    );
    assert_eq!(sink.sent[1].0, 2, "ids increase");
}

#[test]
fn unban_of_a_source_without_a_ban_says_so_and_sends_nothing() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    select(&mut app, "198.51.100.23");
    press(&mut app, &mut sink, "u");
    assert!(sink.sent.is_empty());
    assert_eq!(app.mode, Mode::Normal);
    assert!(app
        .flash
        .as_ref()
        .unwrap()
        .text
        .contains("has no block rule in force"));
}

#[test]
fn allow_with_an_empty_ttl_lasts_until_removed_and_unallow_removes_the_covering_rule() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    select(&mut app, "2001:db8::1234");
    press(&mut app, &mut sink, "a\u{8}\u{8}\ny");
    select(&mut app, "2001:db8:0:1::42");
    press(&mut app, &mut sink, "Ay");
    let requests: Vec<Request> = sink.sent.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(
        requests,
        [
            Request::Allow {
                prefixes: vec![net("2001:db8::1234/128")],
                ttl_secs: None,
                reason: Some("manual allow from limiter top by oncall".into()),
            },
            Request::Unallow {
                prefixes: vec![net("2001:db8:0:1::/64")]
            },
        ]
    );
}

#[test]
fn outcomes_are_logged_and_shown() {
    let mut app = attack_app(80, 24);
    let mut sink = RecordingSink::default();
    press(&mut app, &mut sink, "uy");
    let (id, _) = sink.sent[0].clone();
    update(
        &mut app,
        Action::Feed(Feed::ActionDone {
            id,
            outcome: Err("permission denied on /run/glance-limiter/limiter.sock".into()),
        }),
    );
    let newest = app.events.newest().next().unwrap();
    assert_eq!(newest.kind, EventKind::ActionFailed);
    assert!(
        newest.concerns("198.51.100.7".parse().unwrap()),
        "in the source's history"
    );
    assert_eq!(
        newest.detail,
        "unban 198.51.100.7/32 failed: permission denied on /run/glance-limiter/limiter.sock"
    );
    assert!(app.flash.as_ref().unwrap().alarm);
    assert!(app.pending.is_empty());
    // The message goes away by itself.
    update(&mut app, Action::Tick(at(200)));
    assert_eq!(app.flash, None);
    update(
        &mut app,
        Action::Feed(Feed::ActionDone {
            id: 99,
            outcome: Ok(RuleChange::default()),
        }),
    );
    assert_eq!(
        app.events.newest().next().unwrap().detail,
        "action 99: nothing changed"
    );
}

#[test]
fn the_selection_stays_on_its_source_across_refreshes_and_sorts() {
    let mut app = attack_app(80, 24);
    select(&mut app, "2001:db8::1234");
    let mut sink = RecordingSink::default();
    press(&mut app, &mut sink, "sSrp");
    assert_eq!(
        app.selected_row().unwrap().address.to_string(),
        "2001:db8::1234"
    );
    assert!(!app.sort.pin_important);
    assert!(!app.sort.descending);
    // Filtered out, the selection falls on a row that is shown.
    press(&mut app, &mut sink, "/198.51.\n");
    assert!(app
        .selected_row()
        .unwrap()
        .address
        .to_string()
        .starts_with("198.51."));
    assert_eq!(app.order.len(), 2);
    press(&mut app, &mut sink, "\u{1b}");
    assert_eq!(app.order.len(), 7);
}

#[test]
fn paging_keeps_the_selection_on_screen() {
    let mut app = super::fixtures::crowded_app(500, 80, 24);
    let mut sink = RecordingSink::default();
    let rows = app.table_rows();
    assert_eq!(rows, 10);
    press(&mut app, &mut sink, "g");
    update(&mut app, Action::PageDown);
    update(&mut app, Action::PageDown);
    assert_eq!(app.selected, 20);
    assert!(app.visible().contains(&app.selected));
    press(&mut app, &mut sink, "G");
    assert_eq!(app.selected, 499);
    assert_eq!(app.visible(), 490..500);
    // A taller terminal shows more rows and scrolls back as far as it can.
    update(&mut app, Action::Resize(80, 40));
    assert_eq!(app.visible(), (500 - app.table_rows())..500);
    update(&mut app, Action::MoveSelection(-1000));
    assert_eq!((app.selected, app.offset), (0, 0));
}

#[test]
fn losing_and_finding_the_daemon_is_logged_once_each() {
    let mut app = attack_app(80, 24);
    for _ in 0..3 {
        update(
            &mut app,
            Action::Feed(Feed::Unreachable {
                error: "no daemon is listening".into(),
            }),
        );
    }
    assert!(matches!(app.link, Link::Unreachable { .. }));
    let kinds: Vec<EventKind> = app.events.newest().map(|e| e.kind).take(2).collect();
    assert_eq!(
        kinds,
        [EventKind::DaemonUnreachable, EventKind::OverThreshold]
    );
    assert!(app.data.is_some(), "the last data stays on screen");
}

/// Feeds a scripted sequence, one batch per loop turn.
struct ScriptedSource(VecDeque<Vec<Feed>>);

impl SnapshotSource for ScriptedSource {
    fn drain(&mut self) -> Vec<Feed> {
        self.0.pop_front().unwrap_or_default()
    }
}

struct ScriptedInput(VecDeque<Event>);

impl Input for ScriptedInput {
    fn next(&mut self, _timeout: Duration) -> io::Result<Option<Event>> {
        Ok(self.0.pop_front())
    }
}

#[test]
fn the_event_loop_draws_reacts_to_keys_and_quits() {
    let mut app = attack_app(80, 24);
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let mut source = ScriptedSource(VecDeque::from([vec![Feed::Unreachable {
        error: "no daemon is listening".into(),
    }]]));
    let mut sink = RecordingSink::default();
    let keys = "uy?x".chars().map(|c| Event::Key(key(KeyCode::Char(c))));
    let mut input = ScriptedInput(
        keys.chain([Event::Resize(100, 30), Event::Key(key(KeyCode::Char('q')))])
            .collect(),
    );
    let mut clock = || at(95);
    event_loop::run(
        &mut terminal,
        &mut app,
        &mut source,
        &mut sink,
        &mut input,
        &mut clock,
    )
    .unwrap();
    assert!(app.should_quit);
    assert_eq!(sink.sent.len(), 1, "{:?}", sink.sent);
    assert_eq!(app.screen, (100, 30));
    let screen = terminal.backend().to_string();
    assert!(screen.contains("daemon unreachable"), "{screen}");
    assert!(screen.contains("banned 8m"), "{screen}");
}

#[test]
fn the_event_loop_quits_when_stopped_from_outside() {
    // `limiter run --tui` on SIGTERM: the flag is set, no key is pressed, even mid-form.
    let mut app = attack_app(80, 24);
    update(&mut app, Action::Ban);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut source = ScriptedSource(VecDeque::new());
    let mut sink = RecordingSink::default();
    let stop = std::sync::atomic::AtomicBool::new(true);
    let mut input = event_loop::UntilStopped {
        stop: &stop,
        input: ScriptedInput(VecDeque::new()),
    };
    let mut clock = || at(95);
    event_loop::run(
        &mut terminal,
        &mut app,
        &mut source,
        &mut sink,
        &mut input,
        &mut clock,
    )
    .unwrap();
    assert!(app.should_quit);
    assert!(sink.sent.is_empty(), "{:?}", sink.sent);
}

/// A source that remembers what the screen wanted.
#[derive(Default)]
struct WantingSource(Vec<ScreenQuery>);

impl SnapshotSource for WantingSource {
    fn drain(&mut self) -> Vec<Feed> {
        Vec::new()
    }

    fn want(&mut self, query: &ScreenQuery) {
        self.0.push(query.clone());
    }
}

#[test]
fn the_screen_asks_for_its_rows_its_order_and_its_filter_when_they_change() {
    let mut app = attack_app(80, 24);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut source = WantingSource::default();
    let mut input = ScriptedInput(
        [
            KeyCode::Char('s'),
            KeyCode::Char('r'),
            KeyCode::Char('/'),
            KeyCode::Char('1'),
            KeyCode::Char('9'),
            KeyCode::Enter,
            KeyCode::Char('p'),
            KeyCode::Char('q'),
        ]
        .into_iter()
        .map(|code| Event::Key(key(code)))
        .collect(),
    );
    let mut clock = || at(10);
    event_loop::run(
        &mut terminal,
        &mut app,
        &mut source,
        &mut RecordingSink::default(),
        &mut input,
        &mut clock,
    )
    .unwrap();
    let asked: Vec<(SortKey, bool, bool, &str)> = source
        .0
        .iter()
        .map(|q| {
            assert_eq!(q.rows, 200, "the table's rows and a margin");
            (
                q.order.by,
                q.order.descending,
                q.order.pin_important,
                q.filter.as_str(),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            (
                SortKey::Rate(crate::metric::Metric::ImageCreatesPerMinute),
                true,
                true,
                ""
            ),
            (
                SortKey::Rate(crate::metric::Metric::OtherWritesPerMinute),
                true,
                true,
                ""
            ),
            (
                SortKey::Rate(crate::metric::Metric::OtherWritesPerMinute),
                false,
                true,
                ""
            ),
            (
                SortKey::Rate(crate::metric::Metric::OtherWritesPerMinute),
                false,
                true,
                "1"
            ),
            (
                SortKey::Rate(crate::metric::Metric::OtherWritesPerMinute),
                false,
                true,
                "19"
            ),
            (
                SortKey::Rate(crate::metric::Metric::OtherWritesPerMinute),
                false,
                false,
                "19"
            ),
        ],
        "once per change, not per frame"
    );
}

#[test]
fn scrolling_past_the_margin_asks_for_more_rows() {
    let mut app = super::fixtures::crowded_app(1000, 80, 24);
    let first = app.wanted();
    assert_eq!(first.rows, 2 * FETCH_STEP);
    assert_eq!(first.order, app.sort.order());
    update(&mut app, Action::PageDown);
    assert_eq!(app.wanted(), first, "a page down stays within the margin");
    while app.offset + app.table_rows() < FETCH_STEP {
        update(&mut app, Action::PageDown);
    }
    assert_eq!(app.wanted().rows, 3 * FETCH_STEP);
}

#[test]
fn the_title_counts_what_the_daemon_matched_for_the_filter_typed() {
    let mut app = attack_app(80, 24);
    let local = app.order.len();
    assert_eq!(app.shown(), local);
    if let Some(data) = &mut app.data {
        data.matched = Some(Matched {
            filter: String::new(),
            count: 4_000,
        });
    }
    assert_eq!(app.shown(), 4_000);
    // Typed since: the rows at hand count until the daemon answers for it.
    update(&mut app, Action::FilterChar('2'));
    assert_eq!(app.shown(), app.order.len());
}
