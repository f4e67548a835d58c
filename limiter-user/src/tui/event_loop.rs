//! The loop that ties the parts together: drain the source, advance the clock, draw when
//! something changed, wait briefly for a key. Generic over the backend and the input, so
//! tests run it on a `TestBackend` with scripted keys.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
    time::SystemTime,
};

use ratatui::{
    backend::Backend,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers},
    Terminal,
};

use super::{
    app::App,
    keys, render,
    source::{ActionSink, SnapshotSource},
    update::{dispatch, Action},
    TuiError,
};

/// Longest wait for a key before the loop looks at the source and the clock again: new data
/// is on screen at most this late.
pub const INPUT_WAIT: Duration = Duration::from_millis(100);

pub trait Input {
    /// The next terminal event, or `None` after `timeout`.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>>;
}

/// The real keyboard and resize events.
pub struct TerminalInput;

impl Input for TerminalInput {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        if event::poll(timeout)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// An input that also quits when `stop` is set from outside (the daemon's SIGTERM and SIGINT
/// handler, for `limiter run --tui`): it then reads as Ctrl-C, which quits from any mode.
pub struct UntilStopped<'a, I> {
    pub stop: &'a AtomicBool,
    pub input: I,
}

impl<I: Input> Input for UntilStopped<'_, I> {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(Some(Event::Key(KeyEvent::new(
                KeyCode::Char('c'),
                KeyModifiers::CONTROL,
            ))));
        }
        self.input.next(timeout)
    }
}

pub fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    source: &mut dyn SnapshotSource,
    sink: &mut dyn ActionSink,
    input: &mut dyn Input,
    clock: &mut dyn FnMut() -> SystemTime,
) -> Result<(), TuiError> {
    let draw_error = |e: B::Error| TuiError::Draw(e.to_string());
    let size = terminal.size().map_err(draw_error)?;
    dispatch(app, Action::Resize(size.width, size.height), sink);
    let mut dirty = true;
    let mut shown_second = None;
    let mut wanted = None;
    loop {
        // Asked again only when it changes (a new sort or filter, a scroll past the margin).
        let now_wanted = app.wanted();
        if wanted.as_ref() != Some(&now_wanted) {
            source.want(&now_wanted);
            wanted = Some(now_wanted);
        }
        for feed in source.drain() {
            dispatch(app, Action::Feed(feed), sink);
            dirty = true;
        }
        let now = clock();
        dispatch(app, Action::Tick(now), sink);
        // Countdowns move once a second; redrawing more often would only cost bandwidth.
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        if second != shown_second {
            shown_second = second;
            dirty = true;
        }
        if app.should_quit {
            return Ok(());
        }
        if dirty {
            terminal
                .draw(|frame| render::render(frame, app))
                .map_err(draw_error)?;
            dirty = false;
        }
        match input.next(INPUT_WAIT).map_err(TuiError::Terminal)? {
            Some(Event::Key(key)) => {
                if let Some(action) = keys::action_for(&app.mode, key) {
                    dispatch(app, action, sink);
                    dirty = true;
                }
            }
            Some(Event::Resize(width, height)) => {
                dispatch(app, Action::Resize(width, height), sink);
                dirty = true;
            }
            _ => {}
        }
    }
}
