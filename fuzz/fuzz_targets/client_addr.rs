//! The proxy path's client-address readers, `limiter_common::client_addr`: the code the
//! kernel program runs (through `bpf_loop` there, plain loops here) on `X-Forwarded-For` and
//! `Forwarded` values and PROXY v1 lines, and its lone-dotted-quad shortcut. Input: a flags
//! byte (bit 0: `Forwarded`, else `X-Forwarded-For`; bit 1: the value was cut on its left),
//! then the value as the window holds it (at most its 128 bytes).
//!
//! Properties besides "never panics": the shortcut reads exactly what the standard library
//! reads after one blank, and never disagrees with the general reader; an uncut
//! `X-Forwarded-For` value whose last entry is, blanks aside, an address the standard library
//! reads yields that address (the entry a proxy appends is never missed).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use limiter_common::{
    client_addr::{
        lone_dotted_quad, proxy_v1, rightmost_client, HeaderKind, PlainLoops, Window, MAX_ENTRY,
    },
    SourceAddr,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, value)) = data.split_first() else {
        return;
    };
    let mut window = Window::new();
    if value.len() > window.text.len() {
        return;
    }
    window.text[..value.len()].copy_from_slice(value);
    let kind = if flags & 1 == 0 {
        HeaderKind::XForwardedFor
    } else {
        HeaderKind::Forwarded
    };
    let cut_left = flags & 2 != 0;
    let general = rightmost_client(
        &mut window,
        &PlainLoops,
        value.len(),
        cut_left,
        kind,
        |_| false,
    );
    let _ = proxy_v1(&mut window, &PlainLoops, value.len());
    if kind != HeaderKind::XForwardedFor || cut_left {
        return;
    }

    let shortcut = lone_dotted_quad(&mut window, value.len());
    let expected = (value.len() >= 2 && matches!(value[0], b' ' | b'\t'))
        .then(|| {
            std::str::from_utf8(&value[1..])
                .ok()?
                .parse::<Ipv4Addr>()
                .ok()
        })
        .flatten()
        .map(|a| key(IpAddr::V4(a)));
    assert_eq!(shortcut, expected, "lone quad of {value:?}");
    if shortcut.is_some() {
        assert_eq!(
            general, shortcut,
            "shortcut and general reader on {value:?}"
        );
    }

    let last = match value.iter().rposition(|&b| b == b',') {
        Some(comma) => &value[comma + 1..],
        None => value,
    };
    if last.len() <= MAX_ENTRY {
        let plain = std::str::from_utf8(last)
            .ok()
            .and_then(|entry| entry.trim_matches([' ', '\t']).parse::<IpAddr>().ok());
        if let Some(addr) = plain {
            assert_eq!(general, Some(key(addr)), "last entry of {value:?}");
        }
    }
});

fn key(addr: IpAddr) -> SourceAddr {
    SourceAddr::from_octets(limiter_user::net::addr_to_key(addr))
}
