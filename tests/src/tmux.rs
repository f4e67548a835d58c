//! A real terminal for end-to-end tests of the live screen (`limiter top`, `limiter run
//! --tui`): a tmux server of the test's own, driven with `send-keys` and read with
//! `capture-pane`, as a person at the keyboard would use it.
//!
//! Each [`TmuxSession`] runs its own tmux server on a socket in a temporary directory (never
//! the user's server, never their `.tmux.conf`), with one session of a fixed size whose single
//! pane runs the command. Its guard kills the server (and so the pane's process, with SIGHUP)
//! and removes the socket on drop, also when the test panics; a panicking test first gets the
//! last screen printed. The pane stays after its process exits (`remain-on-exit`), so a test
//! can read the exit status.

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::privilege::in_ci;

static NEXT_SESSION: AtomicU32 = AtomicU32::new(0);

/// How often waits look at the screen again.
const SCREEN_POLL: Duration = Duration::from_millis(100);

/// Whether tmux can be run here. When it cannot: panics in CI (setup installs it), prints the
/// reason and returns `false` elsewhere.
pub fn tmux_available(test: &str) -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return true;
    }
    let reason = format!("{test}: needs tmux to drive a terminal, and it is not installed");
    if in_ci() {
        panic!("{reason}; CI must run this test (cargo xtask setup installs tmux)");
    }
    eprintln!("SKIPPED {reason}; install it (apt-get install tmux) or run `cargo xtask setup`");
    false
}

/// Skips (outside CI) the rest of a test that needs tmux.
#[macro_export]
macro_rules! require_tmux {
    () => {
        if !$crate::tmux::tmux_available(module_path!()) {
            return;
        }
    };
}

/// How a pane's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// One tmux session on a private server, with one pane running a command.
pub struct TmuxSession {
    name: String,
    socket: PathBuf,
    /// Holds the server's socket; removed after the server is killed.
    _dir: tempfile::TempDir,
}

impl TmuxSession {
    /// Starts `command` (run directly, not through a shell) in a detached session of
    /// `width`×`height` with `env` added to its environment.
    pub fn start(width: u16, height: u16, env: &[(&str, &str)], command: &[String]) -> Self {
        assert!(!command.is_empty(), "a command to run in the pane");
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-tmux-")
            .tempdir()
            .expect("a temporary directory for the tmux socket");
        let name = format!(
            "glance-limiter-tui-{}-{}",
            std::process::id(),
            NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
        );
        let session = TmuxSession {
            socket: dir.path().join("tmux.sock"),
            name,
            _dir: dir,
        };
        let (width, height) = (width.to_string(), height.to_string());
        let mut args: Vec<String> = ["new-session", "-d", "-s", &session.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["-x".into(), width, "-y".into(), height]);
        for (key, value) in env {
            args.extend(["-e".into(), format!("{key}={value}")]);
        }
        args.extend(command.iter().cloned());
        // In the same command list, so that it is set before the tmux server can notice the
        // command exit: the pane and its exit status stay.
        args.extend(
            [";", "set-option", "-g", "remain-on-exit", "on"]
                .iter()
                .map(|s| s.to_string()),
        );
        let out = session.tmux(&args);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        session
    }

    /// The session's name (unique to this process and session).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn tmux<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn tmux_ok(&self, args: &[&str]) -> String {
        let out = self.tmux(args);
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen, as text (`capture-pane -p`), one line per row.
    pub fn capture(&self) -> String {
        self.tmux_ok(&["capture-pane", "-p", "-t", &self.name])
    }

    /// `send-keys` with tmux key names or single characters: `["/"]`, `["Enter"]`, `["q"]`.
    pub fn send_keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        self.tmux_ok(&args);
    }

    /// Types `text` literally (`send-keys -l`), character by character as a person would.
    pub fn type_text(&self, text: &str) {
        self.tmux_ok(&["send-keys", "-t", &self.name, "-l", text]);
    }

    /// Waits until the screen satisfies `accept`; returns that screen. Panics at the deadline
    /// with `what` and the last screen.
    pub fn wait_for_screen(
        &self,
        what: &str,
        deadline: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        let until = Instant::now() + deadline;
        loop {
            let screen = self.capture();
            if accept(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < until,
                "the screen did not show {what} within {deadline:?}; last screen:\n{screen}"
            );
            thread::sleep(SCREEN_POLL);
        }
    }

    /// Waits until some line of the screen contains every one of `needles`; returns that line.
    pub fn wait_for_line(&self, needles: &[&str], deadline: Duration) -> String {
        let screen = self.wait_for_screen(&format!("a line with {needles:?}"), deadline, |s| {
            find_line(s, needles).is_some()
        });
        find_line(&screen, needles).expect("just found")
    }

    /// A format (`#{pane_pid}`) about the pane; `None` if tmux cannot say (no server).
    fn display(&self, format: &str) -> Option<String> {
        let out = self.tmux(&["display-message", "-p", "-t", &self.name, format]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The process id of the pane's command (also after it exited, while the pane stays).
    pub fn pane_pid(&self) -> Option<u32> {
        self.display("#{pane_pid}")?.parse().ok()
    }

    /// How the pane's command ended, once it has (and tmux has reaped it).
    ///
    /// tmux built with libutempter (Debian's 3.3a here) sometimes misses the SIGCHLD of a
    /// pane's command (half the exits in a trial here): the command stays a zombie and the dead
    /// pane has no status. utempter installs its own SIGCHLD handler for a moment, and a child
    /// that exits then is never reaped (tmux/tmux#311). Another SIGCHLD to the server makes it
    /// reap: a dead pane without a status gets one, which the next call sees.
    pub fn exit_status(&self) -> Option<Exit> {
        let text = self.display("#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}:#{pid}")?;
        match text.split(':').collect::<Vec<_>>()[..] {
            ["1", code, _, _] if !code.is_empty() => code.parse().ok().map(Exit::Code),
            ["1", _, signal, _] if !signal.is_empty() => signal.parse().ok().map(Exit::Signal),
            ["1", "", "", server] => {
                if let Ok(server) = server.parse::<libc::pid_t>() {
                    // SAFETY: a signal the tmux server handles (it reaps its children).
                    unsafe { libc::kill(server, libc::SIGCHLD) };
                }
                None
            }
            _ => None,
        }
    }

    /// Whether the pane's command still runs (without a tmux server, it does not).
    pub fn is_running(&self) -> bool {
        self.display("#{pane_dead}").is_some_and(|dead| dead != "1")
    }

    /// Waits until the pane's command has exited; how it ended, or `None` at the deadline.
    pub fn wait_for_exit(&self, deadline: Duration) -> Option<Exit> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(SCREEN_POLL);
        }
    }
}

impl Drop for TmuxSession {
    fn drop(&mut self) {
        if thread::panicking() {
            let out = self.tmux(&["capture-pane", "-p", "-t", &self.name]);
            eprintln!(
                "--- screen of tmux session {} ---\n{}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // Kills the session's pane (SIGHUP to its process) and the server, which exits.
        let out = self.tmux(&["kill-server"]);
        if !out.status.success() {
            eprintln!(
                "warning: tmux kill-server for {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The first line of `screen` that contains every one of `needles`.
pub fn find_line(screen: &str, needles: &[&str]) -> Option<String> {
    screen
        .lines()
        .find(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
}
