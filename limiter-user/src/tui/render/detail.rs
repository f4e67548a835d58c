//! The selected source: its state and ban, a sparkline per rate over the last minutes with
//! its threshold marked, and what the TUI has seen happen to it (offences, bans, actions).

use ratatui::{
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Block, Paragraph},
    Frame,
};

use super::{
    super::{
        app::App, events::Event, format, history::HISTORY_LEN, settings::Thresholds,
        snapshot::SourceRow,
    },
    sources::state_text,
    sparkline::ThresholdSparkline,
};
use crate::{metric::Metric, rules::Action};

/// Width of the text left of each sparkline: `creates/min    300  lim 60   `.
const LABEL_WIDTH: u16 = 28;
/// Inner height from which sparklines are two rows high and every metric is shown.
const TALL: u16 = 18;

pub fn render(frame: &mut Frame, area: Rect, app: &App, block: Block) {
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(row) = app.selected_row() else {
        let text = if app.data.is_none() {
            "no data yet"
        } else {
            "no source selected"
        };
        frame.render_widget(Paragraph::new(text).style(app.theme.dim()), inner);
        return;
    };
    let tall = inner.height >= TALL;
    let metrics: &[Metric] = if tall {
        &[
            Metric::NewConnectionsPerSecond,
            Metric::ImageCreatesPerMinute,
            Metric::OtherWritesPerMinute,
            Metric::ReadsPerSecond,
            Metric::PacketsPerSecond,
            Metric::BytesPerSecond,
        ]
    } else {
        &[
            Metric::NewConnectionsPerSecond,
            Metric::ImageCreatesPerMinute,
            Metric::OtherWritesPerMinute,
            Metric::PacketsPerSecond,
        ]
    };
    let spark_height: u16 = if tall { 2 } else { 1 };
    let summary_lines: u16 = if tall { 3 } else { 1 };
    let mut constraints = vec![Constraint::Length(summary_lines)];
    constraints.extend(metrics.iter().map(|_| Constraint::Length(spark_height)));
    constraints.push(Constraint::Min(0));
    let areas = Layout::vertical(constraints).split(inner);
    frame.render_widget(Paragraph::new(summary(row, app, tall)), areas[0]);
    for (i, &metric) in metrics.iter().enumerate() {
        sparkline_row(frame, areas[i + 1], app, row, metric);
    }
    let history_area = areas[metrics.len() + 1];
    frame.render_widget(
        Paragraph::new(history_lines(app, row, usize::from(history_area.height))),
        history_area,
    );
}

fn summary(row: &SourceRow, app: &App, tall: bool) -> Vec<Line<'static>> {
    let theme = app.theme;
    let mut first = vec![Span::styled(row.address.to_string(), theme.title())];
    if let Some(proxy) = row.via {
        first.push(Span::raw(format!(" via {proxy}")));
    }
    first.extend([
        Span::raw("  "),
        Span::styled(state_text(row, app.now), theme.state(row.state)),
    ]);
    if let Some(rule) = app.covering_rules(row.address, Action::Block).first() {
        first.push(Span::raw(format!(
            " · {} {}",
            rule.prefix,
            super::super::events::describe_rule(rule, app.now)
        )));
    } else if let Some(rule) = app.covering_rules(row.address, Action::Allow).first() {
        first.push(Span::raw(format!(
            " · allowed by {} {}",
            rule.prefix,
            super::super::events::describe_rule(rule, app.now)
        )));
    }
    let mut lines = vec![Line::from(first)];
    if tall {
        let t = &row.totals;
        lines.push(Line::from(format!(
            "totals: {} SYNs, {} packets, {}, {} creates, {} writes, {} reads (in the kernel table)",
            format::count(t.syns),
            format::count(t.packets),
            crate::text::bytes(t.bytes as f64),
            format::count(t.image_create),
            format::count(t.other_write),
            format::count(t.read),
        )));
        // What became of the creates, once the kernel saw any answered or refused.
        if let Some(c) = row.creates {
            lines.push(Line::from(format!(
                "creates answered by Glance: {} created, {} failed · {} refused over budget",
                format::count(c.created),
                format::count(c.failed),
                format::count(c.over_budget)
            )));
        }
        lines.push(Line::from(Span::styled(
            format!(
                "creates/hour {} (limit {}) · sparklines: last {} refreshes · limits: {}",
                row.rates.image_creates_per_hour,
                limit_text(
                    app.thresholds
                        .get(Metric::ImageCreatesPerHour)
                        .map(f64::from)
                ),
                HISTORY_LEN,
                app.thresholds.origin
            ),
            theme.dim(),
        )));
    }
    lines
}

fn threshold(thresholds: &Thresholds, metric: Metric) -> Option<f64> {
    thresholds.get(metric).map(f64::from)
}

fn limit_text(limit: Option<f64>) -> String {
    limit.map_or("-".to_string(), format::rate)
}

fn sparkline_row(frame: &mut Frame, area: Rect, app: &App, row: &SourceRow, metric: Metric) {
    let [label, spark] =
        Layout::horizontal([Constraint::Length(LABEL_WIDTH), Constraint::Min(0)]).areas(area);
    let current = row.rates.get(metric);
    let limit = threshold(&app.thresholds, metric);
    let value = match metric {
        Metric::BytesPerSecond => format::bytes(current),
        _ => format::rate(current),
    };
    let limit_part = match limit {
        Some(limit) => format!("lim {}", format::rate(limit)),
        None => String::new(),
    };
    let over = limit.is_some_and(|l| current >= l);
    let style = if over {
        app.theme.over()
    } else {
        ratatui::style::Style::new()
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw(format!("{:<11} ", metric.label())),
            Span::styled(format!("{value:>6}"), style),
            Span::styled(format!("  {limit_part}"), app.theme.dim()),
        ])),
        label,
    );
    let samples: Vec<f32> = app
        .histories
        .get(&row.address)
        .map(|h| h.series(metric).collect())
        .unwrap_or_default();
    frame.render_widget(
        ThresholdSparkline {
            samples: &samples,
            threshold: limit,
            style: app.theme.good(),
            over_style: app.theme.over(),
            baseline_style: app.theme.dim(),
        },
        spark,
    );
}

fn history_lines(app: &App, row: &SourceRow, height: usize) -> Vec<Line<'static>> {
    let concerning: Vec<&Event> = app
        .events
        .newest()
        .filter(|e| e.concerns(row.address))
        .take(height)
        .collect();
    if concerning.is_empty() {
        return vec![Line::from(Span::styled(
            "no offence or ban of this source seen since limiter top started",
            app.theme.dim(),
        ))];
    }
    concerning
        .into_iter()
        .map(|e| {
            let style = if e.kind.is_alarm() {
                app.theme
                    .state(crate::control::protocol::SourceState::OverThreshold)
            } else {
                ratatui::style::Style::new()
            };
            Line::from(vec![
                Span::raw(format!("{} ", format::clock(e.at))),
                Span::styled(e.kind.label().to_string(), style),
                Span::raw(format!(" {}", e.detail)),
            ])
        })
        .collect()
}
