use std::{
    fs,
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use super::{
    file::{FileVersion, Step, FAIL_AT},
    *,
};

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
