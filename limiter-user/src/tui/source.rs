//! The TUI's two seams to a daemon: a [`SnapshotSource`] it drains without blocking, and an
//! [`ActionSink`] it hands confirmed requests to. `limiter top` implements both over the
//! control socket ([`super::transport::SocketTransport`] on background threads); the daemon can
//! implement [`super::transport::Transport`] in-process and reuse everything else.

use std::sync::mpsc::{Receiver, TryRecvError};

use super::snapshot::{ActionId, Feed};
use crate::control::protocol::Request;

pub trait SnapshotSource {
    /// What arrived since the last call, oldest first. Never blocks.
    fn drain(&mut self) -> Vec<Feed>;
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
}

impl ChannelSource {
    pub fn new(feed: Receiver<Feed>) -> ChannelSource {
        ChannelSource {
            feed,
            closed: false,
        }
    }
}

impl SnapshotSource for ChannelSource {
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
