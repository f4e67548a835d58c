//! The control protocol between the daemon and its clients (CLI, TUI, scripts): one JSON
//! object per line over a Unix socket, each request answered by one response line. Every
//! message carries `version`; a daemon answers a version it does not speak with an
//! `unsupported_version` error instead of guessing. docs/CLI.md shows every shape.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{rules::Scope, store::StoredRule};

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
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top: Option<usize>,
    },
    Status,
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
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Sources the daemon tracks (the kernel table's rows plus recently departed ones).
    pub tracked_sources: usize,
    /// Busiest first (by image creates per minute, then new connections per second).
    pub sources: Vec<SourceView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceView {
    pub address: IpAddr,
    pub state: SourceState,
    pub rates: RatesView,
    pub totals: Totals,
    /// RFC 3339, when `state` is `banned`.
    #[serde(default)]
    pub banned_until: Option<String>,
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
    pub reads_per_second: f64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
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
    /// "enforce" or "monitor".
    pub mode: String,
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    pub name: String,
    /// "native" or "generic".
    pub attach_mode: String,
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
    fn unknown_fields_and_ops_are_rejected() {
        assert!(serde_json::from_str::<RequestLine>(r#"{"version":1,"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<RequestLine>(
            r#"{"version":1,"op":"unblock","prefixes":[],"ttl":5}"#
        )
        .is_err());
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
