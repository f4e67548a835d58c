//! Glance behind a reverse proxy (HAProxy): which proxies are trusted to name the client, in
//! which header, and under which URL path prefixes Glance is served.
//!
//! A proxy opens its own connections to Glance, so without this every client behind it looks
//! like one source, the proxy, and a ban of that source cuts every client off. The kernel
//! program attributes a trusted proxy's requests to the client its header names; this module
//! holds the settings that drive it and the rules around them: a trusted proxy is never
//! banned automatically ([`TrustedProxies`] joins the policy's never-ban set), and a manual
//! block that would cut one off is refused unless forced ([`TrustedProxies::check_block`]).
//!
//! Pure: no I/O. `config` parses and checks the keys through [`settings`] and [`paths`]; the
//! loader reads the values from the checked `Config`. [`load`] follows what each proxy relayed,
//! for the daemon's `stats` and metrics.

mod block;
pub mod load;
pub mod paths;
pub mod settings;

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

pub use self::block::{BlockRefused, ProxyOverlap};
use crate::net_list;

/// One thing wrong with a proxy setting: the key as it is written in the file
/// (`trusted_proxies[2]`) and what is wrong with it and what to write instead. `config`
/// turns it into one of its problems, with the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem of the proxy settings, in the order of the file's keys.
pub fn problems(trusted: &TrustedProxies, path_prefixes: &[String]) -> Vec<Problem> {
    let mut problems = settings::problems(trusted);
    problems.extend(paths::problems(path_prefixes));
    problems
}

/// The proxies (`trusted_proxies`) whose client-address header is believed: addresses and
/// prefixes, in the order configured (an entry's index is how messages name it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    entries: Vec<IpNet>,
}

impl TrustedProxies {
    /// Unchecked: [`problems`] says what is wrong with them (the configuration checks).
    pub fn new(entries: impl IntoIterator<Item = IpNet>) -> Self {
        TrustedProxies {
            entries: entries.into_iter().collect(),
        }
    }

    pub fn entries(&self) -> &[IpNet] {
        &self.entries
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> + '_ {
        self.entries.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `addr` is a trusted proxy. An IPv4-mapped IPv6 address counts as its IPv4
    /// form, as in the kernel's key space.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.entries.iter().any(|entry| entry.contains(&addr))
    }

    /// Whether `net` holds a trusted proxy or lies inside a trusted prefix.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.first_overlap(net).is_some()
    }

    /// The first entry (index and prefix) that `net` overlaps.
    pub fn first_overlap(&self, net: &IpNet) -> Option<(usize, &IpNet)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, entry)| net_list::overlap(entry, net))
    }
}

impl FromIterator<IpNet> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        TrustedProxies::new(iter)
    }
}

/// The header the trusted proxies write the client's address into
/// (`client_address_header`). One, not both: a proxy sets the one it is configured for and
/// passes any other through as the client sent it, so a limiter reading both would take a
/// client's forged header as the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClientHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (HAProxy's `option forwardfor`).
    #[default]
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=client;proto=https`.
    Forwarded,
}

impl ClientHeader {
    pub const ALL: [ClientHeader; 2] = [ClientHeader::XForwardedFor, ClientHeader::Forwarded];

    /// The header's name as it is usually written; the file may use any case.
    pub const fn name(self) -> &'static str {
        match self {
            ClientHeader::XForwardedFor => "X-Forwarded-For",
            ClientHeader::Forwarded => "Forwarded",
        }
    }
}

impl fmt::Display for ClientHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ClientHeader {
    type Err = String;

    /// Case-insensitive, as HTTP header names are.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ClientHeader::ALL
            .into_iter()
            .find(|header| header.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a header the limiter reads; write \"X-Forwarded-For\" \
                     (HAProxy's `option forwardfor`) or \"Forwarded\" (RFC 7239 `for=`), \
                     whichever your trusted proxies set"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_answer_for_addresses_and_prefixes() {
        let trusted = TrustedProxies::new([net("198.51.100.2/32"), net("2001:db8::/64")]);
        assert!(trusted.contains("198.51.100.2".parse().unwrap()));
        assert!(trusted.contains("::ffff:198.51.100.2".parse().unwrap()));
        assert!(trusted.contains("2001:db8::42".parse().unwrap()));
        assert!(!trusted.contains("198.51.100.3".parse().unwrap()));
        assert!(trusted.overlaps(&net("198.51.100.0/24")));
        assert!(trusted.overlaps(&net("2001:db8::5/128")));
        assert!(!trusted.overlaps(&net("198.51.100.128/25")));
        assert_eq!(
            trusted.first_overlap(&net("2001:db8::/48")),
            Some((1, &net("2001:db8::/64")))
        );
        assert!(TrustedProxies::default().is_empty());
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_header_is_read_in_any_case_and_written_in_the_usual_one() {
        assert_eq!(
            "x-forwarded-for".parse::<ClientHeader>(),
            Ok(ClientHeader::XForwardedFor)
        );
        assert_eq!(
            "FORWARDED".parse::<ClientHeader>(),
            Ok(ClientHeader::Forwarded)
        );
        assert_eq!(ClientHeader::default().to_string(), "X-Forwarded-For");
        let message = "X-Real-IP".parse::<ClientHeader>().unwrap_err();
        assert!(
            message.contains("`X-Real-IP` is not a header")
                && message.contains("\"X-Forwarded-For\"")
                && message.contains("\"Forwarded\""),
            "{message}"
        );
    }
}
