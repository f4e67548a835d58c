//! What the TUI is told at start: how often to refresh, how much to fetch, and the
//! thresholds to mark on the sparklines.
//!
//! The control API does not report the daemon's thresholds, so `limiter top` reads them from
//! the daemon's configuration file (the same file `limiter run` reads), and says on screen
//! where they came from. Inside the daemon (`limiter run --tui`) they come from its own
//! configuration.

use std::{collections::BTreeMap, path::Path, time::Duration};

use crate::{
    config::{Config, ConfigError},
    metric::Metric,
    policy::PolicyConfig,
};

/// Sources fetched per refresh unless told otherwise (see docs/TUI.md, "How much is fetched").
pub const DEFAULT_MAX_SOURCES: usize = 10_000;

/// Thresholds of the policy, per metric; `None` where disabled or unknown.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// The limit of each metric that has one and is not off.
    limits: BTreeMap<Metric, u32>,
    /// Where they were read: a file, or "built-in defaults".
    pub origin: String,
}

impl Thresholds {
    pub fn from_policy(policy: &PolicyConfig, origin: impl Into<String>) -> Thresholds {
        Thresholds {
            limits: Metric::THRESHOLDED
                .into_iter()
                .filter_map(|m| Some((m, policy.threshold(m)?)))
                .collect(),
            origin: origin.into(),
        }
    }

    pub fn defaults() -> Thresholds {
        Thresholds::from_policy(&PolicyConfig::default(), "built-in defaults")
    }

    /// `None`: the metric has no threshold, or it is off.
    pub fn get(&self, metric: Metric) -> Option<u32> {
        self.limits.get(&metric).copied()
    }
}

/// How the TUI refreshes.
#[derive(Clone, Debug, PartialEq)]
pub struct Refresh {
    pub interval: Duration,
    /// How long one refresh (three requests) may take before the daemon counts as
    /// unreachable for this round.
    pub timeout: Duration,
    /// Ask for at most this many sources (the daemon's busiest); `None` fetches every one.
    pub max_sources: Option<usize>,
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            max_sources: Some(DEFAULT_MAX_SOURCES),
        }
    }
}

/// The thresholds of the daemon's configuration: `config` if given (an error if it cannot
/// be used), else the default file if it exists, else the built-in defaults. A default file
/// that exists but cannot be read or parsed is not fatal for a viewer: the built-in defaults
/// are used and the screen says so.
pub fn load_thresholds(config: Option<&Path>) -> Result<Thresholds, ConfigError> {
    if let Some(path) = config {
        let loaded = Config::load(path)?;
        return Ok(Thresholds::from_policy(
            &loaded.policy,
            path.display().to_string(),
        ));
    }
    let path = Path::new(crate::config::DEFAULT_PATH);
    Ok(match Config::load_or_default(path) {
        Ok(loaded) if path.exists() => {
            Thresholds::from_policy(&loaded.policy, path.display().to_string())
        }
        Ok(_) => Thresholds::defaults(),
        Err(_) => Thresholds::from_policy(
            &PolicyConfig::default(),
            format!("built-in defaults ({} is unusable)", path.display()),
        ),
    })
}

/// How long one refresh may take: three intervals (at least 2 s), and never more than the
/// `--timeout` the operator gave. Past it the screen says the daemon is unreachable and the
/// next refresh starts on a new connection.
pub fn refresh_timeout(interval: Duration, cap: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(2)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_come_from_the_given_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limiter.toml");
        std::fs::write(&path, "[policy]\nimage_creates_per_minute = 30\n").unwrap();
        let thresholds = load_thresholds(Some(&path)).unwrap();
        assert_eq!(thresholds.get(Metric::ImageCreatesPerMinute), Some(30));
        assert_eq!(thresholds.origin, path.display().to_string());
        std::fs::write(&path, "[policy]\nbogus = 1\n").unwrap();
        assert!(matches!(
            load_thresholds(Some(&path)),
            Err(ConfigError::Syntax { .. } | ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            load_thresholds(Some(&dir.path().join("absent.toml"))),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn refresh_timeouts_follow_the_interval_within_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(
            refresh_timeout(Duration::from_secs(1), cap),
            Duration::from_secs(3)
        );
        assert_eq!(
            refresh_timeout(Duration::from_millis(200), cap),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_timeout(Duration::from_secs(10), Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
