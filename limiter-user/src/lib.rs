//! glance-limiter's userspace: loads and drives the XDP program that counts and drops per
//! source in front of an OpenStack Glance API (OSSN-0076).
//!
//! - [`loader`] owns the loaded BPF object, its attachments and its maps; it is the only
//!   module that sees raw map bytes.
//! - [`net`], [`clock`] and [`rules`] are pure: address, time and rule conversions between
//!   the domain and what the kernel stores.
//! - [`store`] keeps every rule on disk, written atomically before a change returns.

pub mod budget;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod created_records;
pub mod daemon;
mod duration_text;
pub mod ebpf_objects;
pub mod loader;
pub mod metric;
pub mod metrics;
pub mod net;
pub mod net_list;
pub mod netlink;
pub mod operator_input;
pub mod policy;
pub mod policy_config;
pub mod prefix_rates;
pub mod prefixes;
pub mod proxy;
pub mod rates;
pub mod recommend;
pub mod rules;
pub mod store;
pub mod text;
mod time_text;
pub mod tui;
