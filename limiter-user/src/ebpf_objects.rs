//! The BPF objects built by `build.rs` and embedded in the binary.

/// The glance-limiter XDP program and its maps.
pub static LIMITER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/limiter"));

/// Do-nothing reference programs (`empty_pass`, `empty_drop`) that benchmarks measure against.
#[cfg(any(test, feature = "test-support"))]
pub static BASELINE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));

/// The flood benchmark's sender (`flood_tx`): redirects live test-run frames into a veth.
/// Test and benchmark tooling; the daemon never loads it.
#[cfg(any(test, feature = "test-support"))]
pub static FLOOD_TX: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flood_tx"));

/// A stand-in for a running older version (`legacy_v1`: the previous per-source row layout),
/// for the upgrade test. Test tooling; the daemon never loads it.
#[cfg(any(test, feature = "test-support"))]
pub static LEGACY_V1: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/legacy_v1"));
