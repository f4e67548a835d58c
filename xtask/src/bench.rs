//! Benchmarks need root (they load BPF programs); the bench targets write target/bench/*.json,
//! then the charts of them are drawn into docs/bench/.

use anyhow::{bail, Result};

use crate::cmd::{self, cargo, is_root};

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("benchmarks load BPF programs and need root; run `cargo xtask bench` as root");
    }
    // Every benchmark of the test crate: xdp (per packet), daemon (polls), e2e (detection,
    // rule loading). Each writes its JSON under target/bench/.
    cmd::run(cargo().args(["build", "--release", "--bins", "--locked"]))?;
    cmd::run(cargo().args(["bench", "-p", "limiter-tests", "--locked"]))?;
    crate::plots::run()
}
