use std::time::Duration;

use limiter_common::Counter;

use super::*;
use crate::{config::Mode, loader::AttachMode, store::WriteCounts};

/// What two `trusted_proxies` entries relayed.
fn proxies() -> Vec<ProxyRelayed> {
    vec![
        ProxyRelayed {
            proxy: "198.51.100.2".into(),
            relayed: 9120,
            unattributed: 14,
        },
        ProxyRelayed {
            proxy: "2001:db8:10::/64".into(),
            relayed: 0,
            unattributed: 0,
        },
    ]
}

/// A daemon under attack: one auto ban in force, drops counted, two interfaces.
fn under_attack() -> Snapshot {
    Snapshot {
        mode: Mode::Enforce,
        kernel_counters: Some(
            Counter::ALL
                .iter()
                .map(|c| {
                    let value = match c {
                        Counter::PassProtected => 1200,
                        Counter::DropBlocked => 845,
                        Counter::SourceNew => 3,
                        _ => 0,
                    };
                    (*c, value)
                })
                .collect(),
        ),
        tracked_sources: 3,
        table_rows: 3,
        rules: ActiveRules {
            block: ByOrigin { auto: 1, manual: 2 },
            allow: ByOrigin { auto: 0, manual: 1 },
            allow_config: 4,
        },
        bans: ByOrigin { auto: 5, manual: 2 },
        unbans: Unbans {
            expired: ByOrigin { auto: 4, manual: 0 },
            removed: ByOrigin { auto: 0, manual: 1 },
        },
        store_writes: WriteCounts {
            attempts: 9,
            failures: 1,
        },
        store_trouble: Some(StoreTrouble {
            since: 1_796_371_100,
            unsaved: true,
        }),
        attachments: vec![
            InterfaceMetric {
                name: "veth-attack".into(),
                mode: AttachMode::Native,
                attached: true,
                reattachments: 2,
            },
            InterfaceMetric {
                name: "bond0".into(),
                mode: AttachMode::Generic,
                attached: true,
                reattachments: 0,
            },
            InterfaceMetric {
                name: "eth9".into(),
                mode: AttachMode::Native,
                attached: false,
                reattachments: 0,
            },
        ],
        proxies: proxies(),
        cluster: Some(degraded_cluster()),
    }
}

/// etcd unreachable since 2026-12-04T08:00:00Z: this node alone, after 120 writes.
fn degraded_cluster() -> ClusterMetrics {
    ClusterMetrics {
        degraded_since: Some(1_796_371_200),
        nodes: 1,
        writes: 120,
        bytes_written: 48_000,
    }
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

fn scrape(metrics: &Metrics) -> String {
    metrics.encode(Format::Prometheus).unwrap()
}

#[test]
fn a_snapshot_becomes_the_documented_series() {
    let metrics = Metrics::new();
    metrics.update(under_attack());
    let text = scrape(&metrics);
    let expect = [
        ("glance_limiter_mode{mode=\"enforce\"}", 1.0),
        ("glance_limiter_mode{mode=\"monitor\"}", 0.0),
        (
            "glance_limiter_packets_passed_total{reason=\"protected\"}",
            1200.0,
        ),
        (
            "glance_limiter_packets_passed_total{reason=\"malformed\"}",
            0.0,
        ),
        (
            "glance_limiter_packets_dropped_total{reason=\"blocked\"}",
            845.0,
        ),
        (
            "glance_limiter_packets_dropped_total{reason=\"blocked_any_port\"}",
            0.0,
        ),
        ("glance_limiter_sources_inserted_total", 3.0),
        ("glance_limiter_source_insert_failures_total", 0.0),
        ("glance_limiter_tracked_sources", 3.0),
        ("glance_limiter_source_table_rows", 3.0),
        (
            "glance_limiter_active_rules{action=\"block\",origin=\"auto\"}",
            1.0,
        ),
        (
            "glance_limiter_active_rules{action=\"block\",origin=\"manual\"}",
            2.0,
        ),
        (
            "glance_limiter_active_rules{action=\"allow\",origin=\"manual\"}",
            1.0,
        ),
        (
            "glance_limiter_active_rules{action=\"allow\",origin=\"config\"}",
            4.0,
        ),
        ("glance_limiter_bans_total{origin=\"auto\"}", 5.0),
        ("glance_limiter_bans_total{origin=\"manual\"}", 2.0),
        (
            "glance_limiter_unbans_total{origin=\"auto\",cause=\"expired\"}",
            4.0,
        ),
        (
            "glance_limiter_unbans_total{origin=\"manual\",cause=\"removed\"}",
            1.0,
        ),
        ("glance_limiter_rule_store_writes_total", 9.0),
        ("glance_limiter_rule_store_write_failures_total", 1.0),
        ("glance_limiter_rule_store_degraded", 1.0),
        (
            "glance_limiter_rule_store_degraded_since_seconds",
            1_796_371_100.0,
        ),
        ("glance_limiter_rule_store_unsaved", 1.0),
        (
            "glance_limiter_interface_attached{interface=\"veth-attack\",mode=\"native\"}",
            1.0,
        ),
        (
            "glance_limiter_interface_attached{interface=\"bond0\",mode=\"generic\"}",
            1.0,
        ),
        (
            "glance_limiter_interface_attached{interface=\"eth9\",mode=\"native\"}",
            0.0,
        ),
        (
            "glance_limiter_interface_reattachments_total{interface=\"veth-attack\"}",
            2.0,
        ),
        (
            "glance_limiter_proxy_relayed_requests_total{proxy=\"198.51.100.2\"}",
            9120.0,
        ),
        (
            "glance_limiter_proxy_unattributed_requests_total{proxy=\"198.51.100.2\"}",
            14.0,
        ),
        (
            "glance_limiter_proxy_relayed_requests_total{proxy=\"2001:db8:10::/64\"}",
            0.0,
        ),
        (
            "glance_limiter_proxy_unattributed_requests_total{proxy=\"2001:db8:10::/64\"}",
            0.0,
        ),
        ("glance_limiter_cluster_degraded", 1.0),
        (
            "glance_limiter_cluster_degraded_since_seconds",
            1_796_371_200.0,
        ),
        ("glance_limiter_cluster_nodes", 1.0),
        ("glance_limiter_cluster_writes_total", 120.0),
        ("glance_limiter_cluster_bytes_written_total", 48_000.0),
        ("glance_limiter_build_info{version=\"0.1.0\"}", 1.0),
        ("glance_limiter_poll_failures_total", 0.0),
        ("glance_limiter_poll_duration_seconds_count", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
}

#[test]
fn every_family_is_named_and_typed_by_the_conventions() {
    let metrics = Metrics::new();
    metrics.update(under_attack());
    metrics.observe_poll(Ok(Duration::from_millis(3)));
    let text = scrape(&metrics);
    let mut typed: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            typed.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("glance_limiter_"), "{line}");
        let family = typed
            .last()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
        assert!(
            name == family.0
                || name.strip_prefix(family.0.as_str()).is_some_and(|s| {
                    family.1 == "histogram" && ["_bucket", "_sum", "_count"].contains(&s)
                }),
            "{line} outside its family {family:?}"
        );
    }
    for (name, kind) in &typed {
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("{name}: unexpected type {other}"),
        }
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }
    let names: Vec<&str> = typed.iter().map(|(n, _)| n.as_str()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "a family twice: {names:?}");
}

#[test]
fn polls_fill_the_histogram_in_seconds_and_failures_are_counted() {
    let metrics = Metrics::new();
    metrics.observe_poll(Ok(Duration::from_micros(400)));
    metrics.observe_poll(Ok(Duration::from_millis(30)));
    metrics.observe_poll(Err(()));
    let text = scrape(&metrics);
    let series = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
    assert_eq!(series("glance_limiter_poll_duration_seconds_count"), 2.0);
    assert!((series("glance_limiter_poll_duration_seconds_sum") - 0.0304).abs() < 1e-9);
    assert_eq!(
        series("glance_limiter_poll_duration_seconds_bucket{le=\"0.0005\"}"),
        1.0
    );
    assert_eq!(
        series("glance_limiter_poll_duration_seconds_bucket{le=\"0.05\"}"),
        2.0
    );
    assert_eq!(
        series("glance_limiter_poll_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(series("glance_limiter_poll_failures_total"), 1.0);
}

#[test]
fn before_the_first_poll_kernel_families_are_absent_and_the_rest_zero() {
    let text = scrape(&Metrics::new());
    assert!(!text.contains("packets_dropped"), "{text}");
    assert_eq!(sample(&text, "glance_limiter_tracked_sources"), Some(0.0));
    assert_eq!(
        sample(&text, "glance_limiter_bans_total{origin=\"auto\"}"),
        Some(0.0)
    );
}

#[test]
fn monitor_mode_and_a_reset_kernel_counter_show_as_they_are() {
    let metrics = Metrics::new();
    metrics.update(under_attack());
    metrics.update(Snapshot {
        mode: Mode::Monitor,
        kernel_counters: Some(vec![(Counter::DropBlocked, 2)]),
        ..Snapshot::default()
    });
    let text = scrape(&metrics);
    assert_eq!(
        sample(&text, "glance_limiter_mode{mode=\"monitor\"}"),
        Some(1.0)
    );
    // The kernel's counters restarted (maps recreated): exported as read, a counter reset.
    assert_eq!(
        sample(
            &text,
            "glance_limiter_packets_dropped_total{reason=\"blocked\"}"
        ),
        Some(2.0)
    );
    assert!(!text.contains("interface_attached{"), "{text}");
}

#[test]
fn openmetrics_is_served_to_those_who_ask_for_it() {
    let metrics = Metrics::new();
    metrics.update(under_attack());
    let text = metrics.encode(Format::OpenMetrics).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE glance_limiter_bans counter\n"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "glance_limiter_bans_total{origin=\"auto\"}"),
        Some(5.0)
    );
    assert!(text.contains("# UNIT glance_limiter_poll_duration_seconds seconds\n"));
}

#[test]
fn the_format_follows_the_accept_header() {
    use Format::*;
    // What Prometheus 2.x and 3.x send.
    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
                      application/openmetrics-text;version=0.0.1;q=0.4,\
                      text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let prometheus_3 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                        encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,\
                        text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,*/*;q=0.2";
    for (accept, format) in [
        (None, Prometheus),
        (Some("*/*"), Prometheus),
        (Some("text/plain"), Prometheus),
        (Some("application/json"), Prometheus),
        (Some(prometheus), OpenMetrics),
        (Some(prometheus_3), OpenMetrics),
        (Some("application/openmetrics-text"), OpenMetrics),
        (
            Some("application/openmetrics-text;q=0.2, text/plain"),
            Prometheus,
        ),
        (Some("application/openmetrics-text;q=0"), Prometheus),
    ] {
        assert_eq!(Format::negotiate(accept), format, "{accept:?}");
    }
}

#[test]
fn proxies_are_series_per_configured_entry_and_absent_without_any() {
    let metrics = Metrics::new();
    metrics.update(under_attack());
    let text = scrape(&metrics);
    let series: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("glance_limiter_proxy_relayed_requests"))
        .collect();
    assert_eq!(series.len(), proxies().len(), "{text}");
    assert!(
        text.lines().filter(|l| l.contains("proxy=\"")).all(|l| l
            .starts_with("glance_limiter_proxy_relayed_requests_total{proxy=")
            || l.starts_with("glance_limiter_proxy_unattributed_requests_total{proxy=")),
        "only the relay families carry a proxy label: {text}"
    );
    let openmetrics = metrics.encode(Format::OpenMetrics).unwrap();
    assert!(
        openmetrics.contains("# TYPE glance_limiter_proxy_relayed_requests counter\n"),
        "{openmetrics}"
    );

    metrics.update(Snapshot {
        proxies: Vec::new(),
        ..under_attack()
    });
    let text = scrape(&metrics);
    assert!(!text.contains("proxy_relayed"), "{text}");
    assert!(!text.contains("proxy_unattributed"), "{text}");
}

#[test]
fn cluster_families_only_with_a_cluster_and_zero_since_when_connected() {
    let metrics = Metrics::new();
    metrics.update(Snapshot {
        cluster: Some(ClusterMetrics {
            degraded_since: None,
            nodes: 3,
            ..degraded_cluster()
        }),
        ..under_attack()
    });
    let text = scrape(&metrics);
    for (series, value) in [
        ("glance_limiter_cluster_degraded", 0.0),
        ("glance_limiter_cluster_degraded_since_seconds", 0.0),
        ("glance_limiter_cluster_nodes", 3.0),
        ("glance_limiter_cluster_writes_total", 120.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let openmetrics = metrics.encode(Format::OpenMetrics).unwrap();
    assert!(
        openmetrics.contains("# TYPE glance_limiter_cluster_bytes_written counter\n"),
        "{openmetrics}"
    );

    metrics.update(Snapshot {
        cluster: None,
        ..under_attack()
    });
    let text = scrape(&metrics);
    assert!(!text.contains("glance_limiter_cluster_"), "{text}");
}
