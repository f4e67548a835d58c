//! Probes from the clients of an [`AttackTopology`]: whether a source is served, or dropped.

use std::{io, time::Duration};

use crate::{
    http::{connect_from, request, FLOOD_CONNECT_TIMEOUT},
    netns::{AttackTopology, ClientNet},
};

/// A connect expected to be dropped gets this long: past a veth round trip, below the 1 s SYN
/// retransmission timeout.
pub const BLOCKED_CONNECT_TIMEOUT: Duration = Duration::from_millis(700);

impl AttackTopology {
    /// The client network `src` belongs to.
    pub fn net_of(&self, src: &str) -> &ClientNet {
        [&self.attacker, &self.legit]
            .into_iter()
            .find(|net| net.v4.contains(&src) || net.v6.contains(&src))
            .unwrap_or_else(|| panic!("{src} is no client address of the topology"))
    }

    /// A new connection from `src` to `port` (one SYN: see [`FLOOD_CONNECT_TIMEOUT`]) and one
    /// `GET /v2/images`: whether it was answered 200.
    pub fn served(&self, src: &str, port: u16) -> bool {
        let net = self.net_of(src);
        let dst = net.server_addr_for(src);
        net.ns.run(|| {
            connect_from(src, dst, port, FLOOD_CONNECT_TIMEOUT)
                .and_then(|mut s| request(&mut s, "GET", "/v2/images", ""))
                .is_ok_and(|status| status == 200)
        })
    }

    /// Asserts that a connect from `src` to `port` is dropped: it times out (a refusal would
    /// mean a RST came back, so the SYN got through).
    pub fn assert_dropped(&self, src: &str, port: u16, context: &str) {
        let net = self.net_of(src);
        let dst = net.server_addr_for(src);
        match net
            .ns
            .run(|| connect_from(src, dst, port, BLOCKED_CONNECT_TIMEOUT))
        {
            Ok(_) => panic!("{context}: {src} connected"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{context}: {src}: {e}"),
        }
    }
}
