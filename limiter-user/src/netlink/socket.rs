//! The rtnetlink sockets: a dump of every link (RTM_GETLINK), and a watcher thread that
//! reads link events (RTMGRP_LINK) and hands them over a channel, so nobody blocks on the
//! socket but that thread. Both see the network namespace of the thread that opened them.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use super::parse::{self, LinkMessage, Message};

const RTMGRP_LINK: u32 = 0x1;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// How often the watcher looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// What the watcher thread sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Link(LinkMessage),
    /// Events were lost (the socket's buffer overflowed, or unreadable input): read the
    /// whole table again.
    Resync,
}

/// Every link of this network namespace, as one RTM_GETLINK dump lists them.
pub fn dump_links() -> io::Result<Vec<LinkMessage>> {
    let socket = open(0)?;
    let mut request = Vec::with_capacity(32);
    request.extend_from_slice(&32u32.to_ne_bytes());
    request.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    request.extend_from_slice(&[0u8; 16]); // ifinfomsg, AF_UNSPEC: every link
                                           // SAFETY: a valid buffer of the given length on an open socket.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = receive(&socket, &mut buf)?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netlink closed during a link dump",
            ));
        }
        let messages = parse::parse_messages(&buf[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for message in messages {
            match message {
                Message::Link(link) => links.push(link),
                Message::Done => return Ok(links),
                Message::Error(0) => {}
                Message::Error(code) => return Err(io::Error::from_raw_os_error(-code)),
                Message::Other(_) => {}
            }
        }
    }
}

/// The watcher thread; it stops when this is dropped (within [`STOP_CHECK`]) or when the
/// receiving end of its channel is gone.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Subscribes to link events (in the calling thread's namespace) and starts the thread that
/// sends them to `events`.
pub fn watch(events: mpsc::Sender<LinkEvent>) -> io::Result<Watcher> {
    let socket = open(RTMGRP_LINK)?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: STOP_CHECK.as_micros() as libc::suseconds_t,
    };
    // SAFETY: setting a timeval option on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    thread::Builder::new()
        .name("link-events".into())
        .spawn(move || read_events(&socket, &events, &stopping))?;
    Ok(Watcher { stop })
}

fn read_events(socket: &OwnedFd, events: &mpsc::Sender<LinkEvent>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let sent = match receive(socket, &mut buf) {
            Ok(len) => match parse::parse_messages(&buf[..len]) {
                Ok(messages) => messages
                    .into_iter()
                    .filter_map(|m| match m {
                        Message::Link(link) => Some(LinkEvent::Link(link)),
                        _ => None,
                    })
                    .try_for_each(|event| events.send(event)),
                Err(_) => events.send(LinkEvent::Resync),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            // ENOBUFS: the kernel dropped events for us; the table must be read again.
            Err(_) => events.send(LinkEvent::Resync),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn open(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; family and groups set before bind.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = groups;
    // SAFETY: binding an open socket to a valid sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn receive(socket: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receiving into a valid, writable buffer of the given length.
    let len = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Works without privileges: any process may read its namespace's links.
    #[test]
    fn the_dump_lists_loopback_up() {
        let links = dump_links().expect("a link dump");
        let lo = links
            .iter()
            .find(|l| l.name.as_deref() == Some("lo"))
            .expect("lo in the dump");
        assert_eq!(lo.ifindex, 1);
        assert!(lo.is_up());
    }
}
