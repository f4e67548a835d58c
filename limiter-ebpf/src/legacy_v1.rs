//! What a running older version of glance-limiter looks like to an upgrade: its per-source
//! table in the previous row layout (`SourceRowV1`, two cache lines), counted by a program
//! that drops blocked sources through the same block trie, under the same map names. The
//! upgrade test (tests/tests/upgrade.rs) pins it, sends traffic through it, and checks that
//! the current version takes its table and its attachment over without a moment unprotected.
//! IPv4 over plain Ethernet only: enough for that test. Never loaded by the daemon.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

// The rule tries and their lookups, as the current program has them: the older version's
// block trie is the same map, under the same name. (It uses only the block lookup.)
#[allow(dead_code)]
mod rules;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_jiffies64,
    macros::{map, xdp},
    maps::{Array, LruHashMap},
    programs::XdpContext,
};
use limiter_common::{SourceAddr, SourceRowV1, DEFAULT_SOURCE_CAPACITY, PORT_BITMAP_WORDS};

#[map]
static SOURCES: LruHashMap<SourceAddr, SourceRowV1> =
    LruHashMap::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);

#[map]
static PROTECTED_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

#[xdp]
pub fn glance_limiter(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    // Ethernet, a 20-byte IPv4 header (options are not this program's concern) and the
    // first 14 bytes of TCP (ports and flags).
    if data + ETH_HLEN + 20 + 14 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: every read is within the bounds checked just above.
    let (ethertype, version_ihl, protocol, src, dst_port, tcp_flags) = unsafe {
        (
            u16::from_be(*((data + 12) as *const u16)),
            *((data + ETH_HLEN) as *const u8),
            *((data + ETH_HLEN + 9) as *const u8),
            *((data + ETH_HLEN + 12) as *const [u8; 4]),
            u16::from_be(*((data + ETH_HLEN + 20 + 2) as *const u16)),
            *((data + ETH_HLEN + 20 + 13) as *const u8),
        )
    };
    if ethertype != ETHERTYPE_IPV4 || version_ihl != 0x45 || protocol != IPPROTO_TCP {
        return xdp_action::XDP_PASS;
    }
    let protected = PROTECTED_PORTS
        .get(u32::from(dst_port >> 6))
        .is_some_and(|word| word & (1u64 << (dst_port & 63)) != 0);
    if !protected {
        return xdp_action::XDP_PASS;
    }
    let key = SourceAddr::from_octets([
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, src[0], src[1], src[2], src[3],
    ]);
    let now = unsafe { bpf_jiffies64() };
    if rules::lookup(&key).blocked_until > now {
        return xdp_action::XDP_DROP;
    }
    let syn = (tcp_flags & 0x12 == 0x02) as u64;
    let frame_bytes = (end - data) as u64;
    if let Some(row) = SOURCES.get_ptr_mut(key) {
        // SAFETY: a live map value; its fields are u64 and 8-byte aligned.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*row).packets, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*row).bytes,
                frame_bytes,
            );
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*row).syns, syn);
            (*row).last_seen = now;
        }
    } else {
        let fresh = SourceRowV1 {
            syns: syn,
            packets: 1,
            bytes: frame_bytes,
            first_seen: now,
            last_seen: now,
            ..SourceRowV1::default()
        };
        let _ = SOURCES.insert(key, fresh, BPF_NOEXIST as u64);
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
