//! Every per-source rate the daemon measures, as one enum from the kernel's counters to the
//! policy, the control protocol and the screen. Each concern keeps its own `impl Metric` next
//! to its code (the policy's comparison in `policy_config`, the wire's reading in
//! `control::protocol`, the tracker's in `rates`), each an exhaustive `match`: a new metric is
//! one variant here, and every place that must handle it fails to compile until it does.
//!
//! A leaf: it imports nothing of the crate, so anything may use it.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use strum::{EnumCount, VariantArray};

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Metric {
    /// Mean new connections (SYNs) per second over the last 10 s.
    NewConnectionsPerSecond,
    /// `POST /v1|v2/images` in the last minute.
    ImageCreatesPerMinute,
    /// `POST /v1|v2/images` in the last hour.
    ImageCreatesPerHour,
    /// Other POST, PUT, PATCH, DELETE in the last minute.
    OtherWritesPerMinute,
    /// Image records created in the last hour: creates Glance answered with a 2xx status, as
    /// the kernel's egress program read them. Node-local (not shared through the cluster).
    RecordsCreatedPerHour,
    /// GET, HEAD, OPTIONS per second over the last poll interval.
    ReadsPerSecond,
    /// Packets per second over the last poll interval.
    PacketsPerSecond,
    /// Bytes per second over the last poll interval.
    BytesPerSecond,
}

impl Metric {
    /// Every metric, in declaration order.
    pub const ALL: [Metric; Metric::COUNT] = {
        let mut all = [Metric::NewConnectionsPerSecond; Metric::COUNT];
        let mut i = 0;
        while i < Metric::COUNT {
            all[i] = <Metric as VariantArray>::VARIANTS[i];
            i += 1;
        }
        all
    };

    /// Those a threshold can limit (the others are for display): the ones with a
    /// [`Metric::threshold_window`].
    pub const THRESHOLDED: [Metric; 5] = [
        Metric::NewConnectionsPerSecond,
        Metric::ImageCreatesPerMinute,
        Metric::ImageCreatesPerHour,
        Metric::OtherWritesPerMinute,
        Metric::RecordsCreatedPerHour,
    ];

    /// Those whose counts the nodes of a cluster share (in this order on the wire): the
    /// answers the egress program reads are this node's own.
    pub const CLUSTER_SHARED: [Metric; 4] = [
        Metric::NewConnectionsPerSecond,
        Metric::ImageCreatesPerMinute,
        Metric::ImageCreatesPerHour,
        Metric::OtherWritesPerMinute,
    ];

    /// Its name everywhere text names it: the configuration key of its threshold, the field
    /// of `stats --json`'s `rates`, logs and metrics labels.
    pub fn key(self) -> &'static str {
        self.into()
    }

    /// The trailing window a threshold on it is checked over; `None`: it has no threshold.
    pub const fn threshold_window(self) -> Option<Duration> {
        match self {
            Metric::NewConnectionsPerSecond => Some(Duration::from_secs(10)),
            Metric::ImageCreatesPerMinute | Metric::OtherWritesPerMinute => {
                Some(Duration::from_secs(60))
            }
            Metric::ImageCreatesPerHour | Metric::RecordsCreatedPerHour => {
                Some(Duration::from_secs(3600))
            }
            Metric::ReadsPerSecond | Metric::PacketsPerSecond | Metric::BytesPerSecond => None,
        }
    }

    /// Its name as a sort key of `stats --sort` and the control protocol.
    pub const fn sort_name(self) -> &'static str {
        match self {
            Metric::NewConnectionsPerSecond => "new_connections",
            Metric::ImageCreatesPerMinute => "image_creates",
            Metric::ImageCreatesPerHour => "image_creates_per_hour",
            Metric::OtherWritesPerMinute => "other_writes",
            Metric::RecordsCreatedPerHour => "records_created",
            Metric::ReadsPerSecond => "reads",
            Metric::PacketsPerSecond => "packets",
            Metric::BytesPerSecond => "bytes",
        }
    }

    /// Its unit, short, as the screen labels a sparkline.
    pub const fn label(self) -> &'static str {
        match self {
            Metric::NewConnectionsPerSecond => "conn/s",
            Metric::ImageCreatesPerMinute => "creates/min",
            Metric::ImageCreatesPerHour => "creates/h",
            Metric::OtherWritesPerMinute => "writes/min",
            Metric::RecordsCreatedPerHour => "records/h",
            Metric::ReadsPerSecond => "reads/s",
            Metric::PacketsPerSecond => "packets/s",
            Metric::BytesPerSecond => "bytes/s",
        }
    }

    /// Its column header at 80 columns, and when there is room.
    pub const fn headers(self) -> (&'static str, &'static str) {
        match self {
            Metric::NewConnectionsPerSecond => ("CONN/S", "NEW CONN/S"),
            Metric::ImageCreatesPerMinute => ("CREATE/M", "CREATES/MIN"),
            Metric::ImageCreatesPerHour => ("CREATE/H", "CREATES/HOUR"),
            Metric::OtherWritesPerMinute => ("WRITE/M", "WRITES/MIN"),
            Metric::RecordsCreatedPerHour => ("RECORD/H", "RECORDS/HOUR"),
            Metric::ReadsPerSecond => ("READ/S", "READS/S"),
            Metric::PacketsPerSecond => ("PKT/S", "PACKETS/S"),
            Metric::BytesPerSecond => ("BYTE/S", "BYTES/S"),
        }
    }

    /// The metric whose [`Metric::key`] or [`Metric::sort_name`] is `name`.
    pub fn named(name: &str) -> Option<Metric> {
        Metric::ALL
            .into_iter()
            .find(|m| m.key() == name || m.sort_name() == name)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thresholded_are_exactly_those_with_a_window() {
        let with_window: Vec<Metric> = Metric::ALL
            .into_iter()
            .filter(|m| m.threshold_window().is_some())
            .collect();
        assert_eq!(with_window, Metric::THRESHOLDED);
    }

    #[test]
    fn names_are_unique_and_serde_uses_the_key() {
        for a in Metric::ALL {
            assert_eq!(Metric::named(a.key()), Some(a));
            assert_eq!(a.key(), a.key().to_lowercase(), "snake_case");
            assert_eq!(Metric::named(a.sort_name()), Some(a));
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.key())
            );
            for b in Metric::ALL.into_iter().filter(|b| *b != a) {
                assert_ne!(a.key(), b.key());
                assert_ne!(a.sort_name(), b.sort_name());
                assert_ne!(a.headers(), b.headers());
            }
        }
    }
}
