//! The real Glance API in a namespace, reached through the XDP program: image creates are
//! counted per source, and a blocked source's creates stop reaching Glance's database.

use std::time::Duration;

use limiter_tests::{
    glance::RealGlance,
    http::{connect_from, request},
    netns::Topology,
};
use limiter_user::{
    loader::{Limiter, LoadOptions},
    rules::{compile, Action, KernelRule, Scope},
};

const GLANCE_PORT: u16 = 9292;
const CREATE: &str = r#"{"name":"t","disk_format":"raw","container_format":"bare"}"#;

#[test]
fn real_glance_creates_are_counted_and_a_block_stops_them() {
    limiter_tests::require_kernel!();
    let topo = Topology::new();
    let glance = RealGlance::start_in(
        &topo.server,
        Topology::SERVER_V4,
        GLANCE_PORT,
        &topo.client,
        Topology::CLIENT_V4[2],
    );
    let mut limiter = Limiter::load(&LoadOptions::default()).unwrap();
    limiter.set_protected_ports(&[GLANCE_PORT]).unwrap();
    topo.server
        .run(|| limiter.attach(topo.server_iface))
        .unwrap();

    let attacker = Topology::CLIENT_V4[0];
    let mut stream = topo
        .client
        .run(|| {
            connect_from(
                attacker,
                Topology::SERVER_V4,
                GLANCE_PORT,
                Duration::from_secs(5),
            )
        })
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            request(&mut stream, "POST", "/v2/images", CREATE).unwrap(),
            201
        );
    }
    assert_eq!(glance.image_count(), 20);
    let row = limiter
        .sources()
        .unwrap()
        .into_iter()
        .find(|r| r.addr.to_string() == attacker)
        .expect("attacker counted");
    assert_eq!(row.stats.image_create, 20);
    assert_eq!(row.stats.syns, 1);

    let rule = KernelRule {
        net: format!("{attacker}/32").parse().unwrap(),
        action: Action::Block,
        scope: Scope::ProtectedPorts,
        expires: None,
    };
    limiter
        .apply_rules(&compile(&[rule], &limiter.clock().unwrap()).unwrap())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(request(&mut stream, "POST", "/v2/images", CREATE).is_err());
    assert_eq!(
        glance.image_count(),
        20,
        "the blocked create never reached Glance"
    );
}
