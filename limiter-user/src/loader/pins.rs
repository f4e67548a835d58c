//! Pinning under bpffs, so protection outlives the daemon: the maps (rules, counters, sources)
//! and one XDP link per interface are pinned in one directory. A restarted daemon reuses the
//! pinned maps and swaps its freshly loaded program into the pinned links atomically
//! (`bpf_link_update`): no second attachment and no moment without the program. Only
//! [`detach_pinned`] removes them.

use std::{ffi::CString, fs, io, path::Path, process::Command};

use aya::{
    maps::{MapData, MapType},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use limiter_common::{MapKind, MapSpec, PINNED_MAP_SPECS, PROGRAM_NAME};
use tracing::{info, warn};

use super::{
    egress::EGRESS_PREFIX, migrate, program_mut, AttachMode, Limiter, LoadOptions, LoaderError,
};

/// Where the daemon pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/glance-limiter";

pub use limiter_common::PINNED_MAPS;

const LINK_PREFIX: &str = "link-";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What one [`detach_pinned`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DetachReport {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

fn aya_map_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::LruHash => MapType::LruHash,
        MapKind::LpmTrie => MapType::LpmTrie,
        MapKind::Array => MapType::Array,
        MapKind::PerCpuArray => MapType::PerCpuArray,
    }
}

impl Limiter {
    /// Loads the program with every map pinned under `pin_dir`, reusing maps already pinned
    /// there. [`Limiter::attach`] then adopts pinned links instead of attaching twice.
    ///
    /// A per-source table pinned by an older version (the previous row layout) or with
    /// another capacity is carried over into a fresh one ([`super::migrate`]); the pinned
    /// links then take this program at [`Limiter::attach`], without a gap.
    pub fn load_pinned(options: &LoadOptions, pin_dir: &Path) -> Result<Self, LoaderError> {
        prepare_pin_dir(pin_dir)?;
        let migrations = migrate::plan(pin_dir, options);
        let migrated = |name: &str| migrations.iter().any(|m| m.name == name);
        for spec in &PINNED_MAP_SPECS {
            if !migrated(spec.name) {
                check_pinned_map(pin_dir, spec, options.source_capacity)?;
            }
        }
        let mut limiter = Self::load_with(options, |loader| {
            for name in PINNED_MAPS.into_iter().filter(|name| !migrated(name)) {
                loader.map_pin_path(name, pin_dir.join(name));
            }
        })?;
        migrate::carry_over(&mut limiter.ebpf, migrations)?;
        limiter.pin_dir = Some(pin_dir.to_owned());
        Ok(limiter)
    }

    /// With pins: adopts the link pinned for `iface` (swapping this program in atomically),
    /// or attaches and pins a new one.
    pub(super) fn attach_pinned(
        &mut self,
        iface: &str,
        pin_dir: &Path,
    ) -> Result<AttachMode, LoaderError> {
        let pin = pin_dir.join(format!("{LINK_PREFIX}{iface}"));
        if pin.exists() {
            match self.adopt(iface, &pin) {
                Ok(mode) => return Ok(mode),
                // The interface went away (or was recreated): the old link is defunct.
                Err(error) => {
                    warn!(iface, %error, pin = %pin.display(), "pinned link unusable; replacing it");
                    fs::remove_file(&pin).map_err(|e| pin_error(&pin, e))?;
                }
            }
        }
        let ifindex = super::if_index(iface)?;
        let (mode, link_id) = self.attach_fresh(iface, ifindex)?;
        self.pin_link(iface, link_id, &pin)?;
        Ok(mode)
    }

    /// Takes the new link out of the program's hands and pins it at `pin`, so it outlives
    /// this process.
    pub(super) fn pin_link(
        &mut self,
        iface: &str,
        link_id: XdpLinkId,
        pin: &Path,
    ) -> Result<(), LoaderError> {
        let program = program_mut(&mut self.ebpf, PROGRAM_NAME)?;
        let link = program
            .take_link(link_id)
            .map_err(|source| LoaderError::Program {
                name: PROGRAM_NAME,
                source,
            })?;
        let fd_link = FdLink::try_from(link).map_err(|e| LoaderError::Pin {
            path: pin.to_owned(),
            detail: format!("the kernel gave a netlink attachment, which cannot be pinned: {e}"),
        })?;
        fd_link.pin(pin).map_err(|e| LoaderError::Pin {
            path: pin.to_owned(),
            detail: e.to_string(),
        })?;
        info!(iface, pin = %pin.display(), "pinned the attachment");
        Ok(())
    }

    fn adopt(&mut self, iface: &str, pin: &Path) -> Result<AttachMode, LoaderError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| LoaderError::Pin {
            path: pin.to_owned(),
            detail: e.to_string(),
        })?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| LoaderError::Pin {
            path: pin.to_owned(),
            detail: format!("not an XDP link: {e}"),
        })?;
        let program = program_mut(&mut self.ebpf, PROGRAM_NAME)?;
        let link_id = program
            .attach_to_link(link)
            .map_err(|source| LoaderError::Attach {
                iface: iface.to_owned(),
                source,
            })?;
        // Out of the program's hands, so dropping the program leaves the attachment; the pin
        // keeps the link alive after this process closes its descriptor.
        drop(
            program
                .take_link(link_id)
                .map_err(|source| LoaderError::Program {
                    name: PROGRAM_NAME,
                    source,
                })?,
        );
        let mode = current_xdp_mode(iface).unwrap_or(AttachMode::Native);
        info!(iface, mode = mode.as_str(), "adopted the pinned attachment");
        self.attachments.push((iface.to_owned(), mode));
        Ok(mode)
    }
}

/// Removes every pinned link (the program leaves those interfaces) and map under `pin_dir`,
/// then the directory. Missing pins are not an error: detaching twice is harmless.
pub fn detach_pinned(pin_dir: &Path) -> Result<DetachReport, LoaderError> {
    let mut report = DetachReport::default();
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(pin_error(pin_dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    // Links first (XDP, then egress): once they are gone nothing runs the programs, then
    // the maps can go.
    names.sort_by_key(|n| (!n.starts_with(LINK_PREFIX), !n.starts_with(EGRESS_PREFIX)));
    for name in names {
        let path = pin_dir.join(&name);
        fs::remove_file(&path).map_err(|e| pin_error(&path, e))?;
        if let Some(iface) = name.strip_prefix(LINK_PREFIX) {
            report.links.push(iface.to_owned());
        } else if !name.starts_with(EGRESS_PREFIX) {
            // An egress link goes with its interface's XDP link, which the report names.
            report.maps.push(name);
        }
    }
    fs::remove_dir(pin_dir).map_err(|e| pin_error(pin_dir, e))?;
    Ok(report)
}

/// Interfaces with a pinned attachment under `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    fs::read_dir(pin_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(LINK_PREFIX).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn prepare_pin_dir(pin_dir: &Path) -> Result<(), LoaderError> {
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    if !is_bpffs(parent) {
        return Err(LoaderError::Pin {
            path: pin_dir.to_owned(),
            detail: format!(
                "{} is not a BPF filesystem; mount it (mount -t bpf bpf {}) or choose a pin \
                 directory on one",
                parent.display(),
                parent.display()
            ),
        });
    }
    fs::create_dir_all(pin_dir).map_err(|e| pin_error(pin_dir, e))
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed statfs buffer for the kernel to fill.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// A pinned map is reused only with the shape this build declares for it.
fn check_pinned_map(
    pin_dir: &Path,
    spec: &MapSpec,
    source_capacity: u32,
) -> Result<(), LoaderError> {
    let path = pin_dir.join(spec.name);
    if !path.exists() {
        return Ok(());
    }
    let incompatible = |detail: String| LoaderError::IncompatiblePin {
        path: path.clone(),
        detail,
    };
    let map = MapData::from_pin(&path).map_err(|e| incompatible(e.to_string()))?;
    let info = map.info().map_err(|e| incompatible(e.to_string()))?;
    let map_type = info.map_type().map_err(|e| incompatible(e.to_string()))?;
    let found = (
        map_type,
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    let wanted = (
        aya_map_type(spec.kind),
        spec.key_bytes,
        spec.value_bytes,
        spec.capacity.entries(source_capacity),
    );
    if found != wanted {
        return Err(incompatible(format!(
            "pinned as (type, key, value, entries) = {found:?}, this build needs {wanted:?}"
        )));
    }
    Ok(())
}

/// The XDP mode the kernel reports for `iface`, as `ip -j link` shows it.
fn current_xdp_mode(iface: &str) -> Option<AttachMode> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // XDP_ATTACHED_DRV = 1, XDP_ATTACHED_SKB = 2, XDP_ATTACHED_HW = 3.
    match links.get(0)?.get("xdp")?.get("mode")?.as_u64()? {
        2 => Some(AttachMode::Generic),
        _ => Some(AttachMode::Native),
    }
}

fn pin_error(path: &Path, error: io::Error) -> LoaderError {
    LoaderError::Pin {
        path: path.to_owned(),
        detail: error.to_string(),
    }
}
