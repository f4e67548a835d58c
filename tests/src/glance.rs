//! The real OpenStack Glance API (32.0.0, SQLite, file store, no Keystone) running inside a
//! test namespace, installed by `cargo xtask setup` under target/glance/venv. The process
//! group is killed and the state directory removed on drop.
//!
//! Several nodes of one cloud share their state instead ([`SharedBackend`]): a MariaDB
//! database (see `mariadb`), whose schema [`RealGlance::db_sync`] creates once, and one image
//! store directory, as nodes share a database cluster and an NFS or Ceph store.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    http::{connect_from, request},
    netns::{AttackTopology, Netns},
};

/// How long Glance gets to answer its health check after starting (about 2 s here).
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct RealGlance {
    child: Child,
    dir: tempfile::TempDir,
    venv: PathBuf,
    /// The node's namespace: a shared database is queried from there.
    ns_path: PathBuf,
    shared: Option<SharedBackend>,
}

/// What several Glance nodes share: the database and the file store's image directory.
#[derive(Clone, Debug)]
pub struct SharedBackend {
    /// `[database] connection`, e.g. `mysql+pymysql://glance:PW@198.51.100.31:3306/glance`
    /// (`MariaDb::glance_url`).
    pub database_url: String,
    /// The `fs1` store's `filesystem_store_datadir`, the same on every node.
    pub image_dir: PathBuf,
}

impl RealGlance {
    /// The virtualenv `cargo xtask setup` creates.
    pub fn venv() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/glance/venv")
    }

    /// Whether Glance is installed; tests that need it fail with this hint if not.
    pub fn installed() -> bool {
        Self::venv().join("bin/glance-api").is_file()
    }

    /// Starts glance-api bound to `bind:port` inside `ns` and waits until `/healthcheck`
    /// answers from `probe_src` (an address of the same namespace or a peer one, reached
    /// through `probe_ns`).
    pub fn start_in(ns: &Netns, bind: &str, port: u16, probe_ns: &Netns, probe_src: &str) -> Self {
        Self::start_bound(ns, bind, port, probe_ns, probe_src, bind)
    }

    /// Starts glance-api on `[::]:port` in the server namespace of `topo` (both links, both
    /// families), probed from the legitimate network's third address, which no client of
    /// the tests, benchmarks or demo uses, before any daemon counts traffic.
    pub fn start_for(topo: &AttackTopology, port: u16) -> Self {
        Self::start_bound(
            &topo.server,
            "::",
            port,
            &topo.legit.ns,
            AttackTopology::LEGIT_V4[2],
            AttackTopology::SERVER_V4,
        )
    }

    /// Starts glance-api bound to `bind_host:port` inside `ns` and waits until `/healthcheck`
    /// answers at `probe_dst` from `probe_src` in `probe_ns`. `bind_host` may be a wildcard:
    /// `"::"` listens on every IPv6 and (the namespace's `bindv6only` being 0) IPv4 address,
    /// `"0.0.0.0"` on every IPv4 one.
    pub fn start_bound(
        ns: &Netns,
        bind_host: &str,
        port: u16,
        probe_ns: &Netns,
        probe_src: &str,
        probe_dst: &str,
    ) -> Self {
        Self::start_with(ns, bind_host, port, probe_ns, probe_src, probe_dst, None)
    }

    /// As [`start_bound`](Self::start_bound), but on a database and image store shared with
    /// other nodes. The schema must exist already ([`db_sync`](Self::db_sync), once for all
    /// nodes); `ns` must reach the database.
    pub fn start_shared(
        ns: &Netns,
        bind_host: &str,
        port: u16,
        probe_ns: &Netns,
        probe_src: &str,
        probe_dst: &str,
        shared: &SharedBackend,
    ) -> Self {
        Self::start_with(
            ns,
            bind_host,
            port,
            probe_ns,
            probe_src,
            probe_dst,
            Some(shared.clone()),
        )
    }

    /// Creates Glance's schema in the shared database `database_url` with `glance-manage
    /// db_sync`, run inside `ns` (which must reach the database), from a configuration of
    /// its own that is removed afterwards.
    pub fn db_sync(ns: &Netns, database_url: &str) {
        Self::assert_installed();
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-glance-sync-")
            .tempdir()
            .expect("db_sync's directory");
        let shared = SharedBackend {
            database_url: database_url.to_owned(),
            image_dir: dir.path().join("data/images"),
        };
        write_config(dir.path(), &Self::venv(), "127.0.0.1", 9292, Some(&shared));
        db_sync(Some(ns), &Self::venv(), dir.path());
    }

    fn assert_installed() {
        assert!(
            Self::installed(),
            "real Glance is not installed at {}; run `cargo xtask setup`",
            Self::venv().display()
        );
    }

    fn start_with(
        ns: &Netns,
        bind_host: &str,
        port: u16,
        probe_ns: &Netns,
        probe_src: &str,
        probe_dst: &str,
        shared: Option<SharedBackend>,
    ) -> Self {
        Self::assert_installed();
        let venv = Self::venv();
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-glance-")
            .tempdir()
            .expect("state directory");
        write_config(dir.path(), &venv, bind_host, port, shared.as_ref());
        let conf = dir.path().join("glance-api.conf");
        if shared.is_none() {
            // SQLite: a file of this node's own, reached from any namespace.
            db_sync(None, &venv, dir.path());
        }
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(venv.join("bin/glance-api"))
            .arg("--config-file")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the workers die with it.
            .process_group(0)
            .spawn()
            .expect("start glance-api");
        let glance = RealGlance {
            child,
            dir,
            venv,
            ns_path: ns.path(),
            shared,
        };
        let started = Instant::now();
        loop {
            let healthy = probe_ns.run(|| {
                connect_from(probe_src, probe_dst, port, Duration::from_secs(1))
                    .and_then(|mut s| request(&mut s, "GET", "/healthcheck", ""))
                    .is_ok_and(|status| status == 200)
            });
            if healthy {
                return glance;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "glance-api did not become healthy within {START_DEADLINE:?}; its log:\n{}",
                glance.log_text()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Images in the database that are not deleted (a flood leaves them `queued`); with a
    /// shared database, every node's.
    pub fn image_count(&self) -> u64 {
        let out = self.query("print(rows('select count(*) from images where deleted=0')[0][0])");
        out.parse()
            .unwrap_or_else(|_| panic!("unexpected count: {out}"))
    }

    /// Images not deleted, per image name (the demo names each client's images apart).
    pub fn image_counts_by_name(&self) -> BTreeMap<String, u64> {
        let out = self.query(
            "import json; \
             counts=rows('select name, count(*) from images where deleted=0 group by name'); \
             print(json.dumps({(name or ''): n for name, n in counts}))",
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("unexpected counts `{out}`: {e}"))
    }

    /// Runs a Python snippet that may call `rows(SQL)` (a list of tuples) on this node's
    /// database; its stdout, or a panic with its stderr. A shared database is queried from
    /// the node's namespace.
    fn query(&self, script: &str) -> String {
        let (mut cmd, db, prelude) = match &self.shared {
            None => (
                Command::new(self.venv.join("bin/python")),
                self.dir.path().join("glance.sqlite").display().to_string(),
                "import sqlite3,sys\n\
                 def rows(q): return sqlite3.connect(sys.argv[1]).execute(q).fetchall()\n",
            ),
            Some(shared) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", self.ns_path.display()))
                    .arg(self.venv.join("bin/python"));
                (
                    cmd,
                    shared.database_url.clone(),
                    "import pymysql,sys,urllib.parse as p\n\
                     u=p.urlsplit(sys.argv[1])\n\
                     def rows(q):\n \
                     c=pymysql.connect(host=u.hostname,port=u.port or 3306,user=u.username,\
                     password=p.unquote(u.password),database=u.path[1:]).cursor()\n \
                     c.execute(q)\n \
                     return c.fetchall()\n",
                )
            }
        };
        let out = cmd
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .arg(&db)
            // A Ctrl-C meant for the caller (the demo cleans up on it) must not fail a query.
            .process_group(0)
            .output()
            .expect("query the Glance database");
        assert!(
            out.status.success(),
            "querying {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far (`log_file`): one line per request it served, among others.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("log/glance-api.log")).unwrap_or_default()
    }

    /// Its access-log lines for `METHOD PATH` answered with `status`: eventlet's lines, such
    /// as `203.0.113.100,198.51.100.1 - - [date] "GET /v2/images HTTP/1.1" 200 832 0.03`
    /// (the `X-Forwarded-For` value, then the peer that connected).
    pub fn access_log(&self, method: &str, path: &str, status: u16) -> Vec<String> {
        let needle = format!("\"{method} {path} HTTP/1.1\" {status} ");
        self.log_text()
            .lines()
            .filter(|l| l.contains("eventlet.wsgi.server") && l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RealGlance {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; whatever is left of the group goes now.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `glance-manage db_sync` with the configuration in `dir`, inside `ns` if given; panics with
/// its output on failure.
fn db_sync(ns: Option<&Netns>, venv: &Path, dir: &Path) {
    let manage = venv.join("bin/glance-manage");
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", ns.path().display()))
                .arg(&manage);
            cmd
        }
        None => Command::new(&manage),
    };
    let out = cmd
        .arg("--config-file")
        .arg(dir.join("glance-api.conf"))
        .arg("db_sync")
        .stdin(Stdio::null())
        .output()
        .expect("run glance-manage");
    assert!(
        out.status.success(),
        "glance-manage db_sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_config(dir: &Path, venv: &Path, bind: &str, port: u16, shared: Option<&SharedBackend>) {
    for sub in [
        "log",
        "data/cache",
        "data/images",
        "data/staging",
        "data/tasks",
        "lock",
    ] {
        fs::create_dir_all(dir.join(sub)).expect("Glance state directories");
    }
    let paste = venv.join("etc/glance/glance-api-paste.ini");
    fs::copy(&paste, dir.join("glance-api-paste.ini"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", paste.display()));
    let d = dir.display();
    let (database, images) = match shared {
        Some(s) => (s.database_url.clone(), s.image_dir.display().to_string()),
        None => (
            format!("sqlite:///{d}/glance.sqlite"),
            format!("{d}/data/images"),
        ),
    };
    let conf = format!(
        "[DEFAULT]\n\
         bind_host = {bind}\n\
         bind_port = {port}\n\
         workers = 2\n\
         log_file = {d}/log/glance-api.log\n\
         enabled_backends = fs1:file\n\
         image_cache_dir = {d}/data/cache\n\
         [paste_deploy]\n\
         flavor =\n\
         config_file = {d}/glance-api-paste.ini\n\
         [database]\n\
         connection = {database}\n\
         [glance_store]\n\
         default_backend = fs1\n\
         [fs1]\n\
         filesystem_store_datadir = {images}/\n\
         [os_glance_staging_store]\n\
         filesystem_store_datadir = {d}/data/staging/\n\
         [os_glance_tasks_store]\n\
         filesystem_store_datadir = {d}/data/tasks/\n\
         [oslo_concurrency]\n\
         lock_path = {d}/lock\n\
         [oslo_policy]\n\
         enforce_new_defaults = false\n\
         enforce_scope = false\n"
    );
    fs::write(dir.join("glance-api.conf"), conf).expect("write glance-api.conf");
}
