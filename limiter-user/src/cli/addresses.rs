//! Address arguments: IPs and CIDR prefixes from the command line and, for `-`, from stdin.
//!
//! Everything is parsed before anything is sent, and every bad entry is reported with where it
//! came from, so a script loading 10,000 rules learns about all its mistakes in one run and
//! never half-applies a list.

use std::{
    fmt,
    io::{self, BufRead},
    net::IpAddr,
};

use ipnet::IpNet;

use crate::net;

/// The argument that stands for stdin.
pub const STDIN: &str = "-";

/// Where an entry came from: 1-based positions, as an editor shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Argument(usize),
    StdinLine(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Argument(n) => write!(f, "argument {n}"),
            Origin::StdinLine(n) => write!(f, "stdin line {n}"),
        }
    }
}

/// One entry that is not an address or prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    pub origin: Origin,
    pub text: String,
    /// What is wrong and what to write instead.
    pub problem: String,
}

impl fmt::Display for BadEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "{} of {total} addresses {} invalid, so nothing was sent; fix {} and run the command again:{}",
        bad.len(),
        if bad.len() == 1 { "is" } else { "are" },
        if bad.len() == 1 { "it" } else { "them" },
        bad.iter().map(|entry| format!("\n  {entry}")).collect::<String>()
    )]
    Invalid { bad: Vec<BadEntry>, total: usize },
    #[error("`-` (read addresses from stdin) is given more than once; give it once")]
    StdinTwice,
    #[error("cannot read addresses from stdin: {0}; nothing was sent")]
    ReadStdin(#[source] io::Error),
}

/// The prefixes named by `arguments`, reading `stdin` for a `-` argument. All or nothing.
pub fn collect(arguments: &[String], stdin: &mut dyn BufRead) -> Result<Vec<IpNet>, AddressError> {
    if arguments.iter().filter(|a| *a == STDIN).count() > 1 {
        return Err(AddressError::StdinTwice);
    }
    let mut prefixes = Vec::new();
    let mut bad = Vec::new();
    let mut total = 0;
    let mut record = |origin: Origin, text: &str, parsed: Result<IpNet, String>| {
        total += 1;
        match parsed {
            Ok(prefix) => prefixes.push(prefix),
            Err(problem) => bad.push(BadEntry {
                origin,
                text: text.to_string(),
                problem,
            }),
        }
    };
    for (index, argument) in arguments.iter().enumerate() {
        if argument == STDIN {
            for (number, line) in read_lines(stdin)? {
                if let Some(entry) = entry_of_line(&line) {
                    record(Origin::StdinLine(number), entry, parse_prefix(entry));
                }
            }
        } else {
            record(
                Origin::Argument(index + 1),
                argument,
                parse_prefix(argument.trim()),
            );
        }
    }
    if bad.is_empty() {
        Ok(prefixes)
    } else {
        Err(AddressError::Invalid { bad, total })
    }
}

/// Numbered lines; a line that is not UTF-8 becomes text that fails to parse as an address,
/// so it is reported with its number like any other bad line.
fn read_lines(stdin: &mut dyn BufRead) -> Result<Vec<(usize, String)>, AddressError> {
    let mut lines = Vec::new();
    for (index, line) in stdin.split(b'\n').enumerate() {
        let bytes = line.map_err(AddressError::ReadStdin)?;
        lines.push((index + 1, String::from_utf8_lossy(&bytes).into_owned()));
    }
    Ok(lines)
}

/// The address on a stdin line: `#` starts a comment, whitespace around it is ignored, and a
/// line with nothing left is skipped.
pub fn entry_of_line(line: &str) -> Option<&str> {
    let before_comment = line.split('#').next().unwrap_or_default();
    Some(before_comment.trim()).filter(|entry| !entry.is_empty())
}

const FORMS: &str =
    "write an address (198.51.100.7, 2001:db8::7) or a prefix (198.51.100.0/24, 2001:db8::/48)";

/// An address (a host: /32 or /128) or a CIDR prefix without host bits.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let prefix = match text.split_once('/') {
        None => {
            let addr: IpAddr = text
                .parse()
                .map_err(|_| format!("`{text}` is not an IP address or prefix; {FORMS}"))?;
            IpNet::from(addr)
        }
        Some((addr_text, length_text)) => {
            let addr: IpAddr = addr_text
                .parse()
                .map_err(|_| format!("`{text}`: `{addr_text}` is not an IP address; {FORMS}"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            let length = length_text
                .parse::<u8>()
                .ok()
                .filter(|_| length_text.bytes().all(|b| b.is_ascii_digit()))
                .filter(|length| *length <= max)
                .ok_or_else(|| {
                    format!(
                        "`{text}`: the prefix length must be a number from 0 to {max} for \
                         {family}, not `{length_text}`"
                    )
                })?;
            let prefix = IpNet::new(addr, length).expect("length checked against the family");
            if prefix != prefix.trunc() {
                return Err(format!(
                    "`{text}` has host bits set; write {} for the network, or {} for the single \
                     address",
                    prefix.trunc(),
                    addr
                ));
            }
            prefix
        }
    };
    reject_ipv4_mapped(text, prefix)?;
    Ok(prefix)
}

/// IPv6 prefixes overlapping `::ffff:0:0/96` would match IPv4 sources in the kernel's shared
/// key space; the daemon rejects them, and this says what to write instead.
fn reject_ipv4_mapped(text: &str, prefix: IpNet) -> Result<(), String> {
    let IpNet::V6(v6) = prefix else {
        return Ok(());
    };
    if !net::overlaps_ipv4_mapped(&v6) {
        return Ok(());
    }
    let (length, bytes) = net::net_to_key(prefix);
    let fix = match net::key_to_net(length, bytes) {
        Some(IpNet::V4(v4)) if v4.prefix_len() == 32 => format!("write it as {}", v4.addr()),
        Some(IpNet::V4(v4)) => format!("write it as {v4}"),
        _ => "write IPv4 rules in IPv4 form and use a narrower IPv6 prefix (for example \
              2000::/3 for all global unicast)"
            .to_string(),
    };
    Err(format!(
        "`{text}` overlaps ::ffff:0:0/96, the IPv4-mapped range, so it would also match IPv4 \
         sources; {fix}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn problem(text: &str) -> String {
        parse_prefix(text).unwrap_err()
    }

    #[test]
    fn bare_addresses_are_hosts() {
        assert_eq!(parse_prefix("198.51.100.7"), Ok(net("198.51.100.7/32")));
        assert_eq!(parse_prefix("2001:db8::7"), Ok(net("2001:db8::7/128")));
    }

    #[test]
    fn prefixes_without_host_bits_are_kept() {
        assert_eq!(parse_prefix("198.51.100.0/24"), Ok(net("198.51.100.0/24")));
        assert_eq!(parse_prefix("2001:db8::/48"), Ok(net("2001:db8::/48")));
        assert_eq!(parse_prefix("0.0.0.0/0"), Ok(net("0.0.0.0/0")));
    }

    #[test]
    fn host_bits_are_bad_input_with_the_corrected_forms() {
        let message = problem("198.51.100.7/24");
        assert!(message.contains("has host bits set"), "{message}");
        assert!(
            message.contains("198.51.100.0/24 for the network"),
            "{message}"
        );
        assert!(
            message.contains("198.51.100.7 for the single address"),
            "{message}"
        );
        assert!(problem("2001:db8::1/64").contains("2001:db8::/64"));
    }

    #[test]
    fn bad_prefix_lengths_name_the_range() {
        for (text, range) in [
            ("198.51.100.0/33", "0 to 32 for IPv4"),
            ("2001:db8::/129", "0 to 128 for IPv6"),
            ("198.51.100.0/", "0 to 32"),
            ("198.51.100.0/+24", "0 to 32"),
            ("198.51.100.0/2x", "0 to 32"),
            ("198.51.100.0/24/1", "0 to 32"),
        ] {
            assert!(problem(text).contains(range), "{text}: {}", problem(text));
        }
    }

    #[test]
    fn non_addresses_show_the_accepted_forms() {
        for text in [
            "10.0.0.300",
            "glance.example.com",
            "",
            "fe80::1%eth0",
            "1.2.3.4 5.6.7.8",
        ] {
            assert!(
                problem(text).contains("write an address (198.51.100.7"),
                "{text}"
            );
        }
        assert!(problem("10.0.0.300/8").contains("`10.0.0.300` is not an IP address"));
    }

    #[test]
    fn ipv4_mapped_forms_are_rewritten() {
        assert!(problem("::ffff:10.1.2.3").contains("write it as 10.1.2.3"));
        assert!(problem("::ffff:10.1.2.0/120").contains("write it as 10.1.2.0/24"));
        assert!(problem("::/0").contains("narrower IPv6 prefix"));
    }

    #[test]
    fn stdin_lines_skip_blanks_and_comments() {
        assert_eq!(entry_of_line("  198.51.100.7 \r"), Some("198.51.100.7"));
        assert_eq!(
            entry_of_line("198.51.100.7 # the flooder"),
            Some("198.51.100.7")
        );
        assert_eq!(entry_of_line("# a comment"), None);
        assert_eq!(entry_of_line("   "), None);
    }

    #[test]
    fn arguments_and_stdin_combine_in_order() {
        let mut stdin = "# list\n198.51.100.0/24\n\n2001:db8::7\n".as_bytes();
        let arguments = [
            "192.0.2.1".to_string(),
            "-".to_string(),
            "192.0.2.2".to_string(),
        ];
        assert_eq!(
            collect(&arguments, &mut stdin).unwrap(),
            [
                net("192.0.2.1/32"),
                net("198.51.100.0/24"),
                net("2001:db8::7/128"),
                net("192.0.2.2/32")
            ]
        );
    }

    #[test]
    fn every_bad_entry_is_reported_with_its_origin() {
        let mut stdin: &[u8] = b"198.51.100.7\nnot-an-ip\n\n# fine\n198.51.100.7/24\n\xff\n";
        let arguments = ["10.0.0.1/40".to_string(), "-".to_string()];
        let error = collect(&arguments, &mut stdin).unwrap_err();
        let AddressError::Invalid { bad, total } = &error else {
            panic!("{error:?}")
        };
        let origins: Vec<Origin> = bad.iter().map(|entry| entry.origin).collect();
        assert_eq!(
            origins,
            [
                Origin::Argument(1),
                Origin::StdinLine(2),
                Origin::StdinLine(5),
                Origin::StdinLine(6)
            ]
        );
        assert_eq!(*total, 5);
        let message = error.to_string();
        assert!(
            message.starts_with("4 of 5 addresses are invalid, so nothing was sent"),
            "{message}"
        );
        assert!(
            message.contains("\n  stdin line 2: `not-an-ip` is not"),
            "{message}"
        );
    }

    #[test]
    fn stdin_is_read_once_at_most() {
        let arguments = ["-".to_string(), "-".to_string()];
        assert!(matches!(
            collect(&arguments, &mut "".as_bytes()),
            Err(AddressError::StdinTwice)
        ));
    }

    #[test]
    fn an_empty_stdin_names_nothing() {
        assert_eq!(
            collect(&["-".to_string()], &mut "\n# none\n".as_bytes()).unwrap(),
            []
        );
    }
}
