//! `limiter run --tui`: the same interface as `limiter top`, fed through the engine's request
//! channel instead of the socket. Same requests, same replies: the screen can do nothing the
//! CLI cannot.

use std::{sync::mpsc, time::Duration};

use crate::{
    control::{client, protocol::Reply, protocol::Request},
    tui::transport::Transport,
};

use super::Envelope;

pub struct EngineTransport {
    pub requests: mpsc::Sender<Envelope>,
    pub timeout: Duration,
}

impl Transport for EngineTransport {
    fn request(&mut self, request: Request) -> Result<Reply, String> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(Envelope { request, reply })
            .map_err(|_| "the daemon's engine has stopped".to_owned())?;
        let response = answer.recv_timeout(self.timeout).map_err(|_| {
            format!(
                "the engine did not answer within {:?} (a long poll?); retrying",
                self.timeout
            )
        })?;
        match client::into_reply(response) {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err("the engine answered without a result".to_owned()),
            Err(error) => Err(error.message),
        }
    }
}
