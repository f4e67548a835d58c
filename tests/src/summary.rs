//! Summaries of repeated measurements, and where the benchmarks write them.

use std::{fs, path::PathBuf};

/// `target/bench/` (under `CARGO_TARGET_DIR` when set).
pub fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench")
}

/// The median (the upper one of an even count). Panics on an empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Writes `report` as pretty JSON to `target/bench/<name>` and says where.
pub fn write_report(name: &str, report: &impl serde::Serialize) {
    let dir = bench_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(report).expect("a report is plain data");
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("wrote {}", path.display());
}
