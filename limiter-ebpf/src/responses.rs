//! Glance's answers to image creates, read on the way out: a create that got a 2xx status
//! added a record, any other final status did not. The XDP program records each create it
//! passes to Glance against its connection ([`expect`]); the TC egress program
//! (`glance_limiter_responses`) reads the status line of Glance's next answer on that
//! connection and counts it for the create's client ([`answered`]), who may be a client a
//! trusted proxy named: the connection is the proxy's, the client is the request's.
//!
//! HTTP/1.1 answers in order, one per request; a proxy's reused backend connection carries
//! one request at a time. A connection's pending creates are therefore a count and the
//! client of the latest: a request of another client on the connection starts the count
//! again. An answer is only read where a segment starts with it (`HTTP/1.x NNN`), as Glance
//! writes each answer after reading its request.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::LruHashMap,
    programs::{TcContext, XdpContext},
};
use limiter_common::{
    ConnKey, Counter, PendingCreates, SourceAddr, SourceCreates, PROXY_CONN_CAPACITY,
};

use crate::{
    add, add_or_insert,
    budget::CREATES,
    conns,
    parse::{ipv4_mapped, Network, IPPROTO_TCP},
};

#[map]
static CREATE_CONNS: LruHashMap<ConnKey, PendingCreates> =
    LruHashMap::with_max_entries(PROXY_CONN_CAPACITY, 0);

/// One image create of `client` passed to Glance on the frame's connection.
#[inline(always)]
pub fn expect(ctx: &XdpContext, net: &Network, client: &SourceAddr) {
    let Some(key) = conns::key(ctx, net) else {
        return;
    };
    if let Some(pending) = CREATE_CONNS.get_ptr_mut(key) {
        // SAFETY: a live map value; its fields naturally aligned. Another CPU can only be on
        // the same connection for a retransmission, which TCP keeps from both counting.
        unsafe {
            if (*pending).client.words == client.words {
                (*pending).pending += 1;
            } else {
                (*pending).client = *client;
                (*pending).pending = 1;
            }
        }
        return;
    }
    let fresh = PendingCreates {
        client: *client,
        pending: 1,
        _pad: 0,
    };
    let _ = CREATE_CONNS.insert(key, fresh, BPF_NOEXIST as u64);
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// `HTTP/1.` in memory order, and the mask of the 7 bytes it fills of a word.
const HTTP_1: u64 = u64::from_le_bytes(*b"HTTP/1.\0");
const HTTP_1_MASK: u64 = 0x00ff_ffff_ffff_ffff;

/// A segment Glance sends on a protected port: its connection's key (as the XDP program
/// made it from the request) and where its payload starts.
struct Answer {
    key: ConnKey,
    payload_offset: usize,
}

/// The status of the answer this segment starts with, for the connection's pending creates.
#[inline(always)]
pub fn answered(ctx: &TcContext) -> Option<Counter> {
    let answer = read_answer(ctx)?;
    if (ctx.len() as usize) < answer.payload_offset + 12 {
        return None;
    }
    // Loaded as two words, in registers: byte arrays on the stack are copied byte by byte
    // and read back as words at odd offsets, which the verifier rejects.
    let http: u64 = ctx.load(answer.payload_offset).ok()?;
    let status: u32 = ctx.load(answer.payload_offset + 8).ok()?;
    let [space, class, tens, units] = status.to_le_bytes();
    if http & HTTP_1_MASK != HTTP_1 || space != b' ' {
        return None;
    }
    if ![class, tens, units].iter().all(u8::is_ascii_digit) || class == b'1' {
        // Not a status line, or an interim answer (100 Continue): the final one follows.
        return None;
    }
    let pending = CREATE_CONNS.get_ptr_mut(answer.key)?;
    // SAFETY: a live map value, copied out and written back at once.
    let (client, left) = unsafe { ((*pending).client, (*pending).pending) };
    if left == 0 {
        return None;
    }
    if left == 1 {
        let _ = CREATE_CONNS.remove(answer.key);
    } else {
        // SAFETY: as above.
        unsafe { (*pending).pending = left - 1 };
    }
    let created = class == b'2';
    count_outcome(&client, created);
    Some(if created {
        Counter::CreateSucceeded
    } else {
        Counter::CreateFailed
    })
}

#[inline(always)]
fn count_outcome(client: &SourceAddr, created: bool) {
    let add_to = |entry: *mut SourceCreates| {
        // SAFETY: a live map value, its counters u64 and 8-byte aligned.
        unsafe {
            if created {
                add(&raw mut (*entry).created, 1);
            } else {
                add(&raw mut (*entry).failed, 1);
            }
        }
    };
    // The source's first answered create (or its entry was evicted).
    let fresh = SourceCreates {
        forgiven_at: 0,
        over: 0,
        created: created as u64,
        failed: !created as u64,
    };
    add_or_insert(&CREATES, client, fresh, add_to);
}

/// The connection and payload of a TCP segment from a protected port, or `None` for
/// anything else (which passes untouched: this program only reads).
#[inline(always)]
fn read_answer(ctx: &TcContext) -> Option<Answer> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16::from_be(ctx.load::<u16>(16).ok()?);
        l3 += 4;
    }
    let (local, peer, l4) = match ethertype {
        ETH_P_IP => {
            let version_ihl: u8 = ctx.load(l3).ok()?;
            let fragment: u16 = u16::from_be(ctx.load(l3 + 6).ok()?);
            let protocol: u8 = ctx.load(l3 + 9).ok()?;
            if version_ihl >> 4 != 4 || protocol != IPPROTO_TCP || fragment & 0x1fff != 0 {
                return None;
            }
            let ihl = usize::from(version_ihl & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let src: u32 = ctx.load(l3 + 12).ok()?;
            let dst: u32 = ctx.load(l3 + 16).ok()?;
            (ipv4_mapped(src), ipv4_mapped(dst), l3 + ihl)
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(l3 + 6).ok()?;
            if next != IPPROTO_TCP {
                // Glance's answers carry no extension headers.
                return None;
            }
            let src: [u64; 2] = ctx.load(l3 + 8).ok()?;
            let dst: [u64; 2] = ctx.load(l3 + 24).ok()?;
            (
                SourceAddr { words: src },
                SourceAddr { words: dst },
                l3 + 40,
            )
        }
        _ => return None,
    };
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    if !crate::is_protected(u16::from_be(ports[0])) {
        return None;
    }
    let offset_byte: u8 = ctx.load(l4 + 12).ok()?;
    let header_len = usize::from(offset_byte >> 4) * 4;
    if header_len < 20 {
        return None;
    }
    Some(Answer {
        key: ConnKey {
            proxy: peer,
            local,
            proxy_port: ports[1],
            local_port: ports[0],
            _pad: 0,
        },
        payload_offset: l4 + header_len,
    })
}
