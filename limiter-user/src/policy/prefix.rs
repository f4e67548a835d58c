//! Bans on a prefix's summed rates (`[policy.prefix]`): a flood spread over many hosts of one
//! network, each under the host thresholds, is banned as the network it comes from. The
//! offence history is the aggregates' (a prefix banned by either way escalates the same).

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{millis, record, BanKind, Decision, Metric, NeverBan, Policy, Violation};
use crate::{prefixes::PrefixSet, rates::Rates};

/// A prefix over its limit, with its unbanned sources.
type Over = (IpNet, Violation, Vec<(IpAddr, Rates)>);

/// At most this many contributors are named in a prefix-rate ban's reason.
const CONTRIBUTORS_NAMED: usize = 8;

/// A prefix whose sum reaches a threshold: the sum, and the sources known to have added to it.
#[derive(Clone, Debug)]
pub struct PrefixCandidate {
    pub prefix: IpNet,
    pub sum: Rates,
    pub sources: Vec<(IpAddr, Rates)>,
}

/// The windowed figures the thresholds compare, `sum` less those of `sources`.
fn without(mut sum: Rates, sources: &[(IpAddr, Rates)]) -> Rates {
    for (_, rates) in sources {
        sum.new_connections_in_window = sum
            .new_connections_in_window
            .saturating_sub(rates.new_connections_in_window);
        sum.image_creates_last_minute = sum
            .image_creates_last_minute
            .saturating_sub(rates.image_creates_last_minute);
        sum.image_creates_last_hour = sum
            .image_creates_last_hour
            .saturating_sub(rates.image_creates_last_hour);
        sum.other_writes_last_minute = sum
            .other_writes_last_minute
            .saturating_sub(rates.other_writes_last_minute);
    }
    sum
}

impl Policy {
    /// Bans for the prefixes whose summed rates reach a `[policy.prefix]` threshold, in
    /// address order. Each candidate comes with its sum and its known sources with their
    /// rates; those already banned (covered by `current_bans`, which should hold this poll's
    /// host bans too) are taken out of the sum: a single offender is its own ban's business,
    /// and its prefix is banned only if the rest of it floods too. A prefix covered by a ban
    /// in force, or holding a never-ban address, is not banned.
    pub fn evaluate_prefixes(
        &mut self,
        now: Duration,
        candidates: impl IntoIterator<Item = PrefixCandidate>,
        never_ban: &NeverBan,
        current_bans: &PrefixSet,
    ) -> Vec<Decision> {
        let now_ms = millis(now);
        let mut over: Vec<Over> = candidates
            .into_iter()
            .filter(|c| !current_bans.covers(&c.prefix) && !never_ban.overlaps(&c.prefix))
            .filter_map(|candidate| {
                let (banned, unbanned): (Vec<_>, Vec<_>) = candidate
                    .sources
                    .into_iter()
                    .partition(|(addr, _)| current_bans.covers_addr(*addr));
                let violation = self.worst_prefix_violation(&without(candidate.sum, &banned))?;
                Some((candidate.prefix, violation, unbanned))
            })
            .collect();
        over.sort_by_key(|(prefix, _, _)| *prefix);
        over.into_iter()
            .map(|(prefix, violation, sources)| {
                self.ban_prefix_rate(now_ms, prefix, violation, sources)
            })
            .collect()
    }

    /// Whether a prefix's summed `rates` reach one of the prefix thresholds.
    pub fn reaches_a_prefix_threshold(&self, rates: &Rates) -> bool {
        self.worst_prefix_violation(rates).is_some()
    }

    /// Whether any prefix threshold is set: without one, prefix sums need not be kept.
    pub fn has_prefix_thresholds(&self) -> bool {
        self.config.prefix.any()
    }

    fn worst_prefix_violation(&self, rates: &Rates) -> Option<Violation> {
        Metric::THRESHOLDED
            .into_iter()
            .filter_map(|metric| {
                let threshold = self.config.prefix.threshold(metric).filter(|t| *t > 0)?;
                metric.reached(rates, threshold).then(|| Violation {
                    metric,
                    observed: metric.observed(rates),
                    threshold,
                })
            })
            .reduce(Violation::worse)
    }

    fn ban_prefix_rate(
        &mut self,
        now_ms: u64,
        prefix: IpNet,
        violation: Violation,
        mut contributors: Vec<(IpAddr, Rates)>,
    ) -> Decision {
        let offence = record(
            self.prefixes.entry(prefix).or_default(),
            now_ms,
            self.offences_kept,
        );
        let Violation {
            metric,
            observed,
            threshold,
        } = violation;
        let ttl = self.ban_ttl(offence, metric.threshold_window().unwrap_or_default());
        // The biggest contributors first, by the metric that tripped.
        contributors.sort_by(|(a_addr, a), (b_addr, b)| {
            metric
                .observed(b)
                .total_cmp(&metric.observed(a))
                .then(a_addr.cmp(b_addr))
        });
        let sources = contributors.len();
        let named: Vec<String> = contributors
            .iter()
            .take(CONTRIBUTORS_NAMED)
            .map(|(addr, rates)| format!("{addr} {}", metric.observed(rates)))
            .collect();
        let more = sources.saturating_sub(CONTRIBUTORS_NAMED);
        let reason = format!(
            "{prefix}: {} summed over its {sources} sources (prefix limit): {}{}; {} → \
             banned for {}",
            metric.describe(observed, threshold),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            self.describe_offence(offence),
            humantime::format_duration(ttl)
        );
        Decision {
            net: prefix,
            kind: BanKind::PrefixRate {
                contributors: contributors.into_iter().map(|(addr, _)| addr).collect(),
            },
            metric,
            observed,
            threshold,
            ttl,
            offence,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn creating(per_minute: u64) -> Rates {
        Rates {
            image_creates_last_minute: per_minute,
            image_creates_last_hour: per_minute,
            ..Rates::default()
        }
    }

    /// `hosts` sources of `prefix` from .2 up, each creating `each` a minute.
    /// `hosts` sources of `prefix` from .2 up, each creating `each` a minute.
    fn spread(prefix: &str, hosts: u8, each: u64) -> Vec<PrefixCandidate> {
        let prefix = net(prefix);
        let IpAddr::V4(base) = prefix.network() else {
            unreachable!()
        };
        let sources = (0..hosts)
            .map(|i| {
                let addr = std::net::Ipv4Addr::from(u32::from(base) + 2 + u32::from(i));
                (IpAddr::from(addr), creating(each))
            })
            .collect();
        vec![PrefixCandidate {
            prefix,
            sum: creating(u64::from(hosts) * each),
            sources,
        }]
    }

    #[test]
    fn a_prefix_over_its_summed_limit_is_banned_naming_its_biggest_sources() {
        let mut policy = Policy::new(PolicyConfig::default());
        let decisions = policy.evaluate_prefixes(
            Duration::from_secs(100),
            spread("198.51.100.0/24", 16, 40),
            &NeverBan::default(),
            &PrefixSet::new(),
        );
        assert_eq!(decisions.len(), 1);
        let decision = &decisions[0];
        assert_eq!(decision.net, net("198.51.100.0/24"));
        assert_eq!(decision.metric, Metric::ImageCreatesPerMinute);
        assert_eq!(decision.threshold, 120);
        assert_eq!(decision.ttl, Duration::from_secs(600));
        let BanKind::PrefixRate { contributors } = &decision.kind else {
            panic!("{decision:?}")
        };
        assert_eq!(contributors.len(), 16);
        assert!(
            decision.reason.starts_with(
                "198.51.100.0/24: 640 image creates in the last minute (limit 120) summed over \
                 its 16 sources (prefix limit): 198.51.100.2 40, 198.51.100.3 40"
            ),
            "{}",
            decision.reason
        );
        assert!(
            decision.reason.contains(" and 8 more; first offence"),
            "{}",
            decision.reason
        );

        // Banned already: not again. Its second offence later is banned for longer.
        let banned: PrefixSet = [net("198.51.100.0/24")].into_iter().collect();
        let again = policy.evaluate_prefixes(
            Duration::from_secs(101),
            spread("198.51.100.0/24", 16, 40),
            &NeverBan::default(),
            &banned,
        );
        assert!(again.is_empty());
        let later = policy.evaluate_prefixes(
            Duration::from_secs(800),
            spread("198.51.100.0/24", 16, 40),
            &NeverBan::default(),
            &PrefixSet::new(),
        );
        assert_eq!(later[0].ttl, Duration::from_secs(1200));
    }

    #[test]
    fn banned_sources_are_left_out_of_the_sum() {
        let mut policy = Policy::new(PolicyConfig::default());
        // One host did most of it and is banned; the other three together stay under 120.
        let mut candidates = spread("198.51.100.0/24", 4, 30);
        candidates[0].sources[0].1 = creating(200);
        candidates[0].sum = creating(200 + 3 * 30);
        let banned: PrefixSet = [candidates[0].sources[0].0].into_iter().collect();
        assert!(policy
            .evaluate_prefixes(
                Duration::from_secs(1),
                candidates.clone(),
                &NeverBan::default(),
                &banned
            )
            .is_empty());
        // Unbanned, the same figures ban the prefix.
        assert_eq!(
            policy
                .evaluate_prefixes(
                    Duration::from_secs(1),
                    candidates,
                    &NeverBan::default(),
                    &PrefixSet::new()
                )
                .len(),
            1
        );
    }

    #[test]
    fn below_the_limit_off_or_holding_a_never_ban_address_no_ban() {
        let mut policy = Policy::new(PolicyConfig::default());
        assert!(policy
            .evaluate_prefixes(
                Duration::from_secs(1),
                spread("198.51.100.0/24", 7, 17),
                &NeverBan::default(),
                &PrefixSet::new(),
            )
            .is_empty());
        let never_ban = NeverBan::new(["198.51.100.200".parse::<IpAddr>().unwrap()]);
        assert!(policy
            .evaluate_prefixes(
                Duration::from_secs(1),
                spread("198.51.100.0/24", 10, 50),
                &never_ban,
                &PrefixSet::new(),
            )
            .is_empty());
        let mut config = PolicyConfig::default();
        config.prefix.image_creates_per_minute = None;
        config.prefix.image_creates_per_hour = None;
        let mut off = Policy::new(config);
        assert!(!off.has_prefix_thresholds());
        assert!(off
            .evaluate_prefixes(
                Duration::from_secs(1),
                spread("198.51.100.0/24", 10, 500),
                &NeverBan::default(),
                &PrefixSet::new(),
            )
            .is_empty());
    }
}
