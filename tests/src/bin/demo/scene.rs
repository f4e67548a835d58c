//! Where the demo happens, by the way its clients reach Glance: directly (`AttackTopology`:
//! Glance's node with a link to each client network), or through HAProxy (`ProxyTopology`:
//! a load balancer's namespace between the client networks and Glance's node, with HAProxy
//! 2.6 in it: a TLS frontend, `option forwardfor`, health checks; the daemon on Glance's node
//! trusts HAProxy's backend address and counts each request for the client HAProxy names).

use std::time::Duration;

use limiter_tests::{
    daemon::DaemonSetup,
    glance::RealGlance,
    haproxy::{HaProxy, HaProxyConfig},
    napi,
    netns::{AttackTopology, Netns, ProxyTopology},
};

pub const GLANCE_PORT: u16 = 9292;
/// HAProxy's frontend port (as kolla and OpenStack-Ansible have it: Glance's own).
pub const FRONTEND_PORT: u16 = 9292;
/// HAProxy's first health check comes within its `inter` (2 s).
const HAPROXY_UP_DEADLINE: Duration = Duration::from_secs(10);
/// The load balancer's end of its link to Glance's node (see `ProxyTopology::new`).
const LB_GLANCE_IFACE: &str = "veth-glance";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The clients connect to Glance itself.
    Direct,
    /// The clients connect to HAProxy's TLS frontend, HAProxy to Glance.
    HaProxy,
}

/// HAProxy's two addresses.
#[derive(Clone, Copy, Debug)]
pub struct HaProxyCast {
    /// Where the clients connect (TLS).
    pub frontend: &'static str,
    /// Where Glance's node sees HAProxy's connections come from: the trusted proxy.
    pub backend: &'static str,
}

/// Who is who: the addresses the story names.
#[derive(Clone, Copy, Debug)]
pub struct Cast {
    pub attacker: &'static str,
    pub legit: &'static str,
    /// Glance's address on its node.
    pub glance: &'static str,
    pub haproxy: Option<HaProxyCast>,
}

impl Cast {
    pub const fn of(route: Route) -> Cast {
        match route {
            Route::Direct => Cast {
                attacker: AttackTopology::ATTACKER_V4[0],
                legit: AttackTopology::LEGIT_V4[0],
                glance: AttackTopology::SERVER_V4,
                haproxy: None,
            },
            // The legitimate client on the frontend's link, the attacker on the other
            // network behind the load balancer.
            Route::HaProxy => Cast {
                attacker: ProxyTopology::CLIENT_B_V4[0],
                legit: ProxyTopology::CLIENT_A_V4[0],
                glance: ProxyTopology::GLANCE_V4,
                haproxy: Some(HaProxyCast {
                    frontend: ProxyTopology::FRONTEND_V4,
                    backend: ProxyTopology::LB_BACKEND_V4,
                }),
            },
        }
    }
}

/// Where a client sends its requests.
#[derive(Clone, Debug)]
pub enum Target {
    /// Glance itself, plain HTTP, at this address and [`GLANCE_PORT`].
    Glance(&'static str),
    /// HAProxy's TLS frontend, `ADDR:PORT`.
    HaProxy(String),
}

/// One client: its namespace, its source address, where it sends.
pub struct Client<'a> {
    pub ns: &'a Netns,
    pub src: &'static str,
    pub target: Target,
}

enum Network {
    Direct(AttackTopology),
    Proxied {
        /// The load balancer's end of the link to Glance carries a pass-everything program
        /// (declared first: detached before the namespaces go).
        _pass: napi::XdpPass,
        topo: ProxyTopology,
    },
}

/// The namespaces and who is in them; removed on drop.
pub struct Scene {
    pub cast: Cast,
    network: Network,
}

impl Scene {
    pub fn new(route: Route) -> Self {
        let network = match route {
            Route::Direct => Network::Direct(AttackTopology::new()),
            Route::HaProxy => {
                let topo = ProxyTopology::new();
                // The limiter answers a banned client's request with a 429 sent back out of
                // the link it came in on (XDP_TX); over a veth, that needs a program on the
                // load balancer's end too (see `napi::xdp_pass`; a NIC does not).
                let pass = napi::xdp_pass(&topo.lb, LB_GLANCE_IFACE);
                Network::Proxied { _pass: pass, topo }
            }
        };
        Scene {
            cast: Cast::of(route),
            network,
        }
    }

    /// Glance on its node, once `/healthcheck` answers (before the daemon counts anything).
    pub fn start_glance(&self) -> RealGlance {
        match &self.network {
            Network::Direct(topo) => RealGlance::start_for(topo, GLANCE_PORT),
            Network::Proxied { topo, .. } => RealGlance::start_bound(
                &topo.glance,
                "::",
                GLANCE_PORT,
                &topo.lb,
                ProxyTopology::LB_BACKEND_V4,
                ProxyTopology::GLANCE_V4,
            ),
        }
    }

    /// HAProxy, once it accepts on its frontend and its health check sees Glance up; `None`
    /// without a proxy.
    pub fn start_haproxy(&self) -> Option<HaProxy> {
        let Network::Proxied { topo, .. } = &self.network else {
            return None;
        };
        let haproxy = HaProxyConfig::new()
            .bind(&self.frontend())
            .server(&format!("{}:{GLANCE_PORT}", ProxyTopology::GLANCE_V4))
            .health_checks(true)
            .start(&topo.lb);
        haproxy.wait_server_state("glance1", "UP", HAPROXY_UP_DEADLINE);
        Some(haproxy)
    }

    /// The daemon on Glance's node: on every link it has, trusting HAProxy if there is one.
    pub fn daemon_setup(&self) -> DaemonSetup {
        match &self.network {
            Network::Direct(topo) => DaemonSetup::new(&topo.server, &topo.server_ifaces()),
            Network::Proxied { topo, .. } => {
                DaemonSetup::new(&topo.glance, &[ProxyTopology::GLANCE_IFACE])
                    .trusted_proxy(ProxyTopology::LB_BACKEND_V4)
            }
        }
    }

    pub fn legit(&self) -> Client<'_> {
        let src = self.cast.legit;
        match &self.network {
            Network::Direct(topo) => Client {
                ns: &topo.legit.ns,
                src,
                target: Target::Glance(topo.legit.server_addr_for(src)),
            },
            Network::Proxied { topo, .. } => Client {
                ns: &topo.client_a.ns,
                src,
                target: Target::HaProxy(self.frontend()),
            },
        }
    }

    pub fn attacker(&self) -> Client<'_> {
        let src = self.cast.attacker;
        match &self.network {
            Network::Direct(topo) => Client {
                ns: &topo.attacker.ns,
                src,
                target: Target::Glance(topo.attacker.server_addr_for(src)),
            },
            Network::Proxied { topo, .. } => Client {
                ns: &topo.client_b.ns,
                src,
                target: Target::HaProxy(self.frontend()),
            },
        }
    }

    /// Every namespace's name (the report lists them, and the CI test checks they are gone).
    pub fn namespaces(&self) -> Vec<String> {
        let all: Vec<&Netns> = match &self.network {
            Network::Direct(topo) => vec![&topo.server, &topo.attacker.ns, &topo.legit.ns],
            Network::Proxied { topo, .. } => {
                vec![&topo.glance, &topo.lb, &topo.client_a.ns, &topo.client_b.ns]
            }
        };
        all.into_iter().map(|ns| ns.name().to_owned()).collect()
    }

    fn frontend(&self) -> String {
        let haproxy = self.cast.haproxy.expect("a scene with HAProxy");
        format!("{}:{FRONTEND_PORT}", haproxy.frontend)
    }
}
