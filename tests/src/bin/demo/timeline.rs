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
    /// What the daemon counted for the attacker's address, in image creates a minute (when
    /// it tracked it and answered).
    pub attacker_rate: Option<u64>,
    /// The trusted proxy the daemon says the attacker's requests came through, if it says.
    pub attacker_via: Option<String>,
    /// Behind HAProxy: what the daemon counted for HAProxy's own address ...
    pub proxy_rate: Option<u64>,
    /// ... and the block rule covering it, if one ever did (it must not).
    pub proxy_rule: Option<String>,
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
    /// Of the refused, those answered 429 (behind HAProxy: the limiter's answer, relayed).
    pub attacker_throttled_after_ban: u64,
    /// From the last sample before the ban to the end.
    pub legit_failed_after_ban: u64,
    pub legit_ok_after_ban: u64,
}

/// Behind HAProxy: what happened to HAProxy's own address over the whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyOutcome {
    pub address: String,
    pub samples: usize,
    /// Samples in which a block rule covered HAProxy, and the first such rule.
    pub covered_samples: usize,
    pub covering_rule: Option<String>,
    /// The most image creates a minute the daemon counted for HAProxy itself.
    pub max_rate: Option<u64>,
}

#[derive(Default)]
pub struct Timeline {
    pub samples: Vec<Sample>,
    pub ban: Option<Ban>,
    /// Seconds after the start the attacker begins.
    pub attack_starts: f64,
    /// HAProxy's backend address, when the clients come through it.
    pub proxy: Option<String>,
}

impl Timeline {
    pub fn new(attack_starts: f64, proxy: Option<&str>) -> Self {
        Timeline {
            attack_starts,
            proxy: proxy.map(str::to_owned),
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
        let throttled = match self.proxy {
            Some(_) => format!(" ({} with 429)", d.attacker_throttled),
            None => String::new(),
        };
        let mut line = format!(
            "{:>4.0} s  attacker creates {:>3} accepted {:>3} refused{throttled}   legit \
             requests {:>2} ok {:>2} failed   images {:>5} ({:+})",
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
                let via = match &now.attacker_via {
                    Some(via) => format!(" (via {via})"),
                    None => String::new(),
                };
                let _ = write!(line, "   {}{via} banned at {:.1} s", ban.prefix, ban.at);
                if self.proxy.is_some() {
                    line.push_str(&proxy_state(now));
                }
            }
            _ if now.t < self.attack_starts => line.push_str("   (attack starts soon)"),
            _ => {
                if let (Some(_), Some(rate)) = (&self.proxy, now.attacker_rate) {
                    let _ = write!(line, "   limiter: {rate}/min for the attacker");
                    line.push_str(&proxy_state(now));
                }
            }
        }
        line
    }

    /// A table, one row every `step` seconds (and the last sample), with the ban between the
    /// rows it falls between; then the outcome in words.
    pub fn summary(&self, step: u32) -> String {
        let mut out = String::new();
        let proxied = self.proxy.is_some();
        out.push_str(if proxied {
            concat!(
                "  time │ attacker creates (HAProxy) │ legitimate requests │ images in Glance\n",
                "       │ accepted  refused     429s │       ok    failed  │   total    new\n",
                "───────┼────────────────────────────┼─────────────────────┼─────────────────\n",
            )
        } else {
            concat!(
                "  time │ attacker creates  │ legitimate requests │ images in Glance\n",
                "       │ accepted  refused │       ok    failed  │   total    new\n",
                "───────┼───────────────────┼─────────────────────┼─────────────────\n",
            )
        });
        let mut ban_shown = false;
        let mut previous = Sample::default();
        for sample in self.rows(step) {
            if let Some(ban) = self.ban.as_ref().filter(|b| !ban_shown && sample.t > b.at) {
                let _ = writeln!(out, "───────┴── {:.1} s: {} banned ──", ban.at, ban.prefix);
                ban_shown = true;
            }
            let d = Delta::between(&previous, sample);
            let throttled = if proxied {
                format!(" {:>8}", d.attacker_throttled)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:>4.0} s │ {:>8} {:>8}{throttled} │ {:>8} {:>9}  │ {:>7} {:>6}",
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
        if proxied {
            let note = "429s: the refused creates answered \"429 Too Many Requests\" by the \
                        limiter in Glance's place, relayed by HAProxy.";
            out.push_str(&wrap(note, WIDTH));
            out.push_str("\n\n");
        }
        out.push_str(&self.outcome_text());
        if let Some(proxy) = self.proxy_outcome() {
            out.push_str(&wrap(&proxy_text(&proxy), WIDTH));
            out.push('\n');
        }
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
            attacker_throttled_after_ban: end.traffic.attacker_creates.throttled
                - after.traffic.attacker_creates.throttled,
            legit_failed_after_ban: legit_failed(end) - legit_failed(before),
            legit_ok_after_ban: legit_ok(end) - legit_ok(before),
        })
    }

    /// Behind HAProxy: whether a rule ever covered it, and what the daemon counted for it.
    pub fn proxy_outcome(&self) -> Option<ProxyOutcome> {
        let address = self.proxy.clone()?;
        let covered: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.proxy_rule.is_some())
            .collect();
        Some(ProxyOutcome {
            address,
            samples: self.samples.len(),
            covered_samples: covered.len(),
            covering_rule: covered.first().and_then(|s| s.proxy_rule.clone()),
            max_rate: self.samples.iter().filter_map(|s| s.proxy_rate).max(),
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
                 After the ban the attacker had {} creates accepted and {} refused ({}).\n\
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
                match self.proxy {
                    Some(_) => format!(
                        "{} of them answered 429 by the limiter in Glance's place, relayed by \
                         HAProxy",
                        o.attacker_throttled_after_ban
                    ),
                    None => "dropped by XDP before Glance saw them".to_owned(),
                },
                o.legit_ok_after_ban,
                o.legit_failed_after_ban,
            ),
        };
        text.lines().map(|l| wrap(l, WIDTH) + "\n").collect()
    }
}

/// The end of a progress line behind HAProxy: what the daemon counted for HAProxy itself, and
/// whether it is banned.
fn proxy_state(sample: &Sample) -> String {
    let rate = match sample.proxy_rate {
        Some(rate) => format!(" ({rate}/min)"),
        None => String::new(),
    };
    match &sample.proxy_rule {
        None => format!(", HAProxy{rate} not banned"),
        Some(rule) => format!(", HAProxy{rate} BANNED by {rule}"),
    }
}

/// The summary's last sentence behind HAProxy.
fn proxy_text(p: &ProxyOutcome) -> String {
    let counted = match p.max_rate {
        Some(rate) => format!(
            ", and the limiter counted at most {rate} image creates a minute for it (each \
             create counted for the client HAProxy named)"
        ),
        None => String::new(),
    };
    match &p.covering_rule {
        None => format!(
            "HAProxy ({}), which carried every request of both clients, was never banned: no \
             rule covered it in any of the {} samples{counted}.",
            p.address, p.samples
        ),
        Some(rule) => format!(
            "HAProxy ({}) WAS banned: {rule} covered it in {} of the {} samples, cutting off \
             every client behind it.",
            p.address, p.covered_samples, p.samples
        ),
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
    attacker_throttled: u64,
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
            attacker_throttled: tb.attacker_creates.throttled - ta.attacker_creates.throttled,
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
            throttled: 0,
        };
        s.traffic.legit_creates = Counts {
            ok: legit_ok,
            failed: 0,
            throttled: 0,
        };
        s.attacker_images = attacker_ok;
        s.legit_images = legit_ok;
        s.images = attacker_ok + legit_ok;
        s
    }

    fn banned_run() -> Timeline {
        let mut timeline = Timeline::new(2.0, None);
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

    /// The same run behind HAProxy: every refusal a 429 relayed by it, HAProxy counted at 0.
    fn banned_run_behind_haproxy() -> Timeline {
        let mut timeline = banned_run();
        timeline.proxy = Some("198.51.100.2".into());
        timeline.ban.as_mut().unwrap().prefix = "203.0.113.130/32".into();
        for s in &mut timeline.samples {
            s.traffic.attacker_creates.throttled = s.traffic.attacker_creates.failed;
            s.proxy_rate = Some(0);
            s.attacker_rate = Some(s.attacker_images);
        }
        timeline
    }

    #[test]
    fn behind_haproxy_the_table_counts_429s_and_haproxy_is_said_never_banned() {
        let timeline = banned_run_behind_haproxy();
        let summary = timeline.summary(2);
        assert!(summary.contains("accepted  refused     429s"), "{summary}");
        let row_8 = summary.lines().find(|l| l.starts_with("   8 s")).unwrap();
        let attacker: Vec<&str> = row_8
            .split('│')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(attacker, ["0", "6", "6"], "{summary}");
        let prose = summary.replace('\n', " ");
        assert!(
            prose.contains(
                "HAProxy (198.51.100.2), which carried every request of both clients, was \
                 never banned: no rule covered it in any of the 9 samples, and the limiter \
                 counted at most 0 image creates a minute for it"
            ),
            "{summary}"
        );
        assert!(prose.contains("6 of them answered 429"), "{summary}");
        assert_eq!(timeline.outcome().unwrap().attacker_throttled_after_ban, 6);
        let proxy = timeline.proxy_outcome().unwrap();
        assert_eq!((proxy.covered_samples, proxy.max_rate), (0, Some(0)));
        let line = timeline.progress_line();
        assert!(line.contains("3 refused (3 with 429)"), "{line}");
        assert!(
            line.ends_with("203.0.113.130/32 banned at 4.6 s, HAProxy (0/min) not banned"),
            "{line}"
        );
    }

    #[test]
    fn a_rule_covering_haproxy_is_reported() {
        let mut timeline = banned_run_behind_haproxy();
        for s in &mut timeline.samples[6..] {
            s.proxy_rule = Some("198.51.100.0/24".into());
        }
        let summary = timeline.summary(2).replace('\n', " ");
        assert!(
            summary.contains("HAProxy (198.51.100.2) WAS banned: 198.51.100.0/24 covered it in 3"),
            "{summary}"
        );
        assert!(timeline
            .progress_line()
            .ends_with("HAProxy (0/min) BANNED by 198.51.100.0/24"));
    }

    #[test]
    fn without_haproxy_there_is_no_429_column_and_no_word_of_it() {
        let summary = banned_run().summary(2);
        assert!(
            !summary.contains("429") && !summary.contains("HAProxy"),
            "{summary}"
        );
    }

    #[test]
    fn wrapping_breaks_at_spaces_only() {
        assert_eq!(wrap("aaa bbb ccc", 7), "aaa bbb\nccc");
        assert_eq!(wrap("a-very-long-word x", 4), "a-very-long-word\nx");
    }
}
