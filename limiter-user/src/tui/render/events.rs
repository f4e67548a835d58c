//! The event log, newest first: bans, unbans, expiries, allows, sources going over a
//! threshold, the operator's actions, the daemon's reachability.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::{Block, Paragraph},
    Frame,
};

use super::super::{app::App, events::EventKind, format};

pub fn render(frame: &mut Frame, area: Rect, app: &App, block: Block) {
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if app.events.is_empty() {
        frame.render_widget(
            Paragraph::new("no events yet").style(app.theme.dim()),
            inner,
        );
        return;
    }
    let lines: Vec<Line> = app
        .events
        .newest()
        .take(usize::from(inner.height))
        .map(|event| {
            let style = if event.kind.is_alarm() {
                app.theme
                    .state(crate::control::protocol::SourceState::OverThreshold)
            } else {
                app.theme.key()
            };
            // An action's text already names what it was about.
            let subject = match (event.kind, event.subject) {
                (EventKind::Action | EventKind::ActionFailed, _) | (_, None) => String::new(),
                (_, Some(net)) => format!(" {net}"),
            };
            Line::from(vec![
                Span::raw(format!("{} ", format::clock(event.at))),
                Span::styled(event.kind.label(), style),
                Span::raw(format!("{subject} {}", crate::text::clean(&event.detail))),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}
