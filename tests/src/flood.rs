//! A bounded packet flood: TCP SYNs or HTTP image-create segments to a protected port, sent
//! from a test namespace over its veth, with the source fixed, rotating over a set, or rotating
//! over up to a million addresses (IPv4 or IPv6). Every run stops at a packet count AND a
//! deadline, whichever comes first, or earlier when its stop flag is raised.
//!
//! Mechanism: an `AF_PACKET` raw socket bound to the client's veth, with
//! `PACKET_QDISC_BYPASS` (frames go straight to the driver's `ndo_start_xmit`, no qdisc, no
//! routing, no neighbour lookup) and `sendmmsg` batches of prebuilt frames (one syscall per
//! [`BATCH`] frames). It is the fastest sender that is simple and robust here:
//! - a veth transmit hands the frame to its peer's receive path in the same call, so the
//!   sender's per-frame cost is an skb allocation and a copy of 60–120 bytes; batches take
//!   the syscall cost off the path;
//! - spoofed sources need no address on the interface and no neighbour entry;
//! - it works whatever is attached on the receiving side (XDP, nftables, nothing), which the
//!   side-by-side comparisons need.
//!
//! `BPF_PROG_TEST_RUN`'s XDP live-frames mode (`XDP_TX`/`XDP_REDIRECT` from a program in the
//! sender into the veth) skips the skb allocation and reaches a higher rate, but needs a
//! redirecting program of its own and a ring of page-pool frames; left for later (issue 5).
//! `AF_XDP` on a veth runs in copy mode only, no faster than this.
//!
//! Addresses: the callers pass documentation addresses only (`198.51.100.0/24`,
//! `203.0.113.0/24`, `2001:db8::/32`); [`Flood::run`] refuses anything else, as source or
//! destination.

use std::{
    ffi::CString,
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{frames::Packet, netns::Netns};

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;
/// The most addresses one flood rotates over.
pub const MAX_SOURCES: u32 = 1 << 20;
/// Above this many sources the frames are not all prebuilt: a ring of [`BATCH`] frames is
/// patched (source address and checksums) before each batch.
const PREBUILT_LIMIT: usize = 4096;

/// What the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A bare SYN: a new connection attempt.
    Syn,
    /// An ACK+PSH segment carrying `POST /v2/images`: what the program classifies as an image
    /// create.
    ImageCreate,
}

/// The sources the flood rotates over.
#[derive(Clone, Debug)]
pub enum Sources {
    Fixed(IpAddr),
    Set(Vec<IpAddr>),
    /// `count` consecutive addresses from `first` (at most [`MAX_SOURCES`]).
    Range {
        first: IpAddr,
        count: u32,
    },
}

impl Sources {
    fn len(&self) -> u32 {
        match self {
            Sources::Fixed(_) => 1,
            Sources::Set(set) => set.len() as u32,
            Sources::Range { count, .. } => *count,
        }
    }

    fn get(&self, i: u32) -> IpAddr {
        match self {
            Sources::Fixed(a) => *a,
            Sources::Set(set) => set[i as usize],
            Sources::Range { first, .. } => match first {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(*a).wrapping_add(i))),
                IpAddr::V6(a) => {
                    IpAddr::V6(Ipv6Addr::from(u128::from(*a).wrapping_add(u128::from(i))))
                }
            },
        }
    }
}

/// One bounded flood, sent from the namespace of the thread that calls [`Flood::run`].
#[derive(Clone, Debug)]
pub struct Flood {
    /// The sending interface (inside the sender's namespace).
    pub iface: String,
    pub src_mac: [u8; 6],
    /// The receiving interface's MAC, so the receiver's stack takes the frames as its own.
    pub dst_mac: [u8; 6],
    pub dst: IpAddr,
    pub dst_port: u16,
    pub payload: Payload,
    pub sources: Sources,
    pub max_packets: u64,
    pub max_duration: Duration,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Frames the sending driver accepted.
    pub sent: u64,
    /// `ENOBUFS` and the like: frames the kernel refused at the socket.
    pub refused: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

impl Flood {
    /// Sends until `max_packets` frames went out, `max_duration` passed or `stop` is raised.
    pub fn run(&self, stop: &AtomicBool) -> io::Result<FloodReport> {
        assert!(self.max_packets > 0 && !self.max_duration.is_zero());
        let count = self.sources.len();
        assert!(
            (1..=MAX_SOURCES).contains(&count),
            "between 1 and {MAX_SOURCES} sources"
        );
        assert!(is_documentation(self.dst), "destination {}", self.dst);
        for i in [0, count - 1] {
            let src = self.sources.get(i);
            assert!(
                is_documentation(src),
                "source {src} outside the test ranges"
            );
            assert_eq!(src.is_ipv4(), self.dst.is_ipv4(), "one address family");
        }
        if let Sources::Set(set) = &self.sources {
            assert!(set
                .iter()
                .all(|a| is_documentation(*a) && a.is_ipv4() == self.dst.is_ipv4()));
        }

        let socket = PacketSocket::bind(&self.iface)?;
        let prebuilt = count as usize <= PREBUILT_LIMIT;
        let mut frames: Vec<Vec<u8>> = if prebuilt {
            // Whole batches of frames, the sources repeating in order.
            let n = (count as usize).div_ceil(BATCH) * BATCH;
            (0..n)
                .map(|i| self.frame(self.sources.get(i as u32 % count), i))
                .collect()
        } else {
            (0..BATCH)
                .map(|i| self.frame(self.sources.get(i as u32), i))
                .collect()
        };

        let started = Instant::now();
        let mut report = FloodReport::default();
        let mut next_source: u32 = 0;
        let mut batch_start = 0;
        while report.sent < self.max_packets
            && !stop.load(Ordering::Relaxed)
            && started.elapsed() < self.max_duration
        {
            let want = (self.max_packets - report.sent).min(BATCH as u64) as usize;
            let batch = if prebuilt {
                let b = &frames[batch_start..batch_start + want];
                batch_start = (batch_start + BATCH) % frames.len();
                b
            } else {
                for frame in frames.iter_mut().take(want) {
                    set_source(frame, self.sources.get(next_source));
                    next_source = (next_source + 1) % count;
                }
                &frames[..want]
            };
            match socket.send_batch(batch) {
                Ok(n) => report.sent += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    report.refused += 1;
                    thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Runs the flood on a thread inside `ns`; raising the handle's flag (or dropping it)
    /// stops it early.
    pub fn spawn_in(self, ns: &Netns) -> FloodHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = ns.spawn(move || self.run(&flag));
        FloodHandle {
            stop,
            thread: Some(thread),
        }
    }

    /// The `i`-th frame from `src`, with valid IP and TCP checksums (the receiving stack
    /// checks them) and a source port varying with `i`.
    fn frame(&self, src: IpAddr, i: usize) -> Vec<u8> {
        let mut p = match self.payload {
            Payload::Syn => Packet::syn(&src.to_string(), self.dst_port),
            Payload::ImageCreate => Packet::request(
                &src.to_string(),
                self.dst_port,
                b"POST /v2/images HTTP/1.1\r\nHost: glance:9292\r\nContent-Type: application/json\r\nContent-Length: 62\r\n\r\n",
            ),
        };
        p.dst = self.dst;
        p.src_port = 20_000 + (i % 40_000) as u16;
        let mut frame = p.build();
        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        fix_checksums(&mut frame);
        frame
    }
}

/// A flood running on its own thread.
pub struct FloodHandle {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<io::Result<FloodReport>>>,
}

impl FloodHandle {
    /// Stops the flood and returns what it did.
    pub fn stop(self) -> io::Result<FloodReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the flood to reach its bound.
    pub fn join(mut self) -> io::Result<FloodReport> {
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for FloodHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// 198.51.100.0/24, 203.0.113.0/24 or 2001:db8::/32.
pub fn is_documentation(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => matches!(a.octets(), [198, 51, 100, _] | [203, 0, 113, _]),
        IpAddr::V6(a) => a.segments()[..2] == [0x2001, 0x0db8],
    }
}

/// The MAC address of `iface` in the calling thread's network namespace.
pub fn mac_of(iface: &str) -> io::Result<[u8; 6]> {
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an ordinary socket for the ioctl, owned and closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the union holds the hardware address.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data) {
        *d = s as u8;
    }
    Ok(mac)
}

/// An `AF_PACKET` socket bound to one interface for sending only.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn bind(iface: &str) -> io::Result<Self> {
        let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: this socket receives nothing, so it costs the receive path nothing.
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Sends `frames` with one `sendmmsg`; returns how many went out.
    fn send_batch(&self, frames: &[Vec<u8>]) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let n = frames.len().min(BATCH);
        for i in 0..n {
            iovs[i].iov_base = frames[i].as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = frames[i].len();
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs[..n] point at iovecs over frames that outlive the call; the kernel
        // only reads them.
        let sent = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Writes `src` into an untagged IPv4 or IPv6 frame and recomputes its checksums.
fn set_source(frame: &mut [u8], src: IpAddr) {
    match src {
        IpAddr::V4(a) => frame[26..30].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => frame[22..38].copy_from_slice(&a.octets()),
    }
    fix_checksums(frame);
}

/// Recomputes the IPv4 header checksum and the TCP checksum of an untagged frame.
fn fix_checksums(frame: &mut [u8]) {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (l4, tcp_len, mut sum) = if ethertype == 0x0800 {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        frame[24..26].fill(0);
        let ip_sum = fold(add(0, &frame[14..14 + ihl]));
        frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_len = total - ihl;
        // Pseudo-header: addresses, protocol, TCP length.
        let sum = add(0, &frame[26..34]) + 6 + tcp_len as u32;
        (14 + ihl, tcp_len, sum)
    } else {
        let tcp_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
        let sum = add(0, &frame[22..54]) + 6 + tcp_len as u32;
        (54, tcp_len, sum)
    };
    frame[l4 + 16..l4 + 18].fill(0);
    sum = add(sum, &frame[l4..l4 + tcp_len]);
    let tcp_sum = fold(sum);
    frame[l4 + 16..l4 + 18].copy_from_slice(&tcp_sum.to_be_bytes());
}

fn add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(sources: Sources, dst: &str) -> Flood {
        Flood {
            iface: "lo".into(),
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            dst: dst.parse().unwrap(),
            dst_port: 9292,
            payload: Payload::Syn,
            sources,
            max_packets: 1,
            max_duration: Duration::from_secs(1),
        }
    }

    /// A checksum over data that carries its own checksum folds to zero.
    fn verifies(frame: &[u8]) -> bool {
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let (l4, tcp_len, pseudo) = if ethertype == 0x0800 {
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if fold(add(0, &frame[14..34])) != 0 {
                return false;
            }
            (
                34,
                total - 20,
                add(0, &frame[26..34]) + 6 + (total - 20) as u32,
            )
        } else {
            let len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
            (54, len, add(0, &frame[22..54]) + 6 + len as u32)
        };
        fold(add(pseudo, &frame[l4..l4 + tcp_len])) == 0
    }

    #[test]
    fn frames_carry_valid_checksums_after_patching() {
        for (first, dst) in [
            ("198.51.100.2", "203.0.113.1"),
            ("2001:db8:100::2", "2001:db8:100::1"),
        ] {
            let f = flood(
                Sources::Range {
                    first: first.parse().unwrap(),
                    count: 1000,
                },
                dst,
            );
            let mut frame = f.frame(f.sources.get(0), 7);
            assert!(verifies(&frame));
            set_source(&mut frame, f.sources.get(999));
            assert!(verifies(&frame));
            assert_eq!(Packet::syn(first, 9292).build().len(), frame.len());
        }
        let mut f = flood(
            Sources::Fixed("198.51.100.2".parse().unwrap()),
            "203.0.113.1",
        );
        f.payload = Payload::ImageCreate;
        assert!(verifies(&f.frame(f.sources.get(0), 0)));
    }

    #[test]
    fn range_rotates_within_the_documentation_ranges() {
        let r = Sources::Range {
            first: "2001:db8:1::".parse().unwrap(),
            count: MAX_SOURCES,
        };
        assert_eq!(
            r.get(MAX_SOURCES - 1),
            "2001:db8:1::f:ffff".parse::<IpAddr>().unwrap()
        );
        assert!(is_documentation(r.get(MAX_SOURCES - 1)));
        assert!(!is_documentation("192.0.2.1".parse().unwrap()));
        assert!(!is_documentation("10.0.0.1".parse().unwrap()));
    }
}
