//! What becomes of a direct client's image create after the main program counted it, in a
//! program of its own (`glance_limiter_create`, a tail call: the main program, checked once
//! per way it can parse a frame, has no verifier budget to spare), told what to do through
//! [`PENDING_STEP`]:
//!
//! - over its budget: answered in Glance's place as a banned proxied client's request is
//!   (see `reject`), `429 Too Many Requests` with `Retry-After` and `Connection: close`, so
//!   the client learns at once and Glance never sees the request; the client's next segment
//!   on that connection becomes the reset that closes Glance's socket;
//! - passed to Glance: recorded against its connection, for the egress program to count
//!   Glance's answer (see `responses`).

use core::intrinsics::{atomic_or, AtomicOrdering};

use aya_ebpf::{bindings::xdp_action, macros::map, maps::PerCpuArray, programs::XdpContext};
use limiter_common::{ConnState, Counter, SourceStats, CONN_REJECTED, SOURCE_REJECTED_CONNS};

use crate::{
    conns::{self, PROXY_CONNS},
    hand_over,
    parse::{Network, Tcp},
    reject, responses, SOURCES,
};

/// Slot of `glance_limiter_create` in `PROXY_PROGRAMS`.
pub const CREATE_SLOT: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct Step {
    /// [`ANSWER`], [`RESET`] or [`RECORD`].
    kind: u64,
    /// For an answer, the jiffy the budget allows the next create at; for a reset, the
    /// sequence number Glance's socket expects; for a record, the pass counter.
    at: u64,
}

const ANSWER: u64 = 1;
const RESET: u64 = 2;
const RECORD: u64 = 3;

#[map]
static PENDING_STEP: PerCpuArray<Step> = PerCpuArray::with_max_entries(1, 0);

/// Refuses the image create in this frame (over budget until `next_at`, jiffies).
#[inline(always)]
pub fn refuse(ctx: &XdpContext, next_at: u64) -> (u32, Counter) {
    hand_over_step(ctx, ANSWER, next_at, Counter::PassProtected)
}

/// Records the image create in this frame, passed to Glance with `passed` as its counter.
#[inline(always)]
pub fn record(ctx: &XdpContext, passed: Counter) -> (u32, Counter) {
    hand_over_step(ctx, RECORD, passed as u64, passed)
}

/// For a source with refused connections: if this segment is on one of them, the verdict
/// (the segment becomes the reset for Glance's socket). A new connection on a refused one's
/// port starts clean.
#[inline(always)]
pub fn on_refused_connection(ctx: &XdpContext, net: &Network, tcp: &Tcp) -> Option<(u32, Counter)> {
    let key = conns::key(ctx, net)?;
    // SAFETY: copied out at once.
    let state = unsafe { PROXY_CONNS.get(key) }.copied()?;
    if state.flags & CONN_REJECTED == 0 {
        return None;
    }
    let _ = PROXY_CONNS.remove(key);
    if tcp.syn {
        return None;
    }
    Some(hand_over_step(
        ctx,
        RESET,
        u64::from(state.reset_seq),
        Counter::PassProtected,
    ))
}

/// Hands the frame to `glance_limiter_create`; if that fails (the loader always fills the
/// slot), the frame passes untouched, counted as `fallback`.
#[inline(always)]
fn hand_over_step(ctx: &XdpContext, kind: u64, at: u64, fallback: Counter) -> (u32, Counter) {
    if let Some(pending) = PENDING_STEP.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
        unsafe { *pending = Step { kind, at } };
        hand_over(ctx, CREATE_SLOT);
    }
    (xdp_action::XDP_PASS, fallback)
}

/// `glance_limiter_create`'s work on the frame the main program handed over, its layout
/// forgotten (see `proxy::forget_layout`).
#[inline(always)]
pub fn step(ctx: &XdpContext, net: &Network, tcp: &Tcp, now: u64) -> Option<(u32, Counter)> {
    let step = *PENDING_STEP.get(0)?;
    match step.kind {
        RECORD => {
            responses::expect(ctx, net, &net.src);
            let passed = if step.at == Counter::PassAllowed as u64 {
                Counter::PassAllowed
            } else {
                Counter::PassProtected
            };
            Some((xdp_action::XDP_PASS, passed))
        }
        RESET => Some(match reject::reset(ctx, net, step.at as u32) {
            Some(()) => (xdp_action::XDP_PASS, Counter::ResetOverBudget),
            None => (xdp_action::XDP_DROP, Counter::DropOverBudget),
        }),
        _ => answer(ctx, net, tcp, step.at, now),
    }
}

/// Answers the create over budget with the 429 and remembers its connection for the reset.
#[inline(always)]
fn answer(
    ctx: &XdpContext,
    net: &Network,
    tcp: &Tcp,
    next_at: u64,
    now: u64,
) -> Option<(u32, Counter)> {
    let key = conns::key(ctx, net)?;
    let Some(reset_seq) = reject::answer(ctx, net, tcp.payload_len, next_at, now) else {
        // A layout the rewrite does not handle (IP options), possibly half rewritten: as
        // for a proxied client, dropped; the ban follows.
        return Some((xdp_action::XDP_DROP, Counter::DropOverBudget));
    };
    let rejected = ConnState {
        flags: CONN_REJECTED,
        reset_seq,
        ..ConnState::default()
    };
    let _ = PROXY_CONNS.insert(key, rejected, 0);
    if let Some(row) = SOURCES.get_ptr_mut(net.src) {
        // Atomic, as the verdict cache may be written by another CPU at once. BPF has no
        // 32-bit atomic OR: the 64-bit word holding `rules_generation`, `flags` and
        // `budget_high`, with the bit in the flags' part (OR leaves the rest as it is).
        const _: () = assert!(core::mem::offset_of!(SourceStats, flags) == 60);
        const _: () = assert!(core::mem::offset_of!(SourceStats, rules_generation) == 56);
        let bit = u64::from(SOURCE_REJECTED_CONNS);
        let bit = if cfg!(target_endian = "little") {
            bit << 32
        } else {
            bit
        };
        // SAFETY: a live map value; offset 56 of a 64-byte row, 8-byte aligned.
        unsafe {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                (&raw mut (*row).rules_generation).cast::<u64>(),
                bit,
            )
        };
    }
    Some((xdp_action::XDP_TX, Counter::RejectOverBudget))
}
