//! The XDP program on a real veth in front of a stand-in Glance server, driven by real TCP
//! clients in another network namespace.
//!
//! What the kernel guarantees, and so what these tests assert exactly:
//! - XDP sees a frame before the server's stack does. A connect() that returned therefore had
//!   its SYN counted, and a response that arrived had its request counted.
//! - Each request is one small write on a TCP_NODELAY socket, so one segment that starts with
//!   the request line; a veth loses nothing (unless a rule drops it), so nothing is
//!   retransmitted.
//!
//! `packets` and `bytes` are exact only once the client has nothing in flight: after connect()
//! returns, the handshake's last ACK may still be on its way. Tests that need them exact wait
//! (with a deadline) until the idle connections have sent everything they will send.

use std::{
    io,
    net::{IpAddr, TcpStream},
    process::Command,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use limiter_common::{Counter, SourceStats, PROGRAM_NAME};
use limiter_tests::{
    http::{connect_from, read_response, request, StandInServer},
    netns::Topology,
};
use limiter_user::{
    loader::{AttachMode, Limiter, LoadOptions},
    rules::{compile, Action, KernelRule, Scope},
};

const GLANCE_PORT: u16 = 9292;
/// A port with a listener that is not protected.
const OTHER_PORT: u16 = 8080;
/// A port nothing listens on: the server answers a SYN with a RST.
const CLOSED_PORT: u16 = 8081;

/// Bound for a connect that should succeed (microseconds on a veth in practice).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect expected to be dropped is given. Well past a veth round trip, and
/// below the 1 s initial SYN retransmission timeout, so the client sends exactly one SYN.
const BLOCKED_CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a request expected to be dropped waits for its response.
const BLOCKED_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline for anything the tests wait for (map contents, late responses, detach).
const WAIT_DEADLINE: Duration = Duration::from_secs(10);

const CLIENT_A: &str = Topology::CLIENT_V4[0]; // 198.51.100.2
const CLIENT_B: &str = Topology::CLIENT_V4[1]; // 198.51.100.3
const CLIENT_V6: &str = Topology::CLIENT_V6[0]; // 2001:db8:100::2

/// Tests in this file create namespaces and attach XDP: one at a time, even though
/// `cargo test` runs tests in parallel. A panicking test poisons the lock; the next test
/// still runs (its own fixture is fresh).
static KERNEL: Mutex<()> = Mutex::new(());

/// Two namespaces joined by a veth, the stand-in Glance server on port 9292 in the server
/// namespace, and the limiter attached to the server's veth, protecting port 9292.
///
/// Fields drop in declaration order: the limiter first (detaching XDP), then the server, then
/// the namespaces with their veths, and the lock last.
struct Fixture {
    /// `None` once [`Fixture::drop_limiter`] ran.
    limiter: Option<Limiter>,
    server: StandInServer,
    topo: Topology,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new() -> Self {
        let serial = KERNEL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let topo = Topology::new();
        let server = StandInServer::start_in(&topo.server, GLANCE_PORT);
        let mut limiter = Limiter::load(&LoadOptions::default()).expect("load the XDP program");
        limiter
            .set_protected_ports(&[GLANCE_PORT])
            .expect("protect port 9292");
        // The interface name is looked up in the calling thread's namespace.
        let mode = topo
            .server
            .run(|| limiter.attach(topo.server_iface))
            .expect("attach to the server veth");
        // veth supports native XDP; generic mode would mean the loader's fallback hid an error.
        assert_eq!(mode, AttachMode::Native, "attach mode on veth");
        Fixture {
            limiter: Some(limiter),
            server,
            topo,
            _serial: serial,
        }
    }

    fn limiter(&self) -> &Limiter {
        self.limiter.as_ref().expect("the limiter was dropped")
    }

    /// Drops the limiter, which must detach the program from the veth.
    fn drop_limiter(&mut self) {
        drop(self.limiter.take());
    }

    /// Connects from `src` to the server's address of the same family on `port`.
    fn connect_to_port(&self, src: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
        let dst = server_addr_for(src);
        self.topo
            .client
            .run(|| connect_from(src, dst, port, timeout))
    }

    /// A keep-alive connection from `src` to Glance; panics if it cannot be made.
    fn connect(&self, src: &str) -> TcpStream {
        self.connect_to_port(src, GLANCE_PORT, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect from {src} to port {GLANCE_PORT}: {e}"))
    }

    /// `n` connections from `src` to Glance, made one after the other and left open.
    fn connect_many(&self, src: &str, n: usize) -> Vec<TcpStream> {
        self.topo.client.run(|| {
            (0..n)
                .map(|i| {
                    connect_from(src, server_addr_for(src), GLANCE_PORT, CONNECT_TIMEOUT)
                        .unwrap_or_else(|e| panic!("connection {i} from {src}: {e}"))
                })
                .collect()
        })
    }

    /// Asserts that a connect from `src` to Glance gets no answer: the SYN is dropped.
    fn assert_connect_dropped(&self, src: &str) {
        match self.connect_to_port(src, GLANCE_PORT, BLOCKED_CONNECT_TIMEOUT) {
            Ok(_) => panic!("{src} connected although it is blocked"),
            Err(e) => assert_eq!(
                e.kind(),
                io::ErrorKind::TimedOut,
                "a dropped SYN times out; a refusal would mean a RST came back: {e}"
            ),
        }
    }

    /// Asserts that `src` can connect to Glance and create an image.
    fn assert_can_create_image(&self, src: &str) {
        let mut stream = self.connect(src);
        assert_eq!(create_image(&mut stream), 201, "image create from {src}");
    }

    /// Replaces the whole rule set (an empty slice removes every rule).
    fn apply_rules(&mut self, rules: &[KernelRule]) {
        let clock = self.limiter().clock().expect("read the kernel clock");
        let compiled = compile(rules, &clock).expect("compile rules");
        self.limiter
            .as_mut()
            .expect("the limiter was dropped")
            .apply_rules(&compiled)
            .expect("apply rules");
    }

    /// The per-source row for `addr`, if the program created one.
    fn source(&self, addr: &str) -> Option<SourceStats> {
        let addr: IpAddr = addr.parse().expect("address");
        self.limiter()
            .sources()
            .expect("read the source table")
            .into_iter()
            .find(|entry| entry.addr == addr)
            .map(|entry| entry.stats)
    }

    /// The row for `addr`, which must exist.
    fn row(&self, addr: &str) -> SourceStats {
        self.source(addr)
            .unwrap_or_else(|| panic!("no source row for {addr}"))
    }

    fn counter(&self, counter: Counter) -> u64 {
        self.limiter()
            .counters()
            .expect("read counters")
            .get(counter)
    }

    /// Waits until the server has answered `n` requests. It counts after writing a response,
    /// so the client may read the response a moment before the count moves.
    fn wait_for_server_requests(&self, n: u64) {
        wait_until("server request count", || self.server.requests() == n);
        assert_eq!(self.server.requests(), n, "requests answered by the server");
    }

    /// `ip link show` of the server veth, as seen inside the server namespace.
    fn server_link(&self) -> String {
        link_show(self.topo.server.name(), self.topo.server_iface)
    }
}

/// The server address in the family of `src`.
fn server_addr_for(src: &str) -> &'static str {
    if src.contains(':') {
        Topology::SERVER_V6
    } else {
        Topology::SERVER_V4
    }
}

fn block(net: &str) -> KernelRule {
    KernelRule {
        net: net.parse().expect("prefix"),
        action: Action::Block,
        scope: Scope::ProtectedPorts,
        expires: None,
    }
}

fn allow(net: &str) -> KernelRule {
    KernelRule {
        action: Action::Allow,
        ..block(net)
    }
}

fn create_image(stream: &mut TcpStream) -> u16 {
    request(
        stream,
        "POST",
        "/v2/images",
        r#"{"name":"cirros","disk_format":"qcow2"}"#,
    )
    .expect("POST /v2/images")
}

/// Polls `done` every few milliseconds until it holds; panics after [`WAIT_DEADLINE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_DEADLINE:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn link_show(netns: &str, iface: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", netns, "link", "show", iface])
        .output()
        .expect("run ip link show");
    assert!(
        out.status.success(),
        "ip -n {netns} link show {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `ip link show` output says an XDP program is attached (`prog/xdp`, or
/// `prog/xdpgeneric` in generic mode; the word `xdp` appears nowhere else).
fn shows_xdp(link: &str) -> bool {
    link.contains("xdp")
}

#[test]
fn counts_each_syn_to_the_protected_port_and_ignores_other_ports() {
    limiter_tests::require_kernel!();
    let fix = Fixture::new();
    let _other_service = StandInServer::start_in(&fix.topo.server, OTHER_PORT);
    const CONNECTIONS: usize = 20;

    // Traffic to an unprotected port, served or refused, creates no row.
    let other_port_before = fix.counter(Counter::PassOtherPort);
    let mut other = fix
        .connect_to_port(CLIENT_A, OTHER_PORT, CONNECT_TIMEOUT)
        .expect("connect to the unprotected port");
    assert_eq!(create_image(&mut other), 201);
    drop(other);
    let refused = fix.connect_to_port(CLIENT_A, CLOSED_PORT, CONNECT_TIMEOUT);
    assert_eq!(
        refused
            .expect_err("nothing listens on the closed port")
            .kind(),
        io::ErrorKind::ConnectionRefused
    );
    // At least the two SYNs and the request were seen, and passed as "other port".
    assert!(fix.counter(Counter::PassOtherPort) >= other_port_before + 3);
    assert_eq!(
        fix.source(CLIENT_A),
        None,
        "row created by other-port traffic"
    );

    let open = fix.connect_many(CLIENT_A, CONNECTIONS);
    let row = fix.row(CLIENT_A);
    assert_eq!(
        u64::from(row.syns),
        CONNECTIONS as u64,
        "SYNs counted: {row:?}"
    );
    assert!(row.packets >= CONNECTIONS as u32, "{row:?}");
    assert_eq!(
        (row.image_create, row.other_write, row.read),
        (0, 0, 0),
        "no request was sent on these connections"
    );

    // Idle established connections send nothing after the handshake's last ACK, so the row
    // settles at exactly SYN + ACK per connection.
    wait_until("the handshakes' last ACKs", || {
        fix.row(CLIENT_A).packets == 2 * CONNECTIONS as u32
    });
    let settled = fix.row(CLIENT_A);
    // At least Ethernet + IPv4 + TCP headers per frame.
    assert!(
        settled.bytes >= u64::from(settled.packets) * (14 + 20 + 20),
        "{settled:?}"
    );

    // More traffic to other ports from the same source leaves the row untouched, down to
    // last_seen (other-port packets never reach the row).
    let other_port_before = fix.counter(Counter::PassOtherPort);
    let mut other = fix
        .connect_to_port(CLIENT_A, OTHER_PORT, CONNECT_TIMEOUT)
        .expect("connect to the unprotected port");
    assert_eq!(create_image(&mut other), 201);
    assert!(fix.counter(Counter::PassOtherPort) >= other_port_before + 2);
    assert_eq!(
        fix.row(CLIENT_A),
        settled,
        "other-port traffic changed the row"
    );

    drop(other);
    drop(open);
}

#[test]
fn counts_every_request_on_one_keep_alive_connection() {
    limiter_tests::require_kernel!();
    let fix = Fixture::new();
    const CREATES: u64 = 30;
    const READS: u64 = 10;
    const OTHER_WRITES: u64 = 5;
    let mut stream = fix.connect(CLIENT_A);

    for _ in 0..CREATES {
        assert_eq!(create_image(&mut stream), 201);
    }
    for _ in 0..READS {
        assert_eq!(request(&mut stream, "GET", "/v2/images", "").unwrap(), 200);
    }
    for _ in 0..OTHER_WRITES {
        let status = request(&mut stream, "DELETE", "/v2/images/x", "").unwrap();
        assert_eq!(status, 200);
    }

    let row = fix.row(CLIENT_A);
    assert_eq!(row.syns, 1, "one connection: {row:?}");
    assert_eq!(u64::from(row.image_create), CREATES, "{row:?}");
    assert_eq!(u64::from(row.read), READS, "{row:?}");
    assert_eq!(u64::from(row.other_write), OTHER_WRITES, "{row:?}");
    // Every request is its own segment, and the SYN comes on top.
    let requests = CREATES + READS + OTHER_WRITES;
    assert!(u64::from(row.packets) > requests, "{row:?}");
    fix.wait_for_server_requests(requests);
}

#[test]
fn counts_ipv6_sources_under_their_ipv6_address() {
    limiter_tests::require_kernel!();
    let fix = Fixture::new();
    const CONNECTIONS: usize = 10;

    let mut open = fix.connect_many(CLIENT_V6, CONNECTIONS);
    for _ in 0..7 {
        assert_eq!(create_image(&mut open[0]), 201);
    }

    let row = fix.row(CLIENT_V6);
    assert_eq!(u64::from(row.syns), CONNECTIONS as u64, "{row:?}");
    assert_eq!(row.image_create, 7, "{row:?}");
    assert_eq!((row.read, row.other_write), (0, 0), "{row:?}");
    // At least Ethernet + IPv6 + TCP headers per frame.
    assert!(
        row.bytes >= u64::from(row.packets) * (14 + 40 + 20),
        "{row:?}"
    );
    let sources = fix.limiter().sources().expect("read the source table");
    assert_eq!(
        sources.len(),
        1,
        "only the IPv6 client sent anything: {sources:?}"
    );
    fix.wait_for_server_requests(7);
}

#[test]
fn block_rule_drops_new_connections_of_that_source_only() {
    limiter_tests::require_kernel!();
    let mut fix = Fixture::new();
    // A first connection gives the source a row with a cached "pass" verdict, which the rule
    // change must invalidate.
    fix.assert_can_create_image(CLIENT_A);
    let before_block = fix.row(CLIENT_A);

    fix.apply_rules(&[block("198.51.100.2/32")]);
    let dropped_before = fix.counter(Counter::DropBlocked);
    fix.assert_connect_dropped(CLIENT_A);
    assert!(
        fix.counter(Counter::DropBlocked) > dropped_before,
        "the dropped SYN is counted as drop_blocked"
    );
    // Dropped packets are not counted per source.
    let after_drop = fix.row(CLIENT_A);
    assert_eq!(after_drop.syns, before_block.syns, "{after_drop:?}");
    assert_eq!(after_drop.image_create, 1, "{after_drop:?}");

    // Another source in the same /24 is unaffected.
    fix.assert_can_create_image(CLIENT_B);
    assert_eq!(fix.row(CLIENT_B).syns, 1);

    // Removing every rule lets the blocked source back in.
    fix.apply_rules(&[]);
    fix.assert_can_create_image(CLIENT_A);
    let unblocked = fix.row(CLIENT_A);
    assert_eq!(unblocked.syns, before_block.syns + 1, "{unblocked:?}");
    assert_eq!(unblocked.image_create, 2, "{unblocked:?}");
    fix.wait_for_server_requests(3);
}

#[test]
fn block_rule_silences_an_established_connection_until_removed() {
    limiter_tests::require_kernel!();
    let mut fix = Fixture::new();
    let mut stream = fix.connect(CLIENT_A);
    assert_eq!(create_image(&mut stream), 201);
    fix.wait_for_server_requests(1);

    fix.apply_rules(&[block("198.51.100.2/32")]);
    let dropped_before = fix.counter(Counter::DropBlocked);
    stream
        .set_read_timeout(Some(BLOCKED_REQUEST_TIMEOUT))
        .unwrap();
    let silenced = request(&mut stream, "POST", "/v2/images", "{}")
        .expect_err("a blocked source's request got an answer");
    assert!(
        matches!(
            silenced.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "expected a read timeout, got {silenced}"
    );
    assert!(fix.counter(Counter::DropBlocked) > dropped_before);
    assert_eq!(
        fix.server.requests(),
        1,
        "the dropped request reached the server"
    );

    // Unblocked, TCP retransmits the request (backoff is well under a second after half a
    // second of loss) and the late response arrives on the same connection.
    fix.apply_rules(&[]);
    stream.set_read_timeout(Some(WAIT_DEADLINE)).unwrap();
    assert_eq!(read_response(&mut stream).expect("late response"), 201);
    assert_eq!(create_image(&mut stream), 201, "the connection works again");
    fix.wait_for_server_requests(3);

    let row = fix.row(CLIENT_A);
    assert_eq!(row.syns, 1, "{row:?}");
    // Blocked copies of the request are not counted; each copy that passes is (XDP cannot
    // tell a retransmission from a new request), so the retried request counts at least once.
    assert!(row.image_create >= 3, "{row:?}");
}

#[test]
fn allow_rule_exempts_a_source_from_a_broader_block() {
    limiter_tests::require_kernel!();
    let mut fix = Fixture::new();
    fix.apply_rules(&[block("198.51.100.0/24"), allow("198.51.100.3/32")]);

    let allowed_before = fix.counter(Counter::PassAllowed);
    fix.assert_can_create_image(CLIENT_B);
    assert!(fix.counter(Counter::PassAllowed) > allowed_before);
    let allowed = fix.row(CLIENT_B);
    assert_eq!((allowed.syns, allowed.image_create), (1, 1), "{allowed:?}");

    fix.assert_connect_dropped(CLIENT_A);
    // A source never seen before and blocked gets no row: a spoofed flood from a blocked
    // prefix cannot evict real sources.
    assert_eq!(fix.source(CLIENT_A), None);

    // The IPv4 block does not reach IPv6 clients.
    fix.assert_can_create_image(CLIENT_V6);
    fix.wait_for_server_requests(2);
}

#[test]
fn dropping_the_limiter_detaches_xdp() {
    limiter_tests::require_kernel!();
    let mut fix = Fixture::new();
    let attached = fix.server_link();
    assert!(
        shows_xdp(&attached) && attached.contains(PROGRAM_NAME),
        "the program is not on the veth: {attached}"
    );
    fix.apply_rules(&[block("198.51.100.2/32")]);
    fix.assert_connect_dropped(CLIENT_A);

    fix.drop_limiter();
    wait_until("XDP to leave the server veth", || {
        !shows_xdp(&fix.server_link())
    });

    // Nothing filters any more: the blocked source connects and is answered.
    fix.assert_can_create_image(CLIENT_A);
    fix.wait_for_server_requests(1);
}
