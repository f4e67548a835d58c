//! The header lines: which daemon (interfaces, with those the program is not on in the alarm
//! style, mode, uptime, whether it answers), the totals
//! (packets to the protected ports and drops per second, sources, bans), and in a cluster a
//! third line: this node, whether etcd is reachable (a warning, with since when, if not) and
//! the nodes seen.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use super::super::{
    app::{App, Link},
    format,
};
use crate::{
    cluster::status::ClusterHealth,
    control::protocol::InterfaceView,
    text::{self, short_duration, ClusterPhrase},
};

/// Width from which the totals are spelt out.
const WIDE: u16 = 120;

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let wide = area.width >= WIDE;
    let mut lines = vec![identity(app), totals(app, wide)];
    if let Some(health) = app.data.as_ref().and_then(|d| d.status.cluster.as_ref()) {
        lines.push(cluster(app, health, wide));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// `cluster glance-1 (glance) · connected · 3 nodes`, or since when it is degraded: the whole
/// time wide, the time of day (as the clock above) in 80 columns.
fn cluster(app: &App, health: &ClusterHealth, wide: bool) -> Line<'static> {
    let phrase = ClusterPhrase::of(health, app.now);
    let state = phrase.text(|since| {
        if wide {
            since.to_string()
        } else {
            humantime::parse_rfc3339_weak(since).map_or_else(
                |_| since.to_string(),
                |at| format!("{}Z", format::clock(at)),
            )
        }
    });
    let mut spans = vec![Span::raw(format!(
        "cluster {} · ",
        text::node_and_role(health)
    ))];
    if phrase.is_degraded() {
        spans.push(Span::styled(state, app.theme.warning()));
        spans.push(Span::raw(if wide {
            " · etcd unreachable: rules stay, decisions use this node's counts"
        } else {
            " · etcd unreachable"
        }));
    } else {
        let rates = if wide {
            text::cluster_rates(health)
        } else {
            format!("{} creates/min", health.image_creates_per_minute)
        };
        spans.push(Span::raw(format!(
            "{state} · {} · {rates}",
            text::nodes(health.nodes_seen)
        )));
    }
    Line::from(spans)
}

fn identity(app: &App) -> Line<'static> {
    let theme = app.theme;
    let mut spans = vec![Span::styled("glance-limiter", theme.title())];
    let Some(data) = &app.data else {
        spans.push(Span::raw(" · connecting to the daemon…"));
        return Line::from(spans);
    };
    let status = &data.status;
    spans.push(Span::raw(" · "));
    for (n, i) in status.interfaces.iter().enumerate() {
        if n > 0 {
            spans.push(Span::raw(", "));
        }
        spans.push(interface(app, i));
    }
    let ports: Vec<String> = status.ports.iter().map(u16::to_string).collect();
    spans.push(Span::raw(format!(" · port {} · ", ports.join(","))));
    let mode_style = if status.mode == crate::config::Mode::Monitor {
        theme.state(crate::control::protocol::SourceState::OverThreshold)
    } else {
        theme.title()
    };
    spans.push(Span::styled(status.mode.as_str(), mode_style));
    spans.push(Span::raw(format!(
        " · up {} · {}Z",
        short_duration(std::time::Duration::from_secs(status.uptime_secs)),
        format::clock(app.now)
    )));
    Line::from(spans)
}

/// `eth0 (native)`; an interface the program is not on stands out: `eth0 MISSING`,
/// `eth0 RENAMED→eth9`, `eth0 FAILED`; one that is down is marked, less loudly.
fn interface(app: &App, i: &InterfaceView) -> Span<'static> {
    let name = text::clean(&i.name);
    match i.state.as_deref() {
        Some("missing") => Span::styled(format!("{name} MISSING"), app.theme.alarm()),
        Some("renamed") => Span::styled(
            format!(
                "{name} RENAMED→{}",
                text::clean(i.renamed_to.as_deref().unwrap_or("?"))
            ),
            app.theme.alarm(),
        ),
        Some("failed") => Span::styled(format!("{name} FAILED"), app.theme.alarm()),
        Some("down") => Span::styled(
            format!("{name} ({}, down)", i.attach_mode),
            app.theme.warning(),
        ),
        _ => Span::raw(format!("{name} ({})", i.attach_mode)),
    }
}

fn totals(app: &App, wide: bool) -> Line<'static> {
    let theme = app.theme;
    if let Link::Unreachable { error, since } = &app.link {
        let away = app.now.duration_since(*since).unwrap_or_default();
        return Line::from(Span::styled(
            format!(
                "daemon unreachable for {}, retrying: {}",
                short_duration(away),
                crate::text::clean(error)
            ),
            theme.alarm(),
        ));
    }
    let Some(data) = &app.data else {
        return Line::default();
    };
    let rate = |value: Option<f64>| value.map_or("-".to_string(), format::rate);
    let rules = &data.status.rules;
    let bans = rules.block_auto + rules.block_manual;
    let bans_style = if bans > 0 {
        theme.state(crate::control::protocol::SourceState::Banned)
    } else {
        ratatui::style::Style::new()
    };
    let (packets, drops) = (
        rate(app.counter_rates.protected_packets),
        rate(app.counter_rates.drops),
    );
    // 80 columns hold the short form even with 100k sources and thousands of bans.
    let (traffic, ban_text) = if wide {
        (
            format!("protected-port packets/s {packets} · drops/s {drops} · "),
            format!(
                "bans {bans} ({} auto, {} manual)",
                rules.block_auto, rules.block_manual
            ),
        )
    } else {
        (
            format!("pkt/s {packets} · drops/s {drops} · "),
            format!("bans {bans} ({} auto)", rules.block_auto),
        )
    };
    Line::from(vec![
        Span::raw(format!("{traffic}sources {} · ", data.tracked_sources)),
        Span::styled(ban_text, bans_style),
        Span::raw(format!(" · allows {}", rules.allow)),
    ])
}
