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

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruHashMap},
};
use limiter_common::{
    BudgetConfig, Counter, SourceAddr, SourceCreates, BUDGET_ENFORCE, BUDGET_TIME_SHIFT,
    CREATES_CAPACITY,
};

use crate::{add, rules};

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

/// Charges one create to `src`'s budget.
#[inline(always)]
pub fn charge(src: &SourceAddr, now: u64) -> Admission {
    let Some(config) = BUDGET_CONFIG.get(0) else {
        return Admission::Pass;
    };
    let (interval, tolerance) = (config.interval, config.tolerance);
    if interval == 0 {
        return Admission::Pass;
    }
    let now = now << BUDGET_TIME_SHIFT;
    let Some(budget) = CREATES.get_ptr_mut(src) else {
        // A source's first create: a whole budget, less this create. NOEXIST: another CPU
        // may have added it meanwhile; its entry is as good (one create uncharged at most).
        let fresh = SourceCreates {
            arrival: now + interval,
            ..SourceCreates::default()
        };
        let _ = CREATES.insert(src, fresh, BPF_NOEXIST as u64);
        return Admission::Pass;
    };
    // SAFETY: a live map value. CPUs charging one source at once may each see the same
    // arrival and overwrite each other's: a create or two uncharged, never one refused wrongly.
    let arrival = unsafe { (*budget).arrival }.max(now);
    if arrival - now <= tolerance {
        unsafe { (*budget).arrival = arrival + interval };
        return Admission::Pass;
    }
    // Over budget. Rare (a flood's requests until its ban), so the allow trie is read here
    // rather than kept in every row: an allowlisted source is never refused.
    if rules::allowed(src, now >> BUDGET_TIME_SHIFT) {
        return Admission::Pass;
    }
    // SAFETY: as above; the count is atomic, as several CPUs may add at once.
    unsafe { add(&raw mut (*budget).over, 1) };
    if config.flags & BUDGET_ENFORCE == 0 {
        crate::count(Counter::OverBudgetObserved);
        return Admission::Pass;
    }
    Admission::Refuse {
        next_at: (arrival - tolerance).div_ceil(1 << BUDGET_TIME_SHIFT),
    }
}
