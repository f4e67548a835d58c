//! The refresh thread: every interval it asks the daemon for `status`, `stats` and `list`
//! and sends the UI one [`Snapshot`], or [`Feed::Unreachable`] and tries again next interval
//! (on a new connection). The UI thread never waits on the daemon.
//!
//! `stats` asks for what the screen shows ([`ScreenQuery`]: its rows and a margin, in its
//! order, through its filter), not for every source; when the screen wants something else (a
//! new sort or filter) it says so through [`Poller::asker`] and the thread refreshes at once.
//! A daemon from before these fields refuses them: the thread then asks as before (the
//! busiest `--max-sources`) and the screen sorts and filters those.

use std::{
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread,
    time::{Instant, SystemTime},
};

use super::{
    settings::Refresh,
    snapshot::{rows_from_stats, Feed, Matched, ScreenQuery, Snapshot},
    transport::{Transport, TransportError},
};
use crate::control::protocol::{ErrorKind, Reply, Request};

/// Stops the refresh thread when dropped, and every [`Poller::asker`] with it (at the latest
/// after the request in flight).
pub struct Poller {
    stop: Option<Sender<ScreenQuery>>,
}

impl Poller {
    /// Where to send what the screen wants: each query is fetched at once, then every interval.
    pub fn asker(&self) -> Sender<ScreenQuery> {
        match &self.stop {
            Some(sender) => sender.clone(),
            // Never: `stop` is taken only on drop.
            None => mpsc::channel().0,
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread's wait; it is not joined, so quitting never
        // waits for a daemon that does not answer.
        self.stop.take();
    }
}

pub fn spawn(mut transport: impl Transport, refresh: Refresh, feed: Sender<Feed>) -> Poller {
    let (stop, asked) = mpsc::channel::<ScreenQuery>();
    let started = Instant::now();
    let thread_feed = feed.clone();
    let spawned = thread::Builder::new()
        .name("limiter-top-refresh".into())
        .spawn(move || {
            let mut query = ScreenQuery::default();
            let mut legacy = false;
            loop {
                let round = Instant::now();
                let message =
                    match fetch_screen(&mut transport, refresh.max_sources, &query, &mut legacy) {
                        Ok(parts) => Feed::Snapshot(Box::new(parts.into_snapshot(
                            SystemTime::now(),
                            started.elapsed(),
                            refresh.max_sources,
                        ))),
                        Err(error) => Feed::Unreachable {
                            error: error.to_string(),
                        },
                    };
                if thread_feed.send(message).is_err() {
                    return;
                }
                release_freed_memory();
                let wait = refresh.interval.saturating_sub(round.elapsed());
                match asked.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // The newest of what the screen said since, fetched now.
                    Ok(newer) => query = asked.try_iter().last().unwrap_or(newer),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
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
    /// The filter `stats` was asked with (empty: none, or not a screen's query).
    pub filter: String,
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
        let matched = self.stats.matched.map(|counts| Matched {
            filter: self.filter,
            count: counts.total(),
        });
        let (tracked_sources, rows) = rows_from_stats(self.stats);
        Snapshot {
            taken,
            elapsed,
            status: self.status,
            // The daemon counts the proxies among the tracked, not among the sources it lists.
            // An answer to the screen's query holds the first rows in the screen's own order:
            // nothing it would show first is left out.
            truncated: matched.is_none()
                && max_sources
                    .is_some_and(|max| tracked_sources.saturating_sub(proxies.len()) > max),
            matched,
            tracked_sources,
            rows,
            rules: self.rules,
            proxies,
            unseen_proxies,
        }
    }
}

/// The `stats` of a refresh: what `query` asks for (its rows, at most `max_sources`), or
/// without a query (for a daemon from before them) the busiest `max_sources`.
pub fn stats_request(max_sources: Option<usize>, query: Option<&ScreenQuery>) -> Request {
    match query {
        Some(query) => Request::Stats {
            top: Some(max_sources.map_or(query.rows, |max| max.min(query.rows))),
            sort: Some(query.order),
            filter: (!query.filter.is_empty()).then(|| query.filter.clone()),
        },
        None => Request::Stats {
            top: max_sources,
            sort: None,
            filter: None,
        },
    }
}

/// One refresh for the screen: its query, or as before once the daemon refused one
/// (`legacy`, remembered for the next refreshes).
pub fn fetch_screen(
    transport: &mut impl Transport,
    max_sources: Option<usize>,
    query: &ScreenQuery,
    legacy: &mut bool,
) -> Result<Parts, TransportError> {
    if !*legacy {
        match fetch(transport, max_sources, Some(query)) {
            Err(error) if refuses_queries(&error) => {
                tracing::info!("the daemon predates screen queries ({error}); fetching the busiest sources instead");
                *legacy = true;
            }
            result => return result,
        }
    }
    fetch(transport, max_sources, None)
}

/// Whether an error is a daemon from before `sort` and `filter` refusing them: bad input,
/// with serde's message for a field it does not know.
fn refuses_queries(error: &TransportError) -> bool {
    let TransportError::Refused(refusal) = error else {
        return false;
    };
    refusal.kind == ErrorKind::BadInput
        && (refusal.message.contains("unknown field `sort`")
            || refusal.message.contains("unknown field `filter`"))
}

/// One refresh: `stats` as [`stats_request`] makes it.
pub fn fetch(
    transport: &mut impl Transport,
    max_sources: Option<usize>,
    query: Option<&ScreenQuery>,
) -> Result<Parts, TransportError> {
    let status = match transport.request(Request::Status)? {
        Reply::Status(status) => status,
        _ => return Err(mismatch("status")),
    };
    let stats = match transport.request(stats_request(max_sources, query))? {
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
        filter: query.map(|q| q.filter.clone()).unwrap_or_default(),
    })
}

fn mismatch(op: &str) -> TransportError {
    TransportError::Incompatible(format!(
        "the daemon answered `{op}` with something else; use the `limiter` of the running \
         daemon's release"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::protocol::{
        ControlError, RuleList, SortKey, SourceOrder, StateCounts, Stats, Status,
    };

    /// Answers from a script and records what it was asked.
    struct Scripted {
        asked: Vec<Request>,
        fail_from: usize,
        /// As a daemon from before `sort` and `filter`.
        old_daemon: bool,
    }

    impl Scripted {
        fn new() -> Scripted {
            Scripted {
                asked: vec![],
                fail_from: usize::MAX,
                old_daemon: false,
            }
        }
    }

    impl Transport for Scripted {
        fn request(&mut self, request: Request) -> Result<Reply, TransportError> {
            self.asked.push(request.clone());
            if self.asked.len() > self.fail_from {
                return Err(TransportError::Unreachable("no daemon is listening".into()));
            }
            Ok(match request {
                Request::Status => Reply::Status(Status::default()),
                Request::Stats { sort, filter, .. } => {
                    if self.old_daemon && (sort.is_some() || filter.is_some()) {
                        return Err(TransportError::Refused(ControlError {
                            kind: ErrorKind::BadInput,
                            message: "invalid request: unknown field `sort`, expected `top`".into(),
                        }));
                    }
                    Reply::Stats(Stats {
                        tracked_sources: 50_000,
                        matched: sort.map(|_| StateCounts {
                            ok: 4_000,
                            ..StateCounts::default()
                        }),
                        ..Stats::default()
                    })
                }
                _ => Reply::Rules(RuleList::default()),
            })
        }
    }

    fn plain_stats(top: Option<usize>) -> Request {
        Request::Stats {
            top,
            sort: None,
            filter: None,
        }
    }

    #[test]
    fn a_refresh_asks_status_top_stats_and_rules() {
        let mut transport = Scripted::new();
        let parts = fetch(&mut transport, Some(100), None).unwrap();
        assert_eq!(
            transport.asked,
            [Request::Status, plain_stats(Some(100)), Request::List]
        );
        let snapshot = parts.into_snapshot(SystemTime::UNIX_EPOCH, Duration::ZERO, Some(100));
        assert!(snapshot.truncated, "50000 tracked, 100 fetched");
        assert_eq!(snapshot.matched, None);
    }

    #[test]
    fn the_screen_asks_for_its_rows_in_its_order_through_its_filter() {
        let query = ScreenQuery {
            rows: 300,
            order: SourceOrder {
                by: SortKey::Rate(crate::metric::Metric::BytesPerSecond),
                descending: true,
                pin_important: false,
            },
            filter: "198.51.".into(),
        };
        let mut transport = Scripted::new();
        let mut legacy = false;
        let parts = fetch_screen(&mut transport, Some(10_000), &query, &mut legacy).unwrap();
        assert_eq!(
            transport.asked[1],
            Request::Stats {
                top: Some(300),
                sort: Some(query.order),
                filter: Some("198.51.".into()),
            }
        );
        assert!(!legacy);
        let snapshot = parts.into_snapshot(SystemTime::UNIX_EPOCH, Duration::ZERO, Some(10_000));
        assert!(
            !snapshot.truncated,
            "the first rows in the screen's own order"
        );
        assert_eq!(
            snapshot.matched,
            Some(Matched {
                filter: "198.51.".into(),
                count: 4_000
            })
        );
        // `--max-sources` still caps it; no filter is not sent.
        let unfiltered = ScreenQuery {
            filter: String::new(),
            ..query
        };
        assert_eq!(
            stats_request(Some(50), Some(&unfiltered)),
            Request::Stats {
                top: Some(50),
                sort: Some(unfiltered.order),
                filter: None,
            }
        );
    }

    #[test]
    fn an_old_daemon_gets_the_busiest_sources_as_before_from_then_on() {
        let mut transport = Scripted {
            old_daemon: true,
            ..Scripted::new()
        };
        let mut legacy = false;
        let query = ScreenQuery::default();
        let parts = fetch_screen(&mut transport, Some(10_000), &query, &mut legacy).unwrap();
        assert!(legacy);
        assert_eq!(transport.asked[3], plain_stats(Some(10_000)));
        let snapshot = parts.into_snapshot(SystemTime::UNIX_EPOCH, Duration::ZERO, Some(10_000));
        assert!(snapshot.truncated && snapshot.matched.is_none());
        transport.asked.clear();
        fetch_screen(&mut transport, Some(10_000), &query, &mut legacy).unwrap();
        assert_eq!(
            transport.asked,
            [Request::Status, plain_stats(Some(10_000)), Request::List],
            "not asked again"
        );
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
            filter: String::new(),
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
            fail_from: 1,
            ..Scripted::new()
        };
        let mut legacy = false;
        assert_eq!(
            fetch_screen(&mut transport, None, &ScreenQuery::default(), &mut legacy).err(),
            Some(TransportError::Unreachable("no daemon is listening".into()))
        );
        assert!(!legacy, "an unreachable daemon is not an old one");
    }

    #[test]
    fn the_thread_sends_snapshots_and_failures_and_stops_when_dropped() {
        let (tx, rx) = mpsc::channel();
        let transport = Scripted {
            fail_from: 3,
            ..Scripted::new()
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

    #[test]
    fn a_new_query_is_fetched_at_once() {
        /// Records the `stats` requests where the test can see them.
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<Request>>>);
        impl Transport for Shared {
            fn request(&mut self, request: Request) -> Result<Reply, TransportError> {
                let mut script = Scripted::new();
                let reply = script.request(request.clone());
                self.0.lock().unwrap().push(request);
                reply
            }
        }
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        // A refresh a minute: only a query can bring the second one in time.
        let refresh = Refresh {
            interval: Duration::from_secs(60),
            ..Refresh::default()
        };
        let poller = spawn(Shared(asked.clone()), refresh, tx);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let by_address = ScreenQuery {
            order: SourceOrder {
                by: SortKey::Address,
                descending: false,
                pin_important: true,
            },
            ..ScreenQuery::default()
        };
        poller.asker().send(by_address.clone()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let stats: Vec<Request> = asked
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r, Request::Stats { .. }))
            .cloned()
            .collect();
        assert_eq!(
            stats,
            [
                stats_request(Some(10_000), Some(&ScreenQuery::default())),
                stats_request(Some(10_000), Some(&by_address))
            ]
        );
    }
}
