//! The connections the program keeps state for: a trusted proxy's backend connections that
//! began with a PROXY header, and any connection whose request was answered in Glance's
//! place (the peer's next segment on it becomes the reset that closes Glance's socket).
//! Others need no state.

use aya_ebpf::{macros::map, maps::LruHashMap, programs::XdpContext};
use limiter_common::{ConnKey, ConnState, PROXY_CONN_CAPACITY};

use crate::{
    packet::header,
    parse::{self, Network},
};

#[map]
pub static PROXY_CONNS: LruHashMap<ConnKey, ConnState> =
    LruHashMap::with_max_entries(PROXY_CONN_CAPACITY, 0);

/// The connection's key: the peer's address and port (a proxy's, or a direct client's), the
/// local address and port.
#[inline(always)]
pub fn key(ctx: &XdpContext, net: &Network) -> Option<ConnKey> {
    let ports = header::<4>(ctx, net.l4_offset)?;
    Some(ConnKey {
        proxy: net.src,
        local: parse::destination(ctx, net)?,
        proxy_port: ports.raw16(0),
        local_port: ports.raw16(2),
        _pad: 0,
    })
}
