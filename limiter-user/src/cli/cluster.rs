//! `limiter cluster status`: this node and its state, etcd's endpoints, every node seen with
//! its last publication, and what this node shares and sends. Pure functions of the reply:
//! ages and lags arrive from the daemon already measured, so the client's clock plays no part.

use std::{fmt::Write as _, time::Duration};

use super::output::{Align, Table};
use crate::{
    cluster::{
        status::{ClusterState, ClusterStatus, EndpointView, NodeView},
        Role,
    },
    text::{bytes, clean, short_duration},
};

/// Width of the field names, as in `limiter status`.
const NAME_WIDTH: usize = 12;

/// `limiter cluster status`.
pub fn status(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<NAME_WIDTH$}{value}");
    };
    field("node", format!("{} ({})", clean(&status.node), status.role));
    field("state", state(status));
    if status.state == ClusterState::Degraded {
        if let Some(error) = &status.last_error {
            field("last error", clean(error));
        }
    }
    field("prefix", clean(&status.prefix));
    for (i, line) in endpoints(&status.etcd).into_iter().enumerate() {
        field(if i == 0 { "etcd" } else { "" }, line);
    }
    field(
        "rules",
        format!(
            "{} shared (in etcd at the last contact), {} change{} waiting to be sent",
            status.shared_rules,
            status.pending_changes,
            plural(status.pending_changes)
        ),
    );
    if let Some(error) = &status.journal_error {
        field(
            "journal",
            format!("NOT SAVED, retried every poll: {}", clean(error)),
        );
    }
    field(
        "rates",
        match status.role {
            Role::Glance => format!(
                "{} source{} summed over the cluster at the last poll",
                status.cluster_sources,
                plural(status.cluster_sources)
            ),
            Role::Edge => "none here: an edge node applies the rules and counts nothing".into(),
        },
    );
    field(
        "sent",
        format!(
            "{} write{} to etcd, {}",
            status.writes,
            plural(status.writes as usize),
            bytes(status.bytes_written as f64)
        ),
    );
    out.push('\n');
    out.push_str(&nodes(&status.nodes));
    out
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// `connected`, or since when and for how long it is not, and what that means.
fn state(status: &ClusterStatus) -> String {
    match status.state {
        ClusterState::Connected => "connected".to_string(),
        ClusterState::Connecting => "connecting to etcd (not reached since the start)".to_string(),
        ClusterState::Degraded => {
            let mut text = "DEGRADED".to_string();
            if let Some(since) = &status.degraded_since {
                let _ = write!(text, " since {}", clean(since));
            }
            if let Some(secs) = status.degraded_secs {
                let _ = write!(text, " (for {})", short_duration(Duration::from_secs(secs)));
            }
            text.push_str(
                ": etcd unreachable; rules stay, decisions use this node's counts, changes wait \
                 to be sent",
            );
            text
        }
    }
}

/// One line per endpoint: its address, then `healthy, 3.5.17, leader` or why not.
fn endpoints(endpoints: &[EndpointView]) -> Vec<String> {
    if endpoints.is_empty() {
        return vec!["no answer yet".to_string()];
    }
    let width = endpoints
        .iter()
        .map(|e| clean(&e.endpoint).chars().count())
        .max()
        .unwrap_or(0);
    endpoints
        .iter()
        .map(|e| {
            let mut words = Vec::new();
            if e.healthy {
                words.push("healthy".to_string());
            } else {
                words.push(match &e.error {
                    Some(error) => format!("unhealthy: {}", clean(error)),
                    None => "unhealthy".to_string(),
                });
            }
            if let Some(version) = &e.version {
                words.push(format!("etcd {}", clean(version)));
            }
            if e.leader {
                words.push("leader".to_string());
            }
            format!("{:<width$}  {}", clean(&e.endpoint), words.join(", "))
        })
        .collect()
}

/// The nodes' table: this node first, then the others by name, as the daemon lists them.
fn nodes(nodes: &[NodeView]) -> String {
    let mut table = Table::new(&[
        ("NODE", Align::Left),
        ("ROLE", Align::Left),
        ("PUBLISHED", Align::Right),
        ("LAG", Align::Right),
        ("SEQ", Align::Right),
        ("LISTED", Align::Right),
        ("TRACKED", Align::Right),
    ]);
    for node in nodes {
        let name = if node.this_node {
            format!("{} (this node)", clean(&node.name))
        } else {
            clean(&node.name)
        };
        let published = node.last_publication_ms_ago;
        table.row(vec![
            name,
            node.role.to_string(),
            published.map_or_else(|| "-".to_string(), |ms| format!("{} ago", millis(ms))),
            node.lag_ms.map_or_else(|| "-".to_string(), millis),
            node.seq.to_string(),
            // Nothing published yet (or an edge node, which publishes no counts): no counts.
            published.map_or_else(|| "-".to_string(), |_| node.listed_sources.to_string()),
            published.map_or_else(|| "-".to_string(), |_| node.tracked_sources.to_string()),
        ]);
    }
    table.render()
}

/// `0ms`, `850ms`, `2.5s`, then as [`short_duration`] (`3m`): a publication is due every poll.
fn millis(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => short_duration(Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, this_node: bool, published: Option<u64>, lag: u64) -> NodeView {
        NodeView {
            name: name.into(),
            role: Role::Glance,
            this_node,
            last_publication_ms_ago: published,
            lag_ms: published.map(|_| lag),
            seq: 1203,
            listed_sources: 12,
            tracked_sources: 3456,
        }
    }

    fn three_nodes() -> ClusterStatus {
        ClusterStatus {
            node: "glance-1".into(),
            role: Role::Glance,
            prefix: "/glance-limiter/".into(),
            state: ClusterState::Connected,
            degraded_since: None,
            degraded_secs: None,
            last_error: None,
            etcd: vec![
                EndpointView {
                    endpoint: "http://198.51.100.10:2379".into(),
                    healthy: true,
                    version: Some("3.5.17".into()),
                    leader: true,
                    error: None,
                },
                EndpointView {
                    endpoint: "http://198.51.100.11:2379".into(),
                    healthy: true,
                    version: Some("3.5.17".into()),
                    leader: false,
                    error: None,
                },
                EndpointView {
                    endpoint: "http://198.51.100.120:2379".into(),
                    healthy: false,
                    version: None,
                    leader: false,
                    error: Some("connection refused".into()),
                },
            ],
            nodes: vec![
                node("glance-1", true, Some(420), 0),
                node("glance-2", false, Some(850), 0),
                NodeView {
                    role: Role::Glance,
                    ..node("glance-3", false, Some(4_250), 3_250)
                },
            ],
            shared_rules: 42,
            pending_changes: 0,
            journal_error: None,
            cluster_sources: 17,
            writes: 1234,
            bytes_written: 1_572_864,
        }
    }

    #[test]
    fn a_connected_cluster_lists_etcd_and_every_node() {
        assert_eq!(
            status(&three_nodes()),
            "\
node        glance-1 (glance)
state       connected
prefix      /glance-limiter/
etcd        http://198.51.100.10:2379   healthy, etcd 3.5.17, leader
            http://198.51.100.11:2379   healthy, etcd 3.5.17
            http://198.51.100.120:2379  unhealthy: connection refused
rules       42 shared (in etcd at the last contact), 0 changes waiting to be sent
rates       17 sources summed over the cluster at the last poll
sent        1234 writes to etcd, 1.5 MiB

NODE                  ROLE    PUBLISHED   LAG   SEQ  LISTED  TRACKED
glance-1 (this node)  glance  420ms ago   0ms  1203      12     3456
glance-2              glance  850ms ago   0ms  1203      12     3456
glance-3              glance   4.2s ago  3.2s  1203      12     3456
"
        );
    }

    #[test]
    fn a_degraded_cluster_says_since_when_and_why() {
        let degraded = ClusterStatus {
            state: ClusterState::Degraded,
            degraded_since: Some("2026-12-04T08:00:00Z".into()),
            degraded_secs: Some(750),
            last_error: Some("etcd: deadline exceeded\u{1b}[2J".into()),
            etcd: Vec::new(),
            nodes: vec![NodeView {
                role: Role::Edge,
                ..node("edge-1", true, None, 0)
            }],
            node: "edge-1".into(),
            role: Role::Edge,
            pending_changes: 1,
            journal_error: None,
            cluster_sources: 0,
            writes: 1,
            bytes_written: 300,
            ..three_nodes()
        };
        let text = status(&degraded);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "node        edge-1 (edge)",
                "state       DEGRADED since 2026-12-04T08:00:00Z (for 12m): etcd unreachable; \
                 rules stay, decisions use this node's counts, changes wait to be sent",
                "last error  etcd: deadline exceeded\\u{1b}[2J",
                "prefix      /glance-limiter/",
                "etcd        no answer yet",
            ],
            "{text}"
        );
        assert!(
            text.contains("42 shared (in etcd at the last contact), 1 change waiting to be sent"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nrates       none here: an edge node applies the rules and counts nothing\n\
                 sent        1 write to etcd, 300 B\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "NODE                ROLE  PUBLISHED  LAG   SEQ  LISTED  TRACKED\n\
                 edge-1 (this node)  edge          -    -  1203       -        -\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn ages_in_milliseconds_then_seconds_then_minutes() {
        assert_eq!(millis(0), "0ms");
        assert_eq!(millis(999), "999ms");
        assert_eq!(millis(1_000), "1.0s");
        assert_eq!(millis(59_949), "59.9s");
        assert_eq!(millis(180_000), "3m");
    }
}
