//! One request, one reply: how the fetching threads reach the daemon. [`SocketTransport`] is
//! the control socket through the same [`Client`] the CLI uses, so the TUI can do nothing the
//! CLI cannot; it reconnects by itself after any failure.

use std::{path::PathBuf, time::Duration};

use crate::control::{
    client::{self, Client},
    protocol::{ControlError, Reply, Request},
};

pub trait Transport: Send + 'static {
    /// The daemon's reply, or why there is none.
    fn request(&mut self, request: Request) -> Result<Reply, TransportError>;
}

/// Why a request got no reply. Each says what failed and what to do; the kinds stay apart so
/// the screen can tell a daemon it cannot reach from one that refused (forbidden, bad input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer: no daemon, a broken connection, a timeout (the next request reconnects).
    #[error("{0}")]
    Unreachable(String),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Refused(ControlError),
    /// An answer this release does not understand.
    #[error("{0}")]
    Incompatible(String),
}

/// The reply in a response, or its error.
pub(crate) fn reply_of(
    response: crate::control::protocol::ResponseLine,
    without_result: &str,
) -> Result<Reply, TransportError> {
    match client::into_reply(response) {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(TransportError::Incompatible(without_result.to_owned())),
        Err(error) => Err(TransportError::Refused(error)),
    }
}

pub struct SocketTransport {
    path: PathBuf,
    timeout: Duration,
    client: Option<Client>,
}

impl SocketTransport {
    /// `timeout` bounds each request, connection included in the first.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> SocketTransport {
        SocketTransport {
            path: path.into(),
            timeout,
            client: None,
        }
    }
}

impl Transport for SocketTransport {
    fn request(&mut self, request: Request) -> Result<Reply, TransportError> {
        let unreachable = |e: client::ClientError| TransportError::Unreachable(e.to_string());
        let client = match &mut self.client {
            Some(client) => client,
            None => self
                .client
                .insert(Client::connect(&self.path, self.timeout).map_err(unreachable)?),
        };
        let answer = client.request(request);
        // After any failure the connection's state is unknown (a late answer could arrive for
        // the wrong request): start a new one next time.
        let response = answer
            .inspect_err(|_| self.client = None)
            .map_err(unreachable)?;
        reply_of(
            response,
            "the daemon answered without a result; use the `limiter` of the running daemon's \
             release",
        )
    }
}
