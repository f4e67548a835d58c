//! The summed rates of every source of one prefix (an IPv4 /24, an IPv6 /64 by default):
//! what the `[policy.prefix]` thresholds compare (pure: time is passed in).
//!
//! A flood spread over many hosts of one network (sixteen hosts of a /28, each just under the
//! per-host threshold) is invisible host by host; its prefix's sum is not. The sums are kept
//! the way a host's rates are: each prefix is a source of a [`RateTracker`] of its own, fed
//! cumulative counts that are the running total of what its sources' rates recorded. So a
//! prefix's windows hold exactly what its sources' windows hold, idle sources included (a
//! host that created 59 images in the last minute and none since still counts its 59), at
//! the cost of one hash update per active source, and only for the sources whose increase
//! touches a metric with a prefix threshold.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;

use crate::{
    metric::Metric,
    net,
    policy_config::PolicyConfig,
    rates::{Counts, RateTracker, Rates},
};

/// Sources remembered per prefix, to name the biggest and to leave banned ones out of its sum:
/// a prefix with more contributors than this is a flood spread so wide that the few banned
/// hosts among them do not matter.
pub const MEMBERS_PER_PREFIX: usize = 4096;

#[derive(Debug)]
pub struct PrefixRates {
    ipv4_len: u8,
    ipv6_len: u8,
    tracker: RateTracker,
    /// Running totals per prefix, since the daemon started (monotonic: increases only).
    totals: HashMap<IpNet, Counts>,
    /// Prefixes that grew this poll: only they are handed to the tracker (the others were
    /// idle, as the daemon leaves idle sources out).
    grown: HashSet<IpNet>,
    /// Which increases matter: SYNs, image creates, other writes (those with a threshold).
    wanted: [bool; 3],
    /// The sources that added to each prefix: a prefix over its limit names them without a
    /// pass over every tracked source.
    members: HashMap<IpNet, HashSet<IpAddr>>,
}

impl PrefixRates {
    /// The sums `policy`'s prefix thresholds need, over its aggregation prefixes; `None`
    /// when no prefix threshold is set.
    pub fn for_policy(policy: &PolicyConfig, max_prefixes: usize) -> Option<Self> {
        let on = |metrics: &[Metric]| {
            metrics
                .iter()
                .any(|m| policy.prefix.threshold(*m).is_some())
        };
        let wanted = [
            on(&[Metric::NewConnectionsPerSecond]),
            on(&[Metric::ImageCreatesPerMinute, Metric::ImageCreatesPerHour]),
            on(&[Metric::OtherWritesPerMinute]),
        ];
        wanted.contains(&true).then(|| PrefixRates {
            wanted,
            ..PrefixRates::new(
                policy.aggregate_ipv4_prefix,
                policy.aggregate_ipv6_prefix,
                max_prefixes,
            )
        })
    }

    /// Prefixes of `ipv4_len` and `ipv6_len` bits, every increase summed; at most
    /// `max_prefixes` tracked.
    pub fn new(ipv4_len: u8, ipv6_len: u8, max_prefixes: usize) -> Self {
        let mut tracker = RateTracker::new(max_prefixes);
        // The tracker's first poll is a baseline that records nothing; the totals start at
        // zero with the daemon, so there is nothing to take a baseline of.
        tracker.observe(Duration::ZERO, []);
        PrefixRates {
            ipv4_len,
            ipv6_len,
            tracker,
            totals: HashMap::new(),
            grown: HashSet::new(),
            wanted: [true; 3],
            members: HashMap::new(),
        }
    }

    /// The prefix `addr` belongs to; `None` for an address whose prefix would reach into the
    /// IPv4-mapped range (such a prefix cannot be a rule).
    pub fn prefix_of(&self, addr: IpAddr) -> Option<IpNet> {
        let addr = addr.to_canonical();
        let len = match addr {
            IpAddr::V4(_) => self.ipv4_len,
            IpAddr::V6(_) => self.ipv6_len,
        };
        let prefix = IpNet::new(addr, len).ok()?.trunc();
        match prefix {
            IpNet::V6(v6) if net::overlaps_ipv4_mapped(&v6) => None,
            _ => Some(prefix),
        }
    }

    /// What one source's rates recorded this poll. Cheap for an increase no prefix
    /// threshold looks at: nothing is done.
    pub fn add(&mut self, addr: IpAddr, increase: &Counts) {
        let [syns, creates, writes] = self.wanted;
        let matters = (syns && increase.syns > 0)
            || (creates && increase.image_create > 0)
            || (writes && increase.other_write > 0);
        if !matters {
            return;
        }
        let Some(prefix) = self.prefix_of(addr) else {
            return;
        };
        let total = self.totals.entry(prefix).or_default();
        total.syns += increase.syns;
        total.image_create += increase.image_create;
        total.other_write += increase.other_write;
        total.read += increase.read;
        total.packets += increase.packets;
        total.bytes += increase.bytes;
        self.grown.insert(prefix);
        let members = self.members.entry(prefix).or_default();
        if members.len() < MEMBERS_PER_PREFIX {
            members.insert(addr.to_canonical());
        }
    }

    /// Ends the poll at `now` (the clock the source tracker is given): the prefixes that grew
    /// are observed, and the totals of those the tracker forgot are dropped with them.
    pub fn end_poll(&mut self, now: Duration) {
        let grown: Vec<(IpAddr, Counts)> = self
            .grown
            .drain()
            .map(|prefix| (prefix.network(), self.totals[&prefix]))
            .collect();
        let summary = self.tracker.observe(now, grown);
        if summary.forgotten_idle + summary.forgotten_over_capacity > 0 {
            let tracker = &self.tracker;
            self.totals
                .retain(|prefix, _| tracker.rates(prefix.network()).is_some());
            let totals = &self.totals;
            self.members.retain(|prefix, _| totals.contains_key(prefix));
        }
    }

    /// Every prefix with its summed figures, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, Rates)> + '_ {
        self.totals.keys().filter_map(|prefix| {
            let rates = self.tracker.rates(prefix.network())?;
            Some((*prefix, rates))
        })
    }

    /// The sources that added to `prefix` since it was first seen (or last forgotten), up to
    /// [`MEMBERS_PER_PREFIX`].
    pub fn members(&self, prefix: IpNet) -> impl Iterator<Item = IpAddr> + '_ {
        self.members.get(&prefix).into_iter().flatten().copied()
    }

    pub fn rates(&self, prefix: IpNet) -> Option<Rates> {
        self.totals.get(&prefix)?;
        self.tracker.rates(prefix.network())
    }

    pub fn len(&self) -> usize {
        self.totals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn creates(n: u64) -> Counts {
        Counts {
            image_create: n,
            ..Counts::default()
        }
    }

    /// Feeds one poll at second `at`: each source's recorded increase, as the engine does.
    fn poll(sources: &mut RateTracker, prefixes: &mut PrefixRates, at: u64, rows: &[(&str, u64)]) {
        let mut poll = sources.begin_poll(Duration::from_secs(at));
        for (addr, total) in rows {
            let (_, increase) =
                sources.observe_source_counted(&mut poll, ip(addr), creates(*total));
            prefixes.add(ip(addr), &increase);
        }
        sources.end_poll(poll);
        prefixes.end_poll(Duration::from_secs(at));
    }

    #[test]
    fn a_prefix_sums_its_sources_idle_ones_included() {
        let mut sources = RateTracker::new(100);
        let mut prefixes = PrefixRates::new(24, 64, 100);
        poll(
            &mut sources,
            &mut prefixes,
            0,
            &[("198.51.100.2", 0), ("198.51.100.3", 0)],
        );
        poll(
            &mut sources,
            &mut prefixes,
            1,
            &[
                ("198.51.100.2", 30),
                ("198.51.100.3", 20),
                ("203.0.113.9", 5),
            ],
        );
        // .2 goes quiet (left out, as the daemon leaves out idle rows); .3 goes on.
        poll(&mut sources, &mut prefixes, 2, &[("198.51.100.3", 45)]);
        let prefix: IpNet = "198.51.100.0/24".parse().unwrap();
        let rates = prefixes.rates(prefix).unwrap();
        assert_eq!(rates.image_creates_last_minute, 30 + 45);
        assert_eq!(rates.image_creates_last_hour, 30 + 45);
        let other = prefixes.rates("203.0.113.0/24".parse().unwrap()).unwrap();
        assert_eq!(
            other.image_creates_last_minute, 5,
            "a row new since the last poll counts whole"
        );
        assert_eq!(prefixes.len(), 2);
        let mut members: Vec<IpAddr> = prefixes.members(prefix).collect();
        members.sort();
        assert_eq!(members, [ip("198.51.100.2"), ip("198.51.100.3")]);
        // A minute later, with no more creates, the minute's sum is gone, the hour's is not.
        poll(&mut sources, &mut prefixes, 63, &[]);
        let rates = prefixes.rates(prefix).unwrap();
        assert_eq!(rates.image_creates_last_minute, 0);
        assert_eq!(rates.image_creates_last_hour, 75);
    }

    #[test]
    fn ipv6_sources_sum_to_their_64_and_mapped_ones_to_ipv4() {
        let prefixes = PrefixRates::new(24, 64, 10);
        assert_eq!(
            prefixes.prefix_of(ip("2001:db8:1:2:3::9")),
            Some("2001:db8:1:2::/64".parse().unwrap())
        );
        assert_eq!(
            prefixes.prefix_of(ip("::ffff:198.51.100.7")),
            Some("198.51.100.0/24".parse().unwrap())
        );
        assert_eq!(
            prefixes.prefix_of(ip("::ffff:0:1")),
            Some("0.0.0.0/24".parse().unwrap())
        );
    }

    #[test]
    fn prefixes_idle_for_an_hour_are_forgotten_with_their_totals() {
        let mut sources = RateTracker::new(100);
        let mut prefixes = PrefixRates::new(24, 64, 100);
        poll(&mut sources, &mut prefixes, 0, &[("198.51.100.2", 0)]);
        poll(&mut sources, &mut prefixes, 1, &[("198.51.100.2", 10)]);
        assert_eq!(prefixes.len(), 1);
        poll(&mut sources, &mut prefixes, 3700, &[]);
        assert!(prefixes.is_empty());
        assert_eq!(
            prefixes.members("198.51.100.0/24".parse().unwrap()).count(),
            0
        );
    }
}
