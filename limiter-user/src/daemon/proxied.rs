//! What the engine shows of traffic through trusted proxies: which proxy each proxied source
//! came through ([`ViaTable`]), the `proxies` section of `stats` ([`proxy_section`]), and the
//! relay totals the metrics report per configured entry ([`relayed_by_entry`]). The kernel's
//! rows carry the figures; this module only arranges them.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use limiter_common::{ProxyRelays, SOURCE_TRUSTED_PROXY};

use crate::{
    control::protocol::{ProxyRates, ProxyTotals, ProxyView},
    loader::SourceEntry,
    metrics::ProxyRelayed,
    proxy::{
        load::{ProxyLoads, ProxyRow, RelayCounts},
        TrustedProxies,
    },
    rates::{Counts, Rates},
};

/// Whether the kernel marked the row as a trusted proxy's.
pub fn is_proxy_row(row: &SourceEntry) -> bool {
    row.stats.flags & SOURCE_TRUSTED_PROXY != 0
}

/// A proxy's row for [`ProxyLoads`], with what it relayed (`None`: nothing yet, so the
/// history starts at zero with the row); `previous_poll`: the kernel time of the previous poll.
pub fn proxy_row(
    row: &SourceEntry,
    relays: Option<&ProxyRelays>,
    previous_poll: Option<u64>,
) -> ProxyRow {
    let relays = relays.copied().unwrap_or_default();
    ProxyRow {
        addr: row.addr,
        counts: RelayCounts {
            proxied: relays.proxied,
            unattributed: relays.unattributed,
        },
        row_predates_last_poll: previous_poll.is_some_and(|p| row.stats.first_seen < p),
    }
}

/// The trusted proxy each source's latest proxied request came through, as the kernel's
/// `CLIENT_VIA` table had it at the latest poll. Only proxied sources take an entry.
#[derive(Clone, Debug, Default)]
pub struct ViaTable {
    via: HashMap<IpAddr, IpAddr>,
}

impl ViaTable {
    /// Takes the kernel's table as read this poll.
    pub fn replace(&mut self, via: HashMap<IpAddr, IpAddr>) {
        self.via = via
            .into_iter()
            .map(|(client, proxy)| (client.to_canonical(), proxy.to_canonical()))
            .collect();
    }

    pub fn get(&self, addr: IpAddr) -> Option<IpAddr> {
        if self.via.is_empty() {
            return None;
        }
        self.via.get(&addr.to_canonical()).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.via.is_empty()
    }
}

/// The `proxies` and `unseen_proxies` sections of `stats`: every proxy of the latest poll, by
/// address, with its own rates (`own`: from the rate tracker) and what it relayed; and the
/// configured entries with no proxy among them.
pub fn proxy_section(
    loads: &ProxyLoads,
    trusted: &TrustedProxies,
    own: impl Fn(IpAddr) -> Option<(Rates, Counts)>,
    blocked: impl Fn(IpAddr) -> bool,
) -> (Vec<ProxyView>, Vec<IpNet>) {
    let views: Vec<ProxyView> = loads
        .iter()
        .map(|(address, relay)| {
            let (rates, counts) = own(address).unwrap_or_default();
            ProxyView {
                address,
                trusted_entry: trusted.iter().find(|e| e.contains(&address)).copied(),
                blocked: blocked(address),
                rates: ProxyRates {
                    new_connections_per_second: rates.new_connections_per_second(),
                    packets_per_second: rates.packets_per_second,
                    bytes_per_second: rates.bytes_per_second,
                    proxied_per_minute: relay.last_minute.proxied,
                    unattributed_per_minute: relay.last_minute.unattributed,
                },
                totals: ProxyTotals {
                    syns: counts.syns,
                    packets: counts.packets,
                    bytes: counts.bytes,
                    proxied: relay.totals.proxied,
                    unattributed: relay.totals.unattributed,
                },
            }
        })
        .collect();
    let unseen = trusted
        .iter()
        .filter(|entry| !views.iter().any(|v| entry.contains(&v.address)))
        .copied()
        .collect();
    (views, unseen)
}

/// What the proxies of each configured entry relayed, in the order of `trusted_proxies`: one
/// series per entry whatever the traffic, so the metrics' cardinality is the configuration's.
/// An entry no proxy has been seen from reports zeros.
pub fn relayed_by_entry(loads: &ProxyLoads, trusted: &TrustedProxies) -> Vec<ProxyRelayed> {
    trusted
        .iter()
        .map(|entry| {
            let mut sum = ProxyRelayed {
                proxy: crate::net_list::entry_text(entry),
                relayed: 0,
                unattributed: 0,
            };
            for (_, load) in loads.iter().filter(|(addr, _)| entry.contains(addr)) {
                sum.relayed = sum.relayed.saturating_add(load.totals.proxied);
                sum.unattributed = sum.unattributed.saturating_add(load.totals.unattributed);
            }
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        entries
            .iter()
            .map(|e| e.parse::<IpNet>().unwrap())
            .collect()
    }

    #[test]
    fn via_is_the_kernels_table_by_canonical_address() {
        let mut table = ViaTable::default();
        assert!(table.is_empty());
        table.replace(HashMap::from([
            (ip("::ffff:203.0.113.9"), ip("198.51.100.2")),
            (ip("2001:db8:1::7"), ip("2001:db8:51::2")),
        ]));
        assert_eq!(table.get(ip("203.0.113.9")), Some(ip("198.51.100.2")));
        assert_eq!(table.get(ip("2001:db8:1::7")), Some(ip("2001:db8:51::2")));
        assert_eq!(table.get(ip("203.0.113.10")), None);
        table.replace(HashMap::new());
        assert!(table.is_empty());
    }

    #[test]
    fn a_proxy_that_relayed_nothing_yet_starts_at_zero() {
        let entry = SourceEntry {
            addr: ip("198.51.100.2"),
            stats: limiter_common::SourceStats {
                first_seen: 5,
                ..Default::default()
            },
        };
        let row = proxy_row(&entry, None, Some(10));
        assert_eq!((row.counts.proxied, row.counts.unattributed), (0, 0));
        assert!(row.row_predates_last_poll);
        let relays = ProxyRelays {
            proxied: 7,
            unattributed: 2,
        };
        let row = proxy_row(&entry, Some(&relays), None);
        assert_eq!((row.counts.proxied, row.counts.unattributed), (7, 2));
    }

    #[test]
    fn proxies_are_listed_with_their_load_and_unseen_entries_apart() {
        let mut loads = ProxyLoads::default();
        let relay = |p, u| RelayCounts {
            proxied: p,
            unattributed: u,
        };
        let row = |addr: &str, counts| ProxyRow {
            addr: ip(addr),
            counts,
            row_predates_last_poll: true,
        };
        loads.observe(Duration::ZERO, [row("198.51.100.2", relay(100, 1))]);
        loads.observe(
            Duration::from_secs(1),
            [
                row("198.51.100.2", relay(160, 3)),
                row("198.51.100.17", relay(5, 0)),
            ],
        );
        let config = trusted(&["198.51.100.2/32", "198.51.100.16/28", "2001:db8:51::2/128"]);
        let own = |addr: IpAddr| {
            (addr == ip("198.51.100.2")).then(|| {
                (
                    Rates {
                        new_connections_in_window: 30,
                        packets_per_second: 80.0,
                        ..Rates::default()
                    },
                    Counts {
                        syns: 40,
                        packets: 900,
                        ..Counts::default()
                    },
                )
            })
        };
        let (views, unseen) =
            proxy_section(&loads, &config, own, |addr| addr == ip("198.51.100.17"));
        assert_eq!(unseen, [config.entries()[2]]);
        assert_eq!(views.len(), 2);
        let first = &views[0];
        assert_eq!(
            (first.address, first.trusted_entry, first.blocked),
            (ip("198.51.100.2"), Some(config.entries()[0]), false)
        );
        assert_eq!(first.rates.new_connections_per_second, 3.0);
        assert_eq!(
            (
                first.rates.proxied_per_minute,
                first.rates.unattributed_per_minute
            ),
            (60, 2)
        );
        assert_eq!(
            (
                first.totals.proxied,
                first.totals.unattributed,
                first.totals.packets
            ),
            (160, 3, 900)
        );
        let second = &views[1];
        assert_eq!(second.trusted_entry, Some(config.entries()[1]));
        assert!(second.blocked);
        assert_eq!(second.rates.proxied_per_minute, 0, "first seen: a baseline");

        assert_eq!(
            relayed_by_entry(&loads, &config),
            [
                ProxyRelayed {
                    proxy: "198.51.100.2".into(),
                    relayed: 160,
                    unattributed: 3
                },
                ProxyRelayed {
                    proxy: "198.51.100.16/28".into(),
                    relayed: 5,
                    unattributed: 0
                },
                ProxyRelayed {
                    proxy: "2001:db8:51::2".into(),
                    relayed: 0,
                    unattributed: 0
                },
            ]
        );
    }
}
