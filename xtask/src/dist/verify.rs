//! Reads a built package back with dpkg-deb and checks what an installation would get: the
//! control fields, every file at its place with its mode and owner, the conffile, the
//! maintainer scripts, a binary that runs, a configuration it accepts, man pages, and a unit
//! that `systemd-analyze verify` finds nothing wrong with.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use super::{
    control::{self, Fields},
    layout,
};
use crate::cmd::{self, in_ci};

/// Units the glance-limiter unit refers to that a root of its own must provide for
/// `systemd-analyze verify` (the host's are copied in).
const HOST_UNIT_DIR: &str = "/lib/systemd/system";

pub fn check(deb: &Path, expected: &Fields) -> Result<()> {
    check_fields(deb, expected)?;
    check_contents(deb)?;
    let scratch = deb.with_extension("check");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    let result = check_unpacked(deb, &scratch, expected);
    // The check's own failure matters more than a failed clean-up.
    let _ = fs::remove_dir_all(&scratch);
    result.with_context(|| format!("checking {}", deb.display()))
}

fn dpkg_deb(args: &[&str], deb: &Path) -> Result<String> {
    let mut command = Command::new("dpkg-deb");
    command.args(args).arg(deb);
    cmd::output(&mut command)
}

fn check_fields(deb: &Path, expected: &Fields) -> Result<()> {
    let text = dpkg_deb(&["--field"], deb)?;
    let field = |name: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .map(str::to_owned)
            .with_context(|| format!("no {name} in the control file:\n{text}"))
    };
    ensure!(field("Package")? == control::PACKAGE, "Package");
    ensure!(field("Version")? == expected.version, "Version");
    ensure!(field("Architecture")? == expected.arch, "Architecture");
    let depends = field("Depends")?;
    for needed in ["libc6 (>= ", "iproute2"] {
        ensure!(
            depends.contains(needed),
            "Depends `{depends}` lacks {needed}"
        );
    }
    field("Maintainer")?;
    field("Description")?;
    ensure!(
        field("Installed-Size")?.parse::<u64>()? > 0,
        "Installed-Size"
    );
    Ok(())
}

/// (mode, path) of every file the package must hold.
fn expected_files() -> Vec<(&'static str, String)> {
    let mut files = vec![
        ("-rwxr-xr-x", layout::BINARY.to_owned()),
        ("-rw-r--r--", layout::UNIT.to_owned()),
        ("-rw-r--r--", layout::CONFIG.to_owned()),
        ("-rw-r--r--", format!("{}/limiter.1.gz", layout::MAN_DIR)),
        (
            "-rw-r--r--",
            format!("{}/limiter-run.1.gz", layout::MAN_DIR),
        ),
        (
            "-rw-r--r--",
            format!("{}/limiter-block.1.gz", layout::MAN_DIR),
        ),
        // A nested command has its own page too.
        (
            "-rw-r--r--",
            format!("{}/limiter-cluster-status.1.gz", layout::MAN_DIR),
        ),
        ("-rw-r--r--", format!("{}/copyright", layout::DOC_DIR)),
    ];
    files.extend(
        layout::COMPLETIONS
            .iter()
            .map(|(_, dest)| ("-rw-r--r--", (*dest).to_owned())),
    );
    files.extend(layout::DOCS.iter().map(|doc| {
        let name = Path::new(doc).file_name().unwrap().to_string_lossy();
        ("-rw-r--r--", format!("{}/{name}", layout::DOC_DIR))
    }));
    files
}

/// `dpkg-deb --contents` lines: `-rwxr-xr-x root/root 1234 2025-06-01 10:00 ./usr/bin/limiter`.
fn check_contents(deb: &Path) -> Result<()> {
    let listing = dpkg_deb(&["--contents"], deb)?;
    let entries: Vec<(&str, &str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            Some((
                *parts.first()?,
                *parts.get(1)?,
                parts.last()?.strip_prefix("./")?,
            ))
        })
        .collect();
    for (mode, owner, path) in &entries {
        ensure!(
            *owner == "root/root",
            "{path} is owned by {owner}, not root"
        );
        let allowed = [
            "etc/glance-limiter",
            "lib/systemd/system",
            "usr/bin",
            "usr/share",
        ];
        let inside = path.is_empty()
            || allowed
                .iter()
                .any(|a| path.starts_with(a) || a.starts_with(path.trim_end_matches('/')));
        ensure!(inside, "unexpected path {path} in the package");
        if mode.starts_with('d') {
            ensure!(*mode == "drwxr-xr-x", "directory {path} has mode {mode}");
        }
    }
    for (mode, path) in expected_files() {
        match entries.iter().find(|(_, _, p)| *p == path) {
            Some((found, _, _)) => ensure!(*found == mode, "{path} has mode {found}, not {mode}"),
            None => bail!("{path} is missing from the package:\n{listing}"),
        }
    }
    Ok(())
}

fn check_unpacked(deb: &Path, scratch: &Path, expected: &Fields) -> Result<()> {
    let control_dir = scratch.join("DEBIAN");
    let root = scratch.join("root");
    cmd::run(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(&control_dir),
    )?;
    cmd::run(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(deb)
            .arg(&root),
    )?;

    let conffiles = fs::read_to_string(control_dir.join("conffiles"))?;
    ensure!(
        conffiles == format!("/{}\n", layout::CONFIG),
        "conffiles is `{conffiles}`"
    );
    for script in layout::SCRIPTS {
        let path = control_dir.join(script);
        let mode = fs::metadata(&path)
            .with_context(|| format!("no {script}"))?
            .permissions()
            .mode();
        ensure!(
            mode & 0o111 == 0o111,
            "{script} is not executable ({mode:o})"
        );
        cmd::run(Command::new("sh").arg("-n").arg(&path))?;
    }

    let binary = root.join(layout::BINARY);
    let version = cmd::output(Command::new(&binary).arg("--version"))?;
    let upstream = expected.version.trim_end_matches("-1");
    ensure!(
        version == format!("limiter {upstream}"),
        "--version printed `{version}`"
    );
    // The shipped configuration is the one the daemon will read: it must be accepted.
    cmd::output(
        Command::new(&binary)
            .arg("check-config")
            .arg(root.join(layout::CONFIG)),
    )?;

    for (_, dest) in &layout::COMPLETIONS[..1] {
        cmd::run(Command::new("bash").arg("-n").arg(root.join(dest)))?;
    }
    let page = root.join(layout::MAN_DIR).join("limiter.1.gz");
    let roff = cmd::output(Command::new("gzip").arg("-dc").arg(&page))?;
    ensure!(
        roff.contains("\n.TH limiter 1"),
        "{} is not a man page",
        page.display()
    );

    verify_unit(&root)
}

/// `systemd-analyze verify` on the unit as installed, with the package's tree as root so
/// that it also checks the ExecStart binary. Warnings (an unknown key, a bad value) fail too.
fn verify_unit(root: &Path) -> Result<()> {
    if !cmd::succeeds(Command::new("systemd-analyze").arg("--version")) {
        let reason = "systemd-analyze is not installed (`cargo xtask setup` installs systemd)";
        if in_ci() {
            bail!("{reason}; CI must verify the unit");
        }
        eprintln!("SKIPPED verifying the systemd unit: {reason}");
        return Ok(());
    }
    let unit_dir = root
        .join(layout::UNIT)
        .parent()
        .map(PathBuf::from)
        .expect("a unit dir");
    for entry in fs::read_dir(HOST_UNIT_DIR).with_context(|| format!("read {HOST_UNIT_DIR}"))? {
        let path = entry?.path();
        // A dangling alias (a target of a package not installed) is no loss.
        if path.extension().is_some_and(|e| e == "target") && path.exists() {
            fs::copy(&path, unit_dir.join(path.file_name().expect("a file")))?;
        }
    }
    let unit = Path::new(layout::UNIT).file_name().expect("a unit file");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .context("run systemd-analyze verify")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{said}",
        layout::UNIT,
        out.status
    );
    Ok(())
}
