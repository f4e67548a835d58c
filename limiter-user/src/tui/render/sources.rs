//! The sources table: a title line (counts, sort, filter), column headers, and only the rows
//! on screen, so a frame costs the same with 100 or 100k sources.

use std::time::SystemTime;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::Modifier,
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table},
    Frame,
};

use super::super::{
    app::{App, Mode},
    format,
    snapshot::SourceRow,
    view::Column,
};
use crate::{control::protocol::SourceState, metric::Metric};

/// Address column width when there is room for a full IPv6 address.
const WIDE_ADDRESS: u16 = 39;
/// Columns from which the long headers are used.
const WIDE_TABLE: u16 = 120;
/// Width of every compact column but the address, with the spacing between columns.
const COMPACT_FIXED: u16 = 1 + 6 + 8 + 7 + 6 + 6 + 6 + 14 + 8;

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let [title, table] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    frame.render_widget(Paragraph::new(title_line(app)), title);
    let wide = area.width >= WIDE_TABLE;
    let widths = widths(wide);
    let header_cells = Column::ALL.iter().map(|&column| {
        let name = if wide {
            column.long_name()
        } else {
            column.short_name()
        };
        let style = if column == app.sort.column {
            app.theme.column_header().add_modifier(Modifier::REVERSED)
        } else {
            app.theme.column_header()
        };
        Cell::from(align(column, name.to_string())).style(style)
    });
    let header = Row::new(std::iter::once(Cell::from(" ")).chain(header_cells));
    if app.order.is_empty() {
        let message = match (&app.data, app.filter.is_all()) {
            (None, _) => "waiting for the daemon's first answer…".to_string(),
            (Some(_), true) => "no sources tracked yet".to_string(),
            (Some(_), false) => format!("no source matches `{}`", app.filter_input),
        };
        let [head, body] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(table);
        frame.render_widget(Table::new([header], widths).column_spacing(1), head);
        frame.render_widget(Paragraph::new(message).style(app.theme.dim()), body);
        return;
    }
    let rows = app.rows();
    let visible = app.visible();
    let body: Vec<Row> = visible
        .clone()
        .map(|position| {
            let row = &rows[app.order[position] as usize];
            let selected = position == app.selected;
            table_row(row, selected, address_width(area.width, wide), app)
        })
        .collect();
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        table,
    );
}

fn widths(wide: bool) -> Vec<Constraint> {
    let (address, numbers, state) = if wide {
        (
            Constraint::Length(WIDE_ADDRESS),
            [10, 11, 10, 8, 9, 8],
            Constraint::Min(20),
        )
    } else {
        (
            Constraint::Min(15),
            [6, 8, 7, 6, 6, 6],
            Constraint::Length(14),
        )
    };
    std::iter::once(Constraint::Length(1))
        .chain(std::iter::once(address))
        .chain(numbers.into_iter().map(Constraint::Length))
        .chain(std::iter::once(state))
        .collect()
}

fn title_line(app: &App) -> Line<'static> {
    let theme = app.theme;
    let mut spans = vec![Span::styled("Sources", theme.title())];
    if let Some(data) = &app.data {
        let fetched = if data.truncated {
            format!(
                "busiest {} of {} tracked",
                data.rows.len(),
                data.tracked_sources
            )
        } else {
            format!("{} tracked", data.tracked_sources)
        };
        let proxies = match data.proxies.len() {
            0 => String::new(),
            1 => " (1 proxy above)".to_string(),
            n => format!(" ({n} proxies above)"),
        };
        spans.push(Span::raw(format!(
            " {fetched}{proxies} · {} shown",
            app.shown()
        )));
    }
    let arrow = if app.sort.descending { "▼" } else { "▲" };
    spans.push(Span::raw(format!(
        " · sort {} {arrow}{}",
        app.sort.column.short_name(),
        if app.sort.pin_important {
            " · pinned"
        } else {
            ""
        }
    )));
    match (&app.mode, app.filter_input.is_empty()) {
        (Mode::Filter, _) => spans.push(Span::styled(
            format!(" · filter: {}▏", app.filter_input),
            theme.key(),
        )),
        (_, false) => spans.push(Span::styled(
            format!(" · filter {}", app.filter_input),
            theme.key(),
        )),
        (_, true) => {}
    }
    Line::from(spans)
}

/// What the address column gets: a full IPv6 address when wide, the rest of the line
/// otherwise (long IPv6 addresses are cut with `…`; the detail pane shows them whole). A
/// proxied source's cell also names its proxy (`203.0.113.9 via 198.51.100.2`), or says ` via`
/// when that does not fit.
fn address_width(width: u16, wide: bool) -> usize {
    if wide {
        usize::from(WIDE_ADDRESS)
    } else {
        usize::from(width.saturating_sub(COMPACT_FIXED).max(15))
    }
}

fn table_row<'a>(row: &SourceRow, selected: bool, address_width: usize, app: &App) -> Row<'a> {
    let selector = Cell::from(if selected { ">" } else { " " });
    let cells = std::iter::once(selector).chain(Column::ALL.map(|column| match column {
        Column::Address => Cell::from(super::proxies::address_cell(
            row.address,
            row.via,
            address_width,
        )),
        Column::Rate(metric) => number(figure(metric, row.rates.get(metric))),
        Column::State => Cell::from(state_text(row, app.now)),
    }));
    let mut style = app.theme.state(row.state);
    if selected {
        style = style.patch(app.theme.selected());
    }
    Row::new(cells).style(style)
}

/// A rate as its column shows it: counts in a window as whole numbers, bytes with a unit.
fn figure(metric: Metric, value: f64) -> String {
    match metric {
        Metric::ImageCreatesPerMinute
        | Metric::ImageCreatesPerHour
        | Metric::OtherWritesPerMinute
        | Metric::RecordsCreatedPerHour => format::count(value as u64),
        Metric::BytesPerSecond => format::bytes(value),
        Metric::NewConnectionsPerSecond | Metric::ReadsPerSecond | Metric::PacketsPerSecond => {
            format::rate(value)
        }
    }
}

fn number<'a>(text: String) -> Cell<'a> {
    Cell::from(Line::from(text).right_aligned())
}

fn align(column: Column, name: String) -> Line<'static> {
    match column {
        Column::Address | Column::State => Line::from(name),
        Column::Rate(_) => Line::from(name).right_aligned(),
    }
}

/// The state as a word, with the time left of a ban: `ok`, `over threshold`, `banned 9m`,
/// `banned ∞` (until removed), `allowed`. Stable words, for people and for tests that grep.
pub fn state_text(row: &SourceRow, now: SystemTime) -> String {
    match row.state {
        SourceState::Ok => "ok".to_string(),
        SourceState::OverThreshold => "over threshold".to_string(),
        SourceState::Allowed => "allowed".to_string(),
        SourceState::Banned => match row.banned_until {
            Some(until) => format!("banned {}", format::time_left(until, now)),
            None => "banned ∞".to_string(),
        },
    }
}
