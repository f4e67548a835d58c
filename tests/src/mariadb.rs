//! A private MariaDB server (Debian's mariadbd, installed by `cargo xtask setup`) for Glance
//! nodes that share one database, as a cloud's nodes share its galera cluster: its own data
//! directory (made by `mariadb-install-db`), socket and log in a temporary directory, listening
//! on an address inside a test namespace. It holds a `glance` database and a `glance` user
//! with a password, allowed from any address. On drop its process group is killed and the
//! directory removed, also when the test panics (which prints its error log).

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How long the server gets to accept connections (about a second here).
const START_DEADLINE: Duration = Duration::from_secs(30);
const SOCKET: &str = "mysqld.sock";
const ERROR_LOG: &str = "error.log";
pub const PORT: u16 = 3306;
pub const DATABASE: &str = "glance";
pub const USER: &str = "glance";

pub struct MariaDb {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
    password: String,
}

impl MariaDb {
    /// Initialises a data directory, starts mariadbd inside `ns` listening on `addr:3306`,
    /// waits (with a deadline) until it answers on its socket, and creates the `glance`
    /// database and user.
    pub fn start_in(ns: &Netns, addr: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-mariadb-")
            .tempdir()
            .expect("MariaDB's directory");
        let data = dir.path().join("data");
        // Root is the only account until `glance` exists; it logs in over the socket as the
        // operating system's root, which the tests are.
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--skip-test-db"]));
        let log = fs::File::create(dir.path().join("mariadbd.out")).expect("MariaDB's output");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join(SOCKET).display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                dir.path().join(ERROR_LOG).display()
            ))
            .arg(format!("--bind-address={addr}"))
            .arg(format!("--port={PORT}"))
            // mariadbd refuses to run as root unless told so.
            .args(["--user=root", "--skip-name-resolve", "--skip-log-bin"])
            // Small: a few Glance nodes' rows.
            .args(["--innodb-buffer-pool-size=32M", "--max-connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter mariadbd (cargo xtask setup): {e}"));
        // The guard exists before the wait: a failed start still kills it.
        let mut db = MariaDb {
            child,
            dir,
            addr: addr.to_owned(),
            password: format!("kit-{}", std::process::id()),
        };
        db.wait_ready();
        db.sql(&format!(
            "CREATE DATABASE {DATABASE}; \
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{pw}'; \
             GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{USER}'@'%';",
            pw = db.password
        ));
        db
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mariadbd exited ({status}) before answering:\n{}",
                    self.log_text()
                );
            }
            let ping = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["--user=root", "--connect-timeout=1", "ping"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ping.is_ok_and(|s| s.success()) {
                return;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "mariadbd did not answer within {START_DEADLINE:?}:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mysql+pymysql://glance:PASSWORD@ADDR/glance`: Glance's `[database] connection`.
    pub fn glance_url(&self) -> String {
        format!(
            "mysql+pymysql://{USER}:{}@{}:{PORT}/{DATABASE}",
            self.password, self.addr
        )
    }

    /// The address it listens on (port [`PORT`]).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs `statements` as root over the socket, in the `glance` database if it exists
    /// yet; their tab-separated output without column names, or a panic with the error.
    pub fn sql(&self, statements: &str) -> String {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--skip-column-names", "-e"])
            .arg(statements)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mariadb (cargo xtask setup): {e}"));
        assert!(
            out.status.success(),
            "mariadb -e {statements:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Images in the shared `glance` database that are not deleted.
    pub fn image_count(&self) -> u64 {
        let out = self.sql(&format!(
            "SELECT COUNT(*) FROM {DATABASE}.images WHERE deleted = 0"
        ));
        out.parse()
            .unwrap_or_else(|_| panic!("unexpected count: {out}"))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(SOCKET)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its error log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.path().join(ERROR_LOG)).unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("MariaDB error log:\n{}", self.log_text());
        }
        // No graceful shutdown: the data goes with the directory.
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (cargo xtask setup): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
