//! A stand-in daemon for the control tests: the real control server on a socket in a
//! temporary directory, with a handler that records every request and answers from a script.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use limiter_user::{
    cluster::{
        status::{ClusterState, ClusterStatus, EndpointView, NodeView},
        Role,
    },
    control::{
        access::Access,
        protocol::{
            InterfaceView, RatesView, Reply, Request, ResponseLine, RuleChange, RuleCounts,
            RuleList, SourceState, SourceView, Stats, Status, Totals,
        },
        server::{self, Limits, ServerThread},
    },
    rules::{Action, Scope},
    store::{Origin, StoredRule},
};

pub struct FakeDaemon {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    server: Option<ServerThread>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    /// Answers every request with [`canned`].
    pub fn start() -> FakeDaemon {
        FakeDaemon::with(canned)
    }

    /// Answers with `respond`.
    pub fn with(respond: impl Fn(&Request) -> ResponseLine + Send + Sync + 'static) -> FakeDaemon {
        FakeDaemon::with_access(
            Access::for_daemon(None).unwrap(),
            Limits::default(),
            respond,
        )
    }

    pub fn with_access(
        access: Access,
        limits: Limits,
        respond: impl Fn(&Request) -> ResponseLine + Send + Sync + 'static,
    ) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/limiter.sock");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let handler = move |request: Request| {
            let response = respond(&request);
            recorded.lock().unwrap().push(request);
            response
        };
        let server = server::spawn(&socket, access, limits, Arc::new(handler)).unwrap();
        FakeDaemon {
            socket,
            requests,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Every request handled so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

impl Drop for FakeDaemon {
    /// Ends a test's daemon the way `stop` does: the server first, then (the fields) the
    /// directory holding its socket.
    fn drop(&mut self) {
        self.stop();
    }
}

pub const NOW_SECS: u64 = 1_748_772_000;

pub fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn stored(prefix: &str, action: Action) -> StoredRule {
    StoredRule {
        prefix: prefix.parse().unwrap(),
        action,
        scope: Scope::ProtectedPorts,
        origin: Origin::Manual,
        reason: "flood".into(),
        created: at(NOW_SECS),
        expires: None,
        node: None,
    }
}

/// A plausible answer to each request.
pub fn canned(request: &Request) -> ResponseLine {
    let added = |prefixes: &[ipnet::IpNet], action| RuleChange {
        added: prefixes
            .iter()
            .map(|p| stored(&p.to_string(), action))
            .collect(),
        ..RuleChange::default()
    };
    let reply = match request {
        Request::Block { prefixes, .. } => Reply::Changed(added(prefixes, Action::Block)),
        Request::Allow { prefixes, .. } => Reply::Changed(added(prefixes, Action::Allow)),
        Request::Unblock { prefixes } | Request::Unallow { prefixes } => {
            Reply::Changed(RuleChange {
                absent: prefixes.clone(),
                ..RuleChange::default()
            })
        }
        Request::List => Reply::Rules(RuleList {
            rules: vec![
                stored("198.51.100.7/32", Action::Block),
                stored("192.0.2.0/24", Action::Allow),
            ],
            ..RuleList::default()
        }),
        Request::Stats { .. } => Reply::Stats(Stats {
            tracked_sources: 3,
            sources: vec![SourceView {
                address: "198.51.100.7".parse().unwrap(),
                state: SourceState::Banned,
                rates: RatesView {
                    image_creates_per_minute: 300,
                    ..RatesView::default()
                },
                totals: Totals {
                    image_create: 1200,
                    ..Totals::default()
                },
                banned_until: Some(humantime::parse_rfc3339("2025-06-01T10:10:00Z").unwrap()),
                via: None,
                creates: None,
            }],
            ..Stats::default()
        }),
        Request::Status => Reply::Status(Status {
            daemon_version: "0.1.0".into(),
            mode: limiter_user::config::Mode::Enforce,
            interfaces: vec![InterfaceView {
                name: "eth0".into(),
                attach_mode: limiter_user::control::protocol::AttachedAs::Native,
                ..Default::default()
            }],
            ports: vec![9292],
            uptime_secs: 60,
            poll_interval_ms: 1000,
            last_poll_ms: 1.5,
            tracked_sources: 3,
            rules: RuleCounts {
                block_auto: 1,
                block_manual: 1,
                allow: 1,
            },
            counters: [("drop_blocked".to_string(), 42)].into(),
            cluster: None,
            store_error: None,
        }),
        Request::ClusterStatus => Reply::Cluster(cluster_status()),
        Request::Recommend { percentile, margin } => {
            match limiter_user::recommend::recommend(
                &recorded_peaks(),
                &limiter_user::policy::PolicyConfig::default(),
                percentile.unwrap_or(99.0),
                margin.unwrap_or(2.0),
            ) {
                Ok(advice) => Reply::Recommendation(advice),
                Err(e) => {
                    return ResponseLine::error(
                        limiter_user::control::protocol::ErrorKind::BadInput,
                        e.to_string(),
                    )
                }
            }
        }
    };
    ResponseLine::ok(reply)
}

/// Three legitimate clients creating a few images a minute and one flooding (banned).
pub fn recorded_peaks() -> limiter_user::recommend::PeakHistory {
    let mut history = limiter_user::recommend::PeakHistory::default();
    let creating = |per_minute| limiter_user::rates::Rates {
        image_creates_last_minute: per_minute,
        image_creates_last_hour: per_minute,
        ..Default::default()
    };
    for (addr, per_minute) in [
        ("203.0.113.10", 4),
        ("203.0.113.11", 6),
        ("203.0.113.12", 9),
    ] {
        history.observe(
            addr.parse().unwrap(),
            &creating(per_minute),
            at(NOW_SECS),
            &limiter_user::policy::PolicyConfig::default(),
        );
    }
    history.observe(
        "198.51.100.7".parse().unwrap(),
        &creating(80),
        at(NOW_SECS + 60),
        &limiter_user::policy::PolicyConfig::default(),
    );
    history.offended("198.51.100.7/32".parse().unwrap(), at(NOW_SECS + 60));
    history
}

/// Two Glance nodes, connected through one healthy etcd endpoint.
pub fn cluster_status() -> ClusterStatus {
    let node = |name: &str, this_node| NodeView {
        name: name.into(),
        role: Role::Glance,
        this_node,
        last_publication_ms_ago: Some(400),
        lag_ms: Some(0),
        seq: 60,
        listed_sources: 2,
        tracked_sources: 3,
    };
    ClusterStatus {
        node: "glance-1".into(),
        role: Role::Glance,
        prefix: "/glance-limiter/".into(),
        state: ClusterState::Connected,
        degraded_since: None,
        degraded_secs: None,
        last_error: None,
        etcd: vec![EndpointView {
            endpoint: "http://198.51.100.10:2379".into(),
            healthy: true,
            version: Some("3.5.17".into()),
            leader: true,
            error: None,
        }],
        nodes: vec![node("glance-1", true), node("glance-2", false)],
        shared_rules: 2,
        pending_changes: 0,
        journal_error: None,
        cluster_sources: 1,
        writes: 120,
        bytes_written: 48_000,
    }
}
