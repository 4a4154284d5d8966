//! The control API: one JSON request and one JSON response per line, over a unix socket that
//! only root can open (its directory is 0700, the socket 0600).

mod client;
mod server;

use serde::{Deserialize, Serialize};

pub use client::{ClientError, call};
pub use server::{ApiCall, ServerError, serve};

use crate::view::{RolloutStatus, ServiceStatus};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    SetWeight {
        service: String,
        percent: f64,
    },
    /// Remove every program, link and pin, then exit. `pin_path` names the pins the caller
    /// means: a daemon whose pins are elsewhere refuses, and removes nothing.
    Detach {
        pin_path: std::path::PathBuf,
    },
    /// Rollout control: `action` is promote, abort, pause or resume.
    Rollout {
        service: String,
        action: RolloutAction,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Promote,
    Abort,
    Pause,
    Resume,
}

/// Cluster mode, in `sluice status`: this node and its session with etcd.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub node: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub endpoints: Vec<String>,
    /// Off: the node fails static (keeps its shares; only its guards lower them).
    pub connected: bool,
    pub disconnected_since_unix_ms: Option<u64>,
    pub leader: Option<String>,
    /// This node leads (runs the analyses).
    pub leads: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status {
        version: String,
        cgroup: String,
        pin_dir: String,
        config: String,
        services: Vec<ServiceStatus>,
        /// Cluster mode: this node's session and who leads.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<ClusterStatus>,
    },
    Weight {
        service: String,
        previous_percent: f64,
        percent: f64,
    },
    Detached {
        removed: usize,
    },
    Rollout {
        service: String,
        status: Box<RolloutStatus>,
    },
    Error {
        message: String,
    },
}
