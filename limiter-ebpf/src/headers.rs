//! Finding the client a trusted proxy names in a request's headers: the last
//! `X-Forwarded-For` (or `Forwarded`) line of the header block, whose rightmost entries are the
//! ones the proxy wrote. HAProxy appends its own line after any the client sent, so the last
//! line wins, and a line in the body (after the empty line) is never read.
//!
//! The scan finds line ends with word arithmetic and compares a name only at line starts:
//! first inline, 32 bytes per round with the line starts told from the words already read
//! (`scan_chunks`, up to 1,280 bytes), then for what is left eight words per `bpf_loop` step.
//! It needs the whole header block in this segment, within [`HEADER_SCAN_LEN`] bytes:
//! otherwise the request is unattributed, never guessed.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use limiter_common::{
    bytewise::{lowest_byte, repeated, zero_bytes, HIGH_BITS, ONES},
    client_addr::{self, Driver, HeaderKind, Loop, Window, WINDOW_LEN},
    SourceAddr, HEADER_SCAN_LEN,
};

use crate::{
    packet::{first_bytes, header, header_kept, word64},
    rules,
};

/// A per-CPU copy of the header value being parsed: the parser works on fixed-size memory,
/// which the verifier checks far more cheaply than packet bytes.
#[map]
static TEXT_WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(1, 0);

const NEWLINES: u64 = repeated(b'\n');

/// `x-forwarded-for:` as two words, and the bits to set in the packet's bytes before comparing
/// (0x20 on letters only: lower-cases them and leaves `-` and `:` as they are).
const XFF: [u64; 2] = [word64(b"x-forwar"), word64(b"ded-for:")];
const XFF_CASE: [u64; 2] = [0x2020_2020_2020_0020, 0x0020_2020_0020_2020];
/// `forwarded:`: a word and two bytes.
const FWD: u64 = word64(b"forwarde");
const FWD_TAIL: u64 = word64(b"d:");
const FWD_CASE: [u64; 2] = [0x2020_2020_2020_2020, 0x0020];

/// Window slots of the scan (`Window::store`).
const VALUE_START: usize = 1;
const VALUE_LINE_END: usize = 2;
const OPEN: usize = 3;
const POS: usize = 4;
const SCAN_END: usize = 5;
const COMPLETE: usize = 6;

/// A header-line start: the end of the header block, a client header (the offset of its
/// value), or any other line.
enum Line {
    End,
    Client(usize),
    Other,
}

/// The client named in the headers of the request whose line starts at `off`, in a segment
/// whose payload ends at `end`. `None`: no such header, or the headers could not be read
/// whole.
#[inline(always)]
pub fn client(ctx: &XdpContext, off: usize, end: usize, kind: HeaderKind) -> Option<SourceAddr> {
    let scan_end = if end > off + HEADER_SCAN_LEN {
        off + HEADER_SCAN_LEN
    } else {
        end
    };
    if scan_end < off + 16 {
        return None;
    }
    let window = window()?;
    // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
    let window = unsafe { &mut *window };
    // What the scan found, kept in the window (`Window::store`): the value of the last client
    // line (its start, 0: none), its line end (`\n`) once seen, whether that end is still to
    // come, where the scan is and ends, and whether it reached the end of the header block.
    for (slot, value) in [
        (VALUE_START, 0),
        (VALUE_LINE_END, 0),
        (OPEN, 0),
        (POS, off),
        (SCAN_END, scan_end),
        (COMPLETE, 0),
    ] {
        window.store(slot, value);
    }
    if kind == HeaderKind::XForwardedFor {
        scan_chunks(ctx, window, off, scan_end);
    }
    let mut scan = Scan {
        xdp: ctx.ctx,
        kind: kind as u64,
    };
    // The rest through bpf_loop: the verifier checks the step once, where a bounded loop
    // would be checked iteration by iteration, for every way into it.
    if window.load(POS) < scan_end {
        // SAFETY: `scan_step` has the callback signature bpf_loop expects, and `scan`
        // outlives the call.
        unsafe {
            bpf_loop(
                STEPS,
                scan_step as *mut c_void,
                &mut scan as *mut Scan as *mut c_void,
                0,
            )
        };
    }
    let window = unsafe { &mut *self::window()? };
    if window.load(COMPLETE) != 1 || window.load(VALUE_START) == 0 || window.load(OPEN) != 0 {
        return None;
    }
    let (value_start, value_line_end) = (window.load(VALUE_START), window.load(VALUE_LINE_END));
    read_value(ctx, window, value_start, value_line_end, kind)
}

/// Bytes [`scan_chunks`] looks for line ends in per round: four words.
const CHUNK: usize = 32;
/// Bytes past a chunk the last line starting in it may need: the 16 of `x-forwarded-for:`.
const LOOKAHEAD: usize = 16;
/// Chunks [`scan_chunks`] reads at most: 1,280 bytes, past the 1 KB of headers of a typical
/// proxied request; the verifier checks each, so more would not fit its budget beside the
/// rest of the proxy program. Longer header blocks end in the `bpf_loop` scan.
const MAX_CHUNKS: usize = 40;

/// The header scan's fast part, for `X-Forwarded-For`: inline (no call per step), a chunk
/// of [`CHUNK`] bytes and its [`LOOKAHEAD`] read under one bounds check, and the lines
/// starting in it told apart from those words alone. A chunk without a line end costs a few
/// instructions a word. Leaves its findings in the window's slots, and `POS` where the
/// `bpf_loop` scan is to go on (the segment's last bytes), or at `SCAN_END` when it settled
/// the scan.
///
/// A function of its own (one call): its loop leaves a different stack behind at each
/// iteration it can stop at, and the `bpf_loop` after it, which sees the caller's stack,
/// would be checked once for each.
#[inline(never)]
fn scan_chunks(ctx: &XdpContext, window: &mut Window, off: usize, scan_end: usize) {
    let mut pos = off;
    for _ in 0..MAX_CHUNKS {
        if pos + CHUNK + LOOKAHEAD > scan_end {
            break;
        }
        let Some(chunk) = header_kept::<{ CHUNK + LOOKAHEAD }>(ctx, pos) else {
            break;
        };
        let words = [
            chunk.raw64(0),
            chunk.raw64(8),
            chunk.raw64(16),
            chunk.raw64(24),
            chunk.raw64(32),
            chunk.raw64(40),
        ];
        // Some high bit set where some byte is a line end; a byte of 0x80 and above sets one
        // too, and the exact look below then finds nothing.
        let maybe = ((words[0] ^ NEWLINES).wrapping_sub(ONES)
            | (words[1] ^ NEWLINES).wrapping_sub(ONES)
            | (words[2] ^ NEWLINES).wrapping_sub(ONES)
            | (words[3] ^ NEWLINES).wrapping_sub(ONES))
            & HIGH_BITS;
        if maybe != 0 {
            for k in 0..CHUNK / 8 {
                let newlines = zero_bytes(words[k] ^ NEWLINES);
                let next = [words[k], words[k + 1], words[k + 2]];
                if let Ends::Stop = line_ends_in_words(window, pos + 8 * k, newlines, next) {
                    window.store(POS, scan_end);
                    return;
                }
            }
        }
        pos += CHUNK;
    }
    window.store(POS, pos);
}

/// [`line_ends`] for `X-Forwarded-For`, with the word holding the line ends and the two after
/// it already read: each line start is told from them.
#[inline(always)]
fn line_ends_in_words(
    window: &mut Window,
    base: usize,
    mut newlines: u64,
    words: [u64; 3],
) -> Ends {
    for _ in 0..2 {
        if newlines == 0 {
            return Ends::More;
        }
        let byte = lowest_byte(newlines) & 7;
        newlines &= newlines - 1;
        let nl = base + byte;
        if window.load(OPEN) != 0 {
            window.store(VALUE_LINE_END, nl);
            window.store(OPEN, 0);
        }
        // The 16 bytes after the line end, in two words: shifted in two steps so no shift is
        // by 64.
        let shift = (8 * byte) as u32;
        let first = (words[0] >> shift >> 8) | (words[1] << (56 - shift));
        let second = (words[1] >> shift >> 8) | (words[2] << (56 - shift));
        match line_start(first, second, nl + 1) {
            Line::End => {
                window.store(COMPLETE, 1);
                return Ends::Stop;
            }
            Line::Client(value) => {
                window.store(VALUE_START, value);
                window.store(OPEN, 1);
            }
            Line::Other => {}
        }
    }
    if newlines != 0 {
        return Ends::Stop;
    }
    Ends::More
}

/// What a line starting at `at` with the 16 bytes `first`, `second` is, for
/// `X-Forwarded-For`: the empty line's CRLF is its first two bytes.
#[inline(always)]
fn line_start(first: u64, second: u64, at: usize) -> Line {
    if first & 0xffff == u64::from(u16::from_le_bytes(*b"\r\n")) {
        Line::End
    } else if first | XFF_CASE[0] == XFF[0] && second | XFF_CASE[1] == XFF[1] {
        Line::Client(at + 16)
    } else {
        Line::Other
    }
}

/// Whether the scan goes on after a word's line ends.
enum Ends {
    More,
    Stop,
}

/// Looks at the lines starting after the line ends marked in `newlines` (a [`zero_bytes`]
/// mask of the word at `base`), noting what they are in the window.
#[inline(always)]
fn line_ends(
    ctx: &XdpContext,
    window: &mut Window,
    base: usize,
    mut newlines: u64,
    kind: HeaderKind,
) -> Ends {
    // A header line is at least 3 bytes (`a:` and CRLF) and the block ends at an empty
    // line, so two line ends per word are all that can come before the end.
    for _ in 0..2 {
        if newlines == 0 {
            return Ends::More;
        }
        let nl = base + lowest_byte(newlines);
        newlines &= newlines - 1;
        if window.load(OPEN) != 0 {
            window.store(VALUE_LINE_END, nl);
            window.store(OPEN, 0);
        }
        match line_at(ctx, nl + 1, kind) {
            Line::End => {
                window.store(COMPLETE, 1);
                return Ends::Stop;
            }
            Line::Client(value) => {
                window.store(VALUE_START, value);
                window.store(OPEN, 1);
            }
            Line::Other => {}
        }
    }
    if newlines != 0 {
        // Three line ends in 8 bytes before the end of the block: not what a proxy sends.
        return Ends::Stop;
    }
    Ends::More
}

/// What each scan step needs besides the window.
#[repr(C)]
struct Scan {
    xdp: *mut xdp_md,
    kind: u64,
}

/// Words a scan step reads, and the steps that cover [`HEADER_SCAN_LEN`].
const WORDS_PER_STEP: usize = 8;
const STEPS: u32 = (HEADER_SCAN_LEN / (8 * WORDS_PER_STEP) + 1) as u32;

/// One step of the header scan: [`WORDS_PER_STEP`] words from the window's `POS`. Returns 1
/// to stop.
#[inline(never)]
extern "C" fn scan_step(_index: u64, scan: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `client` gave it, to a live `Scan`.
    let scan = unsafe { &*(scan as *const Scan) };
    let ctx = XdpContext::new(scan.xdp);
    let kind = if scan.kind == HeaderKind::Forwarded as u64 {
        HeaderKind::Forwarded
    } else {
        HeaderKind::XForwardedFor
    };
    let Some(window) = window() else {
        return 1;
    };
    // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
    let window = unsafe { &mut *window };
    let scan_end = window.load(SCAN_END);
    let mut pos = window.load(POS);
    // Several words per step: a step costs a call, a word a handful of instructions.
    for _ in 0..WORDS_PER_STEP {
        if pos >= scan_end || scan_end < 8 {
            return 1;
        }
        // The last word is read again in full, skipping what was already seen.
        let base = if pos + 8 <= scan_end {
            pos
        } else {
            scan_end - 8
        };
        if pos - base >= 8 {
            return 1;
        }
        let Some(word) = header::<8>(&ctx, base) else {
            return 1;
        };
        let newlines = zero_bytes(word.raw64(0) ^ NEWLINES) & !first_bytes((pos - base) as u32);
        pos = base + 8;
        if newlines == 0 {
            continue;
        }
        if let Ends::Stop = line_ends(&ctx, window, base, newlines, kind) {
            return 1;
        }
    }
    window.store(POS, pos);
    0
}

/// What the line starting at `at` is.
#[inline(always)]
fn line_at(ctx: &XdpContext, at: usize, kind: HeaderKind) -> Line {
    if kind == HeaderKind::XForwardedFor {
        // One load for both questions where 16 bytes follow (almost every line): the empty
        // line's CRLF is its first two bytes.
        if let Some(name) = header::<16>(ctx, at) {
            return line_start(name.raw64(0), name.raw64(8), at);
        }
    }
    let Some(start) = header::<2>(ctx, at) else {
        return Line::Other;
    };
    if start.u8(0) == b'\r' && start.u8(1) == b'\n' {
        return Line::End;
    }
    match kind {
        // Fewer than 16 bytes left: no room for the name.
        HeaderKind::XForwardedFor => Line::Other,
        HeaderKind::Forwarded => match header::<10>(ctx, at) {
            Some(name)
                if name.raw64(0) | FWD_CASE[0] == FWD
                    && (u64::from(name.u8(8)) | (u64::from(name.u8(9)) << 8)) | FWD_CASE[1]
                        == FWD_TAIL =>
            {
                Line::Client(at + 10)
            }
            _ => Line::Other,
        },
    }
}

/// Copies the value between `start` and the line end at `line_end` (its last
/// [`WINDOW_LEN`] bytes) into the window and reads the client from it.
#[inline(always)]
fn read_value(
    ctx: &XdpContext,
    window: &mut Window,
    start: usize,
    line_end: usize,
    kind: HeaderKind,
) -> Option<SourceAddr> {
    let end = line_end;
    if end <= start {
        return None;
    }
    let (from, cut_left) = if end - start > WINDOW_LEN {
        (end - WINDOW_LEN, true)
    } else {
        (start, false)
    };
    // Where the scan stopped is forgotten, so the parser is verified once, not once per
    // possible position (see `Window::forget`).
    let from = window.forget(from);
    let len = window.forget(end - from);
    let cut_left = window.forget(cut_left as usize) != 0;
    let len = copy_to_window(ctx, window, from, len)?;
    // The value ends before the line's CR.
    let len = if window.text[(len - 1) & (WINDOW_LEN - 1)] == b'\r' {
        len - 1
    } else {
        len
    };
    if kind == HeaderKind::XForwardedFor && !cut_left {
        // Forgotten again: after the CR trim the verifier would carry both lengths into the
        // shortcut (3,700 instructions more).
        let len = window.forget(len);
        if let Some(addr) = client_addr::lone_dotted_quad(window, len) {
            // A lone entry that is a trusted proxy names no client, as below.
            return (!rules::is_trusted_proxy(&addr)).then_some(addr);
        }
    }
    client_addr::rightmost_client(
        window,
        &BpfLoops,
        len,
        cut_left,
        kind,
        rules::is_trusted_proxy,
    )
}

/// Runs the parser's loops through `bpf_loop`: each step function is checked by the verifier
/// once, not once per iteration and per way into the loop.
pub struct BpfLoops;

/// Which loop a `parse_step` callback runs.
#[repr(C)]
struct ParseLoop {
    which: u64,
}

impl Driver for BpfLoops {
    #[inline(always)]
    fn run(&self, _window: &mut Window, which: Loop, steps: u32) {
        let mut parse = ParseLoop {
            which: which as u64,
        };
        // SAFETY: `parse_step` has the callback signature bpf_loop expects, and `parse`
        // outlives the call. The step finds the window itself (this CPU's, the same one).
        unsafe {
            bpf_loop(
                steps,
                parse_step as *mut c_void,
                &mut parse as *mut ParseLoop as *mut c_void,
                0,
            )
        };
    }
}

#[inline(never)]
extern "C" fn parse_step(index: u64, parse: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `BpfLoops::run` gave it.
    let which = match unsafe { (*(parse as *const ParseLoop)).which } {
        0 => Loop::FindBack,
        1 => Loop::FindForward,
        2 => Loop::Survey,
        3 => Loop::ForParameter,
        4 => Loop::Ipv4,
        5 => Loop::Ipv6,
        6 => Loop::Expand,
        _ => Loop::SurveyBack,
    };
    let Some(window) = window() else {
        return 1;
    };
    // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
    let window = unsafe { &mut *window };
    client_addr::step(window, which, index as usize) as i64
}

/// Copies `len` bytes of the frame from `from` into the window's text; returns how many
/// (`len`, if it is 1..=[`WINDOW_LEN`] and the frame holds them).
#[inline(always)]
pub fn copy_to_window(
    ctx: &XdpContext,
    window: &mut Window,
    from: usize,
    len: usize,
) -> Option<usize> {
    if len == 0 || len > WINDOW_LEN {
        return None;
    }
    // Written so the verifier sees 1..=WINDOW_LEN in the register the helper gets (LLVM
    // merges the two checks above into one it cannot follow).
    let len = ((len - 1) & (WINDOW_LEN - 1)) + 1;
    // SAFETY: `len` is 1..=WINDOW_LEN, the size of the window's text; the helper checks the
    // frame bounds.
    let copied = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            from as u32,
            window.text.as_mut_ptr() as *mut c_void,
            len as u32,
        )
    };
    (copied == 0).then_some(len)
}

/// This CPU's text window.
#[inline(always)]
pub fn window() -> Option<*mut Window> {
    TEXT_WINDOW.get_ptr_mut(0)
}
