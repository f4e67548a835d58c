//! An independent, slice-based reading of a frame, used by property tests to say which source
//! a frame comes from and whether it is TCP to a given port, without trusting the XDP parser.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub src: IpAddr,
    /// Destination port if the frame is a complete, first-fragment TCP segment.
    pub tcp_dst_port: Option<u16>,
    /// The source is readable but where the packet goes is not: a first fragment too short
    /// for its TCP header, or more IPv6 extension headers than the program walks (8).
    pub transport_hidden: bool,
}

/// The source and TCP destination port of a well-formed IPv4/IPv6 frame, or `None`.
pub fn read(frame: &[u8]) -> Option<Reading> {
    let mut ethertype = be16(frame, 12)?;
    let mut off = 14;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = be16(frame, off + 2)?;
            off += 4;
        }
    }
    match ethertype {
        0x0800 => ipv4(frame, off),
        0x86dd => ipv6(frame, off),
        _ => None,
    }
}

fn ipv4(frame: &[u8], off: usize) -> Option<Reading> {
    let h = frame.get(off..off + 20)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(h[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < 20 || total < ihl || off + total > frame.len() {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff;
    let later_fragment = fragment & 0x1fff != 0;
    let first_fragment = fragment == 0x2000;
    let port = if h[9] == 6 && !later_fragment {
        tcp_port(frame, off + ihl, off + total)
    } else {
        None
    };
    Some(Reading {
        src,
        tcp_dst_port: port,
        transport_hidden: h[9] == 6 && first_fragment && port.is_none(),
    })
}

fn ipv6(frame: &[u8], off: usize) -> Option<Reading> {
    let h = frame.get(off..off + 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let end = off + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    if end > frame.len() {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let src = Ipv6Addr::from(src);
    let src = src
        .to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(src));
    let mut next = h[6];
    let mut pos = off + 40;
    let mut first_fragment = false;
    let is_extension = |n: u8| matches!(n, 0 | 43 | 44 | 60);
    let mut walked = 0;
    while is_extension(next) && walked < 8 {
        walked += 1;
        if next == 44 {
            let f = frame.get(pos..pos + 4)?;
            next = f[0];
            pos += 8;
            let offset_and_more = u16::from_be_bytes([f[2], f[3]]);
            if offset_and_more >> 3 != 0 {
                return Some(Reading {
                    src,
                    tcp_dst_port: None,
                    transport_hidden: false,
                });
            }
            first_fragment = offset_and_more & 1 != 0;
        } else {
            next = *frame.get(pos)?;
            pos += (usize::from(*frame.get(pos + 1)?) + 1) * 8;
        }
        if pos > end {
            return None;
        }
    }
    if is_extension(next) {
        return Some(Reading {
            src,
            tcp_dst_port: None,
            transport_hidden: true,
        });
    }
    let port = if next == 6 {
        tcp_port(frame, pos, end)
    } else {
        None
    };
    Some(Reading {
        src,
        tcp_dst_port: port,
        transport_hidden: next == 6 && first_fragment && port.is_none(),
    })
}

fn tcp_port(frame: &[u8], off: usize, end: usize) -> Option<u16> {
    let h = frame.get(off..off + 20)?;
    let doff = usize::from(h[12] >> 4) * 4;
    if doff < 20 || off + doff > end {
        return None;
    }
    Some(u16::from_be_bytes([h[2], h[3]]))
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}
