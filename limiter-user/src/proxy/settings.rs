//! `trusted_proxies` and `client_address_header` in the configuration file: their text forms
//! and the checks of `trusted_proxies`.

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{ClientHeader, Problem, TrustedProxies};
use crate::net_list;

/// The shortest prefixes `trusted_proxies` accepts. The header of a trusted proxy names the
/// client, so trusting everyone lets every client name itself; a proxy tier is a few
/// addresses, and anything wider than this is a mistake, not a proxy network.
pub const MIN_IPV4_PREFIX: u8 = 8;
pub const MIN_IPV6_PREFIX: u8 = 32;

const KEY: &str = "trusted_proxies";

/// Problems of `trusted_proxies`, at most one per entry: too wide, in the IPv4-mapped range,
/// host bits set, or overlapping an earlier entry.
pub fn problems(trusted: &TrustedProxies) -> Vec<Problem> {
    let entries = trusted.entries();
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            entry_problem(entry)
                .or_else(|| net_list::entry_problem(entry))
                .or_else(|| overlap_problem(entry, &entries[..i]))
                .map(|message| Problem::new(format!("{KEY}[{i}]"), message))
        })
        .collect()
}

fn entry_problem(entry: &IpNet) -> Option<String> {
    let shortest = match entry {
        IpNet::V4(_) => MIN_IPV4_PREFIX,
        IpNet::V6(_) => MIN_IPV6_PREFIX,
    };
    (entry.prefix_len() < shortest).then(|| {
        format!(
            "{entry} is too wide to trust: a trusted proxy's header names the client, so \
             trusting everyone (or most of the Internet) lets any client pick its own identity, \
             dodge its ban or get another address banned; list your proxies' own addresses \
             (\"198.51.100.2\"), or a prefix no wider than /{MIN_IPV4_PREFIX} (IPv4) or \
             /{MIN_IPV6_PREFIX} (IPv6) that holds only proxies"
        )
    })
}

fn overlap_problem(entry: &IpNet, earlier: &[IpNet]) -> Option<String> {
    let (j, other) = earlier
        .iter()
        .enumerate()
        .find(|(_, other)| net_list::overlap(entry, other))?;
    let other_text = net_list::entry_text(other);
    Some(if entry == other {
        format!("{entry} is listed twice (also {KEY}[{j}]); remove one")
    } else if other.contains(entry) {
        format!(
            "{} is inside {KEY}[{j}], {other_text}, which already trusts it; remove this entry",
            net_list::entry_text(entry)
        )
    } else {
        format!(
            "{entry} covers {KEY}[{j}], {other_text}; keep one of them: this prefix if every \
             address in it is one of your proxies, else the single addresses"
        )
    })
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(net_list::entry_text))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .enumerate()
            .map(|(i, text)| {
                net_list::parse_entry(text).ok_or_else(|| {
                    de::Error::custom(format!(
                        "{KEY}[{i}]: `{text}` is not an IP address or prefix; write a proxy's \
                         address (\"198.51.100.2\", \"2001:db8::2\") or a prefix that holds only \
                         proxies (\"198.51.100.0/28\", \"2001:db8:10::/64\")"
                    ))
                })
            })
            .collect()
    }
}

impl Serialize for ClientHeader {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ClientHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|message| de::Error::custom(format!("client_address_header: {message}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        entries
            .iter()
            .map(|e| e.parse::<IpNet>().unwrap())
            .collect()
    }

    fn problems_of(entries: &[&str]) -> Vec<(String, String)> {
        problems(&trusted(entries))
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    }

    #[test]
    fn good_lists_have_no_problems() {
        assert!(problems_of(&[]).is_empty());
        assert!(problems_of(&["198.51.100.2/32", "198.51.100.3/32", "2001:db8::/64"]).is_empty());
        assert!(problems_of(&["10.0.0.0/8", "2001:db8::/32"]).is_empty());
    }

    #[test]
    fn trusting_everyone_is_refused_with_the_reason() {
        let found = problems_of(&["0.0.0.0/0", "::/0", "10.0.0.0/7", "2001:db8::/31"]);
        let keys: Vec<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "trusted_proxies[0]",
                "trusted_proxies[1]",
                "trusted_proxies[2]",
                "trusted_proxies[3]"
            ]
        );
        for (_, message) in &found {
            assert!(
                message.contains("too wide to trust")
                    && message.contains("lets any client pick its own identity")
                    && message.contains("\"198.51.100.2\""),
                "{message}"
            );
        }
        assert!(found[1].1.starts_with("::/0 is too wide"), "{}", found[1].1);
    }

    #[test]
    fn host_bits_and_the_mapped_range_are_refused_as_in_the_allowlist() {
        let found = problems_of(&["198.51.100.2/24", "::ffff:198.51.100.9/128"]);
        assert_eq!(found[0].0, "trusted_proxies[0]");
        assert!(
            found[0]
                .1
                .contains("write \"198.51.100.0/24\" for the network, or \"198.51.100.2\""),
            "{}",
            found[0].1
        );
        assert_eq!(found[1].0, "trusted_proxies[1]");
        assert!(
            found[1]
                .1
                .contains("write it in IPv4 form, \"198.51.100.9\""),
            "{}",
            found[1].1
        );
    }

    #[test]
    fn duplicates_and_overlaps_name_the_earlier_entry() {
        let found = problems_of(&[
            "198.51.100.0/28",
            "198.51.100.2/32",
            "2001:db8::2/128",
            "2001:db8::/64",
            "198.51.100.0/28",
        ]);
        assert_eq!(
            found,
            [
                (
                    "trusted_proxies[1]".to_string(),
                    "198.51.100.2 is inside trusted_proxies[0], 198.51.100.0/28, which already \
                     trusts it; remove this entry"
                        .to_string()
                ),
                (
                    "trusted_proxies[3]".to_string(),
                    "2001:db8::/64 covers trusted_proxies[2], 2001:db8::2; keep one of them: this \
                     prefix if every address in it is one of your proxies, else the single \
                     addresses"
                        .to_string()
                ),
                (
                    "trusted_proxies[4]".to_string(),
                    "198.51.100.0/28 is listed twice (also trusted_proxies[0]); remove one"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_text_form_round_trips_and_bad_entries_name_their_index() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct File {
            trusted_proxies: TrustedProxies,
            client_address_header: ClientHeader,
        }
        let file: File = toml::from_str(
            "trusted_proxies = [\"198.51.100.2\", \"2001:db8::/64\"]\n\
             client_address_header = \"forwarded\"\n",
        )
        .unwrap();
        assert_eq!(
            file.trusted_proxies,
            trusted(&["198.51.100.2/32", "2001:db8::/64"])
        );
        assert_eq!(file.client_address_header, ClientHeader::Forwarded);
        let text = toml::to_string(&file).unwrap();
        assert_eq!(
            text,
            "trusted_proxies = [\"198.51.100.2\", \"2001:db8::/64\"]\n\
             client_address_header = \"Forwarded\"\n"
        );

        let error = toml::from_str::<File>(
            "trusted_proxies = [\"198.51.100.2\", \"haproxy.example\"]\n\
             client_address_header = \"Forwarded\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("trusted_proxies[1]: `haproxy.example` is not an IP address or prefix"),
            "{error}"
        );
        let error =
            toml::from_str::<File>("trusted_proxies = []\nclient_address_header = \"X-Real-IP\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("client_address_header: `X-Real-IP` is not a header"),
            "{error}"
        );
    }
}
