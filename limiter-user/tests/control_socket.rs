//! The control server and client over real Unix sockets in a temporary directory. Runs as
//! any user; as root, the peers that must be refused connect as `nobody`.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use common::{canned, FakeDaemon};
use limiter_user::{
    control::{
        access::{Access, SocketGroup},
        client::{Client, ClientError},
        protocol::{ErrorKind, Request, ResponseLine, MAX_REQUEST_BYTES},
        server::{self, Limits, Server, ServerError},
    },
    rules::Scope,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn every_request() -> Vec<Request> {
    vec![
        Request::Block {
            prefixes: vec![
                "198.51.100.7/32".parse().unwrap(),
                "2001:db8::/48".parse().unwrap(),
            ],
            ttl_secs: Some(1800),
            reason: Some("flood".into()),
            scope: Scope::AllPorts,
            force: true,
        },
        Request::Block {
            prefixes: vec!["203.0.113.0/24".parse().unwrap()],
            ttl_secs: None,
            reason: None,
            scope: Scope::ProtectedPorts,
            force: false,
        },
        Request::Unblock {
            prefixes: vec!["198.51.100.7/32".parse().unwrap()],
        },
        Request::Allow {
            prefixes: vec!["192.0.2.0/24".parse().unwrap()],
            ttl_secs: None,
            reason: None,
        },
        Request::Unallow {
            prefixes: vec!["192.0.2.0/24".parse().unwrap()],
        },
        Request::List,
        Request::Stats {
            top: Some(5),
            sort: None,
            filter: None,
        },
        Request::Stats {
            top: None,
            sort: None,
            filter: None,
        },
        Request::Status,
    ]
}

/// A raw connection: lines in, lines out, for what the client never sends.
struct Raw {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn response(&mut self) -> ResponseLine {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no complete response line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    fn error_kind(&mut self, line: &str) -> (ErrorKind, String) {
        self.send(format!("{line}\n").as_bytes());
        let error = self.response().error.expect("an error response");
        (error.kind, error.message)
    }

    fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

#[test]
fn every_request_round_trips() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect(&daemon.socket, TIMEOUT).unwrap();
    for request in every_request() {
        let response = client.request(request.clone()).unwrap();
        assert_eq!(response, canned(&request), "{request:?}");
    }
    assert_eq!(daemon.requests(), every_request());
}

#[test]
fn bad_requests_get_error_kinds_and_the_connection_goes_on() {
    let daemon = FakeDaemon::start();
    let mut raw = Raw::connect(&daemon.socket);
    let cases = [
        ("{not json", ErrorKind::BadInput, "not valid JSON"),
        (
            r#"{"version":1,"op":"explode"}"#,
            ErrorKind::BadInput,
            "unknown variant `explode`",
        ),
        (
            r#"{"version":1,"op":"unblock","prefixes":[],"ttl":5}"#,
            ErrorKind::BadInput,
            "unknown field `ttl`",
        ),
        (
            r#"{"version":1,"op":"list","top":5}"#,
            ErrorKind::BadInput,
            "unknown field `top`",
        ),
        (
            r#"{"version":1,"op":"block","prefixes":["198.51.100.300"]}"#,
            ErrorKind::BadInput,
            "invalid IP address",
        ),
        (
            r#"{"version":1,"op":"block","prefixes":["198.51.100.7/32"],"force":"yes"}"#,
            ErrorKind::BadInput,
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            r#"{"version":1,"op":"allow","prefixes":["198.51.100.7/32"],"force":true}"#,
            ErrorKind::BadInput,
            "unknown field `force`",
        ),
        (
            r#"{"version":2,"op":"status"}"#,
            ErrorKind::UnsupportedVersion,
            "this daemon speaks version 1; upgrade the client or daemon so they match",
        ),
    ];
    for (line, kind, message) in cases {
        let (got_kind, got_message) = raw.error_kind(line);
        assert_eq!(got_kind, kind, "{line}");
        assert!(got_message.contains(message), "{line}: {got_message}");
    }
    raw.send(b"{\"version\":1,\"op\":\"status\"}\n");
    assert!(raw.response().ok);
    assert_eq!(
        daemon.requests(),
        [Request::Status],
        "bad requests reach no handler"
    );
}

/// `force` came after version 1: a client that predates it sends blocks without it, and they
/// mean what they always meant.
#[test]
fn a_block_without_force_from_an_older_client_is_not_forced() {
    let daemon = FakeDaemon::start();
    let mut raw = Raw::connect(&daemon.socket);
    raw.send(b"{\"version\":1,\"op\":\"block\",\"prefixes\":[\"198.51.100.7/32\"]}\n");
    assert!(raw.response().ok);
    assert_eq!(
        daemon.requests(),
        [Request::Block {
            prefixes: vec!["198.51.100.7/32".parse().unwrap()],
            ttl_secs: None,
            reason: None,
            scope: Scope::ProtectedPorts,
            force: false,
        }]
    );
}

#[test]
fn an_oversized_line_is_bad_input_and_closes_the_connection() {
    let daemon = FakeDaemon::start();
    let mut raw = Raw::connect(&daemon.socket);
    let writer = raw.writer.try_clone().unwrap();
    // The server answers and closes before taking all of it, so write from another thread.
    let sender = thread::spawn(move || {
        let mut writer = writer;
        let line = vec![b' '; MAX_REQUEST_BYTES + 10];
        let _ = writer.write_all(&line);
    });
    let error = raw.response().error.unwrap();
    assert_eq!(error.kind, ErrorKind::BadInput);
    assert!(
        error.message.contains("longer than 4194304 bytes"),
        "{}",
        error.message
    );
    assert!(raw.is_closed());
    sender.join().unwrap();
}

#[test]
fn a_line_of_exactly_the_limit_is_read() {
    let daemon = FakeDaemon::start();
    let mut raw = Raw::connect(&daemon.socket);
    let request = br#"{"version":1,"op":"status"}"#;
    let mut line = request.to_vec();
    line.resize(MAX_REQUEST_BYTES, b' ');
    line.push(b'\n');
    raw.send(&line);
    assert!(raw.response().ok);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_blank_lines_skipped() {
    let daemon = FakeDaemon::start();
    let mut raw = Raw::connect(&daemon.socket);
    raw.send(
        b"{\"version\":1,\"op\":\"status\"}\n\n  \r\n{\"version\":1,\"op\":\"list\"}\r\n\
          {\"version\":1,\"op\":\"stats\",\"top\":1}",
    );
    raw.writer.shutdown(std::net::Shutdown::Write).unwrap();
    for expected in [
        Request::Status,
        Request::List,
        Request::Stats {
            top: Some(1),
            sort: None,
            filter: None,
        },
    ] {
        assert_eq!(raw.response(), canned(&expected));
    }
    assert!(raw.is_closed());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limiter.sock");
    drop(UnixListener::bind(&path).unwrap()); // a daemon killed without cleaning up
    assert!(path.exists());
    let server = server::spawn(
        &path,
        Access::for_daemon(None).unwrap(),
        Limits::default(),
        Arc::new(canned_handler),
    )
    .unwrap();
    let mut client = Client::connect(&path, TIMEOUT).unwrap();
    assert!(client.request(Request::Status).unwrap().ok);
    server.stop();
    assert!(!path.exists(), "the socket file is removed on shutdown");
}

#[test]
fn a_live_socket_is_refused() {
    let daemon = FakeDaemon::start();
    let error = Server::bind(&daemon.socket, Access::for_daemon(None).unwrap()).unwrap_err();
    assert!(matches!(error, ServerError::AlreadyRunning { .. }));
    assert!(
        error.to_string().starts_with(&format!(
            "another daemon is running on {}",
            daemon.socket.display()
        )),
        "{error}"
    );
    let mut client = Client::connect(&daemon.socket, TIMEOUT).unwrap();
    assert!(
        client.request(Request::Status).unwrap().ok,
        "the live daemon keeps serving"
    );
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limiter.sock");
    fs::write(&path, "precious").unwrap();
    let error = Server::bind(&path, Access::for_daemon(None).unwrap()).unwrap_err();
    assert!(matches!(error, ServerError::NotASocket { .. }), "{error}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn the_directory_and_socket_get_their_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/glance-limiter/limiter.sock");
    let server = Server::bind(&path, Access::for_daemon(None).unwrap()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(path.parent().unwrap()), 0o755);
    assert_eq!(mode(&path), 0o600);
    drop(server);

    // With a group: group read/write, and the group owns the file. Our own primary group is
    // one we may chown to without root.
    let gid = unsafe { libc::getgid() };
    let group = Access {
        owner_uid: unsafe { libc::geteuid() },
        group: Some(SocketGroup {
            name: "ours".into(),
            gid,
        }),
    };
    fs::remove_file(&path).unwrap();
    let _server = Server::bind(&path, group).unwrap();
    assert_eq!(mode(&path), 0o660);
    assert_eq!(fs::metadata(&path).unwrap().gid(), gid);
}

fn canned_handler(request: Request) -> ResponseLine {
    canned(&request)
}

/// Whose credentials a test's client connects with.
#[derive(Clone, Copy)]
enum Peer {
    /// This process's.
    Myself,
    /// Another user's, taken by the connecting thread (root only).
    User { uid: u32, gid: u32 },
}

const NOBODY: u32 = 65534;

/// Access that does not let `Peer` in. Root is always allowed, so as root the stranger is
/// `nobody`, connecting from a thread of its own; as anyone else, the daemon's owner is
/// another uid.
fn stranger() -> (Access, Peer) {
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        (
            Access {
                owner_uid: 0,
                group: None,
            },
            Peer::User {
                uid: NOBODY,
                gid: NOBODY,
            },
        )
    } else {
        (
            Access {
                owner_uid: uid + 1,
                group: None,
            },
            Peer::Myself,
        )
    }
}

/// Runs `connect` with `peer`'s credentials, which the daemon reads from the connection
/// (`SO_PEERCRED`, taken at connect time).
fn as_peer<T: Send>(peer: Peer, connect: impl FnOnce() -> T + Send) -> T {
    let Peer::User { uid, gid } = peer else {
        return connect();
    };
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // Linux keeps credentials per thread and the raw system calls change only the
                // caller's (libc's wrappers would change every thread's, the test's too). The
                // thread cannot return to root; it ends with the closure.
                // SAFETY: plain system calls on this thread's own credentials.
                unsafe {
                    assert_eq!(
                        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                        0
                    );
                    assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                    assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
                }
                connect()
            })
            .join()
            .unwrap()
    })
}

/// Lets another user reach the daemon's socket (the temporary directory is private), so
/// that what stops a stranger is the daemon's credential check, not the file's mode.
fn open_to_others(daemon: &FakeDaemon, peer: Peer) {
    if let Peer::User { .. } = peer {
        let run_dir = daemon.socket.parent().unwrap();
        fs::set_permissions(run_dir.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&daemon.socket, fs::Permissions::from_mode(0o666)).unwrap();
    }
}

#[test]
fn peers_that_are_not_allowed_get_forbidden_and_are_closed() {
    let (access, peer) = stranger();
    let daemon = FakeDaemon::with_access(access, Limits::default(), canned);
    open_to_others(&daemon, peer);
    let mut raw = as_peer(peer, || Raw::connect(&daemon.socket));
    let error = raw.response().error.unwrap();
    assert_eq!(error.kind, ErrorKind::Forbidden);
    assert!(error.message.contains("run as root"), "{}", error.message);
    assert!(raw.is_closed());

    // The client reports the daemon's answer even though the daemon closed first.
    let response = as_peer(peer, || {
        let mut client = Client::connect(&daemon.socket, TIMEOUT).unwrap();
        thread::sleep(Duration::from_millis(50));
        client.request(Request::List).unwrap()
    });
    assert_eq!(response.error.unwrap().kind, ErrorKind::Forbidden);
    assert!(daemon.requests().is_empty());
}

#[test]
fn members_of_the_socket_group_are_allowed() {
    let (mut access, peer) = stranger();
    let gid = match peer {
        Peer::User { gid, .. } => gid,
        Peer::Myself => unsafe { libc::getegid() },
    };
    access.group = Some(SocketGroup {
        name: "ours".into(),
        gid,
    });
    let daemon = FakeDaemon::with_access(access, Limits::default(), canned);
    open_to_others(&daemon, peer);
    let response = as_peer(peer, || {
        let mut client = Client::connect(&daemon.socket, TIMEOUT).unwrap();
        client.request(Request::Status).unwrap()
    });
    assert!(response.ok);
}

#[test]
fn concurrent_clients_are_served_independently() {
    let daemon = FakeDaemon::with(|request| {
        thread::sleep(Duration::from_millis(5));
        canned(request)
    });
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let socket = daemon.socket.clone();
            thread::spawn(move || {
                let mut client = Client::connect(&socket, TIMEOUT).unwrap();
                for request in every_request() {
                    assert_eq!(client.request(request.clone()).unwrap(), canned(&request));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(daemon.requests().len(), 16 * every_request().len());
}

const SLOW_REQUEST: Duration = Duration::from_secs(4);

#[test]
fn a_slow_request_or_a_stalled_client_blocks_nobody_else() {
    let daemon = FakeDaemon::with(|request| {
        if matches!(request, Request::List) {
            thread::sleep(SLOW_REQUEST);
        }
        canned(request)
    });
    // A client that sends half a line and stalls, and one whose request is slow.
    let mut stalled = Raw::connect(&daemon.socket);
    stalled.send(b"{\"version\":1,");
    let socket = daemon.socket.clone();
    let slow = thread::spawn(move || {
        let mut client = Client::connect(&socket, TIMEOUT).unwrap();
        client.request(Request::List).unwrap()
    });
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut client = Client::connect(&daemon.socket, TIMEOUT).unwrap();
    assert!(client.request(Request::Status).unwrap().ok);
    // Answered before the slow request could have ended: it did not wait for it. The margin
    // is for a machine whose CPUs other work keeps busy.
    assert!(
        started.elapsed() < SLOW_REQUEST - Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(slow.join().unwrap().ok);
}

#[test]
fn idle_connections_time_out() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let daemon = FakeDaemon::with_access(Access::for_daemon(None).unwrap(), limits, canned);
    let mut raw = Raw::connect(&daemon.socket);
    raw.send(b"{\"version\":1,\"op\":\"status\"}\n");
    assert!(raw.response().ok);
    let started = Instant::now();
    assert!(raw.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn connections_beyond_the_limit_are_told_to_retry() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let daemon = FakeDaemon::with_access(Access::for_daemon(None).unwrap(), limits, canned);
    let mut first = Client::connect(&daemon.socket, TIMEOUT).unwrap();
    assert!(first.request(Request::Status).unwrap().ok);
    let mut second = Raw::connect(&daemon.socket);
    let error = second.response().error.unwrap();
    assert_eq!(error.kind, ErrorKind::Operational);
    assert!(
        error.message.contains("retry in a moment"),
        "{}",
        error.message
    );
    drop(first);
    // The slot frees when the first connection closes.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut third = Raw::connect(&daemon.socket);
        third.send(b"{\"version\":1,\"op\":\"status\"}\n");
        if third.response().ok {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never released");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_handler_is_an_operational_error_not_a_dead_server() {
    let daemon = FakeDaemon::with(|request| {
        if matches!(request, Request::List) {
            panic!("engine bug");
        }
        canned(request)
    });
    let mut client = Client::connect(&daemon.socket, TIMEOUT).unwrap();
    let response = client.request(Request::List).unwrap();
    assert_eq!(response.error.unwrap().kind, ErrorKind::Operational);
    assert!(client.request(Request::Status).unwrap().ok);
}

#[test]
fn client_errors_say_what_to_do() {
    let mut daemon = FakeDaemon::start();
    let socket = daemon.socket.clone();
    daemon.stop();
    let error = Client::connect(&socket, TIMEOUT).unwrap_err();
    assert!(matches!(error, ClientError::NoDaemon { .. }), "{error:?}");

    // A stale socket file: refused, which is also "no daemon".
    drop(UnixListener::bind(&socket).unwrap());
    let error = Client::connect(&socket, TIMEOUT).unwrap_err();
    assert!(
        error.to_string().contains("start it with `limiter run`"),
        "{error}"
    );

    // Something that accepts and never answers.
    fs::remove_file(&socket).unwrap();
    let _listener = UnixListener::bind(&socket).unwrap();
    let mut client = Client::connect(&socket, Duration::from_millis(200)).unwrap();
    let error = client.request(Request::Status).unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(
        error.to_string().contains("did not answer within 200ms"),
        "{error}"
    );
}
