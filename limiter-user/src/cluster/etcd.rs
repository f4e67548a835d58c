//! The only code that talks to etcd: one thread with its own tokio runtime. It connects,
//! reads the shared rules and the nodes' summaries, then watches them and sends the engine
//! what changed; it writes what the engine sends. Any failure ends the session: the engine
//! keeps deciding alone, and the next session starts with a full read that the engine
//! reconciles with its own rules.

use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, SystemTime},
};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, OpenSslClientConfig, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use super::{
    records::{Keys, RuleRecord},
    settings::ClusterSettings,
    status::EndpointView,
    summary::Summary,
    FromEtcd, Shared, ToEtcd,
};
use crate::store::{RuleKey, StoredRule};

/// Each request's limit: beyond it etcd counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Between failed sessions.
const RETRY: Duration = Duration::from_millis(500);
/// How often each endpoint's health is asked, for `cluster status`.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// The shortest lease of a node's summary.
const NODE_LEASE_MIN_SECS: i64 = 10;
/// etcd's shortest lease.
const MIN_LEASE_SECS: i64 = 2;
/// etcd's limit is 128 operations per transaction.
const TXN_OPS: usize = 100;

pub struct Link {
    pub settings: ClusterSettings,
    pub node: String,
    pub poll_interval: Duration,
    pub shared: Arc<Mutex<Shared>>,
    pub to_engine: mpsc::Sender<FromEtcd>,
}

pub fn spawn(
    link: Link,
    inbox: UnboundedReceiver<ToEtcd>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            runtime.block_on(run(link, inbox));
        })
}

async fn run(link: Link, mut inbox: UnboundedReceiver<ToEtcd>) {
    let keys = Keys::new(&link.settings.prefix);
    let options = match connect_options(&link.settings) {
        Ok(options) => options,
        Err(e) => {
            link.shared
                .lock()
                .unwrap()
                .failed(format!("TLS files: {e}"));
            warn!(error = %e, "cluster disabled: cannot read the TLS files");
            // Drain until told to stop, so the engine never blocks.
            while let Some(message) = inbox.recv().await {
                if matches!(message, ToEtcd::Stop) {
                    return;
                }
            }
            return;
        }
    };
    let health = tokio::spawn(watch_health(
        link.settings.clone(),
        options.clone(),
        link.shared.clone(),
    ));
    // One member at a time: a balanced channel over every endpoint kept sending requests to
    // a dead member. A failed session moves on to the next member at once; only when every
    // member failed in a row is the cluster unreachable.
    let endpoints = &link.settings.etcd_endpoints;
    let mut next = 0;
    let mut failed_in_a_row = 0;
    loop {
        let endpoint = pick_endpoint(endpoints, &link.shared, next);
        next = endpoints.iter().position(|e| *e == endpoint).unwrap_or(0) + 1;
        let mut reached = false;
        let outcome = session(&link, &keys, &options, &endpoint, &mut reached, &mut inbox).await;
        match outcome {
            Ok(()) => break,
            Err(e) => {
                failed_in_a_row = if reached { 1 } else { failed_in_a_row + 1 };
                if failed_in_a_row < endpoints.len() {
                    info!(endpoint = %endpoint, error = %e, "etcd member failed; trying the next one");
                    link.shared.lock().unwrap().last_error = Some(e);
                    continue;
                }
                failed_in_a_row = 0;
                let first = link.shared.lock().unwrap().failed(e.clone());
                if first {
                    warn!(error = %e, "etcd unreachable: deciding on local thresholds, rules kept, changes queued");
                }
            }
        }
        // Wait before retrying, dropping what cannot be sent now: rule changes are in the
        // journal (the next session reconciles them) and a summary is only worth its latest.
        let until = tokio::time::Instant::now() + RETRY;
        loop {
            match tokio::time::timeout_at(until, inbox.recv()).await {
                Ok(Some(ToEtcd::Stop)) | Ok(None) => {
                    health.abort();
                    return;
                }
                Ok(Some(_)) => {}
                Err(_) => break,
            }
        }
    }
    health.abort();
}

fn connect_options(settings: &ClusterSettings) -> Result<ConnectOptions, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if settings.uses_tls() {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let mut tls = OpenSslClientConfig::default();
        if let Some(ca) = &settings.ca_file {
            tls = tls.ca_cert_pem(&read(ca)?);
        }
        if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
            tls = tls.client_cert_pem_and_key(&read(cert)?, &read(key)?);
        }
        options = options.with_openssl_tls(tls);
    }
    Ok(options)
}

async fn timed<T>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {}", short_error(&e))),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// One connection's life: read everything, hand it to the engine, then follow changes until
/// something fails (`Err`) or the engine stops (`Ok`).
async fn session(
    link: &Link,
    keys: &Keys,
    options: &ConnectOptions,
    endpoint: &str,
    reached: &mut bool,
    inbox: &mut UnboundedReceiver<ToEtcd>,
) -> Result<(), String> {
    let mut client = timed(
        "connecting",
        Client::connect([endpoint], Some(options.clone())),
    )
    .await
    .map_err(|e| format!("{endpoint}: {e}"))?;
    // A keep-alive every third of it: with a 1 s poll, a third of a write per poll, and a
    // node that stops is gone from the others' view within 10 s.
    let lease_ttl = (3 * link.poll_interval.as_secs() as i64).max(NODE_LEASE_MIN_SECS);
    let node_lease = timed(
        "granting the node's lease",
        client.lease_grant(lease_ttl, None),
    )
    .await?
    .id();
    let (mut keeper, mut keepalive_answers) = timed(
        "keeping the node's lease",
        client.lease_keep_alive(node_lease),
    )
    .await?;
    link.shared.lock().unwrap().count_write(16);

    let rules = timed(
        "reading the rules",
        client.get(keys.rules(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let header = rules.header().ok_or("reading the rules: no header")?;
    let (cluster_id, revision) = (header.cluster_id(), header.revision());
    let now = SystemTime::now();
    let mut lease_left: HashMap<i64, Option<Duration>> = HashMap::new();
    let mut snapshot: Vec<StoredRule> = Vec::new();
    for kv in rules.kvs() {
        let Some(record) = parse_record(keys, kv.key_str().unwrap_or_default(), kv.value()) else {
            continue;
        };
        let left = if kv.lease() == 0 {
            None
        } else {
            match lease_left.get(&kv.lease()) {
                Some(left) => *left,
                None => {
                    let ttl = timed(
                        "reading a rule's lease",
                        client.lease_time_to_live(kv.lease(), None),
                    )
                    .await?
                    .ttl();
                    let left = (ttl > 0).then(|| Duration::from_secs(ttl as u64));
                    lease_left.insert(kv.lease(), left);
                    left
                }
            }
        };
        if kv.lease() != 0 && left.is_none() {
            continue; // its lease just ran out: etcd is deleting it
        }
        snapshot.push(record.to_rule(now, left));
    }
    let nodes = timed(
        "reading the nodes",
        client.get(keys.nodes(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    {
        let mut shared = link.shared.lock().unwrap();
        shared.peers.clear();
        for kv in nodes.kvs() {
            if let Some(summary) = parse_summary(keys, kv.key_str().unwrap_or_default(), kv.value())
            {
                if summary.node != link.node {
                    shared.peer_arrived(summary);
                }
            }
        }
    }
    link.to_engine
        .send(FromEtcd::Snapshot {
            cluster_id,
            rules: snapshot,
        })
        .map_err(|_| "the engine stopped".to_string())?;
    let mut watch = timed(
        "watching",
        client.watch(
            link.settings.prefix.as_bytes().to_vec(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;
    *reached = true;
    link.shared.lock().unwrap().reached(endpoint);
    if link.shared.lock().unwrap().connected() {
        info!(
            endpoint,
            cluster_id, revision, "etcd reached: rules reconciled, counts shared"
        );
    }

    let mut keepalive = tokio::time::interval(Duration::from_secs((lease_ttl / 3).max(1) as u64));
    keepalive.tick().await;
    loop {
        tokio::select! {
            message = inbox.recv() => match message {
                None | Some(ToEtcd::Stop) => {
                    // Gone at once rather than at the lease's end: `cluster status` elsewhere
                    // shows the node leaving.
                    let _ = timed("revoking the node's lease", client.lease_revoke(node_lease)).await;
                    return Ok(());
                }
                Some(ToEtcd::Publish(summary)) => {
                    let bytes = serde_json::to_vec(&summary).expect("summaries encode");
                    let size = bytes.len();
                    timed(
                        "publishing the summary",
                        client.put(keys.node(&link.node), bytes, Some(PutOptions::new().with_lease(node_lease))),
                    )
                    .await?;
                    let mut shared = link.shared.lock().unwrap();
                    shared.count_write(size);
                    shared.published(summary);
                }
                Some(ToEtcd::Push { puts, deletes, generation }) => {
                    let done = push(&mut client, keys, link, puts, deletes).await?;
                    link.to_engine
                        .send(FromEtcd::Pushed { keys: done, generation })
                        .map_err(|_| "the engine stopped".to_string())?;
                }
            },
            answer = watch.message() => {
                let answer = answer.map_err(|e| format!("watching: {e}"))?
                    .ok_or("watching: etcd closed the watch")?;
                if answer.canceled() {
                    return Err(format!("watching: canceled by etcd ({})", answer.cancel_reason()));
                }
                for event in answer.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = kv.key_str().unwrap_or_default();
                    let put = event.event_type() == EventType::Put;
                    if let Some(rule_key) = keys.parse_rule(key) {
                        let message = if put {
                            match parse_record(keys, key, kv.value()) {
                                Some(record) => FromEtcd::RulePut(record.to_rule(SystemTime::now(), None)),
                                None => continue,
                            }
                        } else {
                            FromEtcd::RuleDeleted(rule_key)
                        };
                        link.to_engine.send(message).map_err(|_| "the engine stopped".to_string())?;
                    } else if let Some(node) = keys.parse_node(key) {
                        let mut shared = link.shared.lock().unwrap();
                        if node == link.node {
                            continue;
                        }
                        if put {
                            if let Some(summary) = parse_summary(keys, key, kv.value()) {
                                shared.peer_arrived(summary);
                            }
                        } else {
                            shared.peers.remove(node);
                        }
                    }
                }
            }
            _ = keepalive.tick() => {
                timed("keeping the node's lease", keeper.keep_alive()).await?;
                link.shared.lock().unwrap().count_write(16);
            }
            answer = keepalive_answers.message() => {
                let answer = answer.map_err(|e| format!("keeping the node's lease: {e}"))?
                    .ok_or("keeping the node's lease: stream closed")?;
                if answer.ttl() <= 0 {
                    return Err("the node's lease expired (etcd did not hear from this node in time)".into());
                }
            }
        }
    }
}

/// Writes rule changes, a transaction per [`TXN_OPS`] operations, one lease per distinct
/// expiry; returns what etcd now holds for each key.
async fn push(
    client: &mut Client,
    keys: &Keys,
    link: &Link,
    puts: Vec<RuleRecord>,
    deletes: Vec<RuleKey>,
) -> Result<Vec<(RuleKey, bool)>, String> {
    let mut leases: HashMap<u64, i64> = HashMap::new();
    let mut ops: Vec<(TxnOp, usize)> = Vec::new();
    let mut done = Vec::new();
    for record in puts {
        let options = match record.ttl_secs {
            None => None,
            Some(ttl) => {
                let lease = match leases.get(&ttl) {
                    Some(lease) => *lease,
                    None => {
                        let lease = timed(
                            "granting a rule's lease",
                            client.lease_grant((ttl as i64).max(MIN_LEASE_SECS), None),
                        )
                        .await?
                        .id();
                        link.shared.lock().unwrap().count_write(16);
                        leases.insert(ttl, lease);
                        lease
                    }
                };
                Some(PutOptions::new().with_lease(lease))
            }
        };
        let value = serde_json::to_vec(&record).expect("records encode");
        let size = value.len();
        ops.push((TxnOp::put(keys.rule(record.key()), value, options), size));
        done.push((record.key(), true));
    }
    for key in deletes {
        ops.push((TxnOp::delete(keys.rule(key), None), 0));
        done.push((key, false));
    }
    while !ops.is_empty() {
        let batch: Vec<(TxnOp, usize)> = ops.drain(..ops.len().min(TXN_OPS)).collect();
        let size: usize = batch.iter().map(|(_, size)| 64 + size).sum();
        let txn = Txn::new().and_then(batch.into_iter().map(|(op, _)| op).collect::<Vec<_>>());
        timed("writing rules", client.txn(txn)).await?;
        link.shared.lock().unwrap().count_write(size);
    }
    Ok(done)
}

/// What went wrong, in a line: tonic's errors nest the cause deep in a debug dump.
fn short_error(error: &etcd_client::Error) -> String {
    let text = error.to_string();
    for (needle, said) in [
        (
            "Connection refused",
            "connection refused (is etcd running there?)",
        ),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
        ("Timeout expired", "no answer in time"),
        (
            "certificate",
            "TLS: certificate refused (check ca_file, cert_file, key_file)",
        ),
    ] {
        if text.contains(needle) {
            return said.to_string();
        }
    }
    text.chars().take(160).collect()
}

/// From the `from`-th endpoint on, the first one the health checks do not call unhealthy (any,
/// when all are).
fn pick_endpoint(endpoints: &[String], shared: &Mutex<Shared>, from: usize) -> String {
    let unhealthy: Vec<String> = shared
        .lock()
        .unwrap()
        .endpoints
        .iter()
        .filter(|view| !view.healthy)
        .map(|view| view.endpoint.clone())
        .collect();
    let n = endpoints.len();
    (0..n)
        .map(|i| &endpoints[(from + i) % n])
        .find(|e| !unhealthy.contains(e))
        .unwrap_or(&endpoints[from % n])
        .clone()
}

fn parse_record(keys: &Keys, key: &str, value: &[u8]) -> Option<RuleRecord> {
    let rule_key = keys.parse_rule(key)?;
    match serde_json::from_slice::<RuleRecord>(value) {
        Ok(record) if record.key() == rule_key => Some(record),
        Ok(_) => {
            warn!(key, "shared rule whose value names another rule; ignored");
            None
        }
        Err(e) => {
            warn!(key, error = %e, "shared rule that is not a rule record; ignored");
            None
        }
    }
}

fn parse_summary(keys: &Keys, key: &str, value: &[u8]) -> Option<Summary> {
    let node = keys.parse_node(key)?;
    match serde_json::from_slice::<Summary>(value) {
        Ok(summary) if summary.node == node => Some(summary),
        Ok(_) | Err(_) => {
            warn!(key, "node summary that cannot be read; ignored");
            None
        }
    }
}

/// Asks each endpoint alone how it is, now and then, for `cluster status`.
async fn watch_health(
    settings: ClusterSettings,
    options: ConnectOptions,
    shared: Arc<Mutex<Shared>>,
) {
    let mut clients: Vec<Option<Client>> = settings.etcd_endpoints.iter().map(|_| None).collect();
    loop {
        let mut views = Vec::new();
        for (endpoint, client) in settings.etcd_endpoints.iter().zip(clients.iter_mut()) {
            if client.is_none() {
                *client = timed(
                    "connecting",
                    Client::connect([endpoint], Some(options.clone())),
                )
                .await
                .ok();
            }
            let status = match client.as_mut() {
                Some(c) => timed("status", c.status()).await,
                None => Err("cannot connect".to_string()),
            };
            views.push(match status {
                Ok(status) => EndpointView {
                    endpoint: endpoint.clone(),
                    healthy: status.errors().is_empty(),
                    version: Some(status.version().to_string()),
                    leader: status
                        .header()
                        .is_some_and(|h| h.member_id() == status.leader()),
                    error: (!status.errors().is_empty()).then(|| status.errors().join("; ")),
                },
                Err(e) => {
                    *client = None;
                    EndpointView {
                        endpoint: endpoint.clone(),
                        healthy: false,
                        version: None,
                        leader: false,
                        error: Some(e),
                    }
                }
            });
        }
        shared.lock().unwrap().endpoints = views;
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}
