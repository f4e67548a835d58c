//! `cargo xtask demo` end to end, headless (the binary the README's first command runs, with
//! the real Glance and the real daemon): the attacker is banned, the legitimate client is
//! served after the ban, Glance's images table stops growing but for the legitimate creates,
//! and nothing the demo created is left behind — after a normal end and after SIGTERM. With
//! `--proxy`, through the real HAProxy: the attacker is banned by its own address, HAProxy
//! relays the limiter's 429s to it, no rule ever covers HAProxy, and the legitimate client
//! never fails. The demo reports what it saw as JSON (`--report`), and lists what it created
//! there.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::glance::RealGlance;
use serde_json::Value;

const DEMO: &str = env!("CARGO_BIN_EXE_demo");
/// A request in flight when the rule arrived, or a create counted on either side of a
/// sample: how many images may appear beyond the legitimate client's own.
const SLACK: u64 = 2;

/// One demo at a time: each runs Glance, a daemon and three namespaces.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running demo with its output collected line by line. Dropped while it runs (a failing
/// test): SIGTERM, so that it cleans up as it would on Ctrl-C, then SIGKILL if it hangs.
struct DemoRun {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl DemoRun {
    fn start(args: &[&str]) -> Self {
        assert!(
            RealGlance::installed(),
            "real Glance is not installed at {}; run `cargo xtask setup`",
            RealGlance::venv().display()
        );
        let dir = tempfile::tempdir().expect("a directory for the report");
        let report = dir.path().join("report.json");
        let mut child = Command::new(DEMO)
            .args(args)
            .arg("--report")
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect_lines(child.stdout.take().expect("stdout"), &lines),
            collect_lines(child.stderr.take().expect("stderr"), &lines),
        ];
        DemoRun {
            child,
            lines,
            readers,
            report,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a line of output contains `needle`; panics with the output at the deadline.
    fn wait_for_line(&self, needle: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < until,
                "no line with `{needle}` within {deadline:?}:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the demo to exit; its status, its whole output and its report.
    fn wait(mut self, deadline: Duration) -> (ExitStatus, String, Value) {
        let until = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                break status;
            }
            assert!(
                Instant::now() < until,
                "the demo did not end within {deadline:?}:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(100));
        };
        for reader in self.readers.drain(..) {
            reader.join().ok();
        }
        let output = self.output();
        println!("--- demo output ---\n{output}\n--- end of demo output ---");
        let text = std::fs::read_to_string(&self.report)
            .unwrap_or_else(|e| panic!("no report ({e}); output:\n{output}"));
        let report = serde_json::from_str(&text).expect("the report is JSON");
        (status, output, report)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for DemoRun {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signal(libc::SIGTERM);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: the demo ignored SIGTERM for 30 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(
    pipe: impl std::io::Read + Send + 'static,
    lines: &Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<()> {
    let lines = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    })
}

fn u64_at(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}` in {value}"))
}

/// Everything the report lists as created is gone: namespaces, pins, the daemon's and
/// Glance's directories, and every process that ran from them.
fn assert_all_removed(report: &Value) {
    let resources = &report["resources"];
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    let names = resources["namespaces"].as_array().expect("namespaces");
    // Three without HAProxy, four with it.
    let expected = if resources["haproxy_dir"].is_string() {
        4
    } else {
        3
    };
    assert_eq!(names.len(), expected, "{resources}");
    for name in names {
        let name = name.as_str().expect("a name");
        assert!(
            !netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} is left:\n{netns}"
        );
    }
    let mut paths: Vec<&str> = ["pin_dir", "daemon_dir", "glance_dir"]
        .iter()
        .map(|key| resources[key].as_str().expect("a path"))
        .collect();
    paths.extend(resources["haproxy_dir"].as_str());
    for path in &paths {
        assert!(!Path::new(path).exists(), "{path} is left");
    }
    // The daemon's command line names its pin directory, Glance's and HAProxy's their
    // configuration files.
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for path in &paths {
            assert!(
                !cmdline.contains(path),
                "process {:?} is left: {cmdline}",
                entry.file_name()
            );
        }
    }
}

/// The headless demo from start to end: a ban, legitimate requests all served after it, and
/// Glance's images table growing after it only by the legitimate client's creates.
#[test]
fn headless_demo_bans_the_attacker_and_glance_stops_growing() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let demo = DemoRun::start(&["--headless", "--duration", "25s"]);
    let (status, output, report) = demo.wait(Duration::from_secs(90));
    assert!(status.success(), "the demo failed ({status}):\n{output}");
    assert_eq!(report["end"], "Duration");

    let ban = &report["ban"];
    assert!(ban.is_object(), "the attacker was not banned: {report}");
    assert_eq!(ban["prefix"], "198.51.100.2/32", "{ban}");
    let reason = ban["reason"].as_str().expect("a reason");
    assert!(reason.contains("image creates"), "{reason}");

    let outcome = &report["outcome"];
    assert!(outcome.is_object(), "no outcome: {report}");
    let end_t = outcome["end_t"].as_f64().unwrap();
    let after_ban_t = outcome["after_ban_t"].as_f64().unwrap();
    // The attack starts at 5 s and crosses the threshold about 2 s later, most of the run is
    // after the ban; a busy machine slows Glance's creates down and the ban comes later.
    assert!(
        end_t - after_ban_t >= 3.0,
        "at least 3 s watched after the ban: {outcome}"
    );
    // The flood got through until the ban: at least the threshold's worth of images.
    let threshold = u64_at(&report, "image_creates_per_minute");
    assert!(
        u64_at(outcome, "attacker_images_after_ban") >= threshold,
        "{outcome}"
    );
    assert_eq!(u64_at(outcome, "legit_failed_after_ban"), 0, "{outcome}");
    assert!(u64_at(outcome, "legit_ok_after_ban") >= 3, "{outcome}");
    assert_eq!(
        u64_at(outcome, "attacker_accepted_after_ban"),
        0,
        "{outcome}"
    );
    assert!(
        u64_at(outcome, "attacker_refused_after_ban") >= 3,
        "the attack went on against the ban: {outcome}"
    );
    // The images table: from a second after the ban, only the legitimate client's creates.
    let added = u64_at(outcome, "images_added_after_ban");
    let legit_creates = u64_at(outcome, "legit_creates_after_ban");
    assert!(
        added <= legit_creates + SLACK,
        "{added} images after the ban, {legit_creates} legitimate creates: {outcome}"
    );
    // One create every 3 s.
    assert!(legit_creates >= 1, "{outcome}");
    assert_eq!(
        u64_at(outcome, "attacker_images_added_after_ban"),
        0,
        "{outcome}"
    );

    // What a newcomer reads: a line a second, then the table and the outcome.
    assert!(output.contains("images in Glance"), "{output}");
    assert!(output.contains("banned"), "{output}");
    assert_all_removed(&report);
}

/// The headless demo through HAProxy: the limiter on Glance's node sees every connection
/// come from HAProxy, yet bans the attacker by its own address; HAProxy relays the limiter's
/// 429s to the attacker, is never covered by a rule, and the legitimate client behind the
/// same HAProxy never fails.
#[test]
fn headless_demo_through_haproxy_bans_the_attacker_and_never_haproxy() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let demo = DemoRun::start(&["--proxy", "--headless", "--duration", "20s"]);
    let (status, output, report) = demo.wait(Duration::from_secs(90));
    assert!(status.success(), "the demo failed ({status}):\n{output}");
    assert_eq!(report["end"], "Duration");

    let attacker = report["attacker"].as_str().expect("the attacker's address");
    let haproxy = report["haproxy"]["backend"]
        .as_str()
        .expect("HAProxy's backend address");
    assert_ne!(attacker, haproxy);
    let ban = &report["ban"];
    assert!(ban.is_object(), "the attacker was not banned: {report}");
    assert_eq!(ban["prefix"], format!("{attacker}/32"), "{ban}");
    let reason = ban["reason"].as_str().expect("a reason");
    assert!(
        reason.contains(attacker) && reason.contains("image creates"),
        "{reason}"
    );
    // The daemon counted the flood for the attacker's own address, up to the threshold.
    let samples = report["samples"].as_array().expect("samples");
    let rates = |key: &'static str| samples.iter().filter_map(move |s| s[key].as_u64());
    let threshold = u64_at(&report, "image_creates_per_minute");
    assert!(
        rates("attacker_rate").max() >= Some(threshold),
        "the attacker's rate never reached {threshold}: {samples:?}"
    );

    // HAProxy: no rule covered it at any sample, at any prefix length, and its own rate
    // stayed at 0 (when the daemon lists it among the sources at all).
    let proxy = &report["proxy"];
    assert_eq!(proxy["address"], haproxy, "{proxy}");
    assert_eq!(u64_at(proxy, "samples"), samples.len() as u64, "{proxy}");
    assert_eq!(u64_at(proxy, "covered_samples"), 0, "{proxy}");
    assert!(proxy["covering_rule"].is_null(), "{proxy}");
    assert!(rates("proxy_rate").all(|r| r == 0), "{samples:?}");

    // The legitimate client: every request served, from the first to the last.
    let end = &samples.last().expect("a sample")["traffic"];
    let (creates, reads) = (&end["legit_creates"], &end["legit_reads"]);
    assert_eq!(
        u64_at(creates, "failed") + u64_at(reads, "failed"),
        0,
        "{end}"
    );
    assert!(
        u64_at(creates, "ok") >= 3 && u64_at(reads, "ok") >= 6,
        "{end}"
    );

    // The attacker after the ban: refused with 429s relayed by HAProxy, and nothing of it
    // reached Glance's images table.
    let outcome = &report["outcome"];
    assert!(outcome.is_object(), "no outcome: {report}");
    assert_eq!(
        u64_at(outcome, "attacker_accepted_after_ban"),
        0,
        "{outcome}"
    );
    let throttled = u64_at(outcome, "attacker_throttled_after_ban");
    assert!(throttled >= 3, "{outcome}");
    assert_eq!(
        throttled,
        u64_at(outcome, "attacker_refused_after_ban"),
        "every refusal after the ban is a 429: {outcome}"
    );
    assert_eq!(
        u64_at(outcome, "attacker_images_added_after_ban"),
        0,
        "{outcome}"
    );

    // What a newcomer reads: the 429 column, and HAProxy's fate in words (wrapped).
    assert!(output.contains("429s"), "{output}");
    let prose = output.replace('\n', " ");
    assert!(
        prose.contains(&format!("HAProxy ({haproxy}), which carried"))
            && prose.contains("was never banned"),
        "{output}"
    );
    assert_all_removed(&report);
}

/// Without a terminal the demo says so and runs headless; SIGTERM (as from `kill`, or Ctrl-C
/// as SIGINT) ends it early through the same clean-up, with status 128 + 15.
#[test]
fn without_a_terminal_it_runs_headless_and_sigterm_cleans_up() {
    limiter_tests::require_kernel!();
    let _serial = serial();
    let demo = DemoRun::start(&["--duration", "60s"]);
    demo.wait_for_line("no terminal here", Duration::from_secs(5));
    // The daemon's first ban: the attack starts at 5 s and crosses the threshold about 2 s
    // later.
    demo.wait_for_line("banned at", Duration::from_secs(60));
    demo.signal(libc::SIGTERM);
    let (status, output, report) = demo.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{output}");
    assert!(output.contains("SIGTERM received"), "{output}");
    assert_eq!(report["end"], format!("Signal({})", libc::SIGTERM));
    assert!(report["ban"].is_object(), "{report}");
    assert_all_removed(&report);
}

/// Run by anyone else than root, the demo says what it needs and creates nothing.
#[test]
fn the_demo_refuses_to_run_without_root() {
    limiter_tests::require_kernel!();
    let out = Command::new(DEMO)
        .arg("--headless")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the demo as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing started");
}
