//! `limiter top`: the live screen for the engineer on call. Who is hammering Glance, with
//! what, what is banned, why and until when; ban, unban and allow from the keyboard, through
//! the same control API as the CLI. docs/TUI.md describes the screen and the keys.
//!
//! Three parts, kept apart so each is tested alone:
//! - state: [`app::App`], changed only by [`update::update`] from one [`update::Action`] at a
//!   time (keys via [`keys`], data via [`ingest`]); no terminal, no socket;
//! - pure rendering: [`render::render`] and one file per panel under `render/`;
//! - the edges: a [`source::SnapshotSource`] and an [`source::ActionSink`] (over the control
//!   socket: [`transport`], [`poller`], [`sink`], on background threads), the terminal
//!   ([`terminal`]), and [`event_loop`] which ties them together.
//!
//! The daemon can run the same interface in-process: implement [`transport::Transport`] over
//! its engine's request channel and call [`connect`] and [`run_in_terminal`].

pub mod app;
#[cfg(any(test, feature = "test-support"))]
pub mod bench;
pub mod event_loop;
pub mod events;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
pub mod format;
pub mod forms;
pub mod history;
pub mod ingest;
pub mod keys;
pub mod logging;
pub mod navigation;
pub mod poller;
pub mod render;
pub mod settings;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod terminal;
pub mod theme;
pub mod transport;
pub mod update;
pub mod view;

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod update_tests;

use std::{
    io,
    path::PathBuf,
    sync::{atomic::AtomicBool, mpsc},
    time::{Duration, SystemTime},
};

use self::{
    app::App,
    poller::Poller,
    settings::{Refresh, Thresholds},
    sink::WorkerSink,
    source::{ActionSink, ChannelSource, SnapshotSource},
    terminal::TerminalGuard,
    theme::Theme,
    transport::{SocketTransport, Transport},
};

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(
        "limiter top needs a terminal (stdin and stdout); for scripts use `limiter stats` and \
         `limiter list`"
    )]
    NotATerminal,
    #[error("cannot use the terminal: {0}")]
    Terminal(#[source] io::Error),
    #[error("cannot draw the screen: {0}")]
    Draw(String),
}

/// What `limiter top` was told.
#[derive(Clone, Debug)]
pub struct TopOptions {
    pub socket: PathBuf,
    pub refresh: Refresh,
    /// How long an action (ban, unban, allow) may take: the daemon writes the rule to disk
    /// before it answers.
    pub action_timeout: Duration,
    pub thresholds: Thresholds,
}

/// `limiter top`: attaches to the daemon on `options.socket` until the operator quits.
pub fn run_top(options: TopOptions) -> Result<(), TuiError> {
    let socket = options.socket.clone();
    let refresh_timeout = options.refresh.timeout;
    let action_timeout = options.action_timeout;
    let (source, sink, _poller) = connect(
        move |purpose| match purpose {
            Purpose::Refresh => SocketTransport::new(&socket, refresh_timeout),
            Purpose::Actions => SocketTransport::new(&socket, action_timeout),
        },
        options.refresh,
    );
    run_in_terminal(source, sink, options.thresholds)
}

/// What a transport is for: refreshes and actions each get their own, so a slow action
/// never delays a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Refresh,
    Actions,
}

/// Starts the refresh and action threads over transports made by `make`. The refresh thread
/// runs until the returned [`Poller`] is dropped.
pub fn connect<T: Transport>(
    make: impl Fn(Purpose) -> T,
    refresh: Refresh,
) -> (ChannelSource, WorkerSink, Poller) {
    let (feed, incoming) = mpsc::channel();
    let poller = poller::spawn(make(Purpose::Refresh), refresh, feed.clone());
    let sink = WorkerSink::spawn(make(Purpose::Actions), feed);
    let source = ChannelSource::new(incoming).with_queries(poller.asker());
    (source, sink, poller)
}

/// Takes the terminal, runs the interface until `q`, and gives the terminal back (also on
/// error and on panic).
pub fn run_in_terminal(
    source: impl SnapshotSource,
    sink: impl ActionSink,
    thresholds: Thresholds,
) -> Result<(), TuiError> {
    run_in_terminal_until(source, sink, thresholds, &AtomicBool::new(false))
}

/// As [`run_in_terminal`], and also returns (within [`event_loop::INPUT_WAIT`]) once `stop`
/// is set: `limiter run --tui` passes the flag its SIGTERM and SIGINT handler sets.
pub fn run_in_terminal_until(
    mut source: impl SnapshotSource,
    mut sink: impl ActionSink,
    thresholds: Thresholds,
    stop: &AtomicBool,
) -> Result<(), TuiError> {
    let mut app = App::new(SystemTime::now(), Theme::from_env(), thresholds, operator());
    let mut guard = TerminalGuard::enter()?;
    event_loop::run(
        &mut guard.terminal,
        &mut app,
        &mut source,
        &mut sink,
        &mut event_loop::UntilStopped {
            stop,
            input: event_loop::TerminalInput,
        },
        &mut SystemTime::now,
    )
}

/// Who is at the keyboard, for the default reason of a ban: the user behind sudo if any.
fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "an operator".to_string())
}
