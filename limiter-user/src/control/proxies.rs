//! The `proxies` section of a `stats` answer: each trusted proxy the kernel has seen, its own
//! traffic to Glance, and the requests it relayed. A proxy's requests are counted as the
//! clients it names (each client's `via` says through which proxy), or, when no client could be
//! read, as unattributed, never as the proxy's own. The daemon fills it; the CLI and the TUI
//! show it. Every field came after version 1 of the protocol, so `Stats` holds it as optional.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One trusted proxy the kernel has seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyView {
    pub address: IpAddr,
    /// The `trusted_proxies` entry it falls under (`198.51.100.0/28` for a prefix of proxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_entry: Option<IpNet>,
    /// A block rule covers it (only a forced block can): every client behind it is cut off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    pub rates: ProxyRates,
    pub totals: ProxyTotals,
}

/// A proxy's rates. Its own connections, packets and bytes are those of its row (over the
/// last poll interval, as for a source); the requests it relayed are counted over the last
/// minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyRates {
    pub new_connections_per_second: f64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    /// Requests it relayed that were counted as the client it named.
    pub proxied_per_minute: u64,
    /// Requests it relayed whose client could not be read (no header, the header past what
    /// the program reads, a request split across segments).
    pub unattributed_per_minute: u64,
}

/// Counts since the proxy entered the kernel table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyTotals {
    pub syns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub proxied: u64,
    pub unattributed: u64,
}
