//! The control API: protocol types shared by the daemon and its clients.

pub mod protocol;
