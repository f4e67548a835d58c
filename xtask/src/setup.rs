//! Idempotent set-up of a fresh machine: each step checks first and does nothing when done.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, is_root, succeeds};

/// bpf-linker release known to link against LLVM 21–23 (the nightly's LLVM is 22 here).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Commands the tests and benchmarks use, and the Debian package that provides each.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("nft", "nftables"),
    ("tmux", "tmux"),
    // `cargo xtask dist` and the package check in `cargo xtask test`.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
    ("systemd-analyze", "systemd"),
    // The HAProxy test kit: the load balancer in front of the real Glance, and the
    // self-signed certificate of its TLS frontend.
    ("haproxy", "haproxy"),
    ("openssl", "openssl"),
    // The kit's TLS client links the system OpenSSL (the `openssl` crate finds it with
    // pkg-config).
    ("pkg-config", "pkg-config"),
    // The cluster test kit: a three-member etcd and its command-line client (`ETCDCTL_API=3`),
    // the MariaDB that several Glance nodes share, and CPU load for the daemons' tests.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("mariadbd", "mariadb-server"),
    ("mariadb-install-db", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("stress-ng", "stress-ng"),
    // The `etcd-client` crate compiles etcd's .proto files at build time.
    ("protoc", "protobuf-compiler"),
];
/// Shell checks that fail without a Debian package, and the package: the real Glance's
/// virtualenv needs `ensurepip`, which Debian ships apart from Python; the test kit's TLS
/// client builds against OpenSSL's headers.
const DEBIAN_CHECKS: &[(&str, &str)] = &[
    ("python3 -m ensurepip --version", "python3-venv"),
    ("pkg-config --exists openssl", "libssl-dev"),
];
/// Files the tasks read, and the Debian package that provides each. `protoc` alone does not
/// ship the well-known protos that etcd's .proto files import.
const DEBIAN_FILES: &[(&str, &str)] = &[
    (crate::plots::FONT, "fonts-dejavu-core"),
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
];

pub fn run() -> Result<()> {
    toolchain()?;
    debian_packages()?;
    bpffs()?;
    glance()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// What building the project needs, and no more: the nightly's components and bpf-linker
/// (limiter-user's build script compiles the XDP program). `cargo xtask fuzz` needs only this.
pub fn toolchain() -> Result<()> {
    nightly_components()?;
    bpf_linker()
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context(
            "the nightly toolchain is missing; the BPF program needs it (rustup toolchain \
             install nightly)",
        )?;
    Ok(PathBuf::from(sysroot))
}

/// `-Z build-std=core` for the BPF target needs the standard library's sources; the BPF
/// crate is linted with the nightly's clippy.
fn nightly_components() -> Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if !src.is_dir() {
        rustup_add_nightly_component("rust-src")?;
    }
    if !succeeds(Command::new("cargo").args(["+nightly", "clippy", "--version"])) {
        rustup_add_nightly_component("clippy")?;
    }
    Ok(())
}

fn rustup_add_nightly_component(component: &str) -> Result<()> {
    cmd::run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))
}

/// bpf-linker, built against the LLVM shared library inside the nightly toolchain (Debian's
/// LLVM is too old and no prebuilt binary can be fetched). The library is linked from a
/// stable directory that the binary's rpath points at.
fn bpf_linker() -> Result<()> {
    let installed = cmd::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if installed.ends_with(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let llvm_major = llvm_major_version()?;
    let llvm_lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot.join("lib").display()))?;
    let prefix = cargo_home()?.join("bpf-linker-llvm");
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir)?;
    let file_name = llvm_lib.file_name().expect("a file");
    for link in [lib_dir.join("libLLVM.so"), lib_dir.join(file_name)] {
        replace_symlink(&llvm_lib, &link)?;
    }
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!(
            "bpf-linker was installed but does not run; is {} on PATH?",
            cargo_home()?.join("bin").display()
        );
    }
    Ok(())
}

fn llvm_major_version() -> Result<u32> {
    let info = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    info.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .context("`rustc +nightly -vV` reports no LLVM version")
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlink {} -> {}", link.display(), target.display()))
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(tool, _)| {
            !succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
        })
        .map(|(_, package)| *package)
        .chain(
            DEBIAN_FILES
                .iter()
                .filter(|(file, _)| !Path::new(file).exists())
                .map(|(_, package)| *package),
        )
        .chain(
            DEBIAN_CHECKS
                .iter()
                .filter(|(check, _)| !succeeds(Command::new("sh").args(["-c", check])))
                .map(|(_, package)| *package),
        )
        .collect();
    // One package may provide several of the tools.
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; install them as root (apt-get install {})",
            missing.join(" ")
        );
    }
    let install = |update_first: bool| -> Result<()> {
        if update_first {
            cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    // Package lists on a fresh machine may be stale or absent.
    install(false).or_else(|_| install(true))
}

/// Glance release the end-to-end tests run, and its pinned dependency set (a tested
/// `pip freeze`; unpinned, oslo.policy 6 makes every POST fail with 500).
const GLANCE_VERSION: &str = "32.0.0";
const GLANCE_CONSTRAINTS: &str = "tests/glance/constraints.txt";
/// Python packages the tests need in Glance's virtualenv besides Glance, each with the module
/// that shows it is there; versions come from the constraints file. PyMySQL: Glance nodes
/// sharing a MariaDB database (`mysql+pymysql://` URLs).
const GLANCE_EXTRAS: &[(&str, &str)] = &[("pymysql", "PyMySQL")];

/// The real Glance API in a virtualenv under target/glance (about 40 s the first time), and
/// the extra packages (a few seconds when only they are missing).
fn glance() -> Result<()> {
    let venv = cmd::workspace_root().join("target/glance/venv");
    let glance_api = venv.join("bin/glance-api");
    let marker = venv.join(format!(".installed-{GLANCE_VERSION}"));
    if glance_api.is_file() && marker.is_file() {
        return glance_extras(&venv);
    }
    let _ = fs::remove_dir_all(&venv);
    fs::create_dir_all(venv.parent().expect("venv has a parent"))?;
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-c"])
            .arg(cmd::workspace_root().join(GLANCE_CONSTRAINTS))
            .arg(format!("glance=={GLANCE_VERSION}"))
            .args(GLANCE_EXTRAS.iter().map(|(_, package)| package)),
    )?;
    fs::write(&marker, "")?;
    Ok(())
}

/// Installs into an existing virtualenv the extras it lacks (one import check each).
fn glance_extras(venv: &Path) -> Result<()> {
    let python = venv.join("bin/python");
    let missing: Vec<&str> = GLANCE_EXTRAS
        .iter()
        .filter(|(module, _)| {
            !succeeds(Command::new(&python).args(["-c", &format!("import {module}")]))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-c"])
            .arg(cmd::workspace_root().join(GLANCE_CONSTRAINTS))
            .args(&missing),
    )
}

/// bpffs at /sys/fs/bpf, where the daemon pins its maps and links.
pub fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !is_root() {
        eprintln!("xtask: /sys/fs/bpf is not mounted and this is not root; skipping (mount -t bpf bpf /sys/fs/bpf)");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
