//! The package's files: where each comes from and where it goes. The paths are the ones
//! Debian's tools look in (bash-completion, zsh's and fish's vendor directories, man, doc).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::cmd;

/// Inside the package (and the staged tree), without the leading `/`.
pub const BINARY: &str = "usr/bin/limiter";
pub const UNIT: &str = "lib/systemd/system/glance-limiter.service";
pub const CONFIG: &str = "etc/glance-limiter/limiter.toml";
pub const DOC_DIR: &str = "usr/share/doc/glance-limiter";
pub const MAN_DIR: &str = "usr/share/man/man1";
/// Generated completion file (from `dist_assets`) → its place in the package.
pub const COMPLETIONS: [(&str, &str); 3] = [
    (
        "limiter.bash",
        "usr/share/bash-completion/completions/limiter",
    ),
    ("_limiter", "usr/share/zsh/vendor-completions/_limiter"),
    (
        "limiter.fish",
        "usr/share/fish/vendor_completions.d/limiter.fish",
    ),
];
/// Workspace files → the package's doc directory.
pub const DOCS: [&str; 6] = [
    "README.md",
    "docs/OPERATIONS.md",
    "docs/CONFIG.md",
    "docs/CLI.md",
    "docs/TUI.md",
    "limiter.example.toml",
];
/// Maintainer scripts, from packaging/debian/.
pub const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

const EXECUTABLE: u32 = 0o755;
const REGULAR: u32 = 0o644;

/// Fills `stage` (which must not exist) with the package's tree and DEBIAN/ metadata, except
/// DEBIAN/control, which needs the staged tree's size.
pub fn stage(workspace: &Path, binary: &Path, generated: &Path, stage: &Path) -> Result<()> {
    let packaging = workspace.join("packaging");
    // Debian ships stripped binaries; the embedded BPF object is data and keeps its BTF.
    install(binary, &stage.join(BINARY), EXECUTABLE)?;
    cmd::run(
        Command::new("strip")
            .arg("--strip-unneeded")
            .arg(stage.join(BINARY)),
    )?;
    install(
        &packaging.join("glance-limiter.service"),
        &stage.join(UNIT),
        REGULAR,
    )?;
    // The example file, every key commented out: as installed it changes nothing, and keys
    // the admin leaves commented follow the defaults of later releases.
    install(
        &workspace.join("limiter.example.toml"),
        &stage.join(CONFIG),
        REGULAR,
    )?;
    for (file, dest) in COMPLETIONS {
        install(
            &generated.join("completions").join(file),
            &stage.join(dest),
            REGULAR,
        )?;
    }
    let mut pages = Vec::new();
    for page in man_pages(generated)? {
        let dest = stage.join(MAN_DIR).join(page.file_name().expect("a file"));
        install(&page, &dest, REGULAR)?;
        pages.push(dest);
    }
    // -n: no name or time stamp in the header, so equal pages compress equally.
    cmd::run(Command::new("gzip").args(["-9", "-n"]).args(&pages))?;
    let doc_dir = stage.join(DOC_DIR);
    for doc in DOCS {
        let name = Path::new(doc).file_name().expect("a file name");
        install(&workspace.join(doc), &doc_dir.join(name), REGULAR)?;
    }
    install(
        &packaging.join("debian/copyright"),
        &doc_dir.join("copyright"),
        REGULAR,
    )?;
    for script in SCRIPTS {
        install(
            &packaging.join("debian").join(script),
            &stage.join("DEBIAN").join(script),
            EXECUTABLE,
        )?;
    }
    fs::write(stage.join("DEBIAN/conffiles"), format!("/{CONFIG}\n"))?;
    set_dir_modes(stage)
}

/// Every `*.1` page `dist_assets` wrote, sorted.
pub fn man_pages(generated: &Path) -> Result<Vec<PathBuf>> {
    let dir = generated.join("man");
    let mut pages: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    anyhow::ensure!(
        pages.iter().any(|p| p.ends_with("limiter.1")),
        "no limiter.1 in {}",
        dir.display()
    );
    Ok(pages)
}

/// Copies with an explicit mode: the package must not depend on the builder's umask.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let parent = to.parent().expect("a destination inside the stage");
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(EXECUTABLE))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_dir_modes(&path)?;
        }
    }
    Ok(())
}

/// Installed-Size: the files' sizes in KiB, rounded up per file as dpkg-gencontrol does,
/// DEBIAN/ excluded.
pub fn installed_size_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    walk(&entry.path(), total)?;
                }
                *total += 1;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}
