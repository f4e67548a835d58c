//! The live screen end to end, as a person on call would use it: the real daemon protecting
//! the stand-in Glance server in test namespaces, an attack under way, and the screen in a
//! real terminal (tmux, 120×40, `NO_COLOR=1`) driven with `send-keys` and read with
//! `capture-pane`.
//!
//! - `limiter top` attached to the daemon's socket: the attacker appears, turns banned, and
//!   unbanning it from the keyboard (filter, `u`, `y`) removes the rule from the kernel.
//! - `limiter run --tui`: the daemon's own screen shows the attack; `q` stops the daemon
//!   (exit 0) and leaves the program attached with its ban in force.
//!
//! Every wait polls the screen or the daemon with a deadline. Each test prints one screen
//! captured during the attack.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    daemon::{detach_and_check, host_prefix, limiter_binary, DaemonSetup},
    http::{
        connect_from, connection_flood, periodic_requests, FloodLimits, FloodLog, StandInServer,
        StopOnDrop, FLOOD_CONNECT_TIMEOUT,
    },
    netns::{AttackTopology, ClientNet},
    tmux::{find_line, Exit, TmuxSession},
};
use serde_json::Value;

const GLANCE_PORT: u16 = 9292;
const ATTACKER: &str = AttackTopology::ATTACKER_V4[0];
const LEGIT: &str = AttackTopology::LEGIT_V4[0];
/// The terminal: wide enough for the long headers and full IPv6 addresses.
const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;
/// A connect expected to be dropped gets this long: past a veth round trip, below the 1 s
/// SYN retransmission timeout (so it is one SYN).
const BLOCKED_CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
/// The screen's first data: the daemon answers within a refresh (1 s) of the TUI's start.
const FIRST_SCREEN: Duration = Duration::from_secs(10);
/// A change in the daemon is on screen within a poll and a refresh (1 s each); keys within a
/// frame. Generous for a loaded CI machine.
const ON_SCREEN: Duration = Duration::from_secs(8);

/// One test at a time: each creates namespaces, attaches XDP and runs a daemon. A panicking
/// test poisons the lock; the next still runs with its own fresh fixture.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A row of the sources table as text: the selection marker, the address, the six figures
/// (CONN/S CREATE/M WRITE/M READ/S PKT/S BYTE/S) and the state words.
#[derive(Debug)]
struct TableRow {
    selected: bool,
    figures: Vec<String>,
    state: String,
}

/// The table row of `address` on `screen`. Other lines that start with the address (the
/// detail pane's title) do not have six figures after it.
fn table_row(screen: &str, address: &str) -> Option<TableRow> {
    screen.lines().find_map(|line| {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let selected = words.first() == Some(&">");
        if selected {
            words.remove(0);
        }
        if words.first() != Some(&address) || words.len() < 8 {
            return None;
        }
        let figures = &words[1..7];
        if !figures
            .iter()
            .all(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        {
            return None;
        }
        Some(TableRow {
            selected,
            figures: figures.iter().map(|w| w.to_string()).collect(),
            state: words[7..].join(" "),
        })
    })
}

/// The line of the event log (`HH:MM:SS KIND SUBJECT ...`) of `kind` about `subject`.
fn event_line(screen: &str, kind: &str, subject: &str) -> Option<String> {
    screen
        .lines()
        .find(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.len() >= 3
                && words[0].len() == 8
                && words[0].chars().filter(|&c| c == ':').count() == 2
                && words[1] == kind
                && words[2] == subject
        })
        .map(str::to_owned)
}

/// `limiter --socket SOCKET ARGS`, from the host namespace.
fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(limiter_binary())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("LIMITER_LOG")
        .output()
        .expect("run limiter")
}

fn cli_json(socket: &Path, args: &[&str]) -> Value {
    let out = cli(socket, args);
    assert!(
        out.status.success(),
        "limiter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Every rule, from `limiter list --json`.
fn rules(socket: &Path) -> Vec<Value> {
    cli_json(socket, &["list", "--json"])["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `accept` holds for some value of `probe`; returns it, or panics with `what`.
fn wait_until<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < until, "{what}: not within {deadline:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// One new connection from `src` (one SYN within `timeout`): `true` if accepted, `false` if
/// it timed out (the SYN was dropped). Anything else (a refusal would mean the SYN got
/// through) fails the test.
fn connects(net: &ClientNet, src: &'static str, timeout: Duration) -> bool {
    let dst = net.server_addr_for(src);
    match net
        .ns
        .run(move || connect_from(src, dst, GLANCE_PORT, timeout))
    {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => false,
        Err(e) => panic!("connect from {src}: {e}"),
    }
}

/// A legitimate client reading every 250 ms on a new connection each time, for at most
/// 30 s; stopped by `stop`.
fn legit_reads(topo: &AttackTopology, stop: &Arc<AtomicBool>) -> thread::JoinHandle<FloodLog> {
    let dst = topo.legit.server_addr_for(LEGIT);
    let stop = stop.clone();
    topo.legit.ns.spawn(move || {
        let limits = FloodLimits {
            max_attempts: 120,
            max_duration: Duration::from_secs(30),
            stop_after_failures: None,
        };
        periodic_requests(
            LEGIT,
            dst,
            GLANCE_PORT,
            "GET",
            "/v2/images",
            "",
            Duration::from_millis(250),
            limits,
            &stop,
        )
    })
}

/// A connection flood from the attacker, one SYN every `pace`, bounded by `limits`.
fn attack(
    topo: &AttackTopology,
    pace: Duration,
    limits: FloodLimits,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<FloodLog> {
    let dst = topo.attacker.server_addr_for(ATTACKER);
    let stop = stop.clone();
    topo.attacker
        .ns
        .spawn(move || connection_flood(ATTACKER, dst, GLANCE_PORT, Some(pace), limits, &stop))
}

fn print_screen(title: &str, screen: &str) {
    println!("--- {title} ({WIDTH}x{HEIGHT}) ---\n{screen}--- end of screen ---");
}

/// `limiter top` in tmux against the daemon during a connection flood: the attacker appears,
/// its rate climbs, it turns banned; once the attack is over, the operator filters to it,
/// presses `u` and confirms, and the ban is gone from the daemon and the kernel.
///
/// Why the unban sticks (the policy must not ban it again before or during the assertions):
/// the only threshold the attack can reach is new connections, 5 a second averaged over the
/// last 10 s (50 SYNs in the window). A banned source's SYNs are dropped before they are
/// counted, so once the attack has stopped, the window empties 10 s after the ban at the
/// latest. The test waits until the daemon reports that window empty and only then unbans;
/// the probe connect afterwards puts one SYN in the window (0.1/s), far below the threshold.
/// The per-minute and per-hour thresholds count image creates and other writes, which this
/// attack never sends (the hour window would otherwise remember an attack for an hour and ban
/// again at the source's next packet), and the per-hour one is off besides. The test checks
/// the rule is still absent after the poll that counted the probe's SYN, the one that would
/// have banned again.
#[test]
fn limiter_top_shows_the_attack_and_unbans_from_the_keyboard() {
    limiter_tests::require_kernel!();
    limiter_tests::require_tmux!();
    // Dropped in reverse: the screen, the traffic, the daemon (stopped, detached), the
    // server, the namespaces, the lock.
    let _serial = serial();
    let started = Instant::now();
    let topo = AttackTopology::new();
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let daemon = DaemonSetup::new(&topo.server, &topo.server_ifaces())
        .policy("new_connections_per_second", "5")
        .policy("image_creates_per_hour", "off")
        .start();
    let socket = daemon.socket().display().to_string();
    let config = daemon.config_file().display().to_string();
    let top = TmuxSession::start(
        WIDTH,
        HEIGHT,
        &[("NO_COLOR", "1")],
        &[
            limiter_binary().display().to_string(),
            "top".into(),
            "--socket".into(),
            socket.clone(),
            // The daemon's own thresholds for the sparklines, as an operator would pass.
            "--config".into(),
            config,
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());

    let header = top.wait_for_line(&["glance-limiter", "port 9292", "enforce"], FIRST_SCREEN);
    assert!(header.contains("veth-attack"), "{header}");
    top.wait_for_line(&["Sources", "tracked"], ON_SCREEN);

    let legit = legit_reads(&topo, &stop);
    // 10 SYNs a second: the 10 s window reaches 50 (the threshold of 5/s) after 5 s, so the
    // attacker is on screen, climbing, for a few refreshes before the ban. It keeps going after
    // the ban (each dropped SYN waits 300 ms) until told to stop, so the screen shows drops.
    let flood = attack(
        &topo,
        Duration::from_millis(100),
        FloodLimits {
            max_attempts: 400,
            max_duration: Duration::from_secs(30),
            stop_after_failures: None,
        },
        &stop,
    );

    let before_ban = wait_until("the attacker on screen", ON_SCREEN, || {
        table_row(&top.capture(), ATTACKER)
    });
    println!("first seen at {:?}: {before_ban:?}", started.elapsed());
    assert!(
        !before_ban.state.starts_with("banned"),
        "seen before its ban: {before_ban:?}"
    );
    let banned = wait_until(
        "the attacker banned on screen",
        Duration::from_secs(20),
        || table_row(&top.capture(), ATTACKER).filter(|row| row.state.starts_with("banned")),
    );
    println!("banned on screen at {:?}: {banned:?}", started.elapsed());
    let rule = daemon
        .block_rule(&host_prefix(ATTACKER))
        .expect("the daemon has the ban the screen shows");
    assert_eq!(rule["origin"], "auto", "{rule}");
    // The ban is pinned on top: `g` selects it, and the detail pane shows its rule.
    top.send_keys(&["g"]);
    wait_until("the banned attacker selected", ON_SCREEN, || {
        table_row(&top.capture(), ATTACKER).filter(|row| row.selected)
    });
    // The attack goes on against the ban: the header counts the drops.
    let screen = top.wait_for_screen("drops during the attack", ON_SCREEN, |screen| {
        find_line(screen, &["drops/s"]).is_some_and(|line| !line.contains("drops/s 0 "))
            && table_row(screen, LEGIT).is_some()
    });
    print_screen("limiter top during the attack", &screen);
    assert!(
        find_line(&screen, &[&host_prefix(ATTACKER), "auto"]).is_some(),
        "the detail pane shows the rule behind the ban"
    );
    assert_eq!(table_row(&screen, LEGIT).expect("legit row").state, "ok");

    stop.store(true, Ordering::Relaxed);
    let log = flood.join().expect("flood thread");
    let first_failure = log.first_failure().expect("the attack was dropped");
    assert!(
        first_failure >= 30,
        "banned only after the window filled: {first_failure}"
    );
    assert_eq!(
        log.successes_from(first_failure),
        0,
        "dropped from the ban on"
    );

    // The attack is over; wait until the daemon's new-connection window holds none of it (see
    // the test's comment), which the screen shows as a rate of 0.
    wait_until(
        "the attacker's connection rate back to 0",
        Duration::from_secs(15),
        || {
            let stats = daemon.source_stats(ATTACKER)?;
            (stats["rates"]["new_connections_per_second"].as_f64() == Some(0.0)).then_some(())
        },
    );
    let calm = wait_until("a rate of 0 on screen", ON_SCREEN, || {
        table_row(&top.capture(), ATTACKER).filter(|row| row.figures[0] == "0")
    });
    assert!(calm.state.starts_with("banned"), "{calm:?}");

    // Select it as the docs say: filter to its address, keep the filter, then unban.
    top.send_keys(&["/"]);
    top.type_text(ATTACKER);
    top.send_keys(&["Enter"]);
    top.wait_for_line(&["Sources", &format!("filter {ATTACKER}")], ON_SCREEN);
    wait_until("the filtered attacker selected", ON_SCREEN, || {
        table_row(&top.capture(), ATTACKER).filter(|row| row.selected)
    });
    top.send_keys(&["u"]);
    let question = top.wait_for_line(&[&format!("Unban {}", host_prefix(ATTACKER))], ON_SCREEN);
    println!("asked: {}", question.trim());
    top.send_keys(&["y"]);
    let unbanned_at = Instant::now();
    top.wait_for_line(
        &[&format!("unban {}: 1 removed", host_prefix(ATTACKER))],
        ON_SCREEN,
    );

    // In the daemon and in the kernel: no rule, and the attacker's next connect is accepted.
    assert_eq!(
        rules(daemon.socket()),
        Vec::<Value>::new(),
        "limiter list --json after the unban"
    );
    assert!(
        connects(&topo.attacker, ATTACKER, FLOOD_CONNECT_TIMEOUT),
        "the attacker connects right after the unban"
    );
    println!(
        "unbanned and connected {:?} after pressing y",
        unbanned_at.elapsed()
    );
    // The poll that counts the probe's SYN is the one that would ban again: it did not.
    wait_until("the probe counted", Duration::from_secs(5), || {
        let stats = daemon.source_stats(ATTACKER)?;
        (stats["rates"]["new_connections_per_second"].as_f64() > Some(0.0)).then_some(())
    });
    assert_eq!(
        rules(daemon.socket()),
        Vec::<Value>::new(),
        "not banned again"
    );
    // The screen refreshes on its own clock: the row may turn `ok` one refresh before the
    // probe's SYN reaches its figures.
    let after = wait_until(
        "the attacker ok on screen, probe counted",
        ON_SCREEN,
        || {
            table_row(&top.capture(), ATTACKER)
                .filter(|row| row.state == "ok" && row.figures[0] != "0")
        },
    );
    assert_eq!(after.figures[0], "0.1", "one SYN in 10 s: {after:?}");
    top.send_keys(&["3"]);
    let events = top.wait_for_screen("the unban in the event log", ON_SCREEN, |screen| {
        event_line(screen, "unban", &host_prefix(ATTACKER)).is_some()
    });
    assert!(
        event_line(&events, "ban", &host_prefix(ATTACKER)).is_some_and(|l| l.contains("auto")),
        "the ban is in the event log too:\n{events}"
    );

    top.send_keys(&["q"]);
    assert_eq!(
        top.wait_for_exit(Duration::from_secs(5)),
        Some(Exit::Code(0)),
        "limiter top quits on q with status 0"
    );
    let reads = legit.join().expect("legitimate client");
    assert!(reads.attempts.len() >= 20, "{}", reads.attempts.len());
    assert_eq!(
        reads.failures(),
        0,
        "every legitimate read was served, all through the attack"
    );
    println!("took {:?}", started.elapsed());
}

static NEXT_PIN_DIR: AtomicU32 = AtomicU32::new(0);

/// `limiter run --tui` in a tmux pane: the daemon is the pane's process. Dropped: kills the
/// daemon if it still runs (SIGKILL: a stopped daemon leaves the same state behind), kills the
/// tmux server, detaches the program (`limiter detach --pin-dir`) and checks the pins are
/// gone; the temporary directory (configuration, state, socket, log) goes last.
struct TuiDaemon {
    screen: TmuxSession,
    socket: PathBuf,
    log_file: PathBuf,
    pin_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl TuiDaemon {
    fn start(setup: &DaemonSetup) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-tui-")
            .tempdir()
            .expect("a temporary directory for the daemon");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/glance-limiter-tui-{}-{}",
            std::process::id(),
            NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = dir.path().join("tui.log");
        let mut run = setup.run_command(dir.path(), &pin_dir);
        run.argv.extend([
            "--tui".into(),
            "--log-file".into(),
            log_file.display().to_string(),
        ]);
        let screen = TmuxSession::start(
            WIDTH,
            HEIGHT,
            &[("NO_COLOR", "1"), ("LIMITER_LOG", "info")],
            &run.argv,
        );
        TuiDaemon {
            screen,
            socket: run.socket,
            log_file,
            pin_dir,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

impl Drop for TuiDaemon {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if let Some(pid) = self.screen.pane_pid().filter(|_| self.screen.is_running()) {
            // SAFETY: signalling the pane's process, which tmux has not reaped (it runs).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            if self.screen.wait_for_exit(Duration::from_secs(5)).is_none() {
                eprintln!("warning: the daemon (pid {pid}) did not die of SIGKILL");
            }
        }
        if panicking {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
        detach_and_check(&limiter_binary(), &self.pin_dir);
    }
}

/// `limiter run --tui` in tmux: the daemon's own screen shows the header and the attacker,
/// which it bans; logs go to the file, never to the screen; `q` stops the daemon with status
/// 0, and the program stays attached with the ban in force until the guard detaches it.
#[test]
fn limiter_run_tui_shows_the_attack_and_q_stops_the_daemon() {
    limiter_tests::require_kernel!();
    limiter_tests::require_tmux!();
    let _serial = serial();
    let started = Instant::now();
    let topo = AttackTopology::new();
    let _server = StandInServer::start_in(&topo.server, GLANCE_PORT);
    let setup = DaemonSetup::new(&topo.server, &topo.server_ifaces())
        .policy("new_connections_per_second", "5");
    let daemon = TuiDaemon::start(&setup);
    let screen = &daemon.screen;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());

    let header = screen.wait_for_line(&["glance-limiter", "port 9292", "enforce"], FIRST_SCREEN);
    for iface in topo.server_ifaces() {
        assert!(header.contains(iface), "{header}");
    }
    let pid = screen.pane_pid().expect("the daemon's pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "limiter", "the pane's process is the daemon");
    // The control socket serves the CLI as usual while the screen is on.
    let status = cli_json(&daemon.socket, &["status", "--json"]);
    assert_eq!(status["mode"], "enforce", "{status}");

    let flood = attack(
        &topo,
        Duration::from_millis(10),
        FloodLimits {
            max_attempts: 3_000,
            max_duration: Duration::from_secs(15),
            stop_after_failures: Some(3),
        },
        &stop,
    );
    let banned = wait_until(
        "the attacker banned on screen",
        Duration::from_secs(15),
        || table_row(&screen.capture(), ATTACKER).filter(|row| row.state.starts_with("banned")),
    );
    println!("banned on screen at {:?}: {banned:?}", started.elapsed());
    let shown = screen.wait_for_screen("the ban in the header", ON_SCREEN, |s| {
        find_line(s, &["bans 1 (1 auto, 0 manual)"]).is_some()
    });
    print_screen("limiter run --tui during the attack", &shown);
    let log = flood.join().expect("flood thread");
    assert!(log.first_failure().is_some(), "the attack was dropped");

    // Logs go to the file only.
    let log_text = daemon.log();
    assert!(log_text.contains("glance-limiter running"), "{log_text}");
    assert!(
        log_text.contains("ban") && log_text.contains(&host_prefix(ATTACKER)),
        "{log_text}"
    );
    assert!(
        !shown.contains("INFO") && !shown.contains("glance-limiter running"),
        "no log line on the screen:\n{shown}"
    );

    screen.send_keys(&["q"]);
    assert_eq!(
        screen.wait_for_exit(Duration::from_secs(10)),
        Some(Exit::Code(0)),
        "q stops the daemon with status 0"
    );
    assert!(
        cli(&daemon.socket, &["status"]).status.code() == Some(1),
        "no daemon answers any more"
    );
    // The program stays attached and pinned, and the ban keeps dropping with no daemon.
    for iface in topo.server_ifaces() {
        assert!(
            daemon.pin_dir.join(format!("link-{iface}")).exists(),
            "link-{iface} stays pinned"
        );
        assert_eq!(topo.server.xdp_program_ids(iface).len(), 1, "{iface}");
    }
    assert!(
        !connects(&topo.attacker, ATTACKER, BLOCKED_CONNECT_TIMEOUT),
        "the ban applies with the daemon stopped"
    );
    assert!(
        connects(&topo.legit, LEGIT, BLOCKED_CONNECT_TIMEOUT),
        "the legitimate client is served"
    );
    let log_text = daemon.log();
    assert!(
        log_text.contains("the program stays attached"),
        "{log_text}"
    );
    println!("took {:?}", started.elapsed());
}

/// SIGTERM stops `limiter run --tui` as it stops `limiter run` (a service manager's stop, or
/// `kill`): the process exits with status 0, leaving the program attached.
#[test]
fn sigterm_stops_limiter_run_tui() {
    limiter_tests::require_kernel!();
    limiter_tests::require_tmux!();
    let _serial = serial();
    let topo = AttackTopology::new();
    let setup = DaemonSetup::new(&topo.server, &topo.server_ifaces());
    let daemon = TuiDaemon::start(&setup);
    daemon
        .screen
        .wait_for_line(&["glance-limiter", "port 9292", "enforce"], FIRST_SCREEN);
    let pid = daemon.screen.pane_pid().expect("the daemon's pid");
    // SAFETY: signalling the pane's process, which is alive (its screen just answered).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        daemon.screen.wait_for_exit(Duration::from_secs(5)),
        Some(Exit::Code(0)),
        "SIGTERM stops the daemon with status 0"
    );
    for iface in topo.server_ifaces() {
        assert!(daemon.pin_dir.join(format!("link-{iface}")).exists());
    }
}
