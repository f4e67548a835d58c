//! The image-create budget the kernel holds every source to (see the XDP program's
//! `budget` module): derived from the policy's `image_creates_per_minute`, a burst of that
//! many creates, then one per `60 s / threshold`. Any source that keeps to the threshold in
//! every minute keeps to this budget, so it refuses only what the policy is about to ban;
//! what it adds is that the refusal comes at the very next request instead of the next poll.

use limiter_common::{BudgetConfig, BUDGET_ENFORCE, BUDGET_TIME_SHIFT};

/// The budget in the policy's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageCreateBudget {
    /// Creates a minute, and the burst.
    pub per_minute: u32,
    /// Refuse over budget (enforce mode), or only count (monitor mode).
    pub enforce: bool,
}

impl ImageCreateBudget {
    /// The budget a policy asks for: none when the per-minute threshold is off or budgets
    /// are switched off.
    pub fn of_policy(per_minute: Option<u32>, enabled: bool, enforce: bool) -> Option<Self> {
        let per_minute = per_minute.filter(|n| *n > 0 && enabled)?;
        Some(ImageCreateBudget {
            per_minute,
            enforce,
        })
    }

    /// What the kernel keeps, for a clock of `hz` ticks a second. The interval rounds down:
    /// a budget a hair more generous than the policy, never stricter.
    pub fn kernel_config(&self, hz: u32) -> BudgetConfig {
        let minute = (60 * u64::from(hz)) << BUDGET_TIME_SHIFT;
        let interval = (minute / u64::from(self.per_minute)).max(1);
        BudgetConfig {
            interval,
            tolerance: interval * u64::from(self.per_minute - 1),
            flags: if self.enforce { BUDGET_ENFORCE } else { 0 },
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_common::{budget_ahead, budget_time_kept, BUDGET_TIME_BITS, BUDGET_TIME_MASK};

    /// The kernel's algorithm, step for step, on fixed-point jiffies modulo 2^48, from a new
    /// row's budget time (0).
    fn admitted(config: &BudgetConfig, arrivals_jiffies: &[u64]) -> Vec<bool> {
        let mut time = 0;
        arrivals_jiffies
            .iter()
            .map(|t| {
                let now = (t << BUDGET_TIME_SHIFT) & BUDGET_TIME_MASK;
                let ahead = budget_ahead(time, now, config.tolerance + config.interval);
                let within = ahead <= config.tolerance;
                if within {
                    time = budget_time_kept(now + ahead + config.interval);
                }
                within
            })
            .collect()
    }

    #[test]
    fn a_burst_gets_the_threshold_then_one_per_interval() {
        let budget = ImageCreateBudget::of_policy(Some(60), true, true).unwrap();
        let config = budget.kernel_config(250);
        // 70 creates at once: 60 admitted, 10 refused.
        let verdicts = admitted(&config, &[1_000; 70]);
        assert_eq!(verdicts.iter().filter(|v| **v).count(), 60);
        assert!(verdicts[..60].iter().all(|v| *v) && verdicts[60..].iter().all(|v| !*v));
        // A second later (250 jiffies) one more fits.
        let mut times = vec![1_000; 60];
        times.extend([1_249, 1_250]);
        assert_eq!(admitted(&config, &times)[60..], [false, true]);
    }

    #[test]
    fn creates_within_the_threshold_every_minute_are_never_refused() {
        let budget = ImageCreateBudget::of_policy(Some(60), true, true).unwrap();
        for hz in [100, 250, 300, 1000] {
            let config = budget.kernel_config(hz);
            let minute = 60 * u64::from(hz);
            // 60 at the start of each minute, for ten minutes: 60 in every window of 60 s.
            let times: Vec<u64> = (0..10)
                .flat_map(|m| std::iter::repeat_n(5_000 + m * minute, 60))
                .collect();
            assert!(admitted(&config, &times).iter().all(|v| *v), "hz {hz}");
            // One a second, forever.
            let steady: Vec<u64> = (0..600).map(|s| 5_000 + s * u64::from(hz)).collect();
            assert!(admitted(&config, &steady).iter().all(|v| *v), "hz {hz}");
        }
        // Rates of several creates per tick keep their precision.
        let fast = ImageCreateBudget::of_policy(Some(60_000), true, true).unwrap();
        let config = fast.kernel_config(100);
        let times: Vec<u64> = (0..6_000).map(|i| 10 + i / 10).collect();
        assert!(admitted(&config, &times).iter().all(|v| *v));
    }

    #[test]
    fn the_budget_holds_across_the_wrap_of_its_time() {
        let budget = ImageCreateBudget::of_policy(Some(60), true, true).unwrap();
        let config = budget.kernel_config(1000);
        // Jiffies whose fixed-point time wraps 2^48 half a minute into the run: the 30th
        // create's time lands on 0 exactly.
        let wrap = 1u64 << (BUDGET_TIME_BITS - BUDGET_TIME_SHIFT);
        let start = 3 * wrap - 30_000;
        let mut times = vec![start; 70];
        times.extend([start + 999, start + 1_000]);
        let verdicts = admitted(&config, &times);
        assert_eq!(verdicts.iter().filter(|v| **v).count(), 61);
        assert_eq!(verdicts[70..], [false, true]);
        // One a second across the wrap: never refused.
        let steady: Vec<u64> = (0..120).map(|s| start + s * 1_000).collect();
        assert!(admitted(&config, &steady).iter().all(|v| *v));
    }

    #[test]
    fn a_time_no_budget_could_have_set_is_a_whole_budget() {
        let config = ImageCreateBudget::of_policy(Some(60), true, true)
            .unwrap()
            .kernel_config(250);
        let limit = config.tolerance + config.interval;
        let now = (5_000_000u64 << BUDGET_TIME_SHIFT) & BUDGET_TIME_MASK;
        // Spent: honoured.
        assert_eq!(budget_ahead(now + limit, now, limit), limit);
        // Past: nothing ahead.
        assert_eq!(budget_ahead(now - 1, now, limit), 0);
        // Further ahead than a budget goes (torn halves, a layout without the field, a
        // smaller budget since): whole.
        assert_eq!(budget_ahead(now + limit + 1, now, limit), 0);
        assert_eq!(budget_ahead(now ^ (1 << 40), now, limit), 0);
        // A whole wrap ago reads as now.
        assert_eq!(budget_ahead(now, now + (1 << BUDGET_TIME_BITS), limit), 0);
    }

    #[test]
    fn no_budget_without_a_threshold_or_when_switched_off() {
        assert_eq!(ImageCreateBudget::of_policy(None, true, true), None);
        assert_eq!(ImageCreateBudget::of_policy(Some(60), false, true), None);
        let monitor = ImageCreateBudget::of_policy(Some(1), true, false).unwrap();
        let config = monitor.kernel_config(250);
        assert_eq!(config.flags & BUDGET_ENFORCE, 0);
        assert_eq!(config.tolerance, 0, "a burst of one");
    }
}
