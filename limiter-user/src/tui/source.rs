//! The TUI's two seams to a daemon: a [`SnapshotSource`] it drains without blocking, and an
//! [`ActionSink`] it hands confirmed requests to. `limiter top` implements both over the
//! control socket ([`super::transport::SocketTransport`] on background threads); the daemon can
//! implement [`super::transport::Transport`] in-process and reuse everything else.

use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use super::snapshot::{ActionId, Feed, ScreenQuery};
use crate::control::protocol::Request;

pub trait SnapshotSource {
    /// What arrived since the last call, oldest first. Never blocks.
    fn drain(&mut self) -> Vec<Feed>;

    /// What the screen wants from now on (called when it changes): a source that fetches
    /// refreshes at once with it. Never blocks.
    fn want(&mut self, _query: &ScreenQuery) {}
}

pub trait ActionSink {
    /// Hands a request over without waiting for it; its outcome comes back through the
    /// source as [`Feed::ActionDone`] with the same `id`.
    fn submit(&mut self, id: ActionId, request: Request);
}

/// The receiving end of the channel the fetching threads send to.
pub struct ChannelSource {
    feed: Receiver<Feed>,
    /// Set once every sender is gone, so the UI can say so instead of waiting forever.
    closed: bool,
    /// To the refresh thread: what the screen wants.
    queries: Option<Sender<ScreenQuery>>,
}

impl ChannelSource {
    pub fn new(feed: Receiver<Feed>) -> ChannelSource {
        ChannelSource {
            feed,
            closed: false,
            queries: None,
        }
    }

    /// Passes what the screen wants to the refresh thread (see [`super::poller::Poller`]).
    pub fn with_queries(mut self, queries: Sender<ScreenQuery>) -> ChannelSource {
        self.queries = Some(queries);
        self
    }
}

impl SnapshotSource for ChannelSource {
    fn want(&mut self, query: &ScreenQuery) {
        if let Some(queries) = &self.queries {
            // A stopped refresh thread is reported by `drain`.
            let _ = queries.send(query.clone());
        }
    }

    fn drain(&mut self) -> Vec<Feed> {
        let mut out = Vec::new();
        loop {
            match self.feed.try_recv() {
                Ok(feed) => out.push(feed),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if !self.closed {
                        self.closed = true;
                        out.push(Feed::Unreachable {
                            error: "the refresh thread stopped; restart limiter top".into(),
                        });
                    }
                    break;
                }
            }
        }
        out
    }
}
