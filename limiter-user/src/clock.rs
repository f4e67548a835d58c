//! Time as the kernel program keeps it. The XDP program reads `jiffies` (the verifier inlines
//! `bpf_jiffies64`, while the nanosecond clocks cost a helper call per packet), so rule
//! deadlines and first/last-seen times are jiffies. A [`KernelClock`] pairs a jiffies reading
//! with the wall clock at one instant, plus the tick rate; conversions are pure functions of it.
//! Resolution is one tick (1–10 ms), far below any rule's lifetime.

use std::time::{Duration, SystemTime};

use limiter_common::NEVER;

/// The kernel's jiffies and the wall clock, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    pub wall: SystemTime,
    pub jiffies: u64,
    /// Ticks per second (the kernel's `HZ`).
    pub hz: u32,
}

impl KernelClock {
    /// The kernel deadline for a wall-clock expiry: [`NEVER`] for none, `0` (already expired)
    /// for a time not after now. Rounded up, so a rule never ends before its time.
    pub fn deadline(&self, expires: Option<SystemTime>) -> u64 {
        let Some(expires) = expires else {
            return NEVER;
        };
        match expires.duration_since(self.wall) {
            Ok(left) if !left.is_zero() => {
                let ticks = (left.as_nanos() * u128::from(self.hz)).div_ceil(1_000_000_000);
                let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
                // Keep NEVER reserved for "no expiry".
                self.jiffies.saturating_add(ticks).min(NEVER - 1)
            }
            _ => 0,
        }
    }

    /// The wall-clock time of a kernel timestamp (first/last seen, a deadline).
    pub fn wall_of(&self, jiffies: u64) -> SystemTime {
        let ticks_to_duration = |ticks: u64| {
            Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / u64::from(self.hz))
        };
        if jiffies <= self.jiffies {
            self.wall - ticks_to_duration(self.jiffies - jiffies)
        } else {
            self.wall + ticks_to_duration(jiffies - self.jiffies)
        }
    }

    /// Time left until a kernel deadline; `None` for [`NEVER`], zero once passed.
    pub fn remaining(&self, deadline: u64) -> Option<Duration> {
        if deadline == NEVER {
            return None;
        }
        let ticks = deadline.saturating_sub(self.jiffies);
        Some(Duration::from_nanos(
            ticks.saturating_mul(1_000_000_000) / u64::from(self.hz),
        ))
    }
}

/// Tick rates Linux is built with. A measured rate is snapped to the nearest.
pub const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];

/// The tick rate from two jiffies readings `elapsed` apart: the nearest known rate if within
/// 10 %, otherwise the measurement itself (a kernel built with an unusual HZ).
pub fn estimate_hz(jiffies_before: u64, jiffies_after: u64, elapsed: Duration) -> u32 {
    let measured = (jiffies_after.saturating_sub(jiffies_before)) as f64 / elapsed.as_secs_f64();
    let nearest = KNOWN_HZ
        .iter()
        .copied()
        .min_by(|a, b| {
            (f64::from(*a) - measured)
                .abs()
                .total_cmp(&(f64::from(*b) - measured).abs())
        })
        .expect("KNOWN_HZ is not empty");
    if (f64::from(nearest) - measured).abs() <= f64::from(nearest) * 0.1 {
        nearest
    } else {
        measured.round().max(1.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> KernelClock {
        KernelClock {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            jiffies: 5_000,
            hz: 250,
        }
    }

    #[test]
    fn no_expiry_is_never() {
        assert_eq!(clock().deadline(None), NEVER);
    }

    #[test]
    fn future_expiry_lands_that_many_ticks_ahead() {
        let c = clock();
        assert_eq!(
            c.deadline(Some(c.wall + Duration::from_secs(30))),
            5_000 + 30 * 250
        );
        // 1 ms is a quarter tick at 250 Hz: rounded up to a whole tick.
        assert_eq!(c.deadline(Some(c.wall + Duration::from_millis(1))), 5_001);
    }

    #[test]
    fn past_or_present_expiry_is_already_expired() {
        let c = clock();
        assert_eq!(c.deadline(Some(c.wall)), 0);
        assert_eq!(c.deadline(Some(c.wall - Duration::from_secs(1))), 0);
    }

    #[test]
    fn far_future_stays_below_never() {
        let c = clock();
        let far = c.wall + Duration::from_secs(u64::MAX / 1_000);
        let deadline = c.deadline(Some(far));
        assert!(deadline > c.jiffies && deadline < NEVER, "{deadline}");
    }

    #[test]
    fn kernel_timestamps_convert_back_to_wall_time() {
        let c = clock();
        assert_eq!(c.wall_of(4_750), c.wall - Duration::from_secs(1));
        assert_eq!(c.wall_of(5_500), c.wall + Duration::from_secs(2));
        assert_eq!(c.remaining(5_250), Some(Duration::from_secs(1)));
        assert_eq!(c.remaining(10), Some(Duration::ZERO));
        assert_eq!(c.remaining(NEVER), None);
    }

    #[test]
    fn hz_snaps_to_known_rates_and_keeps_unusual_ones() {
        let tenth = Duration::from_millis(100);
        assert_eq!(estimate_hz(0, 25, tenth), 250);
        assert_eq!(estimate_hz(0, 24, tenth), 250);
        assert_eq!(estimate_hz(0, 30, tenth), 300);
        assert_eq!(estimate_hz(0, 101, tenth), 1000);
        assert_eq!(estimate_hz(0, 10, tenth), 100);
        assert_eq!(estimate_hz(0, 52, tenth), 520);
    }
}
