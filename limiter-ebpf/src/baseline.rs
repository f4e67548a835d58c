//! Reference programs for benchmarks: the per-packet cost of glance-limiter is reported
//! against `empty_pass` measured in the same run, the drop ceiling of a flood against
//! `empty_drop`, and what merely reading a packet costs against `read_drop`.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
