//! The control API: protocol types shared by the daemon and its clients, the socket server
//! the daemon runs, and the client the CLI (and later the TUI) uses.

pub mod access;
pub mod client;
pub mod framing;
pub mod protocol;
mod proxies;
pub mod query;
pub mod server;
