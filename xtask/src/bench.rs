//! Benchmarks need root (they load BPF programs); the bench targets write target/bench/*.json.

use anyhow::{bail, Result};

use crate::cmd::{self, cargo, is_root};

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("benchmarks load BPF programs and need root; run `cargo xtask bench` as root");
    }
    cmd::run(cargo().args(["bench", "-p", "limiter-tests", "--bench", "xdp", "--locked"]))?;
    Ok(())
}
