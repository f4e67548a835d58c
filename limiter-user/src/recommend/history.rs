//! What `limiter recommend` reasons from: each source's peak on each thresholded metric, and
//! whether a decision (a ban, or the one monitor mode would have made) or a manual block ever
//! named it. Kept in enforce and monitor mode alike, bounded ([`HISTORY_MAX_SOURCES`]), and
//! saved in the state directory ([`HISTORY_FILE`]) at most a minute apart and when the daemon
//! stops: a `kill -9` loses at most the last minute's peaks, never a rule.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{metric::Metric, policy_config::PolicyConfig, rates::Rates, store};

/// The history's file in the state directory.
pub const HISTORY_FILE: &str = "peaks.json";
/// Sources remembered (plenty for percentiles; a few megabytes). Past it, a new source is
/// taken only if it is more notable than the least notable kept (the highest part of a
/// threshold its peaks reach; offenders first), up to an eighth more; then the least notable
/// are forgotten down to seven eighths. So a flood of a million sources never holds more.
pub const HISTORY_MAX_SOURCES: usize = 16_384;
const HISTORY_HARD_LIMIT: usize = HISTORY_MAX_SOURCES + HISTORY_MAX_SOURCES / 8;
const FORMAT_VERSION: u32 = 1;

/// A peak and when it was seen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub value: f64,
    #[serde(with = "crate::time_text::seconds")]
    pub at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourcePeaks {
    pub address: IpAddr,
    /// By metric, for those it was ever above zero on.
    pub peaks: BTreeMap<Metric, Peak>,
    /// When a decision or a manual block first named it: an offender, left out of the
    /// legitimate sources' figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offender_since: Option<Stamp>,
}

/// A time, RFC 3339 to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp(#[serde(with = "crate::time_text::seconds")] pub SystemTime);

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    sources: Vec<SourcePeaks>,
}

#[derive(Debug, Default)]
pub struct PeakHistory {
    sources: HashMap<IpAddr, SourcePeaks>,
    /// Changed since the last save.
    dirty: bool,
    /// The notability of the least notable source kept at the last trim.
    floor: f64,
}

impl PeakHistory {
    /// The history saved in `dir`; empty when there is none. A file that cannot be read is
    /// an error (the caller starts empty and says so; the file is left for the operator).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(HISTORY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: File = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a peak history: {e}", path.display()))?;
        if file.version != FORMAT_VERSION {
            return Err(format!(
                "{} has version {}, this build reads {FORMAT_VERSION}",
                path.display(),
                file.version
            ));
        }
        Ok(PeakHistory {
            sources: file
                .sources
                .into_iter()
                .map(|source| (source.address, source))
                .collect(),
            dirty: false,
            floor: 0.0,
        })
    }

    /// Writes the history to `dir` if it changed (atomically: a crash leaves the previous
    /// file or this one).
    pub fn save(&mut self, dir: &Path) -> Result<(), String> {
        if !self.dirty {
            return Ok(());
        }
        let mut sources: Vec<SourcePeaks> = self.sources.values().cloned().collect();
        sources.sort_by_key(|source| source.address);
        let bytes = serde_json::to_vec(&File {
            version: FORMAT_VERSION,
            sources,
        })
        .map_err(|e| e.to_string())?;
        store::write_file_atomically(dir, HISTORY_FILE, &bytes)?;
        self.dirty = false;
        Ok(())
    }

    /// A source's figures this poll: a new peak on any thresholded metric is kept.
    pub fn observe(&mut self, addr: IpAddr, rates: &Rates, now: SystemTime, policy: &PolicyConfig) {
        let figures = Metric::THRESHOLDED.map(|metric| (metric, metric.observed(rates)));
        if figures.iter().all(|(_, value)| *value <= 0.0) {
            return;
        }
        if !self.sources.contains_key(&addr) {
            let room = self.sources.len() < HISTORY_MAX_SOURCES
                || (self.sources.len() < HISTORY_HARD_LIMIT
                    && notability(figures.iter().copied(), false, policy) > self.floor);
            if !room {
                return;
            }
        }
        let source = self.sources.entry(addr).or_insert_with(|| SourcePeaks {
            address: addr,
            peaks: BTreeMap::new(),
            offender_since: None,
        });
        for (metric, value) in figures.into_iter().filter(|(_, value)| *value > 0.0) {
            let peak = source.peaks.entry(metric).or_insert(Peak {
                value: 0.0,
                at: now,
            });
            if value > peak.value {
                *peak = Peak { value, at: now };
                self.dirty = true;
            }
        }
    }

    /// A ban (or would-be ban) or a manual block of `net`: the sources it covers are
    /// offenders from now.
    pub fn offended(&mut self, net: IpNet, now: SystemTime) {
        let mark = |source: &mut SourcePeaks| {
            if source.offender_since.is_none() {
                source.offender_since = Some(Stamp(now));
                true
            } else {
                false
            }
        };
        if net.prefix_len() == net.max_prefix_len() {
            let addr = net.addr();
            let source = self.sources.entry(addr).or_insert_with(|| SourcePeaks {
                address: addr,
                peaks: BTreeMap::new(),
                offender_since: None,
            });
            self.dirty |= mark(source);
        } else {
            for source in self.sources.values_mut() {
                if net.contains(&source.address) {
                    self.dirty |= mark(source);
                }
            }
        }
    }

    /// At the hard limit, forgets the least notable down to seven eighths of
    /// [`HISTORY_MAX_SOURCES`] (offenders last). Cheap otherwise: call it every poll.
    pub fn bound(&mut self, policy: &PolicyConfig) {
        if self.sources.len() < HISTORY_HARD_LIMIT {
            return;
        }
        let mut ranked: Vec<(f64, IpAddr)> = self
            .sources
            .values()
            .map(|source| {
                let peaks = source.peaks.iter().map(|(m, p)| (*m, p.value));
                let score = notability(peaks, source.offender_since.is_some(), policy);
                (score, source.address)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let keep = HISTORY_MAX_SOURCES - HISTORY_MAX_SOURCES / 8;
        let forget = ranked.len().saturating_sub(keep);
        for (_, addr) in &ranked[..forget] {
            self.sources.remove(addr);
        }
        self.floor = ranked.get(forget).map_or(0.0, |(score, _)| *score);
        self.dirty = true;
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourcePeaks> + '_ {
        self.sources.values()
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// How much a source matters to the history: the highest part of a threshold its peaks
/// reach (capped just under 1), plus 1 for an offender.
fn notability(
    peaks: impl Iterator<Item = (Metric, f64)>,
    offender: bool,
    policy: &PolicyConfig,
) -> f64 {
    let worst = peaks
        .filter_map(|(metric, value)| Some(value / f64::from(policy.threshold(metric)?.max(1))))
        .fold(0.0, f64::max);
    f64::from(u8::from(offender)) + worst.min(0.999)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn creating(per_minute: u64) -> Rates {
        Rates {
            image_creates_last_minute: per_minute,
            image_creates_last_hour: per_minute,
            ..Rates::default()
        }
    }

    #[test]
    fn peaks_are_kept_with_their_time_and_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = PeakHistory::default();
        let policy = PolicyConfig::default();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        history.observe(a, &creating(10), at(1), &policy);
        history.observe(a, &creating(30), at(2), &policy);
        history.observe(a, &creating(20), at(3), &policy);
        history.observe(
            "203.0.113.5".parse().unwrap(),
            &Rates::default(),
            at(3),
            &policy,
        );
        assert_eq!(history.len(), 1, "a source with nothing is not kept");
        history.offended("198.51.100.0/24".parse().unwrap(), at(4));
        history.save(dir.path()).unwrap();

        let loaded = PeakHistory::load(dir.path()).unwrap();
        let source = loaded.sources().next().unwrap();
        assert_eq!(
            source.peaks[&Metric::ImageCreatesPerMinute],
            Peak {
                value: 30.0,
                at: at(2)
            }
        );
        assert_eq!(source.offender_since, Some(Stamp(at(4))));
    }

    #[test]
    fn a_broken_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HISTORY_FILE), b"{not json").unwrap();
        let error = PeakHistory::load(dir.path()).unwrap_err();
        assert!(
            error.contains("peaks.json is not a peak history"),
            "{error}"
        );
    }

    #[test]
    fn beyond_its_bound_the_least_notable_are_forgotten_and_a_flood_cannot_grow_it() {
        let mut history = PeakHistory::default();
        let policy = PolicyConfig::default();
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // A million sources in one poll: never more than the hard limit held.
        for i in 0..1_000_000u32 {
            history.observe(addr(i), &creating(1 + u64::from(i % 50)), at(1), &policy);
            assert!(history.len() <= HISTORY_HARD_LIMIT);
        }
        history.bound(&policy);
        assert!(history.len() <= HISTORY_MAX_SOURCES - HISTORY_MAX_SOURCES / 8);
        // The busiest (50 a minute) are kept; the quietest (1 a minute) gone.
        assert!(history.sources.contains_key(&addr(49)));
        assert!(!history.sources.contains_key(&addr(50)));
        // Past the limit, a notable newcomer still gets in; a quiet one does not.
        for i in 0..HISTORY_MAX_SOURCES as u32 {
            history.observe(addr(2_000_000 + i), &creating(50), at(2), &policy);
        }
        // The poll ends (the engine bounds the history after each); the next fills it up.
        history.bound(&policy);
        let mut i = 3_000_000;
        while history.len() < HISTORY_MAX_SOURCES {
            history.observe(addr(i), &creating(50), at(3), &policy);
            i += 1;
        }
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        history.observe(attacker, &creating(90), at(3), &policy);
        history.observe(
            "198.51.100.8".parse().unwrap(),
            &creating(1),
            at(3),
            &policy,
        );
        assert!(history.sources.contains_key(&attacker));
        assert!(!history
            .sources
            .contains_key(&"198.51.100.8".parse().unwrap()));
    }
}
