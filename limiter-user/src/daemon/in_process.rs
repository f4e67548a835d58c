//! `limiter run --tui`: the same interface as `limiter top`, fed through the engine's request
//! channel instead of the socket. Same requests, same replies: the screen can do nothing the
//! CLI cannot.

use std::{sync::mpsc, time::Duration};

use crate::{
    control::protocol::{Reply, Request},
    tui::transport::{reply_of, Transport, TransportError},
};

use super::Envelope;

pub struct EngineTransport {
    pub requests: mpsc::Sender<Envelope>,
    pub timeout: Duration,
}

impl Transport for EngineTransport {
    fn request(&mut self, request: Request) -> Result<Reply, TransportError> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(Envelope { request, reply })
            .map_err(|_| TransportError::Unreachable("the daemon's engine has stopped".into()))?;
        let response = answer.recv_timeout(self.timeout).map_err(|_| {
            TransportError::Unreachable(format!(
                "the engine did not answer within {:?} (a long poll?); retrying",
                self.timeout
            ))
        })?;
        reply_of(response, "the engine answered without a result")
    }
}
