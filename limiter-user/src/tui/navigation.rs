//! Moving the selection through the table, and scrolling so it stays on screen.

use super::app::App;

/// Moves the selection by `delta` rows, stopping at either end.
pub fn move_by(app: &mut App, delta: isize) {
    if app.order.is_empty() {
        return;
    }
    let last = app.order.len() - 1;
    let target = app.selected.saturating_add_signed(delta).min(last);
    select(app, target);
}

pub fn page(app: &mut App, pages: isize) {
    let rows = app.table_rows().max(1) as isize;
    move_by(app, pages * rows);
}

pub fn first(app: &mut App) {
    select(app, 0);
}

pub fn last(app: &mut App) {
    select(app, app.order.len().saturating_sub(1));
}

fn select(app: &mut App, position: usize) {
    app.selected = position;
    app.selected_address = app.selected_row().map(|r| r.address);
    keep_selection_visible(app);
}

/// Scrolls the least needed to show the selection, and never past the last row.
pub fn keep_selection_visible(app: &mut App) {
    let rows = app.table_rows();
    let max_offset = app.order.len().saturating_sub(rows);
    if app.selected < app.offset {
        app.offset = app.selected;
    } else if rows > 0 && app.selected >= app.offset + rows {
        app.offset = app.selected + 1 - rows;
    }
    app.offset = app.offset.min(max_offset);
}
