//! Header parsing, one function per layer. A parse failure is an `Err(Counter)` naming why the
//! packet is passed untouched: this program never drops what it does not understand.

use aya_ebpf::programs::XdpContext;
use limiter_common::{Counter, SourceAddr, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

use crate::packet::{frame_len, header};

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
/// `::ffff:` in the second word of an IPv4-mapped address (bytes 8..12, memory order).
const IPV4_MAPPED_MARK: u64 = 0xffff_0000;

pub const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;

pub const TCP_MIN_HEADER_LEN: usize = 20;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_PSH: u8 = 0x08;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// What the network layer tells us.
pub struct Network {
    /// Source address, IPv4-mapped for IPv4.
    pub src: SourceAddr,
    /// Offset of the IP header, and its family (the rest of it is read only when needed).
    pub l3_offset: usize,
    pub is_ipv6: bool,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Offset of the upper-layer header in the frame.
    pub l4_offset: usize,
    /// Offset just past the IP payload, from the IP length fields (not the frame end, which
    /// may include Ethernet padding).
    pub l3_end: usize,
    /// A fragment other than the first: no upper-layer header here.
    pub later_fragment: bool,
    /// The first of several fragments: its upper-layer header may be cut short.
    pub first_fragment: bool,
    /// The source is known but the upper-layer header could not be reached, and why.
    pub transport_hidden: Option<Counter>,
}

/// What the TCP layer tells us.
pub struct Tcp {
    pub dst_port: u16,
    /// The flags byte (`TCP_FLAG_*`).
    pub flags: u8,
    /// SYN without ACK: a new connection attempt.
    pub syn: bool,
    pub payload_offset: usize,
    pub payload_len: usize,
}

/// The common frame, untagged IPv4 without options carrying an unfragmented TCP segment,
/// read under one bounds check at fixed offsets; `None` for anything else, which the layer
/// by layer parse then reads (and judges) as before. Accepts only what that parse would
/// accept, with the same result: it is a shortcut, not a second opinion.
#[inline(always)]
pub fn ipv4_tcp(ctx: &XdpContext) -> Option<(Network, Tcp)> {
    const IP: usize = ETH_HEADER_LEN;
    const L4: usize = IP + IPV4_MIN_HEADER_LEN;
    let frame = header::<{ L4 + TCP_MIN_HEADER_LEN }>(ctx, 0)?;
    // Ethertype, then version and header length, in one word (the DSCP byte masked off):
    // one compare turns away VLAN tags, IPv6 and IP options alike.
    if frame.raw32(12) & 0x00ff_ffff != 0x0045_0008 {
        return None;
    }
    let fragment = frame.be16(IP + 6) & (IPV4_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK);
    if frame.u8(IP + 9) != IPPROTO_TCP || fragment != 0 {
        return None;
    }
    let total_len = frame.be16(IP + 2) as usize;
    let tcp_header_len = ((frame.u8(L4 + 12) >> 4) as usize) * 4;
    let l3_end = IP + total_len;
    if l3_end > frame_len(ctx)
        || tcp_header_len < TCP_MIN_HEADER_LEN
        || L4 + tcp_header_len > l3_end
    {
        return None;
    }
    Some((
        Network {
            src: ipv4_mapped(frame.raw32(IP + 12)),
            l3_offset: IP,
            is_ipv6: false,
            protocol: IPPROTO_TCP,
            l4_offset: L4,
            l3_end,
            later_fragment: false,
            first_fragment: false,
            transport_hidden: None,
        },
        Tcp::new(
            frame.be16(L4 + 2),
            frame.u8(L4 + 13),
            L4 + tcp_header_len,
            l3_end,
        ),
    ))
}

/// Ethernet and up to [`MAX_VLAN_TAGS`] VLAN tags: the network-layer ethertype and its offset.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), Counter> {
    let eth = header::<ETH_HEADER_LEN>(ctx, 0).ok_or(Counter::PassTruncated)?;
    let mut ethertype = eth.be16(12);
    let mut off = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        // A tag is 2 bytes of TCI followed by the encapsulated ethertype.
        let tag = header::<4>(ctx, off).ok_or(Counter::PassTruncated)?;
        ethertype = tag.be16(2);
        off += 4;
    }
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        return Err(Counter::PassVlanDepth);
    }
    Ok((ethertype, off))
}

#[inline(always)]
pub fn network(ctx: &XdpContext, ethertype: u16, off: usize) -> Result<Network, Counter> {
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(ctx, off),
        ETHERTYPE_IPV6 => ipv6(ctx, off),
        _ => Err(Counter::PassNotIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> Result<Network, Counter> {
    let ip = header::<IPV4_MIN_HEADER_LEN>(ctx, off).ok_or(Counter::PassTruncated)?;
    let version_ihl = ip.u8(0);
    if version_ihl >> 4 != 4 {
        return Err(Counter::PassMalformed);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    let total_len = ip.be16(2) as usize;
    if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len {
        return Err(Counter::PassMalformed);
    }
    // The kernel drops a packet shorter than its IP length; do not count it, pass it.
    if off + total_len > frame_len(ctx) {
        return Err(Counter::PassTruncated);
    }
    // Reserved and don't-fragment bits do not matter here.
    let fragment = ip.be16(6) & (IPV4_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK);
    Ok(Network {
        src: SourceAddr {
            words: ipv4_mapped(ip.raw32(12)).words,
        },
        l3_offset: off,
        is_ipv6: false,
        protocol: ip.u8(9),
        l4_offset: off + header_len,
        l3_end: off + total_len,
        later_fragment: fragment & IPV4_FRAGMENT_OFFSET_MASK != 0,
        first_fragment: fragment == IPV4_MORE_FRAGMENTS,
        transport_hidden: None,
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<Network, Counter> {
    let ip = header::<IPV6_HEADER_LEN>(ctx, off).ok_or(Counter::PassTruncated)?;
    if ip.u8(0) >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let l3_end = off + IPV6_HEADER_LEN + ip.be16(4) as usize;
    if l3_end > frame_len(ctx) {
        return Err(Counter::PassTruncated);
    }
    let src = SourceAddr {
        words: [ip.raw64(8), ip.raw64(16)],
    };
    let l3_offset = off;
    let mut next = ip.u8(6);
    let mut off = off + IPV6_HEADER_LEN;
    let mut later_fragment = false;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let ext = header::<2>(ctx, off).ok_or(Counter::PassTruncated)?;
                next = ext.u8(0);
                off += (ext.u8(1) as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext = header::<4>(ctx, off).ok_or(Counter::PassTruncated)?;
                next = ext.u8(0);
                off += 8;
                let offset_and_more = ext.be16(2);
                if offset_and_more >> 3 != 0 {
                    later_fragment = true;
                    break;
                }
                first_fragment = offset_and_more & 1 != 0;
            }
            _ => break,
        }
        // A header running past the IP payload: what follows it is not a header (it may be
        // Ethernet padding, or past the frame), so do not walk on into it.
        if off > l3_end {
            return Err(Counter::PassMalformed);
        }
    }
    if off > l3_end {
        return Err(Counter::PassMalformed);
    }
    let chain_continues = !later_fragment
        && matches!(
            next,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS | IPV6_FRAGMENT
        );
    Ok(Network {
        src,
        l3_offset,
        is_ipv6: true,
        protocol: next,
        l4_offset: off,
        l3_end,
        later_fragment,
        first_fragment,
        transport_hidden: if chain_continues {
            Some(Counter::PassExtHeaderLimit)
        } else {
            None
        },
    })
}

#[inline(always)]
pub fn tcp(ctx: &XdpContext, net: &Network) -> Result<Tcp, Counter> {
    let off = net.l4_offset;
    let tcp = header::<TCP_MIN_HEADER_LEN>(ctx, off).ok_or(Counter::PassTruncated)?;
    let header_len = ((tcp.u8(12) >> 4) as usize) * 4;
    if header_len < TCP_MIN_HEADER_LEN || off + header_len > net.l3_end {
        return Err(Counter::PassMalformed);
    }
    Ok(Tcp::new(
        tcp.be16(2),
        tcp.u8(13),
        off + header_len,
        net.l3_end,
    ))
}

impl Tcp {
    /// A segment whose payload runs from `payload_offset` to the IP packet's end.
    #[inline(always)]
    fn new(dst_port: u16, flags: u8, payload_offset: usize, l3_end: usize) -> Tcp {
        Tcp {
            dst_port,
            flags,
            syn: flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0,
            payload_offset,
            payload_len: l3_end - payload_offset,
        }
    }
}

/// The destination address of the IP header at `net.l3_offset`, IPv4-mapped for IPv4.
#[inline(always)]
pub fn destination(ctx: &XdpContext, net: &Network) -> Option<SourceAddr> {
    if net.is_ipv6 {
        let ip = header::<IPV6_HEADER_LEN>(ctx, net.l3_offset)?;
        Some(SourceAddr {
            words: [ip.raw64(24), ip.raw64(32)],
        })
    } else {
        let ip = header::<IPV4_MIN_HEADER_LEN>(ctx, net.l3_offset)?;
        Some(ipv4_mapped(ip.raw32(16)))
    }
}

/// An IPv4 address (its 4 bytes as read from the header, memory order) in [`SourceAddr`]'s
/// IPv4-mapped form.
#[inline(always)]
pub fn ipv4_mapped(raw: u32) -> SourceAddr {
    SourceAddr {
        words: [0, IPV4_MAPPED_MARK | (u64::from(raw) << 32)],
    }
}
