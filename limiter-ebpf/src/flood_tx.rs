//! The flood benchmark's sender, not part of the product: run through BPF_PROG_TEST_RUN in
//! live-frames mode from the attacker's namespace, it redirects its frame into the attacker's
//! veth, so the frame reaches the receiving veth as an XDP frame, with no skb and no socket on
//! the way. Each run rewrites the source address (rotating over a range) and both checksums.
//!
//! In live-frames mode a page may come back to the program with the previous run's edits, so
//! everything that varies is written absolutely, never patched incrementally.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use limiter_common::FloodTxConfig;

#[map]
static FLOOD_TX_CONFIG: Array<FloodTxConfig> = Array::with_max_entries(1, 0);

#[map]
static FLOOD_TX_SEQUENCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_LEN: usize = 14;
/// The frame offsets the sender writes, per family (the frames carry no options or VLAN tags).
const V4_SRC_LOW: usize = ETH_LEN + 12;
const V4_IP_CHECKSUM: usize = ETH_LEN + 10;
const V4_TCP_CHECKSUM: usize = ETH_LEN + 20 + 16;
const V6_SRC_LOW: usize = ETH_LEN + 8 + 12;
const V6_TCP_CHECKSUM: usize = ETH_LEN + 40 + 16;

#[xdp]
pub fn flood_tx(ctx: XdpContext) -> u32 {
    let Some(config) = FLOOD_TX_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if config.count <= 1 {
        // The frame as built is right. Not writing it also keeps its cache lines clean, so
        // the receiver's CPU reads them from a shared copy instead of this CPU's dirty one.
        // SAFETY: a helper call with plain arguments.
        return unsafe { bpf_redirect(config.ifindex, 0) as u32 };
    }
    let Some(sequence) = FLOOD_TX_SEQUENCE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot, and a test run stays on one CPU.
    let i = unsafe {
        let i = *sequence;
        *sequence = i.wrapping_add(1);
        i
    };
    let count = u64::from(config.count);
    // Each pass over the range starts one source later: frames the receiving ring drops
    // fall at the same positions of every pass (its batches repeat with the range), and
    // without the shift the same sources would never arrive.
    let index = (i + i / count) % count;
    let low = config.first_low.wrapping_add(index as u32);
    let written = if config.family == 6 {
        write_u32(&ctx, V6_SRC_LOW, low)
            && write_u16(&ctx, V6_TCP_CHECKSUM, checksum(config.tcp_sum, low))
    } else {
        write_u32(&ctx, V4_SRC_LOW, low)
            && write_u16(&ctx, V4_IP_CHECKSUM, checksum(config.ip_sum, low))
            && write_u16(&ctx, V4_TCP_CHECKSUM, checksum(config.tcp_sum, low))
    };
    if !written {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a helper call with plain arguments.
    unsafe { bpf_redirect(config.ifindex, 0) as u32 }
}

/// The checksum of a sum that lacks only the 32 varying source bits.
#[inline(always)]
fn checksum(partial: u32, low: u32) -> u16 {
    let mut sum = u64::from(partial) + u64::from(low >> 16) + u64::from(low & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn write_u32(ctx: &XdpContext, offset: usize, value: u32) -> bool {
    let at = ctx.data() + offset;
    if at + 4 > ctx.data_end() {
        return false;
    }
    // SAFETY: bounds checked above; the target allows misaligned stores.
    unsafe { core::ptr::write_unaligned(at as *mut u32, value.to_be()) };
    true
}

#[inline(always)]
fn write_u16(ctx: &XdpContext, offset: usize, value: u16) -> bool {
    let at = ctx.data() + offset;
    if at + 2 > ctx.data_end() {
        return false;
    }
    // SAFETY: bounds checked above; the target allows misaligned stores.
    unsafe { core::ptr::write_unaligned(at as *mut u16, value.to_be()) };
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
