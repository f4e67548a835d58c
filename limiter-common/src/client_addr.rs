//! Reading a client's address out of what a trusted proxy wrote: the value of an
//! `X-Forwarded-For` or `Forwarded` header, or the source field of a PROXY protocol v1 line.
//!
//! The XDP program copies the text into a fixed window and calls these functions; userspace
//! tests them against the standard library's parsers. Everything works on a
//! [`Window`] with masked indices and bounded loops, so it compiles to BPF without bounds-check
//! panics and the verifier sees every loop end.
//!
//! A result is either an address or nothing: anything unusual (an `unknown` or obfuscated
//! node, a zone index, leading zeros, a truncated entry) reads as "no client", which the
//! program counts as unattributed. Attributing a request to the wrong address would let a
//! client choose whom to get banned; failing to attribute one only leaves it counted apart.

use crate::SourceAddr;

/// Bytes of text the program reads: the right end of a header value (the rightmost entries are
/// the ones a proxy wrote), or the start of a PROXY v1 line (at most 107 bytes).
pub const WINDOW_LEN: usize = 128;
const MASK: usize = WINDOW_LEN - 1;

/// The text window, a power of two long so a masked index is always in bounds, and a slot
/// through which positions pass between the parser's loops.
///
/// The verifier follows every value it can, and a position found by one loop (which of ~100
/// iterations broke out) would make it check the next loop once per possible position, over
/// its budget. Stored into the window (map memory, whose contents it does not track) and read
/// back, a position becomes "some number": the next loop is checked once.
#[repr(C)]
pub struct Window {
    pub text: [u8; WINDOW_LEN],
    slots: [u64; SLOTS],
}

/// Values a scan keeps in the window instead of registers (see [`Window::store`]).
pub const SLOTS: usize = 32;

impl Window {
    pub const fn new() -> Self {
        Window {
            text: [0; WINDOW_LEN],
            slots: [0; SLOTS],
        }
    }

    /// `x`, with everything the verifier knew about it forgotten.
    #[inline(always)]
    pub fn forget(&mut self, x: usize) -> usize {
        self.store(0, x);
        self.load(0)
    }

    /// Keeps `x` in slot `slot` (1..=3 for the caller's own use; 0 is [`Window::forget`]'s,
    /// the rest this module's parsers').
    /// A loop that keeps what it found here rather than in registers reaches its next
    /// iteration in the same verifier state whatever it found.
    #[inline(always)]
    pub fn store(&mut self, slot: usize, x: usize) {
        // SAFETY: a field of this struct; the index is masked into it.
        unsafe { core::ptr::write_volatile(&mut self.slots[slot & (SLOTS - 1)], x as u64) }
    }

    #[inline(always)]
    pub fn load(&self, slot: usize) -> usize {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&self.slots[slot & (SLOTS - 1)]) as usize }
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

/// Entries of a header value read from the right before giving up: the client, and up to
/// three trusted proxies that appended themselves after it.
pub const MAX_ENTRIES: usize = 4;

/// The longest address text: an IPv6 address with an embedded IPv4 address.
const MAX_ADDR_TEXT: usize = 45;
/// The longest entry looked at: `for="[` + address + `]:65535"`, with some room for
/// whitespace and other parameters.
const MAX_ENTRY: usize = 96;

/// Which header the trusted proxies write the client into.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    /// `X-Forwarded-For: client, proxy1, ...` (HAProxy `option forwardfor`).
    XForwardedFor = 0,
    /// `Forwarded: for=client;proto=https, for=proxy1` (RFC 7239).
    Forwarded = 1,
}

#[inline(always)]
fn at(window: &Window, i: usize) -> u8 {
    window.text[i & MASK]
}

#[inline(always)]
fn is_ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// The client named by a header value held in `window[..len]`: the rightmost entry that is not
/// a trusted proxy. `cut_left` says the value began before the window, so the leftmost entry
/// may be a fragment and is never used.
#[inline(always)]
pub fn rightmost_client(
    window: &mut Window,
    len: usize,
    cut_left: bool,
    kind: HeaderKind,
    mut trusted: impl FnMut(&SourceAddr) -> bool,
) -> Option<SourceAddr> {
    if len > WINDOW_LEN {
        return None;
    }
    let mut end = len;
    for _ in 0..MAX_ENTRIES {
        end = window.forget(end);
        // The entry is (start, end): after the last comma before `end`, or from the start.
        let mut start = 0;
        let mut comma = false;
        for back in 1..=MAX_ENTRY {
            if back > end {
                break;
            }
            if at(window, end - back) == b',' {
                start = end - back + 1;
                comma = true;
                break;
            }
        }
        if !comma && (cut_left || end > MAX_ENTRY) {
            return None;
        }
        let start = window.forget(start);
        let addr = match kind {
            HeaderKind::XForwardedFor => node(window, start, end, false)?,
            HeaderKind::Forwarded => forwarded_for(window, start, end)?,
        };
        if !trusted(&addr) {
            return Some(addr);
        }
        if !comma {
            return None;
        }
        end = start - 1;
    }
    None
}

/// The `for=` parameter of one `Forwarded` element (`for=a;proto=b;by=c`).
#[inline(always)]
fn forwarded_for(window: &mut Window, start: usize, end: usize) -> Option<SourceAddr> {
    let (start, end) = (window.forget(start), window.forget(end));
    window.store(FWD_PAIR_START, start);
    let mut i = start;
    for _ in 0..=MAX_ENTRY {
        if i > end {
            break;
        }
        if i == end || at(window, i) == b';' {
            let mut s = window.load(FWD_PAIR_START);
            for _ in 0..MAX_ENTRY {
                if s < i && is_ows(at(window, s)) {
                    s += 1;
                } else {
                    break;
                }
            }
            let s = window.forget(s);
            if i >= s + 4
                && at(window, s) | 0x20 == b'f'
                && at(window, s + 1) | 0x20 == b'o'
                && at(window, s + 2) | 0x20 == b'r'
                && at(window, s + 3) == b'='
            {
                return node(window, s + 4, i, true);
            }
            window.store(FWD_PAIR_START, i + 1);
        }
        i += 1;
    }
    None
}

/// One node: an address, optionally with a port, IPv6 in brackets when it has one (or when
/// `Forwarded` quotes it), surrounded by optional whitespace and, if `quotes`, double quotes.
#[inline(always)]
fn node(window: &mut Window, start: usize, end: usize, quotes: bool) -> Option<SourceAddr> {
    let (mut s, mut e) = (window.forget(start), window.forget(end));
    for _ in 0..MAX_ENTRY {
        if s < e && is_ows(at(window, s)) {
            s += 1;
        } else {
            break;
        }
    }
    for _ in 0..MAX_ENTRY {
        if e > s && is_ows(at(window, e - 1)) {
            e -= 1;
        } else {
            break;
        }
    }
    let (mut s, mut e) = (window.forget(s), window.forget(e));
    if quotes && e >= s + 2 && at(window, s) == b'"' && at(window, e - 1) == b'"' {
        s += 1;
        e -= 1;
    }
    if e <= s || e - s > MAX_ENTRY {
        return None;
    }
    if at(window, s) == b'[' {
        // `[v6]` or `[v6]:port`.
        let mut close = 0;
        for k in 1..=MAX_ADDR_TEXT + 1 {
            if s + k >= e {
                break;
            }
            if at(window, s + k) == b']' {
                close = s + k;
                break;
            }
        }
        let close = window.forget(close);
        if close == 0 || !port_suffix(window, close + 1, e) {
            return None;
        }
        return ipv6(window, s + 1, close);
    }
    // Unbracketed: IPv6 if it has two colons or more, else IPv4 with an optional `:port`.
    let mut colons = 0;
    let mut last_colon = 0;
    for k in 0..MAX_ENTRY {
        if s + k >= e {
            break;
        }
        if at(window, s + k) == b':' {
            colons += 1;
            last_colon = s + k;
        }
    }
    let (colons, last_colon) = (window.forget(colons), window.forget(last_colon));
    match colons {
        0 => ipv4(window, s, e),
        1 if port_suffix(window, last_colon, e) => ipv4(window, s, last_colon),
        1 => None,
        _ => ipv6(window, s, e),
    }
}

/// Whether `window[start..end]` is empty or `:` and 1-5 digits.
#[inline(always)]
fn port_suffix(window: &mut Window, start: usize, end: usize) -> bool {
    let (start, end) = (window.forget(start), window.forget(end));
    if start == end {
        return true;
    }
    if at(window, start) != b':' || end - start < 2 || end - start > 6 {
        return false;
    }
    for k in 1..6 {
        if start + k >= end {
            break;
        }
        if !at(window, start + k).is_ascii_digit() {
            return false;
        }
    }
    true
}

/// A dotted-quad IPv4 address filling `window[start..end]` exactly, IPv4-mapped. Leading zeros
/// are refused, as the standard library refuses them (some parsers read them as octal).
#[inline(always)]
pub fn ipv4(window: &mut Window, start: usize, end: usize) -> Option<SourceAddr> {
    let value = ipv4_value(window, start, end)?;
    Some(mapped(value))
}

// The parsers' slots (`Window::store`): their loops keep their state in the window, so each
// iteration reaches the next in the same verifier state whatever the text was.
const V4_VALUE: usize = 4;
const V4_OCTET: usize = 5;
const V4_DIGITS: usize = 6;
const V4_DOTS: usize = 7;
const V6_COUNT: usize = 9;
const V6_GAP: usize = 10;
const V6_GROUP: usize = 11;
const V6_DIGITS: usize = 12;
const V6_AFTER_COLON: usize = 13;
const V6_POS: usize = 14;
const V6_GROUPS: usize = 16;
const FWD_PAIR_START: usize = 25;

#[inline(always)]
fn ipv4_value(window: &mut Window, start: usize, end: usize) -> Option<u32> {
    let (start, end) = (window.forget(start), window.forget(end));
    if end <= start || end - start > 15 {
        return None;
    }
    for slot in [V4_VALUE, V4_OCTET, V4_DIGITS, V4_DOTS] {
        window.store(slot, 0);
    }
    for k in 0..15 {
        if start + k >= end {
            break;
        }
        let c = at(window, start + k);
        let (octet, digits) = (window.load(V4_OCTET), window.load(V4_DIGITS));
        if c.is_ascii_digit() {
            if digits > 0 && octet == 0 {
                return None;
            }
            let octet = octet * 10 + usize::from(c - b'0');
            if octet > 255 {
                return None;
            }
            window.store(V4_OCTET, octet);
            window.store(V4_DIGITS, digits + 1);
        } else if c == b'.' && digits > 0 && window.load(V4_DOTS) < 3 {
            let value = (window.load(V4_VALUE) << 8) | octet;
            window.store(V4_VALUE, value);
            window.store(V4_OCTET, 0);
            window.store(V4_DIGITS, 0);
            window.store(V4_DOTS, window.load(V4_DOTS) + 1);
        } else {
            return None;
        }
    }
    if window.load(V4_DOTS) != 3 || window.load(V4_DIGITS) == 0 {
        return None;
    }
    Some(((window.load(V4_VALUE) << 8) | window.load(V4_OCTET)) as u32)
}

fn mapped(value: u32) -> SourceAddr {
    let mut octets = [0u8; 16];
    octets[10] = 0xff;
    octets[11] = 0xff;
    let v = value.to_be_bytes();
    octets[12] = v[0];
    octets[13] = v[1];
    octets[14] = v[2];
    octets[15] = v[3];
    SourceAddr::from_octets(octets)
}

/// An IPv6 address in text form (RFC 4291 2.2: groups, one `::`, an optional dotted IPv4
/// tail) filling `window[start..end]` exactly. No zone index.
#[inline(always)]
pub fn ipv6(window: &mut Window, start: usize, end: usize) -> Option<SourceAddr> {
    let (start, end) = (window.forget(start), window.forget(end));
    if end <= start || end - start > MAX_ADDR_TEXT || end - start < 2 {
        return None;
    }
    // Groups done, groups before the `::` (NO_GAP: none yet), the group being read and its
    // digits, whether the last character was a colon ending a group, where to read next.
    const NO_GAP: usize = 0xff;
    for (slot, value) in [
        (V6_COUNT, 0),
        (V6_GAP, NO_GAP),
        (V6_GROUP, 0),
        (V6_DIGITS, 0),
        (V6_AFTER_COLON, 0),
        (V6_POS, start),
    ] {
        window.store(slot, value);
    }
    for k in 0..8 {
        window.store(V6_GROUPS + k, 0);
    }
    // A leading `::` (and only `::`: a lone leading colon is invalid).
    if at(window, start) == b':' {
        if at(window, start + 1) != b':' {
            return None;
        }
        window.store(V6_GAP, 0);
        window.store(V6_POS, start + 2);
    }
    for _ in 0..MAX_ADDR_TEXT {
        let i = window.load(V6_POS);
        if i >= end {
            break;
        }
        let c = at(window, i);
        let digits = window.load(V6_DIGITS);
        if let Some(v) = hex(c) {
            if digits >= 4 {
                return None;
            }
            window.store(V6_GROUP, (window.load(V6_GROUP) << 4) | v as usize);
            window.store(V6_DIGITS, digits + 1);
            window.store(V6_AFTER_COLON, 0);
        } else if c == b':' {
            if digits == 0 {
                // `::` in the middle or at the end: only once, and only right after a group.
                if window.load(V6_AFTER_COLON) == 0 || window.load(V6_GAP) != NO_GAP {
                    return None;
                }
                window.store(V6_GAP, window.load(V6_COUNT));
                window.store(V6_AFTER_COLON, 0);
            } else {
                let count = window.load(V6_COUNT);
                if count >= 8 {
                    return None;
                }
                window.store(V6_GROUPS + (count & 7), window.load(V6_GROUP));
                window.store(V6_COUNT, count + 1);
                window.store(V6_GROUP, 0);
                window.store(V6_DIGITS, 0);
                window.store(V6_AFTER_COLON, 1);
            }
        } else if c == b'.' {
            // A dotted IPv4 tail: re-read the current group's text as its first octet.
            let count = window.load(V6_COUNT);
            if count > 6 || digits > i {
                return None;
            }
            let v4 = ipv4_value(window, i - digits, end)? as usize;
            window.store(V6_GROUPS + (count & 7), v4 >> 16);
            window.store(V6_GROUPS + ((count + 1) & 7), v4 & 0xffff);
            window.store(V6_COUNT, count + 2);
            window.store(V6_DIGITS, 0);
            window.store(V6_AFTER_COLON, 0);
            window.store(V6_POS, end);
            break;
        } else {
            return None;
        }
        window.store(V6_POS, i + 1);
    }
    if window.load(V6_POS) < end {
        return None;
    }
    let mut count = window.load(V6_COUNT);
    if window.load(V6_DIGITS) > 0 {
        if count >= 8 {
            return None;
        }
        window.store(V6_GROUPS + (count & 7), window.load(V6_GROUP));
        count += 1;
    } else if window.load(V6_AFTER_COLON) != 0 {
        // A single trailing colon ("1:2::3:").
        return None;
    }
    let gap = window.load(V6_GAP);
    let count = window.forget(count);
    // `::` stands for at least one group of zeros; without it there must be eight groups.
    let (gap, shift) = if gap == NO_GAP {
        if count != 8 {
            return None;
        }
        (8, 0)
    } else {
        if count > 7 || gap > count {
            return None;
        }
        (gap, 8 - count)
    };
    let mut octets = [0u8; 16];
    for k in 0..8 {
        let group = if k < gap {
            window.load(V6_GROUPS + k)
        } else if k >= gap + shift {
            window.load(V6_GROUPS + ((k - shift) & 7))
        } else {
            0
        };
        octets[2 * k] = (group >> 8) as u8;
        octets[2 * k + 1] = group as u8;
    }
    Some(SourceAddr::from_octets(octets))
}

#[inline(always)]
fn hex(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'a'..=b'f' => Some(u32::from(c - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(c - b'A' + 10)),
        _ => None,
    }
}

/// What a PROXY protocol v1 line says (`PROXY TCP4 src dst sport dport\r\n`), given the line
/// from its start in `window[..len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyV1 {
    /// The connection belongs to this client.
    Client(SourceAddr),
    /// `PROXY UNKNOWN`, or an address that does not parse: no client.
    Unknown,
    /// Not a complete v1 line.
    Invalid,
}

/// The longest PROXY v1 line, CRLF included (the specification's figure).
pub const PROXY_V1_MAX: usize = 107;

/// Reads a PROXY v1 line. Returns what it says and the line's length with its CRLF.
#[inline(always)]
pub fn proxy_v1(window: &mut Window, len: usize) -> (ProxyV1, usize) {
    // The line ends at the first CRLF, within 107 bytes.
    let mut line_end = 0;
    for k in 6..PROXY_V1_MAX {
        if k + 1 >= len {
            break;
        }
        if at(window, k) == b'\r' && at(window, k + 1) == b'\n' {
            line_end = k;
            break;
        }
    }
    let line_end = window.forget(line_end);
    if line_end == 0 {
        return (ProxyV1::Invalid, 0);
    }
    let length = line_end + 2;
    let is = |k: usize, s: &[u8; 5]| {
        at(window, k) == s[0]
            && at(window, k + 1) == s[1]
            && at(window, k + 2) == s[2]
            && at(window, k + 3) == s[3]
            && at(window, k + 4) == s[4]
    };
    let family6 = if is(6, b"TCP4 ") {
        false
    } else if is(6, b"TCP6 ") {
        true
    } else {
        // `PROXY UNKNOWN` (and anything after it) is valid: the proxy does not know the client.
        return (ProxyV1::Unknown, length);
    };
    let src_start = 11;
    let mut src_end = 0;
    for k in 0..=MAX_ADDR_TEXT {
        if src_start + k >= line_end {
            break;
        }
        if at(window, src_start + k) == b' ' {
            src_end = src_start + k;
            break;
        }
    }
    let src_end = window.forget(src_end);
    if src_end == 0 {
        return (ProxyV1::Invalid, 0);
    }
    let addr = if family6 {
        ipv6(window, src_start, src_end)
    } else {
        ipv4(window, src_start, src_end)
    };
    match addr {
        Some(addr) => (ProxyV1::Client(addr), length),
        None => (ProxyV1::Unknown, length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(text: &str) -> (Window, usize) {
        let mut w = Window::new();
        w.text[..text.len()].copy_from_slice(text.as_bytes());
        (w, text.len())
    }

    fn v4(a: [u8; 4]) -> SourceAddr {
        mapped(u32::from_be_bytes(a))
    }

    #[test]
    fn ipv4_exact() {
        let (mut w, n) = window("203.0.113.7");
        assert_eq!(ipv4(&mut w, 0, n), Some(v4([203, 0, 113, 7])));
        for bad in [
            "203.0.113",
            "203.0.113.7.",
            "256.1.1.1",
            "01.2.3.4",
            "1..2.3",
            "a.b.c.d",
        ] {
            let (mut w, n) = window(bad);
            assert_eq!(ipv4(&mut w, 0, n), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_forms() {
        let (mut w, n) = window("2001:db8::1");
        let mut o = [0u8; 16];
        o[0] = 0x20;
        o[1] = 0x01;
        o[2] = 0x0d;
        o[3] = 0xb8;
        o[15] = 1;
        assert_eq!(ipv6(&mut w, 0, n), Some(SourceAddr::from_octets(o)));
        let (mut w, n) = window("::ffff:203.0.113.7");
        assert_eq!(ipv6(&mut w, 0, n), Some(v4([203, 0, 113, 7])));
    }

    #[test]
    fn rightmost_skips_trusted() {
        let proxy = v4([198, 51, 100, 2]);
        let (mut w, n) = window("192.0.2.1, 203.0.113.7, 198.51.100.2");
        let got = rightmost_client(&mut w, n, false, HeaderKind::XForwardedFor, |a| *a == proxy);
        assert_eq!(got, Some(v4([203, 0, 113, 7])));
    }

    #[test]
    fn forwarded_element() {
        let (mut w, n) = window("for=192.0.2.60;proto=http, For=\"[2001:db8::17]:4711\";by=x");
        let got = rightmost_client(&mut w, n, false, HeaderKind::Forwarded, |_| false).unwrap();
        assert_eq!(got.octets()[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(got.octets()[15], 0x17);
    }

    #[test]
    fn proxy_v1_lines() {
        let (mut w, n) = window("PROXY TCP4 203.0.113.7 198.51.100.1 56324 9292\r\nGET /");
        assert_eq!(
            proxy_v1(&mut w, n),
            (ProxyV1::Client(v4([203, 0, 113, 7])), 48)
        );
        let (mut w, n) = window("PROXY UNKNOWN\r\n");
        assert_eq!(proxy_v1(&mut w, n), (ProxyV1::Unknown, 15));
        let (mut w, n) = window("PROXY TCP4 203.0.113.7 198.51.100.1 56324");
        assert_eq!(proxy_v1(&mut w, n).0, ProxyV1::Invalid);
    }
}
