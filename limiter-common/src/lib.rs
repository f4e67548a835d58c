//! Types shared by the XDP program and its userspace: map names, keys, values and counter
//! indices. Everything here is `#[repr(C)]`, `Copy` and free of implicit padding, because the
//! kernel and userspace read the same bytes.
#![no_std]

pub mod bytewise;
pub mod client_addr;
pub mod http_class;
pub mod maps;

pub use maps::{MapKind, MapSpec, LPM_KEY_BYTES, PINNED_MAPS, PINNED_MAP_SPECS};

/// The XDP entry point in the BPF object.
pub const PROGRAM_NAME: &str = "glance_limiter";

/// Per-source counters (LRU hash, [`SourceAddr`] → [`SourceStats`]).
pub const SOURCES_MAP: &str = "SOURCES";
/// Block rules (LPM trie keyed by prefix length + 16 address bytes → [`BlockRule`]).
pub const BLOCK_MAP: &str = "BLOCK_RULES";
/// Allow rules (LPM trie, same key → [`AllowRule`]).
pub const ALLOW_MAP: &str = "ALLOW_RULES";
/// Protected destination ports as a 65,536-bit bitmap (array of `u64` words).
pub const PORTS_MAP: &str = "PROTECTED_PORTS";
/// Single-entry array holding [`Config`].
pub const CONFIG_MAP: &str = "CONFIG";
/// The program the XDP entry point hands trusted proxies' segments to (a tail call).
pub const PROXY_PROGRAM_NAME: &str = "glance_limiter_proxy";
/// The program the proxy program hands a request with a known client to (a tail call).
pub const CLIENT_PROGRAM_NAME: &str = "glance_limiter_client";
/// The program the XDP entry point hands a direct client's image create to once counted
/// (refused over budget, or recorded for Glance's answer), and the segments of connections
/// refused so (a tail call).
pub const CREATE_PROGRAM_NAME: &str = "glance_limiter_create";
/// The tail-call slot array holding them (slot 0: proxy, 1: client, 2: create).
pub const PROXY_PROGRAMS_MAP: &str = "PROXY_PROGRAMS";
/// The program that reports the kernel's clock (jiffies) through a test run.
pub const CLOCK_PROBE_NAME: &str = "clock_probe";
/// Global per-CPU counters (per-CPU array of `u64`, indexed by [`Counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Trusted proxies (LPM trie, same key as the rules → [`TrustedProxy`]).
pub const TRUSTED_PROXIES_MAP: &str = "TRUSTED_PROXIES";
/// Backend connections of trusted proxies the program keeps state for (LRU hash,
/// [`ConnKey`] → [`ConnState`]): the client a PROXY protocol header named, or a rejection.
pub const PROXY_CONNS_MAP: &str = "PROXY_CONNS";
/// URL path prefixes Glance is served under (array of [`PathPrefix`], [`MAX_PATH_PREFIXES`]).
pub const PATH_PREFIXES_MAP: &str = "PATH_PREFIXES";
/// Single-entry array holding the [`RejectTemplate`].
pub const REJECT_MAP: &str = "REJECT_TEMPLATE";
/// [`BudgetConfig`]: the image-create budget (single entry).
pub const BUDGET_CONFIG_MAP: &str = "BUDGET_CONFIG";
/// Source → [`SourceCreates`].
pub const CREATES_MAP: &str = "CREATES";
/// Sources with an entry. Only sources that create images get one; an entry evicted starts
/// again with a whole budget, as a new source does.
pub const CREATES_CAPACITY: u32 = 65_536;
/// Connections with image creates awaiting Glance's answer: [`ConnKey`] → [`PendingCreates`].
pub const CREATE_CONNS_MAP: &str = "CREATE_CONNS";
/// The program that reads Glance's answers on the way out (TC egress).
pub const RESPONSES_PROGRAM_NAME: &str = "glance_limiter_responses";

/// Default bound of the per-source table; userspace may change it at load time.
pub const DEFAULT_SOURCE_CAPACITY: u32 = 65_536;
/// Bound of each rule trie. Tries are not preallocated, so this costs nothing until used.
pub const RULE_CAPACITY: u32 = 1 << 20;
/// Backend connections of trusted proxies tracked at once.
pub const PROXY_CONN_CAPACITY: u32 = 65_536;
/// Path prefixes the request classifier tries after `POST `.
pub const MAX_PATH_PREFIXES: u32 = 4;
/// Longest path prefix: compared as two 8-byte words.
pub const PATH_PREFIX_MAX_LEN: usize = 16;
/// Header bytes of a proxied request the program reads looking for the client's address, from
/// the start of the request line. A request whose headers run past it is unattributed.
pub const HEADER_SCAN_LEN: usize = 2048;
/// Longest HTTP response the program answers a rejected proxied request with.
pub const REJECT_MAX_LEN: usize = 256;
/// Words in the protected-port bitmap.
pub const PORT_BITMAP_WORDS: u32 = 65_536 / 64;
/// IPv6 extension headers the program walks before giving up (and passing the packet).
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;
/// VLAN tags the program looks through (802.1Q and 802.1ad, so QinQ).
pub const MAX_VLAN_TAGS: u32 = 2;

/// "Never expires" for the `until*` deadlines of rules.
pub const NEVER: u64 = u64::MAX;

/// A source address. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so both families share one
/// key space and one set of prefix tries (an IPv4 /n is the mapped /(96+n)).
///
/// Held as two words whose memory holds the 16 address bytes in network order: the XDP
/// program fills it with two 8-byte loads, and the stack copy stays 8-byte aligned (the
/// verifier rejects misaligned stack access).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceAddr {
    pub words: [u64; 2],
}

impl SourceAddr {
    pub fn from_octets(octets: [u8; 16]) -> Self {
        let mut first = [0u8; 8];
        let mut second = [0u8; 8];
        first.copy_from_slice(&octets[..8]);
        second.copy_from_slice(&octets[8..]);
        SourceAddr {
            words: [u64::from_ne_bytes(first), u64::from_ne_bytes(second)],
        }
    }

    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.words[0].to_ne_bytes());
        out[8..].copy_from_slice(&self.words[1].to_ne_bytes());
        out
    }
}

/// One source's row in the per-source table: counters for its traffic to the protected ports
/// (incremented atomically in place by the XDP program), its rule verdict cached from the
/// tries, so a known source costs one hash lookup, and its image-create budget. Times are
/// kernel jiffies (see `limiter_user::clock`).
///
/// One cache line (64 bytes; the table's element adds the kernel's header and the key), so a
/// million rows are 128 MB of kernel memory, not 192. To fit: the packet, request and SYN
/// counters are `u32` and wrap (a reader takes differences modulo 2^32, and no source sends
/// 2^31 of one kind between two polls); the verdict is cached as one deadline and a kind; the
/// budget's time is 48 bits in two fields; what only a trusted proxy's traffic needs (the
/// proxy that carried a client's requests, the requests a proxy relayed) lives in maps of its
/// own ([`CLIENT_VIA_MAP`], [`PROXY_RELAYS_MAP`]).
///
/// The layout before this one (the same size, without the budget) read as this one is a valid
/// row with a whole budget: `packets` was a `u64` whose high half (where `budget_low` now is)
/// stays zero below 2^32 packets, and `flags` a `u32` whose high half (`budget_high`) was
/// always zero; a budget time that makes no sense counts as a whole budget (see
/// [`budget_ahead`]). So a running older version's pinned table is adopted as it is.
/// [`SOURCE_ROW_V1_BYTES`] is the size of the layout before those two, which userspace
/// migrates.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceStats {
    /// Packets to the protected ports (wraps).
    pub packets: u32,
    /// The low 32 bits of the source's budget time ([`SourceStats::budget_time`]).
    pub budget_low: u32,
    /// Ethernet frame bytes as XDP sees them (no FCS).
    pub bytes: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Until when the cached verdict ([`SOURCE_VERDICT_MASK`] of `flags`) holds, under
    /// `rules_generation`; then the tries are read again.
    pub verdict_until: u64,
    /// TCP segments with SYN set and ACK clear: new connection attempts (wraps).
    pub syns: u32,
    /// `POST /v1/images` or `POST /v2/images` (optionally with `/`, query string) (wraps).
    pub image_create: u32,
    /// Any other POST, and PUT, PATCH, DELETE (wraps).
    pub other_write: u32,
    /// GET, HEAD, OPTIONS (wraps).
    pub read: u32,
    /// The low 32 bits of [`Config::rules_generation`] when the verdict was read from the
    /// tries. A different current generation means the rules changed: read them again.
    pub rules_generation: u32,
    /// `SOURCE_*` flags read with the verdict (same generation).
    pub flags: u16,
    /// Bits 32–47 of the source's budget time ([`SourceStats::budget_time`]).
    pub budget_high: u16,
}

impl SourceStats {
    /// When the source's image-create budget is whole again: fixed-point jiffies modulo
    /// 2^48 ([`BUDGET_TIME_BITS`]).
    #[inline(always)]
    pub fn budget_time(&self) -> u64 {
        (u64::from(self.budget_high) << 32) | u64::from(self.budget_low)
    }
}

/// Bits of the budget time kept in a row ([`SourceStats::budget_time`]): fixed-point jiffies
/// (`jiffies << BUDGET_TIME_SHIFT`) modulo 2^48, compared with now's the same way. Wide
/// enough that a time from before the last wrap (2^40 jiffies: 34 years at 1,000 Hz) cannot
/// pass for a recent one; narrow enough to leave the row one cache line.
pub const BUDGET_TIME_BITS: u32 = 48;
/// [`BUDGET_TIME_BITS`] as a mask.
pub const BUDGET_TIME_MASK: u64 = (1 << BUDGET_TIME_BITS) - 1;

/// What a row keeps for the budget time `time` (fixed-point jiffies): modulo 2^48, and never
/// 0, which stands for a row that never created ([`budget_ahead`]); a time that lands on 0 is
/// kept one unit (1/256 jiffy) early instead, a hair more generous.
#[inline(always)]
pub fn budget_time_kept(time: u64) -> u64 {
    let time = time & BUDGET_TIME_MASK;
    (time.wrapping_sub(u64::from(time == 0))) & BUDGET_TIME_MASK
}

/// How far a source's budget time lies ahead of `now` (both fixed-point jiffies modulo
/// 2^48), or 0 when it is not ahead, or further ahead than the budget could ever put it
/// (`limit`: tolerance + interval). The latter is an update torn between two CPUs or a budget
/// that shrank: a whole budget, never a refusal. 0 is a row that never created (a new row, or
/// one of the layout before the budget), whatever now is: without this, the minute before
/// each wrap of the time would read 0 as a budget partly spent.
#[inline(always)]
pub fn budget_ahead(budget_time: u64, now: u64, limit: u64) -> u64 {
    let ahead = budget_time.wrapping_sub(now) & BUDGET_TIME_MASK;
    if budget_time == 0 || ahead > limit {
        0
    } else {
        ahead
    }
}

/// [`SourceStats::flags`]: the source is a trusted proxy; its requests belong to the clients
/// it names.
pub const SOURCE_TRUSTED_PROXY: u16 = 1;
/// [`SourceStats::flags`]: the cached verdict's kind (until `verdict_until`).
pub const SOURCE_VERDICT_MASK: u16 = 0b110;
/// Passed: no block rule in force (the allow trie only matters against a block).
pub const SOURCE_VERDICT_PASS: u16 = 0;
/// Passed: a block rule is in force but an allow rule exempts the source.
pub const SOURCE_VERDICT_ALLOWED: u16 = 0b010;
/// Dropped: a block rule is in force and nothing exempts the source.
pub const SOURCE_VERDICT_BLOCKED: u16 = 0b100;
/// [`SourceStats::flags`]: a create of this (direct) source was refused over its budget, and
/// the connection it came on is in [`PROXY_CONNS_MAP`]: its segments are looked up there,
/// the next one on that connection becomes the reset that closes Glance's socket. Kept when
/// the cached verdict is read again; other sources never pay the lookup.
pub const SOURCE_REJECTED_CONNS: u16 = 0b1000;

/// Bytes of a row of the layout before [`SourceStats`]: [`SourceRowV1`].
pub const SOURCE_ROW_V1_BYTES: u32 = 128;

/// The per-source row of versions before [`SourceStats`] (two cache lines): every counter
/// `u64`, both rule deadlines, and the proxy fields in the row. Kept so that an upgrade can
/// read a running older version's pinned table and carry its rows over.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceRowV1 {
    pub syns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub image_create: u64,
    pub other_write: u64,
    pub read: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    pub rules_generation: u64,
    pub blocked_until: u64,
    pub allowed_until: u64,
    pub flags: u64,
    pub via: SourceAddr,
    pub proxied: u64,
    pub unattributed: u64,
}

/// The trusted proxy that carried a client's latest proxied request (LRU hash, client
/// [`SourceAddr`] → proxy [`SourceAddr`]; as large as the per-source table), as of the
/// client's first request in the current jiffy. A client that only came directly has no
/// entry.
pub const CLIENT_VIA_MAP: &str = "CLIENT_VIA";
/// What each trusted proxy relayed (LRU hash, proxy [`SourceAddr`] → [`ProxyRelays`]).
pub const PROXY_RELAYS_MAP: &str = "PROXY_RELAYS";
/// Trusted proxies whose relays are counted at once.
pub const PROXY_RELAYS_CAPACITY: u32 = 4096;

/// What one trusted proxy relayed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProxyRelays {
    /// Requests it carried that were attributed to their client.
    pub proxied: u64,
    /// Requests it carried whose client could not be read (no header, past what the program
    /// reads, split across segments). Never counted as the proxy's own.
    pub unattributed: u64,
}

/// The per-CPU front of [`PROXY_RELAYS_MAP`] (per-CPU array of [`CpuRelays`], indexed by
/// [`relay_slot`]). The shared table costs a hash lookup and an atomic add per proxied
/// request; a CPU instead counts a proxy's relays with plain adds in the slot the proxy's
/// address selects, once that slot is the proxy's: the first proxy counted in a slot keeps it
/// (counts never go down, so a slot with none is free). A proxy whose slot another holds is
/// counted in the shared table. Userspace adds the two.
pub const PROXY_RELAYS_CPU_MAP: &str = "PROXY_RELAYS_CPU";
/// Slots per CPU: a handful of load balancers per Glance node is the norm.
pub const PROXY_RELAY_SLOTS: u32 = 8;

/// One slot of [`PROXY_RELAYS_CPU_MAP`]: the proxy that holds it, and what this CPU counted
/// for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CpuRelays {
    pub proxy: SourceAddr,
    pub relays: ProxyRelays,
}

/// The slot of [`PROXY_RELAYS_CPU_MAP`] a proxy's relays are counted in: the address's bytes
/// folded together (the IPv4-mapped form included, so that addresses differing in any byte
/// tend to differ in slot).
#[inline(always)]
pub const fn relay_slot(proxy: &SourceAddr) -> u32 {
    let x = proxy.words[0] ^ proxy.words[1];
    let x = x ^ (x >> 32);
    let x = x ^ (x >> 16);
    let x = x ^ (x >> 8);
    (x as u32) & (PROXY_RELAY_SLOTS - 1)
}

/// Value of a block-rule trie entry.
///
/// The trie answers with the longest matching prefix only, so userspace stores in each entry
/// the latest expiry of that prefix *and every shorter block prefix covering it*: if the most
/// specific entry has expired, so has everything that covers it, and an expired /32 cannot
/// shadow a live /24. Zero means "no rule of this scope"; [`NEVER`] means no expiry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockRule {
    /// Until when traffic to the protected ports is dropped.
    pub until_protected: u64,
    /// Until when all traffic from the prefix is dropped (rules with scope "all ports").
    pub until_any_port: u64,
}

/// Value of an allow-rule trie entry: until when the prefix is exempt from every block rule
/// (same covering-expiry convention as [`BlockRule`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowRule {
    pub until: u64,
}

/// Value of a trusted-proxy trie entry (its presence is what matters).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrustedProxy {
    pub _reserved: u64,
}

/// One backend connection of a trusted proxy: proxy address and port to a local address and
/// protected port. Addresses as in [`SourceAddr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnKey {
    pub proxy: SourceAddr,
    pub local: SourceAddr,
    /// Ports in network byte order, as in the TCP header.
    pub proxy_port: u16,
    pub local_port: u16,
    pub _pad: u32,
}

/// What the program knows of a tracked backend connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// The client a PROXY protocol header named (with [`CONN_PROXY_CLIENT`]).
    pub client: SourceAddr,
    /// `CONN_*` flags.
    pub flags: u32,
    /// With [`CONN_REJECTED`]: the sequence number Glance's socket expects next, where the
    /// reset that closes it must sit.
    pub reset_seq: u32,
}

/// The connection began with a PROXY protocol header naming [`ConnState::client`].
pub const CONN_PROXY_CLIENT: u32 = 1;
/// The connection began with a PROXY protocol header that names no client (`LOCAL`,
/// `UNKNOWN`, another family): its requests are unattributed.
pub const CONN_PROXY_NO_CLIENT: u32 = 2;
/// A request on it was answered with the rejection response in Glance's place: the peer's
/// next segment is turned into a reset for Glance's socket. (Set for a trusted proxy's
/// connection, and for a direct client's refused over its image-create budget; the key's
/// `proxy` fields are then the client's.)
pub const CONN_REJECTED: u32 = 4;

/// The image-create budget every source gets in the kernel (single-entry array
/// [`BUDGET_CONFIG_MAP`]): a generic cell rate algorithm (a token bucket kept as one
/// "theoretical arrival time" per source). Times are in [`BUDGET_TIME_SHIFT`]-fixed-point
/// jiffies, so that a rate of several creates per jiffy keeps its precision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BudgetConfig {
    /// Time one create uses up: the window over the budget (fixed-point jiffies).
    pub interval: u64,
    /// How far ahead of now a source's arrival time may run: `(burst - 1) * interval`.
    pub tolerance: u64,
    /// `BUDGET_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// [`BudgetConfig::flags`]: refuse a create over budget (enforce mode). Clear, a create over
/// budget is only counted (monitor mode: what would have been refused).
pub const BUDGET_ENFORCE: u32 = 1;
/// Bits of fraction in the budget's times: `jiffies << BUDGET_TIME_SHIFT`.
pub const BUDGET_TIME_SHIFT: u32 = 8;

/// What the kernel knows of a source's image creates beyond its row (table [`CREATES_MAP`]):
/// the creates refused over its budget, how Glance answered the ones it got, and whether it
/// was forgiven. Entered at the source's first create over budget, or recorded for its
/// answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceCreates {
    /// When the daemon forgave the source (jiffies; 0: never): its next create over budget
    /// within a budget's window of that gets a whole budget instead (the budget time lives in
    /// the source's row, which the daemon does not write). Before the budget moved into the
    /// row this field held its time, a value far ahead of any jiffy: never read as a
    /// forgiveness.
    pub forgiven_at: u64,
    /// Creates over budget: refused in enforce mode, only counted in monitor mode.
    pub over: u64,
    /// Creates Glance answered with a 2xx status: records it created.
    pub created: u64,
    /// Creates Glance answered with any other final status (400, 401, 403, 409, 413, 5xx).
    pub failed: u64,
}

/// Image creates passed to Glance on one connection whose answers have not been seen yet,
/// and the client they are counted for (the connection's peer, or the client a trusted proxy
/// named for them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingCreates {
    pub client: SourceAddr,
    pub pending: u32,
    pub _pad: u32,
}

/// A URL path prefix (`/image`), the first `len` bytes of `words` in memory order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PathPrefix {
    pub words: [u64; 2],
    pub len: u32,
    pub _pad: u32,
}

/// The HTTP response sent to a trusted proxy in Glance's place when a request's client is
/// banned: `429 Too Many Requests` with `Retry-After`, and `Connection: close`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectTemplate {
    /// Bytes of `text` used; a multiple of 4 (the checksum helper reads words).
    pub len: u32,
    /// Where in `text` the Retry-After value's [`RETRY_AFTER_DIGITS`] right-aligned digits go
    /// (even, so they pair into 16-bit words on their own).
    pub retry_after_at: u32,
    /// Kernel ticks per second, to turn a ban's deadline into seconds.
    pub hz: u32,
    /// Retry-After for bans without an end.
    pub retry_after_never: u32,
    /// The sum of `text[..len]` as big-endian 16-bit words, with the Retry-After field
    /// zeroed: the program adds the digits it writes and the headers to get the checksum.
    pub text_sum: u32,
    pub _pad: u32,
    pub text: [u8; REJECT_MAX_LEN],
}

/// Width of the Retry-After field in [`RejectTemplate::text`] (spaces, then digits).
pub const RETRY_AFTER_DIGITS: usize = 6;

/// Runtime switches set by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Bit set of `CONFIG_*` flags.
    pub flags: u32,
    /// Entries of [`PATH_PREFIXES_MAP`] in use.
    pub path_prefixes: u32,
    /// Bumped by userspace after every change to the rule tries; invalidates the verdicts
    /// cached in [`SourceStats`].
    pub rules_generation: u64,
}

/// The flood benchmark's sender (`flood_tx`, a test-and-benchmark program, not part of the
/// product): what it writes into each frame it redirects. Single-entry array
/// [`FLOOD_TX_CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloodTxConfig {
    /// The interface the frames are redirected to (in the sender's namespace).
    pub ifindex: u32,
    /// 4 or 6: where the source address and the checksums sit in the frame.
    pub family: u32,
    /// The sources are the frame's source address with its last 32 bits replaced by
    /// `first_low + i`, `i` in `0..count` (host order).
    pub first_low: u32,
    pub count: u32,
    /// One's-complement sums (unfolded) of the IPv4 header and of the TCP pseudo-header and
    /// segment, with their checksum fields and the varying 32 source bits zeroed: the program
    /// adds the source and folds, so every frame carries correct checksums.
    pub ip_sum: u32,
    pub tcp_sum: u32,
}

/// The flood sender's configuration map.
pub const FLOOD_TX_CONFIG_MAP: &str = "FLOOD_TX_CONFIG";
/// The flood sender's program.
pub const FLOOD_TX_PROGRAM: &str = "flood_tx";

/// Some block rule has scope "all ports": traffic to other ports must consult the block trie.
/// Clear, it lets such traffic skip the lookup entirely.
pub const CONFIG_ANY_PORT_RULES: u32 = 1;
/// The trusted-proxy trie is not empty: new sources are looked up in it.
pub const CONFIG_TRUSTED_PROXIES: u32 = 2;
/// Trusted proxies name the client in `Forwarded: for=` (RFC 7239); clear: `X-Forwarded-For`.
pub const CONFIG_FORWARDED_HEADER: u32 = 4;
/// Image creates are held to [`BUDGET_CONFIG_MAP`]'s budget.
pub const CONFIG_IMAGE_CREATE_BUDGET: u32 = 8;
/// Glance's answers to image creates are counted (the egress program is attached): each
/// create passed to Glance is recorded in [`CREATE_CONNS_MAP`].
pub const CONFIG_COUNT_RESPONSES: u32 = 16;

/// Indices of the global per-CPU counters. Every packet increments exactly one verdict counter
/// (`Pass*` or `Drop*`); `SourceNew` and `SourceInsertFailed` count events on top of that.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP to a protected port, passed and counted per source.
    PassProtected = 0,
    /// TCP to a protected port from a blocked source that an allow rule exempts.
    PassAllowed = 1,
    /// TCP to a port that is not protected.
    PassOtherPort = 2,
    /// IP but not TCP.
    PassNotTcp = 3,
    /// Ethertype is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    PassNotIp = 4,
    /// More VLAN tags than the program looks through.
    PassVlanDepth = 5,
    /// A non-first fragment: it carries no TCP header.
    PassFragment = 6,
    /// The frame ends inside a header.
    PassTruncated = 7,
    /// A header field is impossible (IP version, IHL < 5, TCP data offset < 5, lengths).
    PassMalformed = 8,
    /// More IPv6 extension headers than [`MAX_IPV6_EXT_HEADERS`].
    PassExtHeaderLimit = 9,
    /// Dropped: TCP to a protected port from a blocked source.
    DropBlocked = 10,
    /// Dropped: other traffic from a source under an "all ports" block.
    DropBlockedAnyPort = 11,
    /// Event: a source entered the per-source table.
    SourceNew = 12,
    /// Event: a new source could not be inserted (and was not counted).
    SourceInsertFailed = 13,
    /// A trusted proxy's request for a banned client, answered in Glance's place (the
    /// rejection response sent back out of the interface; Glance never sees the request).
    RejectProxied = 14,
    /// A trusted proxy's segment on a rejected connection, turned into a reset that closes
    /// Glance's socket.
    ResetProxied = 15,
    /// A trusted proxy's request for a banned client that could not be answered (a frame
    /// layout the rewrite does not handle): dropped.
    DropProxied = 16,
    /// Event: a trusted proxy's request attributed to the client it names.
    ProxiedRequest = 17,
    /// Event: a trusted proxy's request whose client could not be read.
    UnattributedRequest = 18,
    /// Event: a PROXY protocol header (v1 or v2) read at the start of a connection.
    ProxyHeader = 19,
    /// An image create over its source's budget, answered in Glance's place (direct or
    /// through a trusted proxy; Glance never sees the request).
    RejectOverBudget = 20,
    /// A direct client's segment on a connection refused over budget, turned into a reset
    /// that closes Glance's socket.
    ResetOverBudget = 21,
    /// An image create over budget, or a segment on a connection refused over budget, that
    /// could not be rewritten (IP options, extension headers): dropped.
    DropOverBudget = 22,
    /// Event: in monitor mode, an image create over budget (passed: what enforce mode would
    /// have refused).
    OverBudgetObserved = 23,
    /// Event: Glance answered an image create with a 2xx status (a record created).
    CreateSucceeded = 24,
    /// Event: Glance answered an image create with another final status.
    CreateFailed = 25,
}

impl Counter {
    pub const COUNT: u32 = 26;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::PassProtected,
        Counter::PassAllowed,
        Counter::PassOtherPort,
        Counter::PassNotTcp,
        Counter::PassNotIp,
        Counter::PassVlanDepth,
        Counter::PassFragment,
        Counter::PassTruncated,
        Counter::PassMalformed,
        Counter::PassExtHeaderLimit,
        Counter::DropBlocked,
        Counter::DropBlockedAnyPort,
        Counter::SourceNew,
        Counter::SourceInsertFailed,
        Counter::RejectProxied,
        Counter::ResetProxied,
        Counter::DropProxied,
        Counter::ProxiedRequest,
        Counter::UnattributedRequest,
        Counter::ProxyHeader,
        Counter::RejectOverBudget,
        Counter::ResetOverBudget,
        Counter::DropOverBudget,
        Counter::OverBudgetObserved,
        Counter::CreateSucceeded,
        Counter::CreateFailed,
    ];

    /// Stable snake_case name, used in JSON output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassProtected => "pass_protected",
            Counter::PassAllowed => "pass_allowed",
            Counter::PassOtherPort => "pass_other_port",
            Counter::PassNotTcp => "pass_not_tcp",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassVlanDepth => "pass_vlan_depth",
            Counter::PassFragment => "pass_fragment",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassExtHeaderLimit => "pass_ext_header_limit",
            Counter::DropBlocked => "drop_blocked",
            Counter::DropBlockedAnyPort => "drop_blocked_any_port",
            Counter::SourceNew => "source_new",
            Counter::SourceInsertFailed => "source_insert_failed",
            Counter::RejectProxied => "reject_proxied",
            Counter::ResetProxied => "reset_proxied",
            Counter::DropProxied => "drop_proxied",
            Counter::ProxiedRequest => "proxied_request",
            Counter::UnattributedRequest => "unattributed_request",
            Counter::ProxyHeader => "proxy_header",
            Counter::RejectOverBudget => "reject_over_budget",
            Counter::ResetOverBudget => "reset_over_budget",
            Counter::DropOverBudget => "drop_over_budget",
            Counter::OverBudgetObserved => "over_budget_observed",
            Counter::CreateSucceeded => "create_succeeded",
            Counter::CreateFailed => "create_failed",
        }
    }

    /// Whether this counter is a packet verdict (as opposed to an event).
    pub const fn is_verdict(self) -> bool {
        !matches!(
            self,
            Counter::SourceNew
                | Counter::SourceInsertFailed
                | Counter::ProxiedRequest
                | Counter::UnattributedRequest
                | Counter::ProxyHeader
                | Counter::OverBudgetObserved
                | Counter::CreateSucceeded
                | Counter::CreateFailed
        )
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are repr(C), Copy, and have no padding bytes.
    unsafe impl aya::Pod for SourceAddr {}
    unsafe impl aya::Pod for SourceStats {}
    unsafe impl aya::Pod for SourceRowV1 {}
    unsafe impl aya::Pod for BlockRule {}
    unsafe impl aya::Pod for AllowRule {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FloodTxConfig {}
    unsafe impl aya::Pod for TrustedProxy {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ProxyRelays {}
    unsafe impl aya::Pod for CpuRelays {}
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for PathPrefix {}
    unsafe impl aya::Pod for RejectTemplate {}
    unsafe impl aya::Pod for BudgetConfig {}
    unsafe impl aya::Pod for SourceCreates {}
    unsafe impl aya::Pod for PendingCreates {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<SourceAddr>(), 16);
        let octets: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(SourceAddr::from_octets(octets).octets(), octets);
        assert_eq!(size_of::<SourceStats>(), 64, "one cache line");
        assert_eq!(size_of::<ProxyRelays>(), 16);
        assert_eq!(size_of::<CpuRelays>(), 32);
        assert_eq!(size_of::<SourceRowV1>() as u32, SOURCE_ROW_V1_BYTES);
        assert_eq!(size_of::<ConnKey>(), 40);
        assert_eq!(size_of::<ConnState>(), 24);
        assert_eq!(size_of::<PathPrefix>(), 24);
        assert_eq!(size_of::<RejectTemplate>(), 24 + REJECT_MAX_LEN);
        assert_eq!(size_of::<BlockRule>(), 16);
        assert_eq!(size_of::<AllowRule>(), 8);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<BudgetConfig>(), 24);
        assert_eq!(size_of::<SourceCreates>(), 32);
        assert_eq!(size_of::<PendingCreates>(), 24);
    }

    #[test]
    fn counters_are_dense_and_named_uniquely() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for other in &Counter::ALL[..i] {
                assert_ne!(c.name(), other.name());
            }
        }
    }
}
