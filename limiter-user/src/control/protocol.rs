//! The control protocol between the daemon and its clients (CLI, TUI, scripts): one JSON
//! object per line over a Unix socket, each request answered by one response line. Every
//! message carries `version`; a daemon answers a version it does not speak with an
//! `unsupported_version` error instead of guessing. docs/CLI.md shows every shape.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use super::proxies::{ProxyRates, ProxyTotals, ProxyView};
pub use super::query::{SortKey, SourceOrder};
pub use crate::cluster::status::{ClusterHealth, ClusterStatus};
use crate::{
    config::Mode, loader::AttachMode, metric::Metric, recommend::Recommendation, rules::Scope,
    store::StoredRule,
};

pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads (10,000 prefixes fit comfortably).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// A request line: `{"version":1,"op":"block",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestLine {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Block prefixes (all-or-nothing). `ttl_secs` absent: until unblocked.
    Block {
        prefixes: Vec<IpNet>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default)]
        scope: Scope,
        /// Block even prefixes that cover a trusted proxy or lie inside a trusted prefix,
        /// cutting off every client behind it. Absent means false, so clients from before the
        /// field still parse; sent only when true, so daemons from before it still accept
        /// every unforced block (and refuse a forced one as an unknown field, changing
        /// nothing).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Remove block rules, manual or automatic. Absent prefixes are reported, not errors.
    Unblock {
        prefixes: Vec<IpNet>,
    },
    /// Allow prefixes: never banned, exempt from every block.
    Allow {
        prefixes: Vec<IpNet>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Unallow {
        prefixes: Vec<IpNet>,
    },
    List,
    /// Every tracked source, busiest first; only the first `top` with it. A screen names
    /// its `sort` and `filter` (as `limiter top` does): the daemon then selects the first
    /// `top` of the sources that match, in that order, and counts the matches by state
    /// (`matched`). Both absent by default and sent only when set, so clients from before
    /// them still parse and daemons from before them answer every request without them (and
    /// refuse one with them as an unknown field).
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort: Option<SourceOrder>,
        /// An address filter as the screen's `/` takes it: a CIDR prefix or a text prefix.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
    Status,
    /// `limiter cluster status`.
    ClusterStatus,
    /// `limiter recommend`: thresholds from the peaks the daemon has seen. Absent: the
    /// defaults (the 99th percentile, a margin of 2).
    Recommend {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percentile: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        margin: Option<f64>,
    },
}

/// A response line: `{"version":1,"ok":true,"result":{...}}` or
/// `{"version":1,"ok":false,"error":{"kind":"bad_input","message":"..."}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseLine {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
}

impl ResponseLine {
    pub fn ok(reply: Reply) -> Self {
        ResponseLine {
            version: PROTOCOL_VERSION,
            ok: true,
            result: Some(reply),
            error: None,
        }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        ResponseLine {
            version: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(ControlError {
                kind,
                message: message.into(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

/// Why a request failed; the CLI maps these to exit codes (bad input: 2, others: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is wrong (address, prefix, TTL, unknown field); nothing changed.
    BadInput,
    /// The daemon could not do it (state directory, kernel maps); nothing changed.
    Operational,
    /// The peer is neither root nor in the configured group.
    Forbidden,
    UnsupportedVersion,
}

/// What a successful request returns, by request kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Changed(RuleChange),
    Rules(RuleList),
    Stats(Stats),
    Status(Status),
    Cluster(ClusterStatus),
    Recommendation(Recommendation),
}

/// The outcome of block/unblock/allow/unallow. Repeating a request lands in `unchanged` or
/// `absent`: harmless.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleChange {
    pub added: Vec<StoredRule>,
    pub updated: Vec<StoredRule>,
    pub unchanged: Vec<StoredRule>,
    pub removed: Vec<StoredRule>,
    /// Prefixes an unblock/unallow named that had no such rule.
    pub absent: Vec<IpNet>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleList {
    pub rules: Vec<StoredRule>,
    /// Block rules of single addresses whose source's latest request through a trusted proxy
    /// came through this one (by the rule's prefix), as far as the daemon still tracks the
    /// source. Absent when there is none, so answers without proxies read as before, and
    /// clients from before the field ignore it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub via: BTreeMap<IpNet, IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Sources the daemon tracks (the kernel table's rows plus recently departed ones),
    /// trusted proxies included.
    pub tracked_sources: usize,
    /// Busiest first (by image creates per minute, then new connections per second). Trusted
    /// proxies are not among them: they are in `proxies`.
    pub sources: Vec<SourceView>,
    /// The trusted proxies the kernel has seen, with what they relayed. Absent without any
    /// (and from daemons before the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyView>,
    /// `trusted_proxies` entries no trusted proxy has been seen from (in the kernel table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unseen_proxies: Vec<IpNet>,
    /// For a request with `sort` or `filter`: the sources that match the filter (proxies
    /// apart), by state, however many of them `sources` lists. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<StateCounts>,
}

/// Sources by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub ok: usize,
    pub over_threshold: usize,
    pub banned: usize,
    pub allowed: usize,
}

impl StateCounts {
    pub fn add(&mut self, state: SourceState) {
        *match state {
            SourceState::Ok => &mut self.ok,
            SourceState::OverThreshold => &mut self.over_threshold,
            SourceState::Banned => &mut self.banned,
            SourceState::Allowed => &mut self.allowed,
        } += 1;
    }

    pub fn total(&self) -> usize {
        self.ok + self.over_threshold + self.banned + self.allowed
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceView {
    pub address: IpAddr,
    pub state: SourceState,
    pub rates: RatesView,
    pub totals: Totals,
    /// When `state` is `banned`, the end of the ban (`None`: until removed). RFC 3339 to the
    /// second on the wire; a time a reader cannot parse reads as `None`, so the row still
    /// shows, banned.
    #[serde(default, with = "crate::time_text::seconds_or_none")]
    pub banned_until: Option<SystemTime>,
    /// The trusted proxy its latest proxied request came through; absent when it has only
    /// come directly (and from daemons before the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// What became of its image creates, as the kernel saw it; absent when it made none
    /// (and from daemons before the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<CreatesView>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A source's image creates by outcome, since the kernel's entry for it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatesView {
    /// Answered by Glance with a 2xx status: records created.
    pub created: u64,
    /// Answered by Glance with another final status (400, 401, 403, 409, 413, 5xx).
    pub failed: u64,
    /// Over the kernel's budget: refused with 429 in enforce mode, only counted in monitor
    /// mode (never reached Glance in enforce mode).
    pub over_budget: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Ok,
    /// Over a threshold but not banned (monitor mode, or never-ban list).
    OverThreshold,
    Banned,
    Allowed,
}

/// Rates by metric, in the units the thresholds use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RatesView {
    pub new_connections_per_second: f64,
    pub image_creates_per_minute: u64,
    pub image_creates_per_hour: u64,
    pub other_writes_per_minute: u64,
    /// Absent when 0 (and from daemons before it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub records_created_per_hour: u64,
    pub reads_per_second: f64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

impl RatesView {
    /// The figure of `metric`, in its unit.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::NewConnectionsPerSecond => self.new_connections_per_second,
            Metric::ImageCreatesPerMinute => self.image_creates_per_minute as f64,
            Metric::ImageCreatesPerHour => self.image_creates_per_hour as f64,
            Metric::OtherWritesPerMinute => self.other_writes_per_minute as f64,
            Metric::RecordsCreatedPerHour => self.records_created_per_hour as f64,
            Metric::ReadsPerSecond => self.reads_per_second,
            Metric::PacketsPerSecond => self.packets_per_second,
            Metric::BytesPerSecond => self.bytes_per_second,
        }
    }
}

/// Counts since the source entered the kernel table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub syns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub image_create: u64,
    pub other_write: u64,
    pub read: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version (the crate version).
    pub daemon_version: String,
    pub mode: Mode,
    pub interfaces: Vec<InterfaceView>,
    pub ports: Vec<u16>,
    pub uptime_secs: u64,
    pub poll_interval_ms: u64,
    /// How long the last poll took (read, rates, decisions).
    pub last_poll_ms: f64,
    pub tracked_sources: usize,
    pub rules: RuleCounts,
    /// Global kernel counters by name (packets by verdict and reason).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// With `[cluster]`: this node's place in it, and whether etcd is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
    /// Present while the rules file cannot be written (full disk, read-only state directory):
    /// the kernel keeps enforcing, and the daemon retries every poll. Absent when every rule
    /// is saved (and from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<StoreErrorView>,
}

/// Why the rule store is degraded (`limiter status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreErrorView {
    /// When the first of the failed writes in a row happened (RFC 3339).
    pub since: String,
    /// Failed writes in a row (one per poll while degraded, plus refused requests).
    pub failures: u64,
    /// The latest failure.
    pub error: String,
    /// Rules in memory and in the kernel that the file does not have yet (automatic bans,
    /// expiries): written as soon as a write succeeds, lost if the daemon stops first.
    pub unsaved: bool,
}

/// How the program is on an interface's device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedAs {
    Native,
    Generic,
    #[default]
    None,
}

impl AttachedAs {
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachedAs::Native => "native",
            AttachedAs::Generic => "generic",
            AttachedAs::None => "none",
        }
    }
}

impl std::fmt::Display for AttachedAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AttachMode> for AttachedAs {
    fn from(mode: AttachMode) -> Self {
        match mode {
            AttachMode::Native => AttachedAs::Native,
            AttachMode::Generic => AttachedAs::Generic,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    /// The configured name.
    pub name: String,
    /// `none` while the program is on no device of this name (missing or failed).
    pub attach_mode: AttachedAs,
    /// "attached", "down" (attached, the link administratively down), "missing" (no such
    /// interface: the program re-attaches when it returns), "renamed" (the device went on
    /// under `renamed_to`, with the program) or "failed" (attaching failed: `error`).
    /// Absent from daemons that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The device the program is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// Since when the configured name has been without the program (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
    /// When the program was last attached again after the start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reattached_at: Option<String>,
    /// How long the name was without the program before that re-attachment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gap_ms: Option<u64>,
    /// Attachments after the start (re-created interfaces).
    #[serde(default)]
    pub reattachments: u64,
    /// Why attaching fails, while it keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl InterfaceView {
    /// Whether the program is on a device of this name (true for daemons that predate
    /// `state`: they listed only attachments).
    pub fn is_protected(&self) -> bool {
        matches!(
            self.state.as_deref(),
            None | Some("attached") | Some("down")
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub block_auto: usize,
    pub block_manual: usize,
    pub allow: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_wire_fields_keep_their_text() {
        let status = Status {
            mode: Mode::Monitor,
            interfaces: vec![InterfaceView {
                name: "eth1".into(),
                attach_mode: AttachedAs::None,
                ..InterfaceView::default()
            }],
            ..Status::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["mode"], "monitor");
        assert_eq!(json["interfaces"][0]["attach_mode"], "none");
        for (mode, text) in [
            (AttachedAs::Native, "native"),
            (AttachedAs::Generic, "generic"),
        ] {
            assert_eq!(serde_json::to_value(mode).unwrap(), text);
            assert_eq!(
                serde_json::from_value::<AttachedAs>(text.into()).unwrap(),
                mode
            );
        }
        assert_eq!(serde_json::from_value::<Status>(json).unwrap(), status);
    }

    #[test]
    fn requests_round_trip_with_their_op_tag() {
        let line = RequestLine {
            version: PROTOCOL_VERSION,
            request: Request::Block {
                prefixes: vec!["198.51.100.7/32".parse().unwrap()],
                ttl_secs: Some(1800),
                reason: Some("flood".into()),
                scope: Scope::ProtectedPorts,
                force: false,
            },
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"op":"block","prefixes":["198.51.100.7/32"],"ttl_secs":1800,"reason":"flood","scope":"protected_ports"}"#
        );
        assert_eq!(serde_json::from_str::<RequestLine>(&text).unwrap(), line);
        let list: RequestLine = serde_json::from_str(r#"{"version":1,"op":"list"}"#).unwrap();
        assert_eq!(list.request, Request::List);
    }

    #[test]
    fn force_is_optional_and_sent_only_when_set() {
        let old_client: RequestLine =
            serde_json::from_str(r#"{"version":1,"op":"block","prefixes":["198.51.100.0/24"]}"#)
                .unwrap();
        let Request::Block { force, scope, .. } = old_client.request else {
            panic!("{old_client:?}")
        };
        assert!(!force);
        assert_eq!(scope, Scope::ProtectedPorts);

        let forced = RequestLine {
            version: PROTOCOL_VERSION,
            request: Request::Block {
                prefixes: vec!["198.51.100.0/24".parse().unwrap()],
                ttl_secs: None,
                reason: None,
                scope: Scope::AllPorts,
                force: true,
            },
        };
        let text = serde_json::to_string(&forced).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"op":"block","prefixes":["198.51.100.0/24"],"scope":"all_ports","force":true}"#
        );
        assert_eq!(serde_json::from_str::<RequestLine>(&text).unwrap(), forced);
        assert!(
            serde_json::from_str::<RequestLine>(
                r#"{"version":1,"op":"allow","prefixes":["192.0.2.0/24"],"force":true}"#
            )
            .is_err(),
            "force is for block only"
        );
    }

    #[test]
    fn stats_sort_and_filter_are_optional_and_sent_only_when_set() {
        let old_client: RequestLine =
            serde_json::from_str(r#"{"version":1,"op":"stats","top":5}"#).unwrap();
        assert_eq!(
            old_client.request,
            Request::Stats {
                top: Some(5),
                sort: None,
                filter: None
            }
        );
        let plain = RequestLine {
            version: PROTOCOL_VERSION,
            request: Request::Stats {
                top: None,
                sort: None,
                filter: None,
            },
        };
        // What `limiter stats` sends, byte for byte as before the fields.
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"version":1,"op":"stats"}"#
        );
        let screen = RequestLine {
            version: PROTOCOL_VERSION,
            request: Request::Stats {
                top: Some(120),
                sort: Some(SourceOrder {
                    by: SortKey::Rate(crate::metric::Metric::BytesPerSecond),
                    descending: true,
                    pin_important: false,
                }),
                filter: Some("198.51.100.0/24".into()),
            },
        };
        let text = serde_json::to_string(&screen).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"op":"stats","top":120,"sort":{"by":"bytes","descending":true,"pin_important":false},"filter":"198.51.100.0/24"}"#
        );
        assert_eq!(serde_json::from_str::<RequestLine>(&text).unwrap(), screen);
    }

    #[test]
    fn a_daemon_from_before_sort_refuses_it_by_name() {
        // The request as a daemon without the fields reads it.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
        enum OldRequest {
            Stats {
                #[serde(default)]
                top: Option<usize>,
            },
        }
        let screen = Request::Stats {
            top: Some(120),
            sort: Some(SourceOrder::default()),
            filter: None,
        };
        let error = serde_json::from_value::<OldRequest>(serde_json::to_value(&screen).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `sort`"), "{error}");
        let plain = Request::Stats {
            top: Some(120),
            sort: None,
            filter: None,
        };
        let OldRequest::Stats { top } =
            serde_json::from_value::<OldRequest>(serde_json::to_value(&plain).unwrap()).unwrap();
        assert_eq!(top, Some(120), "an old daemon reads a plain request whole");
    }

    #[test]
    fn matched_counts_are_absent_unless_asked_and_old_clients_ignore_them() {
        let mut stats = stats_with_a_proxy();
        assert!(!serde_json::to_string(&stats).unwrap().contains("matched"));
        let mut counts = StateCounts::default();
        counts.add(SourceState::OverThreshold);
        counts.add(SourceState::Ok);
        stats.matched = Some(counts);
        let text = serde_json::to_string(&Reply::Stats(stats.clone())).unwrap();
        assert!(
            text.ends_with(r#""matched":{"ok":1,"over_threshold":1,"banned":0,"allowed":0}}"#),
            "{text}"
        );
        assert_eq!(reply(&text), Reply::Stats(stats));
        assert_eq!(counts.total(), 2);
    }

    #[test]
    fn unknown_fields_and_ops_are_rejected() {
        assert!(serde_json::from_str::<RequestLine>(r#"{"version":1,"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<RequestLine>(
            r#"{"version":1,"op":"unblock","prefixes":[],"ttl":5}"#
        )
        .is_err());
    }

    fn stats_with_a_proxy() -> Stats {
        let client = SourceView {
            address: "203.0.113.9".parse().unwrap(),
            state: SourceState::OverThreshold,
            rates: RatesView {
                image_creates_per_minute: 300,
                ..RatesView::default()
            },
            totals: Totals::default(),
            banned_until: None,
            via: Some("198.51.100.2".parse().unwrap()),
            creates: None,
        };
        let direct = SourceView {
            address: "203.0.113.10".parse().unwrap(),
            via: None,
            ..client.clone()
        };
        Stats {
            tracked_sources: 3,
            sources: vec![client, direct],
            proxies: vec![ProxyView {
                address: "198.51.100.2".parse().unwrap(),
                trusted_entry: Some("198.51.100.2/32".parse().unwrap()),
                blocked: false,
                rates: ProxyRates {
                    proxied_per_minute: 300,
                    unattributed_per_minute: 2,
                    ..ProxyRates::default()
                },
                totals: ProxyTotals {
                    proxied: 9120,
                    unattributed: 14,
                    ..ProxyTotals::default()
                },
            }],
            unseen_proxies: vec!["2001:db8:10::/64".parse().unwrap()],
            matched: None,
        }
    }

    fn reply(text: &str) -> Reply {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn stats_carry_via_and_proxies_and_round_trip() {
        let stats = stats_with_a_proxy();
        let text = serde_json::to_string(&Reply::Stats(stats.clone())).unwrap();
        assert!(
            text.contains(r#""banned_until":null,"via":"198.51.100.2"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""banned_until":null}],"#),
            "no via on a direct source: {text}"
        );
        assert!(
            text.contains(
                r#""proxies":[{"address":"198.51.100.2","trusted_entry":"198.51.100.2/32","rates":"#
            ),
            "{text}"
        );
        assert!(!text.contains("blocked"), "sent only when true: {text}");
        assert!(
            text.ends_with(r#""unseen_proxies":["2001:db8:10::/64"]}"#),
            "{text}"
        );
        assert_eq!(reply(&text), Reply::Stats(stats));
    }

    #[test]
    fn without_proxies_stats_read_as_before_both_ways() {
        // What a daemon from before the fields answers: a new client reads it.
        let old_answer = r#"{"tracked_sources":1,"sources":[{"address":"198.51.100.7","state":"banned","rates":{"new_connections_per_second":0.0,"image_creates_per_minute":300,"image_creates_per_hour":900,"other_writes_per_minute":0,"reads_per_second":0.0,"packets_per_second":0.0,"bytes_per_second":0.0},"totals":{"syns":0,"packets":0,"bytes":0,"image_create":1200,"other_write":0,"read":0},"banned_until":"2025-06-01T10:10:00Z"}]}"#;
        let Reply::Stats(stats) = reply(old_answer) else {
            panic!("not stats")
        };
        assert_eq!(stats.sources[0].via, None);
        assert!(stats.proxies.is_empty() && stats.unseen_proxies.is_empty());
        // And a new daemon without proxies answers exactly that.
        assert_eq!(serde_json::to_string(&stats).unwrap(), old_answer);
    }

    #[test]
    fn clients_from_before_the_fields_read_the_new_answers() {
        // The shapes as they were before `via`, `proxies` and `unseen_proxies`.
        #[derive(Deserialize)]
        struct OldSource {
            address: IpAddr,
            state: SourceState,
            banned_until: Option<String>,
        }
        #[derive(Deserialize)]
        struct OldStats {
            tracked_sources: usize,
            sources: Vec<OldSource>,
        }
        #[derive(Deserialize)]
        struct OldRules {
            rules: Vec<StoredRule>,
        }
        let text = serde_json::to_string(&stats_with_a_proxy()).unwrap();
        let old: OldStats = serde_json::from_str(&text).unwrap();
        assert_eq!((old.tracked_sources, old.sources.len()), (3, 2));
        assert_eq!(old.sources[0].address.to_string(), "203.0.113.9");
        assert_eq!(old.sources[0].state, SourceState::OverThreshold);
        assert_eq!(old.sources[0].banned_until, None);

        let rule = StoredRule {
            prefix: "203.0.113.9/32".parse().unwrap(),
            action: crate::rules::Action::Block,
            scope: Scope::ProtectedPorts,
            origin: crate::store::Origin::Auto,
            reason: "flood".into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            expires: None,
            node: None,
        };
        let list = RuleList {
            rules: vec![rule],
            via: [(
                "203.0.113.9/32".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            )]
            .into(),
        };
        let text = serde_json::to_string(&Reply::Rules(list.clone())).unwrap();
        assert!(
            text.ends_with(r#""via":{"203.0.113.9/32":"198.51.100.2"}}"#),
            "{text}"
        );
        assert_eq!(reply(&text), Reply::Rules(list.clone()));
        let old: OldRules = serde_json::from_str(&text).unwrap();
        assert_eq!(old.rules, list.rules);
        let without = serde_json::to_string(&RuleList {
            via: BTreeMap::new(),
            ..list
        })
        .unwrap();
        assert!(!without.contains("via"), "{without}");
    }

    #[test]
    fn errors_serialize_with_their_kind() {
        let text =
            serde_json::to_string(&ResponseLine::error(ErrorKind::BadInput, "no such address"))
                .unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"ok":false,"error":{"kind":"bad_input","message":"no such address"}}"#
        );
    }
}
