//! The agent's own places: its pin directory, control socket, state file and metrics
//! address, each checked for what it must be, and no two roles on one path.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Component, Path, PathBuf},
};

use super::ConfigError;

/// `sun_path` holds 108 bytes, its NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// Kernel filesystems: nothing of sluice's but its pins belongs there.
const KERNEL_TREES: [&str; 3] = ["/dev", "/proc", "/sys"];

/// An absolute path to a file or directory of sluice's own: no NUL, no `..`, not `/`.
pub(super) fn own_path(key: &str, p: &str) -> Result<PathBuf, ConfigError> {
    let bad = |why: &str| ConfigError::invalid(key, format!("{p:?} {why}"));
    if p.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(bad("must not contain `..`"));
    }
    if path.file_name().is_none() {
        return Err(bad("names no file or directory below /"));
    }
    Ok(path.components().collect())
}

/// The three paths, checked against each other: each is its own, the socket's fits a unix
/// socket address, and only the pins may live on a kernel filesystem.
pub(super) fn check_roles(
    pin_path: &Path,
    api_socket: &Path,
    state_path: &Path,
) -> Result<(), ConfigError> {
    let len = api_socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ConfigError::invalid(
            "api_socket",
            format!(
                "{} is {len} bytes; a unix socket path has at most {MAX_SOCKET_PATH}",
                api_socket.display()
            ),
        ));
    }
    for (key, path) in [("api_socket", api_socket), ("state_path", state_path)] {
        if let Some(tree) = KERNEL_TREES.iter().find(|t| path.starts_with(t)) {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{} is on a kernel filesystem ({tree}); choose a path on disk or tmpfs",
                    path.display()
                ),
            ));
        }
    }
    let roles = [
        ("pin_path", pin_path),
        ("api_socket", api_socket),
        ("state_path", state_path),
    ];
    for (i, (a, pa)) in roles.iter().enumerate() {
        for (b, pb) in roles.iter().skip(i + 1) {
            if pa.starts_with(pb) || pb.starts_with(pa) {
                return Err(ConfigError::invalid(
                    *b,
                    format!(
                        "{} and {a} ({}) overlap: each needs a place of its own",
                        pb.display(),
                        pa.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where `/metrics` listens: an address this host could bind (unicast or unspecified) and a
/// port of its own.
pub(super) fn metrics_address(text: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: String| ConfigError::invalid("metrics_address", why);
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| bad(format!("{text:?} is not an address and port")))?;
    if addr.port() == 0 {
        return Err(bad(format!(
            "{text:?}: port 0 would be a different port at every start; Prometheus needs a \
             fixed one"
        )));
    }
    let broadcast = matches!(addr.ip(), IpAddr::V4(v4) if v4.is_broadcast());
    if addr.ip().is_multicast() || broadcast {
        return Err(bad(format!("{text:?} is not a unicast address")));
    }
    Ok(addr)
}

/// A cgroup as written: an absolute path, or one relative to the cgroup2 mount. Only its
/// form is checked here; whether it exists on a node is [`crate::config::bind`]'s question.
pub(super) fn cgroup_path(key: &str, p: &str) -> Result<PathBuf, ConfigError> {
    if p.is_empty() || p.contains('\0') {
        return Err(ConfigError::invalid(key, format!("{p:?} is not a path")));
    }
    let path = PathBuf::from(p);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ConfigError::invalid(
            key,
            format!("{p:?}: `..` is not allowed in a cgroup path"),
        ));
    }
    Ok(path)
}
