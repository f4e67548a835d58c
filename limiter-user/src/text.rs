//! Text that both the command line and the live screen print: durations at a glance, byte
//! counts, text from the daemon made safe for a terminal, and the cluster's health in words.
//! It sits below `cli` and `tui` so that neither imports the other for it.

use std::time::{Duration, SystemTime};

use crate::cluster::status::{ClusterHealth, ClusterState};

/// A duration as people read it at a glance: the largest unit and, above an hour, the next
/// (`45s`, `29m`, `2h 5m`, `3d 4h`). Rounded down, so a 30-minute rule seen a moment after it
/// was made shows `29m`.
pub fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{minutes}m"),
        3600..86_400 if minutes == 0 => format!("{hours}h"),
        3600..86_400 => format!("{hours}h {minutes}m"),
        _ if hours == 0 => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Text from the daemon made safe for a terminal: control characters (newlines, escape
/// sequences in a reason) are shown escaped instead of acting on the terminal.
pub fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `1.5 MiB`, `512 B`.
pub fn bytes(per_second: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = per_second;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1 node`, `3 nodes`.
pub fn nodes(count: usize) -> String {
    format!("{count} node{}", if count == 1 { "" } else { "s" })
}

/// `142 creates/min, 12.5 new conn/s cluster-wide`: the rates summed over every Glance node.
pub fn cluster_rates(health: &ClusterHealth) -> String {
    format!(
        "{} creates/min, {:.1} new conn/s cluster-wide",
        health.image_creates_per_minute, health.new_connections_per_second
    )
}

/// `glance-1 (glance)`: a node and its role.
pub fn node_and_role(health: &ClusterHealth) -> String {
    format!("{} ({})", clean(&health.node), health.role)
}

/// How the cluster stands, in the words both `limiter status` and `limiter top` use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPhrase {
    Connected,
    /// Not heard from etcd since the daemon started.
    Connecting,
    /// etcd unreachable; `since` as the daemon sent it (RFC 3339) and how long ago that is,
    /// when it parses.
    Degraded {
        since: Option<String>,
        for_: Option<Duration>,
    },
}

impl ClusterPhrase {
    pub fn of(health: &ClusterHealth, now: SystemTime) -> ClusterPhrase {
        match health.state {
            ClusterState::Connected => ClusterPhrase::Connected,
            ClusterState::Connecting => ClusterPhrase::Connecting,
            ClusterState::Degraded => {
                let since = health.degraded_since.as_deref().map(clean);
                let for_ = health
                    .degraded_since
                    .as_deref()
                    .and_then(|text| humantime::parse_rfc3339_weak(text).ok())
                    .map(|at| now.duration_since(at).unwrap_or_default());
                ClusterPhrase::Degraded { since, for_ }
            }
        }
    }

    pub fn is_degraded(&self) -> bool {
        matches!(self, ClusterPhrase::Degraded { .. })
    }

    /// `connected`, `connecting to etcd`, `DEGRADED since 2026-12-04T08:00:00Z (12m)`;
    /// `short_time` writes the time of `since` (RFC 3339 text) as the caller prefers.
    pub fn text(&self, short_time: impl Fn(&str) -> String) -> String {
        match self {
            ClusterPhrase::Connected => "connected".to_string(),
            ClusterPhrase::Connecting => "connecting to etcd".to_string(),
            ClusterPhrase::Degraded { since, for_ } => {
                let mut text = "DEGRADED".to_string();
                if let Some(since) = since {
                    text.push_str(&format!(" since {}", short_time(since)));
                }
                if let Some(for_) = for_ {
                    text.push_str(&format!(" ({})", short_duration(*for_)));
                }
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;

    fn health(state: ClusterState, since: Option<&str>) -> ClusterHealth {
        ClusterHealth {
            node: "glance-1".into(),
            role: Role::Glance,
            state,
            degraded_since: since.map(str::to_string),
            nodes_seen: 3,
            image_creates_per_minute: 0,
            new_connections_per_second: 0.0,
        }
    }

    // 2026-12-04T08:12:30Z
    const NOW: u64 = 1_796_371_950;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn durations_read_at_a_glance() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (1799, "29m"),
            (3600, "1h"),
            (3660 + 59, "1h 1m"),
            (86_400, "1d"),
            (2 * 86_400 + 3 * 3600 + 59, "2d 3h"),
        ];
        for (secs, text) in cases {
            assert_eq!(short_duration(Duration::from_secs(secs)), text, "{secs}");
        }
    }

    #[test]
    fn daemon_text_cannot_drive_the_terminal() {
        assert_eq!(clean("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(clean("plain, ünïcode"), "plain, ünïcode");
    }

    #[test]
    fn byte_rates_use_binary_units() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn the_cluster_in_words() {
        let as_is = |text: &str| text.to_string();
        let connected = ClusterPhrase::of(&health(ClusterState::Connected, None), now());
        assert_eq!(connected.text(as_is), "connected");
        assert!(!connected.is_degraded());
        let connecting = ClusterPhrase::of(&health(ClusterState::Connecting, None), now());
        assert_eq!(connecting.text(as_is), "connecting to etcd");
        let degraded = ClusterPhrase::of(
            &health(ClusterState::Degraded, Some("2026-12-04T08:00:00Z")),
            now(),
        );
        assert!(degraded.is_degraded());
        assert_eq!(
            degraded.text(as_is),
            "DEGRADED since 2026-12-04T08:00:00Z (12m)"
        );
        assert_eq!(
            degraded.text(|_| "08:00Z".into()),
            "DEGRADED since 08:00Z (12m)"
        );
        // A time that does not parse is shown as sent, without a duration.
        let odd = ClusterPhrase::of(&health(ClusterState::Degraded, Some("yesterday")), now());
        assert_eq!(odd.text(as_is), "DEGRADED since yesterday");
        assert_eq!(nodes(1), "1 node");
        assert_eq!(nodes(3), "3 nodes");
        assert_eq!(
            node_and_role(&health(ClusterState::Connected, None)),
            "glance-1 (glance)"
        );
    }
}
