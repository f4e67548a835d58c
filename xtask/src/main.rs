//! Project tasks cargo cannot do alone: toolchain set-up, privileged test runs, benchmarks,
//! the Debian package, fuzzing.
//! Run as `cargo xtask <task>` (alias in .cargo/config.toml).

mod bench;
mod cmd;
mod demo;
mod dist;
mod fuzz;
mod plots;
mod setup;
mod soak;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "glance-limiter project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; seconds when all is there):
    /// nightly rust-src, bpf-linker built against the nightly's LLVM, bpffs, Debian packages.
    Setup,
    /// Set up, then run every check: formatting, clippy (host and BPF target), unit tests,
    /// and the kernel tests (BPF_PROG_TEST_RUN and network namespaces; need root).
    Test,
    /// Set up, then run the benchmarks (need root); results in target/bench/, charts of them
    /// in docs/bench/.
    Bench {
        /// Run only this benchmark (xdp, daemon, e2e, flood, scale, tui, cluster).
        #[arg(long)]
        only: Option<String>,
    },
    /// Draw the charts in docs/bench/ from the results in target/bench/ (no root needed).
    Plots,
    /// Set up, then build the Debian package into target/dist/ and check its contents.
    Dist {
        /// `dev` packages the debug build, uncompressed (what `cargo xtask test` checks).
        #[arg(long, value_enum, default_value = "release")]
        profile: dist::Profile,
    },
    /// Set up, then run the daemon against an image-create flood on the real Glance API in
    /// throwaway network namespaces, with its live screen (needs root). Arguments go to the
    /// demo: `--headless`, `--duration 45s`, `--proxy` (both clients through HAProxy).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The CI run (`bash .ci/run`, CI=true) several times in a row on a fresh clone of HEAD,
    /// with every CPU kept busy by stress-ng (needs root; about 20 minutes a run here).
    Soak {
        /// Runs that must pass in a row.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// stress-ng CPU workers [default: one per CPU]; 0 runs without a hog.
        #[arg(long)]
        hog_workers: Option<usize>,
    },
    /// Set up the toolchain, then run each cargo-fuzz target in fuzz/ for `--duration` (one after the other,
    /// one job each; cargo-fuzz is installed on first use). Fails if a target crashes;
    /// figures in target/fuzz/summary.md (docs/FUZZING.md).
    Fuzz {
        /// How long each target runs: 90s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = fuzz::parse_duration)]
        duration: std::time::Duration,
        /// Run only this target (config, control, addresses, rule_store, http_class).
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test => {
            setup::run()?;
            test::run()
        }
        Task::Bench { only } => {
            if only.as_deref().is_some_and(bench::needs_only_bpf) {
                setup::toolchain()?;
                setup::bpffs()?;
            } else {
                setup::run()?;
            }
            bench::run(only.as_deref())
        }
        Task::Plots => plots::run(),
        Task::Dist { profile } => {
            setup::run()?;
            dist::package(profile).map(drop)
        }
        Task::Soak { runs, hog_workers } => {
            setup::run()?;
            soak::run(soak::SoakOptions { runs, hog_workers })
        }
        Task::Fuzz { duration, target } => {
            // Only the toolchain: the fuzz targets need no root, Glance or Debian packages.
            setup::toolchain()?;
            fuzz::run(duration, target.as_deref())
        }
        Task::Demo { args } => {
            demo::check_root()?;
            setup::run()?;
            demo::run(&args)
        }
    }
}
