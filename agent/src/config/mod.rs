//! The configuration file: one YAML document, made to live in a ConfigMap.
//!
//! [`raw`] is the file's shape (serde, unknown keys rejected); [`validate`] turns it into a
//! [`Config`] whose every value has been checked, or an error naming the key. Validation is
//! pure (it reads nothing of the machine), so a config can be checked anywhere; [`bind`]
//! then resolves its cgroup paths on this node. Nothing touches the kernel before a whole
//! file has validated and bound.

mod bounds;
mod cluster;
mod discovery;
mod drain;
mod duration;
mod error;
mod node;
pub mod raw;
mod reload;
mod rollout;
mod validate;
mod waves;

use std::{net::SocketAddr, path::PathBuf};

pub use bounds::{MAX_CONFIG_BYTES, read_regular_file};
pub use cluster::{AuthConfig, ClusterConfig, RawCluster, TlsConfig};
pub use discovery::{DiscoveryConfig, NameServers, Unresolved};
pub use drain::{DEFAULT_DRAIN_GRACE, DEFAULT_NETNS_DIR, DrainConfig};
pub use duration::duration;
pub use error::ConfigError;
pub use node::{Node, SegmentMember, bind, bind_under};
pub use reload::restart_only_change;
pub use rollout::{Checks, Guard, OnDeadline, Promotion, RolloutConfig};
pub use validate::{parse, parse_str, percent_to_ppm_checked};
pub use waves::Nodes;

/// Default directory for pins (maps and links) under bpffs.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sluice";
/// Default control socket.
pub const DEFAULT_API_SOCKET: &str = "/run/sluice/sluice.sock";
/// Default metrics address: loopback only; set 0.0.0.0:9464 for a cluster-wide Prometheus.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9464";
/// Default file of the rollout controller's state (phase, step, weight per service).
pub const DEFAULT_STATE_PATH: &str = "/var/lib/sluice/rollouts.json";

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// cgroup v2 directory the programs attach to (every process below it is steered), as
    /// written: absolute, or relative to the cgroup2 mount; `None` is the mount itself.
    pub cgroup: Option<PathBuf>,
    /// Where the node's cgroup2 tree is mounted as this process sees it (in a container: the
    /// host's tree mounted in); `None`: the cgroup2 mount in `/proc/self/mountinfo`.
    pub cgroup_root: Option<PathBuf>,
    pub pin_path: PathBuf,
    pub api_socket: PathBuf,
    /// Where `/metrics`, `/ready` and `/live` are served.
    pub metrics_address: SocketAddr,
    /// Attach the signal programs (cgroup_skb, TCP tracepoints). Off: steering only.
    pub signals: bool,
    /// Where the rollout controller keeps its state across restarts.
    pub state_path: PathBuf,
    /// Size of the kernel's direct-mapped socket-tag array (a power of two; see
    /// `sluice_common::maps::DEFAULT_TAG_SLOTS`).
    pub socket_tag_slots: u32,
    /// How names (`dns:` backends and virtual addresses) are resolved.
    pub discovery: DiscoveryConfig,
    /// Directories of pinned network namespaces whose connections may be drained, besides
    /// those of the steered processes.
    pub network_namespaces: Vec<PathBuf>,
    /// One rollout per service across every node, through etcd (`None`: this node alone).
    pub cluster: Option<ClusterConfig>,
    pub services: Vec<ServiceConfig>,
}

impl Config {
    /// Every name the services give, with the family it is looked up in, once each.
    pub fn names(&self) -> std::collections::BTreeSet<(String, Family)> {
        self.services
            .iter()
            .flat_map(|s| {
                let vips = s.virtual_addresses.iter();
                let backends = s.stable.iter().chain(&s.canary).map(|b| &b.target);
                vips.chain(backends)
                    .filter_map(|t| t.name().map(|n| (n.name.clone(), s.family)))
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub virtual_addresses: Vec<Target>,
    /// The family of every address of the service: literal ones are checked against it,
    /// names are looked up in it (A for IPv4, AAAA for IPv6).
    pub family: Family,
    pub selection: Selection,
    /// Canary share in parts per million.
    pub canary_ppm: u32,
    pub stable: Vec<BackendConfig>,
    pub canary: Vec<BackendConfig>,
    /// Client cgroups allowed to reach the canary (`None`: everyone), as written.
    pub segment: Option<Vec<PathBuf>>,
    /// Parse HTTP/1.x on this service's connections (`l7: http1`).
    pub http1: bool,
    /// The controller walks the canary share up (`None`: the share is `canary_ppm`).
    pub rollout: Option<RolloutConfig>,
    /// What happens to the canary's open connections when its share goes to 0.
    pub drain: DrainConfig,
    /// Steered connections older than this are ended at rest, so pools follow the share.
    pub max_connection_age: Option<std::time::Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// A fresh draw for every connection.
    Random,
    /// A hash of the caller's cgroup id and this salt: a caller keeps its version.
    Sticky { salt: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub target: Target,
    /// A literal address's weight; a name's weight is shared by the addresses it returns.
    pub weight: u32,
}

/// Where a backend or a virtual address is: written in the configuration, or a name this
/// node resolves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Address(SocketAddr),
    Name(NamedTarget),
}

/// `{dns: name, port: N}`: every address the name resolves to, at this port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedTarget {
    /// Lower case, as written otherwise (a trailing dot makes it absolute: no search list).
    pub name: String,
    pub port: u16,
}

impl Target {
    pub fn name(&self) -> Option<&NamedTarget> {
        match self {
            Target::Name(n) => Some(n),
            Target::Address(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(a) => write!(f, "{a}"),
            Target::Name(n) => write!(f, "dns:{}:{}", n.name, n.port),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: std::net::IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Percent (0..=100) to parts per million, and back, for display.
pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}
