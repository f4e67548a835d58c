//! The engine's two edges, as traits: the kernel it programs and reads, and the host it runs
//! on (its clocks and its own addresses). The daemon plugs in the loaded program
//! ([`Limiter`]) and the real host ([`SystemHost`]); the engine's unit tests plug in an
//! in-memory kernel and a clock they move by hand, so bans, expiry and the control requests
//! are checked in milliseconds without root.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Instant, SystemTime},
};

use limiter_common::{BudgetConfig, ProxyRelays};

use crate::{
    clock::KernelClock,
    loader::{self, AttachMode, Counters, CreateOutcomes, Limiter, LoaderError, SourceEntry},
    proxy::ClientHeader,
    rules::CompiledRules,
};

/// What the engine asks of the kernel side: its clock, the tables the program fills, the
/// settings and rules it enforces, and the attachments.
pub trait Kernel {
    /// The kernel's clock (jiffies, HZ) paired with the wall clock now.
    fn clock(&self) -> Result<KernelClock, LoaderError>;
    /// Every row of the source table; a row may come twice, the later reading last.
    fn for_each_source(&self, each: &mut dyn FnMut(SourceEntry)) -> Result<(), LoaderError>;
    /// Each client seen through a trusted proxy → that proxy.
    fn client_via(&self) -> Result<HashMap<IpAddr, IpAddr>, LoaderError>;
    /// Each trusted proxy → what it relayed.
    fn proxy_relays(&self) -> Result<HashMap<IpAddr, ProxyRelays>, LoaderError>;
    /// The global verdict and class counters.
    fn counters(&self) -> Result<Counters, LoaderError>;

    fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), LoaderError>;
    /// The answer sent in Glance's place to a refused client behind a proxy.
    fn set_reject_response(&mut self, hz: u32) -> Result<(), LoaderError>;
    fn set_path_prefixes(&mut self, prefixes: &[String]) -> Result<(), LoaderError>;
    fn set_client_header(&mut self, header: ClientHeader) -> Result<(), LoaderError>;
    fn set_trusted_proxies(&mut self, proxies: &[ipnet::IpNet]) -> Result<(), LoaderError>;
    fn set_image_create_budget(&mut self, budget: Option<BudgetConfig>) -> Result<(), LoaderError>;
    /// Gives the sources within `prefixes` a whole image-create budget again.
    fn forgive_budgets(&mut self, prefixes: &[ipnet::IpNet]) -> Result<usize, LoaderError>;
    /// Makes the program record the creates it passes, for the egress program's counts.
    fn set_response_counting(&mut self, on: bool) -> Result<(), LoaderError>;
    /// Sources with image creates → what became of them (answered, refused over budget).
    fn create_outcomes(&self) -> Result<HashMap<IpAddr, CreateOutcomes>, LoaderError>;
    /// Makes the kernel's tries hold exactly `rules`.
    fn apply_rules(&mut self, rules: &CompiledRules) -> Result<(), LoaderError>;

    /// Attaches to `iface` by name (or adopts its pinned attachment); returns the mode and
    /// the device's index.
    fn attach(&mut self, iface: &str) -> Result<(AttachMode, u32), LoaderError>;
    /// Attaches to the device `ifindex` now known as `iface`, replacing what `iface` had.
    fn attach_index(&mut self, iface: &str, ifindex: u32) -> Result<AttachMode, LoaderError>;
    /// Forgets the attachment of `iface`.
    fn release(&mut self, iface: &str) -> Result<(), LoaderError>;
}

impl Kernel for Limiter {
    fn clock(&self) -> Result<KernelClock, LoaderError> {
        Limiter::clock(self)
    }

    fn for_each_source(&self, each: &mut dyn FnMut(SourceEntry)) -> Result<(), LoaderError> {
        Limiter::for_each_source(self, each)
    }

    fn client_via(&self) -> Result<HashMap<IpAddr, IpAddr>, LoaderError> {
        Limiter::client_via(self)
    }

    fn proxy_relays(&self) -> Result<HashMap<IpAddr, ProxyRelays>, LoaderError> {
        Limiter::proxy_relays(self)
    }

    fn counters(&self) -> Result<Counters, LoaderError> {
        Limiter::counters(self)
    }

    fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), LoaderError> {
        Limiter::set_protected_ports(self, ports)
    }

    fn set_reject_response(&mut self, hz: u32) -> Result<(), LoaderError> {
        Limiter::set_reject_response(self, hz)
    }

    fn set_path_prefixes(&mut self, prefixes: &[String]) -> Result<(), LoaderError> {
        Limiter::set_path_prefixes(self, prefixes)
    }

    fn set_client_header(&mut self, header: ClientHeader) -> Result<(), LoaderError> {
        Limiter::set_client_header(self, header)
    }

    fn set_trusted_proxies(&mut self, proxies: &[ipnet::IpNet]) -> Result<(), LoaderError> {
        Limiter::set_trusted_proxies(self, proxies)
    }

    fn set_image_create_budget(&mut self, budget: Option<BudgetConfig>) -> Result<(), LoaderError> {
        Limiter::set_image_create_budget(self, budget)
    }

    fn set_response_counting(&mut self, on: bool) -> Result<(), LoaderError> {
        Limiter::set_response_counting(self, on)
    }

    fn forgive_budgets(&mut self, prefixes: &[ipnet::IpNet]) -> Result<usize, LoaderError> {
        Limiter::forgive_budgets(self, prefixes)
    }

    fn create_outcomes(&self) -> Result<HashMap<IpAddr, CreateOutcomes>, LoaderError> {
        Limiter::create_outcomes(self)
    }

    fn apply_rules(&mut self, rules: &CompiledRules) -> Result<(), LoaderError> {
        Limiter::apply_rules(self, rules)
    }

    fn attach(&mut self, iface: &str) -> Result<(AttachMode, u32), LoaderError> {
        let mode = Limiter::attach(self, iface)?;
        Ok((mode, loader::if_index(iface)?))
    }

    fn attach_index(&mut self, iface: &str, ifindex: u32) -> Result<AttachMode, LoaderError> {
        Limiter::attach_index(self, iface, ifindex)
    }

    fn release(&mut self, iface: &str) -> Result<(), LoaderError> {
        Limiter::release(self, iface)
    }
}

/// What the engine asks of the host: the time, and the addresses it must never ban.
pub trait Host {
    /// Monotonic time: rates, polls, would-be bans and uptime are measured on it.
    fn now(&self) -> Instant;
    /// Wall time: rule creation and expiry, as stored and shown.
    fn wall(&self) -> SystemTime;
    /// Every address of this node (loopback included).
    fn own_addresses(&self) -> Vec<IpAddr>;
}

/// The machine the daemon runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn own_addresses(&self) -> Vec<IpAddr> {
        super::host::own_addresses()
    }
}
