//! Prometheus metrics of the daemon (docs/METRICS.md lists them).
//!
//! This module is pure: a registry of the `prometheus-client` crate, fed by the engine thread
//! after every poll ([`Metrics::update`], [`Metrics::observe_poll`]) and encoded on demand
//! ([`Metrics::encode`]). The HTTP listener at the edge is [`server`]. Off unless
//! `metrics_listen` is set: an open TCP port on a Glance node is the operator's choice.
//!
//! No metric is labelled by source address: a flood from spoofed sources would otherwise
//! make as many series as packets, and the scrape would carry who talks to Glance.

pub mod server;
mod snapshot;

use std::{fmt, time::Duration};

use prometheus_client::{
    encoding::{prometheus_text, text},
    metrics::{counter::Counter, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

use self::snapshot::Latest;
pub use self::snapshot::{
    ActiveRules, ByOrigin, ClusterMetrics, InterfaceMetric, ProxyRelayed, Snapshot, StoreTrouble,
    Unbans,
};

/// Every metric's name begins with this and `_`.
pub const PREFIX: &str = "glance_limiter";

/// Upper bounds of the poll duration buckets, in seconds: an idle node polls in well under a
/// millisecond, a full million-row table takes about 0.3 s, and a poll near its interval
/// (1 s by default) means the daemon falls behind.
const POLL_BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The daemon's metrics: built once, updated by the engine thread, encoded by the listener.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    latest: Latest,
    poll_duration: Histogram,
    poll_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "build",
            "The running glance-limiter's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let poll_duration = Histogram::new(POLL_BUCKETS);
        registry.register_with_unit(
            "poll_duration",
            "Time a poll took: reading the kernel table, rates, policy, rule store and kernel \
             rules",
            Unit::Seconds,
            poll_duration.clone(),
        );
        let poll_failures = Counter::default();
        registry.register(
            "poll_failures",
            "Polls that failed (kernel or rule store error); the next interval retries",
            poll_failures.clone(),
        );
        let latest = Latest::default();
        registry.register_collector(Box::new(latest.clone()));
        Metrics {
            registry,
            latest,
            poll_duration,
            poll_failures,
        }
    }

    /// Takes the state after a poll. Until the first call, state metrics read zero.
    pub fn update(&self, snapshot: Snapshot) {
        self.latest.replace(snapshot);
    }

    /// Records one poll: how long it took, or that it failed.
    pub fn observe_poll(&self, outcome: Result<Duration, ()>) {
        match outcome {
            Ok(took) => self.poll_duration.observe(took.as_secs_f64()),
            Err(()) => {
                self.poll_failures.inc();
            }
        }
    }

    /// The exposition text, in `format`.
    pub fn encode(&self, format: Format) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        match format {
            Format::Prometheus => prometheus_text::encode(&mut out, &self.registry)?,
            Format::OpenMetrics => text::encode(&mut out, &self.registry)?,
        }
        Ok(out)
    }
}

/// The two text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what curl and most tools get.
    Prometheus,
    /// OpenMetrics 1.0 text: what Prometheus asks for first.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header prefers it to plain text, else Prometheus text
    /// (also for no header, or one naming neither).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics: f32 = 0.0;
        let mut plain: f32 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[cfg(test)]
mod tests;
