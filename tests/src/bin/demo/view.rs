//! What the daemon shows about the demo's cast, read from `limiter list --json` and
//! `limiter stats --json` (pure functions over their JSON, unit-tested below).
//!
//! The source's `via` (the trusted proxy its requests came through) is read when the daemon
//! reports it and is otherwise absent: the demo tells its story without it.

use std::net::IpAddr;

use ipnet::IpNet;
use limiter_tests::daemon::host_prefix;
use serde_json::Value;

/// The block rule covering exactly `address` (its host prefix): the attacker's own ban.
pub fn ban_of<'a>(rules: &'a [Value], address: &str) -> Option<&'a Value> {
    let prefix = host_prefix(address);
    rules
        .iter()
        .find(|r| r["action"] == "block" && r["prefix"] == prefix)
}

/// The prefix of a block rule covering `address` with any prefix length (a /32, or a whole
/// network by aggregation or by hand).
pub fn block_covering(rules: &[Value], address: &str) -> Option<String> {
    let address: IpAddr = address.parse().ok()?;
    rules
        .iter()
        .filter(|r| r["action"] == "block")
        .filter_map(|r| r["prefix"].as_str())
        .find(|prefix| {
            prefix
                .parse::<IpNet>()
                .is_ok_and(|net| net.contains(&address))
        })
        .map(str::to_owned)
}

/// What the daemon counts for one source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSeen {
    pub image_creates_per_minute: Option<u64>,
    pub via: Option<String>,
}

/// `address`'s row in `limiter stats --json`, if the daemon tracks it.
pub fn source_in(stats: &Value, address: &str) -> SourceSeen {
    let row = stats["sources"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["address"] == address));
    let Some(row) = row else {
        return SourceSeen::default();
    };
    SourceSeen {
        image_creates_per_minute: row["rates"]["image_creates_per_minute"].as_u64(),
        via: row["via"].as_str().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules() -> Vec<Value> {
        vec![
            json!({"action": "allow", "prefix": "198.51.100.0/24"}),
            json!({"action": "block", "prefix": "203.0.113.130/32", "reason": "r"}),
            json!({"action": "block", "prefix": "2001:db8::/32"}),
        ]
    }

    #[test]
    fn the_ban_is_the_host_prefix_block() {
        assert_eq!(
            ban_of(&rules(), "203.0.113.130").unwrap()["reason"],
            json!("r")
        );
        assert!(ban_of(&rules(), "203.0.113.131").is_none());
        // An allow rule is no ban.
        assert!(ban_of(
            &[json!({"action": "allow", "prefix": "203.0.113.2/32"})],
            "203.0.113.2"
        )
        .is_none());
    }

    #[test]
    fn a_block_covers_an_address_with_any_prefix_length_and_an_allow_does_not() {
        let rules = rules();
        assert_eq!(block_covering(&rules, "198.51.100.2"), None);
        assert_eq!(
            block_covering(&rules, "203.0.113.130").as_deref(),
            Some("203.0.113.130/32")
        );
        assert_eq!(
            block_covering(&rules, "2001:db8:51::2").as_deref(),
            Some("2001:db8::/32")
        );
    }

    #[test]
    fn a_source_is_read_with_its_via_when_there_is_one() {
        let stats = json!({"tracked_sources": 2, "sources": [
            {"address": "203.0.113.130", "rates": {"image_creates_per_minute": 41},
             "via": "198.51.100.2"},
            {"address": "198.51.100.2", "state": "allowed",
             "rates": {"image_creates_per_minute": 0}},
        ]});
        assert_eq!(
            source_in(&stats, "203.0.113.130"),
            SourceSeen {
                image_creates_per_minute: Some(41),
                via: Some("198.51.100.2".into())
            }
        );
        assert_eq!(
            source_in(&stats, "198.51.100.2").image_creates_per_minute,
            Some(0)
        );
        assert_eq!(source_in(&stats, "203.0.113.2"), SourceSeen::default());
    }
}
