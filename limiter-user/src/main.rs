//! `limiter`: glance-limiter's daemon and command line. Everything lives in
//! `limiter_user::cli`; this only hands it the process.

use std::process::ExitCode;

fn main() -> ExitCode {
    limiter_user::cli::run(limiter_user::cli::parse())
}
