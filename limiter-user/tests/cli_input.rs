//! The `limiter` binary against a stand-in daemon that records what it receives: bad input
//! exits 2 with a helpful message and sends nothing; good input sends exactly the expected
//! request; results and failures have their documented exit codes and output.

mod common;

use std::{
    fs,
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::Path,
    process::{Command, Output, Stdio},
};

use common::{canned, FakeDaemon};
use limiter_user::{
    control::{
        access::{Access, SocketGroup},
        protocol::{ErrorKind, ProxyRates, ProxyTotals, ProxyView, Reply, Request, ResponseLine},
        server::Limits,
    },
    proxy::TrustedProxies,
    rules::Scope,
};

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn limiter_command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_limiter"));
    command
        .args(args)
        .env("LIMITER_SOCKET", socket)
        .env_remove("LIMITER_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn finish(mut command: Command, stdin: &str) -> Ran {
    let mut child = command.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.as_bytes().to_vec();
    // Written from a thread: a command that fails early may never read it all.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Ran {
        code: status.code().expect("exited, not killed"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn limiter(socket: &Path, args: &[&str], stdin: &str) -> Ran {
    finish(limiter_command(socket, args), stdin)
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().unwrap()
}

#[test]
fn bad_input_exits_2_says_why_and_sends_nothing() {
    let daemon = FakeDaemon::start();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["block", "198.51.100.7/24"], "", "has host bits set; write 198.51.100.0/24 for the network, or 198.51.100.7 for the single address"),
        (&["block", "198.51.100.0/33"], "", "prefix length must be a number from 0 to 32 for IPv4, not `33`"),
        (&["allow", "2001:db8::/129"], "", "from 0 to 128 for IPv6"),
        (&["unblock", "glance.example.com"], "", "is not an IP address or prefix; write an address (198.51.100.7"),
        (&["unallow", "::ffff:10.1.2.3"], "", "write it as 10.1.2.3"),
        (&["block", "198.51.100.7", "--ttl", "30x"], "", "`30x` is not a duration; write it like 90s, 30m, 12h, 7d or 1h30m"),
        (&["block", "198.51.100.7", "--ttl", "0s"], "", "a TTL of 0 would expire at once"),
        (&["allow", "198.51.100.7", "--ttl", "30"], "", "`30` has no unit"),
        (&["unblock", "198.51.100.7", "--ttl", "5m"], "", "unexpected argument '--ttl'"),
        (&["allow", "198.51.100.7", "--all-ports"], "", "unexpected argument '--all-ports'"),
        (&["allow", "198.51.100.7", "--force"], "", "unexpected argument '--force'"),
        (&["unblock", "198.51.100.7", "--force"], "", "unexpected argument '--force'"),
        (&["block"], "", "required arguments were not provided"),
        (&["block", "-", "-"], "198.51.100.7\n", "is given more than once"),
        (&["list", "--bogus"], "", "unexpected argument '--bogus'"),
        (&["stats", "--top", "0"], "", "give a whole number of at least 1"),
        (&["status", "extra"], "", "unexpected argument 'extra'"),
        (&["list", "--timeout", "0s"], "", "a timeout of 0 cannot be met"),
        (&["frobnicate"], "", "unrecognized subcommand 'frobnicate'"),
        (&["run", "--mode", "enforcing"], "", "use \"enforce\""),
        (&["run", "--port", "0"], "", "invalid value '0' for '--port <P>'"),
        (&["run", "--poll-interval", "soon"], "", "is not a duration"),
        (&["detach", "--socket", "/tmp/x.sock"], "", "--socket is for the commands that talk to the daemon"),
    ];
    for (args, stdin, expected) in cases {
        let ran = limiter(&daemon.socket, args, stdin);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(expected), "{args:?}: {}", ran.stderr);
        assert!(ran.stdout.is_empty(), "{args:?}: {}", ran.stdout);
    }
    assert_eq!(daemon.requests(), [], "nothing reached the daemon");
}

#[test]
fn every_bad_stdin_line_is_listed_and_nothing_is_sent() {
    let daemon = FakeDaemon::start();
    let stdin = "# nightly list\n198.51.100.7\n198.51.100.7/24\n\n  203.0.113.0/24  \n10.0.0.300\n2001:db8::/48 # fine\n10.0.0.0/8/8\n";
    let ran = limiter(
        &daemon.socket,
        &["block", "192.0.2.1", "-", "--ttl", "1h"],
        stdin,
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    let expected = "error: 3 of 7 addresses are invalid, so nothing was sent; fix them and run \
                    the command again:\n  stdin line 3: `198.51.100.7/24` has host bits set";
    assert!(ran.stderr.starts_with(expected), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("\n  stdin line 6: `10.0.0.300` is not an IP address"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("\n  stdin line 8: `10.0.0.0/8/8`: the prefix length"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.lines().count(), 4, "{}", ran.stderr);
    assert_eq!(daemon.requests(), []);
}

#[test]
fn good_input_sends_exactly_the_request() {
    let daemon = FakeDaemon::start();
    let cases: Vec<(Vec<&str>, &str, Request)> = vec![
        (
            vec![
                "block",
                "198.51.100.7",
                "2001:db8::/48",
                "--ttl",
                "30m",
                "--reason",
                "image flood",
                "--all-ports",
            ],
            "",
            Request::Block {
                prefixes: vec![net("198.51.100.7/32"), net("2001:db8::/48")],
                ttl_secs: Some(1800),
                reason: Some("image flood".into()),
                scope: Scope::AllPorts,
                force: false,
            },
        ),
        (
            vec!["block", "203.0.113.0/24"],
            "",
            Request::Block {
                prefixes: vec![net("203.0.113.0/24")],
                ttl_secs: None,
                reason: None,
                scope: Scope::ProtectedPorts,
                force: false,
            },
        ),
        (
            vec!["block", "198.51.100.0/24", "--force"],
            "",
            Request::Block {
                prefixes: vec![net("198.51.100.0/24")],
                ttl_secs: None,
                reason: None,
                scope: Scope::ProtectedPorts,
                force: true,
            },
        ),
        (
            vec!["unblock", "-", "198.51.100.7"],
            "203.0.113.0/24\n",
            Request::Unblock {
                prefixes: vec![net("203.0.113.0/24"), net("198.51.100.7/32")],
            },
        ),
        (
            vec![
                "allow",
                "192.0.2.0/24",
                "--ttl",
                "1h30m",
                "--reason",
                "monitoring",
            ],
            "",
            Request::Allow {
                prefixes: vec![net("192.0.2.0/24")],
                ttl_secs: Some(5400),
                reason: Some("monitoring".into()),
            },
        ),
        (
            vec!["unallow", "2001:db8::7"],
            "",
            Request::Unallow {
                prefixes: vec![net("2001:db8::7/128")],
            },
        ),
        (vec!["list"], "", Request::List),
        (
            vec!["stats"],
            "",
            Request::Stats {
                top: Some(20),
                sort: None,
                filter: None,
            },
        ),
        (
            vec!["stats", "--top", "5", "--json"],
            "",
            Request::Stats {
                top: Some(5),
                sort: None,
                filter: None,
            },
        ),
        (vec!["status"], "", Request::Status),
        (vec!["cluster", "status"], "", Request::ClusterStatus),
    ];
    for (args, stdin, _) in &cases {
        let ran = limiter(&daemon.socket, args, stdin);
        assert_eq!(ran.code, 0, "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.is_empty(), "{args:?}: {}", ran.stderr);
    }
    let expected: Vec<Request> = cases.into_iter().map(|(_, _, request)| request).collect();
    assert_eq!(daemon.requests(), expected);
}

/// The daemon refuses a block that would cut off a trusted proxy (here a stand-in that refuses
/// as the daemon does); the CLI exits 2 with its message, and `--force` sends the override.
#[test]
fn a_block_of_a_trusted_proxy_is_refused_unless_forced() {
    let trusted = TrustedProxies::new([net("198.51.100.2/32"), net("2001:db8::/64")]);
    let daemon = FakeDaemon::with(move |request| match request {
        Request::Block {
            prefixes,
            force: false,
            ..
        } => match trusted.check_block(prefixes) {
            Ok(()) => canned(request),
            Err(refused) => ResponseLine::error(ErrorKind::BadInput, refused.to_string()),
        },
        other => canned(other),
    });
    let ran = limiter(&daemon.socket, &["block", "198.51.100.0/24"], "");
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        "error: 198.51.100.0/24 covers trusted proxy 198.51.100.2 (trusted_proxies[0] in the \
         daemon's configuration): blocking it would cut off every client behind that proxy, so \
         nothing was changed. If that is really intended, repeat the block with --force\n"
    );
    assert!(ran.stdout.is_empty());

    // A batch from stdin is refused whole, every overlap listed.
    let ran = limiter(
        &daemon.socket,
        &["block", "-", "--ttl", "1h"],
        "203.0.113.7\n198.51.100.2\n2001:db8::/48\n",
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with(
            "error: 2 of the prefixes to block overlap trusted proxies: blocking them would cut \
             off every client behind those proxies, so nothing was changed:\n  198.51.100.2/32 \
             covers trusted proxy 198.51.100.2"
        ),
        "{}",
        ran.stderr
    );
    assert!(ran.stdout.is_empty());

    let ran = limiter(
        &daemon.socket,
        &["block", "198.51.100.0/24", "--force", "--json"],
        "",
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("\"198.51.100.0/24\""), "{}", ran.stdout);

    let forced: Vec<bool> = daemon
        .requests()
        .iter()
        .map(|request| match request {
            Request::Block { force, .. } => *force,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(forced, [false, false, true]);
}

#[test]
fn ten_thousand_addresses_from_stdin_go_in_one_request() {
    let daemon = FakeDaemon::start();
    let addresses: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect();
    let stdin = addresses.join("\n");
    let ran = limiter(
        &daemon.socket,
        &["block", "-", "--ttl", "12h", "--json"],
        &stdin,
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let requests = daemon.requests();
    assert_eq!(requests.len(), 1);
    let Request::Block {
        prefixes, ttl_secs, ..
    } = &requests[0]
    else {
        panic!("{:?}", requests[0])
    };
    assert_eq!(prefixes.len(), 10_000);
    assert_eq!(prefixes[9_999], net("10.0.39.15/32"));
    assert_eq!(*ttl_secs, Some(12 * 3600));
}

#[test]
fn a_list_over_the_request_limit_is_refused_before_sending() {
    let daemon = FakeDaemon::start();
    let addresses: Vec<String> = (0..150_000u32)
        .map(|i| {
            format!(
                "2001:db8:1234:5678:9abc:def0:{:x}:{:x}",
                i >> 16,
                i & 0xffff
            )
        })
        .collect();
    let ran = limiter(&daemon.socket, &["unblock", "-"], &addresses.join("\n"));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("over the daemon's limit of 4194304"),
        "{}",
        ran.stderr
    );
    assert!(ran
        .stderr
        .contains("split the addresses into several smaller batches"));
    assert_eq!(daemon.requests(), []);
}

#[test]
fn an_empty_list_on_stdin_is_nothing_to_do() {
    let daemon = FakeDaemon::start();
    let ran = limiter(&daemon.socket, &["unblock", "-"], "# nothing today\n\n");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, "no rules named; nothing changed\n");
    let ran = limiter(&daemon.socket, &["block", "-", "--json"], "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "{\"added\":[],\"updated\":[],\"unchanged\":[],\"removed\":[],\"absent\":[]}\n"
    );
    assert_eq!(daemon.requests(), []);
}

#[test]
fn json_output_is_the_protocols_result() {
    let daemon = FakeDaemon::start();
    for (args, request) in [
        (&["list", "--json"][..], Request::List),
        (
            &["stats", "--json", "--top", "3"],
            Request::Stats {
                top: Some(3),
                sort: None,
                filter: None,
            },
        ),
        (&["status", "--json"], Request::Status),
        (&["cluster", "status", "--json"], Request::ClusterStatus),
        (
            &["recommend", "--json"],
            Request::Recommend {
                percentile: Some(99.0),
                margin: Some(2.0),
            },
        ),
        (
            &["unblock", "--json", "198.51.100.7"],
            Request::Unblock {
                prefixes: vec![net("198.51.100.7/32")],
            },
        ),
    ] {
        let ran = limiter(&daemon.socket, args, "");
        assert_eq!(ran.code, 0, "{args:?}: {}", ran.stderr);
        let result = canned(&request).result.unwrap();
        assert_eq!(
            ran.stdout,
            format!("{}\n", serde_json::to_string(&result).unwrap())
        );
    }
}

#[test]
fn human_output_is_tables_and_summaries() {
    let daemon = FakeDaemon::start();
    let list = limiter(&daemon.socket, &["list"], "").stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("PREFIX           ACTION  SCOPE            ORIGIN  CREATED"),
        "{list}"
    );
    assert!(
        lines[1].starts_with(
            "198.51.100.7/32  block   protected ports  manual  2025-06-01T10:00:00Z  never"
        ),
        "{list}"
    );
    assert_eq!(lines[3], "2 rules");

    let block = limiter(&daemon.socket, &["block", "198.51.100.7"], "").stdout;
    assert!(block.ends_with("\n1 added\n"), "{block}");

    let stats = limiter(&daemon.socket, &["stats"], "").stdout;
    assert!(
        stats.starts_with("3 sources tracked, 1 shown (busiest first)\nADDRESS"),
        "{stats}"
    );
    assert!(stats.contains("198.51.100.7  banned"), "{stats}");

    let status = limiter(&daemon.socket, &["status"], "").stdout;
    assert!(
        status.starts_with("daemon      0.1.0, up 1m\nmode        enforce\n"),
        "{status}"
    );
}

/// A daemon behind a trusted proxy: a proxied source, the proxy's load, an unseen entry, and
/// a ban of the proxied source.
fn behind_a_proxy(request: &Request) -> ResponseLine {
    let proxy: std::net::IpAddr = "198.51.100.2".parse().unwrap();
    match canned(request).result {
        Some(Reply::Stats(mut stats)) => {
            stats.sources[0].via = Some(proxy);
            stats.proxies = vec![ProxyView {
                address: "198.51.100.2".parse().unwrap(),
                trusted_entry: Some("198.51.100.2/32".parse().unwrap()),
                blocked: false,
                rates: ProxyRates {
                    proxied_per_minute: 300,
                    unattributed_per_minute: 2,
                    ..ProxyRates::default()
                },
                totals: ProxyTotals {
                    proxied: 9120,
                    unattributed: 14,
                    ..ProxyTotals::default()
                },
            }];
            stats.unseen_proxies = vec!["2001:db8:10::/64".parse().unwrap()];
            ResponseLine::ok(Reply::Stats(stats))
        }
        Some(Reply::Rules(mut list)) => {
            list.via = [("198.51.100.7/32".parse().unwrap(), proxy)].into();
            ResponseLine::ok(Reply::Rules(list))
        }
        _ => canned(request),
    }
}

#[test]
fn behind_a_proxy_stats_and_list_name_it_in_tables_and_json() {
    let daemon = FakeDaemon::with(behind_a_proxy);
    let stats = limiter(&daemon.socket, &["stats"], "").stdout;
    let lines: Vec<&str> = stats.lines().collect();
    assert!(
        lines[1].starts_with("ADDRESS       VIA           STATE"),
        "{stats}"
    );
    assert!(
        lines[2].starts_with("198.51.100.7  198.51.100.2  banned"),
        "{stats}"
    );
    assert_eq!(
        lines[4..],
        [
            "Trusted proxies (what they relay is counted as the clients they name)",
            "PROXY         RELAYED/MIN  UNATTRIBUTED/MIN  RELAYED  UNATTRIBUTED  CONN/S  PACKETS/S  BYTES/S",
            "198.51.100.2          300                 2     9120            14     0.0          0      0 B",
            "not seen yet (trusted_proxies entries without traffic): 2001:db8:10::/64",
        ],
        "{stats}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&limiter(&daemon.socket, &["stats", "--json"], "").stdout).unwrap();
    assert_eq!(json["sources"][0]["via"], "198.51.100.2");
    assert_eq!(json["proxies"][0]["address"], "198.51.100.2");
    assert_eq!(json["proxies"][0]["trusted_entry"], "198.51.100.2/32");
    assert_eq!(json["proxies"][0]["rates"]["proxied_per_minute"], 300);
    assert_eq!(json["proxies"][0]["rates"]["unattributed_per_minute"], 2);
    assert_eq!(json["proxies"][0]["totals"]["proxied"], 9120);
    assert_eq!(json["proxies"][0]["totals"]["unattributed"], 14);
    assert_eq!(json["unseen_proxies"][0], "2001:db8:10::/64");

    let list = limiter(&daemon.socket, &["list"], "").stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("PREFIX           VIA           ACTION"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("198.51.100.7/32  198.51.100.2  block"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("192.0.2.0/24     -             allow"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&limiter(&daemon.socket, &["list", "--json"], "").stdout).unwrap();
    assert_eq!(json["via"]["198.51.100.7/32"], "198.51.100.2");

    // Without proxies the JSON has none of the new keys.
    let plain = FakeDaemon::start();
    let stats = limiter(&plain.socket, &["stats", "--json"], "").stdout;
    assert!(
        !stats.contains("via") && !stats.contains("proxies"),
        "{stats}"
    );
    let list = limiter(&plain.socket, &["list", "--json"], "").stdout;
    assert!(!list.contains("via"), "{list}");
}

/// What a daemon without `[cluster]` answers `cluster_status` (as the engine does).
pub fn standalone(request: &Request) -> ResponseLine {
    match request {
        Request::ClusterStatus => ResponseLine::error(
            ErrorKind::BadInput,
            "this daemon runs alone: its configuration has no [cluster] section",
        ),
        other => canned(other),
    }
}

#[test]
fn cluster_status_shows_the_nodes_or_says_the_daemon_runs_alone() {
    let daemon = FakeDaemon::start();
    let ran = limiter(&daemon.socket, &["cluster", "status"], "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(daemon.requests(), [Request::ClusterStatus]);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "node        glance-1 (glance)",
            "state       connected",
            "prefix      /glance-limiter/",
            "etcd        http://198.51.100.10:2379  healthy, etcd 3.5.17, leader",
        ],
        "{}",
        ran.stdout
    );
    assert_eq!(
        lines[lines.len() - 3..],
        [
            "NODE                  ROLE    PUBLISHED  LAG  SEQ  LISTED  TRACKED",
            "glance-1 (this node)  glance  400ms ago  0ms   60       2        3",
            "glance-2              glance  400ms ago  0ms   60       2        3",
        ],
        "{}",
        ran.stdout
    );

    // Without [cluster], the daemon's bad_input: exit 2 with its message, as for any other.
    let alone = FakeDaemon::with(standalone);
    for args in [&["cluster", "status"][..], &["cluster", "status", "--json"]] {
        let ran = limiter(&alone.socket, args, "");
        assert_eq!(ran.code, 2, "{args:?}");
        assert_eq!(
            ran.stderr,
            "error: this daemon runs alone: its configuration has no [cluster] section\n"
        );
        assert!(ran.stdout.is_empty());
    }

    // `status` carries the cluster's line, `list` the node of each rule.
    let in_cluster = FakeDaemon::with(|request| match canned(request).result {
        Some(Reply::Status(mut status)) => {
            status.cluster = Some(limiter_user::cluster::status::ClusterHealth {
                node: "glance-1".into(),
                role: limiter_user::cluster::Role::Glance,
                state: limiter_user::cluster::status::ClusterState::Degraded,
                degraded_since: Some("2025-06-01T10:00:00Z".into()),
                nodes_seen: 1,
                image_creates_per_minute: 0,
                new_connections_per_second: 0.0,
            });
            ResponseLine::ok(Reply::Status(status))
        }
        Some(Reply::Rules(mut list)) => {
            list.rules[0].node = Some("glance-2".into());
            ResponseLine::ok(Reply::Rules(list))
        }
        _ => canned(request),
    });
    let status = limiter(&in_cluster.socket, &["status"], "").stdout;
    assert!(
        status.contains("\ncluster     glance-1 (glance), DEGRADED since 2025-06-01T10:00:00Z ("),
        "{status}"
    );
    let list = limiter(&in_cluster.socket, &["list"], "").stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("PREFIX           ACTION  SCOPE            ORIGIN  NODE      CREATED"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("198.51.100.7/32  block   protected ports  manual  glance-2  2025"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("192.0.2.0/24     allow   protected ports  manual  -         2025"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&limiter(&in_cluster.socket, &["list", "--json"], "").stdout).unwrap();
    assert_eq!(json["rules"][0]["node"], "glance-2");
    assert!(json["rules"][1].get("node").is_none(), "{json}");
}

#[test]
fn daemon_errors_map_to_exit_codes() {
    for (kind, code) in [
        (ErrorKind::BadInput, 2),
        (ErrorKind::Operational, 1),
        (ErrorKind::Forbidden, 1),
        (ErrorKind::UnsupportedVersion, 1),
    ] {
        let daemon =
            FakeDaemon::with(move |_| ResponseLine::error(kind, "the daemon's reason; what to do"));
        let ran = limiter(&daemon.socket, &["block", "198.51.100.7"], "");
        assert_eq!(ran.code, code, "{kind:?}");
        assert_eq!(ran.stderr, "error: the daemon's reason; what to do\n");
        assert!(ran.stdout.is_empty());
    }
}

#[test]
fn no_daemon_exits_1_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("limiter.sock");
    let ran = limiter(&socket, &["status"], "");
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.stderr,
        format!(
            "error: no daemon is listening on {}: start it with `limiter run` (or systemctl \
             start glance-limiter); if it uses another socket, point --socket or LIMITER_SOCKET \
             at it\n",
            socket.display()
        )
    );
    // The flag wins over the environment.
    let daemon = FakeDaemon::start();
    let socket_flag = daemon.socket.to_str().unwrap();
    let ran = limiter(&socket, &["status", "--socket", socket_flag], "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[test]
fn help_and_version_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["--version"],
        &["block", "--help"],
        &["help", "run"],
    ] {
        let ran = limiter(dir.path(), args, "");
        assert_eq!(ran.code, 0, "{args:?}: {}", ran.stderr);
        assert!(!ran.stdout.is_empty());
    }
    assert_eq!(
        limiter(dir.path(), &[], "").code,
        2,
        "no command is a usage error"
    );
}

#[test]
fn check_config_reports_ok_problems_or_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("unused.sock");
    let good = dir.path().join("good.toml");
    fs::write(&good, "mode = \"monitor\"\n[policy]\nban_ttl = \"5m\"\n").unwrap();
    let ran = limiter(&socket, &["check-config", good.to_str().unwrap()], "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.starts_with(&format!("ok: {}\n", good.display())),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("mode = \"monitor\""), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("ports = [9292]"),
        "defaults shown: {}",
        ran.stdout
    );

    // Behind a proxy: the summary shows whom the daemon trusts and what it reads.
    let proxied = dir.path().join("proxied.toml");
    fs::write(
        &proxied,
        "trusted_proxies = [\"198.51.100.2\", \"2001:db8::/64\"]\n\
         client_address_header = \"forwarded\"\n\
         glance_path_prefixes = [\"/image\"]\n",
    )
    .unwrap();
    let ran = limiter(&socket, &["check-config", proxied.to_str().unwrap()], "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for line in [
        "\ntrusted_proxies = [\"198.51.100.2\", \"2001:db8::/64\"]\n",
        "\nclient_address_header = \"Forwarded\"\n",
        "\nglance_path_prefixes = [\"/image\"]\n",
    ] {
        assert!(ran.stdout.contains(line), "{line}: {}", ran.stdout);
    }
    let ran = limiter(&socket, &["check-config", good.to_str().unwrap()], "");
    assert!(
        ran.stdout.contains("\ntrusted_proxies = []\n")
            && ran
                .stdout
                .contains("\nclient_address_header = \"X-Forwarded-For\"\n"),
        "defaults shown: {}",
        ran.stdout
    );

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "ports = [0]\npoll_interval = \"10ms\"\n").unwrap();
    let ran = limiter(&socket, &["check-config", bad.to_str().unwrap()], "");
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("line 1, `ports[0]`"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("line 2, `poll_interval`"),
        "{}",
        ran.stderr
    );
    let bad_proxies = dir.path().join("bad_proxies.toml");
    fs::write(&bad_proxies, "\ntrusted_proxies = [\"0.0.0.0/0\"]\n").unwrap();
    let ran = limiter(
        &socket,
        &["check-config", bad_proxies.to_str().unwrap()],
        "",
    );
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .contains("line 2, `trusted_proxies[0]`: 0.0.0.0/0 is too wide to trust"),
        "{}",
        ran.stderr
    );

    let ran = limiter(&socket, &["check-config", "/nonexistent/limiter.toml"], "");
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("cannot read the configuration file"),
        "{}",
        ran.stderr
    );

    let unknown_group = dir.path().join("group.toml");
    fs::write(
        &unknown_group,
        "socket_group = \"no-such-group-glance-limiter\"\n",
    )
    .unwrap();
    let ran = limiter(
        &socket,
        &["check-config", unknown_group.to_str().unwrap()],
        "",
    );
    assert_eq!(ran.code, 0, "valid on another host: {}", ran.stderr);
    assert!(ran.stderr.starts_with("warning: "), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("does not exist on this host"),
        "{}",
        ran.stderr
    );
}

#[test]
fn run_refuses_a_bad_configuration_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("unused.sock");
    let config = dir.path().join("limiter.toml");
    fs::write(&config, "ports = [0]\n").unwrap();
    let ran = limiter(&socket, &["run", "--config", config.to_str().unwrap()], "");
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("0 is not a TCP port"), "{}", ran.stderr);

    let ran = limiter(&socket, &["run", "--socket", "/tmp/x.sock"], "");
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .contains("listens on `socket` from its configuration"),
        "{}",
        ran.stderr
    );
}

#[test]
fn detach_says_what_it_removed_and_is_harmless_twice() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins");
    fs::create_dir(&pins).unwrap();
    fs::write(pins.join("link-eth0"), "").unwrap();
    fs::write(pins.join("SOURCES"), "").unwrap();
    let args = ["detach", "--pin-dir", pins.to_str().unwrap()];
    let ran = limiter(dir.path(), &args, "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        format!(
            "detached from eth0\nremoved map SOURCES\nremoved {}\n",
            pins.display()
        )
    );
    let ran = limiter(dir.path(), &args, "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.starts_with("nothing is pinned under"),
        "{}",
        ran.stdout
    );
}

/// As root, other users are shown by running the binary as `nobody`: the socket file's mode
/// stops them first; with the file opened up, the daemon's credential check answers
/// `forbidden`; a member of the socket group gets through.
#[test]
fn other_users_need_the_socket_group() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another user (control_socket covers it)");
        return;
    }
    const NOBODY: u32 = 65534;
    let as_nobody = |socket: &Path, groups: &[u32]| {
        let mut command = limiter_command(socket, &["status"]);
        let groups: Vec<libc::gid_t> = groups.to_vec();
        // SAFETY: only async-signal-safe calls between fork and exec. Done here rather than
        // with Command::uid/gid because std's supplementary-group setter is unstable.
        unsafe {
            command.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        finish(command, "")
    };
    let root_only =
        FakeDaemon::with_access(Access::for_daemon(None).unwrap(), Limits::default(), canned);
    fs::set_permissions(
        root_only.socket.parent().unwrap().parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let ran = as_nobody(&root_only.socket, &[]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr
            .contains("run as root or as a member of the socket group"),
        "{}",
        ran.stderr
    );

    fs::set_permissions(&root_only.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let ran = as_nobody(&root_only.socket, &[]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains(
            "permission denied for uid 65534: run as root (no socket_group is configured)"
        ),
        "{}",
        ran.stderr
    );
    assert_eq!(root_only.requests(), []);

    let group = Access {
        owner_uid: 0,
        group: Some(SocketGroup {
            name: "operators".into(),
            gid: 4242,
        }),
    };
    let grouped = FakeDaemon::with_access(group, Limits::default(), canned);
    fs::set_permissions(
        grouped.socket.parent().unwrap().parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let ran = as_nobody(&grouped.socket, &[NOBODY]);
    assert_eq!(ran.code, 1, "not a member: {}", ran.stderr);
    let ran = as_nobody(&grouped.socket, &[NOBODY, 4242]);
    assert_eq!(ran.code, 0, "a supplementary member: {}", ran.stderr);
    assert_eq!(grouped.requests(), [Request::Status]);
}

#[test]
fn recommend_shows_the_proposal_and_whom_it_would_ban() {
    let daemon = FakeDaemon::start();
    let ran = limiter(&daemon.socket, &["recommend"], "");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let text = ran.stdout;
    assert!(
        text.starts_with(
            "From 4 sources seen since 2025-06-01T10:00:00Z (1 offenders left out): the 99th \
             percentile of the others' peaks, times 2.\nMETRIC"
        ),
        "{text}"
    );
    assert!(
        text.contains("image_creates_per_minute         60        18"),
        "{text}"
    );
    assert!(
        text.contains(
            "Would have been banned under the proposed thresholds: 1\n  198.51.100.7  \
             image_creates_per_minute peak 80 >= 18 at 2025-06-01T10:01:00Z  (offender)"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("To use them, in [policy]:\n  image_creates_per_minute = 18\n  image_creates_per_hour = 18\n"),
        "{text}"
    );

    let ran = limiter(&daemon.socket, &["recommend", "--margin", "0.5"], "");
    assert_eq!(ran.code, 2, "{}", ran.stdout);
    assert!(
        ran.stderr.contains("--margin must be at least 1"),
        "{}",
        ran.stderr
    );
}
