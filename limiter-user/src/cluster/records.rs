//! What the limiter keeps in etcd, under the configured prefix:
//!
//! - `rules/block/203.0.113.9_32` → a [`RuleRecord`], with a lease when the rule expires: etcd
//!   deletes the key when the lease runs out, so expiry follows etcd's clock, not any node's.
//! - `nodes/<node>` → that node's latest [`Summary`](super::summary::Summary), with the node's
//!   lease: a node that stops publishing disappears on its own.
//!
//! Values are JSON: readable with `etcdctl get --prefix /glance-limiter/`.

use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    rules::{Action, Scope},
    store::{Origin, RuleKey, StoredRule},
};

/// One shared rule. An expiry travels as the seconds left when it was written: every node
/// adds them to its own clock, so clocks that disagree by seconds do not move expiries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub prefix: IpNet,
    pub action: Action,
    pub scope: Scope,
    pub origin: Origin,
    pub reason: String,
    /// The node that made (or last changed) the rule.
    pub node: String,
    /// Seconds left when written; `None`: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl RuleRecord {
    /// The record of `rule` as of `now`; `None` when it has already expired. A rule without
    /// a node is this node's (made here, or before the cluster was configured).
    pub fn of(rule: &StoredRule, this_node: &str, now: SystemTime) -> Option<RuleRecord> {
        let ttl_secs = match rule.expires {
            None => None,
            Some(expires) => {
                let left = expires.duration_since(now).ok()?;
                // Rounded up: a rule never ends on another node before it ends here.
                Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
            }
        };
        if ttl_secs == Some(0) {
            return None;
        }
        Some(RuleRecord {
            prefix: rule.prefix,
            action: rule.action,
            scope: rule.scope,
            origin: rule.origin,
            reason: rule.reason.clone(),
            node: rule.node.clone().unwrap_or_else(|| this_node.to_string()),
            ttl_secs,
        })
    }

    /// The rule as this node stores it, `ttl_left` being what etcd says is left of its lease
    /// (or, fresh from a watch, the record's own `ttl_secs`).
    pub fn to_rule(&self, now: SystemTime, ttl_left: Option<Duration>) -> StoredRule {
        let ttl = ttl_left.or(self.ttl_secs.map(Duration::from_secs));
        StoredRule {
            prefix: self.prefix,
            action: self.action,
            scope: self.scope,
            origin: self.origin,
            reason: self.reason.clone(),
            created: now,
            expires: ttl.map(|ttl| now + ttl),
            node: Some(self.node.clone()),
        }
    }

    pub fn key(&self) -> RuleKey {
        (self.prefix, self.action)
    }
}

/// Where things live under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn rules(&self) -> String {
        format!("{}rules/", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    pub fn rule(&self, (prefix, action): RuleKey) -> String {
        let action = match action {
            Action::Block => "block",
            Action::Allow => "allow",
        };
        format!(
            "{}{action}/{}_{}",
            self.rules(),
            prefix.addr(),
            prefix.prefix_len()
        )
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// The rule a key names; `None` for a key that is not a rule key of this layout.
    pub fn parse_rule(&self, key: &str) -> Option<RuleKey> {
        let rest = key.strip_prefix(&self.rules())?;
        let (action, net) = rest.split_once('/')?;
        let action = match action {
            "block" => Action::Block,
            "allow" => Action::Allow,
            _ => return None,
        };
        let (addr, len) = net.rsplit_once('_')?;
        let net = IpNet::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
        Some((net, action))
    }

    /// The node a summary key names.
    pub fn parse_node<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.nodes()).filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_keys_round_trip() {
        let keys = Keys::new("/glance-limiter/");
        for (net, action) in [
            ("203.0.113.9/32", Action::Block),
            ("198.51.100.0/24", Action::Allow),
            ("2001:db8::/64", Action::Block),
        ] {
            let key = (net.parse::<IpNet>().unwrap(), action);
            let text = keys.rule(key);
            assert!(text.starts_with("/glance-limiter/rules/"), "{text}");
            assert_eq!(keys.parse_rule(&text), Some(key), "{text}");
        }
        assert_eq!(keys.parse_rule("/glance-limiter/rules/block/nope"), None);
        assert_eq!(keys.parse_rule("/other/rules/block/203.0.113.9_32"), None);
        assert_eq!(
            keys.parse_node("/glance-limiter/nodes/glance-1"),
            Some("glance-1")
        );
    }

    #[test]
    fn expiries_travel_as_seconds_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let rule = StoredRule {
            prefix: "203.0.113.9/32".parse().unwrap(),
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            origin: Origin::Auto,
            reason: "flood".into(),
            created: now,
            expires: Some(now + Duration::from_millis(600_200)),
            node: None,
        };
        let record = RuleRecord::of(&rule, "glance-1", now).unwrap();
        assert_eq!(record.ttl_secs, Some(601));
        assert_eq!(record.node, "glance-1");
        // Another node, whose clock is an hour ahead, keeps it for the same time.
        let elsewhere = now + Duration::from_secs(3600);
        let there = record.to_rule(elsewhere, None);
        assert_eq!(there.expires, Some(elsewhere + Duration::from_secs(601)));
        assert_eq!(there.node.as_deref(), Some("glance-1"));
        // Already over: nothing to share.
        assert_eq!(
            RuleRecord::of(&rule, "glance-1", now + Duration::from_secs(601)),
            None
        );
    }
}
