//! Snapshot tests of every panel and of the whole screen (80×24 and 200×50), drawn on
//! ratatui's `TestBackend` from the fixed states of [`super::fixtures`] (fixed clock). The
//! snapshots are text: styles are checked by the tests that need them.

use ratatui::{
    backend::TestBackend,
    layout::Rect,
    style::Modifier,
    widgets::{Block, Borders},
    Frame, Terminal,
};

use super::{
    app::{App, Link, Mode, Pane},
    fixtures::{
        at, attack_app, attack_app_behind_proxies, attack_app_in_cluster, attack_app_with_answers,
        connected_cluster, degraded_cluster,
    },
    render,
    theme::Theme,
    update::{update, Action},
};

fn draw(
    width: u16,
    height: u16,
    app: &App,
    paint: impl Fn(&mut Frame, Rect, &App),
) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| {
            let area = frame.area();
            paint(frame, area, app)
        })
        .unwrap();
    terminal
}

fn screen(app: &App) -> Terminal<TestBackend> {
    draw(app.screen.0, app.screen.1, app, |frame, _, app| {
        render::render(frame, app)
    })
}

fn pane_block() -> Block<'static> {
    Block::new().borders(Borders::ALL)
}

#[test]
fn whole_screen_80x24() {
    insta::assert_snapshot!(screen(&attack_app(80, 24)).backend());
}

#[test]
fn whole_screen_200x50() {
    insta::assert_snapshot!(screen(&attack_app(200, 50)).backend());
}

#[test]
fn header() {
    let app = attack_app(80, 24);
    insta::assert_snapshot!(draw(80, 2, &app, render::header::render).backend());
}

#[test]
fn header_in_a_cluster() {
    let app = attack_app_in_cluster(80, 24, connected_cluster());
    insta::assert_snapshot!(draw(80, 3, &app, render::header::render).backend());
}

#[test]
fn header_in_a_degraded_cluster() {
    let app = attack_app_in_cluster(80, 24, degraded_cluster());
    insta::assert_snapshot!(
        "header_in_a_degraded_cluster_compact",
        draw(80, 3, &app, render::header::render).backend()
    );
    let app = attack_app_in_cluster(200, 50, degraded_cluster());
    insta::assert_snapshot!(
        "header_in_a_degraded_cluster_wide",
        draw(200, 3, &app, render::header::render).backend()
    );
}

#[test]
fn whole_screen_80x24_in_a_degraded_cluster() {
    insta::assert_snapshot!(screen(&attack_app_in_cluster(80, 24, degraded_cluster())).backend());
}

#[test]
fn a_degraded_cluster_is_a_warning_in_both_themes() {
    for theme in [Theme::COLOR, Theme::MONOCHROME] {
        let mut app = attack_app_in_cluster(80, 24, degraded_cluster());
        app.theme = theme;
        let terminal = draw(80, 3, &app, render::header::render);
        let buffer = terminal.backend().buffer();
        let line: String = (0..80).map(|x| buffer[(x, 2)].symbol()).collect();
        let column = line[..line.find("DEGRADED").expect("the state")]
            .chars()
            .count() as u16;
        let (cell, warning) = (&buffer[(column, 2)], theme.warning());
        assert_eq!(
            cell.fg,
            warning.fg.unwrap_or(ratatui::style::Color::Reset),
            "{theme:?}: {line}"
        );
        assert!(
            cell.modifier
                .contains(warning.add_modifier | Modifier::BOLD),
            "{theme:?}: {cell:?}"
        );
        // Connected, nothing stands out.
        let app = attack_app_in_cluster(80, 24, connected_cluster());
        let terminal = draw(80, 3, &app, render::header::render);
        let buffer = terminal.backend().buffer();
        assert!(
            (0..80).all(|x| !buffer[(x, 2)].modifier.contains(Modifier::BOLD)),
            "{theme:?}"
        );
    }
}

#[test]
fn a_missing_interface_stands_out_in_the_header() {
    use crate::control::protocol::InterfaceView;
    for theme in [Theme::COLOR, Theme::MONOCHROME] {
        let mut app = attack_app(80, 24);
        app.theme = theme;
        app.data.as_mut().expect("fixture data").status.interfaces = vec![
            InterfaceView {
                name: "eth0".into(),
                attach_mode: crate::control::protocol::AttachedAs::Native,
                state: Some("attached".into()),
                ..Default::default()
            },
            InterfaceView {
                name: "eth1".into(),
                attach_mode: crate::control::protocol::AttachedAs::None,
                state: Some("missing".into()),
                missing_since: Some("2025-06-01T10:01:00Z".into()),
                ..Default::default()
            },
        ];
        let terminal = draw(80, 2, &app, render::header::render);
        let buffer = terminal.backend().buffer();
        let line: String = (0..80).map(|x| buffer[(x, 0)].symbol()).collect();
        assert!(
            line.starts_with("glance-limiter · eth0 (native), eth1 MISSING · port 9292"),
            "{line}"
        );
        let column = line[..line.find("eth1").unwrap()].chars().count() as u16;
        let (cell, alarm) = (&buffer[(column, 0)], theme.alarm());
        assert_eq!(
            cell.fg,
            alarm.fg.unwrap_or(ratatui::style::Color::Reset),
            "{theme:?}"
        );
        assert!(cell.modifier.contains(alarm.add_modifier), "{theme:?}");
    }
}

#[test]
fn the_cluster_line_takes_a_row_from_the_table() {
    let app = attack_app_in_cluster(80, 24, connected_cluster());
    assert_eq!(app.table_rows(), attack_app(80, 24).table_rows() - 1);
}

#[test]
fn header_while_the_daemon_is_unreachable() {
    let mut app = attack_app(80, 24);
    update(&mut app, Action::Tick(at(91)));
    update(
        &mut app,
        Action::Feed(super::snapshot::Feed::Unreachable {
            error: "no daemon is listening on /run/glance-limiter/limiter.sock".into(),
        }),
    );
    update(&mut app, Action::Tick(at(105)));
    assert!(matches!(app.link, Link::Unreachable { .. }));
    insta::assert_snapshot!(draw(80, 2, &app, render::header::render).backend());
}

#[test]
fn header_before_the_first_answer() {
    let app = App::new(
        at(0),
        Theme::COLOR,
        super::settings::Thresholds::defaults(),
        "oncall".into(),
    );
    insta::assert_snapshot!(screen(&app).backend());
}

#[test]
fn sources_table_sorted_and_filtered() {
    let mut app = attack_app(80, 24);
    update(&mut app, Action::SortNext); // OTHER WRITES
    update(&mut app, Action::FilterStart);
    for c in "2001:db8:".chars() {
        update(&mut app, Action::FilterChar(c));
    }
    insta::assert_snapshot!(draw(80, 8, &app, render::sources::render).backend());
}

#[test]
fn sources_table_wide() {
    let app = attack_app(200, 50);
    insta::assert_snapshot!(draw(200, 10, &app, render::sources::render).backend());
}

#[test]
fn detail_pane_compact_and_tall() {
    let app = attack_app(80, 24);
    insta::assert_snapshot!(
        "detail_compact",
        draw(80, 10, &app, |f, a, app| render::detail::render(
            f,
            a,
            app,
            pane_block()
        ))
        .backend()
    );
    insta::assert_snapshot!(
        "detail_tall",
        draw(90, 24, &app, |f, a, app| render::detail::render(
            f,
            a,
            app,
            pane_block()
        ))
        .backend()
    );
}

#[test]
fn the_detail_pane_shows_what_became_of_the_creates() {
    let detail_text = |app: &App| -> String {
        let terminal = draw(90, 24, app, |f, a, app| {
            render::detail::render(f, a, app, pane_block())
        });
        let buffer = terminal.backend().buffer().clone();
        buffer.content().iter().map(|cell| cell.symbol()).collect()
    };
    let text = detail_text(&attack_app_with_answers(90, 24));
    let line = "creates answered by Glance: 58 created, 2 failed · 1204 refused over budget";
    assert!(text.contains(line), "{text}");
    // Without answers (the other snapshots), no such line.
    assert!(!detail_text(&attack_app(90, 24)).contains("creates answered"));
}

#[test]
fn rules_pane() {
    let app = attack_app(80, 24);
    insta::assert_snapshot!(draw(80, 8, &app, |f, a, app| render::rules::render(
        f,
        a,
        app,
        pane_block()
    ))
    .backend());
}

#[test]
fn events_pane() {
    let app = attack_app(80, 24);
    insta::assert_snapshot!(draw(100, 12, &app, |f, a, app| render::events::render(
        f,
        a,
        app,
        pane_block()
    ))
    .backend());
}

#[test]
fn compact_bottom_pane_tabs() {
    let mut app = attack_app(80, 24);
    update(&mut app, Action::ShowPane(Pane::Rules));
    insta::assert_snapshot!(screen(&app).backend());
}

#[test]
fn help_overlay() {
    let mut app = attack_app(80, 24);
    update(&mut app, Action::Help);
    insta::assert_snapshot!(screen(&app).backend());
}

#[test]
fn ban_form_and_confirmation() {
    let mut app = attack_app(80, 24);
    update(&mut app, Action::MoveSelection(-1)); // 203.0.113.9, over threshold
    update(&mut app, Action::Ban);
    assert!(matches!(app.mode, Mode::Form(_)));
    update(&mut app, Action::FormNextField);
    for c in "INC-4521".chars() {
        update(&mut app, Action::FormChar(c));
    }
    insta::assert_snapshot!("ban_form", screen(&app).backend());
    update(&mut app, Action::FormSubmit);
    assert!(matches!(app.mode, Mode::Confirm(_)));
    insta::assert_snapshot!("ban_confirmation", screen(&app).backend());
}

#[test]
fn a_bad_ttl_is_shown_in_the_form() {
    let mut app = attack_app(80, 24);
    update(&mut app, Action::Ban);
    update(&mut app, Action::FormBackspace);
    update(&mut app, Action::FormBackspace);
    update(&mut app, Action::FormChar('3'));
    update(&mut app, Action::FormChar('0'));
    update(&mut app, Action::FormSubmit);
    insta::assert_snapshot!(screen(&app).backend());
}

#[test]
fn footer_shows_an_actions_outcome() {
    let mut app = attack_app(80, 24);
    let attacker_ban = app
        .rules()
        .iter()
        .find(|r| r.prefix.to_string() == "198.51.100.7/32")
        .cloned()
        .unwrap();
    update(&mut app, Action::Unban);
    let Some(outgoing) = update(&mut app, Action::Confirm) else {
        panic!("unban confirmed but nothing to send")
    };
    update(
        &mut app,
        Action::Feed(super::snapshot::Feed::ActionDone {
            id: outgoing.id,
            outcome: Ok(crate::control::protocol::RuleChange {
                removed: vec![attacker_ban],
                ..Default::default()
            }),
        }),
    );
    insta::assert_snapshot!(draw(80, 1, &app, render::footer::render).backend());
}

#[test]
fn rows_that_matter_stand_out_in_both_themes() {
    for theme in [Theme::COLOR, Theme::MONOCHROME] {
        let mut app = attack_app(80, 24);
        app.theme = theme;
        update(&mut app, Action::MoveSelection(3));
        let terminal = screen(&app);
        let buffer = terminal.backend().buffer();
        // Row 4 of the screen is the first source row: 203.0.113.9, over threshold, pinned
        // first; row 5 the banned attacker.
        let over = &buffer[(5, 4)];
        let banned = &buffer[(5, 5)];
        assert!(
            over.modifier.contains(Modifier::BOLD),
            "{theme:?}: {over:?}"
        );
        assert!(
            banned.modifier.contains(Modifier::BOLD),
            "{theme:?}: {banned:?}"
        );
        if !theme.color {
            assert_eq!(
                (over.fg, banned.fg),
                (ratatui::style::Color::Reset, ratatui::style::Color::Reset)
            );
        }
    }
}

#[test]
fn whole_screen_80x24_behind_proxies() {
    insta::assert_snapshot!(screen(&attack_app_behind_proxies(80, 24)).backend());
}

#[test]
fn whole_screen_200x50_behind_proxies() {
    insta::assert_snapshot!(screen(&attack_app_behind_proxies(200, 50)).backend());
}

#[test]
fn sources_table_behind_proxies() {
    let app = attack_app_behind_proxies(200, 50);
    insta::assert_snapshot!(
        "sources_table_behind_proxies_wide",
        draw(200, 10, &app, render::sources::render).backend()
    );
    let app = attack_app_behind_proxies(80, 24);
    insta::assert_snapshot!(
        "sources_table_behind_proxies_compact",
        draw(80, 10, &app, render::sources::render).backend()
    );
}

#[test]
fn unattributed_requests_stand_out_in_both_themes() {
    for theme in [Theme::COLOR, Theme::MONOCHROME] {
        let mut app = attack_app_behind_proxies(200, 50);
        app.theme = theme;
        let terminal = screen(&app);
        let buffer = terminal.backend().buffer();
        // Line 2: the first proxy, 198.51.100.2, with 2 unattributed requests a minute;
        // line 3: the second, with none.
        let column_of = |y: u16, text: &str| -> u16 {
            let line: String = (0..200).map(|x| buffer[(x, y)].symbol()).collect();
            let byte = line
                .find(text)
                .unwrap_or_else(|| panic!("{text} in {line}"));
            line[..byte].chars().count() as u16
        };
        let column = column_of(2, "unattributed 2/min");
        assert!(
            buffer[(column, 2)].modifier.contains(Modifier::BOLD),
            "{theme:?}: {:?}",
            buffer[(column, 2)]
        );
        let column = column_of(3, "unattributed 0/min");
        assert!(
            !buffer[(column, 3)].modifier.contains(Modifier::BOLD),
            "{theme:?}: {:?}",
            buffer[(column, 3)]
        );
    }
}

#[test]
fn the_selection_moves_over_the_table_under_the_proxies() {
    // One line fewer for the table at 80×24: paging still keeps the selection on screen.
    let mut app = attack_app_behind_proxies(80, 24);
    assert_eq!(app.table_rows(), 9);
    update(&mut app, Action::Last);
    assert!(app.visible().contains(&app.selected), "{:?}", app.visible());
}
