//! Owns the loaded XDP program: loads it, attaches it to interfaces, runs it on test frames,
//! and hands out typed views of its maps. Nothing outside this module touches raw map bytes.

mod batch;
mod creates;
mod egress;
mod maps;
mod migrate;
mod pins;
mod proxy;

use std::time::Duration;

use aya::{
    maps::{MapData, ProgramArray},
    programs::{xdp::XdpLinkId, ProgramError, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::OnceLock,
    thread,
    time::{Instant, SystemTime},
};

use limiter_common::{
    maps::Capacity, ProxyRelays, CLIENT_PROGRAM_NAME, CLIENT_VIA_MAP, CLOCK_PROBE_NAME,
    CREATE_PROGRAM_NAME, DEFAULT_SOURCE_CAPACITY, PROGRAM_NAME, PROXY_PROGRAMS_MAP,
    PROXY_PROGRAM_NAME, RESPONSES_PROGRAM_NAME, SOURCES_MAP,
};
use tracing::{info, warn};

pub use self::batch::{BatchError, DEFAULT_BATCH_CHUNK, PARALLEL_BATCH_MIN_ENTRIES};
pub use self::{creates::CreateOutcomes, migrate::upgraded};
pub use self::{
    maps::{Counters, SourceEntry},
    pins::{detach_pinned, pinned_interfaces, DetachReport, DEFAULT_PIN_DIR, PINNED_MAPS},
    proxy::{reject_template, RETRY_AFTER_NEVER_SECS},
};
use crate::{
    clock::{self, KernelClock},
    ebpf_objects,
    rules::CompiledRules,
};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "loading the BPF object failed: {0}; glance-limiter needs root (CAP_BPF, CAP_NET_ADMIN) \
         and a kernel with BPF and BTF"
    )]
    Load(#[source] EbpfError),
    #[error("the BPF object has no program `{0}`; the build embedded the wrong object")]
    MissingProgram(&'static str),
    #[error("the kernel refused program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "cannot attach to interface `{iface}` in native or generic XDP mode: {source}; check \
         that the interface exists (`ip link show {iface}`) and has no other XDP program"
    )]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("{op} on map {map} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("invalid protected port 0: ports are 1-65535")]
    PortZero,
    #[error("invalid Glance path prefixes: {0}")]
    PathPrefixes(String),
    #[error("bpffs pin {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error(
        "pinned map {path} does not fit this version ({detail}); run `limiter detach` to \
         remove the old pins (rules are restored from the rule store), then start again"
    )]
    IncompatiblePin { path: PathBuf, detail: String },
}

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before any socket buffer is allocated.
    Native,
    /// In the stack after the driver (`xdpgeneric`): correct, but slower.
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The program's decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    /// Sent back out of the interface it came in on (a rewritten frame).
    Tx,
    Other(u32),
}

impl Verdict {
    fn from_return_value(value: u32) -> Self {
        match value {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            other => Verdict::Other(other),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Bound of the per-source table; the least recently seen source is evicted beyond it.
    pub source_capacity: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            source_capacity: DEFAULT_SOURCE_CAPACITY,
        }
    }
}

/// The loaded glance-limiter program and its maps. Dropping it detaches from every interface
/// and frees the maps.
pub struct Limiter {
    ebpf: Ebpf,
    attachments: Vec<(String, AttachMode)>,
    /// Without pins: the program's link for each interface, to release it by name.
    links: std::collections::HashMap<String, XdpLinkId>,
    /// The same for the egress program's links.
    egress_links: std::collections::HashMap<String, aya::programs::tc::SchedClassifierLinkId>,
    /// Set by [`Limiter::load_pinned`]: maps and attachments live under this bpffs directory.
    pin_dir: Option<PathBuf>,
    /// What the last successful [`Limiter::apply_rules`] wrote: the tries hold exactly this
    /// (one daemon owns them), so the next call diffs in memory instead of reading them back.
    applied: Option<CompiledRules>,
}

impl Limiter {
    /// Loads the program into the kernel (verifier included), attached nowhere yet.
    /// Port 9292 is not protected until [`Limiter::set_protected_ports`] says so.
    pub fn load(options: &LoadOptions) -> Result<Self, LoaderError> {
        Self::load_with(options, |_| {})
    }

    fn load_with(
        options: &LoadOptions,
        configure: impl FnOnce(&mut EbpfLoader),
    ) -> Result<Self, LoaderError> {
        let mut loader = EbpfLoader::new();
        let entries = Capacity::Sources.entries(options.source_capacity);
        loader.map_max_entries(SOURCES_MAP, entries);
        // As many clients as the table has sources can have come through a proxy.
        loader.map_max_entries(CLIENT_VIA_MAP, entries);
        configure(&mut loader);
        let mut ebpf = loader
            .load(ebpf_objects::LIMITER)
            .map_err(LoaderError::Load)?;
        for name in [
            PROGRAM_NAME,
            CLOCK_PROBE_NAME,
            PROXY_PROGRAM_NAME,
            CLIENT_PROGRAM_NAME,
            CREATE_PROGRAM_NAME,
        ] {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|source| LoaderError::Program { name, source })?;
        }
        egress::classifier_mut(&mut ebpf)?
            .load()
            .map_err(|source| LoaderError::Program {
                name: RESPONSES_PROGRAM_NAME,
                source,
            })?;
        fill_proxy_slots(&mut ebpf)?;
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            links: Default::default(),
            egress_links: Default::default(),
            pin_dir: None,
            applied: None,
        })
    }

    /// The kernel's clock as the program sees it, paired with the wall clock now.
    pub fn clock(&self) -> Result<KernelClock, LoaderError> {
        static HZ: OnceLock<u32> = OnceLock::new();
        let hz = match HZ.get() {
            Some(hz) => *hz,
            None => {
                // Two readings a tenth of a second apart; HZ cannot change while running.
                let (before, started) = (self.jiffies()?, Instant::now());
                thread::sleep(Duration::from_millis(100));
                let (after, elapsed) = (self.jiffies()?, started.elapsed());
                *HZ.get_or_init(|| clock::estimate_hz(before, after, elapsed))
            }
        };
        let jiffies = self.jiffies()?;
        Ok(KernelClock {
            wall: SystemTime::now(),
            jiffies,
            hz,
        })
    }

    fn jiffies(&self) -> Result<u64, LoaderError> {
        let probe = program(&self.ebpf, CLOCK_PROBE_NAME)?;
        let frame = [0u8; 64];
        let mut out = [0u8; 64];
        probe
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .map_err(|source| LoaderError::Program {
                name: CLOCK_PROBE_NAME,
                source,
            })?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&out[..8]);
        Ok(u64::from_ne_bytes(word))
    }

    /// Attaches to `iface` (looked up in the calling thread's network namespace): native
    /// mode if the driver supports it, otherwise generic mode with a warning. Loaded with
    /// [`Limiter::load_pinned`], it adopts an attachment pinned for `iface` instead, or pins
    /// the new one.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode, LoaderError> {
        let mode = match self.pin_dir.clone() {
            Some(pin_dir) => self.attach_pinned(iface, &pin_dir)?,
            None => {
                let ifindex = if_index(iface)?;
                let (mode, link_id) = self.attach_fresh(iface, ifindex)?;
                self.links.insert(iface.to_owned(), link_id);
                mode
            }
        };
        self.attach_egress(iface);
        Ok(mode)
    }

    /// Attaches to the device `ifindex`, known as `iface`, whatever was attached or pinned
    /// for that name before (a device deleted and re-created under the same name, or one
    /// that took the name of another): the old attachment is released first. Same mode
    /// logic as [`Limiter::attach`]; with pins, the new link is pinned for `iface`.
    pub fn attach_index(&mut self, iface: &str, ifindex: u32) -> Result<AttachMode, LoaderError> {
        self.release(iface)?;
        let (mode, link_id) = self.attach_fresh(iface, ifindex)?;
        match self.pin_dir.clone() {
            Some(pin_dir) => {
                self.pin_link(iface, link_id, &pin_dir.join(format!("link-{iface}")))?
            }
            None => {
                self.links.insert(iface.to_owned(), link_id);
            }
        }
        self.attach_egress(iface);
        Ok(mode)
    }

    /// Forgets the attachment of `iface`: its pin is removed (the link goes when nothing
    /// holds it), or, without pins, the link is detached. For a device that is gone this only
    /// clears what is stale; for one renamed away, the program leaves it. Nothing attached is
    /// not an error.
    pub fn release(&mut self, iface: &str) -> Result<(), LoaderError> {
        self.release_egress(iface)?;
        self.attachments.retain(|(name, _)| name != iface);
        if let Some(link_id) = self.links.remove(iface) {
            let program = program_mut(&mut self.ebpf, PROGRAM_NAME)?;
            // A link whose device is gone is already detached: closing it is all there is.
            let _ = program.detach(link_id);
        }
        if let Some(pin_dir) = &self.pin_dir {
            let pin = pin_dir.join(format!("link-{iface}"));
            match std::fs::remove_file(&pin) {
                Ok(()) => info!(iface, pin = %pin.display(), "removed the pinned attachment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LoaderError::Pin {
                        path: pin,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn attach_fresh(
        &mut self,
        iface: &str,
        ifindex: u32,
    ) -> Result<(AttachMode, XdpLinkId), LoaderError> {
        let program = program_mut(&mut self.ebpf, PROGRAM_NAME)?;
        let (mode, link_id) = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(link_id) => (AttachMode::Native, link_id),
            Err(native_error) => {
                warn!(
                    iface,
                    error = %native_error,
                    "native XDP attach failed; falling back to generic mode (slower, same behaviour)"
                );
                let link_id =
                    program
                        .attach_to_if_index(ifindex, XdpMode::Skb)
                        .map_err(|source| LoaderError::Attach {
                            iface: iface.to_owned(),
                            source,
                        })?;
                (AttachMode::Generic, link_id)
            }
        };
        info!(iface, ifindex, mode = mode.as_str(), "attached");
        self.attachments.push((iface.to_owned(), mode));
        Ok((mode, link_id))
    }

    pub fn attachments(&self) -> &[(String, AttachMode)] {
        &self.attachments
    }

    /// Runs the program once on `frame` through BPF_PROG_TEST_RUN, maps and all.
    pub fn test_run(&self, frame: &[u8]) -> Result<Verdict, LoaderError> {
        Ok(run(program(&self.ebpf, PROGRAM_NAME)?, frame, 1)?.0)
    }

    /// Runs the program once on `frame`; returns the verdict and the frame as the program left
    /// it (rewritten, for a frame it sends back).
    pub fn test_run_frame(&self, frame: &[u8]) -> Result<(Verdict, Vec<u8>), LoaderError> {
        let program = program(&self.ebpf, PROGRAM_NAME)?;
        let mut out = vec![0u8; frame.len() + 512];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .map_err(|source| LoaderError::Program {
                name: "test run",
                source,
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((Verdict::from_return_value(result.return_value), out))
    }

    /// Runs the program `repeat` times on `frame`; returns the verdict and the kernel's
    /// average time per run.
    pub fn time_run(&self, frame: &[u8], repeat: u32) -> Result<(Verdict, Duration), LoaderError> {
        run(program(&self.ebpf, PROGRAM_NAME)?, frame, repeat)
    }

    pub fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), LoaderError> {
        if ports.contains(&0) {
            return Err(LoaderError::PortZero);
        }
        maps::write_port_bitmap(&mut self.ebpf, ports)
    }

    /// Makes the rule tries hold exactly `rules` (compiled against [`Limiter::clock`]): new and
    /// changed entries are written before stale ones are removed, so no moment exists with
    /// less protection than either state; then the rules generation is bumped so sources'
    /// cached verdicts are re-read.
    pub fn apply_rules(&mut self, rules: &CompiledRules) -> Result<(), LoaderError> {
        // After a failure the tries' contents are unknown: read them next time.
        let previous = self.applied.take();
        maps::apply_rules(&mut self.ebpf, rules, previous.as_ref())?;
        self.applied = Some(rules.clone());
        Ok(())
    }

    /// Every source in the per-source table.
    pub fn sources(&self) -> Result<Vec<SourceEntry>, LoaderError> {
        maps::read_sources(&self.ebpf)
    }

    /// The same as [`Limiter::sources`] in a few syscalls (BPF_MAP_LOOKUP_BATCH, Linux 5.6+)
    /// instead of two per row.
    pub fn sources_batched(&self) -> Result<Vec<SourceEntry>, LoaderError> {
        self.sources_batched_by(DEFAULT_BATCH_CHUNK)
    }

    /// [`Limiter::sources_batched`] asking for `chunk` rows per syscall.
    pub fn sources_batched_by(&self, chunk: u32) -> Result<Vec<SourceEntry>, LoaderError> {
        maps::read_sources_batched(&self.ebpf, chunk)
    }

    /// Every row of the source table, handed to `each` a chunk at a time as the batch reads
    /// return, so that a poll of a million rows never holds them all. A row can come twice
    /// in one read (where the parallel parts meet): `each` keeps the later.
    pub fn for_each_source(&self, each: impl FnMut(SourceEntry)) -> Result<(), LoaderError> {
        maps::for_each_source_batched(&self.ebpf, DEFAULT_BATCH_CHUNK, each)
    }

    /// Each client that came through a trusted proxy → the proxy of its latest request.
    pub fn client_via(&self) -> Result<HashMap<IpAddr, IpAddr>, LoaderError> {
        maps::read_client_via(&self.ebpf)
    }

    /// Each trusted proxy → the requests it relayed (attributed, and not).
    pub fn proxy_relays(&self) -> Result<HashMap<IpAddr, ProxyRelays>, LoaderError> {
        maps::read_proxy_relays(&self.ebpf)
    }

    /// Global counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, LoaderError> {
        maps::read_counters(&self.ebpf)
    }

    /// The kernel's run statistics of the XDP program (zero unless BPF stats are enabled:
    /// `aya::sys::enable_stats`).
    pub fn run_stats(&self) -> Result<RunStats, LoaderError> {
        run_stats(program(&self.ebpf, PROGRAM_NAME)?, PROGRAM_NAME)
    }
}

/// Time spent in a program and how many times it ran, as the kernel counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub run_time: Duration,
    pub run_count: u64,
}

fn run_stats(program: &Xdp, name: &'static str) -> Result<RunStats, LoaderError> {
    let info = program
        .info()
        .map_err(|source| LoaderError::Program { name, source })?;
    Ok(RunStats {
        run_time: info.run_time(),
        run_count: info.run_count(),
    })
}

/// Reference programs (`empty_pass`, `empty_drop`, `read_drop`, `read_words`,
/// `find_header_end`) to measure against.
#[cfg(any(test, feature = "test-support"))]
pub struct Baseline {
    ebpf: Ebpf,
    name: &'static str,
}

#[cfg(any(test, feature = "test-support"))]
impl Baseline {
    pub const EMPTY_PASS: &'static str = "empty_pass";
    pub const EMPTY_DROP: &'static str = "empty_drop";
    /// Reads the headers glance-limiter reads first, then drops.
    pub const READ_DROP: &'static str = "read_drop";
    /// Reads every word of the frame as the least forward header scan must, then passes.
    pub const READ_WORDS: &'static str = "read_words";
    /// Finds the end of a request's header block and nothing else; passes when found.
    pub const FIND_HEADER_END: &'static str = "find_header_end";

    pub fn load(name: &'static str) -> Result<Self, LoaderError> {
        let mut ebpf = Ebpf::load(ebpf_objects::BASELINE).map_err(LoaderError::Load)?;
        program_mut(&mut ebpf, name)?
            .load()
            .map_err(|source| LoaderError::Program { name, source })?;
        Ok(Self { ebpf, name })
    }

    pub fn time_run(&self, frame: &[u8], repeat: u32) -> Result<(Verdict, Duration), LoaderError> {
        run(program(&self.ebpf, self.name)?, frame, repeat)
    }

    /// See [`Limiter::run_stats`].
    pub fn run_stats(&self) -> Result<RunStats, LoaderError> {
        run_stats(program(&self.ebpf, self.name)?, self.name)
    }

    /// Attaches to `iface` in native mode only (a reference point must not fall back to
    /// generic mode unnoticed); detached when dropped.
    pub fn attach_native(&mut self, iface: &str) -> Result<(), LoaderError> {
        program_mut(&mut self.ebpf, self.name)?
            .attach(iface, XdpMode::Driver)
            .map(drop)
            .map_err(|source| LoaderError::Attach {
                iface: iface.to_owned(),
                source,
            })
    }
}

/// Puts the proxy programs into the main program's tail-call slots. Not pinned: a restarted
/// daemon's program has its own slot array, filled here.
fn fill_proxy_slots(ebpf: &mut Ebpf) -> Result<(), LoaderError> {
    let mut fds = Vec::new();
    // In slot order: the program's `PROXY_SLOT`, `CLIENT_SLOT`, `CREATE_SLOT`.
    for name in [PROXY_PROGRAM_NAME, CLIENT_PROGRAM_NAME, CREATE_PROGRAM_NAME] {
        let fd = program(ebpf, name)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::IOError))
            .map_err(|source| LoaderError::Program { name, source })?;
        fds.push(fd);
    }
    let map_error = |op| {
        move |source| LoaderError::Map {
            map: PROXY_PROGRAMS_MAP,
            op,
            source,
        }
    };
    let map = ebpf
        .map_mut(PROXY_PROGRAMS_MAP)
        .ok_or(LoaderError::MissingProgram(PROXY_PROGRAMS_MAP))?;
    let mut slots: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(map_error("open"))?;
    for (slot, fd) in fds.iter().enumerate() {
        slots.set(slot as u32, fd, 0).map_err(map_error("write"))?;
    }
    Ok(())
}

/// The index of interface `iface` in the calling thread's network namespace.
pub fn if_index(iface: &str) -> Result<u32, LoaderError> {
    let unknown = || LoaderError::Attach {
        iface: iface.to_owned(),
        source: ProgramError::UnknownInterface {
            name: iface.to_owned(),
        },
    };
    let name = std::ffi::CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, LoaderError> {
    ebpf.program(name)
        .and_then(|p| <&Xdp>::try_from(p).ok())
        .ok_or(LoaderError::MissingProgram(name))
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LoaderError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(LoaderError::MissingProgram(name))
}

fn run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(Verdict, Duration), LoaderError> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|source| LoaderError::Program {
            name: "test run",
            source,
        })?;
    Ok((
        Verdict::from_return_value(result.return_value),
        result.duration,
    ))
}
