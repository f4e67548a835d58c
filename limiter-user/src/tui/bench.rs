//! Entry points for `cargo xtask bench` (issue 4's targets: a frame with 100k tracked
//! sources in under 10 ms; the process under 50 MB resident). Each builds its state from
//! [`super::fixtures`] and times only the step it names; run them in a release build.
//!
//! - [`frame_with_sources`]: build and draw one frame (render + ratatui's diff on a
//!   `TestBackend`), the whole per-frame cost of the UI thread;
//! - [`ingest_with_sources`]: apply one refresh (order, events, histories), once a second;
//! - [`decode_stats`]: decode a `stats` answer of N sources from its JSON line, which the
//!   refresh thread does once a second (off the UI thread);
//! - [`client_refresh`]: one whole refresh as `limiter top` makes it against a daemon (fetch,
//!   snapshot, apply), in wall time and in the CPU time of `limiter top`'s side.

use std::time::{Duration, Instant};

use ratatui::{backend::TestBackend, Terminal};

use super::{
    app::App,
    fixtures, render,
    snapshot::{Feed, Snapshot},
    update::{update, Action},
};
use crate::control::{
    client::decode_response,
    protocol::{RatesView, Reply, ResponseLine, SourceState, SourceView, Stats},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub mean: Duration,
    pub max: Duration,
}

fn time(iterations: u32, mut step: impl FnMut()) -> Timing {
    let mut total = Duration::ZERO;
    let mut max = Duration::ZERO;
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        step();
        let took = start.elapsed();
        total += took;
        max = max.max(took);
    }
    Timing {
        mean: total / iterations.max(1),
        max,
    }
}

/// Draws `app` `frames` times at its screen size. The selection moves one row per frame so
/// every frame has something to redraw.
pub fn time_frames(app: &mut App, frames: u32) -> Timing {
    let (width, height) = app.screen;
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(terminal) => terminal,
        Err(never) => match never {},
    };
    time(frames, || {
        update(app, Action::MoveSelection(1));
        let drawn = terminal.draw(|frame| render::render(frame, app));
        if let Err(never) = drawn {
            match never {}
        }
    })
}

/// One frame with `sources` tracked (and fetched) sources at `width`×`height`.
pub fn frame_with_sources(sources: usize, width: u16, height: u16, frames: u32) -> Timing {
    let mut app = fixtures::crowded_app(sources, width, height);
    time_frames(&mut app, frames)
}

/// Applying one refresh of `sources` sources to a warm state.
pub fn ingest_with_sources(sources: usize, refreshes: u32) -> Timing {
    let mut app = fixtures::crowded_app(sources, 200, 50);
    time_ingest(&mut app, sources, refreshes)
}

/// Feeds `app` `refreshes` snapshots of `sources` sources, one per step, timing each.
fn time_ingest(app: &mut App, sources: usize, refreshes: u32) -> Timing {
    let mut step = 2;
    let mut snapshots: Vec<Snapshot> = (0..refreshes.max(1))
        .map(|_| {
            step += 1;
            let (rows, rules) = fixtures::crowd(sources, step);
            Snapshot {
                taken: fixtures::at(step),
                elapsed: Duration::from_secs(step),
                status: Default::default(),
                tracked_sources: sources,
                truncated: false,
                matched: None,
                rows,
                rules,
                proxies: Vec::new(),
                unseen_proxies: Vec::new(),
            }
        })
        .collect();
    snapshots.reverse();
    time(refreshes, || {
        if let Some(snapshot) = snapshots.pop() {
            update(app, Action::Feed(Feed::Snapshot(Box::new(snapshot))));
        }
    })
}

/// The JSON line of a `stats` answer with `sources` sources, as the daemon sends it.
pub fn stats_line(sources: usize) -> Vec<u8> {
    let (rows, _) = fixtures::crowd(sources, 1);
    let views = rows
        .into_iter()
        .map(|row| SourceView {
            address: row.address,
            state: row.state,
            rates: RatesView { ..row.rates },
            totals: row.totals,
            banned_until: (row.state == SourceState::Banned)
                .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_748_772_600)),
            via: row.via,
            creates: None,
        })
        .collect();
    let response = ResponseLine::ok(Reply::Stats(Stats {
        tracked_sources: sources,
        sources: views,
        ..Stats::default()
    }));
    serde_json::to_vec(&response).unwrap_or_default()
}

/// Decoding a `stats` answer of `sources` sources into rows: (line length in bytes, timing).
pub fn decode_stats(sources: usize, iterations: u32) -> (usize, Timing) {
    let line = stats_line(sources);
    let timing = time(iterations, || {
        std::hint::black_box(decoded_rows(&line));
    });
    (line.len(), timing)
}

/// The rows of a `stats` answer, decoded as the client does. Panics on a line that does not
/// decode: a bench must time the real work, not a quick failure.
fn decoded_rows(line: &[u8]) -> Vec<super::snapshot::SourceRow> {
    match decode_response(line) {
        Ok(ResponseLine {
            result: Some(Reply::Stats(stats)),
            ..
        }) => super::snapshot::rows_from_stats(stats).1,
        other => panic!("the bench's stats line does not decode: {other:?}"),
    }
}

/// What decoding would cost if the response were decoded by the op that was sent, straight
/// into [`Stats`], instead of through the untagged [`Reply`] (which buffers the whole answer in
/// serde's generic tree first). For comparison in the report; the client does not do this.
pub fn decode_stats_typed(sources: usize, iterations: u32) -> Timing {
    /// Only the result: serde skips `version` and `ok`.
    #[derive(serde::Deserialize)]
    struct TypedStats {
        result: Option<Stats>,
    }
    let line = stats_line(sources);
    time(iterations, || {
        if let Ok(TypedStats {
            result: Some(stats),
            ..
        }) = serde_json::from_slice::<TypedStats>(&line)
        {
            std::hint::black_box(super::snapshot::rows_from_stats(stats));
        }
    })
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// One refresh as `limiter top` makes it over `transport`, `rounds` times: the three
/// requests with the screen's `query` (`None`: as before queries, the busiest
/// `max_sources`), the snapshot, and applying it to an 80×24 screen. Wall time, and the CPU
/// time of this thread: all of the client's work (encoding, decoding, applying), none of the
/// daemon's when it answers on other threads.
pub fn client_refresh(
    transport: &mut impl super::transport::Transport,
    max_sources: Option<usize>,
    query: Option<&super::snapshot::ScreenQuery>,
    rounds: u32,
) -> Result<(Timing, Timing), String> {
    let mut app = fixtures::crowded_app(0, 80, 24);
    let started = Instant::now();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let (t, c) = (Instant::now(), thread_cpu());
        let parts =
            super::poller::fetch(transport, max_sources, query).map_err(|e| e.to_string())?;
        let snapshot =
            parts.into_snapshot(std::time::SystemTime::now(), started.elapsed(), max_sources);
        update(&mut app, Action::Feed(Feed::Snapshot(Box::new(snapshot))));
        wall.push(t.elapsed());
        cpu.push(thread_cpu().saturating_sub(c));
    }
    let timing = |times: Vec<Duration>| Timing {
        mean: times.iter().sum::<Duration>() / times.len() as u32,
        max: times.iter().copied().max().unwrap_or_default(),
    };
    Ok((timing(wall), timing(cpu)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_runs_the_step_as_often_as_asked() {
        let mut runs = 0;
        let timing = time(3, || runs += 1);
        assert_eq!(runs, 3);
        assert!(timing.max >= timing.mean);
    }

    #[test]
    fn each_timed_frame_moves_the_selection_and_redraws() {
        let mut app = fixtures::crowded_app(1000, 80, 24);
        let before = app.selected;
        time_frames(&mut app, 3);
        assert_eq!(app.selected, before + 3);
    }

    #[test]
    fn each_timed_refresh_is_applied() {
        let mut app = fixtures::crowded_app(1000, 200, 50);
        let before = app.data.as_ref().map(|data| data.elapsed);
        time_ingest(&mut app, 1000, 2);
        let data = app.data.as_ref().expect("a snapshot was applied");
        assert_ne!(
            Some(data.elapsed),
            before,
            "the refreshes replaced the snapshot"
        );
        assert_eq!(data.rows.len(), 1000);
        assert_eq!(app.order.len(), 1000);
    }

    #[test]
    fn the_stats_line_decodes_into_every_source() {
        let line = stats_line(100);
        assert_eq!(decoded_rows(&line).len(), 100);
        let (bytes, _) = decode_stats(100, 1);
        assert_eq!(bytes, line.len());
    }
}
