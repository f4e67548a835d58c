//! Addresses and prefixes as the kernel program stores them: IPv4 as IPv4-mapped IPv6, so one
//! 16-byte key space and one set of tries serve both families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

/// Bits before an IPv4 address inside its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`).
pub const IPV4_MAPPED_PREFIX_LEN: u8 = 96;

/// The IPv4-mapped range, `::ffff:0.0.0.0/96`.
pub fn ipv4_mapped_range() -> Ipv6Net {
    Ipv6Net::new(
        Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(),
        IPV4_MAPPED_PREFIX_LEN,
    )
    .expect("96 is a valid IPv6 prefix length")
}

/// The 16 key bytes for an address.
pub fn addr_to_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address for 16 key bytes; IPv4-mapped keys come back as IPv4.
pub fn key_to_addr(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Prefix length and key bytes of a network in the shared key space. Host bits are cleared,
/// so `10.0.0.1/24` and `10.0.0.0/24` are the same key.
pub fn net_to_key(net: IpNet) -> (u32, [u8; 16]) {
    match net.trunc() {
        IpNet::V4(v4) => (
            u32::from(IPV4_MAPPED_PREFIX_LEN) + u32::from(v4.prefix_len()),
            v4.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.network().octets()),
    }
}

/// The network for a key; prefixes inside the IPv4-mapped range come back as IPv4.
/// `None` if the prefix length is over 128.
pub fn key_to_net(prefix_len: u32, bytes: [u8; 16]) -> Option<IpNet> {
    let prefix_len = u8::try_from(prefix_len).ok().filter(|len| *len <= 128)?;
    let v6 = Ipv6Addr::from(bytes);
    if prefix_len >= IPV4_MAPPED_PREFIX_LEN {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpNet::new(IpAddr::V4(v4), prefix_len - IPV4_MAPPED_PREFIX_LEN).ok();
        }
    }
    IpNet::new(IpAddr::V6(v6), prefix_len).ok()
}

/// Whether an IPv6 prefix overlaps the IPv4-mapped range (covers it or lies inside it).
/// Such a prefix would silently match IPv4 sources, so rules reject it.
pub fn overlaps_ipv4_mapped(net: &Ipv6Net) -> bool {
    let mapped = ipv4_mapped_range();
    net.contains(&mapped) || mapped.contains(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_hosts_and_prefixes_map_into_the_ipv6_key_space() {
        let (len, key) = net_to_key(net("198.51.100.7/32"));
        assert_eq!(len, 128);
        assert_eq!(
            key,
            "::ffff:198.51.100.7".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(net_to_key(net("203.0.113.0/24")).0, 120);
        assert_eq!(net_to_key(net("0.0.0.0/0")).0, 96);
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(
            net_to_key(net("198.51.100.77/24")),
            net_to_key(net("198.51.100.0/24"))
        );
        assert_eq!(
            net_to_key(net("2001:db8::1/64")),
            net_to_key(net("2001:db8::/64"))
        );
    }

    #[test]
    fn keys_round_trip_to_the_same_family() {
        for s in [
            "198.51.100.0/24",
            "203.0.113.9/32",
            "2001:db8::/32",
            "2001:db8::5/128",
            "::/0",
        ] {
            let (len, key) = net_to_key(net(s));
            assert_eq!(key_to_net(len, key), Some(net(s).trunc()), "{s}");
        }
        assert_eq!(key_to_net(129, [0; 16]), None);
    }

    #[test]
    fn addresses_round_trip() {
        for s in ["198.51.100.1", "2001:db8::1", "::1", "127.0.0.1"] {
            let addr: IpAddr = s.parse().unwrap();
            assert_eq!(key_to_addr(addr_to_key(addr)), addr);
        }
    }

    #[test]
    fn overlap_with_the_mapped_range_is_detected() {
        let v6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
        assert!(overlaps_ipv4_mapped(&v6("::/0")));
        assert!(overlaps_ipv4_mapped(&v6("::ffff:0:0/96")));
        assert!(overlaps_ipv4_mapped(&v6("::ffff:198.51.100.0/120")));
        assert!(!overlaps_ipv4_mapped(&v6("2001:db8::/32")));
        assert!(!overlaps_ipv4_mapped(&v6("2000::/3")));
    }
}
