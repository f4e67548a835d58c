//! What the demo saw, one sample a second, and how it tells it: a progress line per sample
//! (headless), a table every few seconds at the end, and the outcome the CI test checks. Pure:
//! the main loop takes the samples.

use std::fmt::Write as _;

use serde::Serialize;

use crate::traffic::TrafficCounts;

/// How long after the ban the demo waits before it holds the images table to "no more
/// attacker images": the request in flight when the rule arrived may still complete.
pub const SETTLE: f64 = 1.0;

/// Everything at one instant, counted from the start of the traffic.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Seconds since the traffic started.
    pub t: f64,
    pub traffic: TrafficCounts,
    /// Images in Glance's table (not deleted): all, and each client's.
    pub images: u64,
    pub attacker_images: u64,
    pub legit_images: u64,
    /// Whether the daemon had banned the attacker.
    pub banned: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ban {
    pub prefix: String,
    pub reason: String,
    /// Seconds since the traffic started.
    pub at: f64,
}

/// What the numbers show, for the summary's last lines and the CI test.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The samples the comparison starts and ends at: the last before the ban, the first
    /// [`SETTLE`] after it, the last one.
    pub before_ban_t: f64,
    pub after_ban_t: f64,
    pub end_t: f64,
    pub images_before_ban: u64,
    pub attacker_images_before_ban: u64,
    /// At `after_ban_t`: what got in before the ban took hold.
    pub images_after_ban: u64,
    pub attacker_images_after_ban: u64,
    /// From `after_ban_t` to `end_t`.
    pub images_added_after_ban: u64,
    pub attacker_images_added_after_ban: u64,
    pub legit_creates_after_ban: u64,
    pub attacker_accepted_after_ban: u64,
    pub attacker_refused_after_ban: u64,
    /// From the last sample before the ban to the end.
    pub legit_failed_after_ban: u64,
    pub legit_ok_after_ban: u64,
}

#[derive(Default)]
pub struct Timeline {
    pub samples: Vec<Sample>,
    pub ban: Option<Ban>,
    /// Seconds after the start the attacker begins.
    pub attack_starts: f64,
}

impl Timeline {
    pub fn new(attack_starts: f64) -> Self {
        Timeline {
            attack_starts,
            ..Default::default()
        }
    }

    pub fn push(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    /// One line for the latest sample: what happened since the previous one.
    pub fn progress_line(&self) -> String {
        let Some(now) = self.samples.last() else {
            return String::new();
        };
        let before = self
            .samples
            .len()
            .checked_sub(2)
            .map(|i| self.samples[i].clone())
            .unwrap_or_default();
        let d = Delta::between(&before, now);
        let mut line = format!(
            "{:>4.0} s  attacker creates {:>3} accepted {:>3} refused   legit requests {:>2} ok \
             {:>2} failed   images {:>5} ({:+})",
            // Samples are taken at or just after their second: name them by it.
            now.t.floor(),
            d.attacker_accepted,
            d.attacker_refused,
            d.legit_ok,
            d.legit_failed,
            now.images,
            d.images
        );
        match &self.ban {
            Some(ban) if now.banned => {
                let _ = write!(line, "   {} banned at {:.1} s", ban.prefix, ban.at);
            }
            _ if now.t < self.attack_starts => line.push_str("   (attack starts soon)"),
            _ => {}
        }
        line
    }

    /// A table, one row every `step` seconds (and the last sample), with the ban between the
    /// rows it falls between; then the outcome in words.
    pub fn summary(&self, step: u32) -> String {
        let mut out = String::new();
        out.push_str(concat!(
            "  time │ attacker creates  │ legitimate requests │ images in Glance\n",
            "       │ accepted  refused │       ok    failed  │   total    new\n",
            "───────┼───────────────────┼─────────────────────┼─────────────────\n",
        ));
        let mut ban_shown = false;
        let mut previous = Sample::default();
        for sample in self.rows(step) {
            if let Some(ban) = self.ban.as_ref().filter(|b| !ban_shown && sample.t > b.at) {
                let _ = writeln!(out, "───────┴── {:.1} s: {} banned ──", ban.at, ban.prefix);
                ban_shown = true;
            }
            let d = Delta::between(&previous, sample);
            let _ = writeln!(
                out,
                "{:>4.0} s │ {:>8} {:>8} │ {:>8} {:>9}  │ {:>7} {:>6}",
                sample.t.floor(),
                d.attacker_accepted,
                d.attacker_refused,
                d.legit_ok,
                d.legit_failed,
                sample.images,
                format!("{:+}", d.images)
            );
            previous = sample.clone();
        }
        out.push('\n');
        out.push_str(&self.outcome_text());
        out
    }

    /// The samples shown in the table: the first, one per `step` seconds, the last.
    fn rows(&self, step: u32) -> Vec<&Sample> {
        // Samples come a little after each whole second: bucket them by the nearest one.
        let step = f64::from(step.max(1));
        let bucket = |s: &Sample| ((s.t + 0.5) / step).floor();
        let mut rows: Vec<&Sample> = Vec::new();
        for (i, sample) in self.samples.iter().enumerate() {
            let on_step = rows.last().is_none_or(|r| bucket(sample) > bucket(r));
            if on_step || i + 1 == self.samples.len() {
                rows.push(sample);
            }
        }
        rows
    }

    pub fn outcome(&self) -> Option<Outcome> {
        let ban = self.ban.as_ref()?;
        let end = self.samples.last()?;
        let before = self
            .samples
            .iter()
            .rev()
            .find(|s| s.t <= ban.at)
            .unwrap_or(&self.samples[0]);
        let after = self.samples.iter().find(|s| s.t >= ban.at + SETTLE)?;
        let legit_failed =
            |s: &Sample| s.traffic.legit_creates.failed + s.traffic.legit_reads.failed;
        let legit_ok = |s: &Sample| s.traffic.legit_creates.ok + s.traffic.legit_reads.ok;
        Some(Outcome {
            before_ban_t: before.t,
            after_ban_t: after.t,
            end_t: end.t,
            images_before_ban: before.images,
            attacker_images_before_ban: before.attacker_images,
            images_after_ban: after.images,
            attacker_images_after_ban: after.attacker_images,
            images_added_after_ban: end.images - after.images,
            attacker_images_added_after_ban: end.attacker_images - after.attacker_images,
            legit_creates_after_ban: end.traffic.legit_creates.ok - after.traffic.legit_creates.ok,
            attacker_accepted_after_ban: end.traffic.attacker_creates.ok
                - after.traffic.attacker_creates.ok,
            attacker_refused_after_ban: end.traffic.attacker_creates.failed
                - after.traffic.attacker_creates.failed,
            legit_failed_after_ban: legit_failed(end) - legit_failed(before),
            legit_ok_after_ban: legit_ok(end) - legit_ok(before),
        })
    }

    fn outcome_text(&self) -> String {
        let Some(end) = self.samples.last() else {
            return "No samples were taken.\n".into();
        };
        let (c, r) = (end.traffic.legit_creates, end.traffic.legit_reads);
        let legit = format!(
            "The legitimate client had {} requests served and {} failed",
            c.ok + r.ok,
            c.failed + r.failed
        );
        let text = match (&self.ban, self.outcome()) {
            (None, _) => format!(
                "The attacker was not banned in the {:.0} s the demo ran. Glance holds {} \
                 images ({} the attacker's). {legit}.",
                end.t, end.images, end.attacker_images
            ),
            (Some(ban), None) => format!(
                "The attack began at {:.0} s and was banned at {:.1} s ({}); the demo ended \
                 before what followed could be seen. Glance holds {} images ({} the \
                 attacker's). {legit}.",
                self.attack_starts, ban.at, ban.reason, end.images, end.attacker_images
            ),
            (Some(ban), Some(o)) => format!(
                "The attack began at {:.0} s and was banned {:.1} s later ({}).\n\
                 At {:.0} s Glance's images table held {} rows, {} of them the attacker's; \
                 from then to the end ({:.0} s) it grew by {}: the legitimate client created \
                 {}, the attacker {}.\n\
                 After the ban the attacker had {} creates accepted and {} refused (dropped \
                 by XDP before Glance saw them).\n\
                 {legit} ({} served and {} failed after the ban).",
                self.attack_starts,
                ban.at - self.attack_starts,
                ban.reason,
                o.after_ban_t,
                o.images_after_ban,
                o.attacker_images_after_ban,
                o.end_t,
                o.images_added_after_ban,
                o.legit_creates_after_ban,
                o.attacker_images_added_after_ban,
                o.attacker_accepted_after_ban,
                o.attacker_refused_after_ban,
                o.legit_ok_after_ban,
                o.legit_failed_after_ban,
            ),
        };
        text.lines().map(|l| wrap(l, WIDTH) + "\n").collect()
    }
}

/// Where prose is wrapped: readable in an 80-column terminal.
pub const WIDTH: usize = 78;

/// `text` with its spaces turned into line breaks where a line would pass `width`.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split(' ') {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    out
}

/// What happened between two samples.
struct Delta {
    attacker_accepted: u64,
    attacker_refused: u64,
    legit_ok: u64,
    legit_failed: u64,
    images: i64,
}

impl Delta {
    fn between(a: &Sample, b: &Sample) -> Self {
        let (ta, tb) = (&a.traffic, &b.traffic);
        Delta {
            attacker_accepted: tb.attacker_creates.ok - ta.attacker_creates.ok,
            attacker_refused: tb.attacker_creates.failed - ta.attacker_creates.failed,
            legit_ok: (tb.legit_creates.ok + tb.legit_reads.ok)
                - (ta.legit_creates.ok + ta.legit_reads.ok),
            legit_failed: (tb.legit_creates.failed + tb.legit_reads.failed)
                - (ta.legit_creates.failed + ta.legit_reads.failed),
            images: b.images as i64 - a.images as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Counts;

    /// A second of a run: the attacker's creates so far, the legitimate client's, images.
    fn sample(
        t: f64,
        attacker_ok: u64,
        attacker_failed: u64,
        legit_ok: u64,
        banned: bool,
    ) -> Sample {
        let mut s = Sample {
            t,
            banned,
            ..Default::default()
        };
        s.traffic.attacker_creates = Counts {
            ok: attacker_ok,
            failed: attacker_failed,
        };
        s.traffic.legit_creates = Counts {
            ok: legit_ok,
            failed: 0,
        };
        s.attacker_images = attacker_ok;
        s.legit_images = legit_ok;
        s.images = attacker_ok + legit_ok;
        s
    }

    fn banned_run() -> Timeline {
        let mut timeline = Timeline::new(2.0);
        timeline.push(sample(0.0, 0, 0, 1, false));
        timeline.push(sample(1.0, 0, 0, 1, false));
        timeline.push(sample(2.0, 0, 0, 1, false));
        timeline.push(sample(3.0, 20, 0, 2, false));
        timeline.push(sample(4.0, 40, 0, 2, false));
        timeline.push(sample(5.0, 61, 1, 2, true));
        timeline.push(sample(6.0, 61, 4, 3, true));
        timeline.push(sample(7.0, 61, 7, 3, true));
        timeline.push(sample(8.0, 61, 10, 4, true));
        timeline.ban = Some(Ban {
            prefix: "198.51.100.2/32".into(),
            reason: "image creates 61 in the last minute".into(),
            at: 4.6,
        });
        timeline
    }

    #[test]
    fn the_outcome_compares_from_one_second_after_the_ban() {
        let o = banned_run().outcome().expect("banned");
        assert_eq!((o.before_ban_t, o.after_ban_t, o.end_t), (4.0, 6.0, 8.0));
        assert_eq!(o.images_before_ban, 42);
        assert_eq!(o.images_added_after_ban, 1);
        assert_eq!(o.attacker_images_added_after_ban, 0);
        assert_eq!(o.legit_creates_after_ban, 1);
        assert_eq!(o.attacker_refused_after_ban, 6);
        assert_eq!(o.legit_ok_after_ban, 2);
    }

    #[test]
    fn the_table_has_a_row_per_step_and_the_ban_between_rows() {
        let summary = banned_run().summary(2);
        let rows: Vec<&str> = summary.lines().filter(|l| l.contains(" s │")).collect();
        let times: Vec<&str> = rows
            .iter()
            .map(|r| r.split(" s").next().unwrap().trim())
            .collect();
        assert_eq!(times, ["0", "2", "4", "6", "8"], "{summary}");
        let ban_line = summary.lines().position(|l| l.contains("banned")).unwrap();
        let row_6 = summary
            .lines()
            .position(|l| l.starts_with("   6 s"))
            .unwrap();
        assert_eq!(ban_line + 1, row_6, "{summary}");
        assert!(
            summary
                .replace('\n', " ")
                .contains("the legitimate client created 1, the attacker 0"),
            "{summary}"
        );
    }

    #[test]
    fn no_ban_is_said_plainly() {
        let mut timeline = banned_run();
        timeline.ban = None;
        assert!(timeline.summary(2).contains("was not banned in the 8 s"));
    }

    #[test]
    fn a_ban_at_the_very_end_is_reported_without_an_outcome() {
        let mut timeline = banned_run();
        timeline.ban.as_mut().unwrap().at = 7.5;
        assert!(timeline.outcome().is_none());
        let summary = timeline.summary(2);
        assert!(summary.contains("banned at 7.5 s"), "{summary}");
        assert!(!summary.contains("not banned"), "{summary}");
    }

    #[test]
    fn wrapping_breaks_at_spaces_only() {
        assert_eq!(wrap("aaa bbb ccc", 7), "aaa bbb\nccc");
        assert_eq!(wrap("a-very-long-word x", 4), "a-very-long-word\nx");
    }
}
