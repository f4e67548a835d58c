//! The refresh thread: every interval it asks the daemon for `status`, `stats` and `list`
//! and sends the UI one [`Snapshot`], or [`Feed::Unreachable`] and tries again next interval
//! (on a new connection). The UI thread never waits on the daemon.

use std::{
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread,
    time::{Instant, SystemTime},
};

use super::{
    settings::Refresh,
    snapshot::{rows_from_stats, Feed, Snapshot},
    transport::Transport,
};
use crate::control::protocol::{Reply, Request};

/// Stops the refresh thread when dropped (at the latest after the request in flight).
pub struct Poller {
    stop: Option<Sender<()>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread's wait; it is not joined, so quitting never
        // waits for a daemon that does not answer.
        self.stop.take();
    }
}

pub fn spawn(mut transport: impl Transport, refresh: Refresh, feed: Sender<Feed>) -> Poller {
    let (stop, stopped) = mpsc::channel::<()>();
    let started = Instant::now();
    let thread_feed = feed.clone();
    let spawned = thread::Builder::new()
        .name("limiter-top-refresh".into())
        .spawn(move || loop {
            let round = Instant::now();
            let message = match fetch(&mut transport, refresh.max_sources) {
                Ok(parts) => Feed::Snapshot(Box::new(parts.into_snapshot(
                    SystemTime::now(),
                    started.elapsed(),
                    refresh.max_sources,
                ))),
                Err(error) => Feed::Unreachable { error },
            };
            if thread_feed.send(message).is_err() {
                return;
            }
            release_freed_memory();
            let wait = refresh.interval.saturating_sub(round.elapsed());
            match stopped.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        });
    if let Err(error) = spawned {
        // Without a thread there will never be data; say so on screen.
        let _ = feed.send(Feed::Unreachable {
            error: format!("cannot start the refresh thread: {error}"),
        });
    }
    Poller { stop: Some(stop) }
}

/// Hands memory freed by the refresh back to the system. Decoding a `stats` answer builds
/// serde's whole buffered tree of it first (the protocol's `Reply` is an untagged enum, about
/// 1.3 KB per source) and glibc keeps those pages in the thread's arena; without this the
/// resident size stays at the high-water mark of the largest answer ever decoded.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The three answers one refresh is made of.
pub struct Parts {
    pub status: crate::control::protocol::Status,
    pub stats: crate::control::protocol::Stats,
    pub rules: Vec<crate::store::StoredRule>,
}

impl Parts {
    pub fn into_snapshot(
        mut self,
        taken: SystemTime,
        elapsed: std::time::Duration,
        max_sources: Option<usize>,
    ) -> Snapshot {
        let proxies = std::mem::take(&mut self.stats.proxies);
        let unseen_proxies = std::mem::take(&mut self.stats.unseen_proxies);
        let (tracked_sources, rows) = rows_from_stats(self.stats);
        Snapshot {
            taken,
            elapsed,
            status: self.status,
            // The daemon counts the proxies among the tracked, not among the sources it lists.
            truncated: max_sources
                .is_some_and(|max| tracked_sources.saturating_sub(proxies.len()) > max),
            tracked_sources,
            rows,
            rules: self.rules,
            proxies,
            unseen_proxies,
        }
    }
}

/// One refresh. `max_sources` is the `top` of the `stats` request (the daemon's busiest N).
pub fn fetch(transport: &mut impl Transport, max_sources: Option<usize>) -> Result<Parts, String> {
    let status = match transport.request(Request::Status)? {
        Reply::Status(status) => status,
        _ => return Err(mismatch("status")),
    };
    let stats = match transport.request(Request::Stats { top: max_sources })? {
        Reply::Stats(stats) => stats,
        _ => return Err(mismatch("stats")),
    };
    let rules = match transport.request(Request::List)? {
        Reply::Rules(list) => list.rules,
        _ => return Err(mismatch("list")),
    };
    Ok(Parts {
        status,
        stats,
        rules,
    })
}

fn mismatch(op: &str) -> String {
    format!(
        "the daemon answered `{op}` with something else; use the `limiter` of the running \
         daemon's release"
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::protocol::{RuleList, Stats, Status};

    /// Answers from a script and records what it was asked.
    struct Scripted {
        asked: Vec<Request>,
        fail_from: usize,
    }

    impl Transport for Scripted {
        fn request(&mut self, request: Request) -> Result<Reply, String> {
            self.asked.push(request.clone());
            if self.asked.len() > self.fail_from {
                return Err("no daemon is listening".into());
            }
            Ok(match request {
                Request::Status => Reply::Status(Status::default()),
                Request::Stats { .. } => Reply::Stats(Stats {
                    tracked_sources: 50_000,
                    ..Stats::default()
                }),
                _ => Reply::Rules(RuleList::default()),
            })
        }
    }

    #[test]
    fn a_refresh_asks_status_top_stats_and_rules() {
        let mut transport = Scripted {
            asked: vec![],
            fail_from: usize::MAX,
        };
        let parts = fetch(&mut transport, Some(100)).unwrap();
        assert_eq!(
            transport.asked,
            [
                Request::Status,
                Request::Stats { top: Some(100) },
                Request::List
            ]
        );
        let snapshot = parts.into_snapshot(SystemTime::UNIX_EPOCH, Duration::ZERO, Some(100));
        assert!(snapshot.truncated, "50000 tracked, 100 fetched");
    }

    #[test]
    fn proxies_come_apart_and_do_not_count_as_sources_left_out() {
        let proxy = crate::control::protocol::ProxyView {
            address: "198.51.100.2".parse().unwrap(),
            trusted_entry: None,
            blocked: false,
            rates: Default::default(),
            totals: Default::default(),
        };
        let parts = |tracked| Parts {
            status: Status::default(),
            stats: Stats {
                tracked_sources: tracked,
                proxies: vec![proxy.clone()],
                unseen_proxies: vec!["198.51.100.3/32".parse().unwrap()],
                ..Stats::default()
            },
            rules: vec![],
        };
        // 101 tracked with one proxy: the 100 sources fetched are all of them.
        let snapshot = parts(101).into_snapshot(SystemTime::UNIX_EPOCH, Duration::ZERO, Some(100));
        assert!(!snapshot.truncated);
        assert_eq!(snapshot.proxies[0], proxy);
        assert_eq!(snapshot.unseen_proxies.len(), 1);
        let snapshot = parts(102).into_snapshot(SystemTime::UNIX_EPOCH, Duration::ZERO, Some(100));
        assert!(snapshot.truncated);
    }

    #[test]
    fn a_failed_request_fails_the_refresh() {
        let mut transport = Scripted {
            asked: vec![],
            fail_from: 1,
        };
        assert_eq!(
            fetch(&mut transport, None).err().as_deref(),
            Some("no daemon is listening")
        );
    }

    #[test]
    fn the_thread_sends_snapshots_and_failures_and_stops_when_dropped() {
        let (tx, rx) = mpsc::channel();
        let transport = Scripted {
            asked: vec![],
            fail_from: 3,
        };
        let refresh = Refresh {
            interval: Duration::from_millis(10),
            ..Refresh::default()
        };
        let poller = spawn(transport, refresh, tx);
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(first, Feed::Snapshot(_)), "{first:?}");
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(second, Feed::Unreachable { .. }), "{second:?}");
        drop(poller);
        // The thread ends, dropping its sender: the channel disconnects.
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.recv_timeout(Duration::from_secs(5)).is_ok() {
            assert!(Instant::now() < deadline, "the refresh thread did not stop");
        }
    }
}
