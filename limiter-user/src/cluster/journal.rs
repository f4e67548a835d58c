//! What a node remembers about its rules' place in etcd, on disk next to the rules
//! (`<state_dir>/cluster.json`), so that an outage, a restart during an outage, or both, lose
//! nothing and bring nothing expired back:
//!
//! - `known`: the rule keys etcd held when this node last heard from it. A local rule that
//!   etcd no longer holds was removed elsewhere (or expired) if its key is known, and is this
//!   node's news if not.
//! - `dirty`: the keys this node changed since etcd last took its word. Written before the
//!   change is stored, so a crash in between leaves at worst a harmless extra push.
//! - `cluster_id`: etcd's cluster ID when `known` was taken. A different one is a new etcd
//!   (restored, or rebuilt empty): nothing is known there, and nothing local is removed
//!   because a new etcd lacks it.
//!
//! [`reconcile`] turns the local rules, this record and etcd's rules into the changes to make
//! on each side. Pure; [`Journal`] adds the file.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::store::{self, RuleKey, StoredRule};

pub const JOURNAL_FILE: &str = "cluster.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    #[serde(default)]
    pub cluster_id: Option<u64>,
    #[serde(default)]
    pub known: BTreeSet<RuleKey>,
    /// Key → the generation of its latest local change; an acknowledgement of an older
    /// generation leaves it dirty.
    #[serde(default, with = "dirty_list")]
    pub dirty: BTreeMap<RuleKey, u64>,
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a cluster journal ({source}); move it away and restart: the next contact with etcd rebuilds it, keeping every local rule", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

pub struct Journal {
    dir: PathBuf,
    state: JournalState,
    /// The last save failed (full disk, read-only directory): the state in memory is newer
    /// than the file, and [`Journal::flush`] tries again.
    unsaved: Option<String>,
}

impl Journal {
    /// Opens the journal of `state_dir` (whose rule store this process owns, lock included).
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(JOURNAL_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| JournalError::Parse { path, source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JournalState::default(),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        Ok(Journal {
            dir: state_dir.to_path_buf(),
            state,
            unsaved: None,
        })
    }

    pub fn state(&self) -> &JournalState {
        &self.state
    }

    pub fn is_dirty(&self, key: &RuleKey) -> bool {
        self.state.dirty.contains_key(key)
    }

    /// Marks `keys` changed here, durably, and returns their generation. If the mark cannot
    /// be saved nothing is marked: for changes that are refused when they cannot be kept.
    pub fn mark_dirty(
        &mut self,
        keys: impl IntoIterator<Item = RuleKey>,
    ) -> Result<u64, JournalError> {
        let before = self.state.clone();
        let (generation, failed) = self.mark_dirty_or_defer(keys);
        match failed {
            None => Ok(generation),
            Some(error) => {
                self.state = before;
                Err(error)
            }
        }
    }

    /// [`Journal::mark_dirty`] for changes that happen whatever the disk does (automatic bans):
    /// the mark holds in memory if it cannot be saved, and the save's error comes back.
    pub fn mark_dirty_or_defer(
        &mut self,
        keys: impl IntoIterator<Item = RuleKey>,
    ) -> (u64, Option<JournalError>) {
        self.state.generation += 1;
        let generation = self.state.generation;
        for key in keys {
            self.state.dirty.insert(key, generation);
        }
        (generation, self.save().err())
    }

    /// etcd took this node's word for `keys` (as of `generation`): they are known there as
    /// present (`present`) or absent. Kept in memory if it cannot be saved.
    pub fn acknowledge(
        &mut self,
        keys: impl IntoIterator<Item = (RuleKey, bool)>,
        generation: u64,
    ) -> Option<JournalError> {
        for (key, present) in keys {
            if self.state.dirty.get(&key).is_some_and(|g| *g <= generation) {
                self.state.dirty.remove(&key);
            }
            if present {
                self.state.known.insert(key);
            } else {
                self.state.known.remove(&key);
            }
        }
        self.save().err()
    }

    /// A change seen in etcd (a watch event): known from now on, present or not. Saved with
    /// the next save; losing it costs at most one extra reconciliation step.
    pub fn observe(&mut self, key: RuleKey, present: bool) {
        if present {
            self.state.known.insert(key);
        } else {
            self.state.known.remove(&key);
        }
    }

    /// After a full reconciliation: etcd's keys and cluster. Kept in memory if it cannot be
    /// saved.
    pub fn reset_known(
        &mut self,
        cluster_id: u64,
        known: BTreeSet<RuleKey>,
    ) -> Option<JournalError> {
        self.state.cluster_id = Some(cluster_id);
        self.state.known = known;
        self.save().err()
    }

    /// The last save's error while the file is older than the state in memory.
    pub fn unsaved(&self) -> Option<&str> {
        self.unsaved.as_deref()
    }

    /// Saves again after a failed save; a no-op otherwise.
    pub fn flush(&mut self) -> Option<Result<(), JournalError>> {
        self.unsaved.as_ref()?;
        Some(self.save())
    }

    /// Writes the state. A failure is remembered (and logged once per run of failures) so
    /// that [`Journal::flush`] retries; what it loses in a crash before then is at worst a
    /// change pushed again or a rule reconciled etcd's way.
    pub fn save(&mut self) -> Result<(), JournalError> {
        let path = self.dir.join(JOURNAL_FILE);
        let mut bytes = serde_json::to_vec_pretty(&self.state).expect("journal state encodes");
        bytes.push(b'\n');
        match store::write_file_atomically(&self.dir, JOURNAL_FILE, &bytes) {
            Ok(()) => {
                if self.unsaved.take().is_some() {
                    info!(file = %path.display(), "the cluster journal can be written again");
                }
                Ok(())
            }
            Err(message) => {
                let error = JournalError::Write { path, message };
                if self.unsaved.is_none() {
                    warn!(error = %error, "the cluster journal cannot be written; it is kept in memory and written again every poll");
                }
                self.unsaved = Some(error.to_string());
                Err(error)
            }
        }
    }
}

/// What a reconciliation does on each side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Rules to store here exactly as etcd has them.
    pub store_here: Vec<StoredRule>,
    /// Rules to remove here: removed (or expired) elsewhere.
    pub remove_here: Vec<RuleKey>,
    /// Local rules etcd must get.
    pub push: Vec<StoredRule>,
    /// Keys etcd must drop: removed here while it could not be told.
    pub delete_there: Vec<RuleKey>,
    /// Keys changed here that etcd already holds as they are here: nothing left to send.
    pub settled: Vec<(RuleKey, bool)>,
}

impl Plan {
    /// Whether anything changes on either side.
    pub fn is_empty(&self) -> bool {
        self.store_here.is_empty()
            && self.remove_here.is_empty()
            && self.push.is_empty()
            && self.delete_there.is_empty()
    }
}

/// How far apart two expiries may be and still be the same rule: etcd counts leases in whole
/// seconds, and a record's seconds are rounded up.
const EXPIRY_SLACK: Duration = Duration::from_secs(2);

/// Decides, key by key: a key changed here since etcd last took this node's word (`dirty`)
/// goes this node's way; any other goes etcd's way, except a local rule etcd never knew
/// (made before the cluster, or in a new etcd), which is pushed.
pub fn reconcile(
    local: &[StoredRule],
    state: &JournalState,
    cluster_id: u64,
    remote: &[StoredRule],
    now: SystemTime,
) -> Plan {
    let same_etcd = state.cluster_id.is_none_or(|id| id == cluster_id);
    let local: BTreeMap<RuleKey, &StoredRule> = local
        .iter()
        .filter(|r| r.is_active(now))
        .map(|r| (r.key(), r))
        .collect();
    let remote: BTreeMap<RuleKey, &StoredRule> = remote.iter().map(|r| (r.key(), r)).collect();
    let keys: BTreeSet<RuleKey> = local
        .keys()
        .chain(remote.keys())
        .chain(state.dirty.keys())
        .copied()
        .collect();
    let mut plan = Plan::default();
    for key in keys {
        let here = local.get(&key).copied();
        let there = remote.get(&key).copied();
        if state.dirty.contains_key(&key) {
            match (here, there) {
                (Some(here), Some(there)) if same_rule(here, there) => {
                    plan.settled.push((key, true))
                }
                (Some(here), _) => plan.push.push(here.clone()),
                (None, Some(_)) => plan.delete_there.push(key),
                (None, None) => plan.settled.push((key, false)),
            }
            continue;
        }
        match (here, there) {
            (Some(here), Some(there)) => {
                if !same_rule(here, there) {
                    plan.store_here.push(there.clone());
                }
            }
            (None, Some(there)) => plan.store_here.push(there.clone()),
            (Some(_), None) if same_etcd && state.known.contains(&key) => {
                plan.remove_here.push(key)
            }
            (Some(here), None) => plan.push.push(here.clone()),
            (None, None) => {}
        }
    }
    plan
}

/// The same rule for the cluster's purposes: what it does, why, whose, and when it ends
/// (within [`EXPIRY_SLACK`]); `created` is each node's own.
pub fn same_rule(a: &StoredRule, b: &StoredRule) -> bool {
    let expiries_agree = match (a.expires, b.expires) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            let gap = x.duration_since(y).or_else(|_| y.duration_since(x));
            gap.is_ok_and(|gap| gap <= EXPIRY_SLACK)
        }
        _ => false,
    };
    a.key() == b.key()
        && a.scope == b.scope
        && a.origin == b.origin
        && a.reason == b.reason
        && a.node == b.node
        && expiries_agree
}

/// JSON object keys must be strings: the dirty map travels as a list of pairs.
mod dirty_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::store::RuleKey;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<RuleKey, u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<RuleKey, u64>, D::Error> {
        Ok(Vec::<(RuleKey, u64)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        rules::{Action, Scope},
        store::Origin,
    };

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
    }

    fn rule(net: &str, node: &str, ttl: Option<u64>) -> StoredRule {
        StoredRule {
            prefix: net.parse().unwrap(),
            action: Action::Block,
            scope: Scope::ProtectedPorts,
            origin: Origin::Manual,
            reason: "r".into(),
            created: now(),
            expires: ttl.map(|t| now() + Duration::from_secs(t)),
            node: Some(node.into()),
        }
    }

    fn state(known: &[&StoredRule], dirty: &[&StoredRule]) -> JournalState {
        JournalState {
            cluster_id: Some(7),
            known: known.iter().map(|r| r.key()).collect(),
            dirty: dirty.iter().map(|r| (r.key(), 1)).collect(),
            generation: 1,
        }
    }

    #[test]
    fn etcd_wins_for_keys_not_changed_here() {
        let a = rule("203.0.113.1/32", "n1", Some(600));
        let b = rule("203.0.113.2/32", "n2", None);
        let gone = rule("203.0.113.3/32", "n2", Some(600));
        let plan = reconcile(
            &[a.clone(), gone.clone()],
            &state(&[&a, &gone], &[]),
            7,
            &[a.clone(), b.clone()],
            now(),
        );
        assert_eq!(plan.store_here, [b]);
        assert_eq!(plan.remove_here, [gone.key()]);
        assert!(plan.push.is_empty() && plan.delete_there.is_empty());
    }

    #[test]
    fn changes_made_during_an_outage_go_to_etcd() {
        let made = rule("203.0.113.1/32", "n1", Some(600));
        let lifted = rule("203.0.113.2/32", "n2", None);
        let plan = reconcile(
            std::slice::from_ref(&made),
            &state(&[&lifted], &[&made, &lifted]),
            7,
            std::slice::from_ref(&lifted),
            now(),
        );
        assert_eq!(plan.push, [made]);
        assert_eq!(plan.delete_there, [lifted.key()]);
        assert!(plan.settled.is_empty());
        assert!(plan.store_here.is_empty() && plan.remove_here.is_empty());
    }

    #[test]
    fn rules_etcd_never_knew_are_pushed_and_a_new_etcd_removes_nothing() {
        let old = rule("203.0.113.1/32", "n1", None);
        let plan = reconcile(std::slice::from_ref(&old), &state(&[], &[]), 7, &[], now());
        assert_eq!(plan.push, std::slice::from_ref(&old));
        let plan = reconcile(
            std::slice::from_ref(&old),
            &state(&[&old], &[]),
            8,
            &[],
            now(),
        );
        assert_eq!(plan.push, [old]);
        assert!(plan.remove_here.is_empty());
    }

    #[test]
    fn nothing_expired_comes_back() {
        let expired = StoredRule {
            expires: Some(now() - Duration::from_secs(1)),
            ..rule("203.0.113.1/32", "n1", None)
        };
        let plan = reconcile(
            std::slice::from_ref(&expired),
            &state(&[], &[&expired]),
            7,
            &[],
            now(),
        );
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.settled, [(expired.key(), false)]);
    }

    #[test]
    fn expiries_a_second_apart_are_the_same_rule() {
        let a = rule("203.0.113.1/32", "n1", Some(600));
        let b = StoredRule {
            expires: Some(now() + Duration::from_secs(601)),
            created: now() + Duration::from_secs(5),
            ..a.clone()
        };
        assert!(same_rule(&a, &b));
        let plan = reconcile(std::slice::from_ref(&a), &state(&[&a], &[]), 7, &[b], now());
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn the_journal_survives_a_restart_and_acks_clear_only_their_generation() {
        let dir = tempfile::tempdir().unwrap();
        let key = rule("203.0.113.1/32", "n1", None).key();
        let mut journal = Journal::open(dir.path()).unwrap();
        let first = journal.mark_dirty([key]).unwrap();
        let second = journal.mark_dirty([key]).unwrap();
        assert!(journal.acknowledge([(key, true)], first).is_none());
        assert!(journal.is_dirty(&key), "a newer change is still unsent");
        let reopened = Journal::open(dir.path()).unwrap();
        assert!(reopened.is_dirty(&key));
        assert!(reopened.state().known.contains(&key));
        let mut reopened = reopened;
        assert!(reopened.acknowledge([(key, false)], second).is_none());
        let again = Journal::open(dir.path()).unwrap();
        assert!(!again.is_dirty(&key));
        assert!(!again.state().known.contains(&key));
    }

    #[test]
    fn a_journal_that_cannot_be_saved_refuses_strict_marks_and_keeps_deferred_ones() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let key = rule("203.0.113.1/32", "n1", None).key();
        let mut journal = Journal::open(&state_dir).unwrap();
        // Root ignores permissions; a directory that is gone fails every write.
        std::fs::remove_dir(&state_dir).unwrap();

        assert!(journal.mark_dirty([key]).is_err());
        assert!(
            !journal.is_dirty(&key),
            "a refused mark leaves nothing marked"
        );
        assert!(journal.unsaved().is_some());

        let (generation, failed) = journal.mark_dirty_or_defer([key]);
        assert!(failed.is_some());
        assert!(journal.is_dirty(&key), "a deferred mark holds in memory");

        std::fs::create_dir(&state_dir).unwrap();
        assert!(matches!(journal.flush(), Some(Ok(()))));
        assert!(journal.unsaved().is_none());
        assert!(journal.flush().is_none(), "nothing left to save");
        let reopened = Journal::open(&state_dir).unwrap();
        assert_eq!(reopened.state().dirty.get(&key), Some(&generation));
    }
}
