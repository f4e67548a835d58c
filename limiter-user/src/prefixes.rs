//! Prefixes in the kernel's key space, where the covering walk lives once: which members
//! cover an address or prefix, answered with one lookup per distinct prefix length. The
//! kernel's tries ([`crate::rules`]) merge each rule with those covering it; the policy asks
//! whether a source is covered by a ban or by the never-ban list.
//!
//! Keys are [`TrieKey`]s (IPv4 as its IPv4-mapped IPv6 form, the length counted from bit 0 of
//! the 128), so an IPv4 prefix and the same prefix written IPv4-mapped are one member, as they
//! are one entry in the kernel.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;

use crate::net;

/// A prefix in the kernel's key space: length (0–128) and the 16 address bytes.
pub type TrieKey = (u32, [u8; 16]);

/// The key of `net` (host bits cleared).
pub fn key_of(net: IpNet) -> TrieKey {
    net::net_to_key(net)
}

/// Values by prefix, with the lengths present kept apart for the covering walk.
#[derive(Clone, Debug)]
pub struct PrefixMap<V> {
    entries: HashMap<TrieKey, V>,
    lengths: BTreeSet<u32>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            entries: HashMap::new(),
            lengths: BTreeSet::new(),
        }
    }
}

impl<V> PrefixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of exactly `key`, inserted as `V::default()` if absent.
    pub fn entry_or_default(&mut self, key: TrieKey) -> &mut V
    where
        V: Default,
    {
        self.lengths.insert(key.0);
        self.entries.entry(key).or_default()
    }

    pub fn insert(&mut self, key: TrieKey, value: V) {
        self.lengths.insert(key.0);
        self.entries.insert(key, value);
    }

    /// The members that cover `key` (itself included when a member), shortest first.
    pub fn covering(&self, key: TrieKey) -> impl Iterator<Item = (TrieKey, &V)> + '_ {
        let (len, addr) = key;
        self.lengths.range(..=len).filter_map(move |&shorter| {
            let candidate = (shorter, mask(addr, shorter));
            self.entries.get(&candidate).map(|v| (candidate, v))
        })
    }

    /// Whether some member covers all of `key`.
    pub fn covers(&self, key: TrieKey) -> bool {
        self.covering(key).next().is_some()
    }

    /// Whether some member shares an address with `key`: covers it or lies inside it.
    pub fn overlaps(&self, key: TrieKey) -> bool {
        let (len, addr) = key;
        self.covers(key)
            || self
                .entries
                .keys()
                .any(|&(member_len, member)| member_len > len && mask(member, len) == addr)
    }

    /// Each member's value merged with those of every shorter member covering it.
    pub fn merged_with_covering(&self, merge: impl Fn(&V, &V) -> V) -> BTreeMap<TrieKey, V>
    where
        V: Copy,
    {
        self.entries
            .iter()
            .map(|(&key, value)| {
                let merged = self
                    .covering(key)
                    .filter(|(covering, _)| covering.0 < key.0)
                    .fold(*value, |acc, (_, covering)| merge(&acc, covering));
                (key, merged)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Prefixes (and addresses, as host prefixes) with no value: "is this covered?".
#[derive(Clone, Debug, Default)]
pub struct PrefixSet(PrefixMap<()>);

impl PrefixSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a prefix (host bits are ignored) or, through `Into`, a single address.
    pub fn insert(&mut self, net: impl Into<IpNet>) {
        self.0.insert(key_of(net.into()), ());
    }

    /// Whether some member contains `addr`.
    pub fn covers_addr(&self, addr: IpAddr) -> bool {
        self.0.covers(key_of(IpNet::from(addr)))
    }

    /// Whether some member contains all of `net`.
    pub fn covers(&self, net: &IpNet) -> bool {
        self.0.covers(key_of(*net))
    }

    /// Whether some member shares an address with `net` (covers it or lies inside it).
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.0.overlaps(key_of(*net))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<IpNet>> FromIterator<N> for PrefixSet {
    fn from_iter<I: IntoIterator<Item = N>>(iter: I) -> Self {
        let mut set = PrefixSet::new();
        set.extend(iter);
        set
    }
}

impl<N: Into<IpNet>> Extend<N> for PrefixSet {
    fn extend<I: IntoIterator<Item = N>>(&mut self, iter: I) {
        for net in iter {
            self.insert(net);
        }
    }
}

/// `addr` with every bit past `prefix_len` cleared.
fn mask(addr: [u8; 16], prefix_len: u32) -> [u8; 16] {
    let bits = u128::from_be_bytes(addr);
    let kept = match prefix_len {
        0 => 0,
        len if len >= 128 => bits,
        len => bits & (u128::MAX << (128 - len)),
    };
    kept.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn prefix_sets_answer_for_covering_prefixes() {
        let set: PrefixSet = [
            cidr("10.0.0.0/8"),
            cidr("192.0.2.7/32"),
            cidr("2001:db8::/32"),
            cidr("::ffff:198.51.100.0/120"),
        ]
        .into_iter()
        .collect();
        assert!(set.covers_addr(ip("10.200.0.1")));
        assert!(set.covers_addr(ip("192.0.2.7")));
        assert!(!set.covers_addr(ip("192.0.2.8")));
        assert!(
            set.covers_addr(ip("198.51.100.9")),
            "mapped entries match IPv4"
        );
        assert!(set.covers(&cidr("2001:db8:1::/48")));
        assert!(!set.covers(&cidr("2001::/16")));
        assert!(set.overlaps(&cidr("2001::/16")));
        assert!(set.overlaps(&cidr("192.0.2.0/24")));
        assert!(!set.overlaps(&cidr("192.0.3.0/24")));
        assert!(!set.covers_addr(ip("::ffff:11.0.0.1")));
    }

    #[test]
    fn an_ipv4_prefix_and_its_mapped_form_are_one_member() {
        let set: PrefixSet = [cidr("198.51.100.0/24"), cidr("::ffff:198.51.100.0/120")]
            .into_iter()
            .collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn merging_takes_every_shorter_covering_member() {
        let mut map: PrefixMap<u32> = PrefixMap::new();
        map.insert(key_of(cidr("198.51.100.0/24")), 1);
        map.insert(key_of(cidr("198.51.100.0/28")), 10);
        map.insert(key_of(cidr("198.51.100.7/32")), 100);
        map.insert(key_of(cidr("203.0.113.0/24")), 1000);
        let merged = map.merged_with_covering(|a, b| a + b);
        assert_eq!(merged[&key_of(cidr("198.51.100.7/32"))], 111);
        assert_eq!(merged[&key_of(cidr("198.51.100.0/28"))], 11);
        assert_eq!(merged[&key_of(cidr("198.51.100.0/24"))], 1);
        assert_eq!(merged[&key_of(cidr("203.0.113.0/24"))], 1000);
    }

    #[test]
    fn mask_clears_host_bits() {
        let addr = "2001:db8:ffff::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let masked = mask(addr, 32);
        assert_eq!(
            std::net::Ipv6Addr::from(masked),
            "2001:db8::".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(mask(addr, 0), [0; 16]);
        assert_eq!(mask(addr, 128), addr);
    }
}
