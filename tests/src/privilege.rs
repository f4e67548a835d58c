//! Tests that need root, BPF and network namespaces run for real in CI (`CI=true`) and fail
//! there if they cannot; elsewhere they print why and skip.

/// Whether this process may load BPF programs and create namespaces. When it may not: panics
/// in CI, prints the reason and returns `false` elsewhere.
pub fn kernel_tests_enabled(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let reason = format!("{test}: needs root (CAP_BPF, CAP_NET_ADMIN), running as uid {euid}");
    if in_ci() {
        panic!("{reason}; CI must run kernel tests, not skip them");
    }
    eprintln!("SKIPPED {reason}; run `cargo xtask test` as root");
    false
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (outside CI) the rest of a test that needs kernel privileges.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if !$crate::privilege::kernel_tests_enabled(module_path!()) {
            return;
        }
    };
}
