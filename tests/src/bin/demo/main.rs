//! `cargo xtask demo`: the real Glance API behind the real daemon, in throwaway network
//! namespaces. A legitimate client lists and creates images; after a few seconds an attacker
//! floods image creates from another network. `limiter run --tui` shows the attacker climb
//! and get banned while the legitimate client keeps working; afterwards a table shows
//! Glance's images table growing during the flood and, after the ban, only by the legitimate
//! client's creates. `--headless` runs the daemon without its screen and prints progress line
//! by line (also the fallback without a terminal).
//!
//! `--proxy` tells the same story through HAProxy 2.6 (TLS frontend, `option forwardfor`, in
//! a namespace of its own): the daemon on Glance's node trusts HAProxy's address, so the
//! attacker's own address climbs and is banned, HAProxy relays the limiter's 429s to it, and
//! HAProxy itself is never banned (see `scene`).
//!
//! Everything is bounded in time and requests, and everything created (namespaces, Glance,
//! the daemon, its pins) is removed by a guard on exit, on Ctrl-C, SIGTERM or a closed
//! terminal, and on panic.

mod daemon;
mod intro;
mod scene;
mod signals;
mod timeline;
mod traffic;
mod view;

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
use limiter_tests::glance::RealGlance;
use serde_json::json;

use crate::{
    daemon::{DemoDaemon, Screen},
    scene::{Cast, Route, Scene},
    timeline::{Ban, Sample, Timeline},
    traffic::{Plan, Traffic, ATTACKER_IMAGE, LEGIT_IMAGE},
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
    /// Both clients reach Glance through HAProxy (TLS, option forwardfor), which the daemon
    /// trusts to name them.
    #[arg(long)]
    proxy: bool,
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
    let route = if args.proxy {
        Route::HaProxy
    } else {
        Route::Direct
    };
    capture_panics(screen);
    match panic::catch_unwind(AssertUnwindSafe(|| {
        run(screen, plan, route, args.report.as_deref())
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
/// reverse: the clients stop, the daemon stops and is detached, HAProxy stops, Glance stops,
/// the namespaces go.
fn run(screen: Screen, plan: Plan, route: Route, report: Option<&Path>) -> ExitCode {
    intro::print(screen, plan, Cast::of(route), IMAGE_CREATES_PER_MINUTE);
    let scene = Scene::new(route);
    let cast = scene.cast;
    let glance = scene.start_glance();
    let haproxy = scene.start_haproxy();
    let setup = scene
        .daemon_setup()
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
    let mut traffic = Traffic::start(&scene, plan);
    let mut timeline = Timeline::new(
        plan.attack_after.as_secs_f64(),
        cast.haproxy.map(|h| h.backend),
    );
    let end = watch(
        &mut daemon,
        &traffic,
        &glance,
        cast,
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
            "namespaces": scene.namespaces(),
            "pin_dir": daemon.pin_dir(),
            "daemon_dir": daemon.dir(),
            "glance_dir": glance.state_dir(),
            "haproxy_dir": haproxy.as_ref().map(|h| h.dir()),
        });
        write_report(path, &timeline, cast, end, resources);
    }
    let haproxy_too = if haproxy.is_some() { " HAProxy," } else { "" };
    println!(
        "Cleaning up: the clients, the daemon (and `limiter detach`),{haproxy_too} Glance, the \
         namespaces."
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
#[allow(clippy::too_many_arguments)]
fn watch(
    daemon: &mut DemoDaemon,
    traffic: &Traffic,
    glance: &RealGlance,
    cast: Cast,
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
            let rules = daemon.rules().unwrap_or_default();
            if timeline.ban.is_none() {
                timeline.ban = view::ban_of(&rules, cast.attacker)
                    .map(|rule| ban_from_rule(rule, started_wall, t));
            }
            let stats = daemon.stats().unwrap_or_default();
            let attacker = view::source_in(&stats, cast.attacker);
            let proxy = cast.haproxy.map(|h| h.backend);
            let images = glance.image_counts_by_name();
            let count = |name: &str| images.get(name).copied().unwrap_or(0);
            timeline.push(Sample {
                t: t.as_secs_f64(),
                traffic: traffic.counts(),
                images: images.values().sum(),
                attacker_images: count(ATTACKER_IMAGE),
                legit_images: count(LEGIT_IMAGE),
                banned: timeline.ban.is_some(),
                attacker_rate: attacker.image_creates_per_minute,
                attacker_via: attacker.via,
                proxy_rate: proxy.and_then(|p| view::source_in(&stats, p).image_creates_per_minute),
                proxy_rule: proxy.and_then(|p| view::block_covering(&rules, p)),
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

fn write_report(
    path: &Path,
    timeline: &Timeline,
    cast: Cast,
    end: End,
    resources: serde_json::Value,
) {
    let report = json!({
        "end": format!("{end:?}"),
        "attacker": cast.attacker,
        "legit": cast.legit,
        "haproxy": cast.haproxy.map(|h| json!({"frontend": h.frontend, "backend": h.backend})),
        "attack_starts": timeline.attack_starts,
        "image_creates_per_minute": IMAGE_CREATES_PER_MINUTE,
        "ban": timeline.ban,
        "outcome": timeline.outcome(),
        "proxy": timeline.proxy_outcome(),
        "samples": timeline.samples,
        "resources": resources,
    });
    let text = serde_json::to_string_pretty(&report).expect("the report is JSON");
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("demo: cannot write the report to {}: {e}", path.display());
    }
}
