//! Pure parsing of rtnetlink link messages (RTM_NEWLINK, RTM_DELLINK) as the kernel sends
//! them, in a dump or as events: the interface index, its name (IFLA_IFNAME) and its flags.
//! No socket here: a buffer in, messages out. Malformed input is an error, never a panic, and
//! never read past its own length.

/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HDR_LEN: usize = 16;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFO_LEN: usize = 16;
/// `struct rtattr`: length, type.
const RTA_HDR_LEN: usize = 4;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
/// The top bits of an attribute's type are flags (nested, network byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const IFF_UP: u32 = 0x1;
pub const IFF_RUNNING: u32 = 0x40;

/// Whether the message announced or removed the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// RTM_NEWLINK: created, or changed (flags, name), or one row of a dump.
    New,
    /// RTM_DELLINK: removed.
    Removed,
}

/// One link as a message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkMessage {
    pub change: LinkChange,
    pub ifindex: u32,
    /// IFLA_IFNAME; the kernel always sends it, but a message without one is still a link.
    pub name: Option<String>,
    /// `IFF_*` flags.
    pub flags: u32,
}

impl LinkMessage {
    /// Administratively up (`ip link set up`).
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// Up with a carrier: traffic can arrive.
    pub fn is_running(&self) -> bool {
        self.flags & IFF_RUNNING != 0
    }
}

/// One netlink message of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Link(LinkMessage),
    /// NLMSG_DONE: the end of a dump.
    Done,
    /// NLMSG_ERROR: 0 is an acknowledgement, otherwise a negative errno.
    Error(i32),
    /// Any other type, skipped.
    Other(u16),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("netlink message at byte {offset} is truncated: {detail}")]
    Truncated { offset: usize, detail: &'static str },
}

/// Every message of `buf` (one `recv`), in order.
pub fn parse_messages(buf: &[u8]) -> Result<Vec<Message>, ParseError> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while buf.len() - offset >= NLMSG_HDR_LEN {
        let header = &buf[offset..];
        let len = u32_at(header, 0) as usize;
        let kind = u16_at(header, 4);
        if len < NLMSG_HDR_LEN || len > header.len() {
            return Err(ParseError::Truncated {
                offset,
                detail: "length field outside the buffer",
            });
        }
        let payload = &header[NLMSG_HDR_LEN..len];
        messages.push(match kind {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(ParseError::Truncated {
                        offset,
                        detail: "error message without its code",
                    });
                }
                Message::Error(u32_at(payload, 0) as i32)
            }
            RTM_NEWLINK | RTM_DELLINK => {
                let change = if kind == RTM_NEWLINK {
                    LinkChange::New
                } else {
                    LinkChange::Removed
                };
                Message::Link(parse_link(change, payload).ok_or(ParseError::Truncated {
                    offset,
                    detail: "link message shorter than its header",
                })?)
            }
            other => Message::Other(other),
        });
        // Messages are aligned to 4 bytes; the last one may end the buffer unpadded.
        offset = (offset + align(len)).min(buf.len());
    }
    Ok(messages)
}

/// The `ifinfomsg` and its attributes. Attributes that do not fit end the list: what was
/// read so far is kept.
fn parse_link(change: LinkChange, payload: &[u8]) -> Option<LinkMessage> {
    if payload.len() < IFINFO_LEN {
        return None;
    }
    let ifindex = u32_at(payload, 4);
    let flags = u32_at(payload, 8);
    let mut name = None;
    let mut attrs = &payload[IFINFO_LEN..];
    while attrs.len() >= RTA_HDR_LEN {
        let len = u16_at(attrs, 0) as usize;
        let kind = u16_at(attrs, 2) & NLA_TYPE_MASK;
        if len < RTA_HDR_LEN || len > attrs.len() {
            break;
        }
        if kind == IFLA_IFNAME {
            let value = &attrs[RTA_HDR_LEN..len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    Some(LinkMessage {
        change,
        ifindex,
        name,
        flags,
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Netlink speaks the host's byte order.
fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

/// Builders of messages as the kernel sends them, for tests here and in the daemon.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    pub fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((RTA_HDR_LEN + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align(out.len()), 0);
        out
    }

    pub fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&7u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align(out.len()), 0);
        out
    }

    /// An RTM_NEWLINK/RTM_DELLINK with an MTU attribute before the name, as the kernel
    /// orders them (IFLA_MTU = 4 comes after IFLA_IFNAME = 3 there; any order must do).
    pub fn link(kind: u16, ifindex: u32, name: &str, flags: u32) -> Vec<u8> {
        let mut payload = vec![0u8, 0];
        payload.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        payload.extend_from_slice(&ifindex.to_ne_bytes());
        payload.extend_from_slice(&flags.to_ne_bytes());
        payload.extend_from_slice(&0u32.to_ne_bytes());
        payload.extend(attr(4, &1500u32.to_ne_bytes()));
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        payload.extend(attr(IFLA_IFNAME, &name));
        message(kind, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn a_new_link_gives_index_name_and_flags() {
        let buf = link(RTM_NEWLINK, 7, "veth-attack", IFF_UP | IFF_RUNNING | 0x1000);
        let messages = parse_messages(&buf).unwrap();
        let [Message::Link(link)] = messages.as_slice() else {
            panic!("{messages:?}");
        };
        assert_eq!(link.change, LinkChange::New);
        assert_eq!(link.ifindex, 7);
        assert_eq!(link.name.as_deref(), Some("veth-attack"));
        assert!(link.is_up() && link.is_running());
    }

    #[test]
    fn a_removed_link_and_a_down_one() {
        let mut buf = link(RTM_DELLINK, 9, "eth1", 0);
        buf.extend(link(RTM_NEWLINK, 10, "eth2", IFF_UP));
        let messages = parse_messages(&buf).unwrap();
        assert_eq!(messages.len(), 2);
        let Message::Link(removed) = &messages[0] else {
            panic!("{messages:?}");
        };
        assert_eq!(removed.change, LinkChange::Removed);
        assert!(!removed.is_up());
        let Message::Link(up) = &messages[1] else {
            panic!("{messages:?}");
        };
        assert_eq!((up.ifindex, up.is_up(), up.is_running()), (10, true, false));
    }

    #[test]
    fn a_dump_ends_with_done_and_errors_carry_their_code() {
        let mut buf = link(RTM_NEWLINK, 1, "lo", IFF_UP);
        buf.extend(message(NLMSG_DONE, &0u32.to_ne_bytes()));
        buf.extend(message(NLMSG_ERROR, &(-19i32).to_ne_bytes()));
        buf.extend(message(24, &[1, 2, 3, 4])); // RTM_NEWROUTE: not ours
        let messages = parse_messages(&buf).unwrap();
        assert_eq!(
            &messages[1..],
            &[Message::Done, Message::Error(-19), Message::Other(24)]
        );
    }

    #[test]
    fn a_name_without_its_nul_and_a_link_without_a_name() {
        let mut payload = vec![0u8; IFINFO_LEN];
        payload[4..8].copy_from_slice(&3u32.to_ne_bytes());
        let bare = message(RTM_NEWLINK, &payload);
        payload.extend(attr(IFLA_IFNAME, b"bond0"));
        let unterminated = message(RTM_NEWLINK, &payload);
        let name_of = |buf: &[u8]| match &parse_messages(buf).unwrap()[0] {
            Message::Link(link) => link.name.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(name_of(&bare), None);
        assert_eq!(name_of(&unterminated).as_deref(), Some("bond0"));
    }

    #[test]
    fn truncated_input_is_an_error_or_ignored_never_a_panic() {
        let whole = link(RTM_NEWLINK, 7, "veth-attack", IFF_UP);
        // Every prefix: a header announcing more than there is is an error; a short tail
        // (less than a header) is nothing.
        for cut in 0..whole.len() {
            match parse_messages(&whole[..cut]) {
                Ok(messages) => assert!(messages.is_empty(), "{cut}: {messages:?}"),
                Err(ParseError::Truncated { offset: 0, .. }) => {}
                Err(other) => panic!("{cut}: {other:?}"),
            }
        }
        // A length below the header's own size cannot advance: an error, not a loop.
        let mut zero = whole.clone();
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_messages(&zero).is_err());
        // An attribute claiming more than the message holds ends the attributes.
        let mut long_attr = whole.clone();
        let at = NLMSG_HDR_LEN + IFINFO_LEN;
        long_attr[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        let Message::Link(link) = &parse_messages(&long_attr).unwrap()[0] else {
            panic!();
        };
        assert_eq!((link.ifindex, link.name.as_deref()), (7, None));
    }

    #[test]
    fn a_link_message_shorter_than_ifinfomsg_is_an_error() {
        let buf = message(RTM_DELLINK, &[0u8; 8]);
        assert!(matches!(
            parse_messages(&buf),
            Err(ParseError::Truncated { offset: 0, .. })
        ));
    }
}
