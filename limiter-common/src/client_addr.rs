//! Reading a client's address out of what a trusted proxy wrote: the value of an
//! `X-Forwarded-For` or `Forwarded` header, or the source field of a PROXY protocol v1 line.
//!
//! The XDP program copies the text into a fixed [`Window`] and calls these functions; userspace
//! tests them against the standard library's parsers.
//!
//! Written for the verifier. Every loop is a *step function* over one character, keeping all
//! its state in the window's slots (map memory, whose contents the verifier does not track),
//! and run by a [`Driver`]: in the kernel program, `bpf_loop`, which has the verifier check a
//! step once instead of once per iteration and per way into the loop; on the host, a plain
//! loop. The straight-line code between loops is small.
//!
//! A result is either an address or nothing: anything unusual (an `unknown` or obfuscated
//! node, a zone index, leading zeros, a truncated entry) reads as "no client", which the
//! program counts as unattributed. Attributing a request to the wrong address would let a
//! client choose whom to get banned; failing to attribute one only leaves it counted apart.

use crate::{
    bytewise::{byte_flags, digit_bytes, high_bits_of, lowest_bit, zero_bytes},
    SourceAddr,
};

/// Bytes of text the program reads: the right end of a header value (the rightmost entries are
/// the ones a proxy wrote), or the start of a PROXY v1 line (at most 107 bytes).
pub const WINDOW_LEN: usize = 128;
const MASK: usize = WINDOW_LEN - 1;
/// Slots in a window: 0 is [`Window::forget`]'s, 1..8 the caller's, the rest this module's.
pub const SLOTS: usize = 64;

/// The text window, a power of two long so a masked index is always in bounds, and slots for
/// the state of the loops reading it.
#[repr(C)]
pub struct Window {
    pub text: [u8; WINDOW_LEN],
    slots: [u64; SLOTS],
}

impl Window {
    pub const fn new() -> Self {
        Window {
            text: [0; WINDOW_LEN],
            slots: [0; SLOTS],
        }
    }

    /// `x`, with everything the verifier knew about it forgotten: stored into map memory and
    /// read back, it is "some number", so code after it is checked once whatever `x` was.
    #[inline(always)]
    pub fn forget(&mut self, x: usize) -> usize {
        self.store(0, x);
        self.load(0)
    }

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

    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        self.text[i & MASK]
    }

    /// The `k`-th eight bytes of the text, as a word loaded from memory (aligned: the text
    /// starts the window, whose slots make it 8-byte aligned).
    #[inline(always)]
    fn word(&self, k: usize) -> u64 {
        // SAFETY: word `k & 15` lies within the 128 bytes of text, at a multiple of 8 from
        // the start of the window.
        unsafe {
            (self.text.as_ptr() as *const u64)
                .add(k & (WINDOW_LEN / 8 - 1))
                .read()
        }
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

/// The loops of this module, each a step over one character (see [`step`]).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// Backwards from `END - 1` to `BEGIN` for the byte in `TARGET`: its position in `FOUND`.
    FindBack = 0,
    /// Forwards from `BEGIN` to `END` for the byte in `TARGET`: its position in `FOUND`.
    FindForward = 1,
    /// What `BEGIN..END` holds: first and last non-blank, colons, dots, brackets.
    Survey = 2,
    /// The `for=` parameter of a `Forwarded` element in `BEGIN..END`.
    ForParameter = 3,
    /// A dotted-quad IPv4 address filling `BEGIN..END`.
    Ipv4 = 4,
    /// An IPv6 address filling `BEGIN..END`, up to a dotted IPv4 tail.
    Ipv6 = 5,
    /// The IPv6 groups read, with `::` expanded into eight.
    Expand = 6,
    /// [`Loop::Survey`] backwards from `END - 1`, stopping at a comma (its position in
    /// `FOUND`): finds an `X-Forwarded-For` entry and surveys it in one pass.
    SurveyBack = 7,
}

/// Runs a loop: `step(window, which, k)` for k = 0, 1, ... until it returns true or `steps`
/// steps are done.
pub trait Driver {
    fn run(&self, window: &mut Window, which: Loop, steps: u32);
}

/// The host's driver: a plain loop.
pub struct PlainLoops;

impl Driver for PlainLoops {
    fn run(&self, window: &mut Window, which: Loop, steps: u32) {
        for k in 0..steps as usize {
            if step(window, which, k) {
                break;
            }
        }
    }
}

/// Entries of a header value read from the right before giving up: the client, and up to
/// three trusted proxies that appended themselves after it.
pub const MAX_ENTRIES: usize = 4;
/// The longest address text: an IPv6 address with an embedded IPv4 address.
const MAX_ADDR_TEXT: usize = 45;
/// The longest entry looked at: `for="[` + address + `]:65535"`, with some room for
/// whitespace and other parameters.
pub const MAX_ENTRY: usize = 96;
const NONE: usize = usize::MAX;

// Slots: the span a loop works on, its target byte, and its results.
const BEGIN: usize = 8;
const END: usize = 9;
const TARGET: usize = 10;
const FOUND: usize = 11;
const FIRST: usize = 12;
const LAST: usize = 13;
const COLONS: usize = 14;
const LAST_COLON: usize = 15;
const DOTS: usize = 16;
const OPEN_BRACKET: usize = 17;
const CLOSE_BRACKET: usize = 18;
// Forwarded's `for=`: the current pair's first non-blank character, the value's bounds.
const PAIR_FIRST: usize = 12;
const VALUE_START: usize = 13;
const VALUE_END: usize = 14;
// IPv4: value so far, current octet, its digits, dots seen, and whether it failed.
const V4_VALUE: usize = 12;
const V4_OCTET: usize = 13;
const V4_DIGITS: usize = 14;
const V4_DOTS: usize = 15;
const FAILED: usize = 19;
// IPv6: groups done, groups before `::` (NONE: no `::` yet), the group being read and its
// digits, whether the last character was a colon ending a group, where a dotted tail starts.
const V6_COUNT: usize = 12;
const V6_GAP: usize = 13;
const V6_GROUP: usize = 14;
const V6_DIGITS: usize = 15;
const V6_AFTER_COLON: usize = 16;
const V6_TAIL: usize = 17;
const V6_GROUPS: usize = 20;
/// The eight groups of the address, `::` expanded.
const V6_OUT: usize = 28;
/// Zero groups the `::` stands for.
const V6_SHIFT: usize = 36;
// A dotted quad read backwards during [`Loop::SurveyBack`] (the usual `X-Forwarded-For`
// entry: then no loop of its own parses it): value and octet so far, the octet's place
// value, its digits and most recent (leftmost) digit, dots seen, and where it stands.
const B4_VALUE: usize = 40;
const B4_OCTET: usize = 41;
const B4_PLACE: usize = 42;
const B4_DIGITS: usize = 43;
const B4_LEAD: usize = 44;
const B4_DOTS: usize = 45;
const B4_STATE: usize = 46;
/// [`B4_STATE`]: blanks after the address (nothing read yet), in it, blanks before it, not a
/// dotted quad.
const B4_TRAILING: usize = 0;
const B4_IN: usize = 1;
const B4_LEADING: usize = 2;
const B4_FAILED: usize = 3;

/// One step of `which`, at its `k`-th character. True: the loop is done.
#[inline(always)]
pub fn step(window: &mut Window, which: Loop, k: usize) -> bool {
    let (begin, end) = (window.load(BEGIN), window.load(END));
    match which {
        Loop::FindBack => {
            if k >= end || end - k <= begin {
                return true;
            }
            let i = end - 1 - k;
            if window.at(i) as usize == window.load(TARGET) {
                window.store(FOUND, i);
                return true;
            }
            false
        }
        Loop::FindForward => {
            let i = begin + k;
            if i >= end {
                return true;
            }
            if window.at(i) as usize == window.load(TARGET) {
                window.store(FOUND, i);
                return true;
            }
            false
        }
        Loop::Survey => {
            let i = begin + k;
            if i >= end {
                return true;
            }
            survey(window, i, false);
            false
        }
        Loop::SurveyBack => {
            if k >= end || end - k <= begin {
                return true;
            }
            let i = end - 1 - k;
            if window.at(i) == b',' {
                window.store(FOUND, i);
                return true;
            }
            survey(window, i, true);
            dotted_quad_back(window, i);
            false
        }
        Loop::ForParameter => {
            let i = begin + k;
            if i > end {
                return true;
            }
            let first = window.load(PAIR_FIRST);
            if i < end && window.at(i) != b';' {
                if first == NONE && !is_ows(window.at(i)) {
                    window.store(PAIR_FIRST, i);
                }
                return false;
            }
            if first != NONE
                && i >= first + 4
                && window.at(first) | 0x20 == b'f'
                && window.at(first + 1) | 0x20 == b'o'
                && window.at(first + 2) | 0x20 == b'r'
                && window.at(first + 3) == b'='
            {
                window.store(VALUE_START, first + 4);
                window.store(VALUE_END, i);
                return true;
            }
            window.store(PAIR_FIRST, NONE);
            false
        }
        Loop::Ipv4 => ipv4_step(window, begin + k, end),
        Loop::Ipv6 => ipv6_step(window, begin + k, end),
        Loop::Expand => {
            if k >= 8 {
                return true;
            }
            let (gap, shift) = (window.load(V6_GAP), window.load(V6_SHIFT));
            let group = if k < gap {
                window.load(V6_GROUPS + (k & 7))
            } else if k >= gap + shift {
                window.load(V6_GROUPS + (k.wrapping_sub(shift) & 7))
            } else {
                0
            };
            window.store(V6_OUT + (k & 7), group & 0xffff);
            false
        }
    }
}

/// Notes the character at `i` in the survey slots. Going `backwards`, the leftmost of
/// what the forward pass keeps the first of (the first non-blank, brackets) is the one
/// overwritten, and the rightmost (the last non-blank, the last colon) the one kept.
#[inline(always)]
fn survey(window: &mut Window, i: usize, backwards: bool) {
    let c = window.at(i);
    let keep_first = |window: &mut Window, slot: usize| {
        if backwards || window.load(slot) == NONE {
            window.store(slot, i);
        }
    };
    if !is_ows(c) {
        keep_first(window, FIRST);
        if !backwards || window.load(LAST) == NONE {
            window.store(LAST, i + 1);
        }
    }
    match c {
        b':' => {
            window.store(COLONS, window.load(COLONS) + 1);
            if !backwards || window.load(LAST_COLON) == NONE {
                window.store(LAST_COLON, i);
            }
        }
        b'.' => window.store(DOTS, window.load(DOTS) + 1),
        b'[' => keep_first(window, OPEN_BRACKET),
        b']' => keep_first(window, CLOSE_BRACKET),
        _ => {}
    }
}

/// The value of an `X-Forwarded-For` line that is a blank and one dotted quad, the form a
/// proxy writes for a client that came to it directly: read in straight-line word arithmetic,
/// without a loop. `None` for any other text, which [`rightmost_client`] then reads (it reads
/// this form to the same address: a property test holds the two together).
///
/// The kernel program's shortcut: reading the quad through the loops costs a `bpf_loop` step
/// per character.
#[inline(always)]
pub fn lone_dotted_quad(window: &mut Window, len: usize) -> Option<SourceAddr> {
    // A blank, then 7 ("0.0.0.0") to 15 ("255.255.255.255") characters.
    if !(8..=16).contains(&len) || !is_ows(window.at(0)) {
        return None;
    }
    let quad_len = len - 1;
    let (w0, w1, w2) = (window.word(0), window.word(1), window.word(2));
    // The quad's first eight bytes and the rest, and the high bit of each byte it has there.
    let (low, high) = ((w0 >> 8) | (w1 << 56), (w1 >> 8) | (w2 << 56));
    let (low_in, high_in) = (
        high_bits_of(quad_len),
        high_bits_of(quad_len.saturating_sub(8)),
    );
    let (low_dots, high_dots) = (
        zero_bytes(low ^ DOT_BYTES) & low_in,
        zero_bytes(high ^ DOT_BYTES) & high_in,
    );
    if (digit_bytes(low) | low_dots) & low_in != low_in
        || (digit_bytes(high) | high_dots) & high_in != high_in
    {
        return None;
    }
    // Bit i: the quad's character i is a dot. Exactly three.
    let dots = byte_flags(low_dots) | (byte_flags(high_dots) << 8);
    let first = lowest_bit(dots)?;
    let dots = dots & (dots - 1);
    let second = lowest_bit(dots)?;
    let dots = dots & (dots - 1);
    let third = lowest_bit(dots)?;
    if dots & (dots - 1) != 0 {
        return None;
    }
    let a = octet_at(window, 0, first)?;
    let b = octet_at(window, first + 1, second)?;
    let c = octet_at(window, second + 1, third)?;
    let d = octet_at(window, third + 1, quad_len)?;
    Some(mapped(((a << 24) | (b << 16) | (c << 8) | d) as u32))
}

const DOT_BYTES: u64 = 0x2e2e_2e2e_2e2e_2e2e;

/// The octet of 1 to 3 digits in the quad's characters `start..end` (the quad starts at the
/// window's second byte), as the standard library reads one: no leading zero, at most 255.
#[inline(always)]
fn octet_at(window: &mut Window, start: usize, end: usize) -> Option<u64> {
    let digits = end.checked_sub(start)?;
    if !(1..=3).contains(&digits) {
        return None;
    }
    let digit = |i: usize| u64::from(window.at(1 + start + i).wrapping_sub(b'0'));
    let (first, second, third) = (digit(0), digit(1), digit(2));
    let value = match digits {
        1 => first,
        2 => first * 10 + second,
        _ => (first * 10 + second) * 10 + third,
    };
    if (digits > 1 && first == 0) || value > 255 {
        return None;
    }
    // Forgotten, so the verifier checks what follows once, not once per octet length.
    Some(window.forget(value as usize) as u64)
}

/// Reads the character at `i` into the dotted quad read backwards (see [`B4_VALUE`]).
#[inline(always)]
fn dotted_quad_back(window: &mut Window, i: usize) {
    let state = window.load(B4_STATE);
    if state == B4_FAILED {
        return;
    }
    let c = window.at(i);
    if is_ows(c) {
        if state == B4_IN {
            window.store(B4_STATE, B4_LEADING);
        }
        return;
    }
    let failed = if state == B4_LEADING {
        // A blank inside the entry.
        true
    } else if c.is_ascii_digit() {
        let digits = window.load(B4_DIGITS);
        let place = window.load(B4_PLACE);
        window.store(
            B4_OCTET,
            window.load(B4_OCTET) + usize::from(c - b'0') * place,
        );
        window.store(B4_PLACE, place * 10);
        window.store(B4_DIGITS, digits + 1);
        window.store(B4_LEAD, usize::from(c - b'0'));
        digits >= 3
    } else if c == b'.' {
        let dots = window.load(B4_DOTS);
        let failed = dots >= 3 || !octet_back_ok(window);
        window.store(
            B4_VALUE,
            window.load(B4_VALUE) | (window.load(B4_OCTET) << (8 * (dots & 3))),
        );
        window.store(B4_OCTET, 0);
        window.store(B4_PLACE, 1);
        window.store(B4_DIGITS, 0);
        window.store(B4_DOTS, dots + 1);
        failed
    } else {
        true
    };
    window.store(B4_STATE, if failed { B4_FAILED } else { B4_IN });
}

/// Whether the octet read backwards is one: 1–3 digits, at most 255, no leading zero.
#[inline(always)]
fn octet_back_ok(window: &Window) -> bool {
    let digits = window.load(B4_DIGITS);
    digits != 0 && window.load(B4_OCTET) <= 255 && (digits == 1 || window.load(B4_LEAD) != 0)
}

/// The dotted quad [`Loop::SurveyBack`] read, if the entry was one.
#[inline(always)]
fn dotted_quad_read_back(window: &Window) -> Option<SourceAddr> {
    if window.load(B4_STATE) == B4_FAILED || window.load(B4_DOTS) != 3 || !octet_back_ok(window) {
        return None;
    }
    let value = window.load(B4_VALUE) | (window.load(B4_OCTET) << 24);
    Some(mapped(value as u32))
}

#[inline(always)]
fn ipv4_step(window: &mut Window, i: usize, end: usize) -> bool {
    if i >= end {
        return true;
    }
    let c = window.at(i);
    let (octet, digits) = (window.load(V4_OCTET), window.load(V4_DIGITS));
    if c.is_ascii_digit() {
        let octet = octet * 10 + usize::from(c - b'0');
        // A leading zero (some parsers read it as octal; the standard library refuses it).
        if (digits > 0 && window.load(V4_OCTET) == 0) || octet > 255 {
            window.store(FAILED, 1);
            return true;
        }
        window.store(V4_OCTET, octet);
        window.store(V4_DIGITS, digits + 1);
    } else if c == b'.' && digits > 0 && window.load(V4_DOTS) < 3 {
        window.store(V4_VALUE, (window.load(V4_VALUE) << 8) | octet);
        window.store(V4_OCTET, 0);
        window.store(V4_DIGITS, 0);
        window.store(V4_DOTS, window.load(V4_DOTS) + 1);
    } else {
        window.store(FAILED, 1);
        return true;
    }
    false
}

#[inline(always)]
fn ipv6_step(window: &mut Window, i: usize, end: usize) -> bool {
    if i >= end {
        return true;
    }
    let c = window.at(i);
    let digits = window.load(V6_DIGITS);
    if let Some(v) = hex(c) {
        if digits >= 4 {
            window.store(FAILED, 1);
            return true;
        }
        window.store(V6_GROUP, (window.load(V6_GROUP) << 4) | v as usize);
        window.store(V6_DIGITS, digits + 1);
        window.store(V6_AFTER_COLON, 0);
        return false;
    }
    if c == b':' {
        if digits == 0 {
            // `::` in the middle or at the end: once, and only right after a group.
            if window.load(V6_AFTER_COLON) == 0 || window.load(V6_GAP) != NONE {
                window.store(FAILED, 1);
                return true;
            }
            window.store(V6_GAP, window.load(V6_COUNT));
            window.store(V6_AFTER_COLON, 0);
            return false;
        }
        let count = window.load(V6_COUNT);
        if count >= 8 {
            window.store(FAILED, 1);
            return true;
        }
        window.store(V6_GROUPS + (count & 7), window.load(V6_GROUP));
        window.store(V6_COUNT, count + 1);
        window.store(V6_GROUP, 0);
        window.store(V6_DIGITS, 0);
        window.store(V6_AFTER_COLON, 1);
        return false;
    }
    if c == b'.' && digits <= i {
        // A dotted IPv4 tail: its first octet is the current group's text.
        window.store(V6_TAIL, i - digits);
        return true;
    }
    window.store(FAILED, 1);
    true
}

#[inline(always)]
fn is_ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
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

/// Runs `which` over `begin..end`.
#[inline(always)]
fn run_over(
    window: &mut Window,
    driver: &impl Driver,
    which: Loop,
    begin: usize,
    end: usize,
    steps: usize,
) {
    window.store(BEGIN, begin);
    window.store(END, end);
    driver.run(window, which, steps as u32);
}

/// The position of `target` in `begin..end`, searching from the end (`back`) or the start.
#[inline(always)]
fn find(
    window: &mut Window,
    driver: &impl Driver,
    target: u8,
    begin: usize,
    end: usize,
    back: bool,
) -> Option<usize> {
    window.store(TARGET, usize::from(target));
    window.store(FOUND, NONE);
    let which = if back {
        Loop::FindBack
    } else {
        Loop::FindForward
    };
    run_over(window, driver, which, begin, end, WINDOW_LEN);
    let found = window.load(FOUND);
    (found != NONE).then_some(found)
}

/// Which header the trusted proxies write the client into.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    /// `X-Forwarded-For: client, proxy1, ...` (HAProxy `option forwardfor`).
    XForwardedFor = 0,
    /// `Forwarded: for=client;proto=https, for=proxy1` (RFC 7239).
    Forwarded = 1,
}

/// The client named by a header value held in `window.text[..len]`: the rightmost entry that
/// is not a trusted proxy. `cut_left` says the value began before the window, so the leftmost
/// entry may be a fragment and is never used.
#[inline(always)]
pub fn rightmost_client(
    window: &mut Window,
    driver: &impl Driver,
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
        let comma = match kind {
            HeaderKind::XForwardedFor => survey_entry_back(window, driver, end),
            HeaderKind::Forwarded => find(window, driver, b',', 0, end, true),
        };
        let start = comma.map_or(0, |c| c + 1);
        if comma.is_none() && cut_left {
            return None;
        }
        if end - start > MAX_ENTRY {
            return None;
        }
        let addr = match kind {
            // A dotted quad was read on the way (with blanks around it at most); anything
            // else (a port, IPv6) is read from the survey.
            HeaderKind::XForwardedFor => match dotted_quad_read_back(window) {
                Some(addr) => addr,
                None => surveyed_node(window, driver, false)?,
            },
            HeaderKind::Forwarded => {
                window.store(PAIR_FIRST, NONE);
                window.store(VALUE_START, NONE);
                window.store(VALUE_END, NONE);
                run_over(
                    window,
                    driver,
                    Loop::ForParameter,
                    start,
                    end,
                    MAX_ENTRY + 1,
                );
                let (value_start, value_end) = (window.load(VALUE_START), window.load(VALUE_END));
                if value_start == NONE || value_end == NONE || value_end < value_start {
                    return None;
                }
                node(window, driver, value_start, value_end, true)?
            }
        };
        if !trusted(&addr) {
            return Some(addr);
        }
        end = window.forget(comma?);
    }
    None
}

/// Surveys the entry ending at `end` backwards to its comma (returned, if any), reading it
/// as a dotted quad on the way: one pass, as long as an entry may be and one character
/// more, to tell a longer one.
#[inline(always)]
fn survey_entry_back(window: &mut Window, driver: &impl Driver, end: usize) -> Option<usize> {
    clear_survey(window);
    for (slot, value) in [
        (B4_VALUE, 0),
        (B4_OCTET, 0),
        (B4_PLACE, 1),
        (B4_DIGITS, 0),
        (B4_LEAD, 0),
        (B4_DOTS, 0),
        (B4_STATE, B4_TRAILING),
        (FOUND, NONE),
    ] {
        window.store(slot, value);
    }
    run_over(window, driver, Loop::SurveyBack, 0, end, MAX_ENTRY + 1);
    let found = window.load(FOUND);
    (found != NONE).then_some(found)
}

/// One node: an address, optionally with a port, IPv6 in brackets when it has one (or when
/// `Forwarded` quotes it), surrounded by optional whitespace and, if `quotes`, double quotes.
#[inline(always)]
fn node(
    window: &mut Window,
    driver: &impl Driver,
    start: usize,
    end: usize,
    quotes: bool,
) -> Option<SourceAddr> {
    clear_survey(window);
    run_over(window, driver, Loop::Survey, start, end, MAX_ENTRY);
    surveyed_node(window, driver, quotes)
}

/// The survey slots before a survey.
#[inline(always)]
fn clear_survey(window: &mut Window) {
    for (slot, value) in [
        (FIRST, NONE),
        (LAST, NONE),
        (COLONS, 0),
        (LAST_COLON, NONE),
        (DOTS, 0),
        (OPEN_BRACKET, NONE),
        (CLOSE_BRACKET, NONE),
    ] {
        window.store(slot, value);
    }
}

/// [`node`] once its span is surveyed.
#[inline(always)]
fn surveyed_node(window: &mut Window, driver: &impl Driver, quotes: bool) -> Option<SourceAddr> {
    let (mut s, mut e) = (window.load(FIRST), window.load(LAST));
    if s == NONE || e == NONE || e <= s {
        return None;
    }
    if quotes && e >= s + 2 && window.at(s) == b'"' && window.at(e - 1) == b'"' {
        s += 1;
        e -= 1;
    }
    let (open, close) = (window.load(OPEN_BRACKET), window.load(CLOSE_BRACKET));
    if open != NONE || close != NONE {
        // `[v6]` or `[v6]:port`, nothing else.
        if open != s || close == NONE || close <= open || !port_suffix(window, close + 1, e) {
            return None;
        }
        return ipv6(window, driver, open + 1, close);
    }
    match window.load(COLONS) {
        0 => ipv4(window, driver, s, e),
        1 => {
            let colon = window.load(LAST_COLON);
            if colon > s && port_suffix(window, colon, e) {
                ipv4(window, driver, s, colon)
            } else {
                None
            }
        }
        _ => ipv6(window, driver, s, e),
    }
}

/// Whether `window.text[start..end]` is empty or `:` and 1-5 digits (no loop: five checks).
#[inline(always)]
fn port_suffix(window: &Window, start: usize, end: usize) -> bool {
    if start == end {
        return true;
    }
    if start > end || window.at(start) != b':' || end - start < 2 || end - start > 6 {
        return false;
    }
    let digit_or_past = |k: usize| start + k >= end || window.at(start + k).is_ascii_digit();
    digit_or_past(1) && digit_or_past(2) && digit_or_past(3) && digit_or_past(4) && digit_or_past(5)
}

/// A dotted-quad IPv4 address filling `window.text[start..end]` exactly, IPv4-mapped.
/// Leading zeros are refused, as the standard library refuses them.
#[inline(always)]
pub fn ipv4(
    window: &mut Window,
    driver: &impl Driver,
    start: usize,
    end: usize,
) -> Option<SourceAddr> {
    Some(mapped(ipv4_value(window, driver, start, end)?))
}

#[inline(always)]
fn ipv4_value(window: &mut Window, driver: &impl Driver, start: usize, end: usize) -> Option<u32> {
    if end <= start || end - start > 15 {
        return None;
    }
    for slot in [V4_VALUE, V4_OCTET, V4_DIGITS, V4_DOTS, FAILED] {
        window.store(slot, 0);
    }
    run_over(window, driver, Loop::Ipv4, start, end, 15);
    if window.load(FAILED) != 0 || window.load(V4_DOTS) != 3 || window.load(V4_DIGITS) == 0 {
        return None;
    }
    Some(((window.load(V4_VALUE) << 8) | window.load(V4_OCTET)) as u32)
}

fn mapped(value: u32) -> SourceAddr {
    let mut octets = [0u8; 16];
    octets[10] = 0xff;
    octets[11] = 0xff;
    octets[12..].copy_from_slice(&value.to_be_bytes());
    SourceAddr::from_octets(octets)
}

/// An IPv6 address in text form (RFC 4291 2.2: groups, one `::`, an optional dotted IPv4
/// tail) filling `window.text[start..end]` exactly. No zone index.
#[inline(always)]
pub fn ipv6(
    window: &mut Window,
    driver: &impl Driver,
    start: usize,
    end: usize,
) -> Option<SourceAddr> {
    if end <= start || end - start > MAX_ADDR_TEXT || end - start < 2 {
        return None;
    }
    for (slot, value) in [
        (V6_COUNT, 0),
        (V6_GAP, NONE),
        (V6_GROUP, 0),
        (V6_DIGITS, 0),
        (V6_AFTER_COLON, 0),
        (V6_TAIL, NONE),
        (FAILED, 0),
    ] {
        window.store(slot, value);
    }
    for k in 0..8 {
        window.store(V6_GROUPS + k, 0);
    }
    let mut begin = start;
    // A leading `::` (and only `::`: a lone leading colon is invalid).
    if window.at(start) == b':' {
        if window.at(start + 1) != b':' {
            return None;
        }
        window.store(V6_GAP, 0);
        begin = start + 2;
    }
    run_over(window, driver, Loop::Ipv6, begin, end, MAX_ADDR_TEXT);
    if window.load(FAILED) != 0 {
        return None;
    }
    let mut count = window.load(V6_COUNT);
    let tail = window.load(V6_TAIL);
    // Read before the IPv4 tail's loop, which reuses these slots.
    let gap = window.load(V6_GAP);
    if tail != NONE {
        if count > 6 {
            return None;
        }
        let v4 = ipv4_value(window, driver, tail, end)? as usize;
        window.store(V6_GROUPS + (count & 7), v4 >> 16);
        window.store(V6_GROUPS + ((count + 1) & 7), v4 & 0xffff);
        count += 2;
    } else if window.load(V6_DIGITS) > 0 {
        if count >= 8 {
            return None;
        }
        window.store(V6_GROUPS + (count & 7), window.load(V6_GROUP));
        count += 1;
    } else if window.load(V6_AFTER_COLON) != 0 {
        // A single trailing colon ("1:2::3:").
        return None;
    }
    let count = window.forget(count);
    // `::` stands for at least one group of zeros; without it there must be eight groups.
    let (gap, shift) = if gap == NONE {
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
    window.store(V6_GAP, gap);
    window.store(V6_SHIFT, shift);
    driver.run(window, Loop::Expand, 8);
    let word = |first: usize| {
        let value = (window.load(first) << 48)
            | (window.load(first + 1) << 32)
            | (window.load(first + 2) << 16)
            | window.load(first + 3);
        u64::from_ne_bytes((value as u64).to_be_bytes())
    };
    Some(SourceAddr {
        words: [word(V6_OUT), word(V6_OUT + 4)],
    })
}

/// What a PROXY protocol v1 line says (`PROXY TCP4 src dst sport dport\r\n`).
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

/// Reads a PROXY v1 line from the start of `window.text[..len]`. Returns what it says and
/// the line's length with its CRLF.
#[inline(always)]
pub fn proxy_v1(window: &mut Window, driver: &impl Driver, len: usize) -> (ProxyV1, usize) {
    let limit = if len < PROXY_V1_MAX {
        len
    } else {
        PROXY_V1_MAX
    };
    let Some(cr) = find(window, driver, b'\r', 6, limit, false) else {
        return (ProxyV1::Invalid, 0);
    };
    if cr + 1 >= len || window.at(cr + 1) != b'\n' {
        return (ProxyV1::Invalid, 0);
    }
    let length = cr + 2;
    let is = |k: usize, s: &[u8; 5]| (0..5).all(|j| window.at(k + j) == s[j]);
    let family6 = if is(6, b"TCP4 ") {
        false
    } else if is(6, b"TCP6 ") {
        true
    } else {
        // `PROXY UNKNOWN` (and anything after it) is valid: the proxy does not know the client.
        return (ProxyV1::Unknown, length);
    };
    const SRC: usize = 11;
    let Some(space) = find(window, driver, b' ', SRC, cr, false) else {
        return (ProxyV1::Invalid, 0);
    };
    let addr = if family6 {
        ipv6(window, driver, SRC, space)
    } else {
        ipv4(window, driver, SRC, space)
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
        assert_eq!(ipv4(&mut w, &PlainLoops, 0, n), Some(v4([203, 0, 113, 7])));
        for bad in [
            "203.0.113",
            "203.0.113.7.",
            "256.1.1.1",
            "01.2.3.4",
            "1..2.3",
            "a.b.c.d",
        ] {
            let (mut w, n) = window(bad);
            assert_eq!(ipv4(&mut w, &PlainLoops, 0, n), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_forms() {
        let (mut w, n) = window("2001:db8::1");
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        o[15] = 1;
        assert_eq!(
            ipv6(&mut w, &PlainLoops, 0, n),
            Some(SourceAddr::from_octets(o))
        );
        let (mut w, n) = window("::ffff:203.0.113.7");
        assert_eq!(ipv6(&mut w, &PlainLoops, 0, n), Some(v4([203, 0, 113, 7])));
    }

    #[test]
    fn rightmost_skips_trusted() {
        let proxy = v4([198, 51, 100, 2]);
        let (mut w, n) = window("192.0.2.1, 203.0.113.7, 198.51.100.2");
        let got = rightmost_client(
            &mut w,
            &PlainLoops,
            n,
            false,
            HeaderKind::XForwardedFor,
            |a| *a == proxy,
        );
        assert_eq!(got, Some(v4([203, 0, 113, 7])));
    }

    #[test]
    fn forwarded_element() {
        let (mut w, n) = window("for=192.0.2.60;proto=http, For=\"[2001:db8::17]:4711\";by=x");
        let got = rightmost_client(&mut w, &PlainLoops, n, false, HeaderKind::Forwarded, |_| {
            false
        })
        .unwrap();
        assert_eq!(got.octets()[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(got.octets()[15], 0x17);
    }

    #[test]
    fn proxy_v1_lines() {
        let (mut w, n) = window("PROXY TCP4 203.0.113.7 198.51.100.1 56324 9292\r\nGET /");
        assert_eq!(
            proxy_v1(&mut w, &PlainLoops, n),
            (ProxyV1::Client(v4([203, 0, 113, 7])), 48)
        );
        let (mut w, n) = window("PROXY UNKNOWN\r\n");
        assert_eq!(proxy_v1(&mut w, &PlainLoops, n), (ProxyV1::Unknown, 15));
        let (mut w, n) = window("PROXY TCP4 203.0.113.7 198.51.100.1 56324");
        assert_eq!(proxy_v1(&mut w, &PlainLoops, n).0, ProxyV1::Invalid);
    }
}
