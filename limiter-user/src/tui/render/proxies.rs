//! The trusted proxies' own load, under the header: per proxy, the requests it relayed in the
//! last minute (counted as the clients it named), those whose client could not be read
//! (marked when not zero: clients the limiter cannot see), and its own packets. One line per
//! proxy while there is room; the rest summed on the last line. Shown only behind proxies.

use std::net::IpAddr;

use ipnet::IpNet;
use ratatui::{
    layout::Rect,
    style::Style,
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use super::super::{app::App, format, theme::Theme};
use crate::{
    control::protocol::{ProxyView, SourceState},
    net_list,
};

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let Some(data) = &app.data else {
        return;
    };
    let lines = lines(
        &data.proxies,
        &data.unseen_proxies,
        usize::from(area.height),
        app.theme,
    );
    frame.render_widget(Paragraph::new(lines), area);
}

/// At most `height` lines: every proxy and the entries not seen, or as many proxies as fit
/// with the rest summed on the last line.
pub fn lines(
    proxies: &[ProxyView],
    unseen: &[IpNet],
    height: usize,
    theme: Theme,
) -> Vec<Line<'static>> {
    let items = proxies.len() + usize::from(!unseen.is_empty());
    if height == 0 || items == 0 {
        return Vec::new();
    }
    if items <= height {
        let mut out: Vec<Line<'static>> = proxies.iter().map(|p| one(p, theme)).collect();
        if !unseen.is_empty() {
            out.push(unseen_line(unseen, theme));
        }
        return out;
    }
    // More items than lines: at least one proxy is left for the summary.
    let shown = (height - 1).min(proxies.len());
    let mut out: Vec<Line<'static>> = proxies[..shown].iter().map(|p| one(p, theme)).collect();
    out.push(summary(&proxies[shown..], unseen.len(), shown > 0, theme));
    out
}

fn one(proxy: &ProxyView, theme: Theme) -> Line<'static> {
    let mut spans = vec![
        Span::raw("proxy "),
        Span::styled(proxy.address.to_string(), theme.title()),
    ];
    spans.extend(load_spans(
        proxy.rates.proxied_per_minute,
        proxy.rates.unattributed_per_minute,
        proxy.rates.packets_per_second,
        theme,
    ));
    if proxy.blocked {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(
            "blocked: its clients are cut off",
            theme.state(SourceState::Banned),
        ));
    }
    Line::from(spans)
}

fn load_spans(relayed: u64, unattributed: u64, packets: f64, theme: Theme) -> Vec<Span<'static>> {
    let unattributed_style = if unattributed > 0 {
        theme.state(SourceState::OverThreshold)
    } else {
        Style::new()
    };
    vec![
        Span::raw(format!(" · relayed {}/min · ", format::count(relayed))),
        Span::styled(
            format!("unattributed {}/min", format::count(unattributed)),
            unattributed_style,
        ),
        Span::raw(format!(" · pkt/s {}", format::rate(packets))),
    ]
}

/// `2 proxies · relayed 600/min · ...`, or `+2 proxies` under lines of others.
fn summary(rest: &[ProxyView], unseen: usize, more: bool, theme: Theme) -> Line<'static> {
    let count = rest.len();
    let mut spans = vec![Span::styled(
        format!(
            "{}{count} prox{}",
            if more { "+" } else { "" },
            if count == 1 { "y" } else { "ies" }
        ),
        theme.title(),
    )];
    spans.extend(load_spans(
        rest.iter().map(|p| p.rates.proxied_per_minute).sum(),
        rest.iter().map(|p| p.rates.unattributed_per_minute).sum(),
        rest.iter().map(|p| p.rates.packets_per_second).sum(),
        theme,
    ));
    let blocked = rest.iter().filter(|p| p.blocked).count();
    if blocked > 0 {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(
            format!("{blocked} blocked"),
            theme.state(SourceState::Banned),
        ));
    }
    if unseen > 0 {
        spans.push(Span::styled(format!(" · {unseen} not seen"), theme.dim()));
    }
    Line::from(spans)
}

fn unseen_line(unseen: &[IpNet], theme: Theme) -> Line<'static> {
    let entries: Vec<String> = unseen.iter().map(net_list::entry_text).collect();
    Line::from(Span::styled(
        format!("not seen yet (trusted_proxies): {}", entries.join(", ")),
        theme.dim(),
    ))
}

/// The address cell of a proxied source: `203.0.113.9 via 198.51.100.2` when it fits in
/// `width`, else the address (cut if need be) and ` via`; the detail pane names the proxy.
pub fn address_cell(address: IpAddr, via: Option<IpAddr>, width: usize) -> String {
    let address = address.to_string();
    let Some(proxy) = via else {
        return format::fit(&address, width);
    };
    let full = format!("{address} via {proxy}");
    if full.chars().count() <= width {
        full
    } else {
        format!("{} via", format::fit(&address, width.saturating_sub(4)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{ProxyRates, ProxyTotals};

    fn proxy(address: &str, relayed: u64, unattributed: u64) -> ProxyView {
        ProxyView {
            address: address.parse().unwrap(),
            trusted_entry: None,
            blocked: false,
            rates: ProxyRates {
                proxied_per_minute: relayed,
                unattributed_per_minute: unattributed,
                packets_per_second: 100.0,
                ..ProxyRates::default()
            },
            totals: ProxyTotals::default(),
        }
    }

    fn text(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn every_proxy_has_its_line_while_there_is_room() {
        let proxies = [
            proxy("198.51.100.2", 300, 2),
            proxy("198.51.100.3", 12_345, 0),
        ];
        let unseen = ["2001:db8:10::/64".parse().unwrap()];
        assert_eq!(
            text(&lines(&proxies, &unseen, 3, Theme::MONOCHROME)),
            [
                "proxy 198.51.100.2 · relayed 300/min · unattributed 2/min · pkt/s 100",
                "proxy 198.51.100.3 · relayed 12.3k/min · unattributed 0/min · pkt/s 100",
                "not seen yet (trusted_proxies): 2001:db8:10::/64",
            ]
        );
        assert!(lines(&[], &[], 3, Theme::COLOR).is_empty());
    }

    #[test]
    fn the_rest_is_summed_on_the_last_line() {
        let mut blocked = proxy("198.51.100.4", 0, 0);
        blocked.blocked = true;
        let proxies = [
            proxy("198.51.100.2", 300, 2),
            proxy("198.51.100.3", 100, 0),
            blocked,
        ];
        let unseen = ["2001:db8:10::/64".parse().unwrap()];
        assert_eq!(
            text(&lines(&proxies, &unseen, 1, Theme::MONOCHROME)),
            ["3 proxies · relayed 400/min · unattributed 2/min · pkt/s 300 · 1 blocked · 1 not seen"]
        );
        assert_eq!(
            text(&lines(&proxies, &[], 2, Theme::MONOCHROME)),
            [
                "proxy 198.51.100.2 · relayed 300/min · unattributed 2/min · pkt/s 100",
                "+2 proxies · relayed 100/min · unattributed 0/min · pkt/s 200 · 1 blocked",
            ]
        );
    }

    #[test]
    fn proxied_addresses_name_their_proxy_when_it_fits() {
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let proxy: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(
            address_cell(client, Some(proxy), 39),
            "203.0.113.9 via 198.51.100.2"
        );
        assert_eq!(address_cell(client, Some(proxy), 18), "203.0.113.9 via");
        let long: IpAddr = "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
        assert_eq!(address_cell(long, Some(proxy), 18), "2001:db8:ffff… via");
        assert_eq!(address_cell(client, None, 18), "203.0.113.9");
    }
}
