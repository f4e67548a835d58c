//! A stand-in for the Glance API (201 to image-create, 200 to everything else, keep-alive) and
//! a bounded client. The real Glance runs in the daemon's end-to-end tests; packet counting
//! only needs something that speaks HTTP/1.1 over real TCP.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use crate::netns::Netns;

/// How long the server keeps an idle connection, and the most any test waits on one.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StandInServer {
    stop: Arc<AtomicBool>,
    accept_thread: Option<thread::JoinHandle<()>>,
    requests: Arc<AtomicU64>,
}

impl StandInServer {
    /// Listens on `[::]:port` (IPv4 and IPv6) inside `ns`; returns once the socket listens.
    pub fn start_in(ns: &Netns, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let accept_thread = {
            let stop = stop.clone();
            let requests = requests.clone();
            ns.spawn(move || {
                let listener = match listen_dual_stack(port) {
                    Ok(l) => l,
                    Err(e) => {
                        ready_tx.send(Err(e)).ok();
                        return;
                    }
                };
                ready_tx.send(Ok(())).ok();
                accept_loop(listener, &stop, &requests);
            })
        };
        ready_rx
            .recv()
            .expect("server thread ended before listening")
            .expect("stand-in server cannot listen");
        StandInServer {
            stop,
            accept_thread: Some(accept_thread),
            requests,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for StandInServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept_thread.take() {
            t.join().ok();
        }
    }
}

/// A listener on `[::]:port` (both families), non-blocking so its accept loop can stop.
pub(crate) fn listen_dual_stack(port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    let addr: SocketAddr = (IpAddr::from([0u16; 8]), port).into();
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn accept_loop(listener: TcpListener, stop: &Arc<AtomicBool>, requests: &Arc<AtomicU64>) {
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                let requests = requests.clone();
                workers.push(thread::spawn(move || serve(stream, &stop, &requests)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2))
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    for w in workers {
        w.join().ok();
    }
}

/// Largest request (head and body) the stand-in accepts.
pub(crate) const MAX_REQUEST_BYTES: usize = 2 << 20;

fn serve(mut stream: TcpStream, stop: &AtomicBool, requests: &AtomicU64) {
    stream.set_nonblocking(false).ok();
    // Short read timeout so the worker notices `stop`; the idle limit is IO_TIMEOUT. Bytes
    // received before a timeout stay in `pending`, so a request split over several segments
    // (a retransmission, a slow client) is still answered.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok();
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::Relaxed) && idle_since.elapsed() < IO_TIMEOUT {
        while let Some((request_line, consumed)) = complete_request(&pending) {
            pending.drain(..consumed);
            if stream
                .write_all(response_to(&request_line).as_bytes())
                .is_err()
            {
                return;
            }
            requests.fetch_add(1, Ordering::Relaxed);
            idle_since = Instant::now();
        }
        match read_more(&mut stream, &mut pending, &mut chunk) {
            Some(true) => idle_since = Instant::now(),
            Some(false) => {}
            None => return,
        }
    }
}

/// Reads what the peer sent next onto `pending`: `Some(true)` if something came, `Some(false)`
/// if the read timed out (call again), `None` if the connection ended or the request grew past
/// [`MAX_REQUEST_BYTES`].
pub(crate) fn read_more(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Option<bool> {
    match stream.read(chunk) {
        Ok(0) => None,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            (pending.len() <= MAX_REQUEST_BYTES).then_some(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Some(false)
        }
        Err(_) => None,
    }
}

/// Glance's answer, reduced to what tests look at: 201 to image-create, 200 otherwise.
pub(crate) fn response_to(request_line: &str) -> String {
    let created = request_line.starts_with("POST ")
        && (request_line.contains(" /v2/images ") || request_line.contains(" /v1/images "));
    let (status, body) = if created {
        ("201 Created", r#"{"status":"queued"}"#)
    } else {
        ("200 OK", r#"{"images":[]}"#)
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The request line and total length (head and body) of the request at the start of `buf`,
/// once all of it has arrived.
pub(crate) fn complete_request(buf: &[u8]) -> Option<(String, usize)> {
    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let total = head_len.checked_add(content_length)?;
    (buf.len() >= total).then_some((request_line, total))
}

/// Connects from `src` to `dst:port`, failing after `timeout`. Call inside the client's
/// namespace (the socket stays in it afterwards, whatever thread uses it).
pub fn connect_from(src: &str, dst: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let src: IpAddr = src.parse().expect("source address");
    let dst: IpAddr = dst.parse().expect("destination address");
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&SocketAddr::new(dst, port).into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one request on a keep-alive connection and returns the response status.
pub fn request(stream: &mut TcpStream, method: &str, path: &str, body: &str) -> io::Result<u16> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: glance\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes())?;
    read_response(stream)
}

/// Reads one response and returns its status. With [`request`] failing on a read timeout,
/// this collects the late answer (for example after TCP retransmitted the request).
pub fn read_response(stream: &mut TcpStream) -> io::Result<u16> {
    // Byte at a time is fine for tests and never over-reads into the next response.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = match stream.read(&mut byte) {
            Ok(read) => read,
            // A signal to the process interrupted the wait (a read with a timeout is never
            // restarted by the kernel): wait again, as `read_exact` does.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too long",
            ));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(status)
}

/// How long a flood's connect waits. Well past a veth round trip and below the 1 s initial
/// SYN retransmission timeout, so every attempt sends exactly one SYN: the number of SYNs the
/// program counted is the number of attempts, whatever their outcome.
pub const FLOOD_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a flood's request waits for its response before it checks whether the request
/// was dropped (see [`image_create_flood`]). Glance answers a create in tens of milliseconds.
pub const FLOOD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bounds every traffic generator honours: it stops at whichever comes first, or when its
/// `stop` flag is raised.
#[derive(Clone, Copy, Debug)]
pub struct FloodLimits {
    pub max_attempts: usize,
    pub max_duration: Duration,
    /// Stop after this many failures in a row (a ban that holds), if set.
    pub stop_after_failures: Option<usize>,
}

/// Raises a generator's stop flag when dropped: a test that panics while its traffic runs
/// stops it at once rather than when the generator's own limits end it.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One attempt of a generator: when it started (its SYN or request segment left after this
/// instant) and the HTTP status it got, `None` for no answer (connect or request timed out).
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub started: Instant,
    /// When the attempt ended (its answer, or giving up on one).
    pub ended: Instant,
    pub status: Option<u16>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What a generator did, in order.
#[derive(Clone, Debug, Default)]
pub struct FloodLog {
    pub attempts: Vec<Attempt>,
}

impl FloodLog {
    /// Index of the first attempt that got no answer.
    pub fn first_failure(&self) -> Option<usize> {
        self.attempts.iter().position(|a| !a.succeeded())
    }

    pub fn successes(&self) -> usize {
        self.attempts.iter().filter(|a| a.succeeded()).count()
    }

    /// Attempts that succeeded at or after index `from`.
    pub fn successes_from(&self, from: usize) -> usize {
        self.attempts[from..]
            .iter()
            .filter(|a| a.succeeded())
            .count()
    }

    pub fn failures(&self) -> usize {
        self.attempts.len() - self.successes()
    }

    /// How many attempts got each status (`None`: no answer). Behind a load balancer a
    /// refused request is an answer, 502, 503 or 504, and this tells them apart.
    pub fn status_counts(&self) -> BTreeMap<Option<u16>, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.attempts {
            *counts.entry(a.status).or_default() += 1;
        }
        counts
    }
}

/// Runs `attempt` until a limit is reached, every `pace` if given (else back to back), and
/// records each outcome.
pub(crate) fn drive(
    limits: FloodLimits,
    stop: &AtomicBool,
    pace: Option<Duration>,
    mut attempt: impl FnMut() -> Option<u16>,
) -> FloodLog {
    let begun = Instant::now();
    let deadline = begun + limits.max_duration;
    let mut log = FloodLog::default();
    let mut failures_in_a_row = 0;
    loop {
        if let Some(pace) = pace {
            let next = begun + pace * log.attempts.len() as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        let done = log.attempts.len() >= limits.max_attempts
            || Instant::now() >= deadline
            || stop.load(Ordering::Relaxed)
            || limits
                .stop_after_failures
                .is_some_and(|n| failures_in_a_row >= n);
        if done {
            return log;
        }
        let started = Instant::now();
        let status = attempt();
        let record = Attempt {
            started,
            ended: Instant::now(),
            status,
        };
        failures_in_a_row = if record.succeeded() {
            0
        } else {
            failures_in_a_row + 1
        };
        log.attempts.push(record);
    }
}

/// A connection flood: connect from `src` to `dst:port` and reset the connection at once,
/// over and over, one attempt every `pace` (back to back if `None`). An attempt is one SYN
/// (see [`FLOOD_CONNECT_TIMEOUT`]); it succeeds (status 200, standing for "connected") when
/// the handshake completes. Closing with a reset leaves no TIME_WAIT behind, so a long flood
/// never runs out of source ports. Call inside the client's namespace.
///
/// Panics on any failure other than a timeout: only a dropped SYN may count as a failed
/// attempt, never a local error.
pub fn connection_flood(
    src: &str,
    dst: &str,
    port: u16,
    pace: Option<Duration>,
    limits: FloodLimits,
    stop: &AtomicBool,
) -> FloodLog {
    drive(limits, stop, pace, || {
        match connect_from(src, dst, port, FLOOD_CONNECT_TIMEOUT) {
            Ok(stream) => {
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER");
                Some(200)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => None,
            Err(e) => panic!("connect from {src} to {dst}:{port} failed locally: {e}"),
        }
    })
}

/// An image-create flood over one keep-alive connection: `POST /v2/images` every `pace`
/// (back to back if `None`), each waiting for its answer. When a request gets none, the
/// connection is given up and the next attempt reconnects (an attempt of its own, one SYN),
/// as a client library would. Call inside the client's namespace.
///
/// A request fails only when it was dropped, never because Glance was slow: when no answer
/// came within [`FLOOD_RESPONSE_TIMEOUT`] but the server's kernel acknowledged the request
/// (a veth loses nothing, so only a rule makes it go unacknowledged), the flood waits for the
/// late answer.
pub fn image_create_flood(
    src: &str,
    dst: &str,
    port: u16,
    body: &str,
    pace: Option<Duration>,
    limits: FloodLimits,
    stop: &AtomicBool,
) -> FloodLog {
    let mut client = ImageCreateClient::new(src, dst, port, body);
    drive(limits, stop, pace, || client.create())
}

/// The client side of [`image_create_flood`], one create at a time, for a caller that keeps
/// its own schedule and tally (the demo): `POST /v2/images` on a keep-alive connection,
/// reconnecting after a request that got no answer. Use inside the client's namespace.
pub struct ImageCreateClient {
    src: String,
    dst: String,
    port: u16,
    body: String,
    connection: Option<TcpStream>,
}

impl ImageCreateClient {
    pub fn new(src: &str, dst: &str, port: u16, body: &str) -> Self {
        ImageCreateClient {
            src: src.to_owned(),
            dst: dst.to_owned(),
            port,
            body: body.to_owned(),
            connection: None,
        }
    }

    /// One create (connecting first if needed): the status, or `None` when the connect or
    /// the request got no answer (see [`image_create_flood`] for what counts as none).
    pub fn create(&mut self) -> Option<u16> {
        let (src, dst, port) = (self.src.as_str(), self.dst.as_str(), self.port);
        if self.connection.is_none() {
            let stream = match connect_from(src, dst, port, FLOOD_CONNECT_TIMEOUT) {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return None,
                Err(e) => panic!("connect from {src} to {dst}:{port} failed locally: {e}"),
            };
            stream
                .set_read_timeout(Some(FLOOD_RESPONSE_TIMEOUT))
                .expect("read timeout");
            self.connection = Some(stream);
        }
        let stream = self.connection.as_mut().expect("connected above");
        let status = match request(stream, "POST", "/v2/images", &self.body) {
            Ok(status) => Some(status),
            Err(e) if is_timeout(&e) && !has_unacknowledged_data(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
                let late = read_response(stream).ok();
                stream.set_read_timeout(Some(FLOOD_RESPONSE_TIMEOUT)).ok()?;
                late
            }
            Err(_) => None,
        };
        // No answer, or a refusal (the limiter's 429 closes the connection, as Glance's own
        // errors may): the next create opens a new connection, as a client library would.
        if status.is_none_or(|s| s == 429) {
            self.connection = None;
        }
        status
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whether `stream` has sent data the peer has not acknowledged (TCP_INFO's unacked count).
pub fn has_unacknowledged_data(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
    info.tcpi_unacked > 0
}

/// A well-behaved client: one request every `every` on a new connection each time (so every
/// request also proves that its SYN passes), on a fixed schedule, until a limit or `stop`.
/// Call inside the client's namespace.
#[allow(clippy::too_many_arguments)]
pub fn periodic_requests(
    src: &str,
    dst: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    every: Duration,
    limits: FloodLimits,
    stop: &AtomicBool,
) -> FloodLog {
    drive(limits, stop, Some(every), || {
        let mut stream = connect_from(src, dst, port, IO_TIMEOUT).ok()?;
        request(&mut stream, method, path, body).ok()
    })
}
