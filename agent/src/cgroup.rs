//! cgroup v2 paths and ids.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (it is not always `/sys/fs/cgroup`:
/// hybrid hosts mount it at `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    cgroup2_mount_in(&text).ok_or(CgroupError::NoCgroup2)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw,..."
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(v) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(v));
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// `PROC_CGROUP_INIT_INO`: the inode of the initial cgroup namespace (linux/proc_ns.h).
const INITIAL_NAMESPACE: u64 = 0xEFFF_FFFB;

/// Whether this process is in a cgroup namespace other than the initial one (a container's):
/// then the cgroup2 mounts it makes show only its own subtree.
pub fn in_own_namespace() -> bool {
    fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() != INITIAL_NAMESPACE)
}

/// Whether `path` is a cgroup v2 directory: on a cgroup2 filesystem, and holding
/// `cgroup.controllers` (which only cgroup directories do).
pub fn is_cgroup2_dir(path: &Path) -> bool {
    crate::sys::is_cgroup2(path).unwrap_or(false) && path.join("cgroup.controllers").is_file()
}

/// The cgroup v2 id of a cgroup directory: its inode number (kernfs node id), the value
/// `bpf_get_current_cgroup_id()` returns for a task in it.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let mi = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                  41 25 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn unescapes_mount_points() {
        let mi = "41 25 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(mi), Some(PathBuf::from("/mnt/cg two")));
    }

    #[test]
    fn none_without_cgroup2() {
        assert_eq!(
            cgroup2_mount_in("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
