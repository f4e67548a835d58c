//! What the engine reports after each poll, and how it becomes metric families.
//!
//! The engine keeps plain totals (bans, unbans, store writes) and the kernel keeps its own
//! counters; a [`Snapshot`] carries their current values, and [`Latest`] encodes the last one
//! at each scrape. Mirroring totals this way, rather than incrementing client-side counters,
//! keeps the engine free of any metrics type and makes a kernel counter's reset (after
//! `limiter detach`) show as a reset, which Prometheus's `rate()` expects.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use limiter_common::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::{config::Mode, loader::AttachMode, store::Origin, store::WriteCounts};

/// Totals by who asked for a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByOrigin {
    pub auto: u64,
    pub manual: u64,
}

impl ByOrigin {
    pub fn add(&mut self, origin: Origin, n: u64) {
        match origin {
            Origin::Auto => self.auto += n,
            Origin::Manual => self.manual += n,
        }
    }

    fn labelled(&self) -> [(&'static str, u64); 2] {
        [("auto", self.auto), ("manual", self.manual)]
    }
}

/// Block rules that ended, by the origin of the rule and why it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unbans {
    /// Their deadline passed.
    pub expired: ByOrigin,
    /// `limiter unblock`.
    pub removed: ByOrigin,
}

/// Rules in force, by action and by who asked for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveRules {
    pub block: ByOrigin,
    pub allow: ByOrigin,
    /// `allowlist` entries of the configuration.
    pub allow_config: u64,
}

/// What the trusted proxies of one `trusted_proxies` entry relayed: the `proxied` and
/// `unattributed` counters of their kernel rows, summed. Labelled by the entry as configured
/// (a proxy's address, or a prefix of proxies), so the series are the configuration's, never
/// one per address a flood could make up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyRelayed {
    /// The entry as written: `198.51.100.2`, `198.51.100.0/28`.
    pub proxy: String,
    /// Requests relayed and counted as the client the proxy named.
    pub relayed: u64,
    /// Requests relayed whose client could not be read.
    pub unattributed: u64,
}

/// One configured interface: whether the program is on a device of that name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceMetric {
    pub name: String,
    /// The mode of the current attachment, else of the last one (so the series stays the
    /// same while the interface is missing, at 0).
    pub mode: AttachMode,
    pub attached: bool,
    /// Attachments after the start (the interface came back).
    pub reattachments: u64,
}

/// The cluster as this node sees it (with `[cluster]` only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// Unix time (seconds) since when etcd cannot be reached; `None` when it can (or has not
    /// been tried yet).
    pub degraded_since: Option<u64>,
    /// Nodes seen: this one and those whose summaries arrived.
    pub nodes: u64,
    /// Writes to etcd (puts, transactions, lease grants and keep-alives) since the start.
    pub writes: u64,
    pub bytes_written: u64,
}

/// A degraded rule store: its last write failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreTrouble {
    /// Unix time of the first failed write in a row.
    pub since: u64,
    /// Rules in memory and in the kernel wait to be written.
    pub unsaved: bool,
}

/// The daemon's state after one poll.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub mode: Mode,
    /// The program's global counters summed over CPUs; `None` when they could not be read,
    /// in which case the previous values stay.
    pub kernel_counters: Option<Vec<(Counter, u64)>>,
    /// Sources in the daemon's rate tracker.
    pub tracked_sources: u64,
    /// Rows of the kernel's per-source table at the last poll.
    pub table_rows: u64,
    pub rules: ActiveRules,
    /// Block rules stored (added or changed); monitor mode stores none.
    pub bans: ByOrigin,
    pub unbans: Unbans,
    pub store_writes: WriteCounts,
    /// `Some` while the rules file cannot be written.
    pub store_trouble: Option<StoreTrouble>,
    /// Every configured interface, attached or not.
    pub attachments: Vec<InterfaceMetric>,
    /// One per `trusted_proxies` entry, in the configuration's order.
    pub proxies: Vec<ProxyRelayed>,
    /// `None` without `[cluster]`: then no cluster family is exported.
    pub cluster: Option<ClusterMetrics>,
}

/// Where a kernel counter goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelFamily {
    Passed(&'static str),
    Dropped(&'static str),
    SourcesInserted,
    SourceInsertFailures,
    /// A trusted proxy's segment the program rewrote: the 429 sent in Glance's place, or the
    /// reset that closes Glance's side afterwards.
    ProxySegments(&'static str),
    /// A trusted proxy's request, by whether its client could be read.
    ProxyRequests(&'static str),
    ProxyHeaders,
    /// An image create over its source's budget (or a segment after one), by what the
    /// program did: answered with 429, the reset that followed, or only counted (monitor).
    OverBudget(&'static str),
    /// Glance's answers to image creates, by outcome: created (2xx) or failed.
    CreateAnswers(&'static str),
}

/// Every counter has a place: a new `Counter` variant does not compile until it gets one.
fn kernel_family(counter: Counter) -> KernelFamily {
    use KernelFamily::*;
    match counter {
        Counter::PassProtected => Passed("protected"),
        Counter::PassAllowed => Passed("allowed"),
        Counter::PassOtherPort => Passed("other_port"),
        Counter::PassNotTcp => Passed("not_tcp"),
        Counter::PassNotIp => Passed("not_ip"),
        Counter::PassVlanDepth => Passed("vlan_depth"),
        Counter::PassFragment => Passed("fragment"),
        Counter::PassTruncated => Passed("truncated"),
        Counter::PassMalformed => Passed("malformed"),
        Counter::PassExtHeaderLimit => Passed("ext_header_limit"),
        Counter::DropBlocked => Dropped("blocked"),
        Counter::DropBlockedAnyPort => Dropped("blocked_any_port"),
        Counter::SourceNew => SourcesInserted,
        Counter::SourceInsertFailed => SourceInsertFailures,
        Counter::RejectProxied => ProxySegments("answered"),
        Counter::ResetProxied => ProxySegments("reset"),
        Counter::DropProxied => Dropped("proxied"),
        Counter::ProxiedRequest => ProxyRequests("client"),
        Counter::UnattributedRequest => ProxyRequests("unattributed"),
        Counter::ProxyHeader => ProxyHeaders,
        Counter::RejectOverBudget => OverBudget("answered"),
        Counter::ResetOverBudget => OverBudget("reset"),
        Counter::DropOverBudget => Dropped("over_budget"),
        Counter::OverBudgetObserved => OverBudget("observed"),
        Counter::CreateSucceeded => CreateAnswers("created"),
        Counter::CreateFailed => CreateAnswers("failed"),
    }
}

/// The last snapshot, shared between the engine thread (which replaces it) and the scrape
/// (which copies it out): the lock is held for a move or a clone, never across I/O.
#[derive(Clone, Debug, Default)]
pub struct Latest(Arc<Mutex<Snapshot>>);

impl Latest {
    pub fn replace(&self, mut snapshot: Snapshot) {
        let mut latest = self.lock();
        if snapshot.kernel_counters.is_none() {
            snapshot.kernel_counters = latest.kernel_counters.take();
        }
        *latest = snapshot;
    }

    pub fn get(&self) -> Snapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A snapshot is replaced whole, so a panic elsewhere cannot leave it half written.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collector for Latest {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode(&self.get(), &mut encoder)
    }
}

fn encode(s: &Snapshot, encoder: &mut DescriptorEncoder) -> fmt::Result {
    // Every state, 1 for the current one: an alert can test for either without absent().
    let modes: Vec<_> = [Mode::Enforce, Mode::Monitor]
        .into_iter()
        .map(|m| ([("mode", m.as_str())], u64::from(m == s.mode)))
        .collect();
    gauges(
        encoder,
        "mode",
        "1 for the daemon's mode: enforce installs bans, monitor only logs them.",
        &modes,
    )?;

    let kernel = s.kernel_counters.as_deref().unwrap_or_default();
    let of = |wanted: fn(KernelFamily) -> Option<&'static str>| -> Vec<([(&str, &str); 1], u64)> {
        kernel
            .iter()
            .filter_map(|(c, v)| wanted(kernel_family(*c)).map(|reason| ([("reason", reason)], *v)))
            .collect()
    };
    let passed = of(|f| match f {
        KernelFamily::Passed(reason) => Some(reason),
        _ => None,
    });
    let dropped = of(|f| match f {
        KernelFamily::Dropped(reason) => Some(reason),
        _ => None,
    });
    let proxy_segments = of(|f| match f {
        KernelFamily::ProxySegments(action) => Some(action),
        _ => None,
    });
    let over_budget = of(|f| match f {
        KernelFamily::OverBudget(action) => Some(action),
        _ => None,
    });
    let create_answers: Vec<_> = kernel
        .iter()
        .filter_map(|(c, v)| match kernel_family(*c) {
            KernelFamily::CreateAnswers(outcome) => Some(([("outcome", outcome)], *v)),
            _ => None,
        })
        .collect();
    let proxy_requests: Vec<_> = kernel
        .iter()
        .filter_map(|(c, v)| match kernel_family(*c) {
            KernelFamily::ProxyRequests(attribution) => Some(([("attribution", attribution)], *v)),
            _ => None,
        })
        .collect();
    let single = |wanted: KernelFamily| kernel.iter().find(|(c, _)| kernel_family(*c) == wanted);
    if !kernel.is_empty() {
        counters(
            encoder,
            "packets_passed",
            "Packets the XDP program passed, by reason.",
            &passed,
        )?;
        counters(
            encoder,
            "packets_dropped",
            "Packets the XDP program dropped, by reason: blocked (TCP to a protected port from \
             a banned source), blocked_any_port (any packet under an all-ports block), proxied \
             (a banned client's request through a trusted proxy that could not be answered), \
             over_budget (a direct client's create over budget that could not be answered).",
            &dropped,
        )?;
        counters(
            encoder,
            "over_budget_segments",
            "Image creates over their source's kernel budget, by what the XDP program did (the \
             reason label): answered (429 sent in Glance's place), observed (monitor mode: \
             passed, counted); and reset (a direct client's next segment on that connection, \
             turned into a reset that closes Glance's socket).",
            &over_budget,
        )?;
        counters(
            encoder,
            "proxy_segments_rewritten",
            "Segments from trusted proxies the XDP program rewrote, by reason: answered (a \
             banned client's request answered with 429 in Glance's place), reset (the next \
             segment of that connection, turned into a reset that closes Glance's socket).",
            &proxy_segments,
        )?;
        counters(
            encoder,
            "image_create_answers",
            "Glance's answers to the image creates it was passed, read on the way out, by \
             outcome: created (a 2xx status: a record was added), failed (any other final \
             status: 400, 401, 403, 409, 413, 5xx).",
            &create_answers,
        )?;
        counters(
            encoder,
            "proxy_requests",
            "Requests from trusted proxies, by attribution: client (counted as the client the \
             proxy names), unattributed (no readable client; counted apart, never as the proxy).",
            &proxy_requests,
        )?;
    }
    if let Some((_, v)) = single(KernelFamily::ProxyHeaders) {
        counter(
            encoder,
            "proxy_protocol_headers",
            "PROXY protocol headers (v1 or v2) read at the start of trusted proxies' connections.",
            *v,
        )?;
    }
    if let Some((_, v)) = single(KernelFamily::SourcesInserted) {
        counter(
            encoder,
            "sources_inserted",
            "Sources that entered the kernel's per-source table.",
            *v,
        )?;
    }
    if let Some((_, v)) = single(KernelFamily::SourceInsertFailures) {
        counter(
            encoder,
            "source_insert_failures",
            "New sources the kernel's per-source table could not take (not counted).",
            *v,
        )?;
    }

    gauge(
        encoder,
        "tracked_sources",
        "Sources whose rates the daemon tracks.",
        s.tracked_sources,
    )?;
    gauge(
        encoder,
        "source_table_rows",
        "Rows of the kernel's per-source table at the last poll.",
        s.table_rows,
    )?;

    let mut rules = Vec::new();
    for (action, by_origin) in [("block", s.rules.block), ("allow", s.rules.allow)] {
        for (origin, n) in by_origin.labelled() {
            rules.push(([("action", action), ("origin", origin)], n));
        }
    }
    rules.push((
        [("action", "allow"), ("origin", "config")],
        s.rules.allow_config,
    ));
    gauges(
        encoder,
        "active_rules",
        "Rules in force, by action and origin (auto: the policy; manual: an operator; config: \
         the allowlist).",
        &rules,
    )?;

    let bans: Vec<_> = s
        .bans
        .labelled()
        .into_iter()
        .map(|(origin, n)| ([("origin", origin)], n))
        .collect();
    counters(
        encoder,
        "bans",
        "Block rules stored (new or changed), by origin.",
        &bans,
    )?;
    let mut unbans = Vec::new();
    for (cause, by_origin) in [("expired", s.unbans.expired), ("removed", s.unbans.removed)] {
        for (origin, n) in by_origin.labelled() {
            unbans.push(([("origin", origin), ("cause", cause)], n));
        }
    }
    counters(
        encoder,
        "unbans",
        "Block rules that ended, by the rule's origin and cause (expired, removed).",
        &unbans,
    )?;

    counter(
        encoder,
        "rule_store_writes",
        "Writes of the rules file, failed or not.",
        s.store_writes.attempts,
    )?;
    counter(
        encoder,
        "rule_store_write_failures",
        "Writes of the rules file that failed (rules not saved, or maybe not durable).",
        s.store_writes.failures,
    )?;
    gauge(
        encoder,
        "rule_store_degraded",
        "1 while the rules file cannot be written (full disk, read-only state directory): the \
         kernel keeps enforcing, the daemon retries every poll; 0 once a write succeeds.",
        u64::from(s.store_trouble.is_some()),
    )?;
    gauge(
        encoder,
        "rule_store_degraded_since_seconds",
        "Unix time of the first failed write while the rule store is degraded; 0 when it is not.",
        s.store_trouble.map_or(0, |t| t.since),
    )?;
    gauge(
        encoder,
        "rule_store_unsaved",
        "1 while rules in force (automatic bans, expiries) are only in memory and the kernel, \
         waiting for the rules file to be writable; a restart then would lose them.",
        u64::from(s.store_trouble.is_some_and(|t| t.unsaved)),
    )?;

    if !s.proxies.is_empty() {
        let relayed: Vec<_> = s
            .proxies
            .iter()
            .map(|p| ([("proxy", p.proxy.as_str())], p.relayed))
            .collect();
        counters(
            encoder,
            "proxy_relayed_requests",
            "Requests a trusted proxy relayed that were counted as the client it named, by \
             trusted_proxies entry (summed over the proxies of a prefix).",
            &relayed,
        )?;
        let unattributed: Vec<_> = s
            .proxies
            .iter()
            .map(|p| ([("proxy", p.proxy.as_str())], p.unattributed))
            .collect();
        counters(
            encoder,
            "proxy_unattributed_requests",
            "Requests a trusted proxy relayed whose client could not be read (counted apart, \
             never as the proxy), by trusted_proxies entry.",
            &unattributed,
        )?;
    }

    if let Some(cluster) = &s.cluster {
        encode_cluster(cluster, encoder)?;
    }

    let attached: Vec<_> = s
        .attachments
        .iter()
        .map(|i| {
            let labels = [("interface", i.name.as_str()), ("mode", i.mode.as_str())];
            (labels, u64::from(i.attached))
        })
        .collect();
    gauges(
        encoder,
        "interface_attached",
        "1 for each configured interface the program is attached to, 0 while it is missing, \
         renamed or failing, with its XDP mode (native or generic; the last one while 0).",
        &attached,
    )?;
    let reattachments: Vec<_> = s
        .attachments
        .iter()
        .map(|i| ([("interface", i.name.as_str())], i.reattachments))
        .collect();
    counters(
        encoder,
        "interface_reattachments",
        "Attachments after the start, per configured interface: each time it came back \
         (re-created, or a new device under its name).",
        &reattachments,
    )
}

fn encode_cluster(cluster: &ClusterMetrics, encoder: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        encoder,
        "cluster_degraded",
        "1 while etcd cannot be reached: rules stay, decisions use this node's counts, changes \
         wait to be sent; 0 otherwise.",
        u64::from(cluster.degraded_since.is_some()),
    )?;
    gauge(
        encoder,
        "cluster_degraded_since_seconds",
        "Unix time since when the cluster is degraded; 0 when it is not.",
        cluster.degraded_since.unwrap_or(0),
    )?;
    gauge(
        encoder,
        "cluster_nodes",
        "Nodes seen: this one and those whose summaries arrived.",
        cluster.nodes,
    )?;
    counter(
        encoder,
        "cluster_writes",
        "Writes to etcd (puts, transactions, lease grants and keep-alives).",
        cluster.writes,
    )?;
    counter(
        encoder,
        "cluster_bytes_written",
        "Bytes of the writes to etcd.",
        cluster.bytes_written,
    )
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_counter_has_a_family_and_reasons_are_distinct() {
        let mut reasons = Vec::new();
        for counter in Counter::ALL {
            match kernel_family(counter) {
                KernelFamily::Passed(r) => {
                    assert!(counter.is_verdict() && counter.name().starts_with("pass_"));
                    assert_eq!(counter.name(), format!("pass_{r}"));
                    reasons.push(r);
                }
                KernelFamily::Dropped(r) => {
                    assert!(counter.is_verdict());
                    assert_eq!(counter.name(), format!("drop_{r}"));
                    reasons.push(r);
                }
                KernelFamily::ProxySegments(_) => {
                    assert!(counter.is_verdict());
                }
                KernelFamily::OverBudget(action) => {
                    assert_eq!(counter.is_verdict(), action != "observed");
                }
                KernelFamily::SourcesInserted
                | KernelFamily::SourceInsertFailures
                | KernelFamily::ProxyRequests(_)
                | KernelFamily::CreateAnswers(_)
                | KernelFamily::ProxyHeaders => {
                    assert!(!counter.is_verdict());
                }
            }
        }
        let before = reasons.len();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), before);
    }

    #[test]
    fn unreadable_kernel_counters_keep_the_previous_values() {
        let latest = Latest::default();
        latest.replace(Snapshot {
            kernel_counters: Some(vec![(Counter::DropBlocked, 7)]),
            tracked_sources: 1,
            ..Snapshot::default()
        });
        latest.replace(Snapshot {
            kernel_counters: None,
            tracked_sources: 2,
            ..Snapshot::default()
        });
        let now = latest.get();
        assert_eq!(now.kernel_counters, Some(vec![(Counter::DropBlocked, 7)]));
        assert_eq!(now.tracked_sources, 2);
    }
}
