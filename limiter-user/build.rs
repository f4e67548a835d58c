//! Compiles limiter-ebpf for the BPF target (nightly, build-std, bpf-linker) so that a plain
//! `cargo build` embeds the object. `cargo xtask setup` installs what this needs.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "limiter-ebpf")
        .ok_or_else(|| anyhow!("limiter-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("limiter-ebpf manifest has no parent directory"))?;
    // aya-build watches limiter-ebpf's own directory; the crates it uses from this workspace
    // (limiter-common's parsers and types) are compiled into the object too.
    for dependency in &ebpf.dependencies {
        if let Some(path) = &dependency.path {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    if which_bpf_linker().is_none() {
        println!(
            "cargo:warning=bpf-linker is not on PATH; run `cargo xtask setup` first (it builds \
             bpf-linker against the nightly toolchain's LLVM)"
        );
    }
    // aya-build relays everything the nested cargo prints as build-script warnings; keep that
    // to real diagnostics (compiler messages and errors still come through).
    // SAFETY: build scripts are single-threaded here; the variable is for the child cargo.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "limiter-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the XDP program failed; `cargo xtask setup` installs its toolchain")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
