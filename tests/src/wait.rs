//! Waiting on an observable condition with a deadline: never a fixed sleep.

use std::{
    thread,
    time::{Duration, Instant},
};

/// How often a condition is looked at again.
const STEP: Duration = Duration::from_millis(25);

/// Retries `f` until it returns `Some`, panicking with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(started.elapsed() < deadline, "{what} within {deadline:?}");
        thread::sleep(STEP);
    }
}
