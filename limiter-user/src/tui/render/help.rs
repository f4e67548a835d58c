//! `?`: every key, and what the states and marks on screen mean.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph},
    Frame,
};

use super::super::{app::App, keys::HELP};

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let theme = app.theme;
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!("{keys:<20}"), theme.key()),
                Span::raw(what.to_string()),
            ])
        })
        .collect();
    lines.push(Line::default());
    lines.push(Line::from(
        "states: ok, over threshold (not banned yet), banned 9m (∞: no end), allowed",
    ));
    lines.push(Line::from(
        "sparklines: newest right; 1 row: █ = at or over the limit; taller: ┄ = limit",
    ));
    let popup = super::centered(area, 84, lines.len() as u16 + 2);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(Span::styled(" Help: limiter top ", theme.title())),
        ),
        popup,
    );
}
