//! The daemon: attaches (or adopts) the XDP program, polls its counters, turns them into
//! rates and decisions, keeps the rule store and the kernel in step, and serves the control
//! socket.
//!
//! SIGTERM and SIGINT stop the daemon and leave the program attached with its rules pinned:
//! bans keep dropping and expire on time while no daemon runs, and the next start adopts the
//! attachment without a gap. `limiter detach` is what removes it.

mod control_link;
pub mod edges;
mod engine;
#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod fake_edges;
mod host;
mod in_process;
pub mod interfaces;
mod proxied;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tracing::{error, info, warn};

pub use self::engine::{Engine, EngineError, TickReport};
use crate::{
    config::{Config, Overrides},
    control::protocol::{Request, ResponseLine},
    loader::{self, DetachReport, Limiter, LoadOptions},
    metrics::{self, server::MetricsServer, Metrics},
    store::RuleStore,
};

/// Where `limiter run` reads its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/glance-limiter/limiter.toml";

/// What `limiter run` was told on its command line.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--config`; `None` reads the default path if it exists, else the embedded defaults.
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    /// bpffs directory for the pins (`/sys/fs/bpf/glance-limiter`).
    pub pin_dir: PathBuf,
    /// `--tui`: show the live interface on this terminal while the daemon runs.
    pub tui: Option<TuiOptions>,
}

/// The interface inside the daemon. Logs cannot share the screen, so they go to a file.
#[derive(Clone, Debug, Default)]
pub struct TuiOptions {
    /// Default: `limiter.log` in the state directory.
    pub log_file: Option<PathBuf>,
}

/// A control request on its way to the engine thread, with where to send the answer.
pub struct Envelope {
    pub request: Request,
    pub reply: mpsc::Sender<ResponseLine>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = load_config(&options)?;
    if let Some(tui) = &options.tui {
        let log_file = tui
            .log_file
            .clone()
            .unwrap_or_else(|| config.state_dir.join("limiter.log"));
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
        crate::tui::logging::init(Some(&log_file)).map_err(anyhow::Error::msg)?;
    }
    let interfaces = if config.interfaces.is_empty() {
        vec![host::default_route_interface().context(
            "no interface given and no default route to take it from; name one with --iface \
             or `interfaces` in the configuration",
        )?]
    } else {
        config.interfaces.clone()
    };
    let known = host::interface_names();
    for iface in &interfaces {
        if !known.contains(iface) {
            bail!(
                "interface `{iface}` does not exist here; interfaces are: {}",
                known.join(", ")
            );
        }
    }

    // Before anything touches the kernel: a port in use stops the start with nothing changed.
    let metrics = start_metrics(&config, &options)?;

    let store = RuleStore::open(&config.state_dir)?;
    let limiter = Limiter::load_pinned(
        &LoadOptions {
            source_capacity: config.source_capacity,
        },
        &options.pin_dir,
    )?;
    // Ports and rules go into the (possibly adopted) maps before any new attachment, so the
    // program protects from its first packet.
    let mut engine = Engine::new(limiter, store, config.clone())?;
    for iface in &interfaces {
        let mode = engine.attach(iface)?;
        warn_if_answers_cannot_leave(&config, iface, mode);
    }
    warn_if_local_proxy_unseen(&config, &interfaces);
    for stale in loader::pinned_interfaces(&options.pin_dir) {
        if !interfaces.contains(&stale) {
            warn!(iface = %stale, "pinned attachment no longer configured; detaching it");
            let _ = std::fs::remove_file(options.pin_dir.join(format!("link-{stale}")));
        }
    }
    info!(
        interfaces = ?interfaces,
        mode = config.mode.as_str(),
        ports = ?config.ports,
        socket = %config.socket.display(),
        "glance-limiter running"
    );

    // SIGTERM and SIGINT only raise this flag; the loops below poll it.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the SIGTERM/SIGINT handlers")?;
    }
    engine.watch_interfaces();
    let (requests, inbox) = mpsc::channel::<Envelope>();
    let server = control_link::spawn(&config, requests.clone())?;
    let metrics_feed = metrics.as_ref().map(|(metrics, _)| metrics.clone());
    match options.tui {
        None => {
            drive(&mut engine, &inbox, metrics_feed.as_deref(), &stop);
            engine.save_peaks();
        }
        Some(_) => {
            // The terminal belongs to the interface on this thread; the engine moves to its own.
            let engine_stop = Arc::clone(&stop);
            let engine_thread = std::thread::spawn(move || {
                drive(&mut engine, &inbox, metrics_feed.as_deref(), &engine_stop);
                engine.save_peaks();
            });
            let thresholds = crate::tui::settings::Thresholds::from_policy(
                &config.policy,
                "this daemon's configuration",
            );
            let refresh = crate::tui::settings::Refresh::default();
            let timeout = refresh.timeout;
            let (source, sink, _poller) = crate::tui::connect(
                |_| in_process::EngineTransport {
                    requests: requests.clone(),
                    timeout,
                },
                refresh,
            );
            // SIGTERM and SIGINT stop the screen too, not only the engine.
            let shown = crate::tui::run_in_terminal_until(source, sink, thresholds, &stop);
            stop.store(true, Ordering::SeqCst);
            let _ = engine_thread.join();
            shown?;
        }
    }
    drop(server);
    drop(metrics);
    info!("stopped; the program stays attached and its rules keep applying (limiter detach removes them)");
    Ok(())
}

/// The metrics and their listener, when `metrics_listen` (or `--metrics-listen`) asks for them.
fn start_metrics(
    config: &Config,
    options: &RunOptions,
) -> anyhow::Result<Option<(Arc<Metrics>, MetricsServer)>> {
    let Some(listen) = config.metrics_listen else {
        return Ok(None);
    };
    let setting = if options.overrides.metrics_listen.is_some() {
        "--metrics-listen".to_string()
    } else {
        let file = match &options.config {
            Some(path) => path.display().to_string(),
            None => DEFAULT_CONFIG_PATH.to_string(),
        };
        format!("`metrics_listen` in {file}")
    };
    let metrics = Arc::new(Metrics::new());
    let server = metrics::server::spawn(listen, &setting, metrics.clone())?;
    Ok(Some((metrics, server)))
}

/// The engine loop: a poll every interval, control requests in between.
fn drive(
    engine: &mut Engine,
    inbox: &mpsc::Receiver<Envelope>,
    metrics: Option<&Metrics>,
    stop: &AtomicBool,
) {
    let interval = engine.poll_interval();
    let mut next_poll = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // First: an interface that came back gets the program before anything else.
        engine.follow_interfaces();
        let now = Instant::now();
        if now >= next_poll {
            let ticked = engine.tick();
            if let Some(metrics) = metrics {
                metrics.observe_poll(ticked.as_ref().map(|r| r.took).map_err(|_| ()));
                metrics.update(engine.metrics_snapshot());
            }
            match ticked {
                Ok(report) if report.decisions > 0 || report.expired > 0 => info!(
                    rows = report.rows,
                    decisions = report.decisions,
                    expired = report.expired,
                    took_ms = report.took.as_secs_f64() * 1000.0,
                    "poll"
                ),
                Ok(_) => {}
                Err(e) => error!(error = %e, "poll failed; retrying at the next interval"),
            }
            next_poll += interval;
            if next_poll < Instant::now() {
                // Fell behind (a slow poll): skip ahead rather than poll back to back.
                next_poll = Instant::now() + interval;
            }
            continue;
        }
        // Rules other nodes made apply between polls too.
        if engine.cluster().is_some() {
            if let Err(e) = engine.apply_cluster() {
                error!(error = %e, "cannot apply the cluster's rules; retrying");
            }
        }
        // Wake at the next poll, for a request, or soon enough to notice a signal (and, in
        // a cluster, a rule from another node).
        let wake = if engine.cluster().is_some() { 50 } else { 200 };
        let wait = (next_poll - now).min(Duration::from_millis(wake));
        match inbox.recv_timeout(wait) {
            Ok(envelope) => {
                let response = engine.handle(envelope.request);
                let _ = envelope.reply.send(response);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                error!("the control server stopped; stopping");
                break;
            }
        }
    }
}

fn load_config(options: &RunOptions) -> anyhow::Result<Config> {
    let config = match &options.config {
        Some(path) => Config::load(path)?,
        None => Config::load_or_default(Path::new(DEFAULT_CONFIG_PATH))?,
    };
    Ok(config.with_overrides(&options.overrides)?)
}

/// A banned proxied client's request is answered by sending the rewritten frame back out of
/// the interface (XDP_TX). On a veth in native mode the kernel delivers that only if the
/// veth's other end has an XDP program: otherwise the proxy never gets the 429 and waits for
/// its server timeout. Say so at start, with the remedy.
fn warn_if_answers_cannot_leave(config: &Config, iface: &str, mode: loader::AttachMode) {
    if config.trusted_proxies.is_empty() || mode != loader::AttachMode::Native {
        return;
    }
    if host::link_kind(iface).as_deref() == Some("veth") {
        warn!(
            iface,
            "trusted proxies are set and this is a veth in native XDP mode: the 429 sent to a \
             banned client's proxy leaves only if the veth's other end (the host side) has an \
             XDP program; attach a pass-through one there, or the proxy waits for its server \
             timeout (docs/CONFIG.md)"
        );
    }
}

/// A trusted proxy on this host (loopback, or one of the host's own addresses) reaches Glance
/// over `lo`, which the program sees only if attached there: say so rather than count nothing.
fn warn_if_local_proxy_unseen(config: &Config, interfaces: &[String]) {
    if interfaces.iter().any(|i| i == "lo") {
        return;
    }
    let own = host::own_addresses();
    let local = config
        .trusted_proxies
        .iter()
        .find(|proxy| proxy.addr().is_loopback() || own.iter().any(|addr| proxy.contains(addr)));
    if let Some(proxy) = local {
        warn!(
            proxy = %proxy,
            "a trusted proxy is on this host, so it reaches Glance over the loopback interface, \
             which is not attached: add \"lo\" to `interfaces` (docs/OPERATIONS.md, HAProxy on \
             the Glance host)"
        );
    }
}

/// `limiter detach`: removes the pinned attachments and maps. Rules stay in the store, and
/// the next `limiter run` puts them back.
pub fn detach(pin_dir: &Path) -> anyhow::Result<DetachReport> {
    Ok(loader::detach_pinned(pin_dir)?)
}
