//! glance-limiter's XDP program: counts, per source, what reaches the protected ports (new
//! connections, packets, bytes, HTTP requests by class) and drops traffic from blocked sources.
//! Anything it cannot parse is passed untouched and counted by reason.
//!
//! Cost model (see docs/BENCHMARKS.md): traffic to other ports is parsed and counted, nothing
//! else. A known source costs one hash lookup: its rule verdict is cached in its row and
//! re-read from the tries only when userspace bumps the rules generation. Time is
//! `bpf_jiffies64`, which the verifier inlines; the other kernel clocks cost a helper call.
#![no_std]
#![no_main]
// The BPF target has no AtomicU64::fetch_add; the intrinsic lowers to BPF's atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod budget;
mod conns;
mod creates;
mod headers;
mod http;
mod packet;
mod parse;
mod proxy;
mod proxy_protocol;
mod reject;
mod responses;
mod rules;

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    mem::MaybeUninit,
};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_jiffies64,
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use limiter_common::{
    Config, Counter, SourceAddr, SourceStats, CONFIG_ANY_PORT_RULES, CONFIG_COUNT_RESPONSES,
    CONFIG_IMAGE_CREATE_BUDGET, CONFIG_TRUSTED_PROXIES, DEFAULT_SOURCE_CAPACITY, NEVER,
    PORT_BITMAP_WORDS, SOURCE_REJECTED_CONNS, SOURCE_TRUSTED_PROXY, SOURCE_VERDICT_ALLOWED,
    SOURCE_VERDICT_BLOCKED, SOURCE_VERDICT_MASK, SOURCE_VERDICT_PASS,
};

use crate::{
    budget::Admission,
    http::RequestClass,
    parse::{Network, IPPROTO_TCP},
    rules::Verdict,
};

#[map]
static SOURCES: LruHashMap<SourceAddr, SourceStats> =
    LruHashMap::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);

#[map]
static PROTECTED_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Slot 0: `glance_limiter_proxy`, which the main program hands trusted proxies' segments to.
/// A program of its own because the verifier checks each program within a budget, and the
/// proxy path (header scan, address parsing, the rejection response) would not fit beside
/// everything else; entered with a clean state, it is also checked once, not once per way the
/// main program can reach it.
/// Slot 1: `glance_limiter_client`, which the proxy program hands a request with a known
/// client to, for the same reason.
/// Slot 2: `glance_limiter_create`, which refuses a direct client's image create over its
/// budget or records it for Glance's answer (see `creates`).
#[map]
static PROXY_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(3, 0);

pub const PROXY_SLOT: u32 = 0;
pub const CLIENT_SLOT: u32 = 1;

/// What the main program knew of the trusted proxy's segment this CPU handed over, for the
/// proxy and client programs (a tail-called program keeps nothing but the packet):
/// [`HANDED_ALLOWED`], the proxy's pass counter is `PassAllowed` (else `PassProtected`), which
/// the stages count the segment under when they pass it (reading it from the proxy's row
/// again would be a hash lookup in each); [`HANDED_NO_CONN_STATE`], the main program looked
/// the connection up and it has no state (the proxy program need not look again). Read from
/// map memory, it is also "some number" to the verifier, which then checks the stages once
/// for every combination.
#[map]
static HANDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

pub const HANDED_ALLOWED: u64 = 1;
pub const HANDED_NO_CONN_STATE: u64 = 2;

/// Tail-calls the program in `slot`; returns only if that failed.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, slot: u32) {
    // SAFETY: a tail call with this program's own context.
    unsafe { PROXY_PROGRAMS.tail_call(ctx, slot) };
}

/// The last source this CPU dropped on a protected port, and the verdict that dropped it. A
/// flood is one source's packets back to back: while the rules generation is unchanged and
/// the verdict still says drop, its next packet is dropped without the hash lookup.
#[map]
static LAST_DROP: PerCpuArray<LastDrop> = PerCpuArray::with_max_entries(1, 0);

/// Private to the program (userspace never reads it). All zero matches no packet's source
/// with a dropping verdict, so the initial entry is inert.
#[repr(C)]
#[derive(Clone, Copy)]
struct LastDrop {
    src: [u64; 2],
    rules_generation: u64,
    verdict: Verdict,
}

#[xdp]
pub fn glance_limiter(ctx: XdpContext) -> u32 {
    let (action, counter) = match process(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => (xdp_action::XDP_PASS, reason),
    };
    count(counter);
    action
}

/// A trusted proxy's segment to a protected port, handed over by `glance_limiter` (see
/// [`PROXY_PROGRAMS`]) after counting it in the proxy's own row.
#[xdp]
pub fn glance_limiter_proxy(ctx: XdpContext) -> u32 {
    let (action, counter) = match process_proxied(&ctx, proxy::handle) {
        Ok(verdict) => verdict,
        Err(reason) => (xdp_action::XDP_PASS, reason),
    };
    count(counter);
    action
}

/// A trusted proxy's request whose client is known, handed over by `glance_limiter_proxy`.
#[xdp]
pub fn glance_limiter_client(ctx: XdpContext) -> u32 {
    let (action, counter) = match process_proxied(&ctx, proxy::client_request) {
        Ok(verdict) => verdict,
        Err(reason) => (xdp_action::XDP_PASS, reason),
    };
    count(counter);
    action
}

/// A direct client's image create after the main program counted it (refused over its
/// budget, or recorded for Glance's answer), or a segment on a connection refused so; handed
/// over by `glance_limiter`.
#[xdp]
pub fn glance_limiter_create(ctx: XdpContext) -> u32 {
    let (action, counter) = match process_create(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => (xdp_action::XDP_PASS, reason),
    };
    count(counter);
    action
}

/// Reads the segment again (a tail-called program starts afresh), its layout forgotten, and
/// takes the step the main program asked for.
#[inline(always)]
fn process_create(ctx: &XdpContext) -> Result<(u32, Counter), Counter> {
    let (net, tcp) = reparse(ctx)?;
    let now = unsafe { bpf_jiffies64() };
    creates::step(ctx, &net, &tcp, now).ok_or(Counter::PassProtected)
}

/// The segment a tail-called program was handed, parsed again with its layout forgotten
/// (see `proxy::forget_layout`). Anything else than TCP with a readable header passes.
#[inline(always)]
fn reparse(ctx: &XdpContext) -> Result<(Network, parse::Tcp), Counter> {
    let (net, tcp) = match parse::ipv4_tcp(ctx) {
        Some(common) => common,
        None => {
            let (ethertype, l3_offset) = parse::ethernet(ctx)?;
            let net = parse::network(ctx, ethertype, l3_offset)?;
            if net.transport_hidden.is_some() || net.later_fragment || net.protocol != IPPROTO_TCP {
                return Err(Counter::PassMalformed);
            }
            let tcp = parse::tcp(ctx, &net)?;
            (net, tcp)
        }
    };
    proxy::forget_layout(&net, &tcp).ok_or(Counter::PassProtected)
}

type ProxyStage = fn(&XdpContext, &proxy::Packet) -> Option<(u32, Counter)>;

/// Reads the segment again (a tail-called program starts afresh) and runs `stage` on it.
#[inline(always)]
fn process_proxied(ctx: &XdpContext, stage: ProxyStage) -> Result<(u32, Counter), Counter> {
    let (net, tcp) = reparse(ctx)?;
    let now = unsafe { bpf_jiffies64() };
    let (generation, config_flags, path_prefixes) = config().map_or((0, 0, 0), |c| {
        (c.rules_generation, c.flags, c.path_prefixes)
    });
    // No slot is no program run at all (an array's only entry): returning there, rather
    // than defaulting, keeps the verifier at one state through the stage.
    let handed = *HANDED.get(0).ok_or(Counter::PassProtected)?;
    let allowed = handed & HANDED_ALLOWED != 0;
    let packet = proxy::Packet {
        net: &net,
        tcp: &tcp,
        now,
        generation,
        frame_bytes: packet::frame_len(ctx) as u64,
        no_conn_state: handed & HANDED_NO_CONN_STATE != 0,
        config_flags,
        path_prefixes,
    };
    Ok(stage(ctx, &packet).unwrap_or_else(|| {
        let counter = if allowed {
            Counter::PassAllowed
        } else {
            Counter::PassProtected
        };
        (xdp_action::XDP_PASS, counter)
    }))
}

/// Glance's answers on the way out (TC egress): counts each answer to an image create the
/// XDP program passed, as created or failed, for the create's client (see `responses`).
/// Only reads; every packet continues as it was.
#[classifier]
pub fn glance_limiter_responses(ctx: TcContext) -> i32 {
    if let Some(counter) = responses::answered(&ctx) {
        count(counter);
    }
    // TCX_NEXT: on to whatever else is attached, then the device.
    -1
}

/// Writes the kernel's jiffies into the first 8 bytes of the frame. Userspace runs it through
/// BPF_PROG_TEST_RUN to read the clock the rules' deadlines are kept in.
#[xdp]
pub fn clock_probe(ctx: XdpContext) -> u32 {
    if ctx.data() + 8 <= ctx.data_end() {
        // SAFETY: 8 bytes checked in bounds just above.
        unsafe { (ctx.data() as *mut u64).write_unaligned(bpf_jiffies64()) };
    }
    xdp_action::XDP_PASS
}

/// The verdict and the counter that explains it; `Err` means "pass untouched, for this reason".
#[inline(always)]
fn process(ctx: &XdpContext) -> Result<(u32, Counter), Counter> {
    let (net, tcp) = match parse::ipv4_tcp(ctx) {
        Some(common) => common,
        None => match parse_layers(ctx) {
            Ok(segment) => segment,
            Err(judged) => return judged,
        },
    };
    if !is_protected(tcp.dst_port) {
        return other_traffic(&net, Counter::PassOtherPort);
    }
    process_protected(ctx, &net, &tcp)
}

/// Any frame, layer by layer: a TCP segment, or (`Err`) the outcome for what is not one.
#[inline(always)]
fn parse_layers(
    ctx: &XdpContext,
) -> Result<(Network, parse::Tcp), Result<(u32, Counter), Counter>> {
    let (ethertype, l3_offset) = parse::ethernet(ctx).map_err(Err)?;
    let net = parse::network(ctx, ethertype, l3_offset).map_err(Err)?;
    if let Some(reason) = net.transport_hidden {
        return Err(port_unknown(&net, reason));
    }
    if net.later_fragment {
        return Err(other_traffic(&net, Counter::PassFragment));
    }
    if net.protocol != IPPROTO_TCP {
        return Err(other_traffic(&net, Counter::PassNotTcp));
    }
    match parse::tcp(ctx, &net) {
        Ok(tcp) => Ok((net, tcp)),
        // A first fragment too short for the TCP header (RFC 1858's tiny fragment): the port
        // arrives in a later fragment and reassembly restores it, so judge by the source.
        Err(_) if net.first_fragment => Err(port_unknown(&net, Counter::PassFragment)),
        Err(reason) => Err(Err(reason)),
    }
}

/// A TCP segment to a protected port.
#[inline(always)]
fn process_protected(
    ctx: &XdpContext,
    net: &Network,
    tcp: &parse::Tcp,
) -> Result<(u32, Counter), Counter> {
    let now = unsafe { bpf_jiffies64() };
    let (generation, config_flags, path_prefixes) = config().map_or((0, 0, 0), |c| {
        (c.rules_generation, c.flags, c.path_prefixes)
    });
    if dropped_last_time(&net.src, generation, now) {
        return Ok((xdp_action::XDP_DROP, Counter::DropBlocked));
    }
    let frame_bytes = packet::frame_len(ctx) as u64;
    let mut source = Source::read(&net.src, generation, config_flags, now);
    source.syn = tcp.syn;
    let Some(counter) = source.verdict.pass_counter(now) else {
        // A new blocked source is not inserted: a spoofed flood from a blocked prefix must
        // not evict real sources.
        if source.verdict.flags & SOURCE_REJECTED_CONNS == 0 {
            remember_drop(&net.src, generation, source.verdict);
        } else if let Some(verdict) = creates::on_refused_connection(ctx, net, tcp) {
            // Banned since a create of it was refused: that connection's last segment still
            // closes Glance's socket (dropped, it would leave the socket open). Such a source
            // is kept out of the last-drop shortcut so its segments get here.
            return Ok(verdict);
        }
        return Ok((xdp_action::XDP_DROP, Counter::DropBlocked));
    };
    if source.verdict.flags & SOURCE_TRUSTED_PROXY != 0 {
        // The proxy's own row counts its packets; the requests it carries are its clients'.
        if source.count(&net.src, generation, None, frame_bytes, now) {
            let shortcut = proxy::shortcut(ctx, net, tcp, path_prefixes);
            if let proxy::Shortcut::NoRequest = shortcut {
                return Ok((xdp_action::XDP_PASS, counter));
            }
            if let Some(handed) = HANDED.get_ptr_mut(0) {
                let mut known = u64::from(counter == Counter::PassAllowed) * HANDED_ALLOWED;
                if let proxy::Shortcut::NoConnState = shortcut {
                    known |= HANDED_NO_CONN_STATE;
                }
                // SAFETY: this CPU's slot; a program run is not preempted on its CPU.
                unsafe { *handed = known };
            }
            // Each returns only if it failed (no program loaded): the segment then passes as
            // the proxy's.
            if let proxy::Shortcut::KnownClient = shortcut {
                hand_over(ctx, CLIENT_SLOT);
            }
            hand_over(ctx, PROXY_SLOT);
        }
        return Ok((xdp_action::XDP_PASS, counter));
    }
    if source.verdict.flags & SOURCE_REJECTED_CONNS != 0 {
        if let Some(verdict) = creates::on_refused_connection(ctx, net, tcp) {
            return Ok(verdict);
        }
    }
    let class = if tcp.payload_len > 0 {
        http::classify(ctx, tcp.payload_offset, tcp.payload_len, path_prefixes)
    } else {
        None
    };
    source.count(&net.src, generation, class, frame_bytes, now);
    if matches!(class, Some(RequestClass::ImageCreate)) {
        if config_flags & CONFIG_IMAGE_CREATE_BUDGET != 0 {
            // Counted above all the same: the daemon's rates are of what a source attempts.
            let row = source.row_of(&net.src);
            if let Admission::Refuse { next_at } = budget::charge(row, &net.src, now) {
                return Ok(creates::refuse(ctx, next_at));
            }
        }
        if config_flags & CONFIG_COUNT_RESPONSES != 0 {
            return Ok(creates::record(ctx, counter));
        }
    }
    Ok((xdp_action::XDP_PASS, counter))
}

/// A source's row (if it has one) and its verdict, read once per packet.
pub struct Source {
    row: Option<*mut SourceStats>,
    pub verdict: Verdict,
    /// Whether the packet counted for it is a connection attempt.
    syn: bool,
}

impl Source {
    /// The row of `src` with its cached verdict, or, for a source not in the table, the
    /// verdict from the tries.
    #[inline(always)]
    pub fn read(src: &SourceAddr, generation: u64, config_flags: u32, now: u64) -> Source {
        match SOURCES.get_ptr_mut(src) {
            // SAFETY: a live map value; concurrent writers only touch it atomically or with
            // idempotent stores of the same cached verdict.
            Some(row) => Source {
                row: Some(row),
                verdict: unsafe { cached_verdict(row, src, generation, config_flags, now) },
                syn: false,
            },
            None => Source {
                row: None,
                verdict: read_verdict(src, config_flags),
                syn: false,
            },
        }
    }

    /// When the source's row last counted a packet (before this one), if it has a row.
    #[inline(always)]
    pub fn last_seen(&self) -> Option<u64> {
        // SAFETY: a live map value; a racing store of another CPU's `now` is as good.
        self.row.map(|row| unsafe { (*row).last_seen })
    }

    /// The row counted for `src`: the one read, else the one `count` just added (looked up
    /// again: only an image create needs it, of a source whose first packet it is).
    #[inline(always)]
    pub fn row_of(&self, src: &SourceAddr) -> Option<*mut SourceStats> {
        self.row.or_else(|| SOURCES.get_ptr_mut(src))
    }

    /// Counts one packet (of `class`, if it carries a request) for `src`, adding its row if
    /// it has none. Returns whether a row counted it (false only when the table refused the
    /// insert).
    #[inline(always)]
    pub fn count(
        &self,
        src: &SourceAddr,
        generation: u64,
        class: Option<RequestClass>,
        frame_bytes: u64,
        now: u64,
    ) -> bool {
        if let Some(row) = self.row {
            add_in_place(row, self.syn, class, frame_bytes, now);
            return true;
        }
        insert_source(
            src,
            self.verdict,
            generation,
            self.syn,
            class,
            frame_bytes,
            now,
        )
    }
}

/// A source's verdict from the tries, and whether it is a trusted proxy.
#[inline(always)]
fn read_verdict(src: &SourceAddr, config_flags: u32) -> Verdict {
    let mut verdict = rules::lookup(src);
    if config_flags & CONFIG_TRUSTED_PROXIES != 0 && rules::is_trusted_proxy(src) {
        verdict.flags = SOURCE_TRUSTED_PROXY;
    }
    verdict
}

/// Whether this CPU's last drop was `src` under the same rules, and still drops now.
#[inline(always)]
fn dropped_last_time(src: &SourceAddr, generation: u64, now: u64) -> bool {
    let Some(last) = LAST_DROP.get(0) else {
        return false;
    };
    last.src == src.words
        && last.rules_generation == generation
        && last.verdict.pass_counter(now).is_none()
}

#[inline(always)]
fn remember_drop(src: &SourceAddr, generation: u64, verdict: Verdict) {
    if let Some(last) = LAST_DROP.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, and a program run is not preempted on its CPU.
        unsafe {
            *last = LastDrop {
                src: src.words,
                rules_generation: generation,
                verdict,
            }
        };
    }
}

impl Verdict {
    /// The pass counter for this source's traffic to a protected port now, or `None` when it
    /// is to be dropped (blocked, and no allow rule exempts it).
    #[inline(always)]
    fn pass_counter(&self, now: u64) -> Option<Counter> {
        if now >= self.blocked_until {
            Some(Counter::PassProtected)
        } else if now < self.allowed_until {
            Some(Counter::PassAllowed)
        } else {
            None
        }
    }
}

/// The verdict cached in a row, re-read from the tries if the rules changed since or the
/// cached verdict's time is up.
#[inline(always)]
unsafe fn cached_verdict(
    stats: *mut SourceStats,
    src: &SourceAddr,
    generation: u64,
    config_flags: u32,
    now: u64,
) -> Verdict {
    if (*stats).rules_generation == generation as u32 && now < (*stats).verdict_until {
        return Verdict::cached((*stats).flags, (*stats).verdict_until);
    }
    let mut verdict = read_verdict(src, config_flags);
    // Not the rules' to clear: it says where to look for this source's refused connections.
    verdict.flags |= (*stats).flags & SOURCE_REJECTED_CONNS;
    let (flags, until) = verdict.to_cache(now);
    // Volatile, so the generation is stored last and a reader that sees it also sees the
    // deadline (x86 keeps store order; on weaker CPUs a racing reader may use the old
    // verdict for one packet). BPF has no fences.
    (&raw mut (*stats).verdict_until).write_volatile(until);
    (&raw mut (*stats).flags).write_volatile(flags);
    (&raw mut (*stats).rules_generation).write_volatile(generation as u32);
    verdict
}

impl Verdict {
    /// What a row keeps of this verdict at `now`: the flags with its kind, and until when
    /// that kind holds. A block's end turns a drop into a pass, an allow's end a pass into
    /// a drop (if the block lasts); past those, the tries are read again.
    #[inline(always)]
    fn to_cache(self, now: u64) -> (u16, u64) {
        let (kind, until) = if now >= self.blocked_until {
            (SOURCE_VERDICT_PASS, NEVER)
        } else if now < self.allowed_until {
            (
                SOURCE_VERDICT_ALLOWED,
                self.allowed_until.min(self.blocked_until),
            )
        } else {
            (SOURCE_VERDICT_BLOCKED, self.blocked_until)
        };
        ((self.flags & !SOURCE_VERDICT_MASK) | kind, until)
    }

    /// The verdict a row's cache stands for while `until` is ahead: the same pass counter
    /// (and, for a block, the same end) as the verdict it was made from.
    #[inline(always)]
    fn cached(flags: u16, until: u64) -> Verdict {
        let (blocked_until, allowed_until) = match flags & SOURCE_VERDICT_MASK {
            SOURCE_VERDICT_ALLOWED => (until, until),
            SOURCE_VERDICT_BLOCKED => (until, 0),
            _ => (0, 0),
        };
        Verdict {
            blocked_until,
            allowed_until,
            flags: flags & !SOURCE_VERDICT_MASK,
        }
    }
}

/// Traffic whose source is known but whose destination port cannot be read. It may be bound
/// for a protected port, so a blocked source's is dropped (else fragmenting, or stacking
/// IPv6 extension headers, would slip past a ban); anyone else's passes untouched.
#[inline(always)]
fn port_unknown(net: &Network, pass_reason: Counter) -> Result<(u32, Counter), Counter> {
    let now = unsafe { bpf_jiffies64() };
    match rules::lookup(&net.src).pass_counter(now) {
        None => Ok((xdp_action::XDP_DROP, Counter::DropBlocked)),
        Some(_) => Err(pass_reason),
    }
}

/// Traffic that is not TCP to a protected port: passed, unless an "all ports" block covers
/// its source. The lookup is skipped entirely while no such rule exists.
#[inline(always)]
fn other_traffic(net: &Network, pass_reason: Counter) -> Result<(u32, Counter), Counter> {
    let any_port_rules = config().is_some_and(|c| c.flags & CONFIG_ANY_PORT_RULES != 0);
    if any_port_rules && rules::blocked_on_any_port(&net.src, unsafe { bpf_jiffies64() }) {
        return Ok((xdp_action::XDP_DROP, Counter::DropBlockedAnyPort));
    }
    Err(pass_reason)
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn is_protected(port: u16) -> bool {
    PROTECTED_PORTS
        .get((port >> 6) as u32)
        .is_some_and(|word| word & (1u64 << (port & 63)) != 0)
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, a plain increment is enough.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn insert_source(
    src: &SourceAddr,
    verdict: Verdict,
    generation: u64,
    syn: bool,
    class: Option<RequestClass>,
    frame_bytes: u64,
    now: u64,
) -> bool {
    let (flags, verdict_until) = verdict.to_cache(now);
    let (mut image_create, mut other_write, mut read) = (0, 0, 0);
    match class {
        Some(RequestClass::ImageCreate) => image_create = 1,
        Some(RequestClass::OtherWrite) => other_write = 1,
        Some(RequestClass::Read) => read = 1,
        None => {}
    }
    let mut slot = MaybeUninit::<SourceStats>::uninit();
    let fresh = slot.as_mut_ptr();
    // SAFETY: every field of the stack slot is written before it is read. The `u32` fields
    // are stored one by one with volatile stores: LLVM would merge neighbours into 8-byte
    // stores at 4-byte offsets, and the verifier rejects misaligned stack access.
    let fresh = unsafe {
        (&raw mut (*fresh).packets).write_volatile(1);
        (&raw mut (*fresh).budget_low).write_volatile(0);
        (&raw mut (*fresh).bytes).write(frame_bytes);
        (&raw mut (*fresh).first_seen).write(now);
        (&raw mut (*fresh).last_seen).write(now);
        (&raw mut (*fresh).verdict_until).write(verdict_until);
        (&raw mut (*fresh).syns).write_volatile(syn as u32);
        (&raw mut (*fresh).image_create).write_volatile(image_create);
        (&raw mut (*fresh).other_write).write_volatile(other_write);
        (&raw mut (*fresh).read).write_volatile(read);
        (&raw mut (*fresh).rules_generation).write_volatile(generation as u32);
        (&raw mut (*fresh).flags).write_volatile(flags);
        (&raw mut (*fresh).budget_high).write_volatile(0);
        slot.assume_init_ref()
    };
    // NOEXIST: an LRU update of an existing key would allocate a new node and lose the
    // counts another CPU added meanwhile.
    // No lookup of the new row afterwards: nothing here needs it (the proxy program finds
    // the row itself), and on a new source's path a second hash lookup is pure cost.
    if SOURCES.insert(src, fresh, BPF_NOEXIST as u64).is_ok() {
        count(Counter::SourceNew);
        return true;
    }
    if let Some(stats) = SOURCES.get_ptr_mut(src) {
        // Another CPU inserted this source between our lookup and insert.
        add_in_place(stats, syn, class, frame_bytes, now);
        return true;
    }
    count(Counter::SourceInsertFailed);
    false
}

/// Adds to `key`'s entry of `map` with `add_to`, or enters `fresh` (which already counts it)
/// when it has none. NOEXIST, as for source rows: when another CPU entered it since the
/// lookup, that entry is added to.
#[inline(always)]
pub fn add_or_insert<K, V>(map: &LruHashMap<K, V>, key: &K, fresh: V, add_to: impl Fn(*mut V)) {
    if let Some(entry) = map.get_ptr_mut(key) {
        add_to(entry);
        return;
    }
    if map.insert(key, fresh, BPF_NOEXIST as u64).is_err() {
        if let Some(entry) = map.get_ptr_mut(key) {
            add_to(entry);
        }
    }
}

/// Adds `n` to a counter of a live map value, atomically: several CPUs may update one source
/// at once.
///
/// # Safety
/// `field` points at a u64 of a live map value, 8-byte aligned.
#[inline(always)]
pub unsafe fn add(field: *mut u64, n: u64) {
    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, n);
}

/// [`add`] for a `u32` counter (it wraps, as its readers expect).
///
/// # Safety
/// `field` points at a u32 of a live map value, 4-byte aligned.
#[inline(always)]
unsafe fn add32(field: *mut u32) {
    atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(field, 1);
}

#[inline(always)]
fn add_in_place(
    stats: *mut SourceStats,
    syn: bool,
    class: Option<RequestClass>,
    frame_bytes: u64,
    now: u64,
) {
    // SAFETY: `stats` points at a live map value; every field is naturally aligned.
    unsafe {
        add32(&raw mut (*stats).packets);
        add(&raw mut (*stats).bytes, frame_bytes);
        if syn {
            add32(&raw mut (*stats).syns);
        }
        match class {
            Some(RequestClass::ImageCreate) => add32(&raw mut (*stats).image_create),
            Some(RequestClass::OtherWrite) => add32(&raw mut (*stats).other_write),
            Some(RequestClass::Read) => add32(&raw mut (*stats).read),
            None => {}
        }
        (*stats).last_seen = now;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
