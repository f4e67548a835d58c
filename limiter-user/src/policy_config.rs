//! The `[policy]` table of the configuration and the metrics its thresholds limit: the
//! schema `config` reads and `policy` decides with. A module of its own so that neither of
//! those two imports the other.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    duration_text,
    rates::{Rates, NEW_CONNECTION_WINDOW},
};

/// Aggregation prefix lengths the configuration accepts: shorter would ban whole providers
/// for three clients, longer would be a host.
pub const AGGREGATE_IPV4_PREFIXES: std::ops::RangeInclusive<u8> = 16..=31;
pub const AGGREGATE_IPV6_PREFIXES: std::ops::RangeInclusive<u8> = 32..=127;
/// The `[policy]` table of the configuration. Thresholds are `None` when disabled (`"off"` in
/// the file). See docs/CONFIG.md for why each default is what it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Mean new connections (SYNs) per second over the last 10 s.
    #[serde(with = "threshold_text")]
    pub new_connections_per_second: Option<u32>,
    /// Image creates in the last 60 s.
    #[serde(with = "threshold_text")]
    pub image_creates_per_minute: Option<u32>,
    /// Image creates in the last 3600 s.
    #[serde(with = "threshold_text")]
    pub image_creates_per_hour: Option<u32>,
    /// Hold every source to `image_creates_per_minute` in the kernel itself: the create past
    /// the budget is refused at once (429), not at the next poll (see `crate::budget`).
    pub image_create_budget: bool,
    /// Other writes (other POST, PUT, PATCH, DELETE) in the last 60 s.
    #[serde(with = "threshold_text")]
    pub other_writes_per_minute: Option<u32>,
    /// Image records created (creates Glance answered with a 2xx status) in the last 3600 s.
    #[serde(with = "threshold_text")]
    pub records_created_per_hour: Option<u32>,
    /// Ban length of a first offence.
    #[serde(with = "duration_text")]
    pub ban_ttl: Duration,
    /// Growth of the ban length per repeat offence.
    pub ban_ttl_factor: f64,
    /// Longest ban the growth can reach.
    #[serde(with = "duration_text")]
    pub ban_ttl_max: Duration,
    /// How long an offence counts towards repeat offences and aggregation.
    #[serde(with = "duration_text")]
    pub offence_memory: Duration,
    /// Ban a whole prefix once enough of its sources have offended.
    pub aggregate: bool,
    /// Distinct offending sources of one prefix, within `offence_memory`, that ban the prefix.
    pub aggregate_min_sources: u32,
    /// Prefix length of IPv4 aggregation.
    pub aggregate_ipv4_prefix: u8,
    /// Prefix length of IPv6 aggregation.
    pub aggregate_ipv6_prefix: u8,
    /// `[policy.prefix]`: thresholds on the rates summed over every source of one prefix
    /// (the aggregation prefix lengths).
    pub prefix: PrefixThresholds,
}

/// Thresholds on a prefix's summed rates, by the same keys as a host's. `None` when off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixThresholds {
    #[serde(with = "threshold_text")]
    pub new_connections_per_second: Option<u32>,
    #[serde(with = "threshold_text")]
    pub image_creates_per_minute: Option<u32>,
    #[serde(with = "threshold_text")]
    pub image_creates_per_hour: Option<u32>,
    #[serde(with = "threshold_text")]
    pub other_writes_per_minute: Option<u32>,
}

impl Default for PrefixThresholds {
    /// Twice a host's image-create limits: a network of clients gets two hosts' worth of
    /// images, a spread flood no more. Connections and other writes are off: a NAT or a
    /// campus behind one /24 opens many connections legitimately (docs/CONFIG.md).
    fn default() -> Self {
        PrefixThresholds {
            new_connections_per_second: None,
            image_creates_per_minute: Some(120),
            image_creates_per_hour: Some(1200),
            other_writes_per_minute: None,
        }
    }
}

impl PrefixThresholds {
    pub fn threshold(&self, metric: Metric) -> Option<u32> {
        match metric {
            Metric::NewConnectionsPerSecond => self.new_connections_per_second,
            Metric::ImageCreatesPerMinute => self.image_creates_per_minute,
            Metric::ImageCreatesPerHour => self.image_creates_per_hour,
            Metric::OtherWritesPerMinute => self.other_writes_per_minute,
            // A prefix's sum is of the hosts' request counts; answers are per host only.
            Metric::RecordsCreatedPerHour
            | Metric::ReadsPerSecond
            | Metric::PacketsPerSecond
            | Metric::BytesPerSecond => None,
        }
    }

    pub fn any(&self) -> bool {
        Metric::THRESHOLDED
            .iter()
            .any(|m| self.threshold(*m).is_some())
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            new_connections_per_second: Some(50),
            image_creates_per_minute: Some(60),
            image_creates_per_hour: Some(600),
            image_create_budget: true,
            other_writes_per_minute: Some(300),
            records_created_per_hour: None,
            ban_ttl: Duration::from_secs(10 * 60),
            ban_ttl_factor: 2.0,
            ban_ttl_max: Duration::from_secs(4 * 3600),
            offence_memory: Duration::from_secs(24 * 3600),
            aggregate: true,
            aggregate_min_sources: 3,
            aggregate_ipv4_prefix: 24,
            aggregate_ipv6_prefix: 64,
            prefix: PrefixThresholds::default(),
        }
    }
}

impl PolicyConfig {
    pub fn threshold(&self, metric: Metric) -> Option<u32> {
        match metric {
            Metric::NewConnectionsPerSecond => self.new_connections_per_second,
            Metric::ImageCreatesPerMinute => self.image_creates_per_minute,
            Metric::ImageCreatesPerHour => self.image_creates_per_hour,
            Metric::OtherWritesPerMinute => self.other_writes_per_minute,
            Metric::RecordsCreatedPerHour => self.records_created_per_hour,
            Metric::ReadsPerSecond | Metric::PacketsPerSecond | Metric::BytesPerSecond => None,
        }
    }
}

pub use crate::metric::Metric;

/// What the policy asks of a metric: its figure in the threshold's unit, and whether a
/// threshold is reached. Metrics without a threshold are never reached.
impl Metric {
    /// The figure compared with the threshold, in the threshold's unit.
    pub fn observed(self, rates: &Rates) -> f64 {
        match self {
            Metric::NewConnectionsPerSecond => rates.new_connections_per_second(),
            Metric::ImageCreatesPerMinute => rates.image_creates_last_minute as f64,
            Metric::ImageCreatesPerHour => rates.image_creates_last_hour as f64,
            Metric::OtherWritesPerMinute => rates.other_writes_last_minute as f64,
            Metric::RecordsCreatedPerHour => rates.records_created_last_hour as f64,
            Metric::ReadsPerSecond => rates.reads_per_second,
            Metric::PacketsPerSecond => rates.packets_per_second,
            Metric::BytesPerSecond => rates.bytes_per_second,
        }
    }

    /// Whether `rates` reach `threshold`. Compared on whole counts, so a per-second threshold
    /// of 50 trips at exactly 500 SYNs in 10 s, with no rounding in between.
    pub fn reached(self, rates: &Rates, threshold: u32) -> bool {
        let threshold = u64::from(threshold);
        match self {
            Metric::NewConnectionsPerSecond => {
                rates.new_connections_in_window >= threshold * NEW_CONNECTION_WINDOW.as_secs()
            }
            Metric::ImageCreatesPerMinute => rates.image_creates_last_minute >= threshold,
            Metric::ImageCreatesPerHour => rates.image_creates_last_hour >= threshold,
            Metric::OtherWritesPerMinute => rates.other_writes_last_minute >= threshold,
            Metric::RecordsCreatedPerHour => rates.records_created_last_hour >= threshold,
            Metric::ReadsPerSecond | Metric::PacketsPerSecond | Metric::BytesPerSecond => false,
        }
    }

    pub(crate) fn describe(self, observed: f64, threshold: u32) -> String {
        match self {
            Metric::NewConnectionsPerSecond => {
                format!("{observed:.1} new connections/s over the last 10 s (limit {threshold}/s)")
            }
            Metric::ImageCreatesPerMinute => {
                format!("{observed} image creates in the last minute (limit {threshold})")
            }
            Metric::ImageCreatesPerHour => {
                format!("{observed} image creates in the last hour (limit {threshold})")
            }
            Metric::OtherWritesPerMinute => format!(
                "{observed} other writes (POST, PUT, PATCH, DELETE) in the last minute \
                 (limit {threshold})"
            ),
            Metric::RecordsCreatedPerHour => format!(
                "{observed} image records created (creates Glance answered 2xx) in the last \
                 hour (limit {threshold})"
            ),
            Metric::ReadsPerSecond | Metric::PacketsPerSecond | Metric::BytesPerSecond => {
                format!("{observed:.1} {} (limit {threshold})", self.label())
            }
        }
    }
}

/// `Option<u32>` thresholds as a whole number, or `"off"` when disabled.
mod threshold_text {
    use serde::{de, Deserializer, Serializer};

    pub const OFF: &str = "off";

    pub fn serialize<S: Serializer>(value: &Option<u32>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(limit) => serializer.serialize_u32(*limit),
            None => serializer.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u32>, D::Error> {
        deserializer.deserialize_any(ThresholdVisitor)
    }

    struct ThresholdVisitor;

    impl de::Visitor<'_> for ThresholdVisitor {
        type Value = Option<u32>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(
                f,
                "a positive whole number, or \"{OFF}\" to disable this check"
            )
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            u32::try_from(value)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            u32::try_from(value)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            if value == OFF {
                Ok(None)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(value), &self))
            }
        }
    }
}
