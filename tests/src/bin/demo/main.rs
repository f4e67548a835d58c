//! `cargo xtask demo`: the real Glance API behind the real daemon, in throwaway network
//! namespaces. A legitimate client lists and creates images; after a few seconds an attacker
//! floods image creates from another network. `limiter run --tui` shows the attacker climb
//! and get banned while the legitimate client keeps working; afterwards a table shows
//! Glance's images table growing during the flood and, after the ban, only by the legitimate
//! client's creates. `--headless` runs the daemon without its screen and prints progress line
//! by line (also the fallback without a terminal).
//!
//! Everything is bounded in time and requests, and everything created (namespaces, Glance,
//! the daemon, its pins) is removed by a guard on exit, on Ctrl-C, SIGTERM or a closed
//! terminal, and on panic.

mod daemon;
mod signals;
mod timeline;
mod traffic;

use std::{
    io::IsTerminal,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Mutex,
    thread,
    time::{Duration, Instant, SystemTime},
};

use clap::Parser;
use limiter_tests::{daemon::DaemonSetup, glance::RealGlance, netns::AttackTopology};
use serde_json::json;

use crate::{
    daemon::{DemoDaemon, Screen},
    timeline::{Ban, Sample, Timeline},
    traffic::{Plan, Traffic, ATTACKER, ATTACKER_IMAGE, GLANCE_PORT, LEGIT, LEGIT_IMAGE},
};

/// The daemon's threshold, written into its configuration: below the default (60), so that
/// the ban comes within seconds even when a busy machine slows Glance's creates down, and
/// still twice the legitimate client's 20 a minute.
const IMAGE_CREATES_PER_MINUTE: u32 = 40;
/// What the two clients do: the attacker crosses the threshold about 2 s into its flood, so
/// the screen shows it climbing for a refresh or two before the ban.
const PLAN: Plan = Plan {
    attack_after: Duration::from_secs(5),
    attack_every: Duration::from_millis(50),
    legit_every: Duration::from_secs(1),
    legit_create_each: 3,
    duration: Duration::ZERO,
};
/// Long enough for the attack to start, be banned and be seen failing.
const MIN_DURATION: Duration = Duration::from_secs(15);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "glance-limiter against an image-create flood on the real Glance API, in \
             throwaway network namespaces (needs root; run through `cargo xtask demo`)"
)]
struct Args {
    /// No screen: run `limiter run` without --tui and print progress line by line.
    #[arg(long)]
    headless: bool,
    /// How long the demo runs [default: 60s with the screen, 30s headless; at least 15s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Also write what the demo saw as JSON to this file (the CI test reads it).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The duration was over.
    Duration,
    /// The user quit the screen (q).
    Quit,
    /// The daemon stopped by itself (an error: see its log).
    DaemonStopped,
    Signal(i32),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "demo: needs root: it creates network namespaces, attaches an XDP program and \
             pins BPF maps. Run `cargo xtask demo` as root."
        );
        return ExitCode::from(1);
    }
    if !RealGlance::installed() {
        eprintln!(
            "demo: the real Glance API is not installed at {}; run `cargo xtask setup`",
            RealGlance::venv().display()
        );
        return ExitCode::from(1);
    }
    let screen = choose_screen(args.headless);
    let duration = args.duration.unwrap_or(match screen {
        Screen::Tui => Duration::from_secs(60),
        Screen::Headless => Duration::from_secs(30),
    });
    if duration < MIN_DURATION {
        eprintln!("demo: --duration must be at least {MIN_DURATION:?}");
        return ExitCode::from(2);
    }
    signals::install();
    let plan = Plan { duration, ..PLAN };
    capture_panics(screen);
    match panic::catch_unwind(AssertUnwindSafe(|| {
        run(screen, plan, args.report.as_deref())
    })) {
        Ok(code) => code,
        // Every guard has run by now, and the terminal is the shell's again.
        Err(_) => {
            eprintln!(
                "demo failed: {}\nEverything it created has been removed.",
                take_panic_messages()
            );
            ExitCode::from(101)
        }
    }
}

/// The screen needs a terminal on both ends; without one the demo runs headless.
fn choose_screen(headless: bool) -> Screen {
    if headless {
        return Screen::Headless;
    }
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        return Screen::Tui;
    }
    println!("demo: no terminal here (stdin or stdout is not a tty): running headless.");
    Screen::Headless
}

static PANIC_MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// While the screen owns the terminal, a panic message printed at once would vanish with the
/// alternate screen: keep every message and print it once the guards have run.
fn capture_panics(screen: Screen) {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if screen == Screen::Headless {
            default_hook(info);
        }
        if let Ok(mut messages) = PANIC_MESSAGES.lock() {
            messages.push(info.to_string());
        }
    }));
}

fn take_panic_messages() -> String {
    PANIC_MESSAGES
        .lock()
        .map(|mut m| m.drain(..).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// The whole demo. Guards are declared in the order things are built, so they drop in
/// reverse: the clients stop, the daemon stops and is detached, Glance stops, the namespaces
/// go.
fn run(screen: Screen, plan: Plan, report: Option<&Path>) -> ExitCode {
    print_introduction(screen, plan);
    let topo = AttackTopology::new();
    let glance = RealGlance::start_for(&topo, GLANCE_PORT);
    let setup = DaemonSetup::new(&topo.server, &topo.server_ifaces())
        .policy(
            "image_creates_per_minute",
            &IMAGE_CREATES_PER_MINUTE.to_string(),
        )
        .policy("ban_ttl", "10m");
    let mut daemon = DemoDaemon::start(&setup, screen);
    if let Err(problem) = daemon.wait_ready() {
        daemon.stop();
        eprintln!("demo: {problem}; its log:\n{}", daemon.log());
        return ExitCode::from(1);
    }
    if let Some(signal) = signals::received() {
        println!("demo: {} received: cleaning up", signals::name(signal));
        return exit_code(End::Signal(signal), None);
    }

    let started = Instant::now();
    let started_wall = SystemTime::now();
    let mut traffic = Traffic::start(&topo, plan);
    let mut timeline = Timeline::new(plan.attack_after.as_secs_f64());
    let end = watch(
        &mut daemon,
        &traffic,
        &glance,
        &mut timeline,
        (started, started_wall),
        screen,
        plan.duration,
    );
    traffic.stop();
    // The screen closes here and gives the terminal back.
    daemon.stop();

    match end {
        End::Signal(signal) => println!("\ndemo: {} received", signals::name(signal)),
        End::Quit => println!("\ndemo: screen closed"),
        End::DaemonStopped => eprintln!(
            "\ndemo: the daemon stopped on its own; its log:\n{}",
            daemon.log()
        ),
        End::Duration => println!(),
    }
    let step = if plan.duration <= Duration::from_secs(30) {
        2
    } else {
        5
    };
    println!("What happened, every {step} s since the clients started:\n");
    println!("{}", timeline.summary(step));
    if let Some(path) = report {
        let resources = json!({
            "namespaces": [topo.server.name(), topo.attacker.ns.name(), topo.legit.ns.name()],
            "pin_dir": daemon.pin_dir(),
            "daemon_dir": daemon.dir(),
            "glance_dir": glance.state_dir(),
        });
        write_report(path, &timeline, end, resources);
    }
    println!(
        "Cleaning up: the clients, the daemon (and `limiter detach`), Glance, the namespaces."
    );
    exit_code(end, timeline.ban.as_ref())
}

fn exit_code(end: End, ban: Option<&Ban>) -> ExitCode {
    match end {
        End::Signal(signal) => ExitCode::from(128 + signal as u8),
        End::DaemonStopped => ExitCode::from(1),
        End::Duration if ban.is_none() => ExitCode::from(1),
        End::Duration | End::Quit => ExitCode::SUCCESS,
    }
}

/// Samples every second until the duration is over, the user quits the screen, the daemon
/// stops, or a signal arrives.
fn watch(
    daemon: &mut DemoDaemon,
    traffic: &Traffic,
    glance: &RealGlance,
    timeline: &mut Timeline,
    (started, started_wall): (Instant, SystemTime),
    screen: Screen,
    duration: Duration,
) -> End {
    let mut next_sample = started;
    loop {
        if let Some(signal) = signals::received() {
            return End::Signal(signal);
        }
        if let Some(status) = daemon.exited() {
            return match screen {
                Screen::Tui if status.success() => End::Quit,
                _ => End::DaemonStopped,
            };
        }
        if Instant::now() >= next_sample {
            let t = started.elapsed();
            if timeline.ban.is_none() {
                timeline.ban = daemon
                    .block_rule(ATTACKER)
                    .map(|rule| ban_from_rule(&rule, started_wall, t));
            }
            let images = glance.image_counts_by_name();
            let count = |name: &str| images.get(name).copied().unwrap_or(0);
            timeline.push(Sample {
                t: t.as_secs_f64(),
                traffic: traffic.counts(),
                images: images.values().sum(),
                attacker_images: count(ATTACKER_IMAGE),
                legit_images: count(LEGIT_IMAGE),
                banned: timeline.ban.is_some(),
            });
            if screen == Screen::Headless {
                println!("{}", timeline.progress_line());
            }
            if t >= duration {
                return End::Duration;
            }
            next_sample += SAMPLE_EVERY;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The ban as the daemon recorded it; its time from the rule's creation (the sample that saw
/// it, if the time cannot be read).
fn ban_from_rule(rule: &serde_json::Value, started_wall: SystemTime, seen: Duration) -> Ban {
    let at = rule["created_at"]
        .as_str()
        .and_then(|text| humantime::parse_rfc3339(text).ok())
        .and_then(|created| created.duration_since(started_wall).ok())
        .unwrap_or(seen);
    Ban {
        prefix: rule["prefix"].as_str().unwrap_or("?").to_owned(),
        reason: rule["reason"].as_str().unwrap_or("?").to_owned(),
        at: at.as_secs_f64(),
    }
}

fn write_report(path: &Path, timeline: &Timeline, end: End, resources: serde_json::Value) {
    let report = json!({
        "end": format!("{end:?}"),
        "attacker": ATTACKER,
        "legit": LEGIT,
        "attack_starts": timeline.attack_starts,
        "image_creates_per_minute": IMAGE_CREATES_PER_MINUTE,
        "ban": timeline.ban,
        "outcome": timeline.outcome(),
        "samples": timeline.samples,
        "resources": resources,
    });
    let text = serde_json::to_string_pretty(&report).expect("the report is JSON");
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("demo: cannot write the report to {}: {e}", path.display());
    }
}

fn print_introduction(screen: Screen, plan: Plan) {
    let seconds = plan.duration.as_secs();
    println!(
        "glance-limiter demo: the real OpenStack Glance API behind the real daemon, in\n\
         throwaway network namespaces.\n\n\
         \x20 Glance API    {server}:{GLANCE_PORT}, its images in SQLite\n\
         \x20 legit client  {LEGIT}: lists images every {legit_every} s, creates one every \
         {create_every} s\n\
         \x20               ({legit_rate:.0} a minute)\n\
         \x20 attacker      {ATTACKER}, another network: from {after} s on, image creates at\n\
         \x20               {attack_rate:.0} a second over one keep-alive connection\n\
         \x20 limiter run   on both of the server's links; bans a source at \
         {IMAGE_CREATES_PER_MINUTE} image\n\
         \x20               creates a minute (a demo setting; the default is 60)\n",
        server = AttackTopology::SERVER_V4,
        legit_every = plan.legit_every.as_secs(),
        create_every = plan.legit_every.as_secs() * plan.legit_create_each,
        legit_rate = plan.legit_creates_per_minute(),
        after = plan.attack_after.as_secs(),
        attack_rate = plan.attack_per_second(),
    );
    let what_next = match screen {
        Screen::Tui => format!(
            "The daemon's live screen takes over this terminal for {seconds} s; press q to \
             quit earlier. Watch the attacker's row: CREATES/MIN climbs, then it turns \
             \"banned\" and the header counts drops, while the legitimate client stays \"ok\". \
             Afterwards a table shows Glance's images table growing during the flood, then \
             only by the legitimate client's creates."
        ),
        Screen::Headless => format!(
            "No screen: one line a second for {seconds} s, then a table. Ctrl-C stops \
             early; everything is cleaned up either way."
        ),
    };
    println!("{}\n", timeline::wrap(&what_next, timeline::WIDTH));
    println!("Starting Glance and the daemon (a few seconds)...");
}
