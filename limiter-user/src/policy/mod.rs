//! Which sources to ban, for how long (pure: time, rates and the current bans are passed in).
//!
//! Each poll the daemon hands [`Policy::evaluate`] every source's [`Rates`]. A source that
//! reaches a threshold is banned, unless it must never be (loopback, the allowlist, the node's
//! own addresses, the trusted proxies: [`NeverBan`]) or a current ban already covers it. The ban grows with repeat
//! offences: the n-th offence within `offence_memory` is banned for
//! `min(ban_ttl · ban_ttl_factor^(n−1), ban_ttl_max)`, and never for less than the window of the
//! metric that tripped, so that it does not end while the requests that caused it are still
//! counted (that would ban again at once, as a new offence, for the same requests).
//!
//! When `aggregate_min_sources` distinct sources of one IPv4 /24 or IPv6 /64 (configurable)
//! have offended within `offence_memory`, the prefix is banned instead of the host: an IPv6
//! client can hop through its /64 faster than hosts can be banned one by one. A prefix that
//! overlaps a never-ban entry or the IPv4-mapped range is never aggregated; its hosts are
//! banned one by one.
//!
//! The policy keeps the offence history itself, pruned to `offence_memory` and to
//! [`MAX_OFFENCE_HISTORY`] entries. In monitor mode the daemon should pass the bans it would
//! have installed as `current_bans`, so that decisions and offence counts match enforce mode.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

mod prefix;

pub use self::prefix::PrefixCandidate;

pub use crate::policy_config::{
    Metric, PolicyConfig, AGGREGATE_IPV4_PREFIXES, AGGREGATE_IPV6_PREFIXES,
};
use crate::{
    net,
    prefixes::PrefixSet,
    rates::Rates,
    rules::{Action, KernelRule, Scope},
};

/// Sources and prefixes whose offences are remembered at most; beyond it, those whose latest
/// offence is oldest are forgotten first (they then start again at their first offence).
pub const MAX_OFFENCE_HISTORY: usize = 100_000;
/// Offence times kept per source at most; later offences are banned as this one.
const MAX_OFFENCES_PER_ENTRY: u32 = 32;
/// At most this many sources are named in an aggregate ban's reason.
const SOURCES_NAMED_IN_REASON: usize = 8;

/// A ban the daemon should install.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// A host (/32, /128) or, for [`BanKind::Aggregate`], the prefix.
    pub net: IpNet,
    pub kind: BanKind,
    /// The metric that tripped; for an aggregate, that of the worst current offender.
    pub metric: Metric,
    pub observed: f64,
    pub threshold: u32,
    pub ttl: Duration,
    /// 1 for a first offence within `offence_memory`, 2 for the next, ...; counted up to the
    /// offence whose ban reaches `ban_ttl_max`, since more would not change the ban.
    pub offence: u32,
    /// One line for logs and the operator: who, what, how much, for how long.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanKind {
    Host,
    /// The prefix instead of its hosts.
    Aggregate {
        /// Every source of the prefix that offended within `offence_memory`, this poll
        /// included, in address order.
        offending_sources: Vec<IpAddr>,
    },
    /// The prefix, for its sources' summed rate (`[policy.prefix]`).
    PrefixRate {
        /// Its sources, the biggest contributors first.
        contributors: Vec<IpAddr>,
    },
}

impl Decision {
    /// The kernel rule that carries out this decision: a block of the protected ports (never
    /// all ports: a false positive must not lock anyone out of the host), from `now` for `ttl`.
    pub fn to_rule(&self, now: SystemTime) -> KernelRule {
        KernelRule {
            net: self.net,
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            expires: Some(now + self.ttl),
        }
    }
}

/// Addresses and prefixes that are never banned, alone or inside an aggregate: the
/// allowlist, the node's own addresses, the trusted proxies, and always loopback.
#[derive(Clone, Debug)]
pub struct NeverBan {
    prefixes: PrefixSet,
}

impl NeverBan {
    /// Loopback (127.0.0.0/8, ::1) is added whatever `nets` holds.
    pub fn new<N: Into<IpNet>>(nets: impl IntoIterator<Item = N>) -> Self {
        let loopback: [IpNet; 2] = [
            "127.0.0.0/8".parse().expect("valid prefix"),
            "::1/128".parse().expect("valid prefix"),
        ];
        let mut prefixes: PrefixSet = loopback.into_iter().collect();
        prefixes.extend(nets);
        NeverBan { prefixes }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.prefixes.covers_addr(addr)
    }

    /// Whether a ban of `net` would hit a never-ban address.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.prefixes.overlaps(net)
    }
}

impl Default for NeverBan {
    fn default() -> Self {
        NeverBan::new(std::iter::empty::<IpNet>())
    }
}

/// Decides bans and remembers offences.
#[derive(Clone, Debug)]
pub struct Policy {
    config: PolicyConfig,
    /// Offence times (ms on the caller's clock), oldest first, per host and per aggregate
    /// prefix; every entry has at least one offence within `offence_memory`.
    hosts: BTreeMap<IpAddr, Vec<u64>>,
    prefixes: BTreeMap<IpNet, Vec<u64>>,
    /// Offences a repeat count needs to reach `ban_ttl_max`; more are not worth keeping.
    offences_kept: u32,
}

/// A threshold reached by one source.
#[derive(Clone, Copy, Debug)]
struct Violation {
    metric: Metric,
    observed: f64,
    threshold: u32,
}

impl Violation {
    /// How far over its threshold, comparable across metrics.
    fn severity(&self) -> f64 {
        self.observed / f64::from(self.threshold)
    }

    /// The worse of two; the first on a tie, so earlier metrics (and sources) win ties.
    fn worse(first: Violation, second: Violation) -> Violation {
        if second.severity() > first.severity() {
            second
        } else {
            first
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Offender {
    addr: IpAddr,
    violation: Violation,
}

impl Policy {
    /// A policy with no offence history. `config` should have passed the configuration's
    /// checks; values they reject are clamped to the nearest sane one rather than trusted.
    pub fn new(config: PolicyConfig) -> Self {
        let offences_kept = offences_to_reach_max(&config);
        Policy {
            config,
            hosts: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            offences_kept,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Decides the bans for this poll, records them as offences, and returns them in
    /// address order. `now` is on the same monotonic clock as earlier calls (time since the
    /// daemon started, say); `current_bans` holds every ban in force, including those
    /// installed by hand.
    pub fn evaluate(
        &mut self,
        now: Duration,
        rates: impl IntoIterator<Item = (IpAddr, Rates)>,
        never_ban: &NeverBan,
        current_bans: &PrefixSet,
    ) -> Vec<Decision> {
        let now_ms = millis(now);
        self.forget_offences_before(now_ms.saturating_sub(millis(self.config.offence_memory)));

        // Thresholds first: they are arithmetic on the rates, while the set lookups hash the
        // address once per prefix length, and few of a million sources reach a threshold.
        let mut offenders: Vec<Offender> = rates
            .into_iter()
            .filter_map(|(addr, rates)| {
                self.worst_violation(&rates).map(|violation| Offender {
                    addr: addr.to_canonical(),
                    violation,
                })
            })
            .filter(|o| !never_ban.contains(o.addr) && !current_bans.covers_addr(o.addr))
            .collect();
        offenders.sort_by_key(|offender| offender.addr);
        offenders.dedup_by_key(|offender| offender.addr);

        let mut decisions = Vec::new();
        let mut by_prefix: BTreeMap<IpNet, Vec<Offender>> = BTreeMap::new();
        for offender in offenders {
            match self.aggregate_prefix(offender.addr, never_ban) {
                Some(prefix) => by_prefix.entry(prefix).or_default().push(offender),
                None => decisions.push(self.ban_host(now_ms, offender)),
            }
        }
        for (prefix, members) in by_prefix {
            let offending = self.offending_sources_in(prefix, &members);
            if offending.len() >= self.aggregate_min_sources() {
                decisions.push(self.ban_prefix(now_ms, prefix, &members, offending));
            } else {
                for member in members {
                    decisions.push(self.ban_host(now_ms, member));
                }
            }
        }
        self.bound_history();
        decisions.sort_by_key(|decision| decision.net);
        decisions
    }

    /// Offences of a host or aggregate prefix within `offence_memory`, as of the last
    /// evaluation.
    pub fn offences(&self, net: &IpNet) -> usize {
        let net = canonical(*net);
        if net.prefix_len() == net.max_prefix_len() {
            self.hosts.get(&net.addr()).map_or(0, Vec::len)
        } else {
            self.prefixes.get(&net).map_or(0, Vec::len)
        }
    }

    /// Hosts and prefixes with offences remembered.
    pub fn history_len(&self) -> usize {
        self.hosts.len() + self.prefixes.len()
    }

    /// Whether `rates` reach one of the thresholds: a source that does not can be left out
    /// of [`Policy::evaluate`] (it would decide nothing about it).
    pub fn reaches_a_threshold(&self, rates: &Rates) -> bool {
        self.worst_violation(rates).is_some()
    }

    fn worst_violation(&self, rates: &Rates) -> Option<Violation> {
        Metric::THRESHOLDED
            .into_iter()
            .filter_map(|metric| {
                let threshold = self.config.threshold(metric).filter(|t| *t > 0)?;
                metric.reached(rates, threshold).then(|| Violation {
                    metric,
                    observed: metric.observed(rates),
                    threshold,
                })
            })
            .reduce(Violation::worse)
    }

    fn aggregate_prefix(&self, addr: IpAddr, never_ban: &NeverBan) -> Option<IpNet> {
        if !self.config.aggregate {
            return None;
        }
        let clamp =
            |len: u8, range: std::ops::RangeInclusive<u8>| len.clamp(*range.start(), *range.end());
        let len = match addr {
            IpAddr::V4(_) => clamp(self.config.aggregate_ipv4_prefix, AGGREGATE_IPV4_PREFIXES),
            IpAddr::V6(_) => clamp(self.config.aggregate_ipv6_prefix, AGGREGATE_IPV6_PREFIXES),
        };
        let prefix = IpNet::new(addr, len).ok()?.trunc();
        if let IpNet::V6(v6) = prefix {
            if net::overlaps_ipv4_mapped(&v6) {
                return None;
            }
        }
        (!never_ban.overlaps(&prefix)).then_some(prefix)
    }

    fn aggregate_min_sources(&self) -> usize {
        (self.config.aggregate_min_sources.max(2)) as usize
    }

    /// Hosts of `prefix` with an offence in memory, and those offending now.
    fn offending_sources_in(&self, prefix: IpNet, now: &[Offender]) -> Vec<IpAddr> {
        let remembered = self
            .hosts
            .range(prefix.network()..=prefix.broadcast())
            .map(|(addr, _)| *addr);
        let mut sources: Vec<IpAddr> = remembered
            .chain(now.iter().map(|offender| offender.addr))
            .collect();
        sources.sort_unstable();
        sources.dedup();
        sources
    }

    fn ban_host(&mut self, now_ms: u64, offender: Offender) -> Decision {
        let offence = record(
            self.hosts.entry(offender.addr).or_default(),
            now_ms,
            self.offences_kept,
        );
        let Violation {
            metric,
            observed,
            threshold,
        } = offender.violation;
        let ttl = self.ban_ttl(offence, metric.threshold_window().unwrap_or_default());
        let reason = format!(
            "{}: {}; {} → banned for {}",
            offender.addr,
            metric.describe(observed, threshold),
            self.describe_offence(offence),
            humantime::format_duration(ttl)
        );
        Decision {
            net: IpNet::from(offender.addr),
            kind: BanKind::Host,
            metric,
            observed,
            threshold,
            ttl,
            offence,
            reason,
        }
    }

    fn ban_prefix(
        &mut self,
        now_ms: u64,
        prefix: IpNet,
        members: &[Offender],
        offending_sources: Vec<IpAddr>,
    ) -> Decision {
        for member in members {
            record(
                self.hosts.entry(member.addr).or_default(),
                now_ms,
                self.offences_kept,
            );
        }
        let offence = record(
            self.prefixes.entry(prefix).or_default(),
            now_ms,
            self.offences_kept,
        );
        let worst = members
            .iter()
            // Ties keep the first, as in `Violation::worse`.
            .reduce(|a, b| {
                if b.violation.severity() > a.violation.severity() {
                    b
                } else {
                    a
                }
            })
            .expect("an aggregate has at least one current offender");
        let longest_window = members
            .iter()
            .map(|member| {
                member
                    .violation
                    .metric
                    .threshold_window()
                    .unwrap_or_default()
            })
            .max()
            .unwrap_or_default();
        let ttl = self.ban_ttl(offence, longest_window);
        let Violation {
            metric,
            observed,
            threshold,
        } = worst.violation;
        let reason = format!(
            "{prefix}: {} of its sources offended within {} (aggregation at {}): {}; now {}: {}; \
             prefix {} → banned for {}",
            offending_sources.len(),
            humantime::format_duration(self.config.offence_memory),
            self.aggregate_min_sources(),
            name_some(&offending_sources),
            worst.addr,
            metric.describe(observed, threshold),
            self.describe_offence(offence),
            humantime::format_duration(ttl)
        );
        Decision {
            net: prefix,
            kind: BanKind::Aggregate { offending_sources },
            metric,
            observed,
            threshold,
            ttl,
            offence,
            reason,
        }
    }

    fn describe_offence(&self, offence: u32) -> String {
        let memory = humantime::format_duration(self.config.offence_memory);
        match offence {
            1 => format!("first offence within {memory}"),
            n if n >= self.offences_kept && self.offences_kept > 1 => {
                format!("offence {n} (or more) within {memory}")
            }
            n => format!("offence {n} within {memory}"),
        }
    }

    /// `min(ban_ttl · factor^(offence−1), ban_ttl_max)`, and at least `evidence_window`.
    fn ban_ttl(&self, offence: u32, evidence_window: Duration) -> Duration {
        let (base, factor, max) = ttl_settings(&self.config);
        let exponent = i32::try_from(offence.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown_ms = (base.as_secs_f64() * factor.powi(exponent) * 1000.0).ceil();
        let ttl = if grown_ms.is_finite() && grown_ms < max.as_secs_f64() * 1000.0 {
            Duration::from_millis(grown_ms as u64)
        } else {
            max
        };
        ttl.max(evidence_window)
    }

    fn forget_offences_before(&mut self, cutoff_ms: u64) {
        let keep_recent = |times: &mut Vec<u64>| {
            times.retain(|t| *t >= cutoff_ms);
            !times.is_empty()
        };
        self.hosts.retain(|_, times| keep_recent(times));
        self.prefixes.retain(|_, times| keep_recent(times));
    }

    /// Beyond [`MAX_OFFENCE_HISTORY`], forgets the entries whose latest offence is oldest,
    /// down to 7/8 of the bound so that the sort is not repeated every poll.
    fn bound_history(&mut self) {
        if self.history_len() <= MAX_OFFENCE_HISTORY {
            return;
        }
        let latest = |times: &Vec<u64>| times.last().copied().unwrap_or(0);
        let mut entries: Vec<(u64, IpNet)> = self
            .hosts
            .iter()
            .map(|(addr, times)| (latest(times), IpNet::from(*addr)))
            .chain(
                self.prefixes
                    .iter()
                    .map(|(prefix, times)| (latest(times), *prefix)),
            )
            .collect();
        entries.sort_unstable();
        let excess = entries.len() - (MAX_OFFENCE_HISTORY - MAX_OFFENCE_HISTORY / 8);
        for (_, net) in entries.into_iter().take(excess) {
            if net.prefix_len() == net.max_prefix_len() {
                self.hosts.remove(&net.addr());
            } else {
                self.prefixes.remove(&net);
            }
        }
    }
}

/// `ban_ttl`, `ban_ttl_factor`, `ban_ttl_max`, with what the configuration checks reject
/// clamped to the nearest sane value.
fn ttl_settings(config: &PolicyConfig) -> (Duration, f64, Duration) {
    let base = config.ban_ttl;
    let factor = if config.ban_ttl_factor.is_finite() {
        config.ban_ttl_factor.max(1.0)
    } else {
        1.0
    };
    (base, factor, config.ban_ttl_max.max(base))
}

/// The offence count from which the TTL stays at `ban_ttl_max`: remembering more offences
/// than that changes nothing.
fn offences_to_reach_max(config: &PolicyConfig) -> u32 {
    let (base, factor, max) = ttl_settings(config);
    let mut ttl = base.as_secs_f64();
    let mut offences = 1;
    while ttl < max.as_secs_f64() && factor > 1.0 && offences < MAX_OFFENCES_PER_ENTRY {
        ttl *= factor;
        offences += 1;
    }
    offences
}

/// Adds an offence at `now_ms` and returns how many are remembered, this one included.
fn record(times: &mut Vec<u64>, now_ms: u64, kept: u32) -> u32 {
    times.push(now_ms);
    let kept = kept.max(1) as usize;
    if times.len() > kept {
        times.drain(..times.len() - kept);
    }
    u32::try_from(times.len()).unwrap_or(u32::MAX)
}

fn name_some(sources: &[IpAddr]) -> String {
    let named: Vec<String> = sources
        .iter()
        .take(SOURCES_NAMED_IN_REASON)
        .map(IpAddr::to_string)
        .collect();
    match sources.len().checked_sub(SOURCES_NAMED_IN_REASON) {
        Some(more) if more > 0 => format!("{} and {more} more", named.join(", ")),
        _ => named.join(", "),
    }
}

/// IPv6 prefixes inside the IPv4-mapped range in their IPv4 form, host bits cleared.
fn canonical(net: IpNet) -> IpNet {
    let (len, key) = net::net_to_key(net);
    net::key_to_net(len, key).unwrap_or(net.trunc())
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::rates::HOUR_WINDOW;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn creates_per_minute(n: u64) -> Rates {
        Rates {
            image_creates_last_minute: n,
            image_creates_last_hour: n,
            ..Rates::default()
        }
    }

    /// Only the per-minute image-create threshold (60), no aggregation.
    fn minute_only() -> PolicyConfig {
        PolicyConfig {
            new_connections_per_second: None,
            image_creates_per_minute: Some(60),
            image_creates_per_hour: None,
            other_writes_per_minute: None,
            aggregate: false,
            ..PolicyConfig::default()
        }
    }

    fn evaluate_one(policy: &mut Policy, now: u64, addr: IpAddr, rates: Rates) -> Vec<Decision> {
        policy.evaluate(
            secs(now),
            [(addr, rates)],
            &NeverBan::default(),
            &PrefixSet::new(),
        )
    }

    #[test]
    fn each_metric_triggers_at_its_threshold_and_not_below() {
        let at = |metric: Metric, below: bool| {
            let base = if below { 1 } else { 0 };
            let mut rates = Rates::default();
            match metric {
                Metric::NewConnectionsPerSecond => rates.new_connections_in_window = 500 - base,
                Metric::ImageCreatesPerMinute => rates.image_creates_last_minute = 60 - base,
                Metric::ImageCreatesPerHour => rates.image_creates_last_hour = 600 - base,
                Metric::OtherWritesPerMinute => rates.other_writes_last_minute = 300 - base,
                Metric::RecordsCreatedPerHour => rates.records_created_last_hour = 40 - base,
                other => panic!("{other} has no threshold"),
            }
            rates
        };
        // Every threshold on: the records created are off by default.
        let config = PolicyConfig {
            records_created_per_hour: Some(40),
            ..PolicyConfig::default()
        };
        for metric in Metric::THRESHOLDED {
            let mut policy = Policy::new(config.clone());
            let source = ip("198.51.100.7");
            assert!(
                evaluate_one(&mut policy, 100, source, at(metric, true)).is_empty(),
                "{metric} below its threshold"
            );
            let decisions = evaluate_one(&mut policy, 100, source, at(metric, false));
            assert_eq!(decisions.len(), 1, "{metric} at its threshold");
            let decision = &decisions[0];
            assert_eq!(decision.metric, metric);
            assert_eq!(decision.net, cidr("198.51.100.7/32"));
            assert_eq!(decision.kind, BanKind::Host);
            assert_eq!(decision.offence, 1);
            assert_eq!(decision.threshold, config.threshold(metric).unwrap());
            assert!(
                decision.reason.contains("198.51.100.7"),
                "{}",
                decision.reason
            );
        }
    }

    #[test]
    fn a_disabled_metric_never_triggers() {
        let mut policy = Policy::new(minute_only());
        let rates = Rates {
            new_connections_in_window: 1_000_000,
            image_creates_last_hour: 1_000_000,
            other_writes_last_minute: 1_000_000,
            ..Rates::default()
        };
        assert!(evaluate_one(&mut policy, 1, ip("198.51.100.7"), rates).is_empty());
    }

    #[test]
    fn the_worst_metric_is_reported() {
        let mut policy = Policy::new(PolicyConfig::default());
        let rates = Rates {
            image_creates_last_minute: 90,  // 1.5× the limit
            image_creates_last_hour: 1_800, // 3×
            other_writes_last_minute: 300,  // 1×
            ..Rates::default()
        };
        let decisions = evaluate_one(&mut policy, 1, ip("198.51.100.7"), rates);
        assert_eq!(decisions[0].metric, Metric::ImageCreatesPerHour);
        assert_eq!(decisions[0].observed, 1_800.0);
        assert_eq!(
            decisions[0].ttl, HOUR_WINDOW,
            "held until the evidence has left"
        );
    }

    #[test]
    fn never_ban_wins() {
        let never_ban = NeverBan::new(
            [cidr("192.0.2.0/24")]
                .into_iter()
                .chain([IpNet::from(ip("2001:db8::1"))]),
        );
        let mut policy = Policy::new(minute_only());
        let flood = creates_per_minute(10_000);
        let decisions = policy.evaluate(
            secs(1),
            [
                (ip("127.0.0.1"), flood),
                (ip("127.8.9.10"), flood),
                (ip("::1"), flood),
                (ip("192.0.2.77"), flood),
                (ip("::ffff:192.0.2.78"), flood),
                (ip("2001:db8::1"), flood),
                (ip("2001:db8::2"), flood),
            ],
            &never_ban,
            &PrefixSet::new(),
        );
        let banned: Vec<IpNet> = decisions.iter().map(|d| d.net).collect();
        assert_eq!(banned, [cidr("2001:db8::2/128")]);
    }

    #[test]
    fn already_banned_sources_get_no_second_decision() {
        let mut policy = Policy::new(minute_only());
        let current: PrefixSet = [cidr("198.51.100.7/32"), cidr("203.0.113.0/24")]
            .into_iter()
            .collect();
        let flood = creates_per_minute(10_000);
        let decisions = policy.evaluate(
            secs(1),
            [
                (ip("198.51.100.7"), flood),
                (ip("203.0.113.99"), flood),
                (ip("198.51.100.8"), flood),
            ],
            &NeverBan::default(),
            &current,
        );
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].net, cidr("198.51.100.8/32"));
        assert_eq!(
            policy.offences(&cidr("198.51.100.7/32")),
            0,
            "a banned source is not a new offender"
        );
    }

    #[test]
    fn repeat_offences_double_the_ban_up_to_the_cap() {
        let mut policy = Policy::new(minute_only());
        let source = ip("198.51.100.7");
        let ttls: Vec<Duration> = (0..8)
            .map(|i| {
                let decisions = evaluate_one(&mut policy, 1000 * i, source, creates_per_minute(60));
                assert_eq!(decisions[0].offence as u64, (i + 1).min(6));
                decisions[0].ttl
            })
            .collect();
        let minutes = |m: u64| secs(60 * m);
        assert_eq!(
            ttls,
            [
                minutes(10),
                minutes(20),
                minutes(40),
                minutes(80),
                minutes(160),
                minutes(240),
                minutes(240),
                minutes(240)
            ]
        );
    }

    #[test]
    fn a_fractional_factor_grows_in_whole_milliseconds() {
        let mut policy = Policy::new(PolicyConfig {
            ban_ttl: secs(100),
            ban_ttl_factor: 1.5,
            ..minute_only()
        });
        let source = ip("198.51.100.7");
        let ttls: Vec<Duration> = (0..3)
            .map(|i| evaluate_one(&mut policy, 1000 * i, source, creates_per_minute(60))[0].ttl)
            .collect();
        assert_eq!(ttls, [secs(100), secs(150), secs(225)]);
    }

    #[test]
    fn offences_older_than_the_memory_are_forgotten() {
        let mut policy = Policy::new(minute_only());
        let source = ip("198.51.100.7");
        let day = 24 * 3600;
        assert_eq!(
            evaluate_one(&mut policy, 0, source, creates_per_minute(60))[0].offence,
            1
        );
        assert_eq!(
            evaluate_one(&mut policy, 1000, source, creates_per_minute(60))[0].offence,
            2
        );
        // The first offence is just over a day old: only the second still counts.
        let third = &evaluate_one(&mut policy, day + 1, source, creates_per_minute(60))[0];
        assert_eq!(third.offence, 2);
        assert_eq!(third.ttl, secs(20 * 60));
        // A day after the last one, the slate is clean.
        let fresh = &evaluate_one(&mut policy, 3 * day, source, creates_per_minute(60))[0];
        assert_eq!(fresh.offence, 1);
        assert_eq!(fresh.ttl, secs(10 * 60));
        assert_eq!(policy.history_len(), 1);
    }

    #[test]
    fn hosts_of_one_ipv4_24_are_aggregated_once_enough_offend() {
        let mut policy = Policy::new(PolicyConfig {
            aggregate: true,
            ..minute_only()
        });
        let flood = creates_per_minute(100);
        let first = evaluate_one(&mut policy, 0, ip("203.0.113.5"), flood);
        assert_eq!(first[0].net, cidr("203.0.113.5/32"));
        let second = evaluate_one(&mut policy, 600, ip("203.0.113.6"), flood);
        assert_eq!(second[0].net, cidr("203.0.113.6/32"));
        // A neighbour in another /24 does not count towards this one.
        let elsewhere = evaluate_one(&mut policy, 700, ip("203.0.114.1"), flood);
        assert_eq!(elsewhere[0].net, cidr("203.0.114.1/32"));

        let third = evaluate_one(&mut policy, 1200, ip("203.0.113.200"), flood);
        assert_eq!(third.len(), 1);
        let decision = &third[0];
        assert_eq!(decision.net, cidr("203.0.113.0/24"));
        assert_eq!(
            decision.kind,
            BanKind::Aggregate {
                offending_sources: vec![ip("203.0.113.5"), ip("203.0.113.6"), ip("203.0.113.200")]
            }
        );
        assert_eq!(decision.offence, 1);
        assert_eq!(decision.ttl, secs(600));
        assert!(decision
            .reason
            .starts_with("203.0.113.0/24: 3 of its sources"));
        assert_eq!(policy.offences(&cidr("203.0.113.200/32")), 1);
    }

    #[test]
    fn several_offenders_in_one_poll_make_one_aggregate() {
        let mut policy = Policy::new(PolicyConfig {
            aggregate: true,
            ..minute_only()
        });
        let flood = creates_per_minute(100);
        let decisions = policy.evaluate(
            secs(0),
            (1..=3).map(|i| (IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)), flood)),
            &NeverBan::default(),
            &PrefixSet::new(),
        );
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].net, cidr("203.0.113.0/24"));
    }

    #[test]
    fn ipv6_hosts_aggregate_to_their_64() {
        let mut policy = Policy::new(PolicyConfig {
            aggregate: true,
            ..minute_only()
        });
        let flood = creates_per_minute(100);
        let hop = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 1, i, 0, 0, 1));
        assert_eq!(
            evaluate_one(&mut policy, 0, hop(1), flood)[0].kind,
            BanKind::Host
        );
        assert_eq!(
            evaluate_one(&mut policy, 1, hop(2), flood)[0].kind,
            BanKind::Host
        );
        let third = evaluate_one(&mut policy, 2, hop(3), flood);
        assert_eq!(third[0].net, cidr("2001:db8:7:1::/64"));
        // The next /64 starts from scratch.
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 2, 0, 0, 0, 1));
        assert_eq!(
            evaluate_one(&mut policy, 3, other, flood)[0].kind,
            BanKind::Host
        );
    }

    #[test]
    fn ipv4_and_ipv6_offenders_never_share_an_aggregate() {
        let mut policy = Policy::new(PolicyConfig {
            aggregate: true,
            aggregate_min_sources: 2,
            ..minute_only()
        });
        let flood = creates_per_minute(100);
        let decisions = policy.evaluate(
            secs(0),
            [(ip("0.0.0.1"), flood), (ip("::2"), flood)],
            &NeverBan::default(),
            &PrefixSet::new(),
        );
        let banned: Vec<IpNet> = decisions.iter().map(|d| d.net).collect();
        // ::/64 would cover the IPv4-mapped range, so ::2 is banned alone.
        assert_eq!(banned, [cidr("0.0.0.1/32"), cidr("::2/128")]);
    }

    #[test]
    fn a_prefix_holding_a_never_ban_address_is_not_aggregated() {
        let mut policy = Policy::new(PolicyConfig {
            aggregate: true,
            ..minute_only()
        });
        let never_ban = NeverBan::new([ip("203.0.113.250")]);
        let flood = creates_per_minute(100);
        let decisions = policy.evaluate(
            secs(0),
            (1..=5).map(|i| (IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)), flood)),
            &never_ban,
            &PrefixSet::new(),
        );
        assert_eq!(decisions.len(), 5);
        assert!(decisions.iter().all(|d| d.kind == BanKind::Host));
    }

    #[test]
    fn a_repeat_aggregate_grows_like_a_host_ban() {
        let mut policy = Policy::new(PolicyConfig {
            aggregate: true,
            ..minute_only()
        });
        let flood = creates_per_minute(100);
        let poll = |policy: &mut Policy, now: u64, last_octet: u8| {
            policy.evaluate(
                secs(now),
                (last_octet..last_octet + 3)
                    .map(|i| (IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)), flood)),
                &NeverBan::default(),
                &PrefixSet::new(),
            )
        };
        assert_eq!(poll(&mut policy, 0, 1)[0].ttl, secs(600));
        let second = &poll(&mut policy, 700, 10)[0];
        assert_eq!(second.offence, 2);
        assert_eq!(second.ttl, secs(1200));
        let BanKind::Aggregate { offending_sources } = &second.kind else {
            panic!("{second:?}")
        };
        assert_eq!(offending_sources.len(), 6);
    }

    #[test]
    fn decisions_do_not_depend_on_input_order() {
        let flood = creates_per_minute(100);
        let sources: Vec<(IpAddr, Rates)> = (1..=4)
            .map(|i| (IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), flood))
            .chain([(ip("2001:db8::5"), flood)])
            .collect();
        let run = |sources: Vec<(IpAddr, Rates)>| {
            Policy::new(PolicyConfig::default()).evaluate(
                secs(0),
                sources,
                &NeverBan::default(),
                &PrefixSet::new(),
            )
        };
        let forward = run(sources.clone());
        let backward = run(sources.into_iter().rev().collect());
        assert_eq!(forward, backward);
    }

    #[test]
    fn the_history_stays_bounded() {
        let mut policy = Policy::new(minute_only());
        let flood = creates_per_minute(100);
        let source = |i: u32| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i)));
        for batch in 0..11u32 {
            policy.evaluate(
                secs(u64::from(batch)),
                (batch * 10_000..(batch + 1) * 10_000).map(|i| (source(i), flood)),
                &NeverBan::default(),
                &PrefixSet::new(),
            );
        }
        assert!(policy.history_len() <= MAX_OFFENCE_HISTORY);
        assert_eq!(policy.offences(&IpNet::from(source(109_999))), 1);
        assert_eq!(
            policy.offences(&IpNet::from(source(0))),
            0,
            "oldest forgotten"
        );
    }

    #[test]
    fn a_decision_becomes_a_protected_ports_block() {
        let mut policy = Policy::new(minute_only());
        let decision = &evaluate_one(&mut policy, 0, ip("198.51.100.7"), creates_per_minute(60))[0];
        let now = SystemTime::UNIX_EPOCH + secs(1_800_000_000);
        assert_eq!(
            decision.to_rule(now),
            KernelRule {
                net: cidr("198.51.100.7/32"),
                action: Action::Block,
                scope: Scope::ProtectedPorts,
                expires: Some(now + secs(600)),
            }
        );
    }

    #[test]
    fn metric_keys_are_the_configuration_keys() {
        let value = toml::Value::try_from(PolicyConfig::default()).unwrap();
        for metric in Metric::THRESHOLDED {
            assert!(value.get(metric.key()).is_some(), "{metric}");
        }
    }

    /// The defaults against the traffic they are meant for, through the rate tracker.
    #[test]
    fn the_defaults_stop_a_flood_within_a_poll_and_leave_steady_users_alone() {
        use crate::rates::{Counts, RateTracker};

        let flooder = ip("203.0.113.66");
        let pipeline = ip("198.51.100.20");
        let mut tracker = RateTracker::new(1000);
        let mut policy = Policy::new(PolicyConfig::default());
        let mut banned_at = None;
        for t in 0..=3600u64 {
            // The pipeline creates an image every 10 s (360 an hour) on one kept-alive
            // connection; from 1800 s on, the flooder creates 50 a second.
            let pipeline_counts = Counts {
                syns: 1,
                image_create: t / 10,
                ..Counts::default()
            };
            let flood = t.saturating_sub(1800) * 50;
            let flood_counts = Counts {
                syns: flood,
                image_create: flood,
                ..Counts::default()
            };
            tracker.observe(
                secs(t),
                [(pipeline, pipeline_counts), (flooder, flood_counts)],
            );
            let bans: PrefixSet = banned_at
                .map(|_| IpNet::from(flooder))
                .into_iter()
                .collect();
            for decision in policy.evaluate(secs(t), tracker.iter(), &NeverBan::default(), &bans) {
                assert_eq!(decision.net, IpNet::from(flooder), "{}", decision.reason);
                assert_eq!(decision.metric, Metric::ImageCreatesPerMinute);
                banned_at = Some(t);
            }
        }
        // Its first poll after the flood began shows 50 creates; the second, 100.
        assert_eq!(banned_at, Some(1802));
    }
}
