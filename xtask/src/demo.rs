//! The demo lives in the test kit's crate (it reuses its namespaces and stand-in server).

use anyhow::{bail, Result};

use crate::cmd::{self, cargo, is_root};

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads XDP: run `cargo xtask demo` as root");
    }
    cmd::run(cargo().args([
        "run",
        "--release",
        "--locked",
        "-p",
        "limiter-tests",
        "--bin",
        "demo",
    ]))
}
