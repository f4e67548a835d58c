//! Several Glance nodes, one defence: rules and counts shared through etcd (`[cluster]`).
//!
//! - Rules: every local change (a ban, an unban, an allow, automatic or manual) is marked in
//!   the [`journal`] before it is stored, then written to etcd under `rules/` (with a lease
//!   when it expires); every node watches `rules/` and stores what the others wrote. After
//!   any outage a full read is reconciled key by key ([`journal::reconcile`]).
//! - Counts: each Glance node publishes a bounded [`summary`] per poll under `nodes/<name>`
//!   (with the node's lease); each sums the others' into cluster-wide rates for the
//!   thresholds whose scope is the cluster.
//! - Faults: while etcd is unreachable nothing local is lost or undone, and decisions go on
//!   from local counts ([`Cluster::peers`] gives none).
//!
//! The engine owns [`Cluster`] (its thread applies every rule change, so the store, the
//! journal and the kernel never race); the etcd I/O runs on its own thread ([`etcd`]).

mod etcd;
pub mod journal;
pub mod records;
pub mod settings;
pub mod status;
pub mod summary;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use tracing::{info, warn};

pub use self::settings::{ClusterSettings, Role};
use self::{
    journal::{Journal, JournalError},
    records::RuleRecord,
    status::{ClusterHealth, ClusterState, ClusterStatus, EndpointView, NodeView},
    summary::Summary,
};
use crate::{
    rules::Action,
    store::{RuleKey, RuleStore, StoreError, StoredRule},
};

/// Engine → etcd thread.
pub(crate) enum ToEtcd {
    Push {
        puts: Vec<RuleRecord>,
        deletes: Vec<RuleKey>,
        generation: u64,
    },
    Publish(Summary),
    Stop,
}

/// etcd thread → engine.
pub(crate) enum FromEtcd {
    /// Everything under `rules/` at the start of a session (the watch follows from there).
    Snapshot {
        cluster_id: u64,
        rules: Vec<StoredRule>,
    },
    RulePut(StoredRule),
    RuleDeleted(RuleKey),
    /// etcd holds (`true`) or dropped (`false`) these keys, as of this node's `generation`.
    Pushed {
        keys: Vec<(RuleKey, bool)>,
        generation: u64,
    },
}

pub(crate) struct Peer {
    pub summary: Summary,
    pub received: Instant,
    /// How much later than its poll interval this summary came after the previous one.
    pub lag: Duration,
}

/// What both threads see.
#[derive(Default)]
pub(crate) struct Shared {
    state: Option<ClusterState>,
    degraded_since: Option<SystemTime>,
    pub last_error: Option<String>,
    pub endpoints: Vec<EndpointView>,
    pub peers: BTreeMap<String, Peer>,
    own: Option<(Summary, Instant)>,
    own_lag: Duration,
    writes: u64,
    bytes_written: u64,
}

impl Shared {
    /// A session failed; returns whether this starts an outage.
    fn failed(&mut self, error: String) -> bool {
        self.last_error = Some(error);
        self.peers.clear();
        if self.state == Some(ClusterState::Degraded) {
            return false;
        }
        self.state = Some(ClusterState::Degraded);
        self.degraded_since = Some(SystemTime::now());
        true
    }

    /// A session reached etcd; returns whether this ends an outage.
    fn connected(&mut self) -> bool {
        let was = self.state;
        self.state = Some(ClusterState::Connected);
        self.degraded_since = None;
        self.last_error = None;
        was != Some(ClusterState::Connected)
    }

    /// A session works through `endpoint`: it is healthy, whatever the last check said.
    fn reached(&mut self, endpoint: &str) {
        for view in self.endpoints.iter_mut().filter(|v| v.endpoint == endpoint) {
            view.healthy = true;
            view.error = None;
        }
    }

    /// A node's summary arrived.
    fn peer_arrived(&mut self, summary: Summary) {
        let now = Instant::now();
        let interval = Duration::from_millis(summary.poll_interval_ms);
        let lag = self
            .peers
            .get(&summary.node)
            .map(|previous| {
                now.duration_since(previous.received)
                    .saturating_sub(interval)
            })
            .unwrap_or_default();
        self.peers.insert(
            summary.node.clone(),
            Peer {
                summary,
                received: now,
                lag,
            },
        );
    }

    fn count_write(&mut self, bytes: usize) {
        self.writes += 1;
        self.bytes_written += bytes as u64;
    }

    fn published(&mut self, summary: Summary) {
        let now = Instant::now();
        let interval = Duration::from_millis(summary.poll_interval_ms);
        if let Some((_, previous)) = &self.own {
            self.own_lag = now.duration_since(*previous).saturating_sub(interval);
        }
        self.own = Some((summary, now));
    }

    fn state(&self) -> ClusterState {
        self.state.unwrap_or(ClusterState::Connecting)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the cluster thread: {0}")]
    Thread(std::io::Error),
}

/// The engine's side of the cluster.
pub struct Cluster {
    settings: ClusterSettings,
    node: String,
    poll_interval: Duration,
    journal: Journal,
    to_etcd: tokio::sync::mpsc::UnboundedSender<ToEtcd>,
    from_etcd: mpsc::Receiver<FromEtcd>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
    seq: u64,
    cluster_sources: usize,
    /// Sources listed by the other nodes at the last poll (for the fraction of a threshold
    /// this node publishes at).
    glance_nodes: usize,
}

impl Cluster {
    /// Opens the journal in `state_dir` and starts the etcd thread; never waits for etcd.
    pub fn start(
        settings: ClusterSettings,
        state_dir: &Path,
        poll_interval: Duration,
    ) -> Result<Cluster, ClusterError> {
        let journal = Journal::open(state_dir)?;
        let node = settings.effective_node_name();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (to_etcd, inbox) = tokio::sync::mpsc::unbounded_channel();
        let (to_engine, from_etcd) = mpsc::channel();
        let thread = etcd::spawn(
            etcd::Link {
                settings: settings.clone(),
                node: node.clone(),
                poll_interval,
                shared: shared.clone(),
                to_engine,
            },
            inbox,
        )
        .map_err(ClusterError::Thread)?;
        info!(
            node = %node,
            role = settings.role.as_str(),
            endpoints = ?settings.etcd_endpoints,
            prefix = %settings.prefix,
            "cluster: sharing rules and counts through etcd"
        );
        Ok(Cluster {
            settings,
            node,
            poll_interval,
            journal,
            to_etcd,
            from_etcd,
            shared,
            thread: Some(thread),
            seq: 0,
            cluster_sources: 0,
            glance_nodes: 1,
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn role(&self) -> Role {
        self.settings.role
    }

    /// Before a local change to these keys is stored: they go this node's way at the next
    /// reconciliation, whatever happens in between.
    pub fn will_change(
        &mut self,
        keys: impl IntoIterator<Item = RuleKey>,
    ) -> Result<u64, JournalError> {
        self.journal.mark_dirty(keys)
    }

    /// [`Cluster::will_change`] for changes made whatever the disk does (automatic bans): the
    /// mark holds in memory if it cannot be saved, and is saved with the next poll's flush.
    pub fn will_change_or_defer(&mut self, keys: impl IntoIterator<Item = RuleKey>) -> u64 {
        self.journal.mark_dirty_or_defer(keys).0
    }

    /// Retries a journal save that failed; called every poll.
    pub fn flush_journal(&mut self) {
        let _ = self.journal.flush();
    }

    /// After the change is stored: sends the keys' stored state (present or not) to etcd.
    pub fn changed(
        &mut self,
        store: &RuleStore,
        keys: impl IntoIterator<Item = RuleKey>,
        generation: u64,
    ) {
        let now = SystemTime::now();
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for key in keys {
            match store
                .get(key)
                .and_then(|rule| RuleRecord::of(rule, &self.node, now))
            {
                Some(record) => puts.push(record),
                None => deletes.push(key),
            }
        }
        if puts.is_empty() && deletes.is_empty() {
            return;
        }
        let _ = self.to_etcd.send(ToEtcd::Push {
            puts,
            deletes,
            generation,
        });
    }

    /// Applies what etcd sent since the last call. Returns whether the store changed (the
    /// kernel must follow).
    pub fn apply_incoming(&mut self, store: &mut RuleStore) -> Result<bool, ClusterError> {
        let mut changed = false;
        let mut observed = false;
        while let Ok(message) = self.from_etcd.try_recv() {
            match message {
                FromEtcd::Snapshot { cluster_id, rules } => {
                    changed |= self.reconcile(store, cluster_id, rules)?;
                }
                FromEtcd::RulePut(rule) => {
                    let key = rule.key();
                    if self.journal.is_dirty(&key) {
                        continue;
                    }
                    observed = true;
                    self.journal.observe(key, true);
                    let same = store.get(key).is_some_and(|r| journal::same_rule(r, &rule));
                    if !same {
                        info!(rule = %rule.prefix, action = ?rule.action, node = ?rule.node, "rule from the cluster");
                        changed |= !store.put_exact(vec![rule])?.0.is_noop();
                    }
                }
                FromEtcd::RuleDeleted(key) => {
                    if self.journal.is_dirty(&key) {
                        continue;
                    }
                    observed = true;
                    self.journal.observe(key, false);
                    let (removed, _unsaved) = store.remove_or_defer(&[key.0], key.1);
                    if !removed.is_noop() {
                        info!(rule = %key.0, action = ?key.1, "rule removed by the cluster");
                        changed = true;
                    }
                }
                FromEtcd::Pushed { keys, generation } => {
                    let _unsaved = self.journal.acknowledge(keys, generation);
                    observed = false;
                }
            }
        }
        if observed {
            let _ = self.journal.save();
        }
        Ok(changed)
    }

    fn reconcile(
        &mut self,
        store: &mut RuleStore,
        cluster_id: u64,
        remote: Vec<StoredRule>,
    ) -> Result<bool, ClusterError> {
        let now = SystemTime::now();
        let plan = journal::reconcile(
            store.rules(),
            self.journal.state(),
            cluster_id,
            &remote,
            now,
        );
        let mut changed = false;
        if !plan.store_here.is_empty() {
            changed |= !store.put_exact(plan.store_here.clone())?.0.is_noop();
        }
        for action in [Action::Block, Action::Allow] {
            let prefixes: Vec<IpNet> = plan
                .remove_here
                .iter()
                .filter(|(_, a)| *a == action)
                .map(|(net, _)| *net)
                .collect();
            if !prefixes.is_empty() {
                changed |= !store.remove_or_defer(&prefixes, action).0.is_noop();
            }
        }
        let _unsaved = self
            .journal
            .reset_known(cluster_id, remote.iter().map(StoredRule::key).collect());
        let outgoing: Vec<RuleKey> = plan
            .push
            .iter()
            .map(StoredRule::key)
            .chain(plan.delete_there.iter().copied())
            .collect();
        info!(
            from_etcd = plan.store_here.len(),
            removed_elsewhere = plan.remove_here.len(),
            sent = plan.push.len(),
            deleted_there = plan.delete_there.len(),
            "cluster rules reconciled"
        );
        // Keys already dirty keep their mark: this push, acknowledged at the newest
        // generation, settles them along with the ones marked now.
        let fresh: Vec<RuleKey> = outgoing
            .iter()
            .filter(|key| !self.journal.is_dirty(key))
            .copied()
            .collect();
        if !fresh.is_empty() {
            self.journal.mark_dirty_or_defer(fresh);
        }
        let generation = self.journal.state().generation;
        if !plan.settled.is_empty() {
            let _unsaved = self.journal.acknowledge(plan.settled, generation);
        }
        if !outgoing.is_empty() {
            self.changed(store, outgoing, generation);
        }
        Ok(changed)
    }

    /// The other Glance nodes' latest summaries that are still fresh: none while etcd is
    /// unreachable, so decisions fall back to local counts.
    pub fn peers(&self) -> Vec<Summary> {
        let shared = self.shared.lock().unwrap();
        if shared.state() != ClusterState::Connected {
            return Vec::new();
        }
        shared
            .peers
            .values()
            .filter(|p| p.received.elapsed() <= stale_after(&p.summary))
            .map(|p| p.summary.clone())
            .collect()
    }

    /// The share of a threshold at which this node lists a source.
    pub fn publish_fraction(&self) -> f64 {
        summary::publish_fraction(self.glance_nodes)
    }

    /// The header of this poll's summary.
    pub fn next_summary(&mut self, tracked_sources: u64) -> Summary {
        self.seq += 1;
        Summary {
            node: self.node.clone(),
            role: self.settings.role,
            seq: self.seq,
            poll_interval_ms: self.poll_interval.as_millis() as u64,
            tracked_sources,
            sources: Vec::new(),
            totals: summary::Counts4::default(),
        }
    }

    /// Sends this poll's summary, and notes what the cluster-wide rates covered.
    pub fn publish(&mut self, summary: Summary, peers_seen: usize, cluster_sources: usize) {
        self.glance_nodes = 1 + peers_seen;
        self.cluster_sources = cluster_sources;
        let _ = self.to_etcd.send(ToEtcd::Publish(summary));
    }

    pub fn health(&self) -> ClusterHealth {
        let shared = self.shared.lock().unwrap();
        let mut totals = shared
            .own
            .as_ref()
            .map(|(own, _)| own.totals)
            .unwrap_or_default();
        if shared.state() == ClusterState::Connected {
            for peer in shared.peers.values() {
                if peer.received.elapsed() <= stale_after(&peer.summary) {
                    for (total, add) in totals.0.iter_mut().zip(peer.summary.totals.0) {
                        *total += add;
                    }
                }
            }
        }
        ClusterHealth {
            image_creates_per_minute: totals.get(crate::policy::Metric::ImageCreatesPerMinute),
            new_connections_per_second: totals.get(crate::policy::Metric::NewConnectionsPerSecond)
                as f64
                / crate::rates::NEW_CONNECTION_WINDOW.as_secs_f64(),
            node: self.node.clone(),
            role: self.settings.role,
            state: shared.state(),
            degraded_since: shared.degraded_since.map(rfc3339),
            nodes_seen: 1 + shared.peers.len(),
        }
    }

    /// Whether the cluster is degraded, and since when (for the metrics).
    pub fn degraded_since(&self) -> Option<SystemTime> {
        self.shared.lock().unwrap().degraded_since
    }

    pub fn writes(&self) -> (u64, u64) {
        let shared = self.shared.lock().unwrap();
        (shared.writes, shared.bytes_written)
    }

    pub fn status(&self) -> ClusterStatus {
        let shared = self.shared.lock().unwrap();
        let mut nodes = Vec::new();
        let own = shared.own.as_ref();
        nodes.push(NodeView {
            name: self.node.clone(),
            role: self.settings.role,
            this_node: true,
            last_publication_ms_ago: own.map(|(_, at)| at.elapsed().as_millis() as u64),
            lag_ms: own.map(|_| shared.own_lag.as_millis() as u64),
            seq: self.seq,
            listed_sources: own.map_or(0, |(s, _)| s.sources.len()),
            tracked_sources: own.map_or(0, |(s, _)| s.tracked_sources),
        });
        nodes.extend(shared.peers.values().map(|peer| NodeView {
            name: peer.summary.node.clone(),
            role: peer.summary.role,
            this_node: false,
            last_publication_ms_ago: Some(peer.received.elapsed().as_millis() as u64),
            lag_ms: Some(peer.lag.as_millis() as u64),
            seq: peer.summary.seq,
            listed_sources: peer.summary.sources.len(),
            tracked_sources: peer.summary.tracked_sources,
        }));
        ClusterStatus {
            node: self.node.clone(),
            role: self.settings.role,
            prefix: self.settings.prefix.clone(),
            state: shared.state(),
            degraded_since: shared.degraded_since.map(rfc3339),
            degraded_secs: shared
                .degraded_since
                .and_then(|since| since.elapsed().ok())
                .map(|d| d.as_secs()),
            last_error: shared.last_error.clone(),
            etcd: shared.endpoints.clone(),
            nodes,
            shared_rules: self.journal.state().known.len(),
            pending_changes: self.journal.state().dirty.len(),
            journal_error: self.journal.unsaved().map(str::to_string),
            cluster_sources: self.cluster_sources,
            writes: shared.writes,
            bytes_written: shared.bytes_written,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.to_etcd.send(ToEtcd::Stop);
        if let Some(thread) = self.thread.take() {
            // The thread revokes this node's lease (bounded by the request timeout).
            let _ = thread.join();
        }
        if !self.journal.state().dirty.is_empty() {
            warn!(
                pending = self.journal.state().dirty.len(),
                "stopping with rule changes etcd has not taken; the next start sends them"
            );
        }
    }
}

/// A summary older than three of its node's polls no longer counts.
fn stale_after(summary: &Summary) -> Duration {
    Duration::from_millis(summary.poll_interval_ms.max(100) * 3)
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
