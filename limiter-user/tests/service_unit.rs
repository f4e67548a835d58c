//! The systemd unit (packaging/glance-limiter.service) agrees with the code it runs: its
//! command line parses, and the directories systemd creates and leaves writable are the
//! daemon's defaults. (`cargo xtask test` also runs `systemd-analyze verify` on it, as
//! packaged: xtask/src/dist/verify.rs.)

use std::path::{Path, PathBuf};

use limiter_user::{
    cli::{args::Command, Cli, Failure},
    config::{self, Config},
    loader::DEFAULT_PIN_DIR,
};

use clap::Parser;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/glance-limiter.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key` in `[Service]`, in order.
fn service_values(unit: &str, key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some(value) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                values.push(value.to_owned());
            }
        }
    }
    values
}

fn one(unit: &str, key: &str) -> String {
    match service_values(unit, key).as_slice() {
        [value] => value.clone(),
        other => panic!("[Service] should set {key} once, found {other:?}"),
    }
}

#[test]
fn exec_start_is_a_valid_limiter_run_reading_the_default_config() {
    let exec = one(&unit(), "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/bin/limiter", "the package installs it there");
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{exec}: {e}"));
    let Command::Run(run) = cli.command else {
        panic!("{exec} is not `limiter run`")
    };
    assert_eq!(run.config, Some(PathBuf::from(config::DEFAULT_PATH)));
    assert!(!run.tui, "a service has no terminal");
    assert_eq!(run.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
}

#[test]
fn systemds_directories_are_the_daemons_defaults() {
    let unit = unit();
    let defaults = Config::default();
    assert_eq!(
        Path::new("/var/lib").join(one(&unit, "StateDirectory")),
        defaults.state_dir
    );
    assert_eq!(
        Path::new("/run").join(one(&unit, "RuntimeDirectory")),
        defaults.socket.parent().unwrap()
    );
    // ProtectSystem=strict makes everything else read-only: the pins must stay writable.
    assert_eq!(one(&unit, "ProtectSystem"), "strict");
    let writable = one(&unit, "ReadWritePaths");
    assert!(
        Path::new(DEFAULT_PIN_DIR).starts_with(&writable),
        "ReadWritePaths={writable} does not cover {DEFAULT_PIN_DIR}"
    );
}

#[test]
fn a_bad_configuration_is_not_restarted_in_a_loop() {
    let unit = unit();
    assert_eq!(one(&unit, "Restart"), "on-failure");
    let bad_input = Failure::BadInput(String::new()).exit_code();
    assert_eq!(
        one(&unit, "RestartPreventExitStatus"),
        bad_input.to_string()
    );
}
