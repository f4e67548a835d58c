//! Keys to actions, by what the keyboard is doing. docs/TUI.md lists the same keys; the
//! help screen is drawn from [`HELP`], so the three never disagree.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    app::{Mode, Pane},
    update::Action,
};

/// The keys of the table, as the help screen lists them.
pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "select a source"),
    ("PgUp PgDn  Home End", "page, first, last"),
    ("s  S", "sort by the next / previous column"),
    ("r", "reverse the sort"),
    ("p", "pin over-threshold and banned rows on top (on/off)"),
    (
        "/",
        "filter by address prefix or CIDR (Enter keeps, Esc clears)",
    ),
    ("Tab  1 2 3", "bottom pane: detail, rules, events"),
    ("b", "ban the selected source (asks TTL and reason)"),
    ("u", "unban: remove the block rules covering it"),
    ("a", "allow the selected source (asks TTL and reason)"),
    ("A", "unallow: remove the allow rules covering it"),
    ("y  n", "confirm / cancel an action"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

pub fn action_for(mode: &Mode, key: KeyEvent) -> Option<Action> {
    // Key releases and repeats (reported by some terminals) are not presses.
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    match mode {
        Mode::Normal => normal(key),
        Mode::Filter => match key.code {
            KeyCode::Enter => Some(Action::FilterDone),
            KeyCode::Esc => Some(Action::FilterClear),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) => Some(Action::FilterChar(c)),
            _ => None,
        },
        Mode::Form(_) => match key.code {
            KeyCode::Enter => Some(Action::FormSubmit),
            KeyCode::Esc => Some(Action::Cancel),
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
                Some(Action::FormNextField)
            }
            KeyCode::Backspace => Some(Action::FormBackspace),
            KeyCode::Char(c) => Some(Action::FormChar(c)),
            _ => None,
        },
        Mode::Confirm(_) => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => Some(Action::Confirm),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                Some(Action::Cancel)
            }
            _ => None,
        },
        // Any key leaves the help; `q` there closes it rather than quitting by surprise.
        Mode::Help => Some(Action::Cancel),
    }
}

fn normal(key: KeyEvent) -> Option<Action> {
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => Action::MoveSelection(-1),
        KeyCode::Down | KeyCode::Char('j') => Action::MoveSelection(1),
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown | KeyCode::Char(' ') => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::First,
        KeyCode::End | KeyCode::Char('G') => Action::Last,
        KeyCode::Char('s') => Action::SortNext,
        KeyCode::Char('S') => Action::SortPrevious,
        KeyCode::Char('r') => Action::SortReverse,
        KeyCode::Char('p') => Action::TogglePin,
        KeyCode::Char('/') => Action::FilterStart,
        KeyCode::Esc => Action::FilterClear,
        KeyCode::Tab => Action::NextPane,
        KeyCode::Char('1') => Action::ShowPane(Pane::Detail),
        KeyCode::Char('2') => Action::ShowPane(Pane::Rules),
        KeyCode::Char('3') => Action::ShowPane(Pane::Events),
        KeyCode::Char('b') => Action::Ban,
        KeyCode::Char('u') => Action::Unban,
        KeyCode::Char('a') => Action::Allow,
        KeyCode::Char('A') => Action::Unallow,
        KeyCode::Char('?') => Action::Help,
        _ => return None,
    })
}
