//! Shared counts: what one node publishes each poll, and how a node sums what every node
//! published into cluster-wide rates.
//!
//! A summary lists only the sources that reached a fraction of a cluster-scoped threshold on
//! this node, the busiest first, at most `summary_max_sources`: its size (and so etcd's load)
//! does not grow with the number of sources, and a source spread thinly over the nodes is
//! still summed once its share on each node reaches the fraction. The fraction shrinks as
//! Glance nodes are added ([`publish_fraction`]), so an attacker cannot hide by being spread
//! over more nodes than the fraction assumes.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::settings::{ClusterSettings, Role, Scope};
use crate::{
    policy::{Metric, PolicyConfig},
    rates::{Rates, NEW_CONNECTION_WINDOW},
};

/// One source's counts on one node: the figures the thresholds compare, as whole counts
/// in their trailing windows (SYNs in 10 s, image creates in a minute and an hour, other
/// writes in a minute), in [`Metric::CLUSTER_SHARED`]'s order (the order on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts4(pub [u64; 4]);

impl Counts4 {
    pub fn of(rates: &Rates) -> Counts4 {
        Counts4(Metric::CLUSTER_SHARED.map(|m| count(m, rates)))
    }

    /// 0 for a metric without a threshold: those are not shared.
    pub fn get(&self, metric: Metric) -> u64 {
        index(metric).map_or(0, |i| self.0[i])
    }
}

/// What a node publishes under `nodes/<name>` once per poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub node: String,
    pub role: Role,
    /// Counts up by one per publication: a gap or a repeat shows in `cluster status`.
    pub seq: u64,
    pub poll_interval_ms: u64,
    /// Sources the node tracks (the summary lists a few of them).
    pub tracked_sources: u64,
    /// `[address, [syns in 10 s, creates in 1 min, creates in 1 h, other writes in 1 min]]`.
    pub sources: Vec<(IpAddr, Counts4)>,
    /// The same counts summed over every source the node tracks: the node's share of the
    /// cluster-wide rates.
    #[serde(default)]
    pub totals: Counts4,
}

/// The share of a threshold at which a node publishes a source: half of an even share over
/// the Glance nodes seen, so a source whose cluster-wide rate is at the threshold is listed
/// by every node it is spread over evenly; between 2 % and 50 %.
pub fn publish_fraction(glance_nodes: usize) -> f64 {
    (0.5 / glance_nodes.max(1) as f64).clamp(0.02, 0.5)
}

/// The summary of this node's `rates`.
pub fn build(
    settings: &ClusterSettings,
    policy: &PolicyConfig,
    header: Summary,
    fraction: f64,
    rates: impl Iterator<Item = (IpAddr, Rates)>,
) -> Summary {
    let limits: Vec<(Metric, u64)> = Metric::CLUSTER_SHARED
        .iter()
        .filter(|m| settings.scope(**m) == Scope::Cluster)
        .filter_map(|m| Some((*m, threshold_count(*m, policy.threshold(*m)?))))
        .collect();
    let mut listed: Vec<(f64, IpAddr, Counts4)> = Vec::new();
    let mut totals = Counts4::default();
    if header.role == Role::Glance {
        for (addr, rates) in rates {
            let counts = Counts4::of(&rates);
            for (total, add) in totals.0.iter_mut().zip(counts.0) {
                *total += add;
            }
            let share = limits
                .iter()
                .map(|(m, limit)| counts.get(*m) as f64 / *limit as f64)
                .fold(0.0, f64::max);
            if !limits.is_empty() && share >= fraction {
                listed.push((share, addr, counts));
            }
        }
    }
    let max = settings.summary_max_sources;
    if listed.len() > max {
        listed.select_nth_unstable_by(max - 1, |a, b| b.0.total_cmp(&a.0));
        listed.truncate(max);
    }
    listed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Summary {
        sources: listed.into_iter().map(|(_, a, c)| (a, c)).collect(),
        totals,
        ..header
    }
}

/// Cluster-wide rates of every source some other node listed: this node's own rates (or
/// none) plus what the others published, for the cluster-scoped thresholds; node-scoped
/// figures stay this node's.
pub fn combine<'a>(
    settings: &ClusterSettings,
    local: impl Fn(IpAddr) -> Option<Rates>,
    peers: impl Iterator<Item = &'a Summary>,
) -> Vec<(IpAddr, Rates)> {
    let mut sums: HashMap<IpAddr, Counts4> = HashMap::new();
    for summary in peers.filter(|s| s.role == Role::Glance) {
        for (addr, counts) in &summary.sources {
            let sum = sums.entry(*addr).or_default();
            for (total, add) in sum.0.iter_mut().zip(counts.0) {
                *total += add;
            }
        }
    }
    let mut combined: Vec<(IpAddr, Rates)> = sums
        .into_iter()
        .map(|(addr, others)| {
            let mut rates = local(addr).unwrap_or_default();
            for metric in Metric::CLUSTER_SHARED {
                if settings.scope(metric) == Scope::Cluster {
                    add(metric, &mut rates, others.get(metric));
                }
            }
            (addr, rates)
        })
        .collect();
    combined.sort_by_key(|(addr, _)| *addr);
    combined
}

fn index(metric: Metric) -> Option<usize> {
    Metric::CLUSTER_SHARED.iter().position(|m| *m == metric)
}

fn count(metric: Metric, rates: &Rates) -> u64 {
    match metric {
        Metric::NewConnectionsPerSecond => rates.new_connections_in_window,
        Metric::ImageCreatesPerMinute => rates.image_creates_last_minute,
        Metric::ImageCreatesPerHour => rates.image_creates_last_hour,
        Metric::OtherWritesPerMinute => rates.other_writes_last_minute,
        Metric::RecordsCreatedPerHour
        | Metric::ReadsPerSecond
        | Metric::PacketsPerSecond
        | Metric::BytesPerSecond => 0,
    }
}

fn add(metric: Metric, rates: &mut Rates, more: u64) {
    let field = match metric {
        Metric::NewConnectionsPerSecond => &mut rates.new_connections_in_window,
        Metric::ImageCreatesPerMinute => &mut rates.image_creates_last_minute,
        Metric::ImageCreatesPerHour => &mut rates.image_creates_last_hour,
        Metric::OtherWritesPerMinute => &mut rates.other_writes_last_minute,
        Metric::RecordsCreatedPerHour
        | Metric::ReadsPerSecond
        | Metric::PacketsPerSecond
        | Metric::BytesPerSecond => return,
    };
    *field += more;
}

/// A threshold as the whole count [`Metric::reached`] compares.
fn threshold_count(metric: Metric, threshold: u32) -> u64 {
    let threshold = u64::from(threshold.max(1));
    match metric {
        Metric::NewConnectionsPerSecond => threshold * NEW_CONNECTION_WINDOW.as_secs(),
        _ => threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClusterSettings {
        ClusterSettings {
            etcd_endpoints: vec!["http://198.51.100.1:2379".into()],
            summary_max_sources: 2,
            ..ClusterSettings::default()
        }
    }

    fn header(node: &str) -> Summary {
        Summary {
            node: node.into(),
            role: Role::Glance,
            seq: 1,
            poll_interval_ms: 1000,
            tracked_sources: 0,
            sources: Vec::new(),
            totals: Counts4::default(),
        }
    }

    fn creates(per_minute: u64) -> Rates {
        Rates {
            image_creates_last_minute: per_minute,
            image_creates_last_hour: per_minute,
            ..Rates::default()
        }
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, last])
    }

    #[test]
    fn only_sources_near_a_threshold_are_listed_busiest_first_and_bounded() {
        let policy = PolicyConfig::default();
        let limit = policy.image_creates_per_minute.unwrap() as u64;
        let rates = [
            (addr(1), creates(limit / 10)),
            (addr(2), creates(limit / 2)),
            (addr(3), creates(limit)),
            (addr(4), creates(limit / 3)),
            (addr(5), creates(0)),
        ];
        let summary = build(
            &settings(),
            &policy,
            header("a"),
            0.25,
            rates.iter().map(|(a, r)| (*a, *r)),
        );
        let listed: Vec<IpAddr> = summary.sources.iter().map(|(a, _)| *a).collect();
        assert_eq!(listed, [addr(3), addr(2)]);
    }

    #[test]
    fn an_edge_node_publishes_no_counts() {
        let policy = PolicyConfig::default();
        let rates = [(addr(1), creates(1000))];
        let summary = build(
            &settings(),
            &policy,
            Summary {
                role: Role::Edge,
                ..header("lb")
            },
            0.1,
            rates.iter().map(|(a, r)| (*a, *r)),
        );
        assert!(summary.sources.is_empty());
    }

    #[test]
    fn a_flood_spread_over_three_nodes_sums_above_the_threshold() {
        let policy = PolicyConfig::default();
        let limit = policy.image_creates_per_minute.unwrap() as u64;
        let share = limit / 2; // each node sees half the limit: 1.5x cluster-wide
        let fraction = publish_fraction(3);
        let publish = |node: &str| {
            build(
                &settings(),
                &policy,
                header(node),
                fraction,
                [(addr(9), creates(share))].into_iter(),
            )
        };
        let peers = [publish("b"), publish("c")];
        let combined = combine(
            &settings(),
            |a| (a == addr(9)).then(|| creates(share)),
            peers.iter(),
        );
        assert_eq!(combined.len(), 1);
        let (source, rates) = combined[0];
        assert_eq!(source, addr(9));
        assert_eq!(rates.image_creates_last_minute, 3 * share);
        assert!(
            Metric::ImageCreatesPerMinute.reached(&rates, policy.image_creates_per_minute.unwrap())
        );
    }

    #[test]
    fn node_scoped_thresholds_keep_this_nodes_figure() {
        let policy = PolicyConfig::default();
        let mut settings = settings();
        settings
            .threshold_scope
            .insert(Metric::ImageCreatesPerMinute, Scope::Node);
        let mut peer = header("b");
        peer.sources.push((addr(9), Counts4([500, 40, 40, 0])));
        let combined = combine(&settings, |_| Some(creates(5)), [&peer].into_iter());
        let rates = combined[0].1;
        assert_eq!(rates.image_creates_last_minute, 5);
        assert_eq!(rates.image_creates_last_hour, 45);
        assert_eq!(rates.new_connections_in_window, 500);
        let _ = policy;
    }

    #[test]
    fn the_fraction_shrinks_with_the_cluster() {
        assert_eq!(publish_fraction(1), 0.5);
        assert!((publish_fraction(3) - 1.0 / 6.0).abs() < 1e-9);
        assert_eq!(publish_fraction(100), 0.02);
    }
}
