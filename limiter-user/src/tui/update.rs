//! `update(app, action)`: every change to the TUI's state, driven by one [`Action`] at a time
//! (a key, a refresh, a tick). No terminal and no socket here: a request the operator
//! confirmed comes back as an [`Outgoing`] for the caller to hand to its action sink.

use std::time::{Duration, SystemTime};

use super::{
    app::{App, Mode, Pane, SentAction},
    forms, ingest, navigation,
    snapshot::{ActionId, Feed},
    source::ActionSink,
    view::AddressFilter,
};
use crate::{control::protocol::Request, rules::Action as RuleAction};

/// How long a footer message stays.
pub const FLASH_FOR: Duration = Duration::from_secs(6);
/// Longest filter accepted (an IPv6 CIDR is at most 43 characters).
const MAX_FILTER_CHARS: usize = 48;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The clock moved (ban countdowns, message expiry).
    Tick(SystemTime),
    Feed(Feed),
    Resize(u16, u16),
    MoveSelection(isize),
    PageUp,
    PageDown,
    First,
    Last,
    SortNext,
    SortPrevious,
    SortReverse,
    TogglePin,
    FilterStart,
    FilterChar(char),
    FilterBackspace,
    /// Keep the filter and go back to the table.
    FilterDone,
    FilterClear,
    NextPane,
    ShowPane(Pane),
    Ban,
    Unban,
    Allow,
    Unallow,
    FormChar(char),
    FormBackspace,
    FormNextField,
    FormSubmit,
    Confirm,
    /// Leaves a form, a question or the help.
    Cancel,
    Help,
    Quit,
}

/// A request to send, under the id its outcome will come back with.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub id: ActionId,
    pub request: Request,
}

pub fn update(app: &mut App, action: Action) -> Option<Outgoing> {
    match action {
        Action::Tick(now) => {
            app.now = now;
            if app
                .flash
                .as_ref()
                .is_some_and(|f| now.duration_since(f.at).unwrap_or_default() >= FLASH_FOR)
            {
                app.flash = None;
            }
        }
        Action::Feed(Feed::Snapshot(snapshot)) => ingest::snapshot(app, *snapshot),
        Action::Feed(Feed::Unreachable { error }) => ingest::unreachable(app, error, app.now),
        Action::Feed(Feed::ActionDone { id, outcome }) => ingest::action_done(app, id, outcome),
        Action::Resize(width, height) => {
            app.screen = (width, height);
            navigation::keep_selection_visible(app);
        }
        Action::MoveSelection(delta) => navigation::move_by(app, delta),
        Action::PageUp => navigation::page(app, -1),
        Action::PageDown => navigation::page(app, 1),
        Action::First => navigation::first(app),
        Action::Last => navigation::last(app),
        Action::SortNext | Action::SortPrevious => {
            let column = if action == Action::SortNext {
                app.sort.column.next()
            } else {
                app.sort.column.previous()
            };
            app.sort.column = column;
            app.sort.descending = column.default_descending();
            ingest::reorder(app);
        }
        Action::SortReverse => {
            app.sort.descending = !app.sort.descending;
            ingest::reorder(app);
        }
        Action::TogglePin => {
            app.sort.pin_important = !app.sort.pin_important;
            ingest::reorder(app);
        }
        Action::FilterStart => app.mode = Mode::Filter,
        Action::FilterChar(c) => {
            if app.filter_input.chars().count() < MAX_FILTER_CHARS && !c.is_control() {
                app.filter_input.push(c);
                apply_filter(app);
            }
        }
        Action::FilterBackspace => {
            app.filter_input.pop();
            apply_filter(app);
        }
        Action::FilterDone => app.mode = Mode::Normal,
        Action::FilterClear => {
            app.filter_input.clear();
            apply_filter(app);
            app.mode = Mode::Normal;
        }
        Action::NextPane => app.pane = app.pane.next(),
        Action::ShowPane(pane) => app.pane = pane,
        Action::Ban => forms::begin(app, RuleAction::Block),
        Action::Allow => forms::begin(app, RuleAction::Allow),
        Action::Unban => forms::begin_removal(app, RuleAction::Block),
        Action::Unallow => forms::begin_removal(app, RuleAction::Allow),
        Action::FormChar(c) => with_form(app, |form| forms::type_char(form, c)),
        Action::FormBackspace => with_form(app, forms::backspace),
        Action::FormNextField => with_form(app, forms::next_field),
        Action::FormSubmit => forms::submit(app),
        Action::Confirm => return confirm(app),
        Action::Cancel => app.mode = Mode::Normal,
        Action::Help => {
            app.mode = match app.mode {
                Mode::Help => Mode::Normal,
                _ => Mode::Help,
            }
        }
        Action::Quit => app.should_quit = true,
    }
    None
}

/// [`update`], then hands any confirmed request to `sink`: what the event loop does with each
/// action, and what tests drive with a recording sink.
pub fn dispatch(app: &mut App, action: Action, sink: &mut dyn ActionSink) {
    if let Some(Outgoing { id, request }) = update(app, action) {
        sink.submit(id, request);
    }
}

fn with_form(app: &mut App, edit: impl FnOnce(&mut super::app::RuleForm)) {
    if let Mode::Form(form) = &mut app.mode {
        edit(form);
    }
}

fn apply_filter(app: &mut App) {
    app.filter = AddressFilter::parse(&app.filter_input);
    ingest::reorder(app);
}

fn confirm(app: &mut App) -> Option<Outgoing> {
    let Mode::Confirm(pending) = std::mem::take(&mut app.mode) else {
        return None;
    };
    let id = app.next_action;
    app.next_action += 1;
    let what = forms::describe_request(&pending.request);
    forms::flash(app, format!("sent: {what}"), false);
    app.pending.push(SentAction {
        id,
        what,
        subject: forms::first_prefix(&pending.request),
    });
    Some(Outgoing {
        id,
        request: pending.request,
    })
}
