//! The two dialogs of an action: the form asking a ban's or an allow's TTL and reason, and
//! the yes/no question before anything is sent.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
    Frame,
};

use super::super::{
    app::{App, FormField, Pending, RuleForm},
    forms::DEFAULT_TTL,
};
use crate::rules::Action;

pub fn form(frame: &mut Frame, area: Rect, app: &App, form: &RuleForm) {
    let theme = app.theme;
    let verb = match form.action {
        Action::Block => "Ban",
        Action::Allow => "Allow",
    };
    let field = |name: &str, value: &str, which: FormField| {
        let active = form.field == which;
        let cursor = if active { "▏" } else { "" };
        Line::from(vec![
            Span::styled(format!("{name:<7}"), theme.key()),
            Span::styled(
                format!("{value}{cursor}"),
                if active {
                    theme.selected()
                } else {
                    ratatui::style::Style::new()
                },
            ),
        ])
    };
    let mut lines = vec![
        field("TTL", &form.ttl, FormField::Ttl),
        Line::from(Span::styled(
            format!(
                "       90s, 30m, 12h, 7d, 1h30m; empty: until removed (default {DEFAULT_TTL})"
            ),
            theme.dim(),
        )),
        field("Reason", &form.reason, FormField::Reason),
        Line::from(Span::styled(
            format!(
                "       empty: manual {} from limiter top by {}",
                verb.to_lowercase(),
                app.operator
            ),
            theme.dim(),
        )),
    ];
    if form.action == Action::Block {
        lines.push(Line::from(Span::styled(
            "       drops TCP to the protected ports only (--all-ports: use the CLI)",
            theme.dim(),
        )));
    }
    if let Some(error) = &form.error {
        lines.push(Line::from(Span::styled(error.clone(), theme.alarm())));
    }
    let popup = super::centered(area, 78, lines.len() as u16 + 2);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::new().borders(Borders::ALL).title(Span::styled(
                format!(" {verb} {} ", form.target),
                theme.title(),
            )),
        ),
        popup,
    );
}

pub fn confirm(frame: &mut Frame, area: Rect, app: &App, pending: &Pending) {
    let theme = app.theme;
    let lines = vec![
        Line::from(crate::text::clean(&pending.question)),
        Line::default(),
        Line::from(vec![
            Span::styled("y", theme.key()),
            Span::raw(" yes, send it   "),
            Span::styled("n", theme.key()),
            Span::raw(" no"),
        ]),
    ];
    let width = 70u16;
    // The question wraps; leave room for it.
    let question_lines = (pending.question.chars().count() as u16 / (width - 4)) + 1;
    let popup = super::centered(area, width, question_lines + 4);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(
            Block::new()
                .borders(Borders::ALL)
                .title(Span::styled(" Confirm ", theme.title())),
        ),
        popup,
    );
}
