//! The persistent rule store: every block and allow rule a user or the policy asked for, kept in
//! `<state_dir>/rules.json` and written to disk before any operation returns.
//!
//! # Durability
//! A change is serialized in full, written to `rules.json.tmp` in the same directory, fsynced,
//! renamed over `rules.json`, and the directory is fsynced. A crash (kill -9, power loss) at
//! any point therefore leaves either the old or the new file, never a mix or an empty one. A
//! leftover `rules.json.tmp` is a write that never committed: [`RuleStore::open`] removes it.
//! A file that cannot be read or parsed is an error, never an empty store, because starting
//! empty would silently drop every rule. One process at a time owns a state directory (an
//! exclusive lock on `rules.lock`): two writers would each overwrite the other's rules.
//!
//! # Faults
//! - **A rules file that does not parse at start** (truncated, garbage) is renamed to
//!   `rules.json.corrupt-<RFC 3339 time>` and [`RuleStore::open`] fails saying where it is. The
//!   rules it held are in that file; the kernel's pinned rules are not touched by the store. So
//!   that a restart does not then start empty (and clear the kernel's rules), a state
//!   directory with a kept-aside copy and no `rules.json` also refuses to open until the
//!   operator restores `rules.json` or removes the copy.
//! - **A write that fails while running** (full disk, read-only or unwritable directory)
//!   leaves the old file intact (the atomic write above). An operator's change is refused and
//!   nothing changes ([`RuleStore::upsert`]); an automatic change is kept in memory, marked
//!   unsaved ([`RuleStore::upsert_or_defer`], [`RuleStore::expire`]), so the kernel can enforce
//!   it. Either way the store is *degraded* ([`RuleStore::trouble`]) until a write succeeds;
//!   [`RuleStore::flush`] retries (the daemon calls it every poll), writing what is pending.
//!
//! # Identity and precedence
//! A rule is identified by its prefix (host bits cleared) and action: there is at most one
//! block and one allow rule per prefix. [`RuleStore::upsert`] of an existing rule merges:
//! - **manual over anything**: the operator's latest word replaces scope, reason, expiry and
//!   origin outright, even to shorten or narrow the rule;
//! - **auto over manual**: the policy never weakens what an operator set. The rule stays manual
//!   with its reason and scope; only its expiry may move later (never earlier);
//! - **auto over auto**: a repeated automatic rule never shortens or narrows the one in place:
//!   the later expiry and the broader scope win, the newest reason explains it.
//!
//! In every case `created` is the earlier of the two. Operations take a batch and are
//! all-or-nothing: every rule is validated before anything changes, and the batch is persisted
//! with a single write.

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    fs::File,
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info};

use crate::rules::{Action, KernelRule, RuleError, Scope};

mod file;
mod merging;
#[cfg(test)]
mod tests;
mod time_serde;

pub(crate) use file::write_file_atomically;
use file::{
    corrupt_copies, create_dir, encode, load, lock_dir, move_aside, remove_leftover_tmp,
    write_atomically, WriteFailure,
};
use merging::{merge, validated};
use time_serde::{rfc3339, rfc3339_option};

/// The rules file inside the state directory.
pub const RULES_FILE: &str = "rules.json";
/// Where a new version of the rules file is written before it replaces the old one.
pub const TMP_FILE: &str = "rules.json.tmp";
/// Held locked (`flock`, exclusive) by the one process that owns the state directory.
pub const LOCK_FILE: &str = "rules.lock";
/// The rules file format this code reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// Who asked for a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The rate policy.
    Auto,
    /// An operator.
    Manual,
}

/// One rule as stored, and as `limiter list --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRule {
    /// Host bits are cleared on the way in (`198.51.100.7/24` is stored as `198.51.100.0/24`).
    pub prefix: IpNet,
    pub action: Action,
    /// What a block drops. Allow rules exempt a prefix from every block on every port, so the
    /// store records them as [`Scope::AllPorts`] whatever they arrived with.
    pub scope: Scope,
    pub origin: Origin,
    /// Free text: why the rule exists.
    pub reason: String,
    #[serde(rename = "created_at", with = "rfc3339")]
    pub created: SystemTime,
    /// `None`: until removed.
    #[serde(rename = "expires_at", with = "rfc3339_option")]
    pub expires: Option<SystemTime>,
    /// With `[cluster]`: the node that made the rule (or last changed it). `None`: this node,
    /// before or without a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What identifies a rule: at most one per prefix and action.
pub type RuleKey = (IpNet, Action);

impl StoredRule {
    pub fn key(&self) -> RuleKey {
        (self.prefix, self.action)
    }

    /// In force at `now`: no expiry, or an expiry after `now` (as the kernel sees it).
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }

    pub fn to_kernel(&self) -> KernelRule {
        KernelRule {
            net: self.prefix,
            action: self.action,
            scope: self.scope,
            expires: self.expires,
        }
    }

    /// The canonical form the store keeps (see the field docs).
    fn normalized(mut self) -> Self {
        self.prefix = self.prefix.trunc();
        if self.action == Action::Allow {
            self.scope = Scope::AllPorts;
        }
        self
    }
}

/// What one operation did. Each rule the batch named appears once, in the order the batch
/// first named it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Rules that did not exist before, as stored now.
    pub added: Vec<StoredRule>,
    /// Rules that existed and changed, as stored now.
    pub updated: Vec<StoredRule>,
    /// Rules the batch named that stay exactly as they were (a repeat, or an automatic rule
    /// that could not weaken a manual one), as stored.
    pub unchanged: Vec<StoredRule>,
    /// Rules removed, as they were.
    pub removed: Vec<StoredRule>,
    /// Removals of rules that did not exist (not an error: removal is idempotent).
    pub absent: Vec<RuleKey>,
}

impl Change {
    /// Whether the stored rules (and so the kernel's) are the same as before.
    pub fn is_noop(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Why a rule cannot be stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleProblem {
    #[error(transparent)]
    Kernel(#[from] RuleError),
    #[error("it expires ({expires}) before it was created ({created})")]
    ExpiresBeforeCreated { created: String, expires: String },
    #[error(
        "its {field} ({seconds_since_epoch} s from 1970) is outside \
         1970-01-01T00:00:00Z..9999-12-31T23:59:59Z, which RFC 3339 cannot write"
    )]
    TimeOutOfRange {
        field: &'static str,
        seconds_since_epoch: i64,
    },
    #[error("another rule in the file has the same prefix and action")]
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the state directory {path}: {source}; create it (mode 0700, owned by \
         the user glance-limiter runs as) or choose another state directory"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot lock {path}: {source}; the state directory must be on a local file system \
         that glance-limiter can write"
    )]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another process holds the rule store in {dir} (lock {dir}/{LOCK_FILE}); two writers \
         would overwrite each other's rules: stop the other glance-limiter daemon or use a \
         different state directory"
    )]
    Locked { dir: PathBuf },
    #[error(
        "cannot read the rules file {path}: {source}; glance-limiter will not start without \
         the rules it holds: fix the file's permissions or type and start again"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the rules file {path} is not valid ({source}); glance-limiter will not start \
         without the rules it holds: repair the file (JSON: {{\"version\":1,\"rules\":[...]}}), \
         or restore it from a backup, or move it aside to deliberately drop every rule, and \
         start again"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the rules file {path} was not valid ({source}) and has been moved aside to {aside}, \
         where the rules it held are kept; glance-limiter will not start without them. The \
         kernel's pinned program and rules were not touched and keep applying (expiring on \
         time). Repair the copy (JSON: {{\"version\":1,\"rules\":[...]}}) or restore a backup, \
         put it back as {path}, and start again; or, to deliberately drop every stored rule, \
         remove {aside} and start again"
    )]
    CorruptMovedAside {
        path: PathBuf,
        aside: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{dir}/{RULES_FILE} is missing but {aside} is there: a previous start found the rules \
         file corrupt and kept it aside. Starting now would start with no rules and clear the \
         kernel's: repair that copy (or restore a backup) and put it back as {dir}/{RULES_FILE}, \
         or remove {aside} (and any other {RULES_FILE}.corrupt-* there) to deliberately start \
         with no rules, and start again"
    )]
    OnlyCorruptCopy { dir: PathBuf, aside: PathBuf },
    #[error(
        "the rules file {path} has format version {found}, but this glance-limiter reads only \
         version {FORMAT_VERSION}; it was written by another release: run that release, or \
         convert the file, and start again"
    )]
    UnsupportedVersion { path: PathBuf, found: u64 },
    #[error(
        "the rules file {path} holds an invalid rule (rule {index}, {prefix} {action:?}): \
         {problem}; repair or delete that rule in the file and start again"
    )]
    InvalidStored {
        path: PathBuf,
        index: usize,
        prefix: IpNet,
        action: Action,
        #[source]
        problem: RuleProblem,
    },
    #[error(
        "rule {index} of {count} in the batch ({prefix} {action:?}) is invalid: {problem}; \
         nothing was changed: fix that rule and send the batch again"
    )]
    InvalidRule {
        index: usize,
        count: usize,
        prefix: IpNet,
        action: Action,
        #[source]
        problem: RuleProblem,
    },
    #[error(
        "cannot encode the rules: {source}; nothing was changed (this is a bug: validation \
         should have rejected the rule)"
    )]
    Encode {
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "cannot save the rules ({step} {path}: {source}); nothing was changed and {dir}/\
         {RULES_FILE} still holds the previous rules: check free space and permissions of the \
         state directory and retry"
    )]
    Write {
        step: &'static str,
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the new rules replaced {dir}/{RULES_FILE} and are in effect, but syncing the directory \
         failed ({source}), so the change might not survive a power loss: check the file \
         system and retry (repeating the operation is harmless)"
    )]
    NotDurable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes of the rules file since the store was opened, for the daemon's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Every attempt, failed or not.
    pub attempts: u64,
    /// Attempts that returned an error: not saved, or saved but maybe not durable.
    pub failures: u64,
}

/// Why the store is degraded: its last write failed. Cleared by the next write that succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteTrouble {
    /// When the first of the failed writes in a row happened.
    pub since: SystemTime,
    /// Failed writes in a row.
    pub failures: u64,
    /// The latest failure, as [`StoreError`] says it.
    pub error: String,
    /// Whether the rules in memory (and in the kernel) differ from the file, or their
    /// rename may not be durable: [`RuleStore::flush`] has something to save.
    pub unsaved: bool,
}

/// The rules, loaded from and persisted to one state directory, which it holds locked.
#[derive(Debug)]
pub struct RuleStore {
    dir: PathBuf,
    /// Sorted by [`StoredRule::key`], one rule per key.
    rules: Vec<StoredRule>,
    writes: WriteCounts,
    /// `Some` while writes fail.
    trouble: Option<WriteTrouble>,
    /// Holds the directory's lock until the store is dropped (the kernel releases it if the
    /// process dies).
    _lock: File,
}

impl RuleStore {
    /// Opens the store in `state_dir`, creating the directory (mode 0700) if missing, and
    /// loads `rules.json`. A missing file is an empty store and is written at once, so a
    /// directory that cannot be written fails here rather than at the first ban.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<RuleStore, StoreError> {
        let dir = state_dir.as_ref().to_path_buf();
        create_dir(&dir)?;
        let lock = lock_dir(&dir)?;
        remove_leftover_tmp(&dir);
        let mut store = RuleStore {
            rules: Vec::new(),
            writes: WriteCounts::default(),
            trouble: None,
            dir,
            _lock: lock,
        };
        let loaded = match load(&store.dir) {
            Err(StoreError::Corrupt { path, source }) => {
                return Err(move_aside(&store.dir, path, source, SystemTime::now()))
            }
            other => other?,
        };
        match loaded {
            Some(rules) => {
                info!(file = %store.file().display(), rules = rules.len(), "rules loaded");
                store.rules = rules;
            }
            None => {
                if let Some(aside) = corrupt_copies(&store.dir).pop() {
                    return Err(StoreError::OnlyCorruptCopy {
                        dir: store.dir.clone(),
                        aside,
                    });
                }
                info!(file = %store.file().display(), "no rules file yet; starting with no rules");
                store.commit(Vec::new(), Failure::Undo)?;
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<state_dir>/rules.json`.
    pub fn file(&self) -> PathBuf {
        self.dir.join(RULES_FILE)
    }

    /// How many times the rules file was written, and how many of those failed.
    pub fn write_counts(&self) -> WriteCounts {
        self.writes
    }

    /// `Some` while the store is degraded: its last write failed.
    pub fn trouble(&self) -> Option<&WriteTrouble> {
        self.trouble.as_ref()
    }

    /// While degraded, writes the rules again (those pending, or the same ones to find out
    /// whether writes work again); a no-op otherwise. `Some(Ok(()))`: the store recovered.
    pub fn flush(&mut self) -> Option<Result<(), StoreError>> {
        self.trouble.as_ref()?;
        let rules = self.rules.clone();
        Some(self.commit(rules, Failure::Keep))
    }

    /// Every stored rule, expired or not, sorted by prefix then action.
    pub fn rules(&self) -> &[StoredRule] {
        &self.rules
    }

    /// The rule with this key, expired or not.
    pub fn get(&self, key: RuleKey) -> Option<&StoredRule> {
        self.rules
            .binary_search_by_key(&key, StoredRule::key)
            .ok()
            .map(|i| &self.rules[i])
    }

    /// The rules in force at `now`.
    pub fn active(&self, now: SystemTime) -> impl Iterator<Item = &StoredRule> + '_ {
        self.rules.iter().filter(move |rule| rule.is_active(now))
    }

    /// The rules in force at `now`, as [`rules::compile`] takes them for the kernel's tries.
    pub fn kernel_rules(&self, now: SystemTime) -> Vec<KernelRule> {
        self.active(now).map(StoredRule::to_kernel).collect()
    }

    /// Adds `rules`, or merges each into the stored rule with the same prefix and action (see
    /// the module docs for which fields win). All or nothing: one invalid rule rejects the
    /// batch and nothing changes. A batch that changes nothing is not written.
    pub fn upsert(&mut self, rules: Vec<StoredRule>) -> Result<Change, StoreError> {
        let (change, table) = self.plan_upsert(rules)?;
        if !change.is_noop() {
            self.commit(table, Failure::Undo)?;
        }
        Ok(change)
    }

    /// [`RuleStore::upsert`] for changes the kernel must enforce even when they cannot be
    /// saved (automatic bans): if the write fails, the change stays in memory, marked unsaved,
    /// and is returned with the write's error; [`RuleStore::flush`] saves it later. An invalid
    /// rule still rejects the batch (`Err`).
    pub fn upsert_or_defer(
        &mut self,
        rules: Vec<StoredRule>,
    ) -> Result<(Change, Option<StoreError>), StoreError> {
        let (change, table) = self.plan_upsert(rules)?;
        let failed = if change.is_noop() {
            None
        } else {
            self.commit(table, Failure::Keep).err()
        };
        Ok((change, failed))
    }

    /// What `rules` would change, and the whole table after it; nothing is applied.
    fn plan_upsert(&self, rules: Vec<StoredRule>) -> Result<(Change, Vec<StoredRule>), StoreError> {
        let incoming = validated(rules)?;

        let mut table = self.table();
        let mut before: Vec<(RuleKey, Option<StoredRule>)> = Vec::new();
        let mut seen = BTreeSet::new();
        for rule in incoming {
            let key = rule.key();
            let first_mention = seen.insert(key);
            match table.entry(key) {
                Entry::Vacant(slot) => {
                    if first_mention {
                        before.push((key, None));
                    }
                    slot.insert(rule);
                }
                Entry::Occupied(mut slot) => {
                    if first_mention {
                        before.push((key, Some(slot.get().clone())));
                    }
                    let merged = merge(slot.get(), rule);
                    slot.insert(merged);
                }
            }
        }

        let mut change = Change::default();
        for (key, old) in before {
            let now = table[&key].clone();
            match old {
                None => change.added.push(now),
                Some(old) if old == now => change.unchanged.push(now),
                Some(_) => change.updated.push(now),
            }
        }
        Ok((change, table.into_values().collect()))
    }

    /// Removes the `action` rule of each prefix (host bits cleared). Naming a rule that does not
    /// exist is not an error; it is reported in [`Change::absent`].
    pub fn remove(&mut self, prefixes: &[IpNet], action: Action) -> Result<Change, StoreError> {
        let (change, table) = self.plan_remove(prefixes, action);
        if !change.is_noop() {
            self.commit(table, Failure::Undo)?;
        }
        Ok(change)
    }

    /// [`RuleStore::remove`] for removals made elsewhere and held durably there (the
    /// cluster's): if the write fails, the removal stays in memory, marked unsaved, and is
    /// returned with the write's error; [`RuleStore::flush`] saves it later.
    pub fn remove_or_defer(
        &mut self,
        prefixes: &[IpNet],
        action: Action,
    ) -> (Change, Option<StoreError>) {
        let (change, table) = self.plan_remove(prefixes, action);
        let failed = if change.is_noop() {
            None
        } else {
            self.commit(table, Failure::Keep).err()
        };
        (change, failed)
    }

    fn plan_remove(&self, prefixes: &[IpNet], action: Action) -> (Change, Vec<StoredRule>) {
        let mut table = self.table();
        let mut change = Change::default();
        let mut seen = BTreeSet::new();
        for prefix in prefixes {
            let key = (prefix.trunc(), action);
            if !seen.insert(key) {
                continue;
            }
            match table.remove(&key) {
                Some(rule) => change.removed.push(rule),
                None => change.absent.push(key),
            }
        }
        (change, table.into_values().collect())
    }

    /// Stores `rules` exactly as given, replacing any rule with the same key whatever its
    /// origin: for rules the cluster already merged (etcd's word on a key nobody changed
    /// here). An invalid rule rejects the batch (`Err`); a failed write does not: etcd holds
    /// these rules durably, so they apply at once, wait in memory marked unsaved, and the
    /// write's error comes back with the change.
    pub fn put_exact(
        &mut self,
        rules: Vec<StoredRule>,
    ) -> Result<(Change, Option<StoreError>), StoreError> {
        let incoming = validated(rules)?;
        let mut table = self.table();
        let mut change = Change::default();
        for rule in incoming {
            match table.insert(rule.key(), rule.clone()) {
                None => change.added.push(rule),
                Some(old) if old == rule => change.unchanged.push(rule),
                Some(_) => change.updated.push(rule),
            }
        }
        let failed = if change.is_noop() {
            None
        } else {
            self.commit(table.into_values().collect(), Failure::Keep)
                .err()
        };
        Ok((change, failed))
    }

    /// Removes and returns the rules no longer in force at `now`. The kernel already ignores
    /// them (their deadlines passed); this keeps the store and listings tidy. If the write
    /// fails they are removed all the same, the removal left unsaved (harmless: the file's
    /// copies are past their time too), and the error is returned with them.
    pub fn expire(&mut self, now: SystemTime) -> (Vec<StoredRule>, Option<StoreError>) {
        let (kept, expired): (Vec<StoredRule>, Vec<StoredRule>) = self
            .rules
            .iter()
            .cloned()
            .partition(|rule| rule.is_active(now));
        let failed = if expired.is_empty() {
            None
        } else {
            self.commit(kept, Failure::Keep).err()
        };
        (expired, failed)
    }

    fn table(&self) -> BTreeMap<RuleKey, StoredRule> {
        self.rules
            .iter()
            .map(|rule| (rule.key(), rule.clone()))
            .collect()
    }

    /// Persists `rules` (sorted by key) and makes them the store's. On an error before the
    /// rename the file does not change, and neither does the store with [`Failure::Undo`];
    /// once the rename happened, the store follows the file. Any failure makes the store
    /// degraded, a success ends that.
    fn commit(&mut self, rules: Vec<StoredRule>, on_failure: Failure) -> Result<(), StoreError> {
        self.writes.attempts += 1;
        let bytes = match encode(&rules) {
            Ok(bytes) => bytes,
            Err(source) => {
                self.writes.failures += 1;
                return Err(StoreError::Encode { source });
            }
        };
        let (error, unsaved) = match write_atomically(&self.dir, &bytes) {
            Ok(()) => {
                self.rules = rules;
                if let Some(trouble) = self.trouble.take() {
                    info!(
                        file = %self.file().display(),
                        failed_writes = trouble.failures,
                        since = %humantime::format_rfc3339_seconds(trouble.since),
                        "the rules file can be written again; every rule is saved"
                    );
                }
                return Ok(());
            }
            Err(WriteFailure::NotCommitted { step, path, source }) => {
                let error = StoreError::Write {
                    step,
                    path,
                    dir: self.dir.clone(),
                    source,
                };
                let kept = on_failure == Failure::Keep && rules != self.rules;
                if kept {
                    self.rules = rules;
                }
                (error, kept)
            }
            Err(WriteFailure::NotDurable(source)) => {
                self.rules = rules;
                let error = StoreError::NotDurable {
                    dir: self.dir.clone(),
                    source,
                };
                (error, true)
            }
        };
        self.writes.failures += 1;
        self.degrade(&error, unsaved);
        Err(error)
    }

    /// Records a failed write: the first of a run is logged as an error, the rest at debug
    /// level (the daemon retries every poll).
    fn degrade(&mut self, error: &StoreError, unsaved: bool) {
        match &mut self.trouble {
            Some(trouble) => {
                trouble.failures += 1;
                trouble.error = error.to_string();
                trouble.unsaved |= unsaved;
                debug!(error = %error, failures = trouble.failures, "rules file still cannot be written");
            }
            None => {
                error!(
                    error = %error,
                    unsaved,
                    "the rules file cannot be written; the rule store is degraded: the kernel \
                     keeps enforcing, automatic changes wait in memory and are written as soon \
                     as a write succeeds (retried every poll)"
                );
                self.trouble = Some(WriteTrouble {
                    since: SystemTime::now(),
                    failures: 1,
                    error: error.to_string(),
                    unsaved,
                });
            }
        }
    }
}

/// What [`RuleStore::commit`] does with the store when the write fails before its rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Leave the store as it was: the caller reports the failure and nothing changed.
    Undo,
    /// Take the new rules all the same, marked unsaved.
    Keep,
}

/// Reads the committed rules of `state_dir` without locking it: for a reader (say, the CLI's
/// `list`) while a daemon owns the store. Renames are atomic, so it sees a whole file. A
/// missing file reads as no rules.
pub fn read_rules(state_dir: impl AsRef<Path>) -> Result<Vec<StoredRule>, StoreError> {
    Ok(load(state_dir.as_ref())?.unwrap_or_default())
}
