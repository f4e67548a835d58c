//! The daemon as the systemd unit runs it, without systemd (this host's PID 1 is not systemd,
//! and tests must not install units): the unit's capability bounding set, applied with
//! `setpriv`, is enough to load, pin, attach, adopt and change rules, and each capability in
//! it is needed; with `JOURNAL_STREAM` naming its stderr, as
//! systemd sets it, the daemon logs to journald's socket with every field as a journal field.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    daemon::{detach_and_check, limiter_binary, DaemonSetup, RunCommand},
    netns::Topology,
    require_kernel,
};

/// One test at a time: each attaches XDP and runs a daemon.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT_PIN_DIR: AtomicU32 = AtomicU32::new(0);
const START_DEADLINE: Duration = Duration::from_secs(20);

fn unit_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/glance-limiter.service");
    let unit = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    line.split_whitespace()
        .map(|cap| {
            cap.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("`{cap}` is not a CAP_ name"))
                .to_lowercase()
        })
        .collect()
}

/// `limiter run` started by a test, with the wrappers it asked for; stopped (SIGTERM, then
/// SIGKILL) and detached by its full-root `limiter detach` on drop.
struct Run {
    child: Option<Child>,
    run: RunCommand,
    pin_dir: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// `wrapper` goes between `nsenter --net=...` and the binary.
    fn start(topology: &Topology, wrapper: &[String], env: &[(&str, String)]) -> Run {
        let mut run = Run::prepare(topology);
        run.spawn(wrapper, env);
        run
    }

    /// Configuration and paths, no process yet; the stderr file exists.
    fn prepare(topology: &Topology) -> Run {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-service-")
            .tempdir()
            .expect("a temporary directory");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/glance-limiter-service-{}-{}",
            std::process::id(),
            NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let run = DaemonSetup::new(&topology.server, &[topology.server_iface])
            .run_command(dir.path(), &pin_dir);
        // A group root is not a member of: giving it the socket needs CAP_CHOWN.
        let config = fs::read_to_string(&run.config).unwrap();
        fs::write(&run.config, format!("socket_group = \"nogroup\"\n{config}")).unwrap();
        let stderr = dir.path().join("stderr.log");
        fs::write(&stderr, "").unwrap();
        Run {
            child: None,
            run,
            pin_dir,
            stderr,
            _dir: dir,
        }
    }

    fn spawn(&mut self, wrapper: &[String], env: &[(&str, String)]) {
        let (nsenter, rest) = self.run.argv.split_at(2);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let mut command = Command::new(&nsenter[0]);
        command
            .arg(&nsenter[1])
            .args(wrapper)
            .args(rest)
            .env("NO_COLOR", "1")
            .env("LIMITER_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start limiter run"));
    }

    /// Waits until the daemon answers `status`; `Err` with its log if it exits first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.cli(&["status"]).0 {
                return Ok(());
            }
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited with {status}: {}", self.log()));
            }
            assert!(Instant::now() < deadline, "no answer: {}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(limiter_binary())
            .arg("--socket")
            .arg(&self.run.socket)
            .args(args)
            .env_remove("LIMITER_LOG")
            .output()
            .expect("run limiter");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child, still unreaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop();
        detach_and_check(&limiter_binary(), &self.pin_dir);
    }
}

fn setpriv(capabilities: &[String]) -> Vec<String> {
    let bounding: Vec<String> = capabilities.iter().map(|c| format!("+{c}")).collect();
    // Root after exec gets exactly the bounding set, as under the unit.
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", bounding.join(",")),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    require_kernel!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capabilities = unit_capabilities();
    let topology = Topology::new();

    let mut run = Run::start(&topology, &setpriv(&capabilities), &[]);
    run.wait_ready()
        .unwrap_or_else(|e| panic!("with {capabilities:?} the daemon {e}"));
    let (ok, out) = run.cli(&["block", "192.0.2.9", "--ttl", "1m"]);
    assert!(ok, "block under {capabilities:?}: {out}");
    // A restart adopts the pins: reopens maps and swaps the program into the pinned link.
    run.stop();
    run.spawn(&setpriv(&capabilities), &[]);
    run.wait_ready()
        .unwrap_or_else(|e| panic!("restarted with {capabilities:?}, the daemon {e}"));
    let (ok, out) = run.cli(&["list"]);
    assert!(
        ok && out.contains("192.0.2.9/32"),
        "after the restart: {out}"
    );
    drop(run);

    // CAP_CHOWN because the configuration names a socket_group.
    for needed in ["bpf", "net_admin", "perfmon", "chown"] {
        let fewer: Vec<String> = capabilities
            .iter()
            .filter(|c| *c != needed)
            .cloned()
            .collect();
        let mut run = Run::start(&topology, &setpriv(&fewer), &[]);
        assert!(
            run.wait_ready().is_err(),
            "the daemon runs without CAP_{}: drop it from the unit",
            needed.to_uppercase()
        );
    }
}

/// Journal export format fields of one datagram: `NAME=value\n`, or `NAME\n` + 64-bit
/// little-endian length + value + `\n` for values that may hold newlines.
fn journal_fields(mut datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !datagram.is_empty() {
        let end = datagram
            .iter()
            .position(|&b| b == b'\n' || b == b'=')
            .unwrap();
        let name = String::from_utf8_lossy(&datagram[..end]).into_owned();
        if datagram[end] == b'=' {
            let rest = &datagram[end + 1..];
            let nl = rest.iter().position(|&b| b == b'\n').unwrap();
            fields.insert(name, String::from_utf8_lossy(&rest[..nl]).into_owned());
            datagram = &rest[nl + 1..];
        } else {
            let rest = &datagram[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            fields.insert(name, value);
            datagram = &rest[8 + len + 1..];
        }
    }
    fields
}

#[test]
fn under_systemd_logs_are_journal_fields() {
    require_kernel!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let topology = Topology::new();
    let journal_dir = tempfile::tempdir().unwrap();
    let journal = UnixDatagram::bind(journal_dir.path().join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // journald's socket is a fixed path: in a mount namespace of the daemon's own, ours is
    // mounted there (over a private /run, so the host's is untouched).
    let wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         mount --bind \"$0\" /run/systemd/journal && exec \"$@\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([journal_dir.path().display().to_string()])
    .collect();

    // JOURNAL_STREAM names the daemon's stderr, as systemd names the stream it connects.
    let mut run = Run::prepare(&topology);
    let meta = fs::metadata(&run.stderr).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    run.spawn(&wrapper, &[("JOURNAL_STREAM", stream)]);
    run.wait_ready()
        .unwrap_or_else(|e| panic!("the daemon {e}"));
    let (ok, out) = run.cli(&["block", "192.0.2.9", "--reason", "journal test"]);
    assert!(ok, "{out}");

    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0; 65536];
    while Instant::now() < deadline {
        if let Ok(n) = journal.recv(&mut buf) {
            events.push(journal_fields(&buf[..n]));
        }
        if events
            .iter()
            .any(|e| e.get("MESSAGE").is_some_and(|m| m == "manual rules"))
        {
            break;
        }
    }
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e.get("MESSAGE").is_some_and(|m| m == message))
            .unwrap_or_else(|| panic!("no `{message}` in the journal: {events:#?}"))
    };
    let running = find("glance-limiter running");
    assert_eq!(running["LIMITER_MODE"], "enforce");
    assert!(running["LIMITER_INTERFACES"].contains(topology.server_iface));
    // tracing-journald's mapping: info is `notice` (5), debug `info` (6).
    assert_eq!(running["PRIORITY"], "5", "info");
    assert_eq!(running["SYSLOG_IDENTIFIER"], "limiter");
    let manual = find("manual rules");
    assert_eq!(manual["LIMITER_REASON"], "journal test");
    assert_eq!(manual["LIMITER_ADDED"], "1");
    // Nothing went to stderr as text: the journal would have every line twice.
    assert_eq!(run.log(), "", "text on stderr under the journal");
}
