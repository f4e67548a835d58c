//! The egress program that reads Glance's answers to image creates (TC, one TCX link per
//! interface, beside the XDP link): attached, adopted and pinned as the XDP program is, so
//! counting survives a restart and a `kill -9`. It only reads, so an interface where it
//! cannot attach (a kernel without TCX) keeps its protection; only its answers go uncounted,
//! which the log says.

use std::{io, path::Path};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
};
use limiter_common::RESPONSES_PROGRAM_NAME;
use tracing::{info, warn};

use super::{Limiter, LoaderError};

/// Prefix of the egress links' pins, after it the interface's name.
pub(super) const EGRESS_PREFIX: &str = "egress-";

pub(super) fn classifier_mut(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, LoaderError> {
    ebpf.program_mut(RESPONSES_PROGRAM_NAME)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(LoaderError::MissingProgram(RESPONSES_PROGRAM_NAME))
}

fn classifier(ebpf: &aya::Ebpf) -> Result<&SchedClassifier, LoaderError> {
    ebpf.program(RESPONSES_PROGRAM_NAME)
        .and_then(|p| <&SchedClassifier>::try_from(p).ok())
        .ok_or(LoaderError::MissingProgram(RESPONSES_PROGRAM_NAME))
}

impl Limiter {
    /// Runs the egress program once on `frame` (an Ethernet frame leaving the node).
    pub fn test_run_egress(&self, frame: &[u8]) -> Result<i32, LoaderError> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = classifier(&self.ebpf)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .map_err(|source| LoaderError::Program {
                name: RESPONSES_PROGRAM_NAME,
                source,
            })?;
        Ok(result.return_value as i32)
    }

    /// Attaches the egress program to `iface` (adopting its pinned link with pins). A failure
    /// is logged, not returned: the interface stays protected, its answers go uncounted.
    pub(super) fn attach_egress(&mut self, iface: &str) {
        if let Err(error) = self.try_attach_egress(iface) {
            warn!(
                iface,
                %error,
                "could not attach the egress program: Glance's answers to image creates on \
                 this interface are not counted (protection is unaffected)"
            );
        }
    }

    fn try_attach_egress(&mut self, iface: &str) -> Result<(), LoaderError> {
        let attach_error = |source| LoaderError::Attach {
            iface: iface.to_owned(),
            source,
        };
        let pin = self
            .pin_dir
            .as_ref()
            .map(|dir| dir.join(format!("{EGRESS_PREFIX}{iface}")));
        let program = classifier_mut(&mut self.ebpf)?;
        if let Some(pin) = pin.as_deref().filter(|p| p.exists()) {
            match adopt(program, pin) {
                Ok(()) => {
                    info!(iface, "adopted the pinned egress attachment");
                    return Ok(());
                }
                Err(error) => {
                    warn!(iface, %error, "pinned egress link unusable; replacing it");
                    remove_pin(pin)?;
                }
            }
        }
        let link_id = program
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error)?;
        match pin {
            Some(pin) => {
                let link = program.take_link(link_id).map_err(attach_error)?;
                let fd_link = FdLink::try_from(link).map_err(|e| LoaderError::Pin {
                    path: pin.clone(),
                    detail: e.to_string(),
                })?;
                fd_link.pin(&pin).map_err(|e| LoaderError::Pin {
                    path: pin.clone(),
                    detail: e.to_string(),
                })?;
            }
            None => {
                self.egress_links.insert(iface.to_owned(), link_id);
            }
        }
        info!(iface, "attached the egress program");
        Ok(())
    }

    /// Forgets the egress attachment of `iface`, as [`Limiter::release`] does the XDP one.
    pub(super) fn release_egress(&mut self, iface: &str) -> Result<(), LoaderError> {
        if let Some(link_id) = self.egress_links.remove(iface) {
            // A link whose device is gone is already detached: closing it is all there is.
            let _ = classifier_mut(&mut self.ebpf)?.detach(link_id);
        }
        if let Some(pin_dir) = &self.pin_dir {
            remove_pin(&pin_dir.join(format!("{EGRESS_PREFIX}{iface}")))?;
        }
        Ok(())
    }
}

/// Swaps this program into the link pinned at `pin` (atomically), leaving the pin to hold it.
fn adopt(program: &mut SchedClassifier, pin: &Path) -> Result<(), LoaderError> {
    let pin_error = |detail: String| LoaderError::Pin {
        path: pin.to_owned(),
        detail,
    };
    let pinned = PinnedLink::from_pin(pin).map_err(|e| pin_error(e.to_string()))?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
        .map_err(|e| pin_error(format!("not a TCX link: {e}")))?;
    let link_id = program
        .attach_to_link(link)
        .map_err(|e| pin_error(e.to_string()))?;
    drop(
        program
            .take_link(link_id)
            .map_err(|e| pin_error(e.to_string()))?,
    );
    Ok(())
}

fn remove_pin(pin: &Path) -> Result<(), LoaderError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LoaderError::Pin {
            path: pin.to_owned(),
            detail: e.to_string(),
        }),
    }
}
