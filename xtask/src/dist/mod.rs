//! `cargo xtask dist`: the Debian package `glance-limiter_<version>-1_<arch>.deb` in
//! target/dist/, built with `dpkg-deb --build` from a staged tree (no cargo-deb: it would
//! need a slow `cargo install`, and the layout below is all it would do for us).
//!
//! - [`layout`]: what goes where in the package, and staging it;
//! - [`control`]: DEBIAN/control and the maintainer scripts' metadata (pure);
//! - [`verify`]: reads a built package back and checks it, as the test suite does.

mod control;
mod layout;
mod verify;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, cargo};

/// Which build of `limiter` goes into the package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The one to ship: optimised, compressed with xz.
    Release,
    /// For the test suite: reuses the debug build `cargo xtask test` has already made, and
    /// skips compression. Same layout and checks.
    Dev,
}

impl Profile {
    /// Where its package goes: the release one in target/dist/, the test one apart, so that
    /// running the tests never replaces a package built for shipping.
    pub fn out_dir(self) -> PathBuf {
        let dist = cmd::workspace_root().join("target/dist");
        match self {
            Profile::Release => dist,
            Profile::Dev => dist.join("dev"),
        }
    }

    fn target_subdir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// Builds the package into [`Profile::out_dir`] and checks it; returns its path.
pub fn package(profile: Profile) -> Result<PathBuf> {
    let out_dir = &profile.out_dir();
    let root = cmd::workspace_root();
    let mut build = cargo();
    build.args([
        "build",
        "--locked",
        "-p",
        "limiter-user",
        "--bin",
        "limiter",
        "--example",
        "dist_assets",
    ]);
    if profile == Profile::Release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let bin_dir = root.join("target").join(profile.target_subdir());
    let binary = bin_dir.join("limiter");
    let version = binary_version(&binary)?;

    let work = out_dir.join(format!("work-{}", profile.target_subdir()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    let generated = work.join("generated");
    cmd::run(
        Command::new(bin_dir.join("examples/dist_assets"))
            .arg(&generated)
            .current_dir(&root),
    )?;
    let stage = work.join("root");
    layout::stage(&root, &binary, &generated, &stage)?;

    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))?;
    let fields = control::Fields {
        version: control::debian_version(&version),
        arch,
        depends: control::depends(&shlib_depends(&stage.join(layout::BINARY), &work)?),
        installed_size_kib: layout::installed_size_kib(&stage)?,
    };
    fs::write(stage.join("DEBIAN/control"), control::render(&fields))?;
    let deb = out_dir.join(format!(
        "{}_{}_{}.deb",
        control::PACKAGE,
        fields.version,
        fields.arch
    ));
    let compression = match profile {
        Profile::Release => "-Zxz",
        Profile::Dev => "-Znone",
    };
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", compression, "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    verify::check(&deb, &fields)?;
    fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    eprintln!("xtask: {} built and checked", deb.display());
    Ok(deb)
}

/// `limiter 0.1.0` → `0.1.0`: the version of the binary itself, whatever the manifests say.
fn binary_version(binary: &Path) -> Result<String> {
    let out = cmd::output(Command::new(binary).arg("--version"))?;
    match out.strip_prefix("limiter ") {
        Some(version) if !version.is_empty() => Ok(version.to_owned()),
        _ => bail!(
            "`{} --version` printed `{out}`, not `limiter <version>`",
            binary.display()
        ),
    }
}

/// The shared libraries the binary links, as Debian dependencies with minimum versions
/// (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`): dpkg-shlibdeps does exactly this from the
/// libraries' symbol files. It insists on a debian/control in its working directory.
fn shlib_depends(binary: &Path, work: &Path) -> Result<String> {
    let scratch = work.join("shlibdeps");
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        format!(
            "Source: {0}\n\nPackage: {0}\nArchitecture: any\n",
            control::PACKAGE
        ),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(format!("-e{}", binary.display()))
        .current_dir(&scratch)
        .output()
        .context("cannot run dpkg-shlibdeps; `cargo xtask setup` installs it (dpkg-dev)")?;
    fs::remove_dir_all(&scratch)?;
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed on {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    control::parse_shlibs(&String::from_utf8_lossy(&out.stdout))
}
