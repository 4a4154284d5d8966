//! Binding a validated configuration to this node: the cgroup the programs attach to and the
//! cgroup ids of every segment member, found in the node's cgroup2 tree. `sluice run` binds
//! before it touches the kernel; `sluice check --on-this-node` binds to report what would.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{Config, ConfigError};
use crate::cgroup;

/// A configuration's cgroups as they are on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The cgroup2 mount.
    pub cgroup2: PathBuf,
    /// The cgroup the programs attach to.
    pub cgroup: PathBuf,
    /// The members of each segmented service's segment, by service name.
    pub segments: BTreeMap<String, Vec<SegmentMember>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMember {
    pub path: PathBuf,
    /// cgroup v2 id: the directory's inode number.
    pub cgroup_id: u64,
}

impl Node {
    /// The cgroup ids of a service's segment (empty for a service without one).
    pub fn segment_ids(&self, service: &str) -> Vec<u64> {
        self.segments
            .get(service)
            .map(|m| m.iter().map(|m| m.cgroup_id).collect())
            .unwrap_or_default()
    }
}

/// Binds `config` to this node's cgroup2 tree: `cgroup_root` if set, else the cgroup2 mount
/// in `/proc/self/mountinfo`, which in a cgroup namespace of its own (a container) shows only
/// the container's subtree and is refused.
pub fn bind(config: &Config) -> Result<Node, ConfigError> {
    let cgroup2 = match &config.cgroup_root {
        Some(root) => {
            if !crate::sys::is_cgroup2(root).unwrap_or(false) {
                return Err(ConfigError::invalid(
                    "cgroup_root",
                    format!("{} is not a cgroup2 filesystem", root.display()),
                ));
            }
            root.clone()
        }
        None if cgroup::in_own_namespace() => {
            return Err(ConfigError::invalid(
                "cgroup_root",
                "missing: this process runs in a cgroup namespace of its own (a container), \
                 where the cgroup2 mount shows only the container's own cgroups, not the \
                 node's; mount the host's cgroup2 tree into the container (read-only) and name \
                 it here",
            ));
        }
        None => {
            cgroup::cgroup2_mount().map_err(|e| ConfigError::invalid("cgroup", e.to_string()))?
        }
    };
    bind_under(config, &cgroup2, &cgroup::is_cgroup2_dir)
}

/// Binds `config` to the cgroup2 tree mounted at `cgroup2`: every cgroup it names must be a
/// directory below it that `is_cgroup` accepts (on a node, [`cgroup::is_cgroup2_dir`]).
pub fn bind_under(
    config: &Config,
    cgroup2: &Path,
    is_cgroup: &dyn Fn(&Path) -> bool,
) -> Result<Node, ConfigError> {
    let resolve = |key: &str, p: &Path| resolve(key, p, cgroup2, is_cgroup);
    let cgroup = match &config.cgroup {
        None => cgroup2.to_owned(),
        Some(p) => resolve("cgroup", p)?,
    };
    let mut segments = BTreeMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let Some(members) = &s.segment else { continue };
        let members = members
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let key = format!("services[{i}].segment[{j}]");
                let path = resolve(&key, p)?;
                let cgroup_id = cgroup::cgroup_id(&path)
                    .map_err(|e| ConfigError::invalid(&key, format!("cannot stat: {e}")))?;
                Ok(SegmentMember { path, cgroup_id })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        segments.insert(s.name.clone(), members);
    }
    Ok(Node {
        cgroup2: cgroup2.to_owned(),
        cgroup,
        segments,
    })
}

/// A cgroup given as an absolute path or relative to the cgroup2 mount; it must exist.
fn resolve(
    key: &str,
    p: &Path,
    cgroup2: &Path,
    is_cgroup: &dyn Fn(&Path) -> bool,
) -> Result<PathBuf, ConfigError> {
    let path = if p.is_absolute() {
        p.to_owned()
    } else {
        cgroup2.join(p)
    };
    if !path.starts_with(cgroup2) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is outside the cgroup2 mount {}",
                path.display(),
                cgroup2.display()
            ),
        ));
    }
    if !is_cgroup(&path) {
        return Err(ConfigError::invalid(
            key,
            format!("{} is not an existing cgroup v2 directory", path.display()),
        ));
    }
    Ok(path)
}
