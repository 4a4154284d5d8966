//! The kernel side, seen from the agent: load the programs, pin and re-adopt maps and links,
//! and write a desired state into the maps transactionally.

mod apply;
mod btf;
mod detach;
mod links;
mod maps;
mod read;
mod weight;

use std::path::{Path, PathBuf};

pub use apply::ApplyReport;
pub use detach::{DetachError, detach_pins};
pub use links::links_dir;
pub use maps::Maps;

use crate::{
    config::{Config, Node},
    desired::DesiredService,
    view::{ServiceSample, ServiceStatus, ShareCount},
};

/// The kernel object, built by build.rs from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice"));

/// Pins live under `<pin_path>/v<ABI>/`: an agent never adopts maps of another layout.
pub fn abi_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("v{}", sluice_common::ABI_VERSION))
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{path} is not on a bpf filesystem and mounting one there failed (mounting needs \
         CAP_SYS_ADMIN; or mount bpffs there before sluice starts)"
    )]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pins of another sluice ABI exist under {0}; run `sluice detach` with the agent \
         version that made them first"
    )]
    ForeignAbi(PathBuf),
    #[error("loading the kernel object failed")]
    Load(#[source] aya::EbpfError),
    #[error("kernel object has no {0}")]
    Missing(&'static str),
    #[error("pinned map {name} has key/value size {found:?}, this agent needs {want:?}")]
    MapLayout {
        name: &'static str,
        found: (u32, u32),
        want: (u32, u32),
    },
    #[error(
        "the pinned SLUICE_TAG_SLOTS has {pinned} slots and socket_tag_slots asks for {configured}: \
         the slots hold the tags of live connections, so their count changes only with fresh pins \
         (`sluice detach`, then start the agent)"
    )]
    TagSlots { pinned: u32, configured: u32 },
    #[error(
        "the services need {needed} backend slots; the kernel holds {room} for one \
         generation (half its slot map: the other half is the generation an apply replaces)"
    )]
    TooManySlots { needed: u64, room: u64 },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot open cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("cannot read the possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("no free service id: {0} services is the limit (nothing was written)")]
    IdsExhausted(u32),
    #[error("reading {what} from the kernel failed (nothing was written)")]
    Read {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("writing the maps failed; what was written is undone and the kernel steers as before")]
    Apply(#[source] aya::maps::MapError),
    #[error(
        "writing the maps failed, and {undo_failures} entries could not be undone: the kernel \
         may hold part of the new configuration until the next successful apply (see the log)"
    )]
    ApplyHalfUndone {
        undo_failures: usize,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("writing the canary share of {service:?} failed; {left}")]
    SetWeight {
        service: String,
        /// What the kernel holds after the failure, in words.
        left: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// The loaded programs and their (pinned) maps.
pub struct Dataplane {
    ebpf: aya::Ebpf,
    maps: Maps,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    signals: bool,
    /// The desired state last applied, by service name.
    applied: Vec<(DesiredService, u32)>,
    /// The id of the cgroup the programs are attached to, once they are.
    cgroup_id: Option<u64>,
}

/// What [`Dataplane::check_cgroup`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum CgroupChange {
    /// The cgroup is gone: nothing below its path is steered.
    Missing,
    /// It was made again, and the programs are attached to it now.
    Reattached,
    /// It was made again, and attaching to it failed (why).
    ReattachFailed(String),
}

impl Dataplane {
    /// Loads the programs and opens (or creates and pins) the maps. Attaches nothing.
    pub fn load(config: &Config, node: &Node) -> Result<Self, DataplaneError> {
        let pin_dir = abi_dir(&config.pin_path);
        maps::prepare_pin_dir(&config.pin_path, &pin_dir)?;
        let (ebpf, maps) = maps::load(OBJECT, &pin_dir, config.socket_tag_slots, config.signals)?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir,
            cgroup: node.cgroup.clone(),
            signals: config.signals,
            applied: Vec::new(),
            cgroup_id: None,
        })
    }

    /// Attaches every program to the configured cgroup, or swaps the new programs into links
    /// pinned by an earlier agent. Returns how many links were adopted.
    pub fn attach(&mut self) -> Result<usize, DataplaneError> {
        let (adopted, id) =
            links::attach_or_adopt(&mut self.ebpf, &self.pin_dir, &self.cgroup, self.signals)?;
        self.cgroup_id = Some(id);
        Ok(adopted)
    }

    /// Whether the cgroup the programs are attached to is still the configured one: `Ok`
    /// while it is, `Err` saying what happened when it was deleted, and made again (then the
    /// programs are attached to the new one) or not yet.
    pub fn check_cgroup(&mut self) -> Result<(), CgroupChange> {
        let Some(attached) = self.cgroup_id else {
            return Ok(());
        };
        match crate::cgroup::cgroup_id(&self.cgroup) {
            Ok(id) if id == attached => Ok(()),
            Ok(_) => {
                let result = links::reattach_cgroup(
                    &mut self.ebpf,
                    &self.pin_dir,
                    &self.cgroup,
                    self.signals,
                );
                match result {
                    Ok(id) => {
                        self.cgroup_id = Some(id);
                        Err(CgroupChange::Reattached)
                    }
                    Err(e) => Err(CgroupChange::ReattachFailed(crate::error_chain(&e))),
                }
            }
            Err(_) => Err(CgroupChange::Missing),
        }
    }

    /// Makes the maps hold `desired`: all or nothing (see `apply`). A service's forced share
    /// is written with the same entry that installs its backends.
    pub fn apply(&mut self, desired: Vec<DesiredService>) -> Result<ApplyReport, DataplaneError> {
        let report = apply::apply(&mut self.maps, &desired)?;
        self.applied = desired
            .into_iter()
            .zip(report.ids.iter().copied())
            .collect();
        Ok(report)
    }

    /// Sets the canary share of a service now (`sluice weight`), on every one of its virtual
    /// addresses or on none; returns the previous share (ppm).
    pub fn set_weight(&mut self, service: &str, ppm: u32) -> Result<u32, DataplaneError> {
        let (svc, _) = self
            .applied
            .iter()
            .find(|(s, _)| s.name == service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_owned()))?;
        weight::set_weight(&mut self.maps, service, &svc.vips, ppm)
    }

    /// What the kernel holds for each applied service, with its counters.
    pub fn status(&self) -> Result<Vec<ServiceStatus>, DataplaneError> {
        read::status(&self.maps, &self.applied)
    }

    /// Raw counters of every applied service, for the exporter.
    pub fn samples(&self) -> Result<Vec<ServiceSample>, DataplaneError> {
        read::samples(&self.maps, self.applied.iter())
    }

    /// The counters the share windows need, for every applied service.
    pub fn share_counts(&self) -> Result<Vec<ShareCount>, DataplaneError> {
        read::share_counts(&self.maps, &self.applied)
    }

    /// Raw counters of the named services only (the rollout controller's tick).
    pub fn samples_of(&self, names: &[String]) -> Result<Vec<ServiceSample>, DataplaneError> {
        let wanted = self.applied.iter().filter(|(d, _)| names.contains(&d.name));
        read::samples(&self.maps, wanted)
    }

    /// The services as applied, each with its kernel id.
    pub fn applied(&self) -> impl Iterator<Item = (&DesiredService, u32)> {
        self.applied.iter().map(|(d, id)| (d, *id))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}
