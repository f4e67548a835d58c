//! Benchmarks need root (they load BPF programs); the bench targets write target/bench/*.json,
//! then the charts of them are drawn into docs/bench/.

use anyhow::{bail, Result};

use crate::cmd::{self, cargo, is_root};

pub fn run(only: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("benchmarks load BPF programs and need root; run `cargo xtask bench` as root");
    }
    // Every benchmark of the test crate: xdp (per packet), daemon (polls), e2e (detection,
    // rule loading). Each writes its JSON under target/bench/.
    if !only.is_some_and(needs_only_bpf) {
        // The end-to-end benchmarks run the release binary.
        cmd::run(cargo().args(["build", "--release", "--bins", "--locked"]))?;
    }
    let mut bench = cargo();
    bench.args(["bench", "-p", "limiter-tests", "--locked"]);
    if let Some(name) = only {
        // One bench target; the charts below are drawn from whatever results are there.
        bench.args(["--bench", name]);
    }
    cmd::run(&mut bench)?;
    crate::plots::run()
}

/// Benchmarks that load BPF programs and nothing else (no Glance, no Debian tools): set-up
/// for them is the toolchain and bpffs, seconds instead of a Glance install on a fresh tree.
pub fn needs_only_bpf(name: &str) -> bool {
    matches!(name, "xdp" | "daemon")
}
