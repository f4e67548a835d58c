//! The flood benchmarks' set-up: an [`AttackTopology`] whose server receives the attacker's
//! veth on a CPU of its own, and a sender of live frames pinned to another.

use std::{net::IpAddr, time::Duration};

use crate::{
    flood::{mac_of, Flood, Payload, Sender, Sources},
    napi::{self, AutogroupPriority},
    netns::AttackTopology,
};

/// The CPU the flood is sent from; the receiver gets the last one.
pub const SENDER_CPU: usize = 0;

pub struct FloodRig {
    pub topo: AttackTopology,
    pub receiver_cpu: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    _session_priority: AutogroupPriority,
}

impl FloodRig {
    /// Raises the calling thread (and every thread it creates after) and its session to the
    /// highest time-sharing priority for the rig's life (the machine is shared), then builds
    /// the topology with GRO and threaded NAPI on the server's attacker-side veth.
    pub fn new() -> Self {
        napi::raise_priority(0).expect("raise priority (root)");
        let session_priority = AutogroupPriority::raise();
        let receiver_cpu = napi::online_cpus() - 1;
        if receiver_cpu == SENDER_CPU {
            eprintln!(
                "warning: one CPU only: sender and receiver share it, pps is theirs together"
            );
        }
        let topo = AttackTopology::new();
        let server_iface = topo.attacker.server_iface;
        napi::enable_gro(&topo.server, server_iface).expect("GRO on the receiving veth");
        napi::enable_threaded(&topo.server, server_iface).expect("threaded NAPI");
        let dst_mac = topo
            .server
            .run(|| mac_of(server_iface))
            .expect("server MAC");
        let src_iface = topo.attacker.iface;
        let src_mac = topo
            .attacker
            .ns
            .run(|| mac_of(src_iface))
            .expect("attacker MAC");
        FloodRig {
            topo,
            receiver_cpu,
            src_mac,
            dst_mac,
            _session_priority: session_priority,
        }
    }

    /// The receiving veth (in the server namespace).
    pub fn receiver_iface(&self) -> &'static str {
        self.topo.attacker.server_iface
    }

    /// Pins the receiver's NAPI thread(s) to its CPU; after every XDP attach or detach.
    pub fn pin_receiver(&self) -> Vec<i32> {
        napi::pin_receiver(self.receiver_iface(), self.receiver_cpu)
    }

    /// A live-frames flood from the attacker's veth to `dst:port`, sent from [`SENDER_CPU`].
    pub fn flood(
        &self,
        dst: IpAddr,
        port: u16,
        payload: Payload,
        sources: Sources,
        max_packets: u64,
        max_duration: Duration,
    ) -> Flood {
        Flood {
            iface: self.topo.attacker.iface.to_owned(),
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            dst,
            dst_port: port,
            payload,
            sources,
            max_packets,
            max_duration,
            sender: Sender::XdpLiveFrames,
            cpu: Some(SENDER_CPU),
        }
    }
}

impl Default for FloodRig {
    fn default() -> Self {
        Self::new()
    }
}
