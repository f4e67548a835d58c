//! `limiter`: attach glance-limiter's XDP program to interfaces and report what it counts.
//! The full daemon (policy, rule store, control socket) builds on this; today `run` counts,
//! applies the rules given on the command line, and prints a summary every interval.

use std::{net::IpAddr, thread, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use limiter_common::Counter;
use limiter_user::{
    loader::{Counters, Limiter, LoadOptions},
    rules::{compile, Action, KernelRule, Scope},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "limiter",
    version,
    about = "Protects a Glance API from image-create floods (OSSN-0076) with XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces, count per source, drop blocked sources, print a summary.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Protected TCP port (repeatable).
    #[arg(long = "port", default_values_t = [9292])]
    ports: Vec<u16>,
    /// Block a source address or prefix on the protected ports (repeatable).
    #[arg(long = "block")]
    blocks: Vec<IpNet>,
    /// Exempt a source address or prefix from every block (repeatable).
    #[arg(long = "allow")]
    allows: Vec<IpNet>,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 1)]
    interval: u64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration: Option<u64>,
    /// Sources to list per summary, busiest first.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("LIMITER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> Result<()> {
    if args.ports.contains(&0) {
        bail!("--port 0 is not a TCP port; give ports 1-65535 (Glance listens on 9292)");
    }
    if args.interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let mut limiter = Limiter::load(&LoadOptions::default())?;
    limiter.set_protected_ports(&args.ports)?;
    let rules: Vec<KernelRule> = args
        .blocks
        .iter()
        .map(|net| (net, Action::Block))
        .chain(args.allows.iter().map(|net| (net, Action::Allow)))
        .map(|(net, action)| KernelRule {
            net: *net,
            action,
            scope: Scope::ProtectedPorts,
            expires: None,
        })
        .collect();
    let compiled = compile(&rules, &limiter.clock()?).context("invalid rule")?;
    limiter.apply_rules(&compiled)?;
    for iface in &args.ifaces {
        limiter.attach(iface)?;
    }

    let interval = Duration::from_secs(args.interval);
    let rounds = args.duration.map(|d| d.div_ceil(args.interval));
    let mut previous = limiter.counters()?;
    let mut round = 0;
    while rounds.is_none_or(|r| round < r) {
        thread::sleep(interval);
        round += 1;
        let counters = limiter.counters()?;
        print_summary(&limiter, &counters.since(&previous), interval, args.top)?;
        previous = counters;
    }
    Ok(())
}

fn print_summary(
    limiter: &Limiter,
    delta: &Counters,
    interval: Duration,
    top: usize,
) -> Result<()> {
    let secs = interval.as_secs_f64();
    let mut sources = limiter.sources()?;
    sources.sort_by_key(|s| std::cmp::Reverse(s.stats.packets));
    println!(
        "packets/s {:.0}  protected/s {:.0}  dropped/s {:.0}  sources {}",
        delta.packets() as f64 / secs,
        (delta.get(Counter::PassProtected) + delta.get(Counter::PassAllowed)) as f64 / secs,
        (delta.get(Counter::DropBlocked) + delta.get(Counter::DropBlockedAnyPort)) as f64 / secs,
        sources.len()
    );
    for s in sources.iter().take(top) {
        println!(
            "  {:<40} syns {:>8} image_create {:>8} other_write {:>8} read {:>8} packets {:>10}",
            display(s.addr),
            s.stats.syns,
            s.stats.image_create,
            s.stats.other_write,
            s.stats.read,
            s.stats.packets
        );
    }
    Ok(())
}

fn display(addr: IpAddr) -> String {
    addr.to_string()
}
