//! The rule store's loader: any bytes as `rules.json` in a state directory. Properties: the
//! unlocked reader (`read_rules`, the CLI's `list`) and the daemon's `RuleStore::open` agree;
//! rules that load are written back (`put_exact`) as a file that loads to the same rules.
#![no_main]

use std::{fs, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use limiter_user::store::{read_rules, RuleStore, RULES_FILE};

/// A tmpfs directory when there is one: every case writes and syncs a file.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = ["/dev/shm", "/tmp"]
            .into_iter()
            .find(|d| std::path::Path::new(d).is_dir())
            .expect("a scratch directory");
        let dir = tempfile::Builder::new()
            .prefix("limiter-fuzz-store-")
            .tempdir_in(base)
            .expect("a scratch directory");
        // Kept for the whole run (libFuzzer exits the process without running destructors).
        dir.keep()
    })
}

fuzz_target!(|bytes: &[u8]| {
    let dir = scratch().join("state");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("state directory");
    fs::write(dir.join(RULES_FILE), bytes).expect("write rules.json");

    let read = read_rules(&dir);
    let mut store = match RuleStore::open(&dir) {
        Ok(store) => store,
        Err(e) => {
            assert!(read.is_err(), "read_rules loads what open refuses: {e}");
            return;
        }
    };
    let rules = store.rules().to_vec();
    assert_eq!(
        read.as_deref().ok(),
        Some(&rules[..]),
        "read_rules and open disagree"
    );
    // A loaded store is sorted by key, one rule per key.
    assert!(rules.windows(2).all(|w| w[0].key() < w[1].key()));

    store
        .put_exact(rules.clone())
        .expect("loaded rules are written back");
    drop(store);
    assert_eq!(
        read_rules(&dir).ok(),
        Some(rules),
        "written back, they load differently"
    );
});
