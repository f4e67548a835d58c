//! Manual blocks that would cut off a trusted proxy. Every client behind the proxy reaches
//! Glance through the proxy's address, so a block covering it is an outage for all of them;
//! such a block is refused unless the operator forces it.

use std::fmt;

use ipnet::IpNet;

use super::TrustedProxies;
use crate::net_list;

/// Lines of a refusal that name overlaps; a larger batch says how many more there are.
const OVERLAPS_SHOWN: usize = 10;

/// A prefix to block that overlaps a trusted proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOverlap {
    /// The prefix the block names.
    pub prefix: IpNet,
    /// The `trusted_proxies` entry it overlaps, and that entry's index.
    pub proxy: IpNet,
    pub index: usize,
}

impl fmt::Display for ProxyOverlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let relation = if self.prefix.contains(&self.proxy) {
            "covers"
        } else {
            "is inside"
        };
        write!(
            f,
            "{} {relation} trusted proxy {} (trusted_proxies[{}] in the daemon's configuration)",
            self.prefix,
            net_list::entry_text(&self.proxy),
            self.index
        )
    }
}

/// Why a manual block was refused: the prefixes it names that overlap trusted proxies, in
/// the order named (each with the first proxy entry it overlaps).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct BlockRefused {
    pub overlaps: Vec<ProxyOverlap>,
}

impl fmt::Display for BlockRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CONSEQUENCE: &str = "would cut off every client behind";
        const OVERRIDE: &str = "If that is really intended, repeat the block with --force";
        match self.overlaps.as_slice() {
            [one] => write!(
                f,
                "{one}: blocking it {CONSEQUENCE} that proxy, so nothing was changed. {OVERRIDE}"
            ),
            many => {
                write!(
                    f,
                    "{} of the prefixes to block overlap trusted proxies: blocking them \
                     {CONSEQUENCE} those proxies, so nothing was changed:",
                    many.len()
                )?;
                for overlap in many.iter().take(OVERLAPS_SHOWN) {
                    write!(f, "\n  {overlap}")?;
                }
                if many.len() > OVERLAPS_SHOWN {
                    write!(f, "\n  ... and {} more", many.len() - OVERLAPS_SHOWN)?;
                }
                write!(f, "\n{OVERRIDE}")
            }
        }
    }
}

impl TrustedProxies {
    /// Refuses a manual block (all or nothing) when any of its prefixes covers a trusted
    /// proxy or lies inside a trusted prefix.
    pub fn check_block(&self, prefixes: &[IpNet]) -> Result<(), BlockRefused> {
        let overlaps: Vec<ProxyOverlap> = prefixes
            .iter()
            .filter_map(|prefix| {
                self.first_overlap(prefix)
                    .map(|(index, proxy)| ProxyOverlap {
                        prefix: *prefix,
                        proxy: *proxy,
                        index,
                    })
            })
            .collect();
        if overlaps.is_empty() {
            Ok(())
        } else {
            Err(BlockRefused { overlaps })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new([net("198.51.100.2/32"), net("2001:db8::/64")])
    }

    #[test]
    fn blocks_clear_of_the_proxies_pass() {
        assert_eq!(
            trusted().check_block(&[net("198.51.100.3/32"), net("2001:db8:1::/64")]),
            Ok(())
        );
        assert_eq!(
            TrustedProxies::default().check_block(&[net("0.0.0.0/0")]),
            Ok(())
        );
    }

    #[test]
    fn one_overlap_names_the_proxy_entry_and_the_override() {
        let refused = trusted()
            .check_block(&[net("198.51.100.0/24")])
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "198.51.100.0/24 covers trusted proxy 198.51.100.2 (trusted_proxies[0] in the \
             daemon's configuration): blocking it would cut off every client behind that proxy, \
             so nothing was changed. If that is really intended, repeat the block with --force"
        );
        let refused = trusted()
            .check_block(&[net("2001:db8::5/128")])
            .unwrap_err();
        assert!(
            refused.to_string().starts_with(
                "2001:db8::5/128 is inside trusted proxy 2001:db8::/64 (trusted_proxies[1]"
            ),
            "{refused}"
        );
    }

    #[test]
    fn a_batch_is_refused_whole_and_lists_every_overlap() {
        let refused = trusted()
            .check_block(&[
                net("203.0.113.7/32"),
                net("198.51.100.2/32"),
                net("2001:db8::/48"),
            ])
            .unwrap_err();
        assert_eq!(
            refused.overlaps,
            [
                ProxyOverlap {
                    prefix: net("198.51.100.2/32"),
                    proxy: net("198.51.100.2/32"),
                    index: 0
                },
                ProxyOverlap {
                    prefix: net("2001:db8::/48"),
                    proxy: net("2001:db8::/64"),
                    index: 1
                },
            ]
        );
        let message = refused.to_string();
        assert!(
            message.starts_with("2 of the prefixes to block overlap trusted proxies"),
            "{message}"
        );
        assert!(
            message.contains("\n  2001:db8::/48 covers trusted proxy 2001:db8::/64"),
            "{message}"
        );
        assert!(message.ends_with("\nIf that is really intended, repeat the block with --force"));

        let many: Vec<IpNet> = (0..12).map(|_| net("198.51.100.0/24")).collect();
        let message = trusted().check_block(&many).unwrap_err().to_string();
        assert_eq!(message.matches("\n  198.51.100.0/24 covers").count(), 10);
        assert!(message.contains("\n  ... and 2 more\n"), "{message}");
    }
}
