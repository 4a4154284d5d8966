//! Attaching the programs to the cgroup through bpf_links pinned under
//! `<pin_dir>/links/cg<cgroup id>/<program>`. A pinned link outlives the agent: steering goes
//! on while it is down. A restarted agent swaps its freshly loaded program into each pinned
//! link (`BPF_LINK_UPDATE`), so there is never a second attachment nor a moment with none.

use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Btf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        CgroupSockAddr, links::FdLink,
    },
};
use sluice_common::maps::programs;

use super::{DataplaneError, detach::remove_tree};
use crate::{cgroup, sys};

/// Programs attached to the cgroup (all support `BPF_LINK_UPDATE`).
enum CgroupHook {
    SockAddr,
    Sock,
    Skb(CgroupSkbAttachType),
}

/// When a cgroup program is attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    /// With signals on: it measures.
    Signals,
    /// With signals off: the tag's end. With them on, `tcp_destroy_sock` ends it, and a
    /// release program would only cost every connection of the cgroup one more run.
    NoSignals,
}

impl When {
    fn attached(self, signals: bool) -> bool {
        match self {
            When::Always => true,
            When::Signals => signals,
            When::NoSignals => !signals,
        }
    }
}

const CGROUP_PROGRAMS: [(&str, CgroupHook, When); 7] = [
    (programs::CONNECT4, CgroupHook::SockAddr, When::Always),
    (programs::CONNECT6, CgroupHook::SockAddr, When::Always),
    (programs::GETPEERNAME4, CgroupHook::SockAddr, When::Always),
    (programs::GETPEERNAME6, CgroupHook::SockAddr, When::Always),
    (programs::SOCK_RELEASE, CgroupHook::Sock, When::NoSignals),
    (
        programs::SKB_EGRESS,
        CgroupHook::Skb(CgroupSkbAttachType::Egress),
        When::Signals,
    ),
    (
        programs::SKB_INGRESS,
        CgroupHook::Skb(CgroupSkbAttachType::Ingress),
        When::Signals,
    ),
];

/// Tracepoint programs (tp_btf), attached with signals on: (program, tracepoint).
const TRACEPOINT_PROGRAMS: [(&str, &str); 4] = [
    (programs::RESET_RECEIVED, "tcp_receive_reset"),
    (programs::RESET_SENT, "tcp_send_reset"),
    (programs::RETRANSMITTED, "tcp_retransmit_skb"),
    (programs::SOCK_DESTROYED, "tcp_destroy_sock"),
];

pub fn links_dir(pin_dir: &Path, cgroup_id: u64) -> PathBuf {
    pin_dir.join("links").join(format!("cg{cgroup_id}"))
}

/// Attaches every program, or re-adopts the links an earlier agent pinned. Returns how many
/// links were adopted, and the id of the cgroup attached to. Links an earlier agent pinned
/// for programs this one does not attach (`signals` switched) are removed, after the new
/// ones are attached.
pub fn attach_or_adopt(
    ebpf: &mut aya::Ebpf,
    pin_dir: &Path,
    cgroup_path: &Path,
    signals: bool,
) -> Result<(usize, u64), DataplaneError> {
    let cgroup = attach_cgroup_programs(ebpf, pin_dir, cgroup_path, signals)?;
    let mut adopted = cgroup.adopted;
    let tracepoints = pin_dir.join("links").join("tracepoints");
    if signals {
        adopted += attach_tracepoints(ebpf, &tracepoints)?;
    }
    // Only now that what replaces them runs: with signals switched on, the destroy
    // tracepoint must end the tags before the release program stops; switched off, the
    // other way round. (A socket released while signals were on and destroyed after they
    // went off keeps its tag until `sluice detach`.)
    cgroup.drop_unwanted(signals);
    if !signals {
        remove_tree(&tracepoints);
    }
    drop_other_cgroups(pin_dir, &cgroup.dir);
    Ok((adopted, cgroup.id))
}

/// The configured cgroup was deleted and made again: attaches the (already loaded) cgroup
/// programs to the new one, and removes the links of the one that is gone. Returns its id.
pub fn reattach_cgroup(
    ebpf: &mut aya::Ebpf,
    pin_dir: &Path,
    cgroup_path: &Path,
    signals: bool,
) -> Result<u64, DataplaneError> {
    let cgroup = attach_cgroup_programs(ebpf, pin_dir, cgroup_path, signals)?;
    cgroup.drop_unwanted(signals);
    drop_other_cgroups(pin_dir, &cgroup.dir);
    Ok(cgroup.id)
}

/// Links pinned for another cgroup (the config's cgroup changed while we were down, or it
/// was made again): the new ones are attached, so these can go.
fn drop_other_cgroups(pin_dir: &Path, keep: &Path) {
    for stale in other_link_dirs(pin_dir, keep) {
        tracing::info!(dir = %stale.display(), "detaching links of a previously configured cgroup");
        remove_tree(&stale);
    }
}

/// The cgroup programs of one attachment: the cgroup's id, its links' directory, how many
/// links were adopted, and the pins of programs this setting does not attach.
struct CgroupLinks {
    id: u64,
    dir: PathBuf,
    adopted: usize,
    unwanted: Vec<(&'static str, PathBuf)>,
}

impl CgroupLinks {
    fn drop_unwanted(&self, signals: bool) {
        for (name, pin) in &self.unwanted {
            if fs::remove_file(pin).is_ok() {
                tracing::info!(
                    program = name,
                    signals,
                    "detached (not used with this signals setting)"
                );
            }
        }
    }
}

fn attach_cgroup_programs(
    ebpf: &mut aya::Ebpf,
    pin_dir: &Path,
    cgroup_path: &Path,
    signals: bool,
) -> Result<CgroupLinks, DataplaneError> {
    let cgroup_err = |source| DataplaneError::Cgroup {
        path: cgroup_path.to_owned(),
        source,
    };
    let cgroup_id = cgroup::cgroup_id(cgroup_path).map_err(cgroup_err)?;
    let cgroup_file = fs::File::open(cgroup_path).map_err(cgroup_err)?;
    let dir = links_dir(pin_dir, cgroup_id);
    mkdir(&dir)?;
    let mut adopted = 0;
    let mut unwanted = Vec::new();
    for (name, hook, when) in CGROUP_PROGRAMS {
        let pin = dir.join(name);
        if !when.attached(signals) {
            unwanted.push((name, pin));
            continue;
        }
        let prog_err = |source| DataplaneError::Program { name, source };
        let program = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        // Load, then either swap into the pinned link or attach anew. aya's program types
        // share no trait for load/fd/attach, hence the macro.
        macro_rules! load_adopt_or_attach {
            ($ty:ty, |$p:ident| $attach:expr) => {{
                let $p: &mut $ty = program.try_into().map_err(prog_err)?;
                // Loaded already when a recreated cgroup is attached to again.
                if $p.fd().is_err() {
                    $p.load().map_err(prog_err)?;
                }
                if pin.exists() {
                    adopt(&pin, $p.fd().map_err(prog_err)?.as_fd())?;
                    None
                } else {
                    let id = $attach.map_err(prog_err)?;
                    Some(fd_link(name, $p.take_link(id).map_err(prog_err)?)?)
                }
            }};
        }
        let mode = CgroupAttachMode::default();
        let fresh: Option<FdLink> = match hook {
            CgroupHook::SockAddr => {
                load_adopt_or_attach!(CgroupSockAddr, |p| p.attach(&cgroup_file, mode))
            }
            CgroupHook::Sock => load_adopt_or_attach!(CgroupSock, |p| p.attach(&cgroup_file, mode)),
            CgroupHook::Skb(direction) => {
                load_adopt_or_attach!(CgroupSkb, |p| p.attach(&cgroup_file, direction, mode))
            }
        };
        match fresh {
            None => adopted += 1,
            Some(link) => pin_link(link, &pin)?,
        }
    }
    Ok(CgroupLinks {
        id: cgroup_id,
        dir,
        adopted,
        unwanted,
    })
}

fn mkdir(dir: &Path) -> Result<(), DataplaneError> {
    fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
        path: dir.to_owned(),
        source,
    })
}

/// Swaps `prog` into the link pinned at `pin`.
fn adopt(pin: &Path, prog: std::os::fd::BorrowedFd<'_>) -> Result<(), DataplaneError> {
    let link_err = |source| DataplaneError::Link {
        path: pin.to_owned(),
        source,
    };
    let link = sys::obj_get(pin).map_err(link_err)?;
    sys::link_update(link.as_fd(), prog).map_err(link_err)
}

/// Cgroup links are bpf_links on 5.7+ (aya falls back to legacy attachment before that,
/// which cannot be pinned: refuse clearly rather than attach unpinned).
fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, DataplaneError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    FdLink::try_from(link).map_err(|e| DataplaneError::Link {
        path: PathBuf::from(name),
        source: std::io::Error::other(format!("not a bpf_link (kernel older than 5.7?): {e}")),
    })
}

fn pin_link(link: FdLink, pin: &Path) -> Result<(), DataplaneError> {
    // Dropping the returned handle closes our fd; the pin keeps the link attached.
    drop(link.pin(pin).map_err(|e| DataplaneError::Link {
        path: pin.to_owned(),
        source: std::io::Error::other(e),
    })?);
    Ok(())
}

/// Tracing links cannot swap their program. Their pins are named after the program's tag
/// (a hash of its code): a restarted agent whose program is the same keeps the running link
/// (same code, same pinned maps: nothing is counted twice or lost); a changed program is
/// attached first and the old link removed after, so an upgrade loses no event (it may count
/// one twice in the microseconds both run).
fn attach_tracepoints(ebpf: &mut aya::Ebpf, dir: &Path) -> Result<usize, DataplaneError> {
    mkdir(dir)?;
    let btf = Btf::from_sys_fs().map_err(|e| DataplaneError::Btf(e.to_string()))?;
    let mut kept = 0;
    for (name, tracepoint) in TRACEPOINT_PROGRAMS {
        let prog_err = |source| DataplaneError::Program { name, source };
        let p: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()
            .map_err(prog_err)?;
        p.load(tracepoint, &btf).map_err(prog_err)?;
        let tag = p.info().map_err(prog_err)?.tag();
        let pin = dir.join(format!("{name}-{tag:016x}"));
        if pin.exists() {
            kept += 1;
        } else {
            let id = p.attach().map_err(prog_err)?;
            pin_link(p.take_link(id).map_err(prog_err)?.into(), &pin)?;
        }
        for old in fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
        {
            let stale = old != pin
                && old
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}-")));
            if stale {
                tracing::info!(link = %old.display(), "replacing a tracepoint link of another program version");
                let _ = fs::remove_file(&old);
            }
        }
    }
    // A tracepoint an earlier agent attached and this one no longer uses.
    for old in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = old.file_name().to_string_lossy().into_owned();
        if !TRACEPOINT_PROGRAMS
            .iter()
            .any(|(name, _)| file.starts_with(&format!("{name}-")))
        {
            tracing::info!(link = %old.path().display(), "detaching a tracepoint this agent no longer uses");
            let _ = fs::remove_file(old.path());
        }
    }
    Ok(kept)
}

/// Link directories of cgroups other than `keep` (`cg<id>`; the tracepoint links are not
/// per cgroup).
fn other_link_dirs(pin_dir: &Path, keep: &Path) -> Vec<PathBuf> {
    fs::read_dir(pin_dir.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p != keep
                && p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with("cg"))
        })
        .collect()
}
