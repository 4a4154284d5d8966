//! The network namespaces the steered sockets live in, each with a sock_diag socket of its
//! own. Cgroup hooks steer a connect from any namespace, while sock_diag sees only the one
//! its socket was made in: on a Kubernetes node the callers are in their pods' namespaces.
//!
//! Two sources, merged by namespace (its nsfs inode):
//! - the processes of the steered cgroup subtree (`/proc/PID/ns/net`): every namespace a
//!   steered socket can have been made in, while its process runs. This needs the host's
//!   PID namespace (a host process, or a pod with `hostPID`);
//! - directories of pinned namespaces (`network_namespaces`, default `/run/netns`), where
//!   `ip netns` and the container runtimes (containerd, CRI-O) pin every pod's namespace:
//!   a DaemonSet mounts the host's directory and needs no host PIDs.
//!
//! A namespace other than the agent's own is entered (`setns`, which needs CAP_SYS_ADMIN)
//! by a short-lived thread that makes the socket and ends; the socket keeps answering for
//! that namespace. A namespace that cannot be entered is reported, once, and skipped.
//! Sockets of namespaces no longer found are closed: an open socket would keep a deleted
//! pod's namespace alive.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use super::diag::Diag;

/// At most this many cgroups are walked below the attach cgroup (a bound on a runaway
/// tree, far above what a node holds).
const MAX_CGROUPS: usize = 100_000;

#[derive(Default)]
pub struct Namespaces {
    /// By nsfs inode.
    open: HashMap<u64, Diag>,
    /// Namespaces that could not be entered, and why: said once each.
    unreachable: BTreeMap<u64, String>,
}

impl Namespaces {
    /// Finds the namespaces now and returns a socket for each that can be reached.
    pub fn refresh(&mut self, cgroup: &Path, dirs: &[PathBuf]) -> Vec<(u64, &mut Diag)> {
        let mut found: BTreeMap<u64, PathBuf> = BTreeMap::new();
        if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
            found.insert(own.ino(), PathBuf::from("/proc/self/ns/net"));
        }
        for pid in cgroup_pids(cgroup) {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(m) = std::fs::metadata(&path) {
                found.entry(m.ino()).or_insert(path);
            }
        }
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(m) = std::fs::metadata(e.path()) {
                    found.entry(m.ino()).or_insert(e.path());
                }
            }
        }
        self.open.retain(|ino, _| found.contains_key(ino));
        self.unreachable.retain(|ino, _| found.contains_key(ino));
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
        for (ino, path) in &found {
            if self.open.contains_key(ino) || self.unreachable.contains_key(ino) {
                continue;
            }
            let opened = if Some(*ino) == own {
                Diag::open()
            } else {
                enter_and_open(path, *ino)
            };
            match opened {
                Ok(diag) => {
                    self.open.insert(*ino, diag);
                }
                Err(e) => {
                    tracing::warn!(namespace = ino, path = %path.display(), error = %e, "cannot reach a network namespace: its connections are not drained (entering another namespace needs CAP_SYS_ADMIN)");
                    self.unreachable.insert(*ino, e.to_string());
                }
            }
        }
        self.open.iter_mut().map(|(i, d)| (*i, d)).collect()
    }

    /// How many namespaces were found and could not be entered.
    pub fn unreachable(&self) -> usize {
        self.unreachable.len()
    }
}

/// A sock_diag socket made inside the namespace at `path` (checked to still be `ino`).
fn enter_and_open(path: &Path, ino: u64) -> io::Result<Diag> {
    let ns = File::open(path)?;
    if ns.metadata()?.ino() != ino {
        return Err(io::Error::other("the namespace changed while being opened"));
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only (a network namespace is per thread); the
            // thread makes one socket and ends, so nothing else runs in the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Diag::open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Every process id in the cgroup subtree (as this process's PID namespace numbers them).
fn cgroup_pids(root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![root.to_owned()];
    let mut walked = 0;
    while let Some(dir) = stack.pop() {
        walked += 1;
        if walked > MAX_CGROUPS {
            break;
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    pids
}
