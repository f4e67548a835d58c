//! Rules: validation and merging. A rule is checked before anything changes; a rule that
//! meets one already stored merges by the precedence the store's documentation sets out.

use std::time::{Duration, SystemTime};

use super::{Origin, RuleProblem, StoreError, StoredRule};
use crate::rules::{self, Scope};

/// The latest time RFC 3339 (four-digit years) can write: 9999-12-31T23:59:59Z.
pub(super) const LAST_SECOND: Duration = Duration::from_secs(253_402_300_800 - 1);

pub(super) fn check(rule: &StoredRule) -> Result<(), RuleProblem> {
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
pub(super) fn check_time(field: &'static str, time: SystemTime) -> Result<(), RuleProblem> {
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
pub(super) fn validated(rules: Vec<StoredRule>) -> Result<Vec<StoredRule>, StoreError> {
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

pub(super) fn merge(existing: &StoredRule, incoming: StoredRule) -> StoredRule {
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
pub(super) fn later(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    Some(a?.max(b?))
}

pub(super) fn broader(a: Scope, b: Scope) -> Scope {
    if a == Scope::AllPorts || b == Scope::AllPorts {
        Scope::AllPorts
    } else {
        Scope::ProtectedPorts
    }
}
