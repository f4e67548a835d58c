//! What a frame did to the XDP program's global counters, in the form packet tests compare:
//! the counters that changed and by how much, in index order.

use limiter_common::Counter;
use limiter_user::loader::{Counters, Limiter, Verdict};

/// The counters that changed between `before` and `after`, with their increase.
pub fn changes(before: &Counters, after: &Counters) -> Vec<(Counter, u64)> {
    after
        .since(before)
        .iter()
        .filter(|(_, n)| *n != 0)
        .collect()
}

/// `counters` as [`changes`] reports them: one each, a counter listed twice by two.
pub fn expected(counters: &[Counter]) -> Vec<(Counter, u64)> {
    let mut wanted: Vec<(Counter, u64)> = Vec::new();
    for c in counters {
        match wanted.iter_mut().find(|(w, _)| w == c) {
            Some((_, n)) => *n += 1,
            None => wanted.push((*c, 1)),
        }
    }
    wanted.sort_by_key(|(c, _)| *c as u32);
    wanted
}

/// Runs `frame` through the XDP program: asserts the verdict and that exactly `counters` went
/// up (one each, a counter listed twice by two), so a frame cannot do something its test does
/// not mention; returns the frame as the program left it.
pub fn check_run(
    limiter: &Limiter,
    frame: &[u8],
    verdict: Verdict,
    counters: &[Counter],
) -> Vec<u8> {
    let before = limiter.counters().expect("counters");
    let (got, out) = limiter.test_run_frame(frame).expect("test run");
    let after = limiter.counters().expect("counters");
    let text = String::from_utf8_lossy(frame);
    assert_eq!(got, verdict, "verdict for {text:?}");
    assert_eq!(
        changes(&before, &after),
        expected(counters),
        "counters for {text:?}"
    );
    out
}
