//! One request, one reply: how the fetching threads reach the daemon. [`SocketTransport`] is
//! the control socket through the same [`Client`] the CLI uses, so the TUI can do nothing the
//! CLI cannot; it reconnects by itself after any failure.

use std::{path::PathBuf, time::Duration};

use crate::control::{
    client::{self, Client},
    protocol::{Reply, Request},
};

pub trait Transport: Send + 'static {
    /// The daemon's reply, or a message saying what failed and what to do.
    fn request(&mut self, request: Request) -> Result<Reply, String>;
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
    fn request(&mut self, request: Request) -> Result<Reply, String> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self
                .client
                .insert(Client::connect(&self.path, self.timeout).map_err(|e| e.to_string())?),
        };
        let answer = client.request(request);
        // After any failure the connection's state is unknown (a late answer could arrive for
        // the wrong request): start a new one next time.
        let response = answer
            .inspect_err(|_| self.client = None)
            .map_err(|e| e.to_string())?;
        match client::into_reply(response) {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(
                "the daemon answered without a result; use the `limiter` of the \
                             running daemon's release"
                    .into(),
            ),
            Err(error) => Err(error.message),
        }
    }
}
