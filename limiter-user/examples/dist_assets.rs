//! Writes what is generated from the clap definitions of `limiter` into a directory:
//! `completions/` (bash, zsh, fish) and `man/` (`limiter.1` and one page per command,
//! `limiter-run.1`...). `cargo xtask dist` runs it and packages the result.
//!
//! An example rather than part of the binary: the generators stay out of what is shipped,
//! and xtask, which must build before the BPF toolchain exists, does not depend on the
//! crate that embeds the BPF object.

use std::{fs, path::PathBuf, process::ExitCode};

use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: dist_assets OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing into {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &std::path::Path) -> std::io::Result<()> {
    let completions = out.join("completions");
    let man = out.join("man");
    for dir in [&completions, &man] {
        fs::create_dir_all(dir)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = limiter_user::cli::command();
        clap_complete::generate_to(shell, &mut command, "limiter", &completions)?;
    }
    clap_mangen::generate_to(limiter_user::cli::command(), &man)
}
