//! Where each panel goes, for a given screen size. Shared by the renderer and by `update`
//! (which needs the table's height to keep the selection on screen and to page), so both
//! always agree.
//!
//! Compact (anything below 160×40, down to 80×24): header, the sources table, one bottom
//! pane with tabs (detail, rules, events), a footer. Wide: the three bottom panes side by side.
//! Behind trusted proxies, the proxies' lines go under the header: one in the compact layout,
//! up to [`WIDE_PROXY_LINES`] in the wide one (none without proxies, so the screen of a daemon
//! without them is unchanged). In a cluster the header has a third line (see
//! [`header_lines`]).

/// Lines of the header: identity and totals, and the cluster's state in a cluster.
pub fn header_lines(cluster: bool) -> u16 {
    2 + u16::from(cluster)
}

use ratatui::layout::{Constraint, Layout, Rect};

/// Width and height from which the three bottom panes are shown side by side.
pub const WIDE: (u16, u16) = (160, 40);
/// Lines of the bottom pane in the compact layout (title included).
const COMPACT_BOTTOM: u16 = 9;
/// Below this height the bottom pane is left out: the table is what matters.
const MIN_HEIGHT_FOR_BOTTOM: u16 = 18;
/// Lines above the table's rows: its title line and the column headers.
pub const TABLE_CHROME: u16 = 2;
/// Most lines the proxies get in the wide layout; the compact one gives them one.
pub const WIDE_PROXY_LINES: u16 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScreenLayout {
    pub header: Rect,
    /// The trusted proxies' load; empty without proxies.
    pub proxies: Rect,
    pub table: Rect,
    /// Empty when the screen is too small for it.
    pub bottom: Rect,
    pub footer: Rect,
    pub wide: bool,
}

/// `header`: the header's lines ([`header_lines`]). `proxy_items`: the lines the proxies
/// panel would like (one per proxy, one for the entries not seen); it gets at most one
/// (compact) or [`WIDE_PROXY_LINES`] (wide).
pub fn screen(area: Rect, header: u16, proxy_items: usize) -> ScreenLayout {
    let wide = area.width >= WIDE.0 && area.height >= WIDE.1;
    let proxy_lines =
        u16::try_from(proxy_items)
            .unwrap_or(u16::MAX)
            .min(if wide { WIDE_PROXY_LINES } else { 1 });
    let bottom_height = if wide {
        area.height.saturating_sub(3) * 9 / 20
    } else if area.height >= MIN_HEIGHT_FOR_BOTTOM {
        COMPACT_BOTTOM
    } else {
        0
    };
    let [header, proxies, table, bottom, footer] = Layout::vertical([
        Constraint::Length(header),
        Constraint::Length(proxy_lines),
        Constraint::Min(0),
        Constraint::Length(bottom_height),
        Constraint::Length(1),
    ])
    .areas(area);
    ScreenLayout {
        header,
        proxies,
        table,
        bottom,
        footer,
        wide,
    }
}

/// Source rows the table shows at once on a screen of this size.
pub fn table_rows(width: u16, height: u16, header: u16, proxy_items: usize) -> usize {
    let layout = screen(Rect::new(0, 0, width, height), header, proxy_items);
    usize::from(layout.table.height.saturating_sub(TABLE_CHROME))
}

/// The wide layout's bottom: detail on the left; rules above events on the right, where
/// their reasons and details have room.
pub fn bottom_columns(bottom: Rect) -> [Rect; 3] {
    let [detail, right] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(bottom);
    let [rules, events] =
        Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(right);
    [detail, rules, events]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighty_by_twenty_four_keeps_ten_rows_and_a_pane() {
        let layout = screen(Rect::new(0, 0, 80, 24), 2, 0);
        assert!(!layout.wide);
        assert_eq!(layout.header.height, 2);
        assert_eq!(layout.proxies.height, 0);
        assert_eq!(layout.bottom.height, COMPACT_BOTTOM);
        assert_eq!(layout.footer.y, 23);
        assert_eq!(table_rows(80, 24, 2, 0), 10);
    }

    #[test]
    fn proxies_take_a_line_compact_and_a_few_wide() {
        let layout = screen(Rect::new(0, 0, 80, 24), 2, 4);
        assert_eq!((layout.proxies.y, layout.proxies.height), (2, 1));
        assert_eq!(table_rows(80, 24, 2, 4), 9);
        let wide = screen(Rect::new(0, 0, 200, 50), 2, 4);
        assert_eq!(wide.proxies.height, WIDE_PROXY_LINES);
        assert_eq!(screen(Rect::new(0, 0, 200, 50), 2, 2).proxies.height, 2);
        assert_eq!(
            table_rows(200, 50, 2, 2) + 2,
            table_rows(200, 50, 2, 0),
            "the table gives up the lines"
        );
    }

    #[test]
    fn a_cluster_takes_a_header_line_from_the_table() {
        let layout = screen(Rect::new(0, 0, 80, 24), header_lines(true), 0);
        assert_eq!(layout.header.height, 3);
        assert_eq!(layout.table.y, 3);
        assert_eq!(table_rows(80, 24, header_lines(true), 0), 9);
        assert_eq!(header_lines(false), 2);
    }

    #[test]
    fn large_screens_split_the_bottom() {
        let layout = screen(Rect::new(0, 0, 200, 50), 2, 0);
        assert!(layout.wide);
        assert!(layout.bottom.height >= 20);
        assert!(table_rows(200, 50, 2, 0) >= 20);
    }

    #[test]
    fn tiny_screens_keep_only_the_table() {
        let layout = screen(Rect::new(0, 0, 60, 12), 2, 0);
        assert_eq!(layout.bottom.height, 0);
        assert_eq!(table_rows(60, 12, 2, 0), 7);
        assert_eq!(table_rows(0, 0, 2, 0), 0);
    }
}
