//! Actions go to the daemon on their own thread and connection, so a slow answer (a ban is
//! written to disk before the daemon replies) never holds up the screen or the refreshes.
//! Outcomes come back on the refresh channel as [`Feed::ActionDone`].

use std::{
    sync::mpsc::{self, Sender},
    thread,
};

use super::{
    snapshot::{ActionId, Feed},
    source::ActionSink,
    transport::Transport,
};
use crate::control::protocol::{Reply, Request};

pub struct WorkerSink {
    requests: Option<Sender<(ActionId, Request)>>,
    feed: Sender<Feed>,
}

impl WorkerSink {
    pub fn spawn(mut transport: impl Transport, feed: Sender<Feed>) -> WorkerSink {
        let (requests, incoming) = mpsc::channel::<(ActionId, Request)>();
        let outcomes = feed.clone();
        let spawned = thread::Builder::new()
            .name("limiter-top-actions".into())
            .spawn(move || {
                for (id, request) in incoming {
                    let outcome = match transport.request(request) {
                        Ok(Reply::Changed(change)) => Ok(change),
                        Ok(_) => Err("the daemon answered with something else than a rule \
                                      change; use the `limiter` of the running daemon's release"
                            .to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    if outcomes.send(Feed::ActionDone { id, outcome }).is_err() {
                        return;
                    }
                }
            });
        WorkerSink {
            requests: spawned.ok().map(|_| requests),
            feed,
        }
    }
}

impl ActionSink for WorkerSink {
    fn submit(&mut self, id: ActionId, request: Request) {
        let sent = match &self.requests {
            Some(requests) => requests.send((id, request)).is_ok(),
            None => false,
        };
        if !sent {
            let _ = self.feed.send(Feed::ActionDone {
                id,
                outcome: Err("the action thread is not running; use the limiter CLI".into()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        control::protocol::{ControlError, ErrorKind, RuleChange},
        tui::transport::TransportError,
    };

    struct Echo;

    impl Transport for Echo {
        fn request(&mut self, request: Request) -> Result<Reply, TransportError> {
            match request {
                Request::Unblock { prefixes } => Ok(Reply::Changed(RuleChange {
                    absent: prefixes,
                    ..RuleChange::default()
                })),
                _ => Err(TransportError::Refused(ControlError {
                    kind: ErrorKind::BadInput,
                    message: "refused".into(),
                })),
            }
        }
    }

    #[test]
    fn outcomes_come_back_with_their_id() {
        let (tx, rx) = mpsc::channel();
        let mut sink = WorkerSink::spawn(Echo, tx);
        let prefix = "198.51.100.7/32".parse().unwrap();
        sink.submit(
            7,
            Request::Unblock {
                prefixes: vec![prefix],
            },
        );
        sink.submit(8, Request::List);
        let wait = Duration::from_secs(5);
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            Feed::ActionDone {
                id: 7,
                outcome: Ok(RuleChange {
                    absent: vec![prefix],
                    ..RuleChange::default()
                })
            }
        );
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            Feed::ActionDone {
                id: 8,
                outcome: Err("refused".into())
            }
        );
    }
}
