//! The bottom line: the last message (an action's outcome) while it is fresh, otherwise the
//! keys that matter in the current mode.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use super::super::app::{App, Mode};

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let theme = app.theme;
    let line = match (&app.mode, &app.flash) {
        (Mode::Normal, Some(flash)) => Line::from(Span::styled(
            crate::text::clean(&flash.text),
            if flash.alarm {
                theme.alarm()
            } else {
                theme.key()
            },
        )),
        (mode, _) => keys(mode, app),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn keys(mode: &Mode, app: &App) -> Line<'static> {
    let pairs: &[(&str, &str)] = match mode {
        Mode::Normal => &[
            ("q", "quit"),
            ("?", "help"),
            ("/", "filter"),
            ("s", "sort"),
            ("b", "ban"),
            ("u", "unban"),
            ("a", "allow"),
            ("Tab", "pane"),
        ],
        Mode::Filter => &[("Enter", "keep filter"), ("Esc", "clear filter")],
        Mode::Form(_) => &[
            ("Enter", "review"),
            ("Tab", "next field"),
            ("Esc", "cancel"),
        ],
        Mode::Confirm(_) => &[("y", "yes, send it"), ("n", "no")],
        Mode::Help => &[("any key", "close the help")],
    };
    let mut spans = Vec::new();
    for (key, what) in pairs {
        spans.push(Span::styled(key.to_string(), app.theme.key()));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    if !app.pending.is_empty() {
        spans.push(Span::styled(
            format!("{} action(s) in flight", app.pending.len()),
            app.theme.dim(),
        ));
    }
    Line::from(spans)
}
