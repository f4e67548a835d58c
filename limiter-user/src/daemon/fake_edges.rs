//! An in-memory kernel and a hand-moved clock for the engine's unit tests: the source table
//! is a map the test fills as traffic would, the rules the engine applies are kept and
//! answered the way the XDP program's tries answer them (longest prefix, deadlines in
//! jiffies), and time passes only when the test says so.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    rc::Rc,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use limiter_common::{BudgetConfig, ProxyRelays, SourceStats};

use super::edges::{Host, Kernel};
use crate::{
    clock::KernelClock,
    loader::{AttachMode, Counters, CreateOutcomes, LoaderError, SourceEntry},
    net,
    proxy::ClientHeader,
    rules::CompiledRules,
};

/// Kernel ticks per second in the fake: one per millisecond keeps the arithmetic obvious.
pub const FAKE_HZ: u32 = 1000;

/// The state the engine's kernel and host share with the test.
#[derive(Debug)]
pub struct World {
    instant_zero: Instant,
    wall_zero: SystemTime,
    elapsed: Duration,
    pub own_addresses: Vec<IpAddr>,
    pub sources: BTreeMap<IpAddr, SourceStats>,
    pub rules: Option<CompiledRules>,
    /// How many times the engine replaced the rules.
    pub rule_writes: usize,
    pub ports: Vec<u16>,
    pub trusted_proxies: Vec<IpNet>,
    /// The image-create budget the engine set.
    pub budget: Option<BudgetConfig>,
    /// The prefixes the engine forgave the budgets of, in order.
    pub forgiven: Vec<IpNet>,
    /// Whether the engine asked the program to record creates for the egress counts.
    pub response_counting: bool,
    /// What a test says became of sources' creates.
    pub create_outcomes: HashMap<IpAddr, CreateOutcomes>,
    pub attached: Vec<(String, u32)>,
    /// Makes every call fail, as a kernel that refuses the program's maps would.
    pub failing: bool,
}

impl World {
    fn jiffies(&self) -> u64 {
        // Kernel jiffies do not start at zero; neither do these.
        1_000_000 + self.elapsed.as_millis() as u64 * u64::from(FAKE_HZ) / 1000
    }

    pub fn wall(&self) -> SystemTime {
        self.wall_zero + self.elapsed
    }

    fn check(&self) -> Result<(), LoaderError> {
        if self.failing {
            return Err(LoaderError::Pin {
                path: "/fake".into(),
                detail: "the fake kernel was told to fail".into(),
            });
        }
        Ok(())
    }

    /// Whether a TCP packet from `addr` to a protected port is dropped now: the longest
    /// block prefix in force, unless the longest allow prefix in force covers it.
    pub fn refuses(&self, addr: IpAddr) -> bool {
        let Some(rules) = &self.rules else {
            return false;
        };
        let now = self.jiffies();
        let blocked = longest_match(&rules.block, addr).is_some_and(|b| b.until_protected > now);
        let allowed = longest_match(&rules.allow, addr).is_some_and(|a| a.until > now);
        blocked && !allowed
    }
}

fn longest_match<V>(trie: &BTreeMap<(u32, [u8; 16]), V>, addr: IpAddr) -> Option<&V> {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (0..=max).rev().find_map(|len| {
        let net = IpNet::new(addr, len).expect("a length within the family");
        trie.get(&net::net_to_key(net))
    })
}

/// A handle on the world for the test; the engine holds clones as its kernel and host.
#[derive(Clone, Debug)]
pub struct FakeEdges(Rc<RefCell<World>>);

impl FakeEdges {
    pub fn new() -> Self {
        FakeEdges(Rc::new(RefCell::new(World {
            instant_zero: Instant::now(),
            wall_zero: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            elapsed: Duration::ZERO,
            own_addresses: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            budget: None,
            forgiven: Vec::new(),
            response_counting: false,
            create_outcomes: HashMap::new(),
            sources: BTreeMap::new(),
            rules: None,
            rule_writes: 0,
            ports: Vec::new(),
            trusted_proxies: Vec::new(),
            attached: Vec::new(),
            failing: false,
        })))
    }

    pub fn world(&self) -> std::cell::Ref<'_, World> {
        self.0.borrow()
    }

    pub fn world_mut(&self) -> std::cell::RefMut<'_, World> {
        self.0.borrow_mut()
    }

    pub fn advance(&self, by: Duration) {
        self.0.borrow_mut().elapsed += by;
    }

    /// `creates` image-create requests from `addr`, each on a connection of its own, now.
    pub fn image_creates(&self, addr: IpAddr, creates: u32) {
        self.traffic(addr, |row| {
            row.image_create = row.image_create.wrapping_add(creates);
            row.syns = row.syns.wrapping_add(creates);
            row.packets = row.packets.wrapping_add(creates * 4);
            row.bytes += u64::from(creates) * 600;
        });
    }

    /// `reads` GET requests from `addr` on one connection, now.
    pub fn reads(&self, addr: IpAddr, reads: u32) {
        self.traffic(addr, |row| {
            row.read = row.read.wrapping_add(reads);
            row.packets = row.packets.wrapping_add(reads * 2);
            row.bytes += u64::from(reads) * 300;
        });
    }

    fn traffic(&self, addr: IpAddr, count: impl FnOnce(&mut SourceStats)) {
        let mut world = self.0.borrow_mut();
        let now = world.jiffies();
        let row = world.sources.entry(addr).or_insert(SourceStats {
            first_seen: now,
            ..SourceStats::default()
        });
        row.last_seen = now;
        count(row);
    }

    pub fn refuses(&self, addr: IpAddr) -> bool {
        self.world().refuses(addr)
    }
}

impl Kernel for FakeEdges {
    fn clock(&self) -> Result<KernelClock, LoaderError> {
        let world = self.world();
        world.check()?;
        Ok(KernelClock {
            wall: world.wall(),
            jiffies: world.jiffies(),
            hz: FAKE_HZ,
        })
    }

    fn for_each_source(&self, each: &mut dyn FnMut(SourceEntry)) -> Result<(), LoaderError> {
        let world = self.world();
        world.check()?;
        for (addr, stats) in &world.sources {
            each(SourceEntry {
                addr: *addr,
                stats: *stats,
            });
        }
        Ok(())
    }

    fn client_via(&self) -> Result<HashMap<IpAddr, IpAddr>, LoaderError> {
        self.world().check()?;
        Ok(HashMap::new())
    }

    fn proxy_relays(&self) -> Result<HashMap<IpAddr, ProxyRelays>, LoaderError> {
        self.world().check()?;
        Ok(HashMap::new())
    }

    fn counters(&self) -> Result<Counters, LoaderError> {
        self.world().check()?;
        Ok(Counters::default())
    }

    fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), LoaderError> {
        self.world().check()?;
        self.world_mut().ports = ports.to_vec();
        Ok(())
    }

    fn set_reject_response(&mut self, _hz: u32) -> Result<(), LoaderError> {
        self.world().check()
    }

    fn set_path_prefixes(&mut self, _prefixes: &[String]) -> Result<(), LoaderError> {
        self.world().check()
    }

    fn set_client_header(&mut self, _header: ClientHeader) -> Result<(), LoaderError> {
        self.world().check()
    }

    fn set_trusted_proxies(&mut self, proxies: &[IpNet]) -> Result<(), LoaderError> {
        self.world().check()?;
        self.world_mut().trusted_proxies = proxies.to_vec();
        Ok(())
    }

    fn set_image_create_budget(&mut self, budget: Option<BudgetConfig>) -> Result<(), LoaderError> {
        self.world().check()?;
        self.world_mut().budget = budget;
        Ok(())
    }

    fn set_response_counting(&mut self, on: bool) -> Result<(), LoaderError> {
        self.world().check()?;
        self.world_mut().response_counting = on;
        Ok(())
    }

    fn forgive_budgets(&mut self, prefixes: &[IpNet]) -> Result<usize, LoaderError> {
        self.world().check()?;
        self.world_mut().forgiven.extend_from_slice(prefixes);
        Ok(prefixes.len())
    }

    fn create_outcomes(&self) -> Result<HashMap<IpAddr, CreateOutcomes>, LoaderError> {
        self.world().check()?;
        Ok(self.world().create_outcomes.clone())
    }

    fn apply_rules(&mut self, rules: &CompiledRules) -> Result<(), LoaderError> {
        self.world().check()?;
        let mut world = self.world_mut();
        world.rules = Some(rules.clone());
        world.rule_writes += 1;
        Ok(())
    }

    fn attach(&mut self, iface: &str) -> Result<(AttachMode, u32), LoaderError> {
        let ifindex = 10 + self.world().attached.len() as u32;
        self.attach_index(iface, ifindex)?;
        Ok((AttachMode::Native, ifindex))
    }

    fn attach_index(&mut self, iface: &str, ifindex: u32) -> Result<AttachMode, LoaderError> {
        self.release(iface)?;
        self.world_mut().attached.push((iface.to_owned(), ifindex));
        Ok(AttachMode::Native)
    }

    fn release(&mut self, iface: &str) -> Result<(), LoaderError> {
        self.world().check()?;
        self.world_mut().attached.retain(|(name, _)| name != iface);
        Ok(())
    }
}

impl Host for FakeEdges {
    fn now(&self) -> Instant {
        let world = self.world();
        world.instant_zero + world.elapsed
    }

    fn wall(&self) -> SystemTime {
        self.world().wall()
    }

    fn own_addresses(&self) -> Vec<IpAddr> {
        self.world().own_addresses.clone()
    }
}
