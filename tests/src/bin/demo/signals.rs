//! Ctrl-C, `kill` and a closed terminal end the demo through its normal path, so that every
//! guard (traffic, daemon, Glance, namespaces) runs: the handlers only record the signal and
//! the main loop notices it within a tenth of a second.

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    if signal == libc::SIGHUP {
        // The terminal is gone: a later print would fail and panic, and a panic while a guard
        // cleans up aborts the clean-up. Output goes nowhere instead. open and dup2 are
        // async-signal-safe.
        // SAFETY: a NUL-terminated path; the descriptors are this process's own.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, libc::STDOUT_FILENO);
                libc::dup2(null, libc::STDERR_FILENO);
                libc::close(null);
            }
        }
    }
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe calls
        // and stores to an atomic. SA_RESTART spares the traffic threads' reads an EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The last signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
