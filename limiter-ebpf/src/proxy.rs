//! Traffic from trusted proxies: each request belongs to the client the proxy names, per
//! request (a backend connection may carry several clients' requests in turn), and a banned
//! client's request is answered in Glance's place instead of reaching it.
//!
//! Only sources cached as trusted proxies in their row come here, so other sources pay
//! nothing for this. The proxy's own row counts its packets, bytes and connections as for
//! any source; its request classes stay zero, so nothing it relays is ever counted as its
//! own. What it relayed is counted in [`PROXY_RELAYS`] (the requests it carried, and those
//! whose client could not be read), and the proxy that carried a client's latest request in
//! [`CLIENT_VIA`]: maps of their own, so that every other source's row stays one cache line.

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use limiter_common::{
    client_addr::HeaderKind, relay_slot, ConnKey, ConnState, Counter, CpuRelays, ProxyRelays,
    SourceAddr, CONFIG_COUNT_RESPONSES, CONFIG_FORWARDED_HEADER, CONFIG_IMAGE_CREATE_BUDGET,
    CONN_PROXY_CLIENT, CONN_PROXY_NO_CLIENT, CONN_REJECTED, DEFAULT_SOURCE_CAPACITY,
    PROXY_RELAYS_CAPACITY, PROXY_RELAY_SLOTS, SOURCE_TRUSTED_PROXY,
};

use crate::{
    add, add_or_insert,
    budget::{self, Admission},
    conns::{self, PROXY_CONNS},
    headers,
    http::{self, RequestClass},
    parse::{Network, Tcp, TCP_FLAG_FIN, TCP_FLAG_RST},
    proxy_protocol::{self, Named},
    reject, responses, Source,
};

/// Client → the trusted proxy that carried its latest request; userspace sizes it as the
/// per-source table.
#[map]
static CLIENT_VIA: LruHashMap<SourceAddr, SourceAddr> =
    LruHashMap::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);

/// Trusted proxy → what it relayed, for proxies without a per-CPU slot of their own.
#[map]
static PROXY_RELAYS: LruHashMap<SourceAddr, ProxyRelays> =
    LruHashMap::with_max_entries(PROXY_RELAYS_CAPACITY, 0);

/// Per CPU, slot [`relay_slot`] → the proxy that holds it and what this CPU counted for it
/// (see `limiter_common::PROXY_RELAYS_CPU_MAP`).
#[map]
static PROXY_RELAYS_CPU: PerCpuArray<CpuRelays> =
    PerCpuArray::with_max_entries(PROXY_RELAY_SLOTS, 0);

/// Shortest request worth classifying (see `http::classify`).
const MIN_REQUEST_LEN: usize = 16;

/// What the rest of the program needs from the current packet.
pub struct Packet<'a> {
    pub net: &'a Network,
    pub tcp: &'a Tcp,
    pub now: u64,
    pub generation: u64,
    pub frame_bytes: u64,
    /// The main program found no state for this connection (see `HANDED`).
    pub no_conn_state: bool,
    pub config_flags: u32,
    pub path_prefixes: u32,
}

/// The packet's layout as "some offsets": the verifier reaches this path from every parse
/// path (VLAN tags, IP options, extension headers), each with its own exact offsets, and would
/// check the whole proxy path once per combination, over its budget. Every access below is
/// bounds-checked anyway (`packet::header`), so nothing depends on the offsets being known.
#[inline(always)]
pub fn forget_layout(net: &Network, tcp: &Tcp) -> Option<(Network, Tcp)> {
    // SAFETY: this CPU's window; a program run is not preempted on its CPU.
    let window = unsafe { &mut *headers::window()? };
    let net = Network {
        src: net.src,
        l3_offset: window.forget(net.l3_offset),
        is_ipv6: window.forget(net.is_ipv6 as usize) != 0,
        // The byte-sized fields go through the window too: as constants (TCP, not a
        // fragment), LLVM merges their stores into one 2- or 4-byte store at an odd stack
        // offset, which the verifier rejects (misaligned stack access).
        protocol: window.forget(net.protocol as usize) as u8,
        l4_offset: window.forget(net.l4_offset),
        l3_end: window.forget(net.l3_end),
        later_fragment: window.forget(0) != 0,
        first_fragment: window.forget(0) != 0,
        transport_hidden: None,
    };
    let tcp = Tcp {
        dst_port: tcp.dst_port,
        flags: tcp.flags,
        syn: tcp.syn,
        payload_offset: window.forget(tcp.payload_offset),
        payload_len: window.forget(tcp.payload_len),
    };
    Some((net, tcp))
}

/// A segment from a trusted proxy to a protected port (its own row already counted it).
/// Returns the verdict and its counter, or `None` to pass the segment as any other from the
/// proxy. (The proxy's pass counter stays with the caller: one verifier state fewer to carry
/// through the path below.)
#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &Packet) -> Option<(u32, Counter)> {
    let passed = None;
    let Some(key) = conns::key(ctx, packet.net) else {
        return passed;
    };
    let tcp = packet.tcp;
    if tcp.syn {
        // A new connection from a reused port starts with no PROXY header or rejection.
        let _ = PROXY_CONNS.remove(key);
        return passed;
    }
    // SAFETY: the value is copied out at once; a concurrent update can only make the copy
    // stale, which the next segment corrects.
    let state = if packet.no_conn_state {
        None
    } else {
        unsafe { PROXY_CONNS.get(key) }.copied()
    };
    if let Some(state) = state {
        if state.flags & CONN_REJECTED != 0 {
            let _ = PROXY_CONNS.remove(key);
            return Some(match reject::reset(ctx, packet.net, state.reset_seq) {
                Some(()) => (xdp_action::XDP_PASS, Counter::ResetProxied),
                None => (xdp_action::XDP_DROP, Counter::DropProxied),
            });
        }
    }
    if tcp.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        // The connection ends with this segment (a rejection below records it again).
        let _ = PROXY_CONNS.remove(key);
    }
    request(ctx, packet, &key, state)
}

/// The request (if any) in the segment's payload.
#[inline(always)]
fn request(
    ctx: &XdpContext,
    packet: &Packet,
    key: &ConnKey,
    state: Option<ConnState>,
) -> Option<(u32, Counter)> {
    let passed = None;
    let tcp = packet.tcp;
    let mut offset = tcp.payload_offset;
    let mut len = tcp.payload_len;
    if len == 0 {
        return passed;
    }
    let mut named = match state {
        Some(s) if s.flags & CONN_PROXY_CLIENT != 0 => Some(Named::Client(s.client)),
        Some(s) if s.flags & CONN_PROXY_NO_CLIENT != 0 => Some(Named::NoClient),
        _ => None,
    };
    if state.is_none() {
        // A PROXY header can only open the connection's data; HAProxy sends it with, or
        // just before, the first request.
        if let Some((header_names, header_len)) = proxy_protocol::read(ctx, offset, len) {
            crate::count(Counter::ProxyHeader);
            let new_state = match header_names {
                Named::Client(client) => ConnState {
                    client,
                    flags: CONN_PROXY_CLIENT,
                    reset_seq: 0,
                },
                Named::NoClient => ConnState {
                    flags: CONN_PROXY_NO_CLIENT,
                    ..ConnState::default()
                },
            };
            let _ = PROXY_CONNS.insert(key, new_state, 0);
            named = Some(header_names);
            if header_len >= len {
                return passed;
            }
            offset += header_len;
            len -= header_len;
        }
    }
    // SAFETY: this CPU's window; a program run is not preempted on its CPU.
    let window = unsafe { &mut *headers::window()? };
    // Where the request starts (after a PROXY header or not) and its class are forgotten
    // before the header scan, which is then verified once for all of them.
    let (offset, len) = (window.forget(offset), window.forget(len));
    if len < MIN_REQUEST_LEN {
        return passed;
    }
    let class = http::classify(ctx, offset, len, packet.path_prefixes)?;
    let class_code = window.forget(class as usize);
    let client = match named {
        Some(Named::Client(client)) => Some(client),
        Some(Named::NoClient) => None,
        None => {
            let kind = if packet.config_flags & CONFIG_FORWARDED_HEADER != 0 {
                HeaderKind::Forwarded
            } else {
                HeaderKind::XForwardedFor
            };
            headers::client(ctx, offset, offset + len, kind)
        }
    };
    if let Some(client) = client {
        // The rest (the client's verdict, its row, the rejection) runs in a program of its
        // own, `glance_limiter_client`: checked once, from a clean state, within its own
        // budget.
        pend(client, class_code as u64)?;
        crate::hand_over(ctx, crate::CLIENT_SLOT);
    }
    // No client could be read, or the hand-over failed: the request is unattributed rather
    // than the proxy's.
    unattributed(&packet.net.src, passed)
}

/// What the main program can settle of a trusted proxy's segment without the proxy program.
pub enum Shortcut {
    /// A request on a connection whose PROXY header named its client: [`PENDING`] holds it,
    /// for `glance_limiter_client`.
    KnownClient,
    /// A segment on such a connection that starts no request: it passes as the proxy's.
    NoRequest,
    /// A connection without state (no PROXY header, not rejected): the proxy program's to
    /// read, without looking the connection up again.
    NoConnState,
    /// Anything else: the proxy program's to read.
    Other,
}

/// The common case of a PROXY-protocol backend connection, taken in the main program: a
/// request on a connection whose PROXY header already named the client goes straight to the
/// client program, one tail call and one parse of the segment fewer than through the proxy
/// program, and the rest of a request (an upload's data) passes at once. Everything else (a
/// connection's first data, SYN, FIN or RST, a refused connection, a connection without a
/// PROXY header) is left to the proxy program.
#[inline(always)]
pub fn shortcut(ctx: &XdpContext, net: &Network, tcp: &Tcp, path_prefixes: u32) -> Shortcut {
    if tcp.syn
        || tcp.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
        || tcp.payload_len < MIN_REQUEST_LEN
    {
        return Shortcut::Other;
    }
    let Some(key) = conns::key(ctx, net) else {
        return Shortcut::Other;
    };
    // SAFETY: copied out at once (see `handle`).
    let Some(state) = (unsafe { PROXY_CONNS.get(key) }).copied() else {
        return Shortcut::NoConnState;
    };
    if state.flags & (CONN_PROXY_CLIENT | CONN_REJECTED) != CONN_PROXY_CLIENT {
        return Shortcut::Other;
    }
    let Some(class) = http::classify(ctx, tcp.payload_offset, tcp.payload_len, path_prefixes)
    else {
        // The rest of a request (an image's data): nothing for the client stage.
        return Shortcut::NoRequest;
    };
    match pend(state.client, class as u64) {
        Some(()) => Shortcut::KnownClient,
        None => Shortcut::Other,
    }
}

/// A proxied request whose client is known, handed from `glance_limiter_proxy` (or, on a
/// connection whose PROXY header named it, from `glance_limiter`) to `glance_limiter_client`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    client: SourceAddr,
    /// `RequestClass` as a number.
    class: u64,
}

#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Leaves `client`'s request (of class `class`, `RequestClass` as a number) in this CPU's
/// [`PENDING`] slot for `glance_limiter_client`.
#[inline(always)]
fn pend(client: SourceAddr, class: u64) -> Option<()> {
    let pending = PENDING.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
    unsafe { *pending = Pending { client, class } };
    Some(())
}

/// The second half of a proxied request with a known client: its verdict, its row, and the
/// rejection if it is banned. `packet.net.src` is the proxy.
#[inline(always)]
pub fn client_request(ctx: &XdpContext, packet: &Packet) -> Option<(u32, Counter)> {
    let passed = None;
    let pending = PENDING.get(0)?;
    let client = pending.client;
    let class = match pending.class {
        0 => RequestClass::ImageCreate,
        1 => RequestClass::OtherWrite,
        _ => RequestClass::Read,
    };
    let source = Source::read(&client, packet.generation, packet.config_flags, packet.now);
    if source.verdict.flags & SOURCE_TRUSTED_PROXY != 0 {
        // A proxy naming another trusted proxy names no client.
        return unattributed(&packet.net.src, passed);
    }
    if source.verdict.pass_counter(packet.now).is_none() {
        return refuse(
            ctx,
            packet,
            source.verdict.blocked_until,
            Counter::RejectProxied,
        );
    }
    count_relay(&packet.net.src, Relay::Proxied);
    crate::count(Counter::ProxiedRequest);
    let seen_this_jiffy = source.last_seen() == Some(packet.now);
    source.count(
        &client,
        packet.generation,
        Some(class),
        packet.frame_bytes,
        packet.now,
    );
    if !seen_this_jiffy {
        // Once a jiffy per client: a client that moves to another proxy is shown behind it
        // from its first request in the next jiffy, and a flood through one proxy does not
        // pay a lookup per request.
        remember_via(&client, &packet.net.src);
    }
    if matches!(class, RequestClass::ImageCreate) {
        if packet.config_flags & CONFIG_IMAGE_CREATE_BUDGET != 0 {
            let row = source.row_of(&client);
            if let Admission::Refuse { next_at } = budget::charge(row, &client, packet.now) {
                return refuse(ctx, packet, next_at, Counter::RejectOverBudget);
            }
        }
        if packet.config_flags & CONFIG_COUNT_RESPONSES != 0 {
            responses::expect(ctx, packet.net, &client);
        }
    }
    passed
}

#[inline(always)]
fn unattributed(proxy: &SourceAddr, passed: Option<(u32, Counter)>) -> Option<(u32, Counter)> {
    count_relay(proxy, Relay::Unattributed);
    crate::count(Counter::UnattributedRequest);
    passed
}

#[derive(Clone, Copy)]
enum Relay {
    Proxied,
    Unattributed,
}

/// Counts one relayed request for `proxy`: in this CPU's slot for it, if the slot is free or
/// the proxy's already (no hash lookup), else in the shared table, adding its entry if it has
/// none.
#[inline(always)]
fn count_relay(proxy: &SourceAddr, relay: Relay) {
    if let Some(slot) = PROXY_RELAYS_CPU.get_ptr_mut(relay_slot(proxy)) {
        // SAFETY: this CPU's slot; a program run is not preempted on its CPU, and userspace
        // only reads it.
        let slot = unsafe { &mut *slot };
        let free = slot.relays.proxied == 0 && slot.relays.unattributed == 0;
        if free || slot.proxy.words == proxy.words {
            if free {
                slot.proxy = *proxy;
            }
            match relay {
                Relay::Proxied => slot.relays.proxied += 1,
                Relay::Unattributed => slot.relays.unattributed += 1,
            }
            return;
        }
    }
    let add_to = |row: *mut ProxyRelays| {
        // SAFETY: a live map value, its fields u64 and 8-byte aligned.
        unsafe {
            match relay {
                Relay::Proxied => add(&raw mut (*row).proxied, 1),
                Relay::Unattributed => add(&raw mut (*row).unattributed, 1),
            }
        }
    };
    let fresh = match relay {
        Relay::Proxied => ProxyRelays {
            proxied: 1,
            unattributed: 0,
        },
        Relay::Unattributed => ProxyRelays {
            proxied: 0,
            unattributed: 1,
        },
    };
    add_or_insert(&PROXY_RELAYS, proxy, fresh, add_to);
}

/// Records `proxy` as the one that carried `client`'s latest request; a write only when it
/// changed (a client usually stays behind one proxy).
#[inline(always)]
fn remember_via(client: &SourceAddr, proxy: &SourceAddr) {
    // SAFETY: copied out at once.
    let known = unsafe { CLIENT_VIA.get(client) }.copied();
    if known.is_some_and(|via| via.words == proxy.words) {
        return;
    }
    let _ = CLIENT_VIA.insert(client, proxy, 0);
}

/// Answers a refused client's request in Glance's place (`Retry-After` until `until`,
/// jiffies) and remembers to reset Glance's side of the connection (what else was known of it
/// no longer matters: the next segment ends it). The connection's key is built here, on this
/// rare path only.
#[inline(always)]
fn refuse(
    ctx: &XdpContext,
    packet: &Packet,
    until: u64,
    answered: Counter,
) -> Option<(u32, Counter)> {
    let key = &conns::key(ctx, packet.net)?;
    Some(
        match reject::answer(ctx, packet.net, packet.tcp.payload_len, until, packet.now) {
            Some(reset_seq) => {
                let rejected = ConnState {
                    flags: CONN_REJECTED,
                    reset_seq,
                    ..ConnState::default()
                };
                let _ = PROXY_CONNS.insert(key, rejected, 0);
                (xdp_action::XDP_TX, answered)
            }
            None => (xdp_action::XDP_DROP, Counter::DropProxied),
        },
    )
}
