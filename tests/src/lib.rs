//! Test kit for glance-limiter's kernel tests: crafted frames, an independent frame reader,
//! network-namespace guards, a small HTTP server and client that behave like Glance and its
//! users, the real Glance, the `limiter` daemon and CLI for end-to-end tests, a scraper and
//! checker of its Prometheus metrics, a tmux terminal for the live screen, and a real HAProxy
//! in front of Glance with a TLS client, a PROXY-protocol reader and a recording backend;
//! for the cluster: a three-member etcd, a MariaDB shared by several Glance nodes, and the
//! network that joins them behind HAProxy.

pub mod counters;
pub mod daemon;
pub mod etcd;
pub mod flood;
pub mod frames;
pub mod glance;
pub mod haproxy;
pub mod http;
pub mod https;
pub mod mariadb;
pub mod metrics;
pub mod napi;
pub mod netns;
pub mod nft;
pub mod privilege;
pub mod probe;
pub mod proxy_protocol;
pub mod recorder;
pub mod reference;
pub mod rig;
pub mod sockets;
pub mod summary;
pub mod tmpfs;
pub mod tmux;
pub mod wait;
