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
    fs::{self, DirBuilder, File, OpenOptions, TryLockError},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::rules::{self, Action, KernelRule, RuleError, Scope};

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

// ---------------------------------------------------------------------------------------------
// Rules: validation and merging
// ---------------------------------------------------------------------------------------------

/// The latest time RFC 3339 (four-digit years) can write: 9999-12-31T23:59:59Z.
const LAST_SECOND: Duration = Duration::from_secs(253_402_300_800 - 1);

fn check(rule: &StoredRule) -> Result<(), RuleProblem> {
    rules::validate(&rule.to_kernel())?;
    check_time("created_at", rule.created)?;
    if let Some(expires) = rule.expires {
        check_time("expires_at", expires)?;
        if expires < rule.created {
            return Err(RuleProblem::ExpiresBeforeCreated {
                created: humantime::format_rfc3339(rule.created).to_string(),
                expires: humantime::format_rfc3339(expires).to_string(),
            });
        }
    }
    Ok(())
}

/// Times the file format can hold; humantime panics on times before 1970.
fn check_time(field: &'static str, time: SystemTime) -> Result<(), RuleProblem> {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since < LAST_SECOND + Duration::from_secs(1) => Ok(()),
        Ok(since) => Err(RuleProblem::TimeOutOfRange {
            field,
            seconds_since_epoch: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        }),
        Err(before) => Err(RuleProblem::TimeOutOfRange {
            field,
            seconds_since_epoch: i64::try_from(before.duration().as_secs())
                .map_or(i64::MIN, |secs| -secs),
        }),
    }
}

/// `incoming` applied to `existing`, a rule with the same key (precedence: module docs).
/// `rules` in the store's canonical form, or the first invalid one's problem.
fn validated(rules: Vec<StoredRule>) -> Result<Vec<StoredRule>, StoreError> {
    let count = rules.len();
    let incoming: Vec<StoredRule> = rules.into_iter().map(StoredRule::normalized).collect();
    for (index, rule) in incoming.iter().enumerate() {
        check(rule).map_err(|problem| StoreError::InvalidRule {
            index,
            count,
            prefix: rule.prefix,
            action: rule.action,
            problem,
        })?;
    }
    Ok(incoming)
}

fn merge(existing: &StoredRule, incoming: StoredRule) -> StoredRule {
    let created = existing.created.min(incoming.created);
    match (existing.origin, incoming.origin) {
        (_, Origin::Manual) => StoredRule {
            created,
            ..incoming
        },
        (Origin::Manual, Origin::Auto) => StoredRule {
            created,
            expires: later(existing.expires, incoming.expires),
            ..existing.clone()
        },
        (Origin::Auto, Origin::Auto) => StoredRule {
            created,
            scope: broader(existing.scope, incoming.scope),
            expires: later(existing.expires, incoming.expires),
            ..incoming
        },
    }
}

/// The later of two expiries; `None` (never) is the latest.
fn later(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    Some(a?.max(b?))
}

fn broader(a: Scope, b: Scope) -> Scope {
    if a == Scope::AllPorts || b == Scope::AllPorts {
        Scope::AllPorts
    } else {
        Scope::ProtectedPorts
    }
}

// ---------------------------------------------------------------------------------------------
// The file: format, loading, atomic writes
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct FileOut<'a> {
    version: u64,
    rules: &'a [StoredRule],
}

/// Only the version, read first so a file from another release gets a clear error instead
/// of whatever its rules fail to parse as.
#[derive(Deserialize)]
struct FileVersion {
    version: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    /// Present in the file (and so accepted here), but checked through [`FileVersion`].
    #[serde(rename = "version")]
    _version: u64,
    rules: Vec<StoredRule>,
}

fn encode(rules: &[StoredRule]) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec_pretty(&FileOut {
        version: FORMAT_VERSION,
        rules,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The rules in `dir`'s rules file, sorted by key; `None` if there is no file.
fn load(dir: &Path) -> Result<Option<Vec<StoredRule>>, StoreError> {
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

fn create_dir(dir: &Path) -> Result<(), StoreError> {
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

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
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
const CORRUPT_PREFIX: &str = "rules.json.corrupt-";

/// Renames the unparseable rules file `path` to `rules.json.corrupt-<time>` (never over
/// another copy) and returns the error that says where it went. If the rename fails, the file
/// stays where it was and the error says so (and that it is corrupt).
fn move_aside(dir: &Path, path: PathBuf, source: serde_json::Error, now: SystemTime) -> StoreError {
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
fn corrupt_copies(dir: &Path) -> Vec<PathBuf> {
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
fn remove_leftover_tmp(dir: &Path) {
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
enum WriteFailure {
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
fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), WriteFailure> {
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

fn write_named_atomically(
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

fn write_tmp(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    if fail_point(Step::Write).is_err() {
        // A short write, as a full disk would leave it.
        file.write_all(&bytes[..bytes.len() / 2])?;
        return fail_point(Step::Write);
    }
    file.write_all(bytes)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The steps of [`write_atomically`], where tests inject failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Create,
    Write,
    Sync,
    Rename,
    SyncDir,
}

#[cfg(test)]
thread_local! {
    static FAIL_AT: std::cell::Cell<Option<Step>> = const { std::cell::Cell::new(None) };
}

/// Fails in tests when told to (per thread, as each test runs on its own); a no-op otherwise.
fn fail_point(step: Step) -> io::Result<()> {
    #[cfg(test)]
    if FAIL_AT.with(|at| at.get()) == Some(step) {
        return Err(io::Error::other(format!("injected failure at {step:?}")));
    }
    let _ = step;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Timestamps: RFC 3339, UTC, with as many fractional digits as needed (none for whole seconds),
// so a time reads back exactly as it was written.
// ---------------------------------------------------------------------------------------------

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        // `collect_str` turns a formatting error (a time past year 9999) into a serializer
        // error instead of a panic; times before 1970 are rejected earlier by `check_time`.
        serializer.collect_str(&humantime::format_rfc3339(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text).map_err(|e| {
            D::Error::custom(format_args!(
                "invalid RFC 3339 UTC time {text:?} ({e}); expected like 2026-01-31T12:00:00Z"
            ))
        })
    }
}

mod rfc3339_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::rfc3339::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::rfc3339")] SystemTime);
        Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(time)| time))
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, time::Instant};

    use super::*;

    /// 2027-01-15T08:00:00Z: a fixed "now", so files and expiries are reproducible.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            t0() + Duration::from_secs(secs as u64)
        } else {
            t0() - Duration::from_secs(secs.unsigned_abs())
        }
    }

    fn rule(prefix: &str, action: Action, origin: Origin, expires: Option<i64>) -> StoredRule {
        StoredRule {
            prefix: prefix.parse().unwrap(),
            action,
            scope: Scope::ProtectedPorts,
            origin,
            reason: format!("{origin:?} {action:?} {prefix}"),
            created: t0(),
            expires: expires.map(at),
            node: None,
        }
    }

    fn block(prefix: &str, expires: Option<i64>) -> StoredRule {
        rule(prefix, Action::Block, Origin::Manual, expires)
    }

    fn auto_block(prefix: &str, expires: Option<i64>) -> StoredRule {
        rule(prefix, Action::Block, Origin::Auto, expires)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// 4096 distinct IPv4 hosts and then IPv6 /64s, all in documentation ranges.
    fn test_prefix(i: usize) -> String {
        match i {
            0..=255 => format!("198.51.100.{i}/32"),
            256..=511 => format!("203.0.113.{}/32", i - 256),
            _ => format!("2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff),
        }
    }

    fn file_bytes(dir: &Path) -> Vec<u8> {
        fs::read(dir.join(RULES_FILE)).unwrap()
    }

    fn with_failure<T>(step: Step, f: impl FnOnce() -> T) -> T {
        FAIL_AT.with(|at| at.set(Some(step)));
        let result = f();
        FAIL_AT.with(|at| at.set(None));
        result
    }

    #[test]
    fn a_new_directory_is_created_private_with_an_empty_rules_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state/limiter");
        let store = RuleStore::open(&dir).unwrap();
        assert!(store.rules().is_empty());
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            String::from_utf8(file_bytes(&dir)).unwrap(),
            "{\n  \"version\": 1,\n  \"rules\": []\n}\n"
        );
        let mode = fs::metadata(dir.join(RULES_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn rules_survive_a_reopen_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![
            block("198.51.100.0/24", None),
            StoredRule {
                scope: Scope::AllPorts,
                // Sub-second precision must survive the round trip.
                expires: Some(at(3600) + Duration::from_nanos(123_456_789)),
                ..auto_block("2001:db8:1::/48", None)
            },
            rule("203.0.113.9/32", Action::Allow, Origin::Manual, Some(60)),
        ];
        let mut store = RuleStore::open(dir.path()).unwrap();
        let change = store.upsert(rules.clone()).unwrap();
        assert_eq!(change.added.len(), 3);
        let stored = store.rules().to_vec();
        drop(store);

        let reopened = RuleStore::open(dir.path()).unwrap();
        assert_eq!(reopened.rules(), stored.as_slice());
        assert_eq!(read_rules(dir.path()).unwrap(), stored);
        // Sorted by prefix (IPv4 first), normalized: the allow rule spans all ports.
        let prefixes: Vec<String> = stored.iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(
            prefixes,
            ["198.51.100.0/24", "203.0.113.9/32", "2001:db8:1::/48"]
        );
        assert_eq!(stored[1].scope, Scope::AllPorts);
    }

    #[test]
    fn the_file_has_the_documented_json_shape() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![StoredRule {
                reason: "image-create flood".into(),
                ..auto_block("198.51.100.7/32", Some(600))
            }])
            .unwrap();
        store
            .upsert(vec![StoredRule {
                scope: Scope::AllPorts,
                reason: "hostile network".into(),
                ..block("2001:db8::/32", None)
            }])
            .unwrap();
        let expected = r#"{
  "version": 1,
  "rules": [
    {
      "prefix": "198.51.100.7/32",
      "action": "block",
      "scope": "protected_ports",
      "origin": "auto",
      "reason": "image-create flood",
      "created_at": "2027-01-15T08:00:00Z",
      "expires_at": "2027-01-15T08:10:00Z"
    },
    {
      "prefix": "2001:db8::/32",
      "action": "block",
      "scope": "all_ports",
      "origin": "manual",
      "reason": "hostile network",
      "created_at": "2027-01-15T08:00:00Z",
      "expires_at": null
    }
  ]
}
"#;
        assert_eq!(String::from_utf8(file_bytes(dir.path())).unwrap(), expected);
        // One rule alone is the same object (what `list --json` prints per rule).
        let one: StoredRule = serde_json::from_str(
            r#"{"prefix":"203.0.113.0/24","action":"allow","scope":"all_ports",
                "origin":"manual","reason":"","created_at":"2027-01-15T08:00:00.5Z",
                "expires_at":null}"#,
        )
        .unwrap();
        assert_eq!(one.created, t0() + Duration::from_millis(500));
    }

    #[test]
    fn host_bits_are_cleared_so_both_spellings_are_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let spelt = |prefix: &str| StoredRule {
            reason: "one rule".into(),
            ..block(prefix, None)
        };
        store.upsert(vec![spelt("198.51.100.77/24")]).unwrap();
        let change = store.upsert(vec![spelt("198.51.100.0/24")]).unwrap();
        assert!(change.is_noop(), "{change:?}");
        assert_eq!(store.rules().len(), 1);
        assert_eq!(store.rules()[0].prefix, net("198.51.100.0/24"));
    }

    #[test]
    fn a_repeated_upsert_changes_nothing_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let rules = vec![
            block("198.51.100.1/32", Some(60)),
            block("2001:db8::/64", None),
        ];
        store.upsert(rules.clone()).unwrap();
        let bytes = file_bytes(dir.path());
        let modified = fs::metadata(dir.path().join(RULES_FILE))
            .unwrap()
            .modified()
            .unwrap();

        let change = store.upsert(rules.clone()).unwrap();
        assert!(change.is_noop());
        assert_eq!(change.unchanged, store.rules());
        assert_eq!(store.rules().len(), 2);
        assert_eq!(file_bytes(dir.path()), bytes);
        let after = fs::metadata(dir.path().join(RULES_FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(after, modified, "a no-op must not rewrite the file");
    }

    #[test]
    fn block_and_allow_of_one_prefix_are_two_rules() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![
                block("198.51.100.0/24", None),
                rule("198.51.100.0/24", Action::Allow, Origin::Manual, None),
            ])
            .unwrap();
        assert_eq!(store.rules().len(), 2);
    }

    #[test]
    fn a_manual_upsert_replaces_even_to_shorten_or_narrow() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![StoredRule {
                scope: Scope::AllPorts,
                ..auto_block("198.51.100.5/32", Some(3600))
            }])
            .unwrap();
        let manual = StoredRule {
            created: at(10),
            reason: "operator: short ban".into(),
            ..block("198.51.100.5/32", Some(60))
        };
        let change = store.upsert(vec![manual.clone()]).unwrap();
        let expected = StoredRule {
            created: t0(), // the earlier creation is kept
            ..manual
        };
        assert_eq!(change.updated, std::slice::from_ref(&expected));
        assert_eq!(store.rules(), [expected]);
    }

    #[test]
    fn an_automatic_upsert_never_weakens_a_manual_rule() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let manual = StoredRule {
            scope: Scope::AllPorts,
            ..block("198.51.100.0/24", Some(3600))
        };
        store.upsert(vec![manual.clone()]).unwrap();

        // Shorter, narrower, other reason: nothing changes.
        let change = store
            .upsert(vec![auto_block("198.51.100.0/24", Some(600))])
            .unwrap();
        assert!(change.is_noop());
        assert_eq!(change.unchanged, std::slice::from_ref(&manual));
        assert_eq!(store.rules(), std::slice::from_ref(&manual));

        // Longer: only the expiry moves; it stays the operator's rule.
        let change = store
            .upsert(vec![auto_block("198.51.100.0/24", Some(7200))])
            .unwrap();
        let extended = StoredRule {
            expires: Some(at(7200)),
            ..manual.clone()
        };
        assert_eq!(change.updated, std::slice::from_ref(&extended));
        assert_eq!(store.rules(), [extended]);

        // A permanent manual rule stays permanent.
        store.upsert(vec![block("2001:db8::/48", None)]).unwrap();
        store
            .upsert(vec![auto_block("2001:db8::/48", Some(60))])
            .unwrap();
        let permanent = store
            .rules()
            .iter()
            .find(|r| r.prefix == net("2001:db8::/48"))
            .unwrap();
        assert_eq!(
            (permanent.origin, permanent.expires),
            (Origin::Manual, None)
        );
    }

    #[test]
    fn a_repeated_automatic_rule_keeps_the_later_expiry_and_broader_scope() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![StoredRule {
                scope: Scope::AllPorts,
                ..auto_block("203.0.113.8/32", Some(3600))
            }])
            .unwrap();
        let again = StoredRule {
            reason: "flood again".into(),
            created: at(100),
            ..auto_block("203.0.113.8/32", Some(600))
        };
        let change = store.upsert(vec![again]).unwrap();
        let expected = StoredRule {
            scope: Scope::AllPorts,
            reason: "flood again".into(),
            ..auto_block("203.0.113.8/32", Some(3600))
        };
        assert_eq!(change.updated, std::slice::from_ref(&expected));
        assert_eq!(store.rules(), [expected]);

        let forever = store
            .upsert(vec![auto_block("203.0.113.8/32", None)])
            .unwrap();
        assert_eq!(forever.updated[0].expires, None);
    }

    #[test]
    fn a_rule_named_twice_in_a_batch_is_merged_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let change = store
            .upsert(vec![
                auto_block("198.51.100.3/32", Some(60)),
                auto_block("198.51.100.3/32", Some(120)),
            ])
            .unwrap();
        assert_eq!(change.added, [auto_block("198.51.100.3/32", Some(120))]);
        assert!(change.updated.is_empty());
    }

    #[test]
    fn one_invalid_rule_rejects_the_whole_batch_and_leaves_the_file_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store.upsert(vec![block("198.51.100.0/24", None)]).unwrap();
        let before = store.rules().to_vec();
        let bytes = file_bytes(dir.path());

        let bad_cases = [
            // Overlaps the IPv4-mapped range.
            block("::/0", None),
            StoredRule {
                expires: Some(at(-1)),
                ..block("203.0.113.0/24", None)
            },
            StoredRule {
                created: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
                ..block("203.0.113.0/24", None)
            },
            StoredRule {
                expires: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000)),
                ..block("203.0.113.0/24", None)
            },
        ];
        for bad in bad_cases {
            let mut batch: Vec<StoredRule> = (0..1000)
                .map(|i| auto_block(&test_prefix(i), Some(60)))
                .collect();
            batch[617] = bad.clone();
            let err = store.upsert(batch).unwrap_err();
            match &err {
                StoreError::InvalidRule { index, count, .. } => {
                    assert_eq!((*index, *count), (617, 1000))
                }
                other => panic!("expected InvalidRule, got {other:?}"),
            }
            assert!(err.to_string().contains("nothing was changed"), "{err}");
            assert_eq!(store.rules(), before.as_slice());
            assert_eq!(file_bytes(dir.path()), bytes);
        }
    }

    #[test]
    fn expiring_exactly_at_creation_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![block("198.51.100.0/24", Some(0))])
            .unwrap();
        assert_eq!(store.active(t0()).count(), 0);
    }

    #[test]
    fn removal_is_idempotent_and_reports_what_was_absent() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![
                block("198.51.100.0/24", None),
                block("2001:db8::/48", None),
                rule("198.51.100.0/24", Action::Allow, Origin::Manual, None),
            ])
            .unwrap();

        let change = store
            .remove(
                &[
                    net("198.51.100.9/24"), // host bits: same rule
                    net("203.0.113.0/24"),
                    net("198.51.100.0/24"), // named twice: reported once
                ],
                Action::Block,
            )
            .unwrap();
        assert_eq!(change.removed, [block("198.51.100.0/24", None)]);
        assert_eq!(change.absent, [(net("203.0.113.0/24"), Action::Block)]);
        // The allow rule of the same prefix stays.
        assert_eq!(store.rules().len(), 2);
        let bytes = file_bytes(dir.path());

        let again = store
            .remove(&[net("198.51.100.0/24")], Action::Block)
            .unwrap();
        assert!(again.is_noop());
        assert_eq!(again.absent.len(), 1);
        assert_eq!(file_bytes(dir.path()), bytes);

        drop(store);
        assert_eq!(read_rules(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn expire_removes_and_returns_rules_past_their_time_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store
            .upsert(vec![
                auto_block("198.51.100.1/32", Some(60)),
                auto_block("198.51.100.2/32", Some(120)),
                block("198.51.100.3/32", None),
            ])
            .unwrap();
        assert_eq!(store.active(at(60)).count(), 2, "expired at exactly 60 s");
        assert_eq!(
            store
                .kernel_rules(at(59))
                .iter()
                .map(|r| r.net)
                .collect::<Vec<_>>(),
            [
                net("198.51.100.1/32"),
                net("198.51.100.2/32"),
                net("198.51.100.3/32")
            ]
        );

        let (expired, failed) = store.expire(at(60));
        assert_eq!(expired, [auto_block("198.51.100.1/32", Some(60))]);
        assert!(failed.is_none());
        assert!(store.expire(at(60)).0.is_empty());
        assert_eq!(store.rules().len(), 2);
        drop(store);
        let reopened = RuleStore::open(dir.path()).unwrap();
        assert_eq!(reopened.rules().len(), 2);
        assert_eq!(
            reopened.kernel_rules(at(120)),
            [block("198.51.100.3/32", None).to_kernel()]
        );
    }

    #[test]
    fn a_leftover_tmp_file_from_a_crash_is_removed_and_the_saved_rules_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        store.upsert(vec![block("198.51.100.0/24", None)]).unwrap();
        let saved = store.rules().to_vec();
        drop(store);
        // What kill -9 in the middle of writing the next version leaves.
        fs::write(
            dir.path().join(TMP_FILE),
            b"{\"version\":1,\"rules\":[{\"pre",
        )
        .unwrap();

        let store = RuleStore::open(dir.path()).unwrap();
        assert_eq!(store.rules(), saved.as_slice());
        assert!(!dir.path().join(TMP_FILE).exists());
    }

    #[test]
    fn a_failed_write_at_any_step_before_the_rename_changes_nothing() {
        for step in [Step::Create, Step::Write, Step::Sync, Step::Rename] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = RuleStore::open(dir.path()).unwrap();
            store.upsert(vec![block("198.51.100.0/24", None)]).unwrap();
            let before = store.rules().to_vec();
            let bytes = file_bytes(dir.path());

            let err = with_failure(step, || {
                store
                    .upsert(vec![block("203.0.113.0/24", None)])
                    .unwrap_err()
            });
            assert!(
                matches!(err, StoreError::Write { .. }),
                "{step:?}: expected a write error, got {err:?}"
            );
            assert!(err.to_string().contains("nothing was changed"), "{err}");
            assert_eq!(store.rules(), before.as_slice(), "{step:?}");
            assert_eq!(file_bytes(dir.path()), bytes, "{step:?}");
            assert!(!dir.path().join(TMP_FILE).exists(), "{step:?}");

            // The same for removal and expiry, and the store still works afterwards.
            with_failure(step, || {
                store
                    .remove(&[net("198.51.100.0/24")], Action::Block)
                    .unwrap_err()
            });
            assert_eq!(store.rules(), before.as_slice(), "{step:?}");
            store.upsert(vec![block("203.0.113.0/24", None)]).unwrap();
            assert_eq!(read_rules(dir.path()).unwrap().len(), 2);
        }
    }

    #[test]
    fn a_failed_directory_sync_reports_the_change_as_made_but_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let err = with_failure(Step::SyncDir, || {
            store
                .upsert(vec![block("198.51.100.0/24", None)])
                .unwrap_err()
        });
        assert!(matches!(err, StoreError::NotDurable { .. }), "{err:?}");
        // Store and file agree: the rename happened.
        assert_eq!(store.rules().len(), 1);
        assert_eq!(read_rules(dir.path()).unwrap(), store.rules());
    }

    #[test]
    fn writes_and_failed_writes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        // Opening an empty directory writes the empty file.
        let opened = WriteCounts {
            attempts: 1,
            failures: 0,
        };
        assert_eq!(store.write_counts(), opened);
        store.upsert(vec![block("198.51.100.0/24", None)]).unwrap();
        // A batch that changes nothing is not written.
        store.upsert(vec![block("198.51.100.0/24", None)]).unwrap();
        with_failure(Step::Rename, || {
            store.remove(&[net("198.51.100.0/24")], Action::Block)
        })
        .unwrap_err();
        with_failure(Step::SyncDir, || {
            store.upsert(vec![block("203.0.113.0/24", None)])
        })
        .unwrap_err();
        assert_eq!(
            store.write_counts(),
            WriteCounts {
                attempts: 4,
                failures: 2
            }
        );
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_with_an_error_naming_both_and_nothing_is_lost() {
        let cases: [(&str, &[u8]); 6] = [
            ("empty", b""),
            (
                "truncated",
                b"{\"version\":1,\"rules\":[{\"prefix\":\"198.51.100.0/24\"",
            ),
            ("not json", b"\x00\x01garbage"),
            ("no version", b"{\"rules\":[]}"),
            (
                "misspelt field",
                br#"{"version":1,"rules":[{"prefix":"198.51.100.0/24","action":"block",
                "scope":"protected_ports","origin":"manual","reason":"",
                "created_at":"2027-01-15T08:00:00Z","expire_at":null}]}"#,
            ),
            (
                "bad time",
                br#"{"version":1,"rules":[{"prefix":"198.51.100.0/24","action":"block",
                "scope":"protected_ports","origin":"manual","reason":"",
                "created_at":"yesterday","expires_at":null}]}"#,
            ),
        ];
        for (what, content) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(RULES_FILE);
            fs::write(&path, content).unwrap();
            // A reader (the CLI's `list`) only reports it.
            assert!(matches!(
                read_rules(dir.path()),
                Err(StoreError::Corrupt { .. })
            ));
            assert_eq!(fs::read(&path).unwrap(), content, "{what}: reader moved it");

            let err = RuleStore::open(dir.path()).unwrap_err();
            let StoreError::CorruptMovedAside { aside, .. } = &err else {
                panic!("{what}: expected CorruptMovedAside, got {err:?}");
            };
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&aside.display().to_string()), "{message}");
            assert!(message.contains("will not start"), "{message}");
            assert!(message.contains("keep applying"), "{message}");
            assert!(!path.exists(), "{what}: still in place");
            assert_eq!(fs::read(aside).unwrap(), content, "{what}: copy differs");
            let name = aside.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with("rules.json.corrupt-"), "{name}");
            humantime::parse_rfc3339(&name["rules.json.corrupt-".len()..]).unwrap();

            // A restart must not start empty (that would clear the kernel's rules).
            let again = RuleStore::open(dir.path()).unwrap_err();
            assert!(
                matches!(&again, StoreError::OnlyCorruptCopy { aside: a, .. } if a == aside),
                "{again:?}"
            );
            assert!(again.to_string().contains("remove"), "{again}");
            assert!(!path.exists(), "{what}: an empty file was written");

            // Restoring the file is one way out; removing the copy the other.
            fs::write(&path, b"{\"version\":1,\"rules\":[]}").unwrap();
            drop(RuleStore::open(dir.path()).unwrap());
            fs::remove_file(&path).unwrap();
            fs::remove_file(aside).unwrap();
            assert!(RuleStore::open(dir.path()).unwrap().rules().is_empty());
        }
    }

    #[test]
    fn a_second_corrupt_file_in_the_same_second_does_not_overwrite_the_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let error = || serde_json::from_slice::<FileVersion>(b"x").err().unwrap();
        let mut copies = Vec::new();
        for content in [b"first".as_slice(), b"second"] {
            let path = dir.path().join(RULES_FILE);
            fs::write(&path, content).unwrap();
            match move_aside(dir.path(), path, error(), t0()) {
                StoreError::CorruptMovedAside { aside, .. } => copies.push(aside),
                other => panic!("{other:?}"),
            }
        }
        assert_ne!(copies[0], copies[1]);
        assert_eq!(fs::read(&copies[0]).unwrap(), b"first");
        assert_eq!(fs::read(&copies[1]).unwrap(), b"second");
        assert_eq!(corrupt_copies(dir.path()), copies);
    }

    #[test]
    fn an_automatic_change_that_cannot_be_saved_stays_in_memory_until_a_flush_saves_it() {
        for step in [Step::Create, Step::Write, Step::Sync, Step::Rename] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = RuleStore::open(dir.path()).unwrap();
            store.upsert(vec![block("198.51.100.0/24", None)]).unwrap();
            let bytes = file_bytes(dir.path());
            assert_eq!(store.trouble(), None);
            assert!(store.flush().is_none(), "nothing to flush");

            let (change, failed) = with_failure(step, || {
                store
                    .upsert_or_defer(vec![auto_block("203.0.113.7/32", Some(600))])
                    .unwrap()
            });
            assert!(
                matches!(failed, Some(StoreError::Write { .. })),
                "{failed:?}"
            );
            assert_eq!(change.added.len(), 1, "{step:?}");
            // In memory (so in the kernel), not in the file, which is intact.
            assert_eq!(store.rules().len(), 2);
            assert_eq!(file_bytes(dir.path()), bytes, "{step:?}");
            let trouble = store.trouble().unwrap().clone();
            assert!(trouble.unsaved && trouble.failures == 1, "{trouble:?}");

            // An operator's change while degraded is refused and changes nothing; the
            // pending ban stays pending.
            with_failure(step, || {
                store
                    .upsert(vec![block("2001:db8::/48", None)])
                    .unwrap_err()
            });
            assert_eq!(store.rules().len(), 2);
            // Expiry also waits in memory.
            let (expired, failed) = with_failure(step, || store.expire(at(600)));
            assert_eq!(expired, [auto_block("203.0.113.7/32", Some(600))]);
            assert!(failed.is_some());
            // Retries that fail keep counting, since the first failure.
            let retried = with_failure(step, || store.flush()).unwrap();
            assert!(retried.is_err());
            let still = store.trouble().unwrap();
            assert_eq!((still.since, still.failures), (trouble.since, 4));
            assert_eq!(file_bytes(dir.path()), bytes, "{step:?}");

            // Space is back: the next flush writes what is in memory.
            store
                .upsert_or_defer(vec![auto_block("203.0.113.8/32", Some(900))])
                .unwrap();
            assert_eq!(store.trouble(), None);
            assert!(store.flush().is_none());
            assert_eq!(read_rules(dir.path()).unwrap(), store.rules());
            assert_eq!(store.rules().len(), 2);
        }
    }

    #[test]
    fn the_clusters_rules_apply_while_the_disk_refuses_them_and_are_saved_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let bytes = file_bytes(dir.path());
        let (change, failed) = with_failure(Step::Write, || {
            store
                .put_exact(vec![auto_block("203.0.113.7/32", Some(600))])
                .unwrap()
        });
        assert_eq!(change.added.len(), 1);
        assert!(
            matches!(failed, Some(StoreError::Write { .. })),
            "{failed:?}"
        );
        assert_eq!(store.rules().len(), 1, "applied in memory");
        let (removed, failed) = with_failure(Step::Write, || {
            store.remove_or_defer(&[net("203.0.113.7/32")], Action::Block)
        });
        assert_eq!(removed.removed.len(), 1);
        assert!(failed.is_some());
        assert!(store.rules().is_empty(), "removed in memory");
        assert_eq!(file_bytes(dir.path()), bytes, "the file is intact");
        assert!(store.trouble().unwrap().unsaved);
        assert!(matches!(store.flush(), Some(Ok(()))));
        assert_eq!(read_rules(dir.path()).unwrap(), store.rules());
    }

    #[test]
    fn a_refused_operator_change_degrades_the_store_until_a_flush_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        with_failure(Step::Write, || {
            store.upsert(vec![block("198.51.100.0/24", None)])
        })
        .unwrap_err();
        let trouble = store.trouble().unwrap();
        assert!(!trouble.unsaved, "nothing changed, nothing is pending");
        assert!(trouble.error.contains("nothing was changed"), "{trouble:?}");
        assert!(store.rules().is_empty());
        // The retry rewrites the same rules to learn that writes work again.
        assert!(matches!(store.flush(), Some(Ok(()))));
        assert_eq!(store.trouble(), None);
    }

    #[test]
    fn an_unsynced_directory_keeps_the_store_degraded_until_a_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let (_, failed) = with_failure(Step::SyncDir, || {
            store
                .upsert_or_defer(vec![auto_block("198.51.100.1/32", Some(60))])
                .unwrap()
        });
        assert!(matches!(failed, Some(StoreError::NotDurable { .. })));
        assert!(store.trouble().unwrap().unsaved);
        assert!(matches!(store.flush(), Some(Ok(()))));
        assert_eq!(store.trouble(), None);
    }

    #[test]
    fn invalid_or_duplicate_rules_in_the_file_are_errors() {
        let entry = |prefix: &str| {
            format!(
                r#"{{"prefix":"{prefix}","action":"block","scope":"protected_ports",
                "origin":"manual","reason":"","created_at":"2027-01-15T08:00:00Z",
                "expires_at":null}}"#
            )
        };
        for (rules, index, problem) in [
            (
                vec![entry("198.51.100.0/24"), entry("::ffff:0:0/100")],
                1,
                RuleProblem::Kernel(RuleError::OverlapsIpv4Mapped(net("::ffff:0:0/100"))),
            ),
            (
                vec![entry("198.51.100.0/24"), entry("198.51.100.1/24")],
                1,
                RuleProblem::Duplicate,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let content = format!("{{\"version\":1,\"rules\":[{}]}}", rules.join(","));
            fs::write(dir.path().join(RULES_FILE), &content).unwrap();
            match RuleStore::open(dir.path()).unwrap_err() {
                StoreError::InvalidStored {
                    index: i,
                    problem: p,
                    ..
                } => assert_eq!((i, p), (index, problem)),
                other => panic!("expected InvalidStored, got {other:?}"),
            }
            assert_eq!(
                fs::read_to_string(dir.path().join(RULES_FILE)).unwrap(),
                content
            );
        }
    }

    #[test]
    fn an_unknown_version_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RULES_FILE);
        fs::write(&path, br#"{"version":2,"rules":[{"whatever":true}]}"#).unwrap();
        let err = RuleStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedVersion { found: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("reads only version 1"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: unreadable even for root.
        fs::create_dir(dir.path().join(RULES_FILE)).unwrap();
        let err = RuleStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Read { .. }), "{err:?}");
    }

    #[test]
    fn a_second_owner_of_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RuleStore::open(dir.path()).unwrap();
        let err = RuleStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        // Readers need no lock.
        assert!(read_rules(dir.path()).unwrap().is_empty());
        drop(store);
        RuleStore::open(dir.path()).unwrap();
    }

    /// Behaviour only (one write for the batch, none for a repeat); the time of a 10,000-rule
    /// batch is measured end to end by the `e2e` bench (`limiter block -`), and printed here.
    #[test]
    fn ten_thousand_rules_in_one_batch_are_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RuleStore::open(dir.path()).unwrap();
        let batch: Vec<StoredRule> = (0..10_000)
            .map(|i| StoredRule {
                reason: format!("image-create rate {i}/s over limit"),
                ..auto_block(&test_prefix(i), Some(3600))
            })
            .collect();

        let writes = store.write_counts().attempts;
        let started = Instant::now();
        let change = store.upsert(batch.clone()).unwrap();
        println!(
            "upsert of 10,000 new rules (one write, {} bytes): {:?}",
            file_bytes(dir.path()).len(),
            started.elapsed()
        );
        assert_eq!(change.added.len(), 10_000);
        assert_eq!(store.write_counts().attempts, writes + 1, "one write");

        let change = store.upsert(batch).unwrap();
        assert!(change.is_noop());
        assert_eq!(
            store.write_counts().attempts,
            writes + 1,
            "a no-op writes nothing"
        );

        drop(store);
        let store = RuleStore::open(dir.path()).unwrap();
        assert_eq!(store.rules().len(), 10_000);
    }
}
