//! Refusing a banned client's request that arrives through a trusted proxy, without touching
//! the other clients that share the proxy.
//!
//! Dropping the segment would stall the whole backend connection (the proxy retransmits until
//! its server timeout), and other clients' requests may follow on it (HAProxy `http-reuse`).
//! Instead the request's own frame becomes the answer: `429 Too Many Requests` with
//! `Retry-After` and `Connection: close`, FIN set, sent back out of the interface in Glance's
//! place (XDP_TX). Glance never sees the request. The proxy relays the 429 and closes the
//! connection; its next segment on it (the ACK or FIN) becomes a reset at exactly the
//! sequence number Glance's socket expects, which closes that socket; anything later finds
//! no socket, and the kernel answers it with a reset. No half-open socket is left on either
//! side.
//!
//! Only frames without IPv4 options or IPv6 extension headers are rewritten (proxies send
//! none); anything else is dropped and the proxy times out on it.

use aya_ebpf::{
    helpers::generated::{
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::map,
    maps::Array,
    programs::XdpContext,
};
use limiter_common::{RejectTemplate, NEVER, REJECT_MAX_LEN, RETRY_AFTER_DIGITS};

use crate::{
    packet::{frame_len, header},
    parse::{
        Network, IPPROTO_TCP, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, TCP_FLAG_ACK, TCP_FLAG_FIN,
        TCP_FLAG_PSH, TCP_FLAG_RST, TCP_MIN_HEADER_LEN,
    },
};

#[map]
static REJECT_TEMPLATE: Array<RejectTemplate> = Array::with_max_entries(1, 0);

/// NOP, NOP, timestamps (kind 8, length 10): the option block Linux puts on every segment of a
/// connection that negotiated timestamps.
const TIMESTAMPS_BLOCK: u32 = u32::from_ne_bytes([1, 1, 8, 10]);
const TCP_WITH_TIMESTAMPS: usize = TCP_MIN_HEADER_LEN + 12;
const TTL: u8 = 64;

/// The TCP fields of the segment being answered.
struct Segment {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// TSval and TSecr, in memory order, when the segment carries the usual timestamp block.
    timestamps: Option<(u32, u32)>,
}

/// Whether the frame's IP header is plain (no IPv4 options, no IPv6 extension headers): the
/// only layout the rewrites handle.
#[inline(always)]
fn plain(net: &Network) -> bool {
    let ip_len = if net.is_ipv6 {
        IPV6_HEADER_LEN
    } else {
        IPV4_MIN_HEADER_LEN
    };
    net.l4_offset == net.l3_offset + ip_len
}

/// Turns the request's frame into the rejection response. `Some(seq)`: the frame is ready to
/// go back out (XDP_TX), and `seq` is where Glance's socket expects the next byte.
#[inline(always)]
pub fn answer(
    ctx: &XdpContext,
    net: &Network,
    payload_len: usize,
    blocked_until: u64,
    now: u64,
) -> Option<u32> {
    if !plain(net) {
        return None;
    }
    let l4 = net.l4_offset;
    let tcp = header::<TCP_MIN_HEADER_LEN>(ctx, l4)?;
    let header_len = ((tcp.u8(12) >> 4) as usize) * 4;
    let timestamps = if header_len == TCP_WITH_TIMESTAMPS {
        header::<12>(ctx, l4 + TCP_MIN_HEADER_LEN)
            .filter(|o| o.raw32(0) == TIMESTAMPS_BLOCK)
            .map(|o| (o.raw32(4), o.raw32(8)))
    } else {
        None
    };
    let segment = Segment {
        seq: tcp.be32(4),
        ack: tcp.be32(8),
        flags: tcp.u8(13),
        window: tcp.be16(14),
        timestamps,
    };
    let template = REJECT_TEMPLATE.get(0)?;
    let text_len = template.len as usize;
    let retry_at = template.retry_after_at as usize;
    if text_len == 0
        || text_len > REJECT_MAX_LEN
        || retry_at + RETRY_AFTER_DIGITS > text_len
        || !retry_at.is_multiple_of(2)
    {
        return None;
    }
    let tcp_len = if segment.timestamps.is_some() {
        TCP_WITH_TIMESTAMPS
    } else {
        TCP_MIN_HEADER_LEN
    };
    // The rewrites below read the Ethernet and IP headers and the ports where they are.
    fit(ctx, l4 + tcp_len + text_len, l4 + TCP_MIN_HEADER_LEN)?;

    swap_macs(ctx)?;
    let pseudo = ip_reply(ctx, net, tcp_len + text_len)?;

    let tcp = header::<TCP_MIN_HEADER_LEN>(ctx, l4)?;
    let (src_port, dst_port) = (tcp.raw16(0), tcp.raw16(2));
    tcp.set_raw16(0, dst_port);
    tcp.set_raw16(2, src_port);
    let seq = segment.ack;
    let fin = (segment.flags & TCP_FLAG_FIN != 0) as u32;
    let ack = segment
        .seq
        .wrapping_add(payload_len as u32)
        .wrapping_add(fin);
    tcp.set_be32(4, seq);
    tcp.set_be32(8, ack);
    let offset_flags =
        (((tcp_len / 4) as u16) << 12) | u16::from(TCP_FLAG_FIN | TCP_FLAG_PSH | TCP_FLAG_ACK);
    tcp.set_be16(12, offset_flags);
    tcp.set_be16(14, segment.window);
    tcp.set_be16(16, 0);
    tcp.set_be16(18, 0);
    let mut sum = pseudo
        + u64::from(u16::from_be(src_port))
        + u64::from(u16::from_be(dst_port))
        + words32(seq)
        + words32(ack)
        + u64::from(offset_flags)
        + u64::from(segment.window);
    if let Some((their_value, their_echo)) = segment.timestamps {
        let options = header::<12>(ctx, l4 + TCP_MIN_HEADER_LEN)?;
        // Our TSval is the latest one Glance sent (what the proxy echoed): never older than
        // what the proxy has seen, so PAWS accepts the segment.
        options.set_raw32(0, TIMESTAMPS_BLOCK);
        options.set_raw32(4, their_echo);
        options.set_raw32(8, their_value);
        sum += words32(u32::from_be(TIMESTAMPS_BLOCK))
            + words32(u32::from_be(their_echo))
            + words32(u32::from_be(their_value));
    }

    let payload = l4 + tcp_len;
    // SAFETY: `text_len` is 1..=REJECT_MAX_LEN, within the template; the helper checks the
    // frame bounds (the frame was sized to hold it).
    if unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            payload as u32,
            template.text.as_ptr() as *mut core::ffi::c_void,
            text_len as u32,
        )
    } != 0
    {
        return None;
    }
    let digits = retry_after_digits(template, blocked_until, now);
    // SAFETY: 6 bytes of an 8-byte stack buffer; the helper checks the frame bounds.
    if unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            (payload + retry_at) as u32,
            &digits as *const u64 as *mut core::ffi::c_void,
            RETRY_AFTER_DIGITS as u32,
        )
    } != 0
    {
        return None;
    }
    sum += u64::from(template.text_sum);
    let bytes = digits.to_ne_bytes();
    let mut k = 0;
    while k < RETRY_AFTER_DIGITS {
        sum += (u64::from(bytes[k]) << 8) | u64::from(bytes[k + 1]);
        k += 2;
    }
    header::<TCP_MIN_HEADER_LEN>(ctx, l4)?.set_be16(16, !fold(sum));
    Some(segment.seq)
}

/// Turns a segment the proxy sent on a rejected connection into a reset at `seq`, which closes
/// Glance's socket (a reset at exactly the expected sequence number is accepted at once).
#[inline(always)]
pub fn reset(ctx: &XdpContext, net: &Network, seq: u32) -> Option<()> {
    if !plain(net) {
        return None;
    }
    let l4 = net.l4_offset;
    resize(ctx, l4 + TCP_MIN_HEADER_LEN)?;
    let addresses = if net.is_ipv6 {
        let ip = header::<IPV6_HEADER_LEN>(ctx, net.l3_offset)?;
        ip.set_be16(4, TCP_MIN_HEADER_LEN as u16);
        ipv6_pseudo_sum(ip.raw64(8), ip.raw64(16), ip.raw64(24), ip.raw64(32))
    } else {
        let ip = header::<IPV4_MIN_HEADER_LEN>(ctx, net.l3_offset)?;
        let total = (IPV4_MIN_HEADER_LEN + TCP_MIN_HEADER_LEN) as u16;
        ip.set_be16(2, total);
        ip.set_be16(10, 0);
        let mut sum = 0u64;
        let mut k = 0;
        while k < IPV4_MIN_HEADER_LEN {
            sum += u64::from(ip.be16(k));
            k += 2;
        }
        ip.set_be16(10, !fold(sum));
        words32(ip.be32(12)) + words32(ip.be32(16))
    };
    let pseudo = addresses + TCP_MIN_HEADER_LEN as u64 + u64::from(IPPROTO_TCP);
    let tcp = header::<TCP_MIN_HEADER_LEN>(ctx, l4)?;
    let offset_flags = (((TCP_MIN_HEADER_LEN / 4) as u16) << 12) | u16::from(TCP_FLAG_RST);
    tcp.set_be32(4, seq);
    tcp.set_be32(8, 0);
    tcp.set_be16(12, offset_flags);
    tcp.set_be16(14, 0);
    tcp.set_be16(16, 0);
    tcp.set_be16(18, 0);
    let sum = pseudo
        + u64::from(tcp.be16(0))
        + u64::from(tcp.be16(2))
        + words32(seq)
        + u64::from(offset_flags);
    tcp.set_be16(16, !fold(sum));
    Some(())
}

/// The most [`fit`] keeps of a frame's start when it grows the frame at the head: Ethernet,
/// two VLAN tags, an IPv6 header and a TCP header without options.
const MAX_KEPT_LEN: usize = 82;
/// The stack buffer those bytes pass through: a power of two, so a mask bounds the length.
const KEPT_BUFFER_LEN: usize = 128;

/// Makes the frame `len` bytes long with its first `kept` bytes where they were. At the tail
/// when the buffer has room there. Otherwise at the head, moving those bytes to the new
/// start: a request segment shorter than the response (HAProxy sends a request's head and
/// body in separate segments on a reused backend connection) in a buffer the driver sized to
/// the frame (veth copies a frame that comes from the stack into one) has no tailroom to
/// grow into, while XDP keeps 256 bytes of headroom (216 usable beside the kernel's frame
/// descriptor): room for the response in place of any request segment of 36 bytes or more.
#[inline(always)]
fn fit(ctx: &XdpContext, len: usize, kept: usize) -> Option<()> {
    if resize(ctx, len).is_some() {
        return Some(());
    }
    let current = frame_len(ctx);
    // SAFETY: a read of a local (see `resize`).
    let current = unsafe { core::ptr::read_volatile(&current) };
    if len <= current {
        return None;
    }
    let grow = (len - current) as i32;
    if kept > MAX_KEPT_LEN {
        return None;
    }
    // Bounds the verifier can follow into the helpers' size argument whatever register
    // LLVM passes it in: at most 127 from the mask (the buffer holds 128), at least 1 from
    // the test on the value passed. Read through memory, so LLVM, which knows the value is
    // at most 82, cannot drop the mask.
    // SAFETY: a read of a local.
    let kept = (unsafe { core::ptr::read_volatile(&kept) } & 0x7f) as u32;
    if kept == 0 {
        return None;
    }
    let mut saved = [0u64; KEPT_BUFFER_LEN / 8];
    let buffer = saved.as_mut_ptr() as *mut core::ffi::c_void;
    // SAFETY: helper calls on this program's context; `kept` bytes fit in `saved`, and the
    // helpers check the frame's bounds.
    unsafe {
        if bpf_xdp_load_bytes(ctx.ctx, 0, buffer, kept) != 0
            || bpf_xdp_adjust_head(ctx.ctx, -grow) != 0
            || bpf_xdp_store_bytes(ctx.ctx, 0, buffer, kept) != 0
        {
            return None;
        }
    }
    Some(())
}

/// Grows (within the buffer's tailroom) or shrinks the frame to `len` bytes.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Option<()> {
    let current = frame_len(ctx);
    // Through memory, so LLVM cannot fold the subtraction into arithmetic on the frame's end
    // pointer, which the verifier refuses.
    // SAFETY: a read of a local.
    let current = unsafe { core::ptr::read_volatile(&current) };
    let delta = len as i32 - current as i32;
    // SAFETY: a helper call on this program's context.
    (unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0).then_some(())
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let eth = header::<12>(ctx, 0)?;
    let (dst_head, dst_tail) = (eth.raw32(0), eth.raw16(4));
    let (src_head, src_tail) = (eth.raw32(6), eth.raw16(10));
    eth.set_raw32(0, src_head);
    eth.set_raw16(4, src_tail);
    eth.set_raw32(6, dst_head);
    eth.set_raw16(10, dst_tail);
    Some(())
}

/// Rewrites the IP header for the reply (addresses swapped, `payload_len` bytes of TCP after
/// it) and returns the TCP pseudo-header's sum.
#[inline(always)]
fn ip_reply(ctx: &XdpContext, net: &Network, payload_len: usize) -> Option<u64> {
    if net.is_ipv6 {
        let ip = header::<IPV6_HEADER_LEN>(ctx, net.l3_offset)?;
        let (s0, s1, d0, d1) = (ip.raw64(8), ip.raw64(16), ip.raw64(24), ip.raw64(32));
        ip.set_be32(0, 0x6000_0000);
        ip.set_be16(4, payload_len as u16);
        ip.set_u8(6, IPPROTO_TCP);
        ip.set_u8(7, TTL);
        ip.set_raw64(8, d0);
        ip.set_raw64(16, d1);
        ip.set_raw64(24, s0);
        ip.set_raw64(32, s1);
        return Some(ipv6_pseudo_sum(s0, s1, d0, d1) + payload_len as u64 + u64::from(IPPROTO_TCP));
    }
    let ip = header::<IPV4_MIN_HEADER_LEN>(ctx, net.l3_offset)?;
    let (src, dst) = (ip.be32(12), ip.be32(16));
    let total = (IPV4_MIN_HEADER_LEN + payload_len) as u16;
    let flags_fragment: u16 = 0x4000; // don't fragment
    let ttl_protocol = (u16::from(TTL) << 8) | u16::from(IPPROTO_TCP);
    ip.set_be16(0, 0x4500);
    ip.set_be16(2, total);
    ip.set_be16(4, 0);
    ip.set_be16(6, flags_fragment);
    ip.set_be16(8, ttl_protocol);
    ip.set_be32(12, dst);
    ip.set_be32(16, src);
    let sum = 0x4500
        + u64::from(total)
        + u64::from(flags_fragment)
        + u64::from(ttl_protocol)
        + words32(src)
        + words32(dst);
    ip.set_be16(10, !fold(sum));
    Some(words32(src) + words32(dst) + payload_len as u64 + u64::from(IPPROTO_TCP))
}

/// The sum of both addresses' 16-bit words (given as memory-order words).
#[inline(always)]
fn ipv6_pseudo_sum(s0: u64, s1: u64, d0: u64, d1: u64) -> u64 {
    words64(s0) + words64(s1) + words64(d0) + words64(d1)
}

/// The two 16-bit halves of a host-order value, summed.
#[inline(always)]
fn words32(value: u32) -> u64 {
    u64::from(value >> 16) + u64::from(value & 0xffff)
}

/// The four big-endian 16-bit words of 8 bytes held in memory order, summed.
#[inline(always)]
fn words64(raw: u64) -> u64 {
    let value = u64::from_be(raw);
    (value >> 48) + ((value >> 32) & 0xffff) + ((value >> 16) & 0xffff) + (value & 0xffff)
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Seconds until the ban ends, right-aligned in [`RETRY_AFTER_DIGITS`] characters (leading
/// spaces are optional whitespace before the header value), as the bytes of a word in memory
/// order. Built arithmetically, without a branch per digit: each would double the paths the
/// verifier follows through the checksum after it.
#[inline(always)]
fn retry_after_digits(template: &RejectTemplate, blocked_until: u64, now: u64) -> u64 {
    let seconds = if blocked_until == NEVER {
        u64::from(template.retry_after_never)
    } else {
        let hz = u64::from(template.hz).max(1);
        blocked_until.saturating_sub(now).div_ceil(hz)
    };
    let mut rest = seconds.clamp(1, 999_999);
    let mut word = u64::from_ne_bytes([b' '; 8]);
    let mut k = 0;
    while k < RETRY_AFTER_DIGITS {
        let at = RETRY_AFTER_DIGITS - 1 - k;
        // 0 while digits remain (or for the last digit), else 0xff: a mask that keeps the
        // space already in place.
        let blank = ((rest == 0) as u64 & (k != 0) as u64).wrapping_neg() & 0xff;
        let digit = u64::from(b'0') + rest % 10;
        let byte = (digit & !blank) | (u64::from(b' ') & blank);
        let shift = 8 * at as u64;
        let place = if cfg!(target_endian = "little") {
            shift
        } else {
            56 - shift
        };
        word = (word & !(0xff << place)) | (byte << place);
        rest /= 10;
        k += 1;
    }
    word
}
