//! The daemon's single owner of state: the loaded program, the rule store, the rate tracker
//! and the policy. One thread drives it; each poll and each control request runs to
//! completion before the next, so the store and the kernel never disagree for long and no
//! lock is needed.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use limiter_common::Counter;
use tracing::{debug, info, warn};

use crate::{
    budget::ImageCreateBudget,
    cluster::{
        self,
        summary::{self, Summary},
        Cluster, ClusterError,
    },
    config::{Config, Mode},
    control::{
        protocol::{
            ControlError, CreatesView, ErrorKind, RatesView, Reply, Request, ResponseLine,
            RuleChange, RuleCounts, RuleList, SortKey, SourceOrder, SourceState, SourceView, Stats,
            Status, StoreErrorView, Totals,
        },
        query::{self, AddressFilter},
    },
    created_records::CreatedRecords,
    loader::{AttachMode, Limiter, LoaderError},
    metrics::{ActiveRules, ByOrigin, Snapshot, StoreTrouble, Unbans},
    policy::{Decision, NeverBan, Policy, PrefixCandidate},
    prefix_rates::PrefixRates,
    prefixes::PrefixSet,
    proxy::load::{ProxyLoads, ProxyRow},
    rates::{Counts, RateTracker, Rates},
    recommend::{self, PeakHistory},
    rules::{self, Action, KernelRule, Scope},
    store::{Change, Origin, RuleStore, StoreError, StoredRule},
    time_text::to_seconds as rfc3339,
};

use super::{
    edges::{Host, Kernel, SystemHost},
    interfaces::{Interfaces, Tracked},
    proxied::{self, ViaTable},
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Kernel(#[from] LoaderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Journal(#[from] cluster::journal::JournalError),
}

/// What one poll did, for logs and status.
#[derive(Clone, Copy, Debug, Default)]
pub struct TickReport {
    pub rows: usize,
    pub decisions: usize,
    pub expired: usize,
    pub took: Duration,
}

/// Generic over its edges (see [`super::edges`]): the daemon's is `Engine<Limiter,
/// SystemHost>`; the unit tests' an in-memory kernel and a hand-moved clock.
pub struct Engine<K: Kernel = Limiter, H: Host = SystemHost> {
    limiter: K,
    host: H,
    store: RuleStore,
    policy: Policy,
    rates: RateTracker,
    config: Config,
    started: Instant,
    /// Kernel time (jiffies) when the previous poll began: rows not seen since are idle and
    /// skipped, so a poll costs the table read plus work for active sources only.
    previous_poll_jiffies: Option<u64>,
    last_poll: Duration,
    /// Addresses of this host, refreshed now and then: never banned.
    own_addresses: Vec<IpAddr>,
    own_addresses_read: Instant,
    /// Monitor mode: bans decided but not installed, until when (engine clock). The policy
    /// sees them as in force, so a would-be ban is reported once, not every poll.
    would_ban: Vec<(IpNet, Duration)>,
    /// Rows of the kernel table at the last poll.
    last_rows: usize,
    /// Block rules stored and ended since start, for the metrics.
    bans: ByOrigin,
    unbans: Unbans,
    /// The trusted proxy each proxied source came through, for `stats` and `list`.
    via: ViaTable,
    /// What each trusted proxy relayed, for `stats` and the metrics.
    proxy_loads: ProxyLoads,
    /// `[cluster]`: rules and counts shared through etcd.
    cluster: Option<Cluster>,
    /// The configured interfaces as they come and go.
    interfaces: Interfaces,
    /// Rates summed per prefix, for `[policy.prefix]` (`None` with no prefix threshold).
    prefix_rates: Option<PrefixRates>,
    /// Records each source created in the last hour, from Glance's answers.
    created: CreatedRecords,
    /// Each source's peaks and whether it offended, for `limiter recommend`.
    peaks: PeakHistory,
    /// When the peaks were last written to the state directory (host clock).
    peaks_saved: Instant,
}

/// How often the peak history is written (and when the daemon stops): a `kill -9` loses at
/// most this much of it.
const PEAKS_SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the host's own addresses are re-read (they change rarely; a new one is
/// protected from bans within this time).
const OWN_ADDRESSES_REFRESH: Duration = Duration::from_secs(30);

impl Engine {
    /// Takes over a loaded (and attached) program and the opened store, and makes the
    /// kernel's rules the store's (plus the configured allowlist).
    pub fn new(limiter: Limiter, store: RuleStore, config: Config) -> Result<Self, EngineError> {
        Engine::with_edges(limiter, SystemHost, store, config)
    }
}

impl<K: Kernel, H: Host> Engine<K, H> {
    /// [`Engine::new`] on any kernel and host.
    pub fn with_edges(
        limiter: K,
        host: H,
        store: RuleStore,
        config: Config,
    ) -> Result<Self, EngineError> {
        let cluster = match &config.cluster {
            Some(settings) => Some(Cluster::start(
                settings.clone(),
                store.dir(),
                config.poll_interval,
            )?),
            None => None,
        };
        let started = host.now();
        let own_addresses = host.own_addresses();
        let mut engine = Engine {
            limiter,
            host,
            store,
            policy: Policy::new(config.policy.clone()),
            rates: RateTracker::new(config.rate_tracker_capacity()),
            config,
            started,
            previous_poll_jiffies: None,
            last_poll: Duration::ZERO,
            own_addresses,
            own_addresses_read: started,
            would_ban: Vec::new(),
            last_rows: 0,
            bans: ByOrigin::default(),
            unbans: Unbans::default(),
            via: ViaTable::default(),
            proxy_loads: ProxyLoads::default(),
            cluster,
            interfaces: Interfaces::new(Vec::new()),
            prefix_rates: None,
            created: CreatedRecords::default(),
            peaks: PeakHistory::default(),
            peaks_saved: started,
        };
        engine.peaks = load_peaks(engine.store.dir());
        engine.prefix_rates =
            PrefixRates::for_policy(&engine.config.policy, engine.config.rate_tracker_capacity());
        engine.limiter.set_protected_ports(&engine.config.ports)?;
        engine.configure_proxies()?;
        engine.configure_creates()?;
        engine.sync_kernel()?;
        Ok(engine)
    }

    /// Time since the engine started, on the host's clock.
    fn uptime(&self) -> Duration {
        self.host.now().duration_since(self.started)
    }

    /// Writes the peak history if it changed (every minute, and when the daemon stops).
    pub fn save_peaks(&mut self) {
        self.peaks_saved = self.host.now();
        if let Err(e) = self.peaks.save(self.store.dir()) {
            warn!(error = %e, "cannot save the peak history (limiter recommend); retrying in a minute");
        }
    }

    pub fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    pub fn limiter(&self) -> &K {
        &self.limiter
    }

    pub fn limiter_mut(&mut self) -> &mut K {
        &mut self.limiter
    }

    /// Attaches to `iface` (or adopts its pinned attachment) and follows it from then on:
    /// see [`Engine::follow_interfaces`].
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode, LoaderError> {
        let (mode, ifindex) = self.limiter.attach(iface)?;
        self.interfaces
            .add(Tracked::attached_at_start(iface, ifindex, mode, true));
        Ok(mode)
    }

    /// Subscribes to link events, so [`Engine::follow_interfaces`] acts on them at once.
    pub fn watch_interfaces(&mut self) {
        self.interfaces.watch();
    }

    /// Follows the attached interfaces: after a link event, and every second regardless,
    /// notices what disappeared, was renamed, went down or came back, and attaches again to
    /// an interface that returned. Cheap when nothing happened; call it whenever the loop
    /// wakes.
    pub fn follow_interfaces(&mut self) {
        self.interfaces.follow(&mut self.limiter);
    }

    /// One poll: read the table, update rates, expire rules, decide, install, sync.
    pub fn tick(&mut self) -> Result<TickReport, EngineError> {
        // The poll's own cost is measured on the real clock whatever the host's: it is a
        // figure about this machine, not an input to any decision.
        let started = Instant::now();
        let now = self.uptime();
        let wall = self.host.wall();
        if self.host.now().duration_since(self.own_addresses_read) >= OWN_ADDRESSES_REFRESH {
            self.own_addresses = self.host.own_addresses();
            self.own_addresses_read = self.host.now();
        }

        let poll_jiffies = self.limiter.clock()?.jiffies;
        let previous = self.previous_poll_jiffies.replace(poll_jiffies);
        // One pass over the table, a chunk at a time as the kernel hands it over (a million
        // rows are some 140 MB, never held at once): the rows active since the previous poll
        // go to the rate tracker and the via table, the proxies' rows to their loads.
        // Only the sources whose rates reach a threshold are kept for the policy, which
        // decides nothing about the others: a first poll of a million active sources holds no
        // million of anything beyond the tracker.
        let mut poll = self.rates.begin_poll(now);
        let mut reaching: Vec<(IpAddr, Rates)> = Vec::new();
        let mut proxy_rows: HashMap<IpAddr, ProxyRow> = HashMap::new();
        let mut rows_read = 0usize;
        // What the proxies relayed, and which proxy carried each client: tables of their
        // own in the kernel, read only where proxies are trusted.
        let proxying = !self.config.trusted_proxies.is_empty();
        let relays = if proxying {
            self.via.replace(self.limiter.client_via()?);
            self.limiter.proxy_relays()?
        } else {
            HashMap::new()
        };
        // Glance's answers so far (a table of the sources that create images): records
        // created in the last hour, one of the policy's figures. Unreadable, they are left
        // as they were rather than taken for none.
        match self.limiter.create_outcomes() {
            Ok(outcomes) => self
                .created
                .observe(now, outcomes.iter().map(|(addr, o)| (*addr, o.created))),
            Err(e) => warn!(error = %e, "could not read Glance's answers to image creates"),
        }
        let (rates, policy, created) = (&mut self.rates, &self.policy, &self.created);
        let mut prefix_rates = self.prefix_rates.as_mut();
        let peaks = &mut self.peaks;
        self.limiter.for_each_source(&mut |row| {
            rows_read += 1;
            // A row read twice (where two parts of the read meet) is the later reading.
            let proxy = proxied::is_proxy_row(&row);
            if proxy {
                let relayed = relays.get(&row.addr);
                proxy_rows.insert(row.addr, proxied::proxy_row(&row, relayed, previous));
            }
            if previous.is_some_and(|p| row.stats.last_seen < p) {
                return;
            }
            let counts = Counts {
                row_predates_last_poll: previous.is_some_and(|p| row.stats.first_seen < p),
                ..Counts::from(&row.stats)
            };
            let (mut figures, increase) = rates.observe_source_counted(&mut poll, row.addr, counts);
            figures.records_created_last_hour = created.last_hour(row.addr);
            if let Some(prefixes) = prefix_rates.as_deref_mut() {
                prefixes.add(row.addr, &increase);
            }
            // Trusted proxies carry everyone's connections: no measure of one client.
            if !proxy {
                peaks.observe(row.addr, &figures, wall, policy.config());
            }
            if policy.reaches_a_threshold(&figures) {
                reaching.push((row.addr, figures));
            }
        })?;
        // A source read twice: its later figures (the policy takes the first of an address).
        reaching.reverse();
        self.proxy_loads.observe(now, proxy_rows.into_values());
        self.rates.end_poll(poll);
        if let Some(prefixes) = &mut self.prefix_rates {
            prefixes.end_poll(now);
        }

        // A degraded store writes what waits in memory, or finds out writes work again.
        if let Some(Err(e)) = self.store.flush() {
            debug!(error = %e, "rules still not saved; retrying at the next poll");
        }
        if let Some(cluster) = &mut self.cluster {
            cluster.flush_journal();
        }
        let mut kernel_stale = self.apply_cluster_changes()?;
        // A failed write leaves the expiry unsaved (the store says so and retries).
        let (expired, _unsaved) = self.store.expire(wall);
        for rule in &expired {
            if rule.action == Action::Block {
                self.unbans.expired.add(rule.origin, 1);
            }
            info!(
                rule = %rule.prefix,
                action = ?rule.action,
                origin = ?rule.origin,
                "rule expired"
            );
        }
        kernel_stale |= !expired.is_empty();

        self.would_ban.retain(|(_, until)| *until > now);
        // Only sources with new activity can newly cross a threshold; with none, the never-ban
        // set and the bans in force (both built from every rule) are not needed this poll.
        // The other nodes' latest summaries, read once for both uses this poll.
        let peers = self
            .cluster
            .as_ref()
            .map(Cluster::peers)
            .unwrap_or_default();
        let cluster_rates = self.cluster_rates(&peers);
        let prefixes_reaching: Vec<(IpNet, Rates)> = match &self.prefix_rates {
            Some(prefixes) => prefixes
                .iter()
                .filter(|(_, rates)| self.policy.reaches_a_prefix_threshold(rates))
                .collect(),
            None => Vec::new(),
        };
        let decisions =
            if reaching.is_empty() && cluster_rates.is_empty() && prefixes_reaching.is_empty() {
                Vec::new()
            } else {
                // The cluster-wide figure replaces this node's for the sources it covers (it is
                // never lower: it adds the other nodes' counts to this node's).
                let covered: std::collections::HashSet<IpAddr> =
                    cluster_rates.iter().map(|(addr, _)| *addr).collect();
                let active_rates = reaching
                    .iter()
                    .filter(|(addr, _)| covered.is_empty() || !covered.contains(addr))
                    .copied()
                    .chain(cluster_rates.iter().copied());
                let mut in_force = self.active_blocks(wall);
                in_force.extend(self.would_ban.iter().map(|(net, _)| *net));
                let never_ban = self.never_ban(wall);
                let mut decisions = self
                    .policy
                    .evaluate(now, active_rates, &never_ban, &in_force);
                name_cluster_wide(&mut decisions, &cluster_rates);
                // A spread flood: the prefix's sum, without the hosts banned already.
                if let Some(prefixes) = &self.prefix_rates {
                    in_force.extend(decisions.iter().map(|d| d.net));
                    let candidates = prefix_members(prefixes, prefixes_reaching, &self.rates);
                    decisions.extend(
                        self.policy
                            .evaluate_prefixes(now, candidates, &never_ban, &in_force),
                    );
                }
                decisions
            };
        if !decisions.is_empty() {
            kernel_stale |= self.carry_out(&decisions, wall)?;
            if self.config.mode == Mode::Monitor {
                self.would_ban
                    .extend(decisions.iter().map(|d| (d.net, now + d.ttl)));
            }
        }
        if kernel_stale {
            self.sync_kernel()?;
        }
        self.publish_summary(&peers, cluster_rates.len());
        self.peaks.bound(self.policy.config());
        if self.host.now().duration_since(self.peaks_saved) >= PEAKS_SAVE_INTERVAL {
            self.save_peaks();
        }
        self.last_poll = started.elapsed();
        // Where the parallel parts of a large table's read meet, a row can come twice: up to
        // a chunk per part, a few hundredths of the table. A table never holds more than its
        // capacity, so that is as far as the count can be trusted.
        let rows_read = rows_read.min(self.config.source_capacity as usize);
        self.last_rows = rows_read;
        Ok(TickReport {
            rows: rows_read,
            decisions: decisions.len(),
            expired: expired.len(),
            took: self.last_poll,
        })
    }

    /// Logs every decision; in enforce mode stores the bans. Returns whether the store
    /// changed.
    fn carry_out(&mut self, decisions: &[Decision], wall: SystemTime) -> Result<bool, EngineError> {
        let mode = self.config.mode;
        for d in decisions {
            let verb = match mode {
                Mode::Enforce => "ban",
                Mode::Monitor => "would ban (monitor mode)",
            };
            info!(
                source = %d.net,
                metric = d.metric.key(),
                rate = d.observed,
                threshold = d.threshold,
                ttl_secs = d.ttl.as_secs(),
                offence = d.offence,
                reason = %d.reason,
                rule = %format!("block {} on the protected ports for {}", d.net, humantime::format_duration(d.ttl)),
                mode = mode.as_str(),
                "{verb}: {}", d.reason
            );
        }
        for d in decisions {
            self.peaks.offended(d.net, wall);
        }
        if mode == Mode::Monitor {
            return Ok(false);
        }
        let bans: Vec<StoredRule> = decisions
            .iter()
            .map(|d| {
                let rule = d.to_rule(wall);
                StoredRule {
                    prefix: rule.net,
                    action: Action::Block,
                    scope: rule.scope,
                    origin: Origin::Auto,
                    reason: d.reason.clone(),
                    created: wall,
                    expires: rule.expires,
                    node: self.node_name(),
                }
            })
            .collect();
        let keys: Vec<_> = bans.iter().map(StoredRule::key).collect();
        // Bans the disk cannot take are enforced all the same: they (and their journal marks)
        // wait in memory, the store is degraded (status, metrics, log) and the next polls
        // write them.
        let generation = match &mut self.cluster {
            Some(cluster) => cluster.will_change_or_defer(keys.iter().copied()),
            None => 0,
        };
        let (change, unsaved) = self.store.upsert_or_defer(bans)?;
        if let Some(e) = unsaved {
            warn!(
                error = %e,
                bans = change.added.len() + change.updated.len(),
                "bans enforced but not saved yet; written as soon as the rules file can be"
            );
        }
        self.cluster_changed(keys, generation);
        self.bans.add(
            Origin::Auto,
            (change.added.len() + change.updated.len()) as u64,
        );
        Ok(!change.is_noop())
    }

    /// Makes the kernel's tries hold the store's active rules plus the configured allowlist.
    /// What the kernel program needs to attribute trusted proxies' requests: the proxies,
    /// their header, Glance's path prefixes, and the response sent in Glance's place to a
    /// banned client behind them (its Retry-After counts in the kernel's ticks).
    fn configure_proxies(&mut self) -> Result<(), EngineError> {
        let hz = self.limiter.clock()?.hz;
        self.limiter.set_reject_response(hz)?;
        self.limiter
            .set_path_prefixes(&self.config.glance_path_prefixes)?;
        self.limiter
            .set_client_header(self.config.client_address_header)?;
        self.limiter
            .set_trusted_proxies(self.config.trusted_proxies.entries())?;
        Ok(())
    }

    /// What the kernel does with image creates: the budget it holds every source to (the
    /// policy's per-minute threshold, refused over in enforce mode, counted only in monitor
    /// mode), and the recording of each create for Glance's answer.
    fn configure_creates(&mut self) -> Result<(), EngineError> {
        let policy = &self.config.policy;
        let budget = ImageCreateBudget::of_policy(
            policy.image_creates_per_minute,
            policy.image_create_budget,
            self.config.mode == Mode::Enforce,
        );
        let hz = self.limiter.clock()?.hz;
        self.limiter
            .set_image_create_budget(budget.map(|b| b.kernel_config(hz)))?;
        // Glance's answers are counted whatever the mode: the created records are what an
        // operator and `limiter recommend` want to see.
        self.limiter.set_response_counting(true)?;
        Ok(())
    }

    fn sync_kernel(&mut self) -> Result<(), EngineError> {
        let clock = self.limiter.clock()?;
        let mut rules: Vec<KernelRule> = self.store.kernel_rules(clock.wall);
        rules.extend(self.config.allowlist.iter().map(|net| KernelRule {
            net: *net,
            action: Action::Allow,
            scope: Scope::AllPorts,
            expires: None,
        }));
        // Validated on the way into the store and the config; a failure here is a bug, but
        // one that must not take protection down: keep the kernel as it is and say so.
        match rules::compile(&rules, &clock) {
            Ok(compiled) => self.limiter.apply_rules(&compiled)?,
            Err(e) => {
                warn!(error = %e, "a stored rule does not compile; kernel rules left as they were")
            }
        }
        Ok(())
    }

    /// Besides the allowlist and the node itself, the trusted proxies: every client behind
    /// one reaches Glance from its address (connections, and requests without the client
    /// header), so its own counts can reach a threshold, and a ban would cut them all off.
    fn never_ban(&self, wall: SystemTime) -> NeverBan {
        let allow_rules = self
            .store
            .active(wall)
            .filter(|r| r.action == Action::Allow)
            .map(|r| r.prefix);
        NeverBan::new(
            self.config
                .allowlist
                .iter()
                .copied()
                .chain(allow_rules)
                .chain(self.own_addresses.iter().map(|a| IpNet::from(*a)))
                .chain(self.config.trusted_proxies.iter().copied()),
        )
    }

    fn active_blocks(&self, wall: SystemTime) -> PrefixSet {
        self.store
            .active(wall)
            .filter(|r| r.action == Action::Block)
            .map(|r| r.prefix)
            .collect()
    }

    /// Answers one control request. Bad input changes nothing.
    pub fn handle(&mut self, request: Request) -> ResponseLine {
        let outcome = match request {
            Request::Block {
                prefixes,
                ttl_secs,
                reason,
                scope,
                force,
            } => self.add_rules(Action::Block, prefixes, ttl_secs, reason, scope, force),
            Request::Allow {
                prefixes,
                ttl_secs,
                reason,
            } => self.add_rules(
                Action::Allow,
                prefixes,
                ttl_secs,
                reason,
                Scope::AllPorts,
                false,
            ),
            Request::Unblock { prefixes } => self.remove_rules(Action::Block, prefixes),
            Request::Unallow { prefixes } => self.remove_rules(Action::Allow, prefixes),
            Request::List => Ok(Reply::Rules(self.list())),
            Request::Stats { top, sort, filter } => {
                Ok(Reply::Stats(self.stats(top, sort, filter.as_deref())))
            }
            Request::Status => self.status().map(Reply::Status),
            Request::Recommend { percentile, margin } => recommend::recommend(
                &self.peaks,
                self.policy.config(),
                percentile.unwrap_or(recommend::DEFAULT_PERCENTILE),
                margin.unwrap_or(recommend::DEFAULT_MARGIN),
            )
            .map(Reply::Recommendation)
            .map_err(|e| ControlError::new(ErrorKind::BadInput, e.to_string())),
            Request::ClusterStatus => match &self.cluster {
                Some(cluster) => Ok(Reply::Cluster(cluster.status())),
                None => Err(ControlError::new(
                    ErrorKind::BadInput,
                    "this daemon runs alone: its configuration has no [cluster] section \
                     (docs/OPERATIONS.md, \"Several Glance nodes\")"
                        .to_string(),
                )),
            },
        };
        match outcome {
            Ok(reply) => ResponseLine::ok(reply),
            Err(error) => ResponseLine::error(error.kind, error.message),
        }
    }

    fn add_rules(
        &mut self,
        action: Action,
        prefixes: Vec<IpNet>,
        ttl_secs: Option<u64>,
        reason: Option<String>,
        scope: Scope,
        force: bool,
    ) -> Result<Reply, ControlError> {
        let wall = self.host.wall();
        check_prefixes(&prefixes)?;
        if action == Action::Block {
            self.check_not_self(&prefixes)?;
            self.check_not_proxy(&prefixes, force)?;
        }
        let expires = match ttl_secs {
            Some(0) => return Err(bad("--ttl must be positive (for example 30m or 2h)")),
            Some(secs) => Some(
                wall.checked_add(Duration::from_secs(secs))
                    .ok_or_else(|| bad(format!("--ttl of {secs} s is too far in the future")))?,
            ),
            None => None,
        };
        let verb = match action {
            Action::Block => "block",
            Action::Allow => "allow",
        };
        let reason = reason.unwrap_or_else(|| format!("manual {verb}"));
        let batch: Vec<StoredRule> = prefixes
            .iter()
            .map(|prefix| StoredRule {
                prefix: *prefix,
                action,
                scope,
                origin: Origin::Manual,
                reason: reason.clone(),
                created: wall,
                expires,
                node: self.node_name(),
            })
            .collect();
        let keys: Vec<_> = batch.iter().map(StoredRule::key).collect();
        let generation = self.cluster_will_change(&keys).map_err(journal_error)?;
        let change = self.store.upsert(batch).map_err(store_error)?;
        self.cluster_changed(keys, generation);
        if action == Action::Block {
            for prefix in &prefixes {
                self.peaks.offended(*prefix, wall);
            }
            self.bans.add(
                Origin::Manual,
                (change.added.len() + change.updated.len()) as u64,
            );
        }
        info!(
            action = verb,
            added = change.added.len(),
            updated = change.updated.len(),
            unchanged = change.unchanged.len(),
            reason = %reason,
            ttl_secs = ?ttl_secs,
            "manual rules"
        );
        self.after_change(&change)?;
        Ok(Reply::Changed(to_rule_change(change)))
    }

    fn remove_rules(
        &mut self,
        action: Action,
        prefixes: Vec<IpNet>,
    ) -> Result<Reply, ControlError> {
        check_prefixes(&prefixes)?;
        let keys: Vec<_> = prefixes.iter().map(|p| (p.trunc(), action)).collect();
        let generation = self.cluster_will_change(&keys).map_err(journal_error)?;
        let change = self.store.remove(&prefixes, action).map_err(store_error)?;
        self.cluster_changed(keys, generation);
        if action == Action::Block {
            for rule in &change.removed {
                self.unbans.removed.add(rule.origin, 1);
            }
            // Unblocked is forgiven: what it spent of its image-create budget before the ban
            // would otherwise keep its creates refused. Not worth failing the unblock over.
            if let Err(e) = self.limiter.forgive_budgets(&prefixes) {
                warn!(error = %e, "could not reset the budgets of the unblocked sources");
            }
        }
        info!(
            action = ?action,
            removed = change.removed.len(),
            absent = change.absent.len(),
            "manual removal"
        );
        self.after_change(&change)?;
        Ok(Reply::Changed(to_rule_change(change)))
    }

    /// Mirrors a store change into the kernel at once: the very next packet sees it.
    fn after_change(&mut self, change: &Change) -> Result<(), ControlError> {
        if change.is_noop() {
            return Ok(());
        }
        self.sync_kernel().map_err(|e| {
            ControlError::new(ErrorKind::Operational,
                format!("the rule is stored but the kernel refused it: {e}; it will be retried at the next poll"),
            )
        })
    }

    /// A manual block must not cut the node off from itself.
    fn check_not_self(&self, prefixes: &[IpNet]) -> Result<(), ControlError> {
        let own = NeverBan::new(self.own_addresses.iter().map(|a| IpNet::from(*a)));
        for prefix in prefixes {
            if own.overlaps(prefix) {
                return Err(bad(format!(
                    "{prefix} covers loopback or an address of this node; blocking it would cut \
                     Glance off from local clients. Block a narrower prefix"
                )));
            }
        }
        Ok(())
    }

    /// A manual block must not cut off the clients behind a trusted proxy, unless the operator
    /// forces it; then the log says what was cut off.
    fn check_not_proxy(&self, prefixes: &[IpNet], force: bool) -> Result<(), ControlError> {
        match self.config.trusted_proxies.check_block(prefixes) {
            Ok(()) => Ok(()),
            Err(refused) if force => {
                let overlaps: Vec<String> =
                    refused.overlaps.iter().map(ToString::to_string).collect();
                warn!(
                    overlaps = %overlaps.join("; "),
                    "forced block of trusted proxies: every client behind them is cut off"
                );
                Ok(())
            }
            Err(refused) => Err(bad(refused.to_string())),
        }
    }

    /// `stats`: without `sort` and `filter`, every source busiest first (the first `top`);
    /// with either, the first `top` of those matching `filter` in `sort` order (the busiest
    /// first without one), and the matches counted by state. The state of every matching
    /// source is then needed before selecting, since the screen pins by it.
    fn stats(&self, top: Option<usize>, sort: Option<SourceOrder>, filter: Option<&str>) -> Stats {
        let wall = self.host.wall();
        let never_ban = self.never_ban(wall);
        // Bans of single addresses (almost all of them) by address, the few wider prefixes
        // scanned: matching every listed source against every ban made `stats` cost sources ×
        // bans (0.8 s for 10,000 of 100,000 sources with 10,000 bans, on the engine thread).
        let mut host_blocks: HashMap<IpAddr, Vec<&StoredRule>> = HashMap::new();
        let mut net_blocks: Vec<&StoredRule> = Vec::new();
        for rule in self
            .store
            .active(wall)
            .filter(|r| r.action == Action::Block)
        {
            if rule.prefix.prefix_len() == rule.prefix.max_prefix_len() {
                host_blocks
                    .entry(rule.prefix.addr())
                    .or_default()
                    .push(rule);
            } else {
                net_blocks.push(rule);
            }
        }
        let busiest_first = |(a_addr, a): &(IpAddr, Rates), (b_addr, b): &(IpAddr, Rates)| {
            b.image_creates_last_minute
                .cmp(&a.image_creates_last_minute)
                .then(
                    b.new_connections_in_window
                        .cmp(&a.new_connections_in_window),
                )
                .then(b.packets_per_second.total_cmp(&a.packets_per_second))
                .then(a_addr.cmp(b_addr))
        };
        // A source's state, and the end of its ban (`None`: until removed, or not banned).
        let state_of = |address: IpAddr, rates: &Rates| -> (SourceState, Option<SystemTime>) {
            let covering: Vec<&StoredRule> = host_blocks
                .get(&address)
                .into_iter()
                .flatten()
                .chain(net_blocks.iter().filter(|r| r.prefix.contains(&address)))
                .copied()
                .collect();
            if never_ban.contains(address) {
                return (SourceState::Allowed, None);
            }
            if !covering.is_empty() {
                let until = if covering.iter().any(|r| r.expires.is_none()) {
                    None
                } else {
                    covering.iter().filter_map(|r| r.expires).max()
                };
                return (SourceState::Banned, until);
            }
            let over = self.would_ban.iter().any(|(net, _)| net.contains(&address))
                || self.policy.reaches_a_threshold(rates);
            if over {
                (SourceState::OverThreshold, None)
            } else {
                (SourceState::Ok, None)
            }
        };
        // Small (sources that create images), and read only for this answer.
        let outcomes = self.limiter.create_outcomes().unwrap_or_else(|e| {
            warn!(error = %e, "could not read what became of image creates; stats show none");
            HashMap::new()
        });
        let view_of = |address: IpAddr, rates: RatesView, state, until: Option<SystemTime>| {
            let totals = self
                .rates
                .last_counts(address)
                .map(|counts| totals(&counts))
                .unwrap_or_default();
            SourceView {
                address,
                state,
                rates,
                totals,
                banned_until: if state == SourceState::Banned {
                    until
                } else {
                    None
                },
                via: self.via.get(address),
                creates: outcomes.get(&address).map(|o| CreatesView {
                    created: o.created,
                    failed: o.failed,
                    over_budget: o.over_budget,
                }),
            }
        };
        // Trusted proxies are listed apart, with what they relayed: never among the offenders.
        let trusted = &self.config.trusted_proxies;
        let is_proxy = |addr: IpAddr| trusted.contains(addr) || self.proxy_loads.contains(addr);
        let no_proxies = trusted.is_empty() && self.proxy_loads.is_empty();
        // Every source's rates, with the records it created (from another tracker).
        let tracked = || {
            self.rates.iter().map(|(addr, mut rates)| {
                rates.records_created_last_hour = self.created.last_hour(addr);
                (addr, rates)
            })
        };
        let (views, matched) = if sort.is_none() && filter.is_none() {
            let mut sources: Vec<(IpAddr, Rates)> = if no_proxies {
                tracked().collect()
            } else {
                tracked().filter(|(addr, _)| !is_proxy(*addr)).collect()
            };
            // Only the busiest `top` are sorted: a partial selection first, so a client asking
            // for 10,000 of 100,000 sources does not sort them all on the engine thread.
            query::select_first(&mut sources, top, busiest_first);
            let views = sources
                .into_iter()
                .map(|(address, rates)| {
                    let (state, until) = state_of(address, &rates);
                    view_of(address, rates_view(&rates), state, until)
                })
                .collect();
            (views, None)
        } else {
            let filter = AddressFilter::parse(filter.unwrap_or_default());
            let order = sort.unwrap_or(SourceOrder {
                by: SortKey::Rate(crate::metric::Metric::ImageCreatesPerMinute),
                descending: true,
                pin_important: false,
            });
            let candidates = tracked().filter(|(addr, _)| no_proxies || !is_proxy(*addr));
            let (first, counts) =
                query::select_sources(candidates, &filter, order, top, |address, rates| {
                    let (state, until) = state_of(address, rates);
                    (rates_view(rates), state, until)
                });
            let views = first
                .into_iter()
                .map(|r| view_of(r.address, r.rates, r.state, r.banned_until))
                .collect();
            (views, Some(counts))
        };
        let (proxies, unseen_proxies) = proxied::proxy_section(
            &self.proxy_loads,
            trusted,
            |addr| Some((self.rates.rates(addr)?, self.rates.last_counts(addr)?)),
            |addr| {
                host_blocks.contains_key(&addr)
                    || net_blocks.iter().any(|r| r.prefix.contains(&addr))
            },
        );
        Stats {
            tracked_sources: self.rates.len(),
            sources: views,
            proxies,
            unseen_proxies,
            matched,
        }
    }

    /// Every rule; and for blocks of single addresses, the trusted proxy the source last came
    /// through, while the daemon still tracks it.
    fn list(&self) -> RuleList {
        let rules = self.store.rules().to_vec();
        let via = if self.via.is_empty() {
            Default::default()
        } else {
            rules
                .iter()
                .filter(|r| {
                    r.action == Action::Block && r.prefix.prefix_len() == r.prefix.max_prefix_len()
                })
                .filter_map(|r| Some((r.prefix, self.via.get(r.prefix.addr())?)))
                .collect()
        };
        RuleList { rules, via }
    }

    /// The state the metrics report, as of now. Kernel counters that cannot be read are
    /// `None` (and logged): the metrics keep their previous values.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let kernel_counters = match self.limiter.counters() {
            Ok(counters) => Some(counters.iter().collect()),
            Err(e) => {
                warn!(error = %e, "cannot read the kernel counters for the metrics");
                None
            }
        };
        let mut rules = ActiveRules {
            allow_config: self.config.allowlist.len() as u64,
            ..ActiveRules::default()
        };
        for rule in self.store.active(self.host.wall()) {
            match rule.action {
                Action::Block => rules.block.add(rule.origin, 1),
                Action::Allow => rules.allow.add(rule.origin, 1),
            }
        }
        Snapshot {
            mode: self.config.mode,
            kernel_counters,
            tracked_sources: self.rates.len() as u64,
            table_rows: self.last_rows as u64,
            rules,
            bans: self.bans,
            unbans: self.unbans,
            store_writes: self.store.write_counts(),
            store_trouble: self.store.trouble().map(|trouble| StoreTrouble {
                since: trouble
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                unsaved: trouble.unsaved,
            }),
            attachments: self
                .interfaces
                .tracked()
                .iter()
                .map(Tracked::metric)
                .collect(),
            proxies: proxied::relayed_by_entry(&self.proxy_loads, &self.config.trusted_proxies),
            cluster: self.cluster.as_ref().map(|cluster| {
                let (writes, bytes_written) = cluster.writes();
                crate::metrics::ClusterMetrics {
                    degraded_since: cluster.degraded_since().map(|since| {
                        since
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    }),
                    nodes: cluster.health().nodes_seen as u64,
                    writes,
                    bytes_written,
                }
            }),
        }
    }

    fn status(&self) -> Result<Status, ControlError> {
        let wall = self.host.wall();
        let counters = self.limiter.counters().map_err(|e| {
            ControlError::new(
                ErrorKind::Operational,
                format!("cannot read the kernel counters: {e}"),
            )
        })?;
        let mut rules = RuleCounts::default();
        for rule in self.store.active(wall) {
            match (rule.action, rule.origin) {
                (Action::Block, Origin::Auto) => rules.block_auto += 1,
                (Action::Block, Origin::Manual) => rules.block_manual += 1,
                (Action::Allow, _) => rules.allow += 1,
            }
        }
        Ok(Status {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: self.config.mode,
            interfaces: self
                .interfaces
                .tracked()
                .iter()
                .map(Tracked::view)
                .collect(),
            ports: self.config.ports.clone(),
            uptime_secs: self.uptime().as_secs(),
            poll_interval_ms: self.config.poll_interval.as_millis() as u64,
            last_poll_ms: self.last_poll.as_secs_f64() * 1000.0,
            tracked_sources: self.rates.len(),
            rules,
            counters: counters
                .iter()
                .map(|(c, v): (Counter, u64)| (c.name().to_owned(), v))
                .collect::<BTreeMap<_, _>>(),
            cluster: self.cluster.as_ref().map(Cluster::health),
            store_error: self.store.trouble().map(|trouble| StoreErrorView {
                since: rfc3339(trouble.since),
                failures: trouble.failures,
                error: trouble.error.clone(),
                unsaved: trouble.unsaved,
            }),
        })
    }
}

/// The cluster's side of the engine: what etcd sent, what this node publishes, and the
/// journal marks around each local rule change.
impl<K: Kernel, H: Host> Engine<K, H> {
    /// Applies the rules other nodes changed (and a reconciliation after an outage), and
    /// brings the kernel in step. Called every poll and between polls, so a rule made
    /// elsewhere applies here within a fraction of a second.
    pub fn apply_cluster(&mut self) -> Result<(), EngineError> {
        if self.apply_cluster_changes()? {
            self.sync_kernel()?;
        }
        Ok(())
    }

    /// Whether the store changed.
    fn apply_cluster_changes(&mut self) -> Result<bool, EngineError> {
        match &mut self.cluster {
            Some(cluster) => Ok(cluster.apply_incoming(&mut self.store)?),
            None => Ok(false),
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    fn node_name(&self) -> Option<String> {
        self.cluster.as_ref().map(|c| c.node().to_string())
    }

    fn cluster_will_change(
        &mut self,
        keys: &[crate::store::RuleKey],
    ) -> Result<u64, cluster::journal::JournalError> {
        match &mut self.cluster {
            Some(cluster) => cluster.will_change(keys.iter().copied()),
            None => Ok(0),
        }
    }

    fn cluster_changed(&mut self, keys: Vec<crate::store::RuleKey>, generation: u64) {
        if let Some(cluster) = &mut self.cluster {
            cluster.changed(&self.store, keys, generation);
        }
    }

    /// Cluster-wide rates of the sources the other Glance nodes listed (none alone, on an
    /// edge node, or while etcd is unreachable).
    fn cluster_rates(&self, peers: &[Summary]) -> Vec<(IpAddr, Rates)> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        if cluster.role() != cluster::Role::Glance {
            return Vec::new();
        }
        summary::combine(
            cluster.settings(),
            |addr| self.rates.rates(addr),
            peers.iter(),
        )
    }

    fn publish_summary(&mut self, peers: &[Summary], cluster_sources: usize) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let peers_seen = peers
            .iter()
            .filter(|p| p.role == cluster::Role::Glance)
            .count();
        let header = cluster.next_summary(self.rates.len() as u64);
        let fraction = cluster.publish_fraction();
        let built = summary::build(
            cluster.settings(),
            self.policy.config(),
            header,
            fraction,
            self.rates.iter(),
        );
        cluster.publish(built, peers_seen, cluster_sources);
    }
}

/// The peak history saved in `dir`. One that cannot be read is moved aside (named in the log)
/// and the history starts empty: it is evidence for tuning, not a rule.
fn load_peaks(dir: &std::path::Path) -> PeakHistory {
    match PeakHistory::load(dir) {
        Ok(history) => history,
        Err(e) => {
            let path = dir.join(recommend::HISTORY_FILE);
            let aside = dir.join(format!("{}.unreadable", recommend::HISTORY_FILE));
            let moved = std::fs::rename(&path, &aside);
            warn!(
                error = %e,
                kept_as = %aside.display(),
                moved = moved.is_ok(),
                "the peak history cannot be read; starting a new one"
            );
            PeakHistory::default()
        }
    }
}

/// The prefixes whose sums reach a threshold, each with the sources that added to it and
/// their figures (those the tracker still knows).
fn prefix_members(
    prefixes: &PrefixRates,
    reaching: Vec<(IpNet, Rates)>,
    tracked: &RateTracker,
) -> Vec<PrefixCandidate> {
    reaching
        .into_iter()
        .map(|(prefix, sum)| PrefixCandidate {
            prefix,
            sum,
            sources: prefixes
                .members(prefix)
                .filter_map(|addr| Some((addr, tracked.rates(addr)?)))
                .collect(),
        })
        .collect()
}

/// A ban decided on a rate summed over the nodes says so: no single node saw it.
fn name_cluster_wide(decisions: &mut [Decision], cluster_rates: &[(IpAddr, Rates)]) {
    for decision in decisions {
        let host = decision.net.prefix_len() == decision.net.max_prefix_len();
        let summed = cluster_rates
            .binary_search_by_key(&decision.net.addr(), |(addr, _)| *addr)
            .is_ok();
        if host && summed {
            decision.reason = format!("{} across the cluster's Glance nodes", decision.reason);
        }
    }
}

fn journal_error(error: cluster::journal::JournalError) -> ControlError {
    ControlError::new(
        ErrorKind::Operational,
        format!("nothing changed: the cluster journal cannot be written: {error}"),
    )
}

fn check_prefixes(prefixes: &[IpNet]) -> Result<(), ControlError> {
    if prefixes.is_empty() {
        return Err(bad("no addresses given: name at least one IP or CIDR"));
    }
    for prefix in prefixes {
        if prefix.trunc() != *prefix {
            return Err(bad(format!(
                "{prefix} has host bits set; did you mean {}?",
                prefix.trunc()
            )));
        }
        rules::validate_net(prefix).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

fn bad(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::BadInput, message.into())
}

fn store_error(error: StoreError) -> ControlError {
    match error {
        StoreError::InvalidRule { .. } => ControlError::new(ErrorKind::BadInput, error.to_string()),
        other => ControlError::new(ErrorKind::Operational, other.to_string()),
    }
}

fn to_rule_change(change: Change) -> RuleChange {
    RuleChange {
        added: change.added,
        updated: change.updated,
        unchanged: change.unchanged,
        removed: change.removed,
        absent: change
            .absent
            .into_iter()
            .map(|(prefix, _)| prefix)
            .collect(),
    }
}

fn rates_view(rates: &Rates) -> crate::control::protocol::RatesView {
    crate::control::protocol::RatesView {
        new_connections_per_second: rates.new_connections_per_second(),
        image_creates_per_minute: rates.image_creates_last_minute,
        image_creates_per_hour: rates.image_creates_last_hour,
        other_writes_per_minute: rates.other_writes_last_minute,
        records_created_per_hour: rates.records_created_last_hour,
        reads_per_second: rates.reads_per_second,
        packets_per_second: rates.packets_per_second,
        bytes_per_second: rates.bytes_per_second,
    }
}

fn totals(counts: &Counts) -> Totals {
    Totals {
        syns: counts.syns,
        packets: counts.packets,
        bytes: counts.bytes,
        image_create: counts.image_create,
        other_write: counts.other_write,
        read: counts.read,
    }
}
