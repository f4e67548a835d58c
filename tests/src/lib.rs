//! Test kit for glance-limiter's kernel tests: crafted frames, an independent frame reader,
//! network-namespace guards, and a small HTTP server and client that behave like Glance and
//! its users.

pub mod frames;
pub mod glance;
pub mod http;
pub mod netns;
pub mod privilege;
pub mod reference;
