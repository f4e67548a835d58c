//! The real OpenStack Glance API (32.0.0, SQLite, file store, no Keystone) running inside a
//! test namespace, installed by `cargo xtask setup` under target/glance/venv. The process
//! group is killed and the state directory removed on drop.

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
        assert!(
            Self::installed(),
            "real Glance is not installed at {}; run `cargo xtask setup`",
            Self::venv().display()
        );
        let venv = Self::venv();
        let dir = tempfile::Builder::new()
            .prefix("glance-limiter-glance-")
            .tempdir()
            .expect("state directory");
        write_config(dir.path(), &venv, bind_host, port);
        let conf = dir.path().join("glance-api.conf");
        let status = Command::new(venv.join("bin/glance-manage"))
            .arg("--config-file")
            .arg(&conf)
            .arg("db_sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run glance-manage");
        assert!(status.success(), "glance-manage db_sync failed");
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
        let glance = RealGlance { child, dir, venv };
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
                "glance-api did not become healthy within {START_DEADLINE:?}; see {}",
                glance.dir.path().join("glance-api.log").display()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Images in the database that are not deleted (a flood leaves them `queued`).
    pub fn image_count(&self) -> u64 {
        let out = self.query(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print(c.execute('select count(*) from images where deleted=0').fetchone()[0])",
        );
        out.parse()
            .unwrap_or_else(|_| panic!("unexpected count: {out}"))
    }

    /// Images not deleted, per image name (the demo names each client's images apart).
    pub fn image_counts_by_name(&self) -> BTreeMap<String, u64> {
        let out = self.query(
            "import json,sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             rows=c.execute('select name, count(*) from images where deleted=0 group by name'); \
             print(json.dumps({(name or ''): n for name, n in rows}))",
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("unexpected counts `{out}`: {e}"))
    }

    /// Runs a Python snippet with the database's path as its argument; its stdout, or a
    /// panic with its stderr.
    fn query(&self, script: &str) -> String {
        let db = self.dir.path().join("glance.sqlite");
        let out = Command::new(self.venv.join("bin/python"))
            .arg("-c")
            .arg(script)
            .arg(&db)
            // A Ctrl-C meant for the caller (the demo cleans up on it) must not fail a query.
            .process_group(0)
            .output()
            .expect("query the Glance database");
        assert!(
            out.status.success(),
            "querying {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
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

fn write_config(dir: &Path, venv: &Path, bind: &str, port: u16) {
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
         connection = sqlite:///{d}/glance.sqlite\n\
         [glance_store]\n\
         default_backend = fs1\n\
         [fs1]\n\
         filesystem_store_datadir = {d}/data/images/\n\
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
