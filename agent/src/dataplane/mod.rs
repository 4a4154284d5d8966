//! The kernel side, seen from the agent: load the programs, pin and re-adopt maps and links,
//! and write configurations into the maps transactionally.

mod apply;
mod btf;
mod desired;
mod links;
mod maps;
mod read;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

pub use apply::ApplyReport;
pub use desired::{DesiredService, addr_words, slot_counts, vip_key, words_addr};
pub use links::{detach_pins, links_dir};
pub use maps::Maps;
pub use read::{ServiceSample, ServiceStatus, ShareCount};

use crate::config::Config;

/// The kernel object, built by build.rs from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice"));

/// Pins live under `<pin_path>/v<ABI>/`: an agent never adopts maps of another layout.
pub fn abi_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("v{}", sluice_common::ABI_VERSION))
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{path} is not on a bpf filesystem and mounting one there failed")]
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
    #[error("no free service id: {0} services is the limit")]
    IdsExhausted(u32),
    #[error("writing the maps failed (nothing was changed)")]
    Apply(#[source] aya::maps::MapError),
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
}

impl Dataplane {
    /// Loads the programs and opens (or creates and pins) the maps. Attaches nothing.
    pub fn load(config: &Config) -> Result<Self, DataplaneError> {
        let pin_dir = abi_dir(&config.pin_path);
        maps::prepare_pin_dir(&config.pin_path, &pin_dir)?;
        let (ebpf, maps) = maps::load(OBJECT, &pin_dir, config.socket_tag_slots, config.signals)?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir,
            cgroup: config.cgroup.clone(),
            signals: config.signals,
            applied: Vec::new(),
        })
    }

    /// Attaches every program to the configured cgroup, or swaps the new programs into links
    /// pinned by an earlier agent. Returns how many links were adopted.
    pub fn attach(&mut self) -> Result<usize, DataplaneError> {
        links::attach_or_adopt(&mut self.ebpf, &self.pin_dir, &self.cgroup, self.signals)
    }

    /// Writes `config` into the maps: all or nothing (see `apply`). Services in `forced` get
    /// that share (ppm) with the same write that installs their backends.
    pub fn apply(
        &mut self,
        config: &Config,
        forced: &HashMap<String, u32>,
    ) -> Result<ApplyReport, DataplaneError> {
        let desired: Vec<_> = config
            .services
            .iter()
            .map(|s| DesiredService::from_config(s, forced.get(&s.name).copied()))
            .collect();
        let report = apply::apply(&mut self.maps, &desired)?;
        self.applied = desired
            .into_iter()
            .zip(report.ids.iter().copied())
            .collect();
        Ok(report)
    }

    /// Sets the canary share of a service now; returns the previous share (ppm).
    pub fn set_weight(&mut self, service: &str, ppm: u32) -> Result<u32, DataplaneError> {
        let (svc, _) = self
            .applied
            .iter()
            .find(|(s, _)| s.name == service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_owned()))?;
        apply::set_weight(&mut self.maps, &svc.vips, ppm)
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

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}
