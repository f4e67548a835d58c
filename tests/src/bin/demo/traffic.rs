//! The demo's two clients, each on a thread inside its own namespace and each bounded in
//! requests and time: a legitimate user who lists images every second and creates one every
//! third second, and an attacker who, after a quiet start, floods image creates over one
//! keep-alive connection. Each talks to Glance directly, or over TLS to HAProxy's frontend
//! (see `scene`). Their tallies are live, so the main loop can sample them.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    http::{connect_from, request, ImageCreateClient},
    https::HttpsClient,
};
use serde::Serialize;

use crate::scene::{Client, Scene, Target, GLANCE_PORT};

/// Image names tell the two clients' rows apart in Glance's database.
pub const ATTACKER_IMAGE: &str = "demo-attacker";
pub const LEGIT_IMAGE: &str = "demo-legit";
/// What the limiter answers a banned client's request with when a trusted proxy relays it.
pub const TOO_MANY_REQUESTS: u16 = 429;
/// The `X-Auth-Token` both clients send through HAProxy, as OpenStack clients send a Keystone
/// token (a Fernet token is 180 to 250 characters); Glance here runs without Keystone and
/// ignores it. It matters to the story: HAProxy may forward a request's headers in a segment
/// of their own, the body after them, and the limiter rewrites that segment in place into its
/// 429. On a veth (not on a NIC) the segment's buffer has no room to grow, so a header block
/// shorter than the 429 (about 250 bytes) cannot be answered and is dropped instead, which
/// stalls that request until a timeout. A realistic token keeps every header block longer.
const AUTH_TOKEN: &str =
    "gAAAAABnDemoTokenOfTheGlanceLimiterDemo0123456789abcdefghijklmnopqrstuvwxyz\
                          ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ\
                          KLMNOPQRSTUVWXYZ0123456789-_";

/// How long a legitimate request may take: Glance under a flood answers slowly, and a slow
/// answer is not a refusal.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The attacker's bound, far above what it can send in any demo's duration.
const MAX_ATTACK_REQUESTS: u64 = 20_000;
/// How long the attacker waits for an answer through HAProxy: a 429 comes at once, and
/// anything slower (HAProxy waiting on a backend) should not hold the demo's end for
/// HAProxy's 30 s server timeout.
const ATTACK_TIMEOUT_VIA_PROXY: Duration = Duration::from_secs(5);

/// What the clients do and when.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The attacker starts this long after the legitimate client, so the screen first shows
    /// normal use.
    pub attack_after: Duration,
    /// The attacker's pace: a create every this long (Glance here manages 46–92 a second).
    pub attack_every: Duration,
    /// The legitimate client's pace: one request every this long ...
    pub legit_every: Duration,
    /// ... of which every n-th creates an image and the others list images.
    pub legit_create_each: u64,
    /// Everything stops at the latest after this long.
    pub duration: Duration,
}

impl Plan {
    pub fn attack_per_second(&self) -> f64 {
        1.0 / self.attack_every.as_secs_f64()
    }

    pub fn legit_creates_per_minute(&self) -> f64 {
        60.0 / (self.legit_every.as_secs_f64() * self.legit_create_each as f64)
    }
}

/// Requests answered with 2xx, and those that failed (no answer, or another status); of
/// these, those answered 429.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
}

impl Tally {
    fn record(&self, status: Option<u16>) {
        let counter = if status.is_some_and(|s| (200..300).contains(&s)) {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if status == Some(TOO_MANY_REQUESTS) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ok: u64,
    /// Every request that did not get a 2xx ...
    pub failed: u64,
    /// ... of which those answered `429 Too Many Requests` (counted in `failed` too).
    pub throttled: u64,
}

/// Every tally at one instant, cumulative since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficCounts {
    pub attacker_creates: Counts,
    pub legit_creates: Counts,
    pub legit_reads: Counts,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    attacker: Arc<Tally>,
    legit_creates: Arc<Tally>,
    legit_reads: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(scene: &Scene, plan: Plan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (attacker, legit_creates, legit_reads) = Default::default();
        let mut traffic = Traffic {
            stop,
            attacker,
            legit_creates,
            legit_reads,
            threads: Vec::new(),
        };
        let deadline = Instant::now() + plan.duration;
        traffic
            .threads
            .push(spawn_legit(scene.legit(), &traffic, plan, deadline));
        traffic
            .threads
            .push(spawn_attacker(scene.attacker(), &traffic, plan, deadline));
        traffic
    }

    pub fn counts(&self) -> TrafficCounts {
        TrafficCounts {
            attacker_creates: self.attacker.counts(),
            legit_creates: self.legit_creates.counts(),
            legit_reads: self.legit_reads.counts(),
        }
    }

    /// Stops both clients and waits for them (a request in flight ends within its timeout).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().ok();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_legit(
    client: Client<'_>,
    traffic: &Traffic,
    plan: Plan,
    deadline: Instant,
) -> thread::JoinHandle<()> {
    let (stop, creates, reads) = (
        traffic.stop.clone(),
        traffic.legit_creates.clone(),
        traffic.legit_reads.clone(),
    );
    let (src, target) = (client.src, client.target);
    let body = create_body(LEGIT_IMAGE);
    client.ns.spawn(move || {
        let begun = Instant::now();
        for n in 0.. {
            if !sleep_until(begun + plan.legit_every * n, deadline, &stop) {
                return;
            }
            if u64::from(n) % plan.legit_create_each == 0 {
                creates.record(exchange(src, &target, "POST", "/v2/images", &body));
            } else {
                reads.record(exchange(src, &target, "GET", "/v2/images", ""));
            }
        }
    })
}

/// One request on a connection of its own, so that every request also shows its SYN (and,
/// through HAProxy, its TLS handshake) gets through: the status, or `None` for no answer.
fn exchange(src: &str, target: &Target, method: &str, path: &str, body: &str) -> Option<u16> {
    match target {
        Target::Glance(dst) => {
            let mut stream = connect_from(src, dst, GLANCE_PORT, LEGIT_TIMEOUT).ok()?;
            request(&mut stream, method, path, body).ok()
        }
        Target::HaProxy(frontend) => HttpsClient::new(src, frontend)
            .header("X-Auth-Token", AUTH_TOKEN)
            .keep_alive(false)
            .io_timeout(LEGIT_TIMEOUT)
            .request(method, path, body)
            .ok()
            .map(|response| response.status),
    }
}

fn spawn_attacker(
    client: Client<'_>,
    traffic: &Traffic,
    plan: Plan,
    deadline: Instant,
) -> thread::JoinHandle<()> {
    let (stop, tally) = (traffic.stop.clone(), traffic.attacker.clone());
    let (src, target) = (client.src, client.target);
    client.ns.spawn(move || {
        let mut flooder = Flooder::new(src, &target, &create_body(ATTACKER_IMAGE));
        let mut next = Instant::now() + plan.attack_after;
        for _ in 0..MAX_ATTACK_REQUESTS {
            if !sleep_until(next, deadline, &stop) {
                return;
            }
            // Paced from the previous start: a dropped request waits out its timeout, and the
            // ones after it do not catch up in a burst.
            next = Instant::now() + plan.attack_every;
            tally.record(flooder.create());
        }
    })
}

/// The attacker's client: image creates on one keep-alive connection, a new one after the
/// server closed it (a 429 closes it) or a request got no answer.
enum Flooder {
    Direct(ImageCreateClient),
    HaProxy { client: HttpsClient, body: String },
}

impl Flooder {
    fn new(src: &str, target: &Target, body: &str) -> Self {
        match target {
            Target::Glance(dst) => {
                Flooder::Direct(ImageCreateClient::new(src, dst, GLANCE_PORT, body))
            }
            Target::HaProxy(frontend) => Flooder::HaProxy {
                client: HttpsClient::new(src, frontend)
                    .header("X-Auth-Token", AUTH_TOKEN)
                    .io_timeout(ATTACK_TIMEOUT_VIA_PROXY),
                body: body.to_owned(),
            },
        }
    }

    fn create(&mut self) -> Option<u16> {
        match self {
            Flooder::Direct(client) => client.create(),
            Flooder::HaProxy { client, body } => client
                .request("POST", "/v2/images", body)
                .ok()
                .map(|response| response.status),
        }
    }
}

/// Sleeps until `at`; `false` (at once) if `stop` is raised or `deadline` comes first.
fn sleep_until(at: Instant, deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if now >= at {
            return true;
        }
        thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

fn create_body(name: &str) -> String {
    format!(r#"{{"name":"{name}","disk_format":"raw","container_format":"bare"}}"#)
}
