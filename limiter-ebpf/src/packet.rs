//! Bounds-checked access to the packet. A [`Header`] is proof that `N` bytes at some offset
//! lie inside the frame: one check per header, then plain loads of its fields.
//!
//! Loads go straight from the packet into registers (no copies onto the stack), and may be
//! misaligned: the object is built with `allows-misaligned-mem-access` (see build.rs), which
//! the kernel accepts for packet memory but not for the stack. Keep stack values aligned.

use aya_ebpf::programs::XdpContext;

/// Largest offset the program reads at. Stating it bounds, for the verifier, offsets that
/// grow through VLAN tags, IP options and IPv6 extension headers.
pub const MAX_OFFSET: usize = 0x3fff;

/// `N` bytes of the packet, known to be in bounds.
#[derive(Clone, Copy)]
pub struct Header<const N: usize> {
    start: usize,
}

impl<const N: usize> Header<N> {
    #[inline(always)]
    pub fn u8(&self, at: usize) -> u8 {
        // SAFETY: `at < N` at every call site (constant offsets), and N bytes are in bounds.
        unsafe { *((self.start + at) as *const u8) }
    }

    /// A big-endian 16-bit field.
    #[inline(always)]
    pub fn be16(&self, at: usize) -> u16 {
        // SAFETY: as above; the load may be misaligned.
        u16::from_be(unsafe { ((self.start + at) as *const u16).read_unaligned() })
    }

    /// Two bytes in memory order.
    #[inline(always)]
    pub fn raw16(&self, at: usize) -> u16 {
        // SAFETY: as above.
        unsafe { ((self.start + at) as *const u16).read_unaligned() }
    }

    /// A big-endian 32-bit field.
    #[inline(always)]
    pub fn be32(&self, at: usize) -> u32 {
        u32::from_be(self.raw32(at))
    }

    /// Four bytes in memory order (compare with [`word32`] or copy into keys).
    #[inline(always)]
    pub fn raw32(&self, at: usize) -> u32 {
        // SAFETY: as above.
        unsafe { ((self.start + at) as *const u32).read_unaligned() }
    }

    /// Eight bytes in memory order (compare with [`word64`] or copy into keys).
    #[inline(always)]
    pub fn raw64(&self, at: usize) -> u64 {
        // SAFETY: as above.
        unsafe { ((self.start + at) as *const u64).read_unaligned() }
    }
}

impl<const N: usize> Header<N> {
    #[inline(always)]
    pub fn set_u8(&self, at: usize, value: u8) {
        // SAFETY: as for the loads; XDP frames are writable.
        unsafe { *((self.start + at) as *mut u8) = value }
    }

    /// Writes a big-endian 16-bit field.
    #[inline(always)]
    pub fn set_be16(&self, at: usize, value: u16) {
        // SAFETY: as above; the store may be misaligned.
        unsafe { ((self.start + at) as *mut u16).write_unaligned(value.to_be()) }
    }

    /// Writes two bytes in memory order.
    #[inline(always)]
    pub fn set_raw16(&self, at: usize, value: u16) {
        // SAFETY: as above.
        unsafe { ((self.start + at) as *mut u16).write_unaligned(value) }
    }

    /// Writes a big-endian 32-bit field.
    #[inline(always)]
    pub fn set_be32(&self, at: usize, value: u32) {
        self.set_raw32(at, value.to_be())
    }

    /// Writes four bytes in memory order.
    #[inline(always)]
    pub fn set_raw32(&self, at: usize, value: u32) {
        // SAFETY: as above.
        unsafe { ((self.start + at) as *mut u32).write_unaligned(value) }
    }

    /// Writes eight bytes in memory order.
    #[inline(always)]
    pub fn set_raw64(&self, at: usize, value: u64) {
        // SAFETY: as above.
        unsafe { ((self.start + at) as *mut u64).write_unaligned(value) }
    }
}

/// The `N` bytes at `off`, or `None` if the frame ends before them.
#[inline(always)]
pub fn header<const N: usize>(ctx: &XdpContext, off: usize) -> Option<Header<N>> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data() + off;
    if start + N > ctx.data_end() {
        return None;
    }
    Some(Header { start })
}

/// [`header`], its address kept in one register from the check to the last load: the
/// compiler may otherwise compute it again for a load far from the check, as a pointer the
/// verifier does not know to be in bounds (where many values compete for registers).
#[inline(always)]
pub fn header_kept<const N: usize>(ctx: &XdpContext, off: usize) -> Option<Header<N>> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = core::hint::black_box(ctx.data() + off);
    if start + N > ctx.data_end() {
        return None;
    }
    Some(Header { start })
}

#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// The first `N` (<= 8) bytes of `s` as a word loaded from memory, for comparisons.
pub const fn word64<const N: usize>(s: &[u8; N]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < N {
        w |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    w
}

/// A mask keeping the first `n` bytes of a [`Header::raw64`] word.
pub const fn first_bytes(n: u32) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}
