//! Crafted Ethernet frames for BPF_PROG_TEST_RUN: every layer the XDP program parses, with
//! knobs for the odd cases (VLAN stacks, IPv4 options, IPv6 extension headers, fragments).

use std::net::IpAddr;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `len8` extra 8-byte units beyond the first.
    HopByHop {
        len8: u8,
    },
    Routing {
        len8: u8,
    },
    DestOptions {
        len8: u8,
    },
    /// `offset` in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::DestOptions { .. } => 60,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { len8 } | Ext::Routing { len8 } | Ext::DestOptions { len8 } => {
                let mut b = vec![0u8; (usize::from(len8) + 1) * 8];
                b[0] = next;
                b[1] = len8;
                // PadN option filling the rest, so the header is well-formed.
                b[2] = 1;
                b[3] = (b.len() - 4) as u8;
                b
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                let mut b = vec![next, 0, 0, 0, 0, 0, 0x12, 0x34];
                b[2..4].copy_from_slice(&field.to_be_bytes());
                b
            }
        }
    }
}

/// A packet to a Glance node, with every field the tests vary.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TPIDs of the VLAN tags, outermost first.
    pub vlan_tags: Vec<u16>,
    /// Raw IPv4 options (padded to a multiple of 4 by `build`).
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    pub ipv4_fragment: (u16, bool),
    pub ipv6_ext: Vec<Ext>,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// Raw TCP options (padded to a multiple of 4 by `build`).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Packet {
    /// A TCP segment with ACK set and no payload, from `src` to port `dst_port`.
    pub fn tcp(src: &str, dst_port: u16) -> Self {
        let src: IpAddr = src.parse().expect("test source address");
        let dst: IpAddr = match src {
            IpAddr::V4(_) => "203.0.113.1".parse().unwrap(),
            IpAddr::V6(_) => "2001:db8:1::1".parse().unwrap(),
        };
        Packet {
            src,
            dst,
            vlan_tags: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_fragment: (0, false),
            ipv6_ext: Vec::new(),
            protocol: TCP,
            src_port: 40_000,
            dst_port,
            tcp_flags: ACK,
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// A SYN (new connection attempt) from `src` to `dst_port`.
    pub fn syn(src: &str, dst_port: u16) -> Self {
        Self::tcp(src, dst_port).flags(SYN)
    }

    /// An ACK+PSH segment carrying `payload`.
    pub fn request(src: &str, dst_port: u16, payload: &[u8]) -> Self {
        let mut p = Self::tcp(src, dst_port).flags(ACK | PSH);
        p.payload = payload.to_vec();
        p
    }

    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    pub fn vlans(mut self, tpids: &[u16]) -> Self {
        self.vlan_tags = tpids.to_vec();
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = (offset, more);
        self
    }

    pub fn ipv6_ext(mut self, ext: &[Ext]) -> Self {
        self.ipv6_ext = ext.to_vec();
        self
    }

    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }

    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        self
    }

    fn l4(&self) -> Vec<u8> {
        if self.protocol != TCP {
            // A UDP-shaped header is enough: the program only reads past IP for TCP.
            let mut b = Vec::new();
            b.extend_from_slice(&self.src_port.to_be_bytes());
            b.extend_from_slice(&self.dst_port.to_be_bytes());
            b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&self.payload);
            return b;
        }
        let options = padded(&self.tcp_options);
        let header_len = 20 + options.len();
        let mut b = Vec::with_capacity(header_len + self.payload.len());
        b.extend_from_slice(&self.src_port.to_be_bytes());
        b.extend_from_slice(&self.dst_port.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes()); // sequence
        b.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
        b.push(((header_len / 4) as u8) << 4);
        b.push(self.tcp_flags);
        b.extend_from_slice(&64_240u16.to_be_bytes()); // window
        b.extend_from_slice(&[0, 0, 0, 0]); // checksum (not verified by XDP), urgent pointer
        b.extend_from_slice(&options);
        b.extend_from_slice(&self.payload);
        b
    }

    fn l3(&self) -> (u16, Vec<u8>) {
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let options = padded(&self.ipv4_options);
                let header_len = 20 + options.len();
                let mut b = Vec::with_capacity(header_len + l4.len());
                b.push(0x40 | (header_len / 4) as u8);
                b.push(0);
                b.extend_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
                b.extend_from_slice(&0x1234u16.to_be_bytes());
                let (offset, more) = self.ipv4_fragment;
                let frag = (u16::from(more) << 13) | (offset & 0x1fff);
                b.extend_from_slice(&frag.to_be_bytes());
                b.push(64);
                b.push(self.protocol);
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                b.extend_from_slice(&options);
                let sum = checksum(&b[..header_len]);
                b[10..12].copy_from_slice(&sum.to_be_bytes());
                b.extend_from_slice(&l4);
                (ETHERTYPE_IPV4, b)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ext_bytes = Vec::new();
                for (i, ext) in self.ipv6_ext.iter().enumerate() {
                    let next = self
                        .ipv6_ext
                        .get(i + 1)
                        .map(|e| e.number())
                        .unwrap_or(self.protocol);
                    ext_bytes.extend_from_slice(&ext.bytes(next));
                }
                let first = self
                    .ipv6_ext
                    .first()
                    .map(|e| e.number())
                    .unwrap_or(self.protocol);
                let mut b = vec![0x60, 0, 0, 0];
                b.extend_from_slice(&((ext_bytes.len() + l4.len()) as u16).to_be_bytes());
                b.push(first);
                b.push(64);
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                b.extend_from_slice(&ext_bytes);
                b.extend_from_slice(&l4);
                (ETHERTYPE_IPV6, b)
            }
            _ => panic!("source and destination must be the same family"),
        }
    }

    /// The whole frame, padded to Ethernet's 60-byte minimum like a real NIC would.
    pub fn build(&self) -> Vec<u8> {
        let (ethertype, l3) = self.l3();
        let mut frame = ethernet_header(&self.vlan_tags, ethertype);
        frame.extend_from_slice(&l3);
        if frame.len() < 60 {
            frame.resize(60, 0);
        }
        frame
    }

    /// Offsets where each header begins in `build()`'s output, plus the frame end: the
    /// boundaries at which tests truncate.
    pub fn header_boundaries(&self) -> Vec<usize> {
        let eth = 14 + 4 * self.vlan_tags.len();
        let mut out = vec![0, 6, 12, eth];
        let (_, l3) = self.l3();
        let l3_header = match self.src {
            IpAddr::V4(_) => 20 + padded(&self.ipv4_options).len(),
            IpAddr::V6(_) => {
                let mut off = 40;
                out.push(eth + off);
                for ext in &self.ipv6_ext {
                    off += ext.bytes(0).len();
                    out.push(eth + off);
                }
                off
            }
        };
        out.push(eth + l3_header);
        let tcp_header = 20 + padded(&self.tcp_options).len();
        out.push(eth + l3_header + tcp_header);
        if eth + l3.len() > eth + l3_header + tcp_header {
            out.push(eth + l3.len() - 1);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

pub fn ethernet_header(vlan_tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in vlan_tags.iter().enumerate() {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn padded(options: &[u8]) -> Vec<u8> {
    let mut v = options.to_vec();
    while !v.len().is_multiple_of(4) {
        v.push(0); // end-of-options / padding
    }
    v
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Asserts that `frame`'s IP header checksum (IPv4) and TCP checksum are right: what the
/// program rewrote must be a segment the peer's stack accepts. Ethernet without VLAN tags,
/// IP without options.
pub fn assert_checksums(frame: &[u8]) {
    let sum = |bytes: &[u8], start: u32| {
        let mut s = start;
        for pair in bytes.chunks(2) {
            s += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    };
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (pseudo, tcp) = if ethertype == 0x0800 {
        let ip = &frame[14..34];
        assert_eq!(sum(ip, 0), 0xffff, "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let tcp = &frame[34..14 + total];
        let pseudo = sum(&ip[12..20], 6 + tcp.len() as u32);
        (pseudo, tcp)
    } else {
        let ip = &frame[14..54];
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let tcp = &frame[54..54 + len];
        (sum(&ip[8..40], 6 + tcp.len() as u32), tcp)
    };
    assert_eq!(sum(tcp, pseudo), 0xffff, "TCP checksum");
}
