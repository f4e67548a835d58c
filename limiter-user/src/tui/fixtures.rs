//! Fixed, deterministic states for snapshot tests and benchmarks: a fixed clock, an attack
//! that ramps up and gets banned, rules of every kind, and histories built by feeding
//! successive snapshots through the real `update` path (so the fixtures cannot drift from
//! what the TUI does with real data).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use super::{
    app::App,
    settings::Thresholds,
    snapshot::{Feed, Snapshot, SourceRow},
    theme::Theme,
    update::{update, Action},
};
use ipnet::IpNet;

use crate::{
    cluster::{
        status::{ClusterHealth, ClusterState},
        Role,
    },
    control::protocol::{
        InterfaceView, ProxyRates, ProxyTotals, ProxyView, RatesView, RuleCounts, SourceState,
        Status, Totals,
    },
    rules::{Action as RuleAction, Scope},
    store::{Origin, StoredRule},
};

/// 2025-06-01T10:00:00Z: the fixtures' clock starts here.
pub const EPOCH_SECS: u64 = 1_748_772_000;

pub fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS + secs)
}

fn rates(conn: f64, creates: u64, writes: u64, reads: f64) -> RatesView {
    let packets = conn * 3.0 + creates as f64 / 6.0 + reads * 4.0 + writes as f64 / 10.0;
    RatesView {
        new_connections_per_second: conn,
        image_creates_per_minute: creates,
        image_creates_per_hour: creates * 3,
        other_writes_per_minute: writes,
        records_created_per_hour: 0,
        reads_per_second: reads,
        packets_per_second: packets,
        bytes_per_second: packets * 900.0,
    }
}

fn row(address: &str, state: SourceState, rates: RatesView) -> SourceRow {
    SourceRow {
        address: address.parse().expect("fixture address"),
        state,
        banned_until: None,
        rates,
        totals: Totals {
            syns: (rates.new_connections_per_second * 60.0) as u64,
            packets: (rates.packets_per_second * 120.0) as u64,
            bytes: (rates.bytes_per_second * 120.0) as u64,
            image_create: rates.image_creates_per_minute * 2,
            other_write: rates.other_writes_per_minute,
            read: (rates.reads_per_second * 60.0) as u64,
        },
        via: None,
        creates: None,
    }
}

fn rule(
    prefix: &str,
    action: RuleAction,
    origin: Origin,
    reason: &str,
    created: u64,
    ttl: Option<u64>,
) -> StoredRule {
    StoredRule {
        prefix: prefix.parse().expect("fixture prefix"),
        action,
        scope: Scope::ProtectedPorts,
        origin,
        reason: reason.into(),
        created: at(created),
        expires: ttl.map(|t| at(created + t)),
        node: None,
    }
}

fn status(step: u64, rules: &[StoredRule], tracked: usize) -> Status {
    let now = at(step);
    let count = |action, origin: Option<Origin>| {
        rules
            .iter()
            .filter(|r| r.action == action && r.is_active(now))
            .filter(|r| origin.is_none_or(|o| r.origin == o))
            .count()
    };
    let mut counters = BTreeMap::new();
    counters.insert("pass_protected".to_string(), 12_000 * step);
    counters.insert("drop_blocked".to_string(), 800 * step.saturating_sub(30));
    Status {
        daemon_version: "0.1.0".into(),
        mode: crate::config::Mode::Enforce,
        interfaces: vec![InterfaceView {
            name: "eth0".into(),
            attach_mode: crate::control::protocol::AttachedAs::Native,
            ..Default::default()
        }],
        ports: vec![9292],
        uptime_secs: 7200 + step,
        poll_interval_ms: 1000,
        last_poll_ms: 3.2,
        tracked_sources: tracked,
        rules: RuleCounts {
            block_auto: count(RuleAction::Block, Some(Origin::Auto)),
            block_manual: count(RuleAction::Block, Some(Origin::Manual)),
            allow: count(RuleAction::Allow, None),
        },
        counters,
        cluster: None,
        store_error: None,
    }
}

/// The attack at `step` seconds: 198.51.100.7 floods image creates and is banned at 30 s;
/// 203.0.113.9 ramps up new connections and is over the threshold from 50 s.
fn attack(step: u64) -> (Vec<SourceRow>, Vec<StoredRule>) {
    let mut rules = vec![
        rule(
            "2001:db8:0:1::/64",
            RuleAction::Allow,
            Origin::Manual,
            "image build farm",
            0,
            None,
        ),
        rule(
            "203.0.113.128/25",
            RuleAction::Block,
            Origin::Manual,
            "INC-4521 scanner",
            5,
            Some(3600),
        ),
    ];
    let ramp = step.min(30);
    let mut attacker = row(
        "198.51.100.7",
        if step >= 30 {
            SourceState::Banned
        } else if ramp * 12 >= 60 {
            SourceState::OverThreshold
        } else {
            SourceState::Ok
        },
        if step >= 30 {
            rates(0.0, 360_u64.saturating_sub((step - 30) * 6), 0, 0.0)
        } else {
            rates(ramp as f64 * 0.8, ramp * 12, 0, 0.2)
        },
    );
    if step >= 30 {
        let ban = rule(
            "198.51.100.7/32",
            RuleAction::Block,
            Origin::Auto,
            "198.51.100.7: image creates over the threshold (360 in the last minute, limit 60) \
             → banned for 10m",
            30,
            Some(600),
        );
        attacker.banned_until = ban.expires;
        rules.push(ban);
    }
    let scanner_conn = (step.saturating_sub(20) as f64 * 2.5).min(80.0);
    let scanner = row(
        "203.0.113.9",
        if scanner_conn >= 50.0 {
            SourceState::OverThreshold
        } else {
            SourceState::Ok
        },
        rates(scanner_conn, 0, 4, 1.0),
    );
    let wave = |base: f64| base + (step % 7) as f64 * 0.3;
    let rows = vec![
        attacker,
        scanner,
        row(
            "2001:db8::1234",
            SourceState::Ok,
            rates(wave(1.0), 20, 3, wave(10.2)),
        ),
        row(
            "2001:db8:0:1::42",
            SourceState::Allowed,
            rates(wave(4.0), 45, 12, 2.0),
        ),
        row(
            "198.51.100.23",
            SourceState::Ok,
            rates(0.2, 1, 0, wave(3.0)),
        ),
        row(
            "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe",
            SourceState::Ok,
            rates(0.1, 0, 1, 0.4),
        ),
        SourceRow {
            banned_until: Some(at(5 + 3600)),
            ..row("203.0.113.200", SourceState::Banned, rates(0.0, 0, 0, 0.0))
        },
    ];
    (rows, rules)
}

/// The same attack behind HAProxy: 198.51.100.2 relays the attacker and 198.51.100.23,
/// 2001:db8:51::2 relays 2001:db8::1234; the others come directly. 198.51.100.3 is trusted but
/// has sent nothing. From 40 s, a few requests through 198.51.100.2 have no readable client.
fn behind_proxies(step: u64, rows: &mut [SourceRow]) -> (Vec<ProxyView>, Vec<IpNet>) {
    let first: IpAddr = "198.51.100.2".parse().expect("fixture address");
    let second: IpAddr = "2001:db8:51::2".parse().expect("fixture address");
    let mut relayed = [0u64; 2];
    let mut packets = [0f64; 2];
    for row in rows.iter_mut() {
        let proxy = match row.address.to_string().as_str() {
            "198.51.100.7" | "198.51.100.23" => 0,
            "2001:db8::1234" => 1,
            _ => continue,
        };
        row.via = Some([first, second][proxy]);
        let r = &row.rates;
        relayed[proxy] += r.image_creates_per_minute
            + r.other_writes_per_minute
            + (r.reads_per_second * 60.0) as u64;
        packets[proxy] += r.packets_per_second;
    }
    let unattributed = if step >= 40 { 2 } else { 0 };
    let proxy = |i: usize, unattributed: u64| ProxyView {
        address: [first, second][i],
        trusted_entry: Some(IpNet::from([first, second][i])),
        blocked: false,
        rates: ProxyRates {
            new_connections_per_second: 2.0,
            packets_per_second: packets[i] + 6.0,
            bytes_per_second: (packets[i] + 6.0) * 950.0,
            proxied_per_minute: relayed[i],
            unattributed_per_minute: unattributed,
        },
        totals: ProxyTotals {
            syns: 120 + 2 * step,
            packets: 9_000 + 40 * step,
            bytes: 8_500_000 + 38_000 * step,
            proxied: 5_000 + relayed[i] * step / 60,
            unattributed: 10 + unattributed * step.saturating_sub(40) / 60,
        },
    };
    (
        vec![proxy(0, unattributed), proxy(1, 0)],
        vec!["198.51.100.3/32".parse().expect("fixture prefix")],
    )
}

fn feed(app: &mut App, step: u64, rows: Vec<SourceRow>, rules: Vec<StoredRule>, tracked: usize) {
    feed_with_proxies(app, step, rows, rules, tracked, (Vec::new(), Vec::new()));
}

fn feed_with_proxies(
    app: &mut App,
    step: u64,
    rows: Vec<SourceRow>,
    rules: Vec<StoredRule>,
    tracked: usize,
    proxies: (Vec<ProxyView>, Vec<IpNet>),
) {
    let snapshot = snapshot(step, rows, rules, tracked, proxies);
    update(app, Action::Tick(at(step)));
    update(app, Action::Feed(Feed::Snapshot(Box::new(snapshot))));
}

fn snapshot(
    step: u64,
    rows: Vec<SourceRow>,
    rules: Vec<StoredRule>,
    tracked: usize,
    (proxies, unseen_proxies): (Vec<ProxyView>, Vec<IpNet>),
) -> Snapshot {
    Snapshot {
        taken: at(step),
        elapsed: Duration::from_secs(step),
        status: status(step, &rules, tracked),
        tracked_sources: tracked,
        truncated: tracked - proxies.len() > rows.len(),
        matched: None,
        rows,
        rules,
        proxies,
        unseen_proxies,
    }
}

fn empty_app() -> App {
    App::new(at(0), Theme::COLOR, Thresholds::defaults(), "oncall".into())
}

/// 90 seconds of the attack, seen at 1 s refreshes, at `width`×`height`; the attacker is
/// selected. The clock stands at 2025-06-01T10:01:30Z.
pub fn attack_app(width: u16, height: u16) -> App {
    let mut app = empty_app();
    update(&mut app, Action::Resize(width, height));
    for step in 0..=90 {
        let (rows, rules) = attack(step);
        let tracked = rows.len();
        feed(&mut app, step, rows, rules, tracked);
    }
    select(&mut app, "198.51.100.7");
    app
}

/// [`attack_app`] with what became of the attacker's creates: Glance's answers and the
/// kernel budget's refusals.
pub fn attack_app_with_answers(width: u16, height: u16) -> App {
    let mut app = empty_app();
    update(&mut app, Action::Resize(width, height));
    for step in 0..=90 {
        let (mut rows, rules) = attack(step);
        for row in rows
            .iter_mut()
            .filter(|r| r.address.to_string() == "198.51.100.7")
        {
            row.creates = Some(crate::control::protocol::CreatesView {
                created: 58,
                failed: 2,
                over_budget: 1_204,
            });
        }
        let tracked = rows.len();
        feed(&mut app, step, rows, rules, tracked);
    }
    select(&mut app, "198.51.100.7");
    app
}

/// This node in a cluster of three that can reach etcd.
pub fn connected_cluster() -> ClusterHealth {
    ClusterHealth {
        node: "glance-1".into(),
        role: Role::Glance,
        state: ClusterState::Connected,
        degraded_since: None,
        nodes_seen: 3,
        image_creates_per_minute: 142,
        new_connections_per_second: 12.5,
    }
}

/// This node cut off from etcd since 2025-06-01T09:49:00Z (12m 30s before the clock stops).
pub fn degraded_cluster() -> ClusterHealth {
    ClusterHealth {
        state: ClusterState::Degraded,
        degraded_since: Some("2025-06-01T09:49:00Z".into()),
        nodes_seen: 1,
        image_creates_per_minute: 40,
        new_connections_per_second: 3.0,
        ..connected_cluster()
    }
}

/// [`attack_app`] on a node in a cluster whose daemon reports `cluster` in its status.
pub fn attack_app_in_cluster(width: u16, height: u16, cluster: ClusterHealth) -> App {
    let mut app = empty_app();
    update(&mut app, Action::Resize(width, height));
    for step in 0..=90 {
        let (rows, rules) = attack(step);
        let tracked = rows.len();
        let mut snapshot = snapshot(step, rows, rules, tracked, (Vec::new(), Vec::new()));
        snapshot.status.cluster = Some(cluster.clone());
        update(&mut app, Action::Tick(at(step)));
        update(&mut app, Action::Feed(Feed::Snapshot(Box::new(snapshot))));
    }
    select(&mut app, "198.51.100.7");
    app
}

/// [`attack_app`] behind trusted proxies: the attacker and two others came through one of
/// two proxies, whose load is shown; a third trusted address has not been seen.
pub fn attack_app_behind_proxies(width: u16, height: u16) -> App {
    let mut app = empty_app();
    update(&mut app, Action::Resize(width, height));
    for step in 0..=90 {
        let (mut rows, rules) = attack(step);
        let proxies = behind_proxies(step, &mut rows);
        let tracked = rows.len() + proxies.0.len();
        feed_with_proxies(&mut app, step, rows, rules, tracked, proxies);
    }
    select(&mut app, "198.51.100.7");
    app
}

/// Moves the selection to `address` as the keys would.
pub fn select(app: &mut App, address: &str) {
    let address: IpAddr = address.parse().expect("fixture address");
    let rows = app.rows();
    if let Some(target) = app
        .order
        .iter()
        .position(|&i| rows[i as usize].address == address)
    {
        let delta = target as isize - app.selected as isize;
        update(app, Action::MoveSelection(delta));
    }
}

/// `sources` synthetic sources (IPv4 and IPv6, a few over threshold or banned), fed twice so
/// rates, events and histories are warm: the state a frame benchmark draws.
pub fn crowded_app(sources: usize, width: u16, height: u16) -> App {
    let mut app = empty_app();
    update(&mut app, Action::Resize(width, height));
    for step in 0..2 {
        let (rows, rules) = crowd(sources, step);
        feed(&mut app, step, rows, rules, sources);
    }
    app
}

/// The rows of [`crowded_app`], in the daemon's order (busiest first), and their bans (at
/// most 1000). Addresses are documentation ones: 198.51.100.0/24 and 203.0.113.0/24 for the
/// first 512, 2001:db8::/32 for the rest.
pub fn crowd(sources: usize, step: u64) -> (Vec<SourceRow>, Vec<StoredRule>) {
    let mut rows = Vec::with_capacity(sources);
    let mut rules = Vec::new();
    for n in 0..sources {
        let address: IpAddr = match n {
            0..256 => IpAddr::from([198, 51, 100, n as u8]),
            256..512 => IpAddr::from([203, 0, 113, (n - 256) as u8]),
            _ => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                (n >> 16) as u16,
                n as u16,
            )),
        };
        let busy = sources.saturating_sub(n) as f64 / sources.max(1) as f64;
        let state = match n % 100 {
            0 => SourceState::Banned,
            1 => SourceState::OverThreshold,
            _ => SourceState::Ok,
        };
        let mut source = row(
            "198.51.100.1",
            state,
            rates(
                busy * 60.0,
                (busy * 100.0) as u64,
                (n % 7) as u64,
                busy * 20.0 + step as f64,
            ),
        );
        source.address = address;
        if state == SourceState::Banned && rules.len() < 1000 {
            let ban = StoredRule {
                prefix: address.into(),
                ..rule(
                    "198.51.100.1/32",
                    RuleAction::Block,
                    Origin::Auto,
                    "flood",
                    0,
                    Some(600),
                )
            };
            source.banned_until = ban.expires;
            rules.push(ban);
        }
        rows.push(source);
    }
    (rows, rules)
}
