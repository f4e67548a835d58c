//! Following the configured interfaces through their lifecycle. An XDP attachment belongs to
//! one device (an ifindex), not to a name: when the device is deleted the program leaves with
//! it, and a device re-created under the same name starts without it. The daemon watches
//! rtnetlink link events (and reads the whole link table every second, as a safety net for
//! lost events), and attaches again as soon as a device carries the configured name. The
//! rules live in maps shared by every attachment, so they apply from the first packet.
//!
//! A rename: the attachment stays on the device (the kernel keeps it), but the configured
//! name is what the operator asked to protect. The interface is reported `renamed` (not
//! protected under its name; the metric says 0), and a device that takes the configured name
//! gets the program, while the renamed one is released. Renamed back, it is `attached` again
//! without a new attachment.
//!
//! [`plan`] and the [`Tracked`] transitions are pure (time injected); [`Interfaces`] is the
//! shell: the event channel, the link dump, the loader.

use std::{
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, info, warn};

use crate::{
    control::protocol::{AttachedAs, InterfaceView},
    loader::AttachMode,
    metrics::InterfaceMetric,
    netlink::{self, LinkEvent, LinkMessage},
};

use super::edges::Kernel;

/// How often the whole link table is read even without an event.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where one configured interface stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum State {
    /// The program is on the device of this name, which is up.
    Attached,
    /// The program is on the device, which is administratively down: no traffic arrives.
    Down,
    /// No device has this name; the program re-attaches when one does.
    Missing,
    /// The device went on under another name ([`Tracked::renamed_to`]), still with the
    /// program; none has the configured name.
    Renamed,
    /// A device has the name but attaching failed ([`Tracked::error`]); retried every check.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One configured interface as the daemon follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub name: String,
    pub state: State,
    /// The device the program is attached to, if any.
    pub ifindex: Option<u32>,
    /// The mode of the current attachment, else of the last one.
    pub mode: AttachMode,
    /// Since when the configured name has been without the program (missing, renamed,
    /// failed).
    pub missing_since: Option<SystemTime>,
    pub renamed_to: Option<String>,
    /// The last attachment after the start, and how long the name was unprotected before it.
    pub reattached_at: Option<SystemTime>,
    pub last_gap: Option<Duration>,
    pub reattachments: u64,
    /// Why the last attach failed, while it keeps failing.
    pub error: Option<String>,
}

/// What the link table says about one tracked interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The program's device has the configured name.
    Present { up: bool },
    /// A device has the name that does not have the program: attach to it.
    Attach { ifindex: u32, up: bool },
    /// The program's device has another name now, and no device has the configured one.
    Renamed { to: String },
    /// No device has the name, and the program's device is gone too.
    Gone,
}

/// Pure: what to do for `tracked`, given every link of the namespace.
pub fn plan(tracked: &Tracked, links: &[LinkMessage]) -> Step {
    let named = links
        .iter()
        .find(|l| l.name.as_deref() == Some(tracked.name.as_str()));
    match named {
        Some(link) if Some(link.ifindex) == tracked.ifindex => Step::Present { up: link.is_up() },
        Some(link) => Step::Attach {
            ifindex: link.ifindex,
            up: link.is_up(),
        },
        None => match links
            .iter()
            .find(|l| Some(l.ifindex) == tracked.ifindex)
            .and_then(|l| l.name.clone())
        {
            Some(to) => Step::Renamed { to },
            None => Step::Gone,
        },
    }
}

/// What a transition changed, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    WentDown,
    CameUp,
    Disappeared,
    RenamedTo(String),
    RenamedBack,
}

impl Tracked {
    /// Attached at start to `ifindex`.
    pub fn attached_at_start(name: &str, ifindex: u32, mode: AttachMode, up: bool) -> Self {
        Tracked {
            name: name.to_owned(),
            state: if up { State::Attached } else { State::Down },
            ifindex: Some(ifindex),
            mode,
            missing_since: None,
            renamed_to: None,
            reattached_at: None,
            last_gap: None,
            reattachments: 0,
            error: None,
        }
    }

    /// Whether the program is on a device of the configured name.
    pub fn is_protected(&self) -> bool {
        matches!(self.state, State::Attached | State::Down)
    }

    /// The program's device has the name.
    pub fn present(&mut self, up: bool) -> Change {
        let before = self.state;
        self.state = if up { State::Attached } else { State::Down };
        self.renamed_to = None;
        match before {
            State::Renamed => {
                self.missing_since = None;
                Change::RenamedBack
            }
            State::Attached if !up => Change::WentDown,
            State::Down if up => Change::CameUp,
            _ => Change::None,
        }
    }

    pub fn gone(&mut self, now: SystemTime) -> Change {
        self.ifindex = None;
        self.renamed_to = None;
        self.missing_since.get_or_insert(now);
        if self.state == State::Missing {
            return Change::None;
        }
        self.state = State::Missing;
        Change::Disappeared
    }

    pub fn renamed(&mut self, to: String, now: SystemTime) -> Change {
        self.missing_since.get_or_insert(now);
        if self.state == State::Renamed && self.renamed_to.as_ref() == Some(&to) {
            return Change::None;
        }
        self.state = State::Renamed;
        self.renamed_to = Some(to.clone());
        Change::RenamedTo(to)
    }

    /// Attached to a new device under the name; returns how long the name went without.
    pub fn attached(
        &mut self,
        ifindex: u32,
        mode: AttachMode,
        up: bool,
        now: SystemTime,
    ) -> Option<Duration> {
        let gap = self
            .missing_since
            .take()
            .map(|since| now.duration_since(since).unwrap_or_default());
        self.state = if up { State::Attached } else { State::Down };
        self.ifindex = Some(ifindex);
        self.mode = mode;
        self.renamed_to = None;
        self.reattached_at = Some(now);
        self.last_gap = gap;
        self.reattachments += 1;
        self.error = None;
        gap
    }

    /// Returns whether this error is new (worth a log line; the same one is not repeated).
    pub fn attach_failed(&mut self, error: String, now: SystemTime) -> bool {
        self.missing_since.get_or_insert(now);
        self.state = State::Failed;
        self.ifindex = None;
        let new = self.error.as_ref() != Some(&error);
        self.error = Some(error);
        new
    }

    pub fn view(&self) -> InterfaceView {
        let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        InterfaceView {
            name: self.name.clone(),
            attach_mode: if self.is_protected() || self.state == State::Renamed {
                self.mode.into()
            } else {
                AttachedAs::None
            },
            state: Some(self.state.as_str().to_owned()),
            ifindex: self.ifindex,
            missing_since: self.missing_since.map(time),
            renamed_to: self.renamed_to.clone(),
            reattached_at: self.reattached_at.map(time),
            last_gap_ms: self.last_gap.map(|gap| gap.as_millis() as u64),
            reattachments: self.reattachments,
            error: self.error.clone(),
        }
    }

    pub fn metric(&self) -> InterfaceMetric {
        InterfaceMetric {
            name: self.name.clone(),
            mode: self.mode,
            attached: self.is_protected(),
            reattachments: self.reattachments,
        }
    }
}

/// The configured interfaces, their link events and the periodic check.
pub struct Interfaces {
    tracked: Vec<Tracked>,
    events: Option<mpsc::Receiver<LinkEvent>>,
    _watcher: Option<netlink::Watcher>,
    /// `None`: check at the next call.
    last_check: Option<Instant>,
}

impl Interfaces {
    /// The attachments made at start. Link events are followed once [`Interfaces::watch`]
    /// is called; until then the periodic check alone notices changes.
    pub fn new(tracked: Vec<Tracked>) -> Self {
        Interfaces {
            tracked,
            events: None,
            _watcher: None,
            last_check: None,
        }
    }

    /// One more interface, attached at start to `ifindex`; its link state is read at the
    /// next [`Interfaces::follow`].
    pub fn add(&mut self, tracked: Tracked) {
        self.tracked.retain(|t| t.name != tracked.name);
        self.tracked.push(tracked);
        self.last_check = None;
    }

    /// Subscribes to link events (in this thread's network namespace). Without them (a
    /// failure is logged) the check every second still follows the interfaces.
    pub fn watch(&mut self) {
        let (sender, receiver) = mpsc::channel();
        match netlink::watch(sender) {
            Ok(watcher) => {
                self.events = Some(receiver);
                self._watcher = Some(watcher);
            }
            Err(e) => warn!(
                error = %e,
                "cannot subscribe to link events; interfaces are checked every second instead"
            ),
        }
    }

    pub fn tracked(&self) -> &[Tracked] {
        &self.tracked
    }

    /// Called by the run loop whenever it wakes: reads the link table if an event came or a
    /// second has passed, and acts on it.
    pub fn follow(&mut self, limiter: &mut impl Kernel) {
        let mut changed = false;
        if let Some(events) = &self.events {
            while let Ok(event) = events.try_recv() {
                debug!(?event, "link event");
                changed = true;
            }
        }
        let due = self
            .last_check
            .is_none_or(|last| last.elapsed() >= CHECK_INTERVAL);
        if !changed && !due {
            return;
        }
        self.last_check = Some(Instant::now());
        match netlink::dump_links() {
            Ok(links) => self.reconcile(limiter, &links, SystemTime::now()),
            Err(e) => warn!(error = %e, "cannot read the link table; retrying in a second"),
        }
    }

    fn reconcile(&mut self, limiter: &mut impl Kernel, links: &[LinkMessage], now: SystemTime) {
        for tracked in &mut self.tracked {
            let iface = tracked.name.clone();
            let change = match plan(tracked, links) {
                Step::Present { up } => tracked.present(up),
                Step::Gone => {
                    let change = tracked.gone(now);
                    if change == Change::Disappeared {
                        // The link died with its device; its pin is stale.
                        if let Err(e) = limiter.release(&iface) {
                            warn!(iface, error = %e, "cannot remove the stale pinned attachment");
                        }
                    }
                    change
                }
                Step::Renamed { to } => tracked.renamed(to, now),
                Step::Attach { ifindex, up } => {
                    match limiter.attach_index(&iface, ifindex) {
                        Ok(mode) => {
                            let gap = tracked.attached(ifindex, mode, up, now);
                            info!(
                                iface,
                                ifindex,
                                mode = mode.as_str(),
                                unprotected_ms = gap.map(|g| g.as_millis() as u64),
                                "interface is back: program re-attached; rules apply again"
                            );
                        }
                        Err(e) => {
                            if tracked.attach_failed(e.to_string(), now) {
                                warn!(iface, error = %e, "cannot attach to the interface; retrying every second");
                            }
                        }
                    }
                    Change::None
                }
            };
            log_change(&iface, &change);
        }
    }
}

fn log_change(iface: &str, change: &Change) {
    match change {
        Change::None => {}
        Change::WentDown => warn!(
            iface,
            "interface is down: no traffic arrives; the program stays attached"
        ),
        Change::CameUp => info!(iface, "interface is up again"),
        Change::Disappeared => warn!(
            iface,
            "interface disappeared: the program left with it and nothing is filtered there; \
             it re-attaches when an interface of this name returns"
        ),
        Change::RenamedTo(to) => warn!(
            iface,
            renamed_to = %to,
            "interface renamed: the program stays on the device, but nothing named as \
             configured is protected; a new interface of the configured name gets the program"
        ),
        Change::RenamedBack => info!(iface, "interface has its configured name again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{parse::IFF_UP, LinkChange};

    fn link(ifindex: u32, name: &str, up: bool) -> LinkMessage {
        LinkMessage {
            change: LinkChange::New,
            ifindex,
            name: Some(name.to_owned()),
            flags: if up { IFF_UP } else { 0 },
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn veth() -> Tracked {
        Tracked::attached_at_start("veth-attack", 7, AttachMode::Native, true)
    }

    #[test]
    fn the_same_device_is_present_and_down_up_is_followed() {
        let mut t = veth();
        let links = [link(1, "lo", true), link(7, "veth-attack", false)];
        assert_eq!(plan(&t, &links), Step::Present { up: false });
        assert_eq!(t.present(false), Change::WentDown);
        assert_eq!((t.state, t.is_protected()), (State::Down, true));
        assert_eq!(t.present(true), Change::CameUp);
        assert_eq!(t.present(true), Change::None);
        assert_eq!(t.reattachments, 0);
    }

    #[test]
    fn deleted_then_recreated_under_the_same_name_is_attached_again_with_its_gap() {
        let mut t = veth();
        assert_eq!(plan(&t, &[link(1, "lo", true)]), Step::Gone);
        assert_eq!(t.gone(at(10)), Change::Disappeared);
        assert_eq!(t.gone(at(11)), Change::None, "said once");
        let view = t.view();
        assert_eq!(view.state.as_deref(), Some("missing"));
        assert_eq!(view.attach_mode, AttachedAs::None);
        assert!(view.missing_since.is_some());
        assert!(!t.metric().attached);

        // A new device, a new index: attach to it.
        let links = [link(1, "lo", true), link(12, "veth-attack", false)];
        assert_eq!(
            plan(&t, &links),
            Step::Attach {
                ifindex: 12,
                up: false
            }
        );
        let gap = t.attached(12, AttachMode::Native, false, at(13));
        assert_eq!(gap, Some(Duration::from_secs(3)));
        let view = t.view();
        assert_eq!(view.state.as_deref(), Some("down"));
        assert_eq!((view.ifindex, view.reattachments), (Some(12), 1));
        assert_eq!(view.last_gap_ms, Some(3000));
        assert_eq!(view.missing_since, None);
        assert!(view.reattached_at.is_some());
        assert!(t.metric().attached);
        assert_eq!(plan(&t, &links), Step::Present { up: false });
    }

    #[test]
    fn a_rename_keeps_the_device_and_a_new_device_of_the_name_takes_the_program() {
        let mut t = veth();
        let renamed = [link(7, "veth-x", true)];
        assert_eq!(
            plan(&t, &renamed),
            Step::Renamed {
                to: "veth-x".into()
            }
        );
        assert_eq!(
            t.renamed("veth-x".into(), at(1)),
            Change::RenamedTo("veth-x".into())
        );
        assert_eq!(t.renamed("veth-x".into(), at(2)), Change::None);
        assert_eq!(t.view().renamed_to.as_deref(), Some("veth-x"));
        assert_eq!(
            t.view().attach_mode,
            AttachedAs::Native,
            "still on the device"
        );
        assert!(!t.metric().attached, "not under the configured name");

        // Renamed back: the same attachment, nothing to do.
        assert_eq!(
            plan(&t, &[link(7, "veth-attack", true)]),
            Step::Present { up: true }
        );
        assert_eq!(t.present(true), Change::RenamedBack);
        assert_eq!(
            (t.state, t.missing_since, t.reattachments),
            (State::Attached, None, 0)
        );

        // Renamed away again, and another device takes the name: that one gets the program.
        t.renamed("veth-x".into(), at(3));
        let both = [link(7, "veth-x", true), link(9, "veth-attack", true)];
        assert_eq!(
            plan(&t, &both),
            Step::Attach {
                ifindex: 9,
                up: true
            }
        );
    }

    #[test]
    fn a_failed_attach_is_said_once_and_retried() {
        let mut t = veth();
        t.gone(at(0));
        assert!(t.attach_failed("busy".into(), at(1)));
        assert!(!t.attach_failed("busy".into(), at(2)));
        assert_eq!(t.state, State::Failed);
        assert_eq!(
            t.missing_since,
            Some(at(0)),
            "the gap counts from the disappearance"
        );
        // Still no program on the device: the next check plans an attach again.
        assert_eq!(
            plan(&t, &[link(12, "veth-attack", true)]),
            Step::Attach {
                ifindex: 12,
                up: true
            }
        );
        t.attached(12, AttachMode::Generic, true, at(4));
        assert_eq!(
            (t.error.clone(), t.last_gap),
            (None, Some(Duration::from_secs(4)))
        );
        assert_eq!(t.view().attach_mode, AttachedAs::Generic);
    }
}
