use limiter_tests::{flood::*, napi, netns::AttackTopology};
use limiter_user::loader::{Limiter, LoadOptions};
use std::time::Duration;

#[test]
#[ignore]
fn distinct_sources() {
    let topo = AttackTopology::new();
    let server_iface = topo.attacker.server_iface;
    let dst_mac = topo.server.run(|| mac_of(server_iface)).unwrap();
    let src_mac = topo
        .attacker
        .ns
        .run(|| mac_of(topo.attacker.iface))
        .unwrap();
    for sender in [Sender::XdpLiveFrames, Sender::PacketSocket] {
        let mut limiter = Limiter::load(&LoadOptions {
            source_capacity: 65536,
        })
        .unwrap();
        limiter.set_protected_ports(&[9292]).unwrap();
        topo.server.run(|| limiter.attach(server_iface)).unwrap();
        let f = Flood {
            iface: topo.attacker.iface.into(),
            src_mac,
            dst_mac,
            dst: "2001:db8:100::1".parse().unwrap(),
            dst_port: 9292,
            payload: Payload::Syn,
            sources: Sources::Range {
                first: "2001:db8:1::".parse().unwrap(),
                count: 4096,
            },
            max_packets: 4096 * 4,
            max_duration: Duration::from_secs(5),
            sender,
            cpu: None,
        };
        let r = f.spawn_in(&topo.attacker.ns).join().unwrap();
        let rows = limiter.sources_batched().unwrap();
        let mut lows: Vec<u32> = rows
            .iter()
            .map(|r| {
                let o = match std::net::IpAddr::from(r.addr) {
                    std::net::IpAddr::V6(a) => a.octets(),
                    _ => [0; 16],
                };
                u32::from_be_bytes([o[12], o[13], o[14], o[15]])
            })
            .collect();
        lows.sort();
        let pk: u64 = rows.iter().map(|r| r.stats.packets).sum();
        eprintln!(
            "{sender:?}: sent {} rows {} packets {} first {:?} last {:?}",
            r.sent,
            rows.len(),
            pk,
            &lows[..5.min(lows.len())],
            &lows[lows.len().saturating_sub(5)..]
        );
    }
}
