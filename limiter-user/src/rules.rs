//! Rules as the kernel sees them, and their compilation into trie entries (pure).
//!
//! The kernel's LPM trie returns only the longest matching prefix. So that an expired or
//! narrower rule never hides a live broader one, each entry carries the latest deadline of its
//! own rules and of every rule of the same action whose prefix covers it.

use std::{collections::BTreeMap, time::SystemTime};

use ipnet::IpNet;
use limiter_common::{AllowRule, BlockRule};

use crate::{clock::KernelClock, net, prefixes::PrefixMap};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Block,
    /// Exempts the prefix from every block rule, whatever their scope.
    Allow,
}

/// What a block rule drops.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// TCP to the protected ports only (the default): a banned client can still reach, say,
    /// SSH or other services on the node.
    #[default]
    ProtectedPorts,
    /// Every IP packet from the prefix, any protocol and port.
    AllPorts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRule {
    pub net: IpNet,
    pub action: Action,
    /// Ignored for [`Action::Allow`].
    pub scope: Scope,
    /// `None`: until removed.
    pub expires: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(
        "IPv6 prefix {0} overlaps ::ffff:0:0/96, the IPv4-mapped range, so it would also match \
         IPv4 sources; write IPv4 rules in IPv4 form and use a narrower IPv6 prefix \
         (for example 2000::/3 for all global unicast)"
    )]
    OverlapsIpv4Mapped(IpNet),
}

pub use crate::prefixes::TrieKey;

/// What the tries and the config flags should hold for a set of rules at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledRules {
    pub block: BTreeMap<TrieKey, BlockRule>,
    pub allow: BTreeMap<TrieKey, AllowRule>,
    /// Some live block rule has scope [`Scope::AllPorts`].
    pub any_port_rules: bool,
}

pub fn validate(rule: &KernelRule) -> Result<(), RuleError> {
    validate_net(&rule.net)
}

/// Whether a prefix can be a rule at all, whatever its action (see [`RuleError`]).
pub fn validate_net(net: &IpNet) -> Result<(), RuleError> {
    if let IpNet::V6(v6) = net {
        if net::overlaps_ipv4_mapped(v6) {
            return Err(RuleError::OverlapsIpv4Mapped(*net));
        }
    }
    Ok(())
}

/// Trie entries for `rules` as of `clock`. Rules already expired are left out.
pub fn compile(rules: &[KernelRule], clock: &KernelClock) -> Result<CompiledRules, RuleError> {
    let mut block: PrefixMap<BlockRule> = PrefixMap::new();
    let mut allow: PrefixMap<AllowRule> = PrefixMap::new();
    let mut any_port_rules = false;
    for rule in rules {
        validate(rule)?;
        let deadline = clock.deadline(rule.expires);
        if deadline == 0 {
            continue;
        }
        let key = net::net_to_key(rule.net);
        match rule.action {
            Action::Allow => {
                let entry = allow.entry_or_default(key);
                entry.until = entry.until.max(deadline);
            }
            Action::Block => {
                let entry = block.entry_or_default(key);
                // An all-ports block also covers the protected ports.
                entry.until_protected = entry.until_protected.max(deadline);
                if rule.scope == Scope::AllPorts {
                    entry.until_any_port = entry.until_any_port.max(deadline);
                    any_port_rules = true;
                }
            }
        }
    }
    Ok(CompiledRules {
        block: block.merged_with_covering(|a, b| BlockRule {
            until_protected: a.until_protected.max(b.until_protected),
            until_any_port: a.until_any_port.max(b.until_any_port),
        }),
        allow: allow.merged_with_covering(|a, b| AllowRule {
            until: a.until.max(b.until),
        }),
        any_port_rules,
    })
}

/// Each entry merged with every entry whose prefix covers it.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use limiter_common::NEVER;

    use super::*;

    /// 1000 Hz, so one second is 1000 jiffies.
    fn clock() -> KernelClock {
        KernelClock {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            jiffies: 1_000,
            hz: 1000,
        }
    }

    fn rule(net: &str, action: Action, scope: Scope, secs: Option<i64>) -> KernelRule {
        let wall = clock().wall;
        KernelRule {
            net: net.parse().unwrap(),
            action,
            scope,
            expires: secs.map(|s| {
                if s >= 0 {
                    wall + Duration::from_secs(s as u64)
                } else {
                    wall - Duration::from_secs((-s) as u64)
                }
            }),
        }
    }

    fn key(s: &str) -> TrieKey {
        net::net_to_key(s.parse().unwrap())
    }

    #[test]
    fn a_narrow_rule_inherits_the_deadline_of_a_covering_one() {
        let rules = [
            rule(
                "198.51.100.0/24",
                Action::Block,
                Scope::ProtectedPorts,
                None,
            ),
            rule(
                "198.51.100.7/32",
                Action::Block,
                Scope::ProtectedPorts,
                Some(10),
            ),
        ];
        let compiled = compile(&rules, &clock()).unwrap();
        assert_eq!(
            compiled.block[&key("198.51.100.7/32")].until_protected,
            NEVER
        );
        assert_eq!(
            compiled.block[&key("198.51.100.0/24")].until_protected,
            NEVER
        );
        assert!(!compiled.any_port_rules);
    }

    #[test]
    fn a_narrow_rule_keeps_its_own_later_deadline() {
        let rules = [
            rule(
                "198.51.100.0/24",
                Action::Block,
                Scope::ProtectedPorts,
                Some(10),
            ),
            rule(
                "198.51.100.7/32",
                Action::Block,
                Scope::ProtectedPorts,
                Some(20),
            ),
        ];
        let compiled = compile(&rules, &clock()).unwrap();
        assert_eq!(
            compiled.block[&key("198.51.100.7/32")].until_protected,
            1_000 + 20_000
        );
        assert_eq!(
            compiled.block[&key("198.51.100.0/24")].until_protected,
            1_000 + 10_000
        );
    }

    #[test]
    fn expired_rules_are_left_out() {
        let rules = [rule(
            "198.51.100.7/32",
            Action::Block,
            Scope::AllPorts,
            Some(-1),
        )];
        assert_eq!(compile(&rules, &clock()).unwrap(), CompiledRules::default());
    }

    #[test]
    fn all_ports_blocks_cover_the_protected_ports_too() {
        let rules = [rule("2001:db8::/48", Action::Block, Scope::AllPorts, None)];
        let compiled = compile(&rules, &clock()).unwrap();
        let entry = compiled.block[&key("2001:db8::/48")];
        assert_eq!(entry.until_protected, NEVER);
        assert_eq!(entry.until_any_port, NEVER);
        assert!(compiled.any_port_rules);
    }

    #[test]
    fn scopes_merge_per_prefix_and_across_covering_prefixes() {
        let rules = [
            rule("203.0.113.0/24", Action::Block, Scope::AllPorts, Some(30)),
            rule("203.0.113.5/32", Action::Block, Scope::ProtectedPorts, None),
        ];
        let compiled = compile(&rules, &clock()).unwrap();
        let host = compiled.block[&key("203.0.113.5/32")];
        assert_eq!(host.until_protected, NEVER);
        assert_eq!(host.until_any_port, 1_000 + 30_000);
    }

    #[test]
    fn allow_and_block_are_compiled_apart() {
        let rules = [
            rule("198.51.100.0/24", Action::Allow, Scope::AllPorts, None),
            rule(
                "198.51.100.9/32",
                Action::Block,
                Scope::ProtectedPorts,
                None,
            ),
        ];
        let compiled = compile(&rules, &clock()).unwrap();
        assert_eq!(compiled.allow.len(), 1);
        assert_eq!(compiled.block.len(), 1);
        assert!(!compiled.allow.contains_key(&key("198.51.100.9/32")));
    }

    #[test]
    fn ipv4_and_ipv6_prefixes_do_not_cover_each_other() {
        let rules = [
            rule("2001:db8::/32", Action::Block, Scope::AllPorts, Some(5)),
            rule(
                "198.51.100.1/32",
                Action::Block,
                Scope::ProtectedPorts,
                Some(1),
            ),
        ];
        let compiled = compile(&rules, &clock()).unwrap();
        assert_eq!(
            compiled.block[&key("198.51.100.1/32")].until_any_port,
            0,
            "an IPv6 /32 must not cover the IPv4-mapped range"
        );
    }

    #[test]
    fn ipv6_rules_over_the_mapped_range_are_rejected() {
        let bad = rule("::/0", Action::Block, Scope::ProtectedPorts, None);
        assert_eq!(
            compile(std::slice::from_ref(&bad), &clock()),
            Err(RuleError::OverlapsIpv4Mapped(bad.net))
        );
    }
}
