//! Attaching the programs to the cgroup through bpf_links pinned under
//! `<pin_dir>/links/cg<cgroup id>/<program>`. A pinned link outlives the agent: steering goes
//! on while it is down. A restarted agent swaps its freshly loaded program into each pinned
//! link (`BPF_LINK_UPDATE`), so there is never a second attachment nor a moment with none.

use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
use sluice_common::maps::programs;

use super::DataplaneError;
use crate::{cgroup, sys};

const PROGRAMS: [&str; 4] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
];

pub fn links_dir(pin_dir: &Path, cgroup_id: u64) -> PathBuf {
    pin_dir.join("links").join(format!("cg{cgroup_id}"))
}

pub fn attach_or_adopt(
    ebpf: &mut aya::Ebpf,
    pin_dir: &Path,
    cgroup_path: &Path,
) -> Result<usize, DataplaneError> {
    let cgroup_err = |source| DataplaneError::Cgroup {
        path: cgroup_path.to_owned(),
        source,
    };
    let cgroup_id = cgroup::cgroup_id(cgroup_path).map_err(cgroup_err)?;
    let cgroup_file = fs::File::open(cgroup_path).map_err(cgroup_err)?;
    let dir = links_dir(pin_dir, cgroup_id);
    fs::create_dir_all(&dir).map_err(|source| DataplaneError::PinDir {
        path: dir.clone(),
        source,
    })?;
    let mut adopted = 0;
    for name in PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let pin = dir.join(name);
        let link_err = |source| DataplaneError::Link {
            path: pin.clone(),
            source,
        };
        if pin.exists() {
            let link = sys::obj_get(&pin).map_err(link_err)?;
            let prog_fd = prog
                .fd()
                .map_err(|source| DataplaneError::Program { name, source })?;
            sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(link_err)?;
            adopted += 1;
        } else {
            let id = prog
                .attach(&cgroup_file, CgroupAttachMode::default())
                .map_err(|source| DataplaneError::Program { name, source })?;
            let link = prog
                .take_link(id)
                .map_err(|source| DataplaneError::Program { name, source })?;
            let link = FdLink::try_from(link).map_err(|e| link_err(std::io::Error::other(e)))?;
            // Dropping the returned handle closes our fd; the pin keeps the link attached.
            drop(
                link.pin(&pin)
                    .map_err(|e| link_err(std::io::Error::other(e)))?,
            );
        }
    }
    // Links pinned for another cgroup (the config's cgroup changed while we were down):
    // the new ones are attached, so these can go.
    for stale in other_link_dirs(pin_dir, &dir) {
        tracing::info!(dir = %stale.display(), "detaching links of a previously configured cgroup");
        remove_tree(&stale);
    }
    Ok(adopted)
}

fn other_link_dirs(pin_dir: &Path, keep: &Path) -> Vec<PathBuf> {
    fs::read_dir(pin_dir.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != keep)
        .collect()
}

/// Removes every pin under `pin_root` (all ABI versions): links first, so steering stops,
/// then maps. Returns the paths removed.
pub fn detach_pins(pin_root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_root.exists() {
        return Ok(removed);
    }
    for abi in fs::read_dir(pin_root)?.flatten().map(|e| e.path()) {
        for sub in ["links", "maps"] {
            let dir = abi.join(sub);
            if dir.exists() {
                removed.extend(remove_tree(&dir));
            }
        }
        if fs::remove_dir(&abi).is_ok() {
            removed.push(abi);
        }
    }
    fs::remove_dir(pin_root)?;
    removed.push(pin_root.to_owned());
    Ok(removed)
}

/// Removes files and then directories below and including `dir`, returning what went.
fn remove_tree(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            removed.extend(remove_tree(&p));
        } else if fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    if fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_owned());
    }
    removed
}
