//! A bounded packet flood: TCP SYNs or HTTP image-create segments to a protected port, sent
//! from a test namespace over its veth, with the source fixed, rotating over a set, or rotating
//! over up to a million addresses (IPv4 or IPv6). Every run stops at a packet count AND a
//! deadline, whichever comes first, or earlier when its stop flag is raised.
//!
//! Two senders ([`Sender`]):
//! - [`Sender::XdpLiveFrames`], the fast one: `BPF_PROG_TEST_RUN` in live-frames mode runs
//!   the `flood_tx` program (limiter-ebpf/src/flood_tx.rs) on a page-pool frame, which
//!   rewrites the source and checksums and redirects the frame into the sender's veth. The
//!   peer receives it as an XDP frame: no skb, no socket, no copy on the way. The receiving
//!   veth must run NAPI (an XDP program attached, or GRO on: [`crate::napi`]), or the frames
//!   are refused. Sources: fixed or a range.
//! - [`Sender::PacketSocket`]: an `AF_PACKET` raw socket bound to the veth, with
//!   `PACKET_QDISC_BYPASS` and `sendmmsg` batches of prebuilt frames. Slower (an skb and a
//!   copy per frame, and XDP on the receiving veth then copies each skb into a page of its
//!   own), but it delivers to any receiver and takes any set of sources.
//!
//! `AF_XDP` on a veth runs in copy mode only, no faster than the packet socket.
//!
//! Addresses: the callers pass documentation addresses only (`198.51.100.0/24`,
//! `203.0.113.0/24`, `2001:db8::/32`); [`Flood::run`] refuses anything else, as source or
//! destination. A range is at most [`MAX_SOURCES`] long and both its ends are checked, so an
//! IPv4 range stays inside one of the /24s (a million sources means IPv6).

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

use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use limiter_common::{FloodTxConfig, FLOOD_TX_CONFIG_MAP, FLOOD_TX_PROGRAM};

use crate::{frames::Packet, netns::Netns};

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;
/// The most addresses one flood rotates over.
pub const MAX_SOURCES: u32 = 1 << 20;
/// Frames in the first live-frames test run. Each run costs a fixed ~10–30 ms in the kernel
/// (it swaps the program into the XDP dispatcher and out again, each with an RCU grace
/// period), so later runs are sized to last about [`LIVE_CALL`], but never past the deadline.
const LIVE_CHUNK_FIRST: u64 = 16_384;
const LIVE_CALL: Duration = Duration::from_millis(100);
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

/// How the frames are put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// `BPF_PROG_TEST_RUN` live frames redirected into the veth (the fast one).
    XdpLiveFrames,
    /// An `AF_PACKET` socket with `sendmmsg`.
    PacketSocket,
}

/// The sources the flood rotates over. The live-frames sender starts each pass over a range
/// one source later (so a receiver that drops frames in a fixed pattern still sees every
/// source); the packet-socket sender goes round in order.
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
    pub sender: Sender,
    /// Runs the sender on this CPU only (so a receiver pinned elsewhere has its own).
    pub cpu: Option<usize>,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Frames the sending driver accepted.
    pub sent: u64,
    /// `ENOBUFS` and the like: frames the kernel refused at the socket.
    pub refused: u64,
    pub elapsed: Duration,
    /// CPU time of the sending thread over the run.
    pub cpu: Duration,
}

impl FloodReport {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

impl Flood {
    /// Sends until `max_packets` frames went out, `max_duration` passed or `stop` is raised.
    pub fn run(&self, stop: &AtomicBool) -> io::Result<FloodReport> {
        self.check();
        if let Some(cpu) = self.cpu {
            crate::napi::pin_to_cpu(0, cpu)?;
        }
        let cpu_before = crate::napi::own_thread_cpu()?;
        let mut report = match self.sender {
            Sender::XdpLiveFrames => self.run_live_frames(stop),
            Sender::PacketSocket => self.run_packet_socket(stop),
        }?;
        report.cpu = crate::napi::own_thread_cpu()? - cpu_before;
        Ok(report)
    }

    /// The bounds and the address rules; a violation is a bug in the caller.
    fn check(&self) {
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
    }

    fn run_live_frames(&self, stop: &AtomicBool) -> io::Result<FloodReport> {
        let (first, count) = match &self.sources {
            Sources::Fixed(a) => (*a, 1),
            Sources::Range { first, count } => (*first, *count),
            Sources::Set(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the live-frames sender rotates over a range of sources, not a set",
                ))
            }
        };
        let frame = self.frame(first, 0);
        let ifindex = interface_index(&self.iface)?;
        let mut sender = LiveSender::load(live_config(&frame, ifindex, count))?;

        let started = Instant::now();
        let mut report = FloodReport::default();
        let mut chunk = LIVE_CHUNK_FIRST;
        while report.sent < self.max_packets
            && !stop.load(Ordering::Relaxed)
            && started.elapsed() < self.max_duration
        {
            let repeat = (self.max_packets - report.sent).min(chunk);
            let call = Instant::now();
            sender.send(&frame, repeat as u32)?;
            report.sent += repeat;
            chunk = next_live_chunk(
                repeat,
                call.elapsed(),
                self.max_duration - started.elapsed().min(self.max_duration),
            );
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn run_packet_socket(&self, stop: &AtomicBool) -> io::Result<FloodReport> {
        let count = self.sources.len();
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

/// The next live-frames run: about [`LIVE_CALL`] at the rate the last one reached, and no
/// longer than the time left.
fn next_live_chunk(sent: u64, took: Duration, left: Duration) -> u64 {
    let rate = sent as f64 / took.as_secs_f64().max(1e-6);
    let want = rate * LIVE_CALL.min(left).as_secs_f64();
    (want as u64).clamp(1024, u64::from(u32::MAX))
}

fn interface_index(iface: &str) -> io::Result<u32> {
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The `flood_tx` program, loaded and configured; unloaded when dropped.
///
/// A live-frames test run puts its program into the kernel's XDP dispatcher and takes it out
/// again, each with an RCU grace period (10–30 ms here), unless the program is already there
/// because it is attached somewhere. So it is attached, natively, to one end of an idle veth
/// pair of its own (down, no addresses: it never runs there), and every run starts at once.
struct LiveSender {
    // Field order is drop order: detach (with the program) before deleting the pair.
    ebpf: Ebpf,
    _anchor: AnchorPair,
}

/// A veth pair in the calling thread's namespace, deleted on drop.
struct AnchorPair {
    name: String,
}

impl AnchorPair {
    /// Children of a thread inherit its network namespace, so `ip` runs where the caller is.
    fn new() -> io::Result<Self> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let name = format!("fltx{tid}");
        let status = std::process::Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name"])
            .arg(format!("{name}p"))
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "could not create veth pair {name}"
            )));
        }
        Ok(AnchorPair { name })
    }
}

impl Drop for AnchorPair {
    fn drop(&mut self) {
        let deleted = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
        if !matches!(deleted, Ok(s) if s.success()) {
            eprintln!("warning: could not delete veth pair {}", self.name);
        }
    }
}

impl LiveSender {
    fn load(config: FloodTxConfig) -> io::Result<Self> {
        let mut ebpf =
            Ebpf::load(limiter_user::ebpf_objects::FLOOD_TX).map_err(io::Error::other)?;
        let mut map: Array<_, FloodTxConfig> = Array::try_from(
            ebpf.map_mut(FLOOD_TX_CONFIG_MAP)
                .ok_or_else(|| io::Error::other("flood_tx has no config map"))?,
        )
        .map_err(io::Error::other)?;
        map.set(0, config, 0).map_err(io::Error::other)?;
        let program: &mut Xdp = ebpf
            .program_mut(FLOOD_TX_PROGRAM)
            .ok_or_else(|| io::Error::other("flood_tx program missing"))?
            .try_into()
            .map_err(io::Error::other)?;
        program.load().map_err(io::Error::other)?;
        let anchor = AnchorPair::new()?;
        program
            .attach(&anchor.name, XdpMode::Driver)
            .map_err(io::Error::other)?;
        Ok(LiveSender {
            ebpf,
            _anchor: anchor,
        })
    }

    /// Runs the program `repeat` times on live copies of `frame`: each run sends one frame.
    fn send(&mut self, frame: &[u8], repeat: u32) -> io::Result<()> {
        let program: &Xdp = self
            .ebpf
            .program(FLOOD_TX_PROGRAM)
            .ok_or_else(|| io::Error::other("flood_tx program missing"))?
            .try_into()
            .map_err(io::Error::other)?;
        // Batch 0: the kernel's default (64 frames between flushes).
        let attrs = TestRunAttrs::new().xdp_live_frames(0);
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                attrs,
                ..TestRunOptions::new()
            })
            .map(drop)
            .map_err(io::Error::other)
    }
}

/// What `flood_tx` needs to rotate the source of `frame` (built by [`Flood::frame`]) over
/// `count` addresses and keep its checksums right.
fn live_config(frame: &[u8], ifindex: u32, count: u32) -> FloodTxConfig {
    let mut scratch = frame.to_vec();
    let ipv4 = u16::from_be_bytes([frame[12], frame[13]]) == 0x0800;
    let (src_low, l4) = if ipv4 { (26, 34) } else { (34, 54) };
    let first_low = u32::from_be_bytes(frame[src_low..src_low + 4].try_into().unwrap());
    scratch[src_low..src_low + 4].fill(0);
    scratch[l4 + 16..l4 + 18].fill(0);
    let (ip_sum, pseudo) = if ipv4 {
        scratch[24..26].fill(0);
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        (
            add(0, &scratch[14..34]),
            add(0, &scratch[26..34]) + 6 + (total - 20) as u32,
        )
    } else {
        let len = u32::from(u16::from_be_bytes([frame[18], frame[19]]));
        (0, add(0, &scratch[22..54]) + 6 + len)
    };
    FloodTxConfig {
        ifindex,
        family: if ipv4 { 4 } else { 6 },
        first_low,
        count,
        ip_sum,
        tcp_sum: add(pseudo, &scratch[l4..]),
    }
}

/// An `AF_PACKET` socket bound to one interface for sending only.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn bind(iface: &str) -> io::Result<Self> {
        let index = interface_index(iface)?;
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
            sender: Sender::PacketSocket,
            cpu: None,
        }
    }

    /// What the BPF sender computes, done here: the source's last 32 bits and both checksums.
    fn as_flood_tx_would(frame: &[u8], config: &FloodTxConfig, i: u32) -> Vec<u8> {
        let fold3 = |partial: u32, low: u32| {
            let mut sum = u64::from(partial) + u64::from(low >> 16) + u64::from(low & 0xffff);
            for _ in 0..3 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            (!(sum as u16)).to_be_bytes()
        };
        let (i, count) = (u64::from(i), u64::from(config.count));
        let low = config
            .first_low
            .wrapping_add(((i + i / count) % count) as u32);
        let mut out = frame.to_vec();
        if config.family == 4 {
            out[26..30].copy_from_slice(&low.to_be_bytes());
            out[24..26].copy_from_slice(&fold3(config.ip_sum, low));
            out[50..52].copy_from_slice(&fold3(config.tcp_sum, low));
        } else {
            out[34..38].copy_from_slice(&low.to_be_bytes());
            out[70..72].copy_from_slice(&fold3(config.tcp_sum, low));
        }
        out
    }

    #[test]
    fn live_frames_config_yields_the_patched_frames() {
        for (first, dst, payload) in [
            ("198.51.100.2", "203.0.113.1", Payload::Syn),
            ("198.51.100.2", "203.0.113.1", Payload::ImageCreate),
            ("2001:db8:1::", "2001:db8:100::1", Payload::Syn),
            ("2001:db8:1::", "2001:db8:100::1", Payload::ImageCreate),
        ] {
            let count = if first.contains(':') {
                MAX_SOURCES
            } else {
                200
            };
            let mut f = flood(
                Sources::Range {
                    first: first.parse().unwrap(),
                    count,
                },
                dst,
            );
            f.payload = payload;
            let frame = f.frame(f.sources.get(0), 0);
            let config = live_config(&frame, 7, count);
            for i in [0, 1, 77, count - 1, count] {
                let patched = as_flood_tx_would(&frame, &config, i);
                assert!(verifies(&patched), "{first} #{i}");
                let mut expected = frame.clone();
                let index = if i == count { 1 } else { i };
                set_source(&mut expected, f.sources.get(index));
                assert_eq!(patched, expected, "{first} #{i}");
            }
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
