//! The real daemon, `limiter run`, as the demo's child process: in the server namespace
//! (`nsenter --net`, so the host's bpffs keeps the pins), with a configuration, state,
//! socket and log of its own and a pin directory unique to this run. With the screen it
//! owns the user's terminal (`--tui`); without, it logs to a file.
//!
//! The guard stops it (SIGTERM, then SIGKILL) and detaches the program (`limiter detach
//! --pin-dir`), also when the demo panics or is interrupted: a stopped daemon leaves the
//! program attached by design.

use std::{
    fs::File,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::daemon::{detach_and_check, limiter_binary, DaemonSetup};
use serde_json::Value;

/// The daemon answers once it has attached and polled once: about a second here.
const START_DEADLINE: Duration = Duration::from_secs(20);
const STOP_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// `limiter run --tui` on the inherited terminal.
    Tui,
    /// `limiter run`, its log in a file.
    Headless,
}

pub struct DemoDaemon {
    child: Option<Child>,
    screen: Screen,
    binary: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    log_file: PathBuf,
    /// Configuration, state, socket and log; removed after the daemon has stopped.
    dir: tempfile::TempDir,
}

impl DemoDaemon {
    pub fn start(setup: &DaemonSetup, screen: Screen) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-demo-")
            .tempdir()
            .expect("a temporary directory for the daemon");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/glance-limiter-demo-{}",
            std::process::id()
        ));
        let log_file = dir.path().join("limiter.log");
        let run = setup.run_command(dir.path(), &pin_dir);
        let mut command = Command::new(&run.argv[0]);
        command
            .args(&run.argv[1..])
            .env("LIMITER_LOG", "info")
            .env_remove("LIMITER_SOCKET");
        match screen {
            Screen::Tui => {
                command.arg("--tui").arg("--log-file").arg(&log_file);
            }
            Screen::Headless => {
                let log = File::create(&log_file).expect("create the daemon's log");
                // Its own process group: Ctrl-C reaches only the demo, which stops the
                // clients before the daemon. (The screen must stay in the terminal's
                // foreground group to read keys; raw mode makes Ctrl-C a key there.)
                command
                    .process_group(0)
                    .env("NO_COLOR", "1")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log handle"))
                    .stderr(log);
            }
        }
        let child = command.spawn().expect("start nsenter limiter run");
        DemoDaemon {
            child: Some(child),
            screen,
            binary: limiter_binary(),
            socket: run.socket,
            pin_dir,
            log_file,
            dir,
        }
    }

    /// Waits until the control socket answers; `Err` with the reason if the daemon exits or
    /// does not answer in time.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.cli(&["status"]).is_some() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!("the daemon exited at start ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the daemon did not answer within {START_DEADLINE:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How the daemon ended, once it has (with the screen: the user pressed q).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Every rule in force, as `limiter list --json` shows them; `None` if the daemon did
    /// not answer.
    pub fn rules(&self) -> Option<Vec<Value>> {
        let list: Value = serde_json::from_str(&self.cli(&["list", "--json"])?).ok()?;
        list["rules"].as_array().cloned()
    }

    /// What `limiter stats --json` shows: every source the daemon tracks, with its rates.
    pub fn stats(&self) -> Option<Value> {
        serde_json::from_str(&self.cli(&["stats", "--json"])?).ok()
    }

    /// `limiter --socket <this daemon's> ARGS`: its stdout if it succeeded. Output never
    /// reaches the terminal, which the screen may own.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("LIMITER_LOG")
            .stdin(Stdio::null())
            // Out of the terminal's reach: a Ctrl-C is the demo's to handle.
            .process_group(0)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM (the screen closes and gives the terminal back), SIGKILL if it lingers.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        let stopped = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break None,
            }
        };
        let clean = stopped.is_some_and(|s| s.success());
        if stopped.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.screen == Screen::Tui && !clean {
            restore_terminal();
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

impl Drop for DemoDaemon {
    fn drop(&mut self) {
        self.stop();
        detach_and_check(&self.binary, &self.pin_dir);
    }
}

/// A screen that did not close itself (killed, or died of a signal) leaves the terminal in
/// raw mode on the alternate screen: leave it, show the cursor, and let stty undo raw mode.
fn restore_terminal() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\x1b[?1049l\x1b[?25h");
    let _ = out.flush();
    let _ = Command::new("stty")
        .arg("sane")
        .stdin(Stdio::inherit())
        .status();
}
