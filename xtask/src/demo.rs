//! The demo lives in the test kit's crate (it reuses its namespaces, the real Glance and the
//! daemon guards). It uses the debug build, the one `cargo xtask test` makes, so neither
//! command rebuilds what the other has built.

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, cargo, is_root};

/// Refused before anything is built: everything the demo does needs root.
pub fn check_root() -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces, attaches XDP and pins BPF maps: run \
             `cargo xtask demo` as root"
        );
    }
    Ok(())
}

/// Builds the binaries, then becomes the demo (`exec`): Ctrl-C and the terminal go straight
/// to it, and the shell prompt comes back only after its clean-up.
pub fn run(args: &[String]) -> Result<()> {
    cmd::run(cargo().args(["build", "--bins", "--locked"]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target"));
    let demo = target_dir.join("debug/demo");
    let error = Command::new(&demo).args(args).exec();
    Err(error).with_context(|| format!("cannot run {}", demo.display()))
}
