//! `cargo xtask fuzz`: every cargo-fuzz target in fuzz/ for a set time each, one after the
//! other, on one core. A run grows its corpus under target/fuzz/corpus/<target>, seeded from
//! the small corpus committed in fuzz/corpus/<target>; crashes are kept in
//! fuzz/artifacts/<target>/. Figures go to the terminal and to target/fuzz/summary.md.
//!
//! cargo-fuzz is installed here on first use, not by `cargo xtask setup`: setup runs before
//! every `cargo xtask test` in CI, which never fuzzes, and a fresh CI machine would otherwise
//! build cargo-fuzz (about a minute) on every run for nothing.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, succeeds};

/// The targets in fuzz/fuzz_targets/, in the order they run.
pub const TARGETS: &[(&str, &str)] = &[
    ("config", "Config::from_toml_str, printed and parsed again"),
    (
        "control",
        "control line framing, request and response decoding",
    ),
    ("addresses", "CLI and config-list addresses and prefixes"),
    (
        "rule_store",
        "rules.json loaded by read_rules and RuleStore::open",
    ),
    (
        "http_class",
        "the userspace twin of the kernel's HTTP classifier",
    ),
    (
        "client_addr",
        "the proxy path's client-address readers (kernel code, plain loops)",
    ),
];

/// The cargo-fuzz release installed on first use (builds with the stable toolchain here).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run reported.
#[derive(Debug, Default, PartialEq)]
pub struct Figures {
    pub execs: u64,
    pub execs_per_sec: u64,
    /// Coverage counters (edges) and features hit, as libFuzzer counts them.
    pub cov: u64,
    pub features: u64,
    /// Inputs in the corpus at the end.
    pub corpus: u64,
    pub new_units: u64,
    pub peak_rss_mb: u64,
}

pub fn run(duration: Duration, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(name) if TARGETS.iter().any(|(t, _)| *t == name) => vec![name],
        Some(name) => bail!(
            "no fuzz target `{name}`; the targets are {}",
            TARGETS
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => TARGETS.iter().map(|(t, _)| *t).collect(),
    };
    cargo_fuzz()?;
    let root = cmd::workspace_root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["+nightly", "fuzz", "build", "--fuzz-dir", "fuzz"])
            .args(&targets),
    )?;
    let out = root.join("target/fuzz");
    fs::create_dir_all(&out)?;
    let mut results = Vec::new();
    for target in &targets {
        let started = Instant::now();
        let (figures, crashed) = run_target(&root, &out, target, duration)?;
        results.push((*target, figures, crashed, started.elapsed()));
    }
    let summary = summary(&results, duration);
    eprintln!("\n{summary}");
    fs::write(out.join("summary.md"), &summary)?;
    let crashed: Vec<&str> = results.iter().filter(|r| r.2).map(|r| r.0).collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes in {crashed:?}: reproducers are in fuzz/artifacts/<target>/; \
             replay one with `cargo +nightly fuzz run <target> <file>`, fix the code and add a \
             regression test next to it"
        );
    }
    Ok(())
}

/// Installs cargo-fuzz unless `cargo fuzz` already answers.
fn cargo_fuzz() -> Result<()> {
    if succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        return Ok(());
    }
    cmd::run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Runs one target for `duration` on one core; its whole output goes to
/// target/fuzz/<target>.log, the progress lines to the terminal.
fn run_target(
    root: &Path,
    out: &Path,
    target: &str,
    duration: Duration,
) -> Result<(Figures, bool)> {
    let corpus = out.join("corpus").join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus)?;
    fs::create_dir_all(&seeds)?;
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", duration.as_secs().max(1)))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("xtask: fuzzing {target} for {}s", duration.as_secs());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
    let log_path = out.join(format!("{target}.log"));
    let mut log = fs::File::create(&log_path)?;
    let mut output = String::new();
    let stderr = child.stderr.take().expect("stderr is piped");
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        writeln!(log, "{line}")?;
        if line.contains("pulse") || line.contains("DONE") || is_failure(&line) {
            eprintln!("  {target}: {line}");
        }
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait()?;
    let figures = parse_figures(&output);
    let crashed = !status.success();
    if crashed {
        eprintln!(
            "xtask: {target} failed ({status}); its output is in {}",
            log_path.display()
        );
    }
    Ok((figures, crashed))
}

fn is_failure(line: &str) -> bool {
    line.contains("==ERROR") || line.contains("panicked at") || line.contains("Test unit written")
}

/// Figures from libFuzzer's output: the last status line (`#N ... cov: C ft: F corp: U/...`)
/// and the final stats (`-print_final_stats=1`).
pub fn parse_figures(output: &str) -> Figures {
    let mut figures = Figures::default();
    let field = |line: &str, name: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        let value = words.next()?;
        value.split('/').next()?.parse().ok()
    };
    for line in output.lines() {
        if line.starts_with('#') && line.contains("cov: ") {
            figures.cov = field(line, "cov:").unwrap_or(figures.cov);
            figures.features = field(line, "ft:").unwrap_or(figures.features);
            figures.corpus = field(line, "corp:").unwrap_or(figures.corpus);
        }
        let Some((name, value)) = line
            .strip_prefix("stat::")
            .and_then(|stat| stat.split_once(':'))
        else {
            continue;
        };
        let value = value.trim().parse().unwrap_or(0);
        match name {
            "number_of_executed_units" => figures.execs = value,
            "average_exec_per_sec" => figures.execs_per_sec = value,
            "new_units_added" => figures.new_units = value,
            "peak_rss_mb" => figures.peak_rss_mb = value,
            _ => {}
        }
    }
    figures
}

fn summary(results: &[(&str, Figures, bool, Duration)], duration: Duration) -> String {
    let mut text = format!(
        "Fuzzing, {} s per target, one job each (`cargo xtask fuzz --duration {}s`):\n\n\
         | target | ran (s) | execs | execs/s | cov (edges) | features | corpus | new units | peak RSS (MB) | result |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        duration.as_secs(),
        duration.as_secs()
    );
    for (target, f, crashed, ran) in results {
        let _ = writeln!(
            text,
            "| {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ran.as_secs(),
            f.execs,
            f.execs_per_sec,
            f.cov,
            f.features,
            f.corpus,
            f.new_units,
            f.peak_rss_mb,
            if *crashed { "CRASH" } else { "no finding" }
        );
    }
    text
}

/// `90s`, `10m`, `1h` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 90s, 10m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{text}`: the unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the duration must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10 min").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn figures_come_from_the_last_status_line_and_the_final_stats() {
        let output = "\
INFO: Seed: 1\n\
#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
#4096\tpulse  cov: 120 ft: 300 corp: 40/900b lim: 43 exec/s: 2048 rss: 40Mb\n\
#50000\tDONE   cov: 130 ft: 333 corp: 45/1Kb lim: 100 exec/s: 5000 rss: 41Mb\n\
Done 50000 runs in 10 second(s)\n\
stat::number_of_executed_units: 50000\n\
stat::average_exec_per_sec:     5000\n\
stat::new_units_added:          44\n\
stat::slowest_unit_time_sec:    0\n\
stat::peak_rss_mb:              41\n";
        assert_eq!(
            parse_figures(output),
            Figures {
                execs: 50000,
                execs_per_sec: 5000,
                cov: 130,
                features: 333,
                corpus: 45,
                new_units: 44,
                peak_rss_mb: 41,
            }
        );
    }
}
