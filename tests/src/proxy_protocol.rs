//! A reader of the PROXY protocol header (v1 text, v2 binary) that a load balancer sends at
//! the start of a backend connection, for the kit's recording backend. Independent of the
//! limiter's own parser on purpose: a test checks one against the other's inputs, not against
//! itself. Format: haproxy's doc/proxy-protocol.txt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `PROXY TCP4|TCP6 ...`, or a v2 PROXY command: the original connection's ends.
    V1 { src: SocketAddr, dst: SocketAddr },
    /// `PROXY UNKNOWN ...`: the sender does not know (or tell) the addresses.
    V1Unknown,
    V2 {
        /// The LOCAL command: the proxy's own connection (e.g. a health check), whose
        /// addresses, if any, a receiver must ignore.
        local: bool,
        /// Source and destination, as sent; `None` for a family without IP addresses
        /// (UNSPEC, UNIX).
        addrs: Option<(SocketAddr, SocketAddr)>,
        /// Type-length-value extensions, as (type, value).
        tlvs: Vec<(u8, Vec<u8>)>,
    },
}

impl ProxyHeader {
    /// The original client's address, if the header names one (never for LOCAL).
    pub fn src(&self) -> Option<SocketAddr> {
        self.addrs().map(|(src, _)| src)
    }

    /// The address the client connected to, if the header names one (never for LOCAL).
    pub fn dst(&self) -> Option<SocketAddr> {
        self.addrs().map(|(_, dst)| dst)
    }

    fn addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            ProxyHeader::V1 { src, dst } => Some((*src, *dst)),
            ProxyHeader::V2 {
                local: false,
                addrs,
                ..
            } => *addrs,
            ProxyHeader::V2 { local: true, .. } | ProxyHeader::V1Unknown => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 line: {0}")]
    V1(String),
    #[error("malformed PROXY v2 header: {0}")]
    V2(String),
}

/// Reads the header at the start of `buf`: `Ok(None)` while more bytes are needed, else the
/// header and its length (the bytes after it are the proxied stream).
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let v1_prefix = b"PROXY ";
    let prefix_len = buf.len().min(12);
    if buf[..prefix_len] == V2_SIGNATURE[..prefix_len] {
        return if prefix_len < 12 {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    if buf[..buf.len().min(6)] == v1_prefix[..buf.len().min(6)] {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let bad = |what: &str| ProxyHeaderError::V1(what.to_owned());
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(bad("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| bad("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader::V1Unknown,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s.parse().map_err(|_| bad(line))?;
                // The family names the address type; a mismatch is malformed.
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(bad(line));
                }
                Ok(ip)
            };
            let port = |s: &str| s.parse::<u16>().map_err(|_| bad(line));
            ProxyHeader::V1 {
                src: SocketAddr::new(ip(src)?, port(sport)?),
                dst: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(bad(line)),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let bad = |what: String| ProxyHeaderError::V2(what);
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version_command, family) = (buf[12], buf[13]);
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if buf.len() < 16 + len {
        return Ok(None);
    }
    if version_command >> 4 != 2 {
        return Err(bad(format!("version {}", version_command >> 4)));
    }
    let body = &buf[16..16 + len];
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        other => return Err(bad(format!("command {other}"))),
    };
    // Address block sizes per family: TCP/UDP over IPv4 and IPv6, UNIX, UNSPEC.
    let addr_len = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        other => return Err(bad(format!("address family {other}"))),
    };
    if body.len() < addr_len {
        return Err(bad(format!("{len} bytes cannot hold the addresses")));
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addrs = match family >> 4 {
        1 => {
            let ip = |at: usize| {
                IpAddr::from(Ipv4Addr::from(
                    <[u8; 4]>::try_from(&body[at..at + 4]).unwrap(),
                ))
            };
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        2 => {
            let ip = |at: usize| {
                IpAddr::from(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&body[at..at + 16]).unwrap(),
                ))
            };
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        _ => None,
    };
    let tlvs = parse_tlvs(&body[addr_len..]).ok_or_else(|| bad("truncated TLV".into()))?;
    Ok(Some((ProxyHeader::V2 { local, addrs, tlvs }, 16 + len)))
}

fn parse_tlvs(mut rest: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut tlvs = Vec::new();
    while !rest.is_empty() {
        let (kind, len) = (
            *rest.first()?,
            u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?]),
        );
        let value = rest.get(3..3 + len as usize)?;
        tlvs.push((kind, value.to_vec()));
        rest = &rest[3 + len as usize..];
    }
    Some(tlvs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6_then_the_stream() {
        let buf = b"PROXY TCP4 203.0.113.2 203.0.113.1 40000 9292\r\nGET / HTTP/1.1\r\n";
        let (h, n) = parse(buf).unwrap().unwrap();
        assert_eq!(h.src(), Some(addr("203.0.113.2:40000")));
        assert_eq!(h.dst(), Some(addr("203.0.113.1:9292")));
        assert!(buf[n..].starts_with(b"GET "));
        let buf = b"PROXY TCP6 2001:db8:1::2 2001:db8:1::1 40000 9292\r\n";
        let (h, _) = parse(buf).unwrap().unwrap();
        assert_eq!(h.src(), Some(addr("[2001:db8:1::2]:40000")));
    }

    #[test]
    fn v1_incomplete_unknown_and_malformed() {
        assert_eq!(parse(b"PROX").unwrap(), None);
        assert_eq!(parse(b"PROXY TCP4 203.0.113.2").unwrap(), None);
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((ProxyHeader::V1Unknown, 15))
        );
        assert!(parse(b"PROXY TCP4 2001:db8::1 203.0.113.1 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 203.0.113.2 203.0.113.1 1 99999\r\n").is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend([0x20 | command, family]);
        buf.extend((body.len() as u16).to_be_bytes());
        buf.extend(body);
        buf
    }

    #[test]
    fn v2_proxy_tcp4_with_a_tlv() {
        let mut body = vec![203, 0, 113, 2, 203, 0, 113, 1];
        body.extend(40000u16.to_be_bytes());
        body.extend(9292u16.to_be_bytes());
        body.extend([0x04, 0, 1, 0xAA]); // PP2_TYPE_NOOP, one byte
        let mut buf = v2(1, 0x11, &body);
        buf.extend(b"GET");
        let (h, n) = parse(&buf).unwrap().unwrap();
        assert_eq!(h.src(), Some(addr("203.0.113.2:40000")));
        assert_eq!(h.dst(), Some(addr("203.0.113.1:9292")));
        assert!(matches!(&h, ProxyHeader::V2 { tlvs, .. } if tlvs == &[(4, vec![0xAA])]));
        assert_eq!(&buf[n..], b"GET");
        // Every prefix is incomplete, not an error.
        for cut in 1..n {
            assert_eq!(parse(&buf[..cut]).unwrap(), None, "prefix of {cut}");
        }
    }

    #[test]
    fn v2_tcp6_and_local() {
        let src: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend(dst.octets());
        body.extend([0x9c, 0x40, 0x24, 0x4c]);
        let (h, _) = parse(&v2(1, 0x21, &body)).unwrap().unwrap();
        assert_eq!(h.src(), Some(addr("[2001:db8:1::2]:40000")));
        assert_eq!(h.dst(), Some(addr("[2001:db8:1::1]:9292")));
        let (h, n) = parse(&v2(0, 0x00, &[])).unwrap().unwrap();
        assert_eq!(
            h,
            ProxyHeader::V2 {
                local: true,
                addrs: None,
                tlvs: vec![]
            }
        );
        assert_eq!(n, 16);
        // LOCAL with addresses: kept as sent, but they name no client.
        let (h, _) = parse(&v2(0, 0x21, &body)).unwrap().unwrap();
        assert!(matches!(
            h,
            ProxyHeader::V2 {
                local: true,
                addrs: Some(_),
                ..
            }
        ));
        assert_eq!(h.src(), None);
        assert!(
            parse(&v2(1, 0x11, &[1, 2, 3])).is_err(),
            "too short for TCP4"
        );
    }
}
