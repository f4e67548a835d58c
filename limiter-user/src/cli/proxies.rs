//! `limiter stats` behind trusted proxies: the table of the proxies' own load (what they
//! relayed, what could not be attributed, their packets), and the `VIA` cells of proxied
//! sources and rules. Nothing is printed for a daemon without trusted proxies.

use std::net::IpAddr;

use super::output::{bytes, Align, Table};
use crate::{
    control::protocol::{ProxyView, Stats},
    net_list,
};

/// A `VIA` cell: the proxy, or `-` for a direct source.
pub fn via_cell(via: Option<IpAddr>) -> String {
    via.map_or_else(|| "-".to_string(), |proxy| proxy.to_string())
}

/// The "Trusted proxies" section of `limiter stats`, after a blank line; empty when the daemon
/// reports none.
pub fn section(stats: &Stats) -> String {
    if stats.proxies.is_empty() && stats.unseen_proxies.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("\nTrusted proxies (what they relay is counted as the clients they name)\n");
    if !stats.proxies.is_empty() {
        out.push_str(&table(&stats.proxies));
    }
    if !stats.unseen_proxies.is_empty() {
        let unseen: Vec<String> = stats
            .unseen_proxies
            .iter()
            .map(net_list::entry_text)
            .collect();
        out.push_str(&format!(
            "not seen yet (trusted_proxies entries without traffic): {}\n",
            unseen.join(", ")
        ));
    }
    out
}

fn table(proxies: &[ProxyView]) -> String {
    let mut table = Table::new(&[
        ("PROXY", Align::Left),
        ("RELAYED/MIN", Align::Right),
        ("UNATTRIBUTED/MIN", Align::Right),
        ("RELAYED", Align::Right),
        ("UNATTRIBUTED", Align::Right),
        ("CONN/S", Align::Right),
        ("PACKETS/S", Align::Right),
        ("BYTES/S", Align::Right),
    ]);
    for proxy in proxies {
        let (rates, totals) = (&proxy.rates, &proxy.totals);
        let address = if proxy.blocked {
            format!("{} (blocked: its clients are cut off)", proxy.address)
        } else {
            proxy.address.to_string()
        };
        table.row(vec![
            address,
            rates.proxied_per_minute.to_string(),
            rates.unattributed_per_minute.to_string(),
            totals.proxied.to_string(),
            totals.unattributed.to_string(),
            format!("{:.1}", rates.new_connections_per_second),
            format!("{:.0}", rates.packets_per_second),
            bytes(rates.bytes_per_second),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{ProxyRates, ProxyTotals};

    fn proxy(address: &str, blocked: bool) -> ProxyView {
        ProxyView {
            address: address.parse().unwrap(),
            trusted_entry: None,
            blocked,
            rates: ProxyRates {
                new_connections_per_second: 12.25,
                packets_per_second: 820.4,
                bytes_per_second: 1_572_864.0,
                proxied_per_minute: 300,
                unattributed_per_minute: 2,
            },
            totals: ProxyTotals {
                syns: 400,
                packets: 98_120,
                bytes: 180_412_233,
                proxied: 9120,
                unattributed: 14,
            },
        }
    }

    #[test]
    fn proxies_are_a_table_of_their_own_and_unseen_entries_a_line() {
        let stats = Stats {
            proxies: vec![proxy("198.51.100.2", false), proxy("2001:db8:51::2", true)],
            unseen_proxies: vec![
                "198.51.100.3/32".parse().unwrap(),
                "2001:db8:10::/64".parse().unwrap(),
            ],
            ..Stats::default()
        };
        assert_eq!(
            section(&stats),
            "
Trusted proxies (what they relay is counted as the clients they name)
PROXY                                              RELAYED/MIN  UNATTRIBUTED/MIN  RELAYED  UNATTRIBUTED  CONN/S  PACKETS/S  BYTES/S
198.51.100.2                                               300                 2     9120            14    12.2        820  1.5 MiB
2001:db8:51::2 (blocked: its clients are cut off)          300                 2     9120            14    12.2        820  1.5 MiB
not seen yet (trusted_proxies entries without traffic): 198.51.100.3, 2001:db8:10::/64
"
        );
    }

    #[test]
    fn nothing_without_trusted_proxies() {
        assert_eq!(section(&Stats::default()), "");
        let only_unseen = Stats {
            unseen_proxies: vec!["198.51.100.2/32".parse().unwrap()],
            ..Stats::default()
        };
        assert!(section(&only_unseen)
            .ends_with("\nnot seen yet (trusted_proxies entries without traffic): 198.51.100.2\n"));
        assert_eq!(via_cell(None), "-");
        assert_eq!(
            via_cell(Some("198.51.100.2".parse().unwrap())),
            "198.51.100.2"
        );
    }
}
