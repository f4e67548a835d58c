//! Every check, in the order that fails fastest: formatting, lints, then all tests. Kernel
//! tests (BPF_PROG_TEST_RUN, network namespaces) run inside `cargo test`; they need root and
//! fail in CI (`CI=true`) if they cannot run, and skip with a printed reason elsewhere. Last,
//! the Debian package is built from the debug build and checked (dist::verify).

use std::process::Command;

use anyhow::{bail, Result};

use crate::{
    cmd::{self, cargo, in_ci, is_root},
    dist,
};

pub fn run() -> Result<()> {
    if !is_root() {
        if in_ci() {
            bail!("CI must run the kernel tests, which need root; run `cargo xtask test` as root");
        }
        eprintln!("xtask: not root: kernel tests will print SKIPPED; run as root to run them");
    }
    // Without --workspace, cargo acts on the default members: everything but the BPF crate,
    // which only builds for its own target (checked just below).
    cmd::run(cargo().args(["fmt", "--all", "--check"]))?;
    cmd::run(cargo().args([
        "clippy",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The BPF crate is checked on its own target (it is no_std and not a default member).
    cmd::run(
        Command::new("cargo")
            .current_dir(cmd::workspace_root())
            .args([
                "+nightly",
                "clippy",
                "-p",
                "limiter-ebpf",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--locked", "--", "-D", "warnings"]),
    )?;
    // End-to-end tests run the `limiter` binary itself; build every binary first.
    cmd::run(cargo().args(["build", "--bins", "--locked"]))?;
    cmd::run(cargo().args(["test", "--locked", "--no-fail-fast"]))?;
    // The package from the debug build just made: the same layout and checks as a release
    // package, without an optimised build or compression (seconds, not minutes).
    dist::package(dist::Profile::Dev)?;
    eprintln!("xtask: all checks passed");
    Ok(())
}
