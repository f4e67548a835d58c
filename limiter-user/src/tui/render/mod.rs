//! Pure rendering: `render(frame, app)` draws the whole screen from the state and nothing
//! else (time included: `app.now`). One file per panel; [`layout`] decides where they go.

pub mod detail;
pub mod dialog;
pub mod events;
pub mod footer;
pub mod header;
pub mod help;
pub mod layout;
pub mod proxies;
pub mod rules;
pub mod sources;
pub mod sparkline;

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::{Block, Borders},
    Frame,
};

use super::app::{App, Mode, Pane};

pub fn render(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let layout = layout::screen(area, app.header_lines(), app.proxy_items());
    header::render(frame, layout.header, app);
    if layout.proxies.height > 0 {
        proxies::render(frame, layout.proxies, app);
    }
    sources::render(frame, layout.table, app);
    if layout.bottom.height > 0 {
        if layout.wide {
            let [detail, rules, events] = layout::bottom_columns(layout.bottom);
            for (pane, area) in [
                (Pane::Detail, detail),
                (Pane::Rules, rules),
                (Pane::Events, events),
            ] {
                let block = Block::new().borders(Borders::ALL).title(Span::styled(
                    format!(" {} ", pane_title(app, pane)),
                    app.theme.title(),
                ));
                render_pane(frame, area, app, pane, block);
            }
        } else {
            render_pane(frame, layout.bottom, app, app.pane, tabs(app));
        }
    }
    footer::render(frame, layout.footer, app);
    match &app.mode {
        Mode::Help => help::render(frame, area, app),
        Mode::Form(form) => dialog::form(frame, area, app, form),
        Mode::Confirm(pending) => dialog::confirm(frame, area, app, pending),
        Mode::Normal | Mode::Filter => {}
    }
}

/// One bottom pane inside `block`.
pub fn render_pane(frame: &mut Frame, area: Rect, app: &App, pane: Pane, block: Block) {
    match pane {
        Pane::Detail => detail::render(frame, area, app, block),
        Pane::Rules => rules::render(frame, area, app, block),
        Pane::Events => events::render(frame, area, app, block),
    }
}

fn pane_title(app: &App, pane: Pane) -> String {
    match pane {
        Pane::Rules => rules::title(app),
        Pane::Detail => "Detail: last 2 min".to_string(),
        Pane::Events => format!("Events ({})", app.events.len()),
    }
}

/// The compact layout's pane tabs: `[1 Detail] 2 Rules 3 Events`, on the pane's top border.
fn tabs(app: &App) -> Block<'static> {
    let mut spans = Vec::new();
    for (i, pane) in Pane::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, pane_title(app, *pane));
        if *pane == app.pane {
            spans.push(Span::styled(
                format!("[{}]", label.trim()),
                app.theme.title(),
            ));
        } else {
            spans.push(Span::styled(label, app.theme.dim()));
        }
    }
    Block::new().borders(Borders::TOP).title(Line::from(spans))
}

/// A `width`×`height` rectangle in the middle of `area`, shrunk to fit it.
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}
