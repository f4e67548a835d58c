//! The PROXY protocol header a trusted proxy may send at the start of a backend connection
//! (HAProxy `send-proxy`, `send-proxy-v2`): v1 is a text line, v2 a binary block. Either names
//! the client every request of the connection belongs to.

use aya_ebpf::programs::XdpContext;
use limiter_common::{
    client_addr::{self, ProxyV1, WINDOW_LEN},
    SourceAddr,
};

use crate::{headers, packet::header, packet::word64};

/// The v2 signature, `\r\n\r\n\0\r\nQUIT\n`, as a word and a 4-byte tail.
const V2_SIGNATURE: u64 = word64(b"\r\n\r\n\0\r\nQ");
const V2_SIGNATURE_TAIL: u32 = word64(b"UIT\n") as u32;
const V2_FIXED_LEN: usize = 16;
const V2_VERSION: u8 = 0x20;
const V2_COMMAND_PROXY: u8 = 0x01;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V1_START: u64 = word64(b"PROXY ");
const V1_START_MASK: u64 = (1 << 48) - 1;

/// What a PROXY header says about its connection.
pub enum Named {
    Client(SourceAddr),
    /// `LOCAL` (the proxy's own connection, such as a health check), `UNKNOWN`, another
    /// family, or a header that cannot be read: the connection's requests are unattributed.
    NoClient,
}

/// A PROXY header at `off` (the start of the connection's data), what it names, and its
/// length; `None` if the data does not start with one.
#[inline(always)]
pub fn read(ctx: &XdpContext, off: usize, len: usize) -> Option<(Named, usize)> {
    let start = header::<8>(ctx, off)?;
    let first = start.raw64(0);
    if first == V2_SIGNATURE {
        return Some(v2(ctx, off, len));
    }
    if first & V1_START_MASK == V1_START {
        return Some(v1(ctx, off, len));
    }
    None
}

#[inline(always)]
fn v2(ctx: &XdpContext, off: usize, len: usize) -> (Named, usize) {
    let Some(fixed) = header::<V2_FIXED_LEN>(ctx, off) else {
        return (Named::NoClient, len);
    };
    if fixed.raw32(8) != V2_SIGNATURE_TAIL || fixed.u8(12) & 0xf0 != V2_VERSION {
        return (Named::NoClient, len);
    }
    let total = V2_FIXED_LEN + fixed.be16(14) as usize;
    if total > len {
        // The header continues in another segment: the connection stays unattributed.
        return (Named::NoClient, len);
    }
    if fixed.u8(12) & 0x0f != V2_COMMAND_PROXY {
        return (Named::NoClient, total);
    }
    let addrs = off + V2_FIXED_LEN;
    let client = match fixed.u8(13) {
        V2_TCP4 if total >= V2_FIXED_LEN + 12 => header::<4>(ctx, addrs).map(|a| SourceAddr {
            words: [0, 0xffff_0000 | (u64::from(a.raw32(0)) << 32)],
        }),
        V2_TCP6 if total >= V2_FIXED_LEN + 36 => header::<16>(ctx, addrs).map(|a| SourceAddr {
            words: [a.raw64(0), a.raw64(8)],
        }),
        _ => None,
    };
    match client {
        Some(client) => (Named::Client(client), total),
        None => (Named::NoClient, total),
    }
}

#[inline(always)]
fn v1(ctx: &XdpContext, off: usize, len: usize) -> (Named, usize) {
    let copy = if len > WINDOW_LEN { WINDOW_LEN } else { len };
    let Some(window) = headers::window() else {
        return (Named::NoClient, len);
    };
    // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
    let window = unsafe { &mut *window };
    let Some(copy) = headers::copy_to_window(ctx, window, off, copy) else {
        return (Named::NoClient, len);
    };
    match client_addr::proxy_v1(window, &headers::BpfLoops, copy) {
        (ProxyV1::Client(client), line) => (Named::Client(client), line),
        (ProxyV1::Unknown, line) => (Named::NoClient, line),
        // No line end within 107 bytes of this segment: skip the segment.
        (ProxyV1::Invalid, _) => (Named::NoClient, len),
    }
}
