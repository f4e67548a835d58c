//! Link state from the kernel over rtnetlink, without a netlink crate: [`parse`] reads the
//! messages (pure, tested on crafted bytes), [`socket`] dumps the link table and watches its
//! events on a thread of its own.

pub mod parse;
pub mod socket;

pub use parse::{LinkChange, LinkMessage};
pub use socket::{dump_links, watch, LinkEvent, Watcher};
