//! The file: its format, loading (and a corrupt file kept aside), the directory's lock, and
//! the atomic writes, with the failure points tests inject.

use std::{
    collections::BTreeMap,
    fs::{self, DirBuilder, File, OpenOptions, TryLockError},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::{
    merging::check, RuleProblem, StoreError, StoredRule, FORMAT_VERSION, LOCK_FILE, RULES_FILE,
    TMP_FILE,
};

#[derive(Serialize)]
pub(super) struct FileOut<'a> {
    version: u64,
    rules: &'a [StoredRule],
}

/// Only the version, read first so a file from another release gets a clear error instead
/// of whatever its rules fail to parse as.
#[derive(Deserialize)]
pub(super) struct FileVersion {
    version: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileV1 {
    /// Present in the file (and so accepted here), but checked through [`FileVersion`].
    #[serde(rename = "version")]
    _version: u64,
    rules: Vec<StoredRule>,
}

pub(super) fn encode(rules: &[StoredRule]) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec_pretty(&FileOut {
        version: FORMAT_VERSION,
        rules,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The rules in `dir`'s rules file, sorted by key; `None` if there is no file.
pub(super) fn load(dir: &Path) -> Result<Option<Vec<StoredRule>>, StoreError> {
    let path = dir.join(RULES_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Read { path, source }),
    };
    let corrupt = |source| StoreError::Corrupt {
        path: path.clone(),
        source,
    };
    let FileVersion { version } = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if version != FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path,
            found: version,
        });
    }
    let file: FileV1 = serde_json::from_slice(&bytes).map_err(corrupt)?;

    let mut table = BTreeMap::new();
    for (index, rule) in file.rules.into_iter().enumerate() {
        let rule = rule.normalized();
        let invalid = |problem| StoreError::InvalidStored {
            path: path.clone(),
            index,
            prefix: rule.prefix,
            action: rule.action,
            problem,
        };
        check(&rule).map_err(invalid)?;
        if table.contains_key(&rule.key()) {
            return Err(invalid(RuleProblem::Duplicate));
        }
        table.insert(rule.key(), rule);
    }
    Ok(Some(table.into_values().collect()))
}

pub(super) fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let failed = |source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    // Make the new directory's own entry durable, or a crash could lose the directory and
    // every rule written into it.
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent).map_err(failed)
}

pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let lock_failed = |source| StoreError::Lock {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(lock_failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(lock_failed(source)),
    }
}

/// The prefix of the names a rules file that did not parse is kept under.
pub(super) const CORRUPT_PREFIX: &str = "rules.json.corrupt-";

/// Renames the unparseable rules file `path` to `rules.json.corrupt-<time>` (never over
/// another copy) and returns the error that says where it went. If the rename fails, the file
/// stays where it was and the error says so (and that it is corrupt).
pub(super) fn move_aside(
    dir: &Path,
    path: PathBuf,
    source: serde_json::Error,
    now: SystemTime,
) -> StoreError {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let free = (0..100)
        .map(|n| match n {
            0 => dir.join(format!("{CORRUPT_PREFIX}{stamp}")),
            n => dir.join(format!("{CORRUPT_PREFIX}{stamp}.{n}")),
        })
        .find(|candidate| !candidate.exists());
    let moved = free
        .ok_or_else(|| io::Error::other("no free name"))
        .and_then(|aside| {
            fs::rename(&path, &aside)?;
            sync_dir(dir)?;
            Ok(aside)
        });
    match moved {
        Ok(aside) => {
            error!(
                file = %path.display(),
                kept_as = %aside.display(),
                error = %source,
                "the rules file is corrupt; moved it aside, not starting (the kernel's rules keep applying)"
            );
            StoreError::CorruptMovedAside {
                path,
                aside,
                source,
            }
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot move the corrupt rules file aside");
            StoreError::Corrupt { path, source }
        }
    }
}

/// The kept-aside copies of corrupt rules files in `dir`, oldest first.
pub(super) fn corrupt_copies(dir: &Path) -> Vec<PathBuf> {
    let mut copies: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(CORRUPT_PREFIX))
        })
        .map(|entry| entry.path())
        .collect();
    copies.sort();
    copies
}

/// A `rules.json.tmp` on open is a write interrupted before its rename: it was never the
/// rules, and the next write truncates it anyway. Removing it only keeps the directory tidy.
pub(super) fn remove_leftover_tmp(dir: &Path) {
    let tmp = dir.join(TMP_FILE);
    match fs::remove_file(&tmp) {
        Ok(()) => warn!(
            file = %tmp.display(),
            "removed an unfinished rules write left by a crash; the last saved rules are kept"
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(file = %tmp.display(), error = %e, "cannot remove an unfinished rules write")
        }
    }
}

/// How an atomic write failed.
#[derive(Debug)]
pub(super) enum WriteFailure {
    /// Before the rename: the rules file is untouched.
    NotCommitted {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// After the rename: the new file is in place but its directory entry may not be durable.
    NotDurable(io::Error),
}

/// Replaces `dir/rules.json` with `bytes` so that a crash at any point leaves the old or the
/// new content: write a temporary file, fsync it (else the rename could reach the disk before
/// the data, leaving an empty file), rename it over the old one (atomic on POSIX), fsync the
/// directory (else the rename itself could be lost).
pub(super) fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), WriteFailure> {
    write_named_atomically(dir, RULES_FILE, TMP_FILE, bytes)
}

/// The same atomic replacement for another file of the state directory (`name`, through
/// `name.tmp`); the error says which step failed.
pub(crate) fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    write_named_atomically(dir, name, &format!("{name}.tmp"), bytes).map_err(
        |failure| match failure {
            WriteFailure::NotCommitted { step, path, source } => {
                format!("{step} {}: {source}", path.display())
            }
            WriteFailure::NotDurable(source) => {
                format!("written, but the directory could not be synced: {source}")
            }
        },
    )
}

pub(super) fn write_named_atomically(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
) -> Result<(), WriteFailure> {
    let tmp = dir.join(tmp_name);
    let target = dir.join(name);
    let committed = (|| {
        let failed = |step, path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteFailure::NotCommitted { step, path, source }
        };
        let mut file = fail_point(Step::Create)
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
            })
            .map_err(failed("creating", &tmp))?;
        write_tmp(&mut file, bytes).map_err(failed("writing", &tmp))?;
        fail_point(Step::Sync)
            .and_then(|()| file.sync_all())
            .map_err(failed("syncing", &tmp))?;
        drop(file);
        fail_point(Step::Rename)
            .and_then(|()| fs::rename(&tmp, &target))
            .map_err(failed("renaming over", &target))
    })();
    if let Err(failure) = committed {
        // Best effort: a leftover is harmless (see `remove_leftover_tmp`).
        let _ = fs::remove_file(&tmp);
        return Err(failure);
    }
    fail_point(Step::SyncDir)
        .and_then(|()| sync_dir(dir))
        .map_err(WriteFailure::NotDurable)
}

pub(super) fn write_tmp(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    if fail_point(Step::Write).is_err() {
        // A short write, as a full disk would leave it.
        file.write_all(&bytes[..bytes.len() / 2])?;
        return fail_point(Step::Write);
    }
    file.write_all(bytes)
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The steps of [`write_atomically`], where tests inject failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Create,
    Write,
    Sync,
    Rename,
    SyncDir,
}

#[cfg(test)]
thread_local! {
    pub(super) static FAIL_AT: std::cell::Cell<Option<Step>> = const { std::cell::Cell::new(None) };
}

/// Fails in tests when told to (per thread, as each test runs on its own); a no-op otherwise.
pub(super) fn fail_point(step: Step) -> io::Result<()> {
    #[cfg(test)]
    if FAIL_AT.with(|at| at.get()) == Some(step) {
        return Err(io::Error::other(format!("injected failure at {step:?}")));
    }
    let _ = step;
    Ok(())
}
