//! Receive-side set-up for floods over a veth: keep the receiver's work on a CPU of its own.
//!
//! A veth hands a frame to its peer inside the sender's transmit call; with NAPI on the
//! receiving end (an XDP program attached, or GRO turned on) the frame is queued instead and a
//! NAPI poll takes it. Threaded NAPI moves that poll into a kernel thread, which can be
//! pinned: the sender then runs on one CPU and the whole receive path (XDP, nftables, the
//! stack) on another, so a receiver's packet rate is its own, not shared with the sender's.

use limiter_user::loader::Baseline;
use std::{fs, io, mem, os::fd::AsRawFd, process::Command};

use crate::netns::Netns;

/// `ETHTOOL_SGRO` (linux/ethtool.h).
const ETHTOOL_SGRO: u32 = 0x0000_002c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO on for `iface` in `ns`: a veth then runs NAPI even without an XDP program, so
/// it accepts redirected XDP frames and its receive path can be threaded.
pub fn enable_gro(ns: &Netns, iface: &str) -> io::Result<()> {
    ns.run(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
            // A fresh namespace's loopback may be down; any datagram socket does for ioctls.
            std::net::UdpSocket::bind("[::1]:0")
        });
        let fd = match socket {
            Ok(s) => s,
            Err(_) => raw_dgram_socket()?,
        };
        let mut value = EthtoolValue {
            cmd: ETHTOOL_SGRO,
            data: 1,
        };
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { mem::zeroed() };
        let name = iface.as_bytes();
        if name.len() >= req.ifr_name.len() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        for (d, s) in req.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL reads the ethtool_value our ifreq points at, alive for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

fn raw_dgram_socket() -> io::Result<std::net::UdpSocket> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); ownership passes to the UdpSocket.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { std::net::UdpSocket::from_raw_fd(fd) })
}

/// An XDP program that passes everything, attached natively to a veth until dropped (it
/// detaches with its program): the one way a veth takes frames its peer sends back with
/// XDP_TX at once.
///
/// A veth's XDP_TX puts the frame on its peer's ring. That needs the peer to run NAPI (with
/// GRO off and no program, the frame is dropped: `rx_queue_0_xdp_tx_errors`), and the peer's
/// NAPI is only woken for such frames when the peer has an XDP program of its own
/// (`veth_xdp_flush`): with GRO alone they wait on the ring until some other frame wakes it.
/// glance-limiter answers a banned client behind a trusted proxy with XDP_TX, so on a veth
/// the proxy's end needs this to receive that answer.
pub struct XdpPass {
    _program: Baseline,
}

/// Attaches [`XdpPass`] to `iface` in `ns`.
pub fn xdp_pass(ns: &Netns, iface: &str) -> XdpPass {
    ns.run(|| {
        let mut program = Baseline::load(Baseline::EMPTY_PASS).expect("load empty_pass");
        program
            .attach_native(iface)
            .unwrap_or_else(|e| panic!("attach empty_pass to {iface}: {e}"));
        XdpPass { _program: program }
    })
}

/// Makes the NAPI polls of `iface` in `ns` kernel threads. sysfs shows the devices of the
/// namespace it was mounted in, so this goes through `ip netns exec` (which mounts one).
pub fn enable_threaded(ns: &Netns, iface: &str) -> io::Result<()> {
    let status = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{iface}/threaded"))
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "could not make {iface}'s NAPI threaded"
        )));
    }
    Ok(())
}

/// The NAPI kernel threads of interfaces named `iface` (`napi/<iface>-<id>`, cut to the 15
/// characters of a task name): their process ids.
pub fn napi_threads(iface: &str) -> io::Result<Vec<i32>> {
    let wanted: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(entry.path().join("comm")) {
            if comm.trim_end().starts_with(&wanted) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// Pins the NAPI thread(s) of `iface` to `cpu` at nice -20 and returns their ids.
/// Attaching or detaching XDP may re-create them, so call it after every such change.
pub fn pin_receiver(iface: &str, cpu: usize) -> Vec<i32> {
    let threads = napi_threads(iface).expect("list NAPI threads");
    assert!(
        !threads.is_empty(),
        "no NAPI thread for {iface}: GRO and threaded NAPI on?"
    );
    for &pid in &threads {
        pin_to_cpu(pid, cpu).expect("pin the NAPI thread");
        raise_priority(pid).expect("raise the NAPI thread's priority");
    }
    threads
}

/// Restricts thread `pid` (0: the calling thread) to `cpu`.
pub fn pin_to_cpu(pid: i32, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size given.
    if unsafe { libc::sched_setaffinity(pid, mem::size_of::<libc::cpu_set_t>(), &set) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Busy time of one CPU so far, in USER_HZ ticks (/proc/stat: everything but idle, iowait
/// and steal, which is time the hypervisor gave to someone else).
pub fn cpu_busy_ticks(cpu: usize) -> io::Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .ok_or_else(|| io::Error::other(format!("no {label} in /proc/stat")))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let busy = fields.iter().take(7).sum::<u64>()
        - fields.get(3).unwrap_or(&0)
        - fields.get(4).unwrap_or(&0);
    Ok(busy)
}

/// Gives the calling process's scheduling autogroup (its session) the highest time-sharing
/// priority while held, and restores the old one on drop. With autogroups (the default),
/// CPU time is shared between sessions first, so a thread's own nice value only counts
/// against its own session: without this, a benchmark on a shared machine gets one session's
/// share, however many others are compiling.
pub struct AutogroupPriority {
    previous: Option<i32>,
}

impl AutogroupPriority {
    const PATH: &'static str = "/proc/self/autogroup";

    pub fn raise() -> Self {
        // "/autogroup-283 nice 0"; absent when the kernel has no autogroups.
        let previous = fs::read_to_string(Self::PATH)
            .ok()
            .and_then(|s| s.split_whitespace().last()?.parse().ok());
        if previous.is_some() && fs::write(Self::PATH, "-20").is_err() {
            return AutogroupPriority { previous: None };
        }
        AutogroupPriority { previous }
    }
}

impl Drop for AutogroupPriority {
    fn drop(&mut self) {
        if let Some(nice) = self.previous {
            fs::write(Self::PATH, nice.to_string()).ok();
        }
    }
}

/// Gives thread `pid` (0: the calling thread, and the threads it creates after) the highest
/// time-sharing priority (nice -20), so a benchmark on a shared machine is not paced by
/// whatever else runs at normal priority.
pub fn raise_priority(pid: i32) -> io::Result<()> {
    // SAFETY: plain setpriority(2); for a thread id it affects that thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, -20) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Time thread `pid` has spent on a CPU, in nanoseconds (/proc/PID/schedstat). Without
/// IRQ time accounting, softirq work the thread triggers (its `local_bh_enable`) is included.
pub fn thread_cpu_ns(pid: i32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/schedstat")))
}

/// CPU time of the calling thread so far.
pub fn own_thread_cpu() -> io::Result<std::time::Duration> {
    // SAFETY: timespec is plain data, filled by clock_gettime.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: a valid clock id and a timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::time::Duration::new(
        ts.tv_sec as u64,
        ts.tv_nsec as u32,
    ))
}
