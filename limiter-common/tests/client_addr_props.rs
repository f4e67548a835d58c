//! The kernel program's address parsers against the standard library's, on generated text:
//! every address the standard library formats is read back exactly, and no text that is not
//! an address (by the standard library's reading) is read as one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use limiter_common::{
    client_addr::MAX_ENTRIES,
    client_addr::{
        ipv4, ipv6, lone_dotted_quad, proxy_v1, rightmost_client, HeaderKind, PlainLoops, ProxyV1,
        Window,
    },
    SourceAddr,
};
use proptest::prelude::*;

fn window(text: &str) -> Option<(Window, usize)> {
    let mut w = Window::new();
    let bytes = text.as_bytes();
    if bytes.len() > w.text.len() {
        return None;
    }
    w.text[..bytes.len()].copy_from_slice(bytes);
    Some((w, bytes.len()))
}

fn key(addr: IpAddr) -> SourceAddr {
    let octets = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    SourceAddr::from_octets(octets)
}

/// Text made of the characters addresses are made of, so near misses are common.
fn addressish() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[0-9a-fA-F:.]{0,45}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn every_formatted_ipv4_address_reads_back(a: u32) {
        let addr = Ipv4Addr::from(a);
        let (mut w, n) = window(&addr.to_string()).unwrap();
        prop_assert_eq!(ipv4(&mut w, &PlainLoops, 0, n), Some(key(IpAddr::V4(addr))));
    }

    #[test]
    fn every_formatted_ipv6_address_reads_back(a: u128, upper: bool) {
        let addr = Ipv6Addr::from(a);
        let mut text = addr.to_string();
        if upper {
            text = text.to_uppercase();
        }
        let (mut w, n) = window(&text).unwrap();
        prop_assert_eq!(ipv6(&mut w, &PlainLoops, 0, n), Some(key(IpAddr::V6(addr))), "{}", text);
    }

    #[test]
    fn expanded_ipv6_forms_read_back(groups: [u16; 8]) {
        let text = groups.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":");
        let (mut w, n) = window(&text).unwrap();
        let addr = Ipv6Addr::from(groups);
        prop_assert_eq!(ipv6(&mut w, &PlainLoops, 0, n), Some(key(IpAddr::V6(addr))));
    }

    #[test]
    fn nothing_but_addresses_reads_as_one(text in addressish()) {
        let (mut w, n) = window(&text).unwrap();
        let std_v4 = text.parse::<Ipv4Addr>().ok().map(|a| key(IpAddr::V4(a)));
        let std_v6 = text.parse::<Ipv6Addr>().ok().map(|a| key(IpAddr::V6(a)));
        prop_assert_eq!(ipv4(&mut w, &PlainLoops, 0, n), std_v4, "{}", text);
        prop_assert_eq!(ipv6(&mut w, &PlainLoops, 0, n), std_v6, "{}", text);
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client(
        entries in proptest::collection::vec(any::<u32>(), 1..5),
        trusted_tail in 0usize..3,
    ) {
        // Entries, then up to two trusted proxies (198.51.100.0/24 here) appended after them.
        let mut text: Vec<String> = entries.iter().map(|a| Ipv4Addr::from(*a | 1).to_string()).collect();
        for i in 0..trusted_tail.min(2) {
            text.push(format!("198.51.100.{}", 10 + i));
        }
        let value = text.join(", ");
        let Some((mut w, n)) = window(&value) else { return Ok(()) };
        let trusted = |a: &SourceAddr| a.octets()[..15] == key("198.51.100.0".parse().unwrap()).octets()[..15];
        // The rightmost untrusted entry among the four read from the right.
        let all: Vec<SourceAddr> = text.iter().map(|t| key(t.parse().unwrap())).collect();
        let expected = all.iter().rev().take(MAX_ENTRIES).find(|a| !trusted(a)).copied();
        let got = rightmost_client(&mut w, &PlainLoops, n, false, HeaderKind::XForwardedFor, trusted);
        prop_assert_eq!(got, expected, "{}", value);
    }

    /// An `X-Forwarded-For` entry without a colon is read as a dotted quad on the way back
    /// (no loop of its own): exactly what the standard library reads, blanks around it
    /// allowed, nothing else.
    #[test]
    fn an_entry_read_on_the_way_back_is_what_the_standard_library_reads(
        digits in proptest::string::string_regex("[0-9.]{0,17}").unwrap(),
        before in proptest::string::string_regex("[ \t]{0,2}").unwrap(),
        after in proptest::string::string_regex("[ \t]{0,2}").unwrap(),
        left in proptest::option::of(any::<u32>()),
        quad: Option<u32>,
    ) {
        // Half of the cases a real address, the others near misses.
        let entry = quad.map_or(digits, |q| Ipv4Addr::from(q).to_string());
        let value = match left {
            Some(l) => format!("{}, {before}{entry}{after}", Ipv4Addr::from(l)),
            None => format!("{before}{entry}{after}"),
        };
        let (mut w, n) = window(&value).unwrap();
        let expected = entry.parse::<Ipv4Addr>().ok().map(|a| key(IpAddr::V4(a)));
        let got = rightmost_client(&mut w, &PlainLoops, n, false, HeaderKind::XForwardedFor, |_| false);
        prop_assert_eq!(got, expected, "{:?}", value);
    }

    /// The kernel's shortcut for a value that is a blank and one dotted quad reads every
    /// such value, to the address the standard library reads, and reads nothing that the
    /// general reader would read otherwise: near misses (a fifth octet, a leading zero, 256,
    /// a second blank, a port, a comma) are left to it.
    #[test]
    fn the_lone_quad_shortcut_agrees_with_the_general_reader(
        digits in proptest::string::string_regex("[0-9.]{0,17}").unwrap(),
        before in proptest::string::string_regex("[ \t]{0,2}").unwrap(),
        after in proptest::string::string_regex("[ \t:,0-9]{0,2}").unwrap(),
        quad: Option<u32>,
    ) {
        let entry = quad.map_or(digits, |q| Ipv4Addr::from(q).to_string());
        let value = format!("{before}{entry}{after}");
        let (mut w, n) = window(&value).unwrap();
        let shortcut = lone_dotted_quad(&mut w, n);
        let general = rightmost_client(&mut w, &PlainLoops, n, false, HeaderKind::XForwardedFor, |_| false);
        // One blank, then nothing but the quad (which `after` may have lengthened).
        let expected = (before.len() == 1)
            .then(|| value[1..].parse::<Ipv4Addr>().ok())
            .flatten()
            .map(|a| key(IpAddr::V4(a)));
        prop_assert_eq!(shortcut, expected, "{:?}", value);
        if shortcut.is_some() {
            prop_assert_eq!(general, shortcut, "{:?}", value);
        }
    }

    #[test]
    fn arbitrary_bytes_never_fool_the_lone_quad_shortcut(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut w = Window::new();
        w.text[..bytes.len()].copy_from_slice(&bytes);
        let expected = (bytes.len() >= 2 && matches!(bytes[0], b' ' | b'\t'))
            .then(|| std::str::from_utf8(&bytes[1..]).ok()?.parse::<Ipv4Addr>().ok())
            .flatten()
            .map(|a| key(IpAddr::V4(a)));
        prop_assert_eq!(lone_dotted_quad(&mut w, bytes.len()), expected, "{:?}", bytes);
    }

    #[test]
    fn proxy_v1_lines_name_their_source(src: u32, dst: u32, sport: u16, dport: u16) {
        let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let line = format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\nGET / HTTP/1.1\r\n");
        let (mut w, n) = window(&line).unwrap();
        let length = line.find("\r\n").unwrap() + 2;
        prop_assert_eq!(proxy_v1(&mut w, &PlainLoops, n), (ProxyV1::Client(key(IpAddr::V4(src))), length));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128), kind in 0..2u8) {
        let mut w = Window::new();
        w.text[..bytes.len()].copy_from_slice(&bytes);
        let kind = if kind == 0 { HeaderKind::XForwardedFor } else { HeaderKind::Forwarded };
        let _ = rightmost_client(&mut w, &PlainLoops, bytes.len(), false, kind, |_| false);
        let _ = proxy_v1(&mut w, &PlainLoops, bytes.len());
    }
}
