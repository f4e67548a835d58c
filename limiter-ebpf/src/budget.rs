//! Image-create budgets: each source may create at the policy's per-minute rate, with the
//! whole minute's worth as a burst, and the kernel refuses the create past that at once
//! instead of waiting for the daemon's next poll. The daemon still decides bans.
//!
//! A generic cell rate algorithm: one time per source, the "theoretical arrival time" when
//! its budget is whole again. A create is over budget when that time lies more than the
//! tolerance ahead of now; otherwise it moves the time one interval on. Any sequence of
//! creates that keeps to the per-minute threshold in every window also keeps to this budget
//! (it allows the threshold in one burst, then one per interval), so the budget never refuses
//! what the policy would not ban.
//!
//! The time lives in the source's row, which the packet already looked up: a create within
//! budget costs a read and a write of that cache line, no lookup of its own. Only a create
//! over budget reads the table of creates (`CREATES`), to count it and to see whether the
//! daemon forgave the source.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use limiter_common::{
    budget_ahead, budget_time_kept, BudgetConfig, Counter, SourceAddr, SourceCreates, SourceStats,
    BUDGET_ENFORCE, BUDGET_TIME_MASK, BUDGET_TIME_SHIFT, CREATES_CAPACITY,
};

use crate::{add, add_or_insert, rules};

#[map]
static BUDGET_CONFIG: Array<BudgetConfig> = Array::with_max_entries(1, 0);

/// Read and written by `responses` too: a source's creates, refused and answered.
#[map]
pub static CREATES: LruHashMap<SourceAddr, SourceCreates> =
    LruHashMap::with_max_entries(CREATES_CAPACITY, 0);

/// What to do with an image create of `src` at `now` (jiffies), its class already counted.
pub enum Admission {
    /// Within budget, or over it in monitor mode, or the source is allowlisted.
    Pass,
    /// Over budget: refuse it; the budget allows the next create at this jiffy.
    Refuse { next_at: u64 },
}

/// Charges one create to the budget kept in `src`'s row (none: a row the table refused,
/// and the create passes).
#[inline(always)]
pub fn charge(row: Option<*mut SourceStats>, src: &SourceAddr, now: u64) -> Admission {
    let Some(config) = BUDGET_CONFIG.get(0) else {
        return Admission::Pass;
    };
    let (interval, tolerance) = (config.interval, config.tolerance);
    let Some(row) = row else {
        return Admission::Pass;
    };
    if interval == 0 {
        return Admission::Pass;
    }
    let now_fixed = (now << BUDGET_TIME_SHIFT) & BUDGET_TIME_MASK;
    // SAFETY: a live map value. CPUs charging one source at once may each see the same time
    // and overwrite each other's (or tear the two halves, which `budget_ahead` reads as a
    // whole budget): a create or two uncharged, never one refused wrongly.
    let ahead = budget_ahead(
        unsafe { (*row).budget_time() },
        now_fixed,
        tolerance + interval,
    );
    if ahead <= tolerance {
        unsafe { set_budget_time(row, now_fixed + ahead + interval) };
        return Admission::Pass;
    }
    // Over budget. Rare (a flood's requests until its ban), so the allow trie is read here
    // rather than kept in every row: an allowlisted source is never refused.
    if rules::allowed(src, now) {
        return Admission::Pass;
    }
    if forgiven(src, now, (tolerance + interval) >> BUDGET_TIME_SHIFT) {
        unsafe { set_budget_time(row, now_fixed + interval) };
        return Admission::Pass;
    }
    let fresh = SourceCreates {
        over: 1,
        ..SourceCreates::default()
    };
    // SAFETY: a live map value; the count is atomic, as several CPUs may add at once.
    add_or_insert(&CREATES, src, fresh, |entry| unsafe {
        add(&raw mut (*entry).over, 1)
    });
    if config.flags & BUDGET_ENFORCE == 0 {
        crate::count(Counter::OverBudgetObserved);
        return Admission::Pass;
    }
    Admission::Refuse {
        next_at: now + (ahead - tolerance).div_ceil(1 << BUDGET_TIME_SHIFT),
    }
}

/// # Safety
/// `row` points at a live map value.
#[inline(always)]
unsafe fn set_budget_time(row: *mut SourceStats, time: u64) {
    let time = budget_time_kept(time);
    (*row).budget_low = time as u32;
    (*row).budget_high = (time >> 32) as u16;
}

/// Whether the daemon forgave `src` (an unblock) within the last `window` jiffies: what it
/// spent before then no longer counts. Taken once: the forgiveness is cleared.
#[inline(always)]
fn forgiven(src: &SourceAddr, now: u64, window: u64) -> bool {
    let Some(entry) = CREATES.get_ptr_mut(src) else {
        return false;
    };
    // SAFETY: a live map value; two CPUs taking one forgiveness at once give a create more.
    let forgiven_at = unsafe { (*entry).forgiven_at };
    if forgiven_at == 0 || now.wrapping_sub(forgiven_at) > window {
        return false;
    }
    unsafe { (*entry).forgiven_at = 0 };
    true
}
