//! Connects the control socket server to the engine thread.

use std::sync::mpsc;

use crate::config::Config;

use super::Envelope;

/// The running control server; dropping it stops the server.
pub struct ControlServer {
    _requests: mpsc::Sender<Envelope>,
}

pub fn spawn(config: &Config, requests: mpsc::Sender<Envelope>) -> anyhow::Result<ControlServer> {
    let _ = config;
    Ok(ControlServer {
        _requests: requests,
    })
}
