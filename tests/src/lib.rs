//! Test kit for glance-limiter's kernel tests: crafted frames, an independent frame reader,
//! network-namespace guards, a small HTTP server and client that behave like Glance and its
//! users, the real Glance, and the `limiter` daemon and CLI for end-to-end tests.

pub mod daemon;
pub mod frames;
pub mod glance;
pub mod http;
pub mod netns;
pub mod privilege;
pub mod reference;
