//! Reference programs for benchmarks: the per-packet cost of glance-limiter is reported
//! against `empty_pass` measured in the same run, the drop ceiling of a flood against
//! `empty_drop`, and what merely reading a packet costs against `read_drop`. `read_words` and
//! `find_header_end` are what reading a proxied request's headers costs at the least (see the
//! proxied cases in docs/BENCHMARKS.md).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use limiter_common::bytewise::{repeated, HIGH_BITS, ONES};

#[xdp]
pub fn empty_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn empty_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Reads the fields glance-limiter must read before it can drop anything (the EtherType, the
/// source address, the TCP destination port), then drops. On a real receive path the first
/// read of a frame is a cache miss that `empty_drop` never takes.
#[xdp]
pub fn read_drop(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: every read below is bounds-checked against data_end first; volatile so the
    // reads happen although nothing uses their values.
    unsafe {
        let ethertype = core::ptr::read_volatile((data + 12) as *const u16);
        let (source_at, port_at) = if ethertype == 0x0008 {
            (data + 26, data + 36)
        } else {
            (data + 34, data + 56)
        };
        if port_at + 2 <= end {
            core::ptr::read_volatile(source_at as *const u32);
            core::ptr::read_volatile(port_at as *const u16);
        }
    }
    xdp_action::XDP_DROP
}

/// Frames up to this long are read whole by `read_words`.
const READ_WORDS_MAX: usize = 2048;
const WORDS_PER_CHECK: usize = 4;
const CHUNK: usize = WORDS_PER_CHECK * 8;

/// The least any forward read of a request's headers costs, as a reference for the proxied
/// cases: every 8-byte word of the frame, 32 bytes under one bounds check, tested for a byte
/// below 0x0e (what a CR or an LF is) with four operations and no branch, and nothing done
/// about what is found. A scan that finds where the header block ends (the only way to know
/// which `X-Forwarded-For` line is the proxy's, see docs/ARCHITECTURE.md) must at least do
/// this to every word before that end.
#[xdp]
pub fn read_words(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut marks = 0u64;
    for chunk in 0..READ_WORDS_MAX / CHUNK {
        let at = data + chunk * CHUNK;
        if at + CHUNK > end {
            break;
        }
        for word in 0..WORDS_PER_CHECK {
            // SAFETY: inside the chunk checked against data_end above.
            let w = unsafe { core::ptr::read_unaligned((at + word * 8) as *const u64) };
            marks |= w.wrapping_sub(repeated(0x0e)) & !w & HIGH_BITS;
        }
    }
    // Kept, so the reads are not optimised away; the verdict does not depend on it.
    let mut kept = 0u64;
    // SAFETY: a local.
    unsafe { core::ptr::write_volatile(&mut kept, marks) };
    xdp_action::XDP_PASS
}

/// The tightest search for the end of a request's header block (`\r\n\r\n`) we could
/// write, as a reference for the proxied cases: from the TCP payload of an untagged IPv4
/// frame, 32 bytes under one bounds check, each word's line feeds marked and paired with
/// about ten operations, and a line feed two bytes after another (across words too) ends
/// the search;
/// nothing done per line, no `X-Forwarded-For` looked at, no value read. Knowing where the
/// block ends is what makes its last client line the proxy's. Passes when it found an end,
/// drops when not (so a bench on a frame without one fails).
#[xdp]
pub fn find_header_end(ctx: XdpContext) -> u32 {
    const LINE_FEEDS: u64 = repeated(b'\n');
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 54 > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: within the 54 bytes checked above.
    let ip_header = (unsafe { core::ptr::read((data + 14) as *const u8) } & 0x0f) as usize * 4;
    let tcp = data + 14 + ip_header;
    if tcp + 20 > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: within the 20 bytes checked above.
    let payload = tcp + (unsafe { core::ptr::read((tcp + 12) as *const u8) } >> 4) as usize * 4;
    let mut previous = 0u64;
    for chunk in 0..READ_WORDS_MAX / CHUNK {
        let at = payload + chunk * CHUNK;
        if at + CHUNK > end {
            break;
        }
        let mut ends = 0u64;
        for word in 0..WORDS_PER_CHECK {
            // SAFETY: inside the chunk checked against data_end above.
            let w =
                unsafe { core::ptr::read_unaligned((at + word * 8) as *const u64) } ^ LINE_FEEDS;
            let line_feeds = w.wrapping_sub(ONES) & !w & HIGH_BITS;
            ends |= line_feeds & ((line_feeds << 16) | (previous >> 48));
            previous = line_feeds;
        }
        if ends != 0 {
            return xdp_action::XDP_PASS;
        }
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
