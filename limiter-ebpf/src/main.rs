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

mod headers;
mod http;
mod packet;
mod parse;
mod proxy;
mod proxy_protocol;
mod reject;
mod rules;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_jiffies64,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use limiter_common::{
    Config, Counter, SourceAddr, SourceStats, CONFIG_ANY_PORT_RULES, CONFIG_TRUSTED_PROXIES,
    DEFAULT_SOURCE_CAPACITY, PORT_BITMAP_WORDS, SOURCE_TRUSTED_PROXY,
};

use crate::{
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
#[map]
static PROXY_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

pub const PROXY_SLOT: u32 = 0;
pub const CLIENT_SLOT: u32 = 1;

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

type ProxyStage = fn(&XdpContext, &proxy::Packet, *mut SourceStats) -> Option<(u32, Counter)>;

/// Reads the segment again (a tail-called program starts afresh) and runs `stage` on it.
#[inline(always)]
fn process_proxied(ctx: &XdpContext, stage: ProxyStage) -> Result<(u32, Counter), Counter> {
    let (ethertype, l3_offset) = parse::ethernet(ctx)?;
    let net = parse::network(ctx, ethertype, l3_offset)?;
    if net.transport_hidden.is_some() || net.later_fragment || net.protocol != IPPROTO_TCP {
        return Err(Counter::PassMalformed);
    }
    let tcp = parse::tcp(ctx, &net)?;
    let Some((net, tcp)) = proxy::forget_layout(&net, &tcp) else {
        return Ok((xdp_action::XDP_PASS, Counter::PassProtected));
    };
    let now = unsafe { bpf_jiffies64() };
    let (generation, config_flags, path_prefixes) = config().map_or((0, 0, 0), |c| {
        (c.rules_generation, c.flags, c.path_prefixes)
    });
    let Some(row) = SOURCES.get_ptr_mut(net.src) else {
        return Ok((xdp_action::XDP_PASS, Counter::PassProtected));
    };
    // SAFETY: a live map value (see `Source::read`).
    let verdict = unsafe { cached_verdict(row, &net.src, generation, config_flags) };
    let counter = verdict.pass_counter(now).unwrap_or(Counter::PassProtected);
    let packet = proxy::Packet {
        net: &net,
        tcp: &tcp,
        now,
        generation,
        frame_bytes: packet::frame_len(ctx) as u64,
        config_flags,
        path_prefixes,
    };
    Ok(stage(ctx, &packet, row).unwrap_or((xdp_action::XDP_PASS, counter)))
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
    let (ethertype, l3_offset) = parse::ethernet(ctx)?;
    let net = parse::network(ctx, ethertype, l3_offset)?;
    if let Some(reason) = net.transport_hidden {
        return port_unknown(&net, reason);
    }
    if net.later_fragment {
        return other_traffic(&net, Counter::PassFragment);
    }
    if net.protocol != IPPROTO_TCP {
        return other_traffic(&net, Counter::PassNotTcp);
    }
    let tcp = match parse::tcp(ctx, &net) {
        Ok(tcp) => tcp,
        // A first fragment too short for the TCP header (RFC 1858's tiny fragment): the port
        // arrives in a later fragment and reassembly restores it, so judge by the source.
        Err(_) if net.first_fragment => return port_unknown(&net, Counter::PassFragment),
        Err(reason) => return Err(reason),
    };
    if !is_protected(tcp.dst_port) {
        return other_traffic(&net, Counter::PassOtherPort);
    }

    let now = unsafe { bpf_jiffies64() };
    let (generation, config_flags, path_prefixes) = config().map_or((0, 0, 0), |c| {
        (c.rules_generation, c.flags, c.path_prefixes)
    });
    if dropped_last_time(&net.src, generation, now) {
        return Ok((xdp_action::XDP_DROP, Counter::DropBlocked));
    }
    let frame_bytes = packet::frame_len(ctx) as u64;
    let mut source = Source::read(&net.src, generation, config_flags);
    source.syn = tcp.syn;
    let Some(counter) = source.verdict.pass_counter(now) else {
        // A new blocked source is not inserted: a spoofed flood from a blocked prefix must
        // not evict real sources.
        remember_drop(&net.src, generation, source.verdict);
        return Ok((xdp_action::XDP_DROP, Counter::DropBlocked));
    };
    if source.verdict.flags & SOURCE_TRUSTED_PROXY != 0 {
        // The proxy's own row counts its packets; the requests it carries are its clients'.
        if source.count(&net.src, generation, None, frame_bytes, now, &ZERO) {
            // Returns only if it failed (no proxy program loaded): the segment then passes as
            // the proxy's.
            hand_over(ctx, PROXY_SLOT);
        }
        return Ok((xdp_action::XDP_PASS, counter));
    }
    let class = if tcp.payload_len > 0 {
        http::classify(ctx, tcp.payload_offset, tcp.payload_len, path_prefixes)
    } else {
        None
    };
    source.count(&net.src, generation, class, frame_bytes, now, &ZERO);
    Ok((xdp_action::XDP_PASS, counter))
}

/// No address: `via` of a source that came directly.
const ZERO: SourceAddr = SourceAddr { words: [0, 0] };

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
    pub fn read(src: &SourceAddr, generation: u64, config_flags: u32) -> Source {
        match SOURCES.get_ptr_mut(src) {
            // SAFETY: a live map value; concurrent writers only touch it atomically or with
            // idempotent stores of the same cached verdict.
            Some(row) => Source {
                row: Some(row),
                verdict: unsafe { cached_verdict(row, src, generation, config_flags) },
                syn: false,
            },
            None => Source {
                row: None,
                verdict: read_verdict(src, config_flags),
                syn: false,
            },
        }
    }

    /// Counts one packet (of `class`, if it carries a request) for `src`, adding its row if
    /// it has none; `via` is the trusted proxy that carried it (zero: none). Returns whether
    /// a row counted it (false only when the table refused the insert).
    #[inline(always)]
    pub fn count(
        &self,
        src: &SourceAddr,
        generation: u64,
        class: Option<RequestClass>,
        frame_bytes: u64,
        now: u64,
        via: &SourceAddr,
    ) -> bool {
        if let Some(row) = self.row {
            add_in_place(row, self.syn, class, frame_bytes, now, via);
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
            via,
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

/// The verdict cached in a row, re-read from the tries if the rules changed since.
#[inline(always)]
unsafe fn cached_verdict(
    stats: *mut SourceStats,
    src: &SourceAddr,
    generation: u64,
    config_flags: u32,
) -> Verdict {
    if (*stats).rules_generation == generation {
        return Verdict {
            blocked_until: (*stats).blocked_until,
            allowed_until: (*stats).allowed_until,
            flags: (*stats).flags,
        };
    }
    let verdict = read_verdict(src, config_flags);
    // Volatile, so the generation is stored last and a reader that sees it also sees the
    // deadlines (x86 keeps store order; on weaker CPUs a racing reader may use the old
    // verdict for one packet). BPF has no fences.
    (&raw mut (*stats).blocked_until).write_volatile(verdict.blocked_until);
    (&raw mut (*stats).allowed_until).write_volatile(verdict.allowed_until);
    (&raw mut (*stats).flags).write_volatile(verdict.flags);
    (&raw mut (*stats).rules_generation).write_volatile(generation);
    verdict
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
fn is_protected(port: u16) -> bool {
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

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn insert_source(
    src: &SourceAddr,
    verdict: Verdict,
    generation: u64,
    syn: bool,
    class: Option<RequestClass>,
    frame_bytes: u64,
    now: u64,
    via: &SourceAddr,
) -> bool {
    let mut fresh = SourceStats {
        syns: syn as u64,
        packets: 1,
        bytes: frame_bytes,
        first_seen: now,
        last_seen: now,
        rules_generation: generation,
        blocked_until: verdict.blocked_until,
        allowed_until: verdict.allowed_until,
        flags: verdict.flags,
        via: *via,
        ..SourceStats::default()
    };
    match class {
        Some(RequestClass::ImageCreate) => fresh.image_create = 1,
        Some(RequestClass::OtherWrite) => fresh.other_write = 1,
        Some(RequestClass::Read) => fresh.read = 1,
        None => {}
    }
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
        add_in_place(stats, syn, class, frame_bytes, now, via);
        return true;
    }
    count(Counter::SourceInsertFailed);
    false
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

#[inline(always)]
fn add_in_place(
    stats: *mut SourceStats,
    syn: bool,
    class: Option<RequestClass>,
    frame_bytes: u64,
    now: u64,
    via: &SourceAddr,
) {
    // SAFETY: `stats` points at a live map value; the fields are u64 and 8-byte aligned.
    unsafe {
        add(&raw mut (*stats).packets, 1);
        add(&raw mut (*stats).bytes, frame_bytes);
        if syn {
            add(&raw mut (*stats).syns, 1);
        }
        match class {
            Some(RequestClass::ImageCreate) => add(&raw mut (*stats).image_create, 1),
            Some(RequestClass::OtherWrite) => add(&raw mut (*stats).other_write, 1),
            Some(RequestClass::Read) => add(&raw mut (*stats).read, 1),
            None => {}
        }
        (*stats).last_seen = now;
        if via.words != ZERO.words {
            (*stats).via = *via;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
