//! `cargo xtask soak`: the CI run, several times in a row, on a fresh clone, while a CPU hog
//! keeps every CPU busy. A suite that fails under load fails in CI at the worst time and hides
//! real regressions; this is how to find out before CI does.

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, is_root};

/// What a soak run was told.
pub struct SoakOptions {
    /// Runs that must pass in a row.
    pub runs: usize,
    /// CPU hog workers; 0 for none (default: one per CPU).
    pub hog_workers: Option<usize>,
}

/// `stress-ng`, killed (with its workers) on drop, also when a run fails or panics.
struct Hog(Child);

impl Hog {
    fn start(workers: usize) -> Result<Hog> {
        let child = Command::new("stress-ng")
            .args(["--cpu", &workers.to_string(), "--cpu-method", "matrixprod"])
            // Bounded: the soak never leaves a hog behind, even if this process is killed.
            .args(["--timeout", "4h", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start stress-ng (cargo xtask setup installs it)")?;
        Ok(Hog(child))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        // The whole process group: stress-ng's workers with it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

pub fn run(options: SoakOptions) -> Result<()> {
    if !is_root() {
        bail!("the soak runs the kernel tests, which need root; run `cargo xtask soak` as root");
    }
    let root = cmd::workspace_root();
    let clone = root.join("target/soak/clone");
    fresh_clone(&root, &clone)?;
    let workers = options
        .hog_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let _hog = if workers > 0 {
        eprintln!("xtask: soak: {workers} stress-ng CPU workers keep every CPU busy");
        Some(Hog::start(workers)?)
    } else {
        None
    };
    let mut durations = Vec::new();
    for run in 1..=options.runs {
        eprintln!(
            "xtask: soak: run {run} of {} (`bash .ci/run` with CI=true)",
            options.runs
        );
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(".ci/run")
            .current_dir(&clone)
            .env("CI", "true")
            .status()
            .context("run .ci/run in the clone")?;
        let took = started.elapsed();
        durations.push(took);
        if !status.success() {
            bail!(
                "soak: run {run} of {} failed after {} (passed before it: {}); the output above \
                 names the test",
                options.runs,
                minutes(took),
                run - 1
            );
        }
    }
    let list: Vec<String> = durations.iter().map(|d| minutes(*d)).collect();
    eprintln!(
        "xtask: soak passed: {} runs in a row under load ({})",
        options.runs,
        list.join(", ")
    );
    Ok(())
}

/// A clone of this checkout's HEAD with nothing built: what CI starts from (the clone's own
/// target directory stays between runs, as a CI cache would not; the first run builds all).
fn fresh_clone(root: &Path, clone: &Path) -> Result<()> {
    if clone.exists() {
        std::fs::remove_dir_all(clone).with_context(|| format!("remove {}", clone.display()))?;
    }
    std::fs::create_dir_all(clone.parent().expect("the clone has a parent"))?;
    cmd::run(
        Command::new("git")
            .args(["clone", "--quiet", "--no-local"])
            .arg(root)
            .arg(clone),
    )?;
    eprintln!(
        "xtask: soak: fresh clone of HEAD in {} (uncommitted changes are not in it)",
        clone.display()
    );
    Ok(())
}

fn minutes(d: Duration) -> String {
    format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
}
