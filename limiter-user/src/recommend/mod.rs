//! `limiter recommend`: thresholds proposed from what the daemon has seen (pure, from a
//! [`PeakHistory`] and the policy in force).
//!
//! For each thresholded metric: the legitimate sources are those no decision and no manual
//! block ever named; the proposal is their `percentile` peak times `margin`, rounded up. With
//! it come the sources each policy, the current and the proposed, would have banned (a peak
//! at or over the threshold) and when that peak was seen, offenders or not, so an operator
//! sees what a change would have done before making it. A metric no legitimate source was
//! ever seen on keeps its threshold: there is no evidence for another.

pub mod history;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use self::history::{PeakHistory, HISTORY_FILE};
use crate::{metric::Metric, policy_config::PolicyConfig, time_text::to_seconds as rfc3339};

/// The default percentile of legitimate peaks a proposal starts from.
pub const DEFAULT_PERCENTILE: f64 = 99.0;
/// The default headroom over it.
pub const DEFAULT_MARGIN: f64 = 2.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Sources in the history, offenders included.
    pub sources_seen: usize,
    /// Of those, named by a decision or a manual block.
    pub offenders: usize,
    /// The oldest peak in the history (RFC 3339), if any.
    pub since: Option<String>,
    pub percentile: f64,
    pub margin: f64,
    pub metrics: Vec<MetricAdvice>,
    /// Sources the thresholds in force would have banned.
    pub banned_by_current: Vec<WouldBan>,
    /// Sources the proposed thresholds would have banned.
    pub banned_by_proposed: Vec<WouldBan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricAdvice {
    pub metric: Metric,
    /// `None`: off.
    pub current: Option<u32>,
    pub proposed: Option<u32>,
    /// Legitimate sources seen above zero on it.
    pub legitimate_sources: usize,
    /// Their peak at `percentile`, and their highest.
    pub legitimate_percentile_peak: Option<f64>,
    pub legitimate_max_peak: Option<f64>,
    /// The lowest offender peak: a proposal at or below it bans every offender seen.
    pub offender_min_peak: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WouldBan {
    pub address: IpAddr,
    pub metric: Metric,
    pub peak: f64,
    pub threshold: u32,
    /// When the peak was seen (RFC 3339): the ban would have come then at the latest.
    pub at: String,
    pub offender: bool,
}

/// Why `recommend` refused its arguments.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecommendError {
    #[error("--percentile must be over 0 and at most 100 (for example 99), not {0}")]
    Percentile(f64),
    #[error("--margin must be at least 1 (1.5 is half as much again), not {0}")]
    Margin(f64),
}

pub fn recommend(
    history: &PeakHistory,
    policy: &PolicyConfig,
    percentile: f64,
    margin: f64,
) -> Result<Recommendation, RecommendError> {
    if !(percentile > 0.0 && percentile <= 100.0) {
        return Err(RecommendError::Percentile(percentile));
    }
    if !(margin >= 1.0 && margin.is_finite()) {
        return Err(RecommendError::Margin(margin));
    }
    let metrics: Vec<MetricAdvice> = Metric::THRESHOLDED
        .into_iter()
        .map(|metric| advise(history, policy, metric, percentile, margin))
        .collect();
    let would_ban = |threshold: &dyn Fn(Metric) -> Option<u32>| {
        let mut banned: Vec<WouldBan> = history
            .sources()
            .filter_map(|source| {
                // The metric most over its threshold names the ban.
                source
                    .peaks
                    .iter()
                    .filter_map(|(metric, peak)| {
                        let limit = threshold(*metric)?;
                        (peak.value >= f64::from(limit)).then_some((*metric, *peak, limit))
                    })
                    // The first on a tie (metrics in their declared order).
                    .reduce(|a, b| {
                        let over = |(_, peak, limit): &(Metric, history::Peak, u32)| {
                            peak.value / f64::from(*limit)
                        };
                        if over(&b) > over(&a) {
                            b
                        } else {
                            a
                        }
                    })
                    .map(|(metric, peak, limit)| WouldBan {
                        address: source.address,
                        metric,
                        peak: peak.value,
                        threshold: limit,
                        at: rfc3339(peak.at),
                        offender: source.offender_since.is_some(),
                    })
            })
            .collect();
        banned.sort_by_key(|ban| ban.address);
        banned
    };
    let proposed = |metric: Metric| {
        metrics
            .iter()
            .find(|advice| advice.metric == metric)
            .and_then(|advice| advice.proposed)
    };
    Ok(Recommendation {
        sources_seen: history.len(),
        offenders: history
            .sources()
            .filter(|s| s.offender_since.is_some())
            .count(),
        since: history
            .sources()
            .flat_map(|s| s.peaks.values().map(|p| p.at))
            .min()
            .map(rfc3339),
        percentile,
        margin,
        banned_by_current: would_ban(&|metric| policy.threshold(metric)),
        banned_by_proposed: would_ban(&proposed),
        metrics,
    })
}

fn advise(
    history: &PeakHistory,
    policy: &PolicyConfig,
    metric: Metric,
    percentile: f64,
    margin: f64,
) -> MetricAdvice {
    let mut legitimate: Vec<f64> = Vec::new();
    let mut offender_min: Option<f64> = None;
    for source in history.sources() {
        let Some(peak) = source.peaks.get(&metric) else {
            continue;
        };
        if source.offender_since.is_some() {
            offender_min = Some(offender_min.map_or(peak.value, |m: f64| m.min(peak.value)));
        } else {
            legitimate.push(peak.value);
        }
    }
    legitimate.sort_by(f64::total_cmp);
    let current = policy.threshold(metric);
    let at_percentile = nearest_rank(&legitimate, percentile);
    let proposed = match (at_percentile, current) {
        // Off stays off: turning a check on is the operator's call.
        (_, None) => None,
        (Some(peak), Some(_)) => Some(((peak * margin).ceil() as u32).max(1)),
        (None, current) => current,
    };
    MetricAdvice {
        metric,
        current,
        proposed,
        legitimate_sources: legitimate.len(),
        legitimate_percentile_peak: at_percentile,
        legitimate_max_peak: legitimate.last().copied(),
        offender_min_peak: offender_min,
    }
}

/// The nearest-rank percentile of sorted `values`.
fn nearest_rank(values: &[f64], percentile: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((percentile / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::rates::Rates;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn creating(per_minute: u64) -> Rates {
        Rates {
            image_creates_last_minute: per_minute,
            image_creates_last_hour: per_minute,
            new_connections_in_window: per_minute * 10,
            ..Rates::default()
        }
    }

    fn recorded() -> PeakHistory {
        let mut history = PeakHistory::default();
        for (i, per_minute) in [3, 5, 8, 10, 12].into_iter().enumerate() {
            let addr: IpAddr = format!("203.0.113.{}", 10 + i).parse().unwrap();
            history.observe(
                addr,
                &creating(per_minute),
                at(i as u64),
                &PolicyConfig::default(),
            );
        }
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        history.observe(attacker, &creating(75), at(100), &PolicyConfig::default());
        history.offended("198.51.100.7/32".parse().unwrap(), at(100));
        history
    }

    #[test]
    fn proposals_ban_the_recorded_attacker_and_no_legitimate_client() {
        let history = recorded();
        let advice = recommend(&history, &PolicyConfig::default(), 99.0, 2.0).unwrap();
        assert_eq!((advice.sources_seen, advice.offenders), (6, 1));
        let creates = &advice.metrics[1];
        assert_eq!(creates.metric, Metric::ImageCreatesPerMinute);
        assert_eq!(creates.current, Some(60));
        assert_eq!(creates.legitimate_percentile_peak, Some(12.0));
        assert_eq!(creates.proposed, Some(24));
        assert_eq!(creates.offender_min_peak, Some(75.0));
        let banned: Vec<String> = advice
            .banned_by_proposed
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        assert_eq!(banned, ["198.51.100.7"]);
        assert!(advice.banned_by_proposed[0].offender);
        assert_eq!(advice.banned_by_current.len(), 1);
        // Other writes were never seen: no evidence, the threshold stays.
        assert_eq!(advice.metrics[3].proposed, Some(300));
        assert_eq!(advice.metrics[3].legitimate_sources, 0);
    }

    #[test]
    fn a_tighter_margin_or_percentile_lists_who_it_would_catch() {
        let history = recorded();
        let advice = recommend(&history, &PolicyConfig::default(), 50.0, 1.0).unwrap();
        assert_eq!(advice.metrics[1].proposed, Some(8));
        let banned: Vec<(String, bool)> = advice
            .banned_by_proposed
            .iter()
            .map(|b| (b.address.to_string(), b.offender))
            .collect();
        assert_eq!(
            banned,
            [
                ("198.51.100.7".to_string(), true),
                ("203.0.113.12".to_string(), false),
                ("203.0.113.13".to_string(), false),
                ("203.0.113.14".to_string(), false),
            ]
        );
    }

    #[test]
    fn arguments_out_of_range_are_refused() {
        let history = PeakHistory::default();
        let policy = PolicyConfig::default();
        assert_eq!(
            recommend(&history, &policy, 0.0, 2.0),
            Err(RecommendError::Percentile(0.0))
        );
        assert_eq!(
            recommend(&history, &policy, 99.0, 0.5),
            Err(RecommendError::Margin(0.5))
        );
        let empty = recommend(&history, &policy, 99.0, 2.0).unwrap();
        assert_eq!(
            empty.metrics[1].proposed,
            Some(60),
            "no evidence, no change"
        );
    }
}
