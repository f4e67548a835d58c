//! What `limiter cluster status` shows, as it travels over the control socket.

use serde::{Deserialize, Serialize};

use super::settings::Role;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// Not heard from etcd yet since the daemon started.
    Connecting,
    /// Rules and counts flow.
    Connected,
    /// etcd cannot be reached: rules stay, decisions are local, changes wait to be sent.
    Degraded,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node: String,
    pub role: Role,
    pub prefix: String,
    pub state: ClusterState,
    /// RFC 3339, when the cluster became unreachable (degraded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub etcd: Vec<EndpointView>,
    /// This node first, then every node that published, by name.
    pub nodes: Vec<NodeView>,
    /// Rule keys etcd held at the last contact.
    pub shared_rules: usize,
    /// Local changes etcd has not taken yet.
    pub pending_changes: usize,
    /// Why `cluster.json` could not be written (its state waits in memory, retried every poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
    /// Sources whose cluster-wide rates were computed at the last poll.
    pub cluster_sources: usize,
    /// Writes (puts, transactions, lease grants and keep-alives) and bytes sent since start.
    pub writes: u64,
    pub bytes_written: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub endpoint: String,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub leader: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
    pub this_node: bool,
    /// Milliseconds since its last publication arrived here (this node: since it published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_publication_ms_ago: Option<u64>,
    /// How late that publication is against the node's poll interval (0: on time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    pub seq: u64,
    /// Sources its last summary listed.
    pub listed_sources: usize,
    pub tracked_sources: u64,
}

/// The line `limiter status` carries about the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub node: String,
    pub role: Role,
    pub state: ClusterState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_since: Option<String>,
    pub nodes_seen: usize,
    /// Image creates in the last minute, summed over every Glance node that publishes.
    #[serde(default)]
    pub image_creates_per_minute: u64,
    /// New connections per second (10 s mean), summed likewise.
    #[serde(default)]
    pub new_connections_per_second: f64,
}
