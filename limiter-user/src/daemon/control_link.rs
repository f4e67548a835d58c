//! Connects the control socket server to the engine thread: each request travels to the
//! engine as an [`Envelope`] and the server waits for its answer on a blocking-pool thread.

use std::sync::{mpsc, Arc, Mutex};

use crate::{
    config::Config,
    control::{
        access::Access,
        protocol::{ErrorKind, ResponseLine},
        server::{self, Limits, ServerThread},
    },
};

use super::Envelope;

/// Binds the socket now (startup errors surface here) and serves it on its own thread;
/// dropping the returned handle stops the server and removes the socket.
pub fn spawn(config: &Config, requests: mpsc::Sender<Envelope>) -> anyhow::Result<ServerThread> {
    let access = Access::for_daemon(config.socket_group.as_deref())?;
    // Sender is Send but not Sync; the handler is shared between server threads.
    let requests = Mutex::new(requests);
    let handler = move |request| {
        let (reply, answer) = mpsc::channel();
        let sent = requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(Envelope { request, reply });
        if sent.is_err() {
            return ResponseLine::error(ErrorKind::Operational, "the daemon is stopping; retry");
        }
        answer.recv().unwrap_or_else(|_| {
            ResponseLine::error(
                ErrorKind::Operational,
                "the daemon stopped before answering; retry",
            )
        })
    };
    Ok(server::spawn(
        &config.socket,
        access,
        Limits::default(),
        Arc::new(handler),
    )?)
}
