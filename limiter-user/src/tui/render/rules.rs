//! Every rule: blocks and allows, who made them (the policy or an operator), why, and how
//! long they have left. Those in force first, newest first; rules covering the selected
//! source in bold.

use ratatui::{
    layout::{Constraint, Rect},
    style::Modifier,
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table},
    Frame,
};

use super::super::{app::App, format};
use crate::{
    rules::Action,
    store::{Origin, StoredRule},
};

pub fn title(app: &App) -> String {
    let rules = app.rules();
    let active = |action: Action| {
        rules
            .iter()
            .filter(|r| r.action == action && r.is_active(app.now))
            .count()
    };
    format!(
        "Rules: {} blocks, {} allows",
        active(Action::Block),
        active(Action::Allow)
    )
}

pub fn render(frame: &mut Frame, area: Rect, app: &App, block: Block) {
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rules = app.rules();
    if rules.is_empty() {
        let text = if app.data.is_none() {
            "no data yet"
        } else {
            "no rules: nothing is banned or allowed"
        };
        frame.render_widget(Paragraph::new(text).style(app.theme.dim()), inner);
        return;
    }
    let capacity = usize::from(inner.height.saturating_sub(1));
    let shown = if rules.len() > capacity {
        capacity.saturating_sub(1)
    } else {
        rules.len()
    };
    let selected = app.selected_row().map(|r| r.address);
    let mut rows: Vec<Row> = rules[..shown]
        .iter()
        .map(|rule| {
            let row = Row::new(cells(rule, app));
            if selected.is_some_and(|a| rule.prefix.contains(&a)) {
                row.style(app.theme.title().add_modifier(Modifier::BOLD))
            } else if !rule.is_active(app.now) {
                row.style(app.theme.dim())
            } else {
                row
            }
        })
        .collect();
    if shown < rules.len() {
        rows.push(Row::new([Cell::from(Line::from(format!(
            "… {} more (limiter list shows every rule)",
            rules.len() - shown
        )))]));
    }
    let header =
        Row::new(["PREFIX", "RULE", "ORIGIN", "LEFT", "REASON"]).style(app.theme.column_header());
    let widths = [
        Constraint::Length(18),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Min(10),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        inner,
    );
}

fn cells(rule: &StoredRule, app: &App) -> [Cell<'static>; 5] {
    let action = match rule.action {
        Action::Block => "block",
        Action::Allow => "allow",
    };
    let origin = match rule.origin {
        Origin::Auto => "auto",
        Origin::Manual => "manual",
    };
    let left = match rule.expires {
        None => "no end".to_string(),
        Some(end) if end <= app.now => "expired".to_string(),
        Some(end) => format::time_left(end, app.now),
    };
    [
        Cell::from(rule.prefix.to_string()),
        Cell::from(action),
        Cell::from(origin),
        Cell::from(left),
        Cell::from(crate::text::clean(&rule.reason)),
    ]
}
