//! Lists of addresses and prefixes in the configuration (`allowlist`, `trusted_proxies`): how
//! an entry is written and the checks every entry gets, so that both lists read and complain
//! alike.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::net;

/// "192.0.2.10" (one address) or "192.0.2.0/24" (a prefix); `None` if it is neither.
pub fn parse_entry(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// An entry as it is written: a single address without its `/32` or `/128`.
pub fn entry_text(entry: &IpNet) -> String {
    if entry.prefix_len() == entry.max_prefix_len() {
        entry.addr().to_string()
    } else {
        entry.to_string()
    }
}

/// What is wrong with an entry that parsed, and what to write instead: an IPv6 prefix that
/// would also match IPv4 sources, or host bits that make the intent unclear.
pub fn entry_problem(entry: &IpNet) -> Option<String> {
    if let IpNet::V6(v6) = entry {
        if net::overlaps_ipv4_mapped(v6) {
            let (len, bytes) = net::net_to_key(*entry);
            let fix = match net::key_to_net(len, bytes) {
                Some(ipv4 @ IpNet::V4(_)) => {
                    format!("write it in IPv4 form, \"{}\"", entry_text(&ipv4))
                }
                _ => "write IPv4 entries in IPv4 form and use a narrower IPv6 prefix (for example \
                      2000::/3 for all global unicast)"
                    .to_string(),
            };
            return Some(format!(
                "{entry} overlaps ::ffff:0:0/96, the IPv4-mapped range, so it would also match \
                 IPv4 sources; {fix}"
            ));
        }
    }
    (*entry != entry.trunc()).then(|| {
        format!(
            "{entry} has host bits set; write \"{}\" for the network, or \"{}\" for the single \
             address",
            entry.trunc(),
            entry.addr()
        )
    })
}

/// Whether two entries share an address: one holds the other (prefixes never partly overlap).
pub fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_and_print_as_written() {
        assert_eq!(parse_entry("192.0.2.10"), Some(net("192.0.2.10/32")));
        assert_eq!(parse_entry("2001:db8::/64"), Some(net("2001:db8::/64")));
        assert_eq!(parse_entry("10.0.0.300"), None);
        assert_eq!(parse_entry("10.0.0.0/33"), None);
        assert_eq!(entry_text(&net("192.0.2.10/32")), "192.0.2.10");
        assert_eq!(entry_text(&net("2001:db8::7/128")), "2001:db8::7");
        assert_eq!(entry_text(&net("192.0.2.0/24")), "192.0.2.0/24");
    }

    #[test]
    fn problems_say_what_to_write() {
        assert_eq!(entry_problem(&net("192.0.2.0/24")), None);
        let host_bits = entry_problem(&net("192.0.2.7/24")).unwrap();
        assert!(
            host_bits.contains("\"192.0.2.0/24\" for the network")
                && host_bits.contains("\"192.0.2.7\" for the single address"),
            "{host_bits}"
        );
        let mapped = entry_problem(&net("::ffff:10.1.2.3/128")).unwrap();
        assert!(mapped.contains("IPv4 form, \"10.1.2.3\""), "{mapped}");
        let mapped = entry_problem(&net("::ffff:10.1.2.0/120")).unwrap();
        assert!(mapped.contains("IPv4 form, \"10.1.2.0/24\""), "{mapped}");
        let wide = entry_problem(&net("::/0")).unwrap();
        assert!(wide.contains("narrower IPv6 prefix"), "{wide}");
    }

    #[test]
    fn overlap_is_either_way_and_per_family() {
        assert!(overlap(&net("192.0.2.0/24"), &net("192.0.2.7/32")));
        assert!(overlap(&net("192.0.2.7/32"), &net("192.0.2.0/24")));
        assert!(overlap(&net("192.0.2.7/32"), &net("192.0.2.7/32")));
        assert!(!overlap(&net("192.0.2.0/25"), &net("192.0.2.128/25")));
        assert!(!overlap(&net("0.0.0.0/0"), &net("::/0")));
    }
}
