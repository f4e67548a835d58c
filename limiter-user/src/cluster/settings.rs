//! The `[cluster]` section of the configuration: where etcd is, who this node is, and which
//! thresholds apply to the cluster-wide rate. Without the section the daemon works alone.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::Metric;

/// The key prefix every node of one cluster shares, unless configured.
pub const DEFAULT_PREFIX: &str = "/glance-limiter/";
/// The most sources one node publishes per poll, unless configured.
pub const DEFAULT_SUMMARY_MAX_SOURCES: usize = 256;
/// Above this, one summary (JSON, ~60 bytes a source) nears etcd's 1.5 MiB request limit.
pub const SUMMARY_MAX_SOURCES_LIMIT: usize = 10_000;

/// What a node does in the cluster.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A Glance API node: counts, publishes its counts, decides on the cluster's rates, and
    /// applies every rule.
    #[default]
    Glance,
    /// A load-balancer node: applies the cluster's rules on its public interface, so banned
    /// clients are dropped before the proxy's TLS handshake; publishes no counts.
    Edge,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Whether a threshold compares the source's rate summed over every Glance node or this
/// node's alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Cluster,
    Node,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// etcd client URLs (`http://198.51.100.1:2379`, or `https://` with the TLS files).
    pub etcd_endpoints: Vec<String>,
    /// This node's name in etcd and in `cluster status`; `None`: the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Every key the limiter writes starts with this.
    pub prefix: String,
    pub role: Role,
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The most sources one node's per-poll summary lists (the busiest, relative to their
    /// thresholds).
    pub summary_max_sources: usize,
    /// Per threshold, `"cluster"` (default) or `"node"`.
    pub threshold_scope: BTreeMap<Metric, Scope>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            etcd_endpoints: Vec::new(),
            node_name: None,
            prefix: DEFAULT_PREFIX.to_string(),
            role: Role::default(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            summary_max_sources: DEFAULT_SUMMARY_MAX_SOURCES,
            threshold_scope: BTreeMap::new(),
        }
    }
}

impl ClusterSettings {
    /// `node_name`, or the host name when not set.
    pub fn effective_node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_name)
    }

    pub fn scope(&self, metric: Metric) -> Scope {
        if !Metric::CLUSTER_SHARED.contains(&metric) {
            return Scope::Node;
        }
        self.threshold_scope
            .get(&metric)
            .copied()
            .unwrap_or_default()
    }

    pub fn uses_tls(&self) -> bool {
        self.etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"))
    }

    /// What is wrong, as `(key inside [cluster], message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut say = |key: &str, message: String| problems.push((key.to_string(), message));
        if self.etcd_endpoints.is_empty() {
            say(
                "etcd_endpoints",
                "no etcd endpoint: list the etcd client URLs (\"http://198.51.100.1:2379\"), \
                 or remove the [cluster] section to run this node alone"
                    .into(),
            );
        }
        let shared: Vec<&str> = Metric::CLUSTER_SHARED.iter().map(|m| m.key()).collect();
        for (metric, scope) in &self.threshold_scope {
            if metric.threshold_window().is_none() {
                say(
                    &format!("threshold_scope.{metric}"),
                    format!(
                        "{metric} has no threshold, so it has no scope; threshold_scope takes {}",
                        shared.join(", ")
                    ),
                );
            } else if !Metric::CLUSTER_SHARED.contains(metric) && *scope == Scope::Cluster {
                say(
                    &format!("threshold_scope.{metric}"),
                    format!(
                        "{metric} is counted from the answers this node sends, which nodes do \
                         not share: its scope is \"node\"; cluster-wide scopes: {}",
                        shared.join(", ")
                    ),
                );
            }
        }
        for (i, endpoint) in self.etcd_endpoints.iter().enumerate() {
            if let Err(message) = check_endpoint(endpoint) {
                say(&format!("etcd_endpoints[{i}]"), message);
            }
        }
        let schemes: Vec<bool> = self
            .etcd_endpoints
            .iter()
            .map(|e| e.starts_with("https://"))
            .collect();
        if schemes.iter().any(|s| *s) && schemes.iter().any(|s| !*s) {
            say(
                "etcd_endpoints",
                "mixes http:// and https:// endpoints; one etcd cluster is served one way: use \
                 https:// for every endpoint (with ca_file) or http:// for every one"
                    .into(),
            );
        }
        if let Some(name) = &self.node_name {
            if let Err(message) = check_node_name(name) {
                say("node_name", message);
            }
        }
        if let Err(message) = check_prefix(&self.prefix) {
            say("prefix", message);
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => say(
                "key_file",
                "cert_file is set without key_file: give the client certificate's private key \
                 too"
                .into(),
            ),
            (None, Some(_)) => say(
                "cert_file",
                "key_file is set without cert_file: give the client certificate too".into(),
            ),
            _ => {}
        }
        let tls_files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        if !self.uses_tls() {
            for (key, file) in tls_files {
                if file.is_some() {
                    say(
                        key,
                        "is set but every etcd endpoint is http://; TLS needs https:// \
                         endpoints"
                            .into(),
                    );
                }
            }
        } else if self.ca_file.is_none() {
            say(
                "ca_file",
                "https:// endpoints need the CA certificate (PEM) that signed etcd's server \
                 certificates"
                    .into(),
            );
        }
        for (key, file) in tls_files {
            if let Some(path) = file {
                if let Err(e) = std::fs::metadata(path) {
                    say(key, format!("cannot read {}: {e}", path.display()));
                }
            }
        }
        if self.summary_max_sources == 0 || self.summary_max_sources > SUMMARY_MAX_SOURCES_LIMIT {
            say(
                "summary_max_sources",
                format!(
                    "{} is out of range: between 1 and {SUMMARY_MAX_SOURCES_LIMIT} (default \
                     {DEFAULT_SUMMARY_MAX_SOURCES})",
                    self.summary_max_sources
                ),
            );
        }
        problems
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("\"{endpoint}\" is not an etcd client URL: write \"http://HOST:2379\" or \"https://HOST:2379\"")
        })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
        format!(
            "\"{endpoint}\" has no port: etcd's client port is usually 2379 (\"{endpoint}:2379\")"
        )
    })?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!(
            "\"{endpoint}\": `{host}` is not a host name or address; IPv6 addresses go in \
             brackets (\"http://[2001:db8::1]:2379\")"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("\"{endpoint}\": `{port}` is not a port number")),
    }
}

fn check_node_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" cannot name a node: 1 to 63 letters, digits, '-', '_' or '.' (it becomes \
             part of an etcd key)"
        ))
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
        return Err(format!(
            "\"{prefix}\" must start and end with '/' (\"{DEFAULT_PREFIX}\") so that no other \
             application's keys fall under it"
        ));
    }
    if prefix.contains(char::is_whitespace) || prefix.contains("//") {
        return Err(format!(
            "\"{prefix}\" contains blanks or '//'; use something like \"{DEFAULT_PREFIX}\""
        ));
    }
    Ok(())
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    // A host name that cannot be a key part (rare) still names the node, made safe.
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if safe.is_empty() {
        "node".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoints: &[&str]) -> ClusterSettings {
        ClusterSettings {
            etcd_endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ..ClusterSettings::default()
        }
    }

    fn keys(settings: &ClusterSettings) -> Vec<String> {
        settings.problems().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn plain_endpoints_are_enough() {
        assert!(
            with(&["http://198.51.100.1:2379", "http://[2001:db8::1]:2379"])
                .problems()
                .is_empty()
        );
    }

    #[test]
    fn bad_endpoints_name_their_index() {
        let settings = with(&["198.51.100.1:2379", "http://h", "http://h:0", "http://:1"]);
        assert_eq!(
            keys(&settings),
            [
                "etcd_endpoints[0]",
                "etcd_endpoints[1]",
                "etcd_endpoints[2]",
                "etcd_endpoints[3]"
            ]
        );
        assert_eq!(keys(&with(&[])), ["etcd_endpoints"]);
    }

    #[test]
    fn tls_needs_https_and_a_ca() {
        let mut settings = with(&["https://198.51.100.1:2379"]);
        assert_eq!(keys(&settings), ["ca_file"]);
        settings
            .etcd_endpoints
            .push("http://198.51.100.2:2379".into());
        assert!(keys(&settings).contains(&"etcd_endpoints".to_string()));
        let plain = ClusterSettings {
            cert_file: Some("/nonexistent/c.pem".into()),
            ..with(&["http://198.51.100.1:2379"])
        };
        let problems = keys(&plain);
        assert!(problems.contains(&"key_file".to_string()), "{problems:?}");
        assert!(problems.contains(&"cert_file".to_string()), "{problems:?}");
    }

    #[test]
    fn names_and_prefixes_are_checked() {
        let settings = ClusterSettings {
            node_name: Some("glance 1".into()),
            prefix: "glance-limiter".into(),
            summary_max_sources: 0,
            ..with(&["http://198.51.100.1:2379"])
        };
        assert_eq!(
            keys(&settings),
            ["node_name", "prefix", "summary_max_sources"]
        );
    }

    #[test]
    fn scopes_default_to_the_cluster() {
        let settings: ClusterSettings = toml::from_str(
            "etcd_endpoints = [\"http://198.51.100.1:2379\"]\n\
             [threshold_scope]\nnew_connections_per_second = \"node\"\n",
        )
        .unwrap();
        assert_eq!(settings.scope(Metric::NewConnectionsPerSecond), Scope::Node);
        assert_eq!(
            settings.scope(Metric::ImageCreatesPerMinute),
            Scope::Cluster
        );
        assert!(
            toml::from_str::<ClusterSettings>("[threshold_scope]\nbogus = \"node\"\n").is_err()
        );
        let display_only: ClusterSettings = toml::from_str(
            "etcd_endpoints = [\"http://198.51.100.1:2379\"]\n\
             [threshold_scope]\nbytes_per_second = \"node\"\n",
        )
        .unwrap();
        let problems = display_only.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "threshold_scope.bytes_per_second");
        assert!(problems[0].1.contains("has no threshold"), "{problems:?}");
        // The records created are read from this node's own answers: node scope only.
        let records = |scope: &str| -> ClusterSettings {
            toml::from_str(&format!(
                "etcd_endpoints = [\"http://198.51.100.1:2379\"]\n\
                 [threshold_scope]\nrecords_created_per_hour = \"{scope}\"\n"
            ))
            .unwrap()
        };
        let problems = records("cluster").problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].1.contains("its scope is \"node\""),
            "{problems:?}"
        );
        assert!(records("node").problems().is_empty());
        assert_eq!(
            records("node").scope(Metric::RecordsCreatedPerHour),
            Scope::Node
        );
        let defaults: ClusterSettings =
            toml::from_str("etcd_endpoints = [\"http://198.51.100.1:2379\"]\n").unwrap();
        assert_eq!(defaults.scope(Metric::RecordsCreatedPerHour), Scope::Node);
    }
}
