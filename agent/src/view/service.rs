//! A service as the kernel holds it, and its raw counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_common::counters::STEER_COUNTERS;

use super::RolloutStatus;

/// One service as `sluice status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub id: u32,
    pub virtual_addresses: Vec<String>,
    pub selection: String,
    /// The share in force in the kernel now.
    pub canary_percent: f64,
    /// The share the configuration asks for.
    pub config_canary_percent: f64,
    pub generation: u32,
    pub stable: Vec<String>,
    pub canary: Vec<String>,
    pub segmented: bool,
    /// Steering counters since the service was first configured (they survive restarts).
    pub counters: BTreeMap<String, u64>,
    /// Share of steered connections that went to the canary, over the counters' lifetime.
    pub measured_canary_percent: Option<f64>,
    /// The rollout controller's view, for services with a rollout (the kernel's reading
    /// leaves it empty; the daemon adds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<RolloutStatus>>,
    /// The names the service gives and how they resolve (the daemon adds them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<super::NameStatus>,
    /// Cluster mode, for a service with a rollout: every node's callers' counts, as the
    /// nodes published them (which node's callers see the canary fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_nodes: Option<ClusterNodes>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterNodes {
    pub nodes: Vec<crate::cluster::NodeBreakdown>,
    /// Why the breakdown could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Raw kernel numbers of one service, summed over CPUs: what the exporter encodes and the
/// rollout controller judges.
#[derive(Clone, Debug)]
pub struct ServiceSample {
    pub name: String,
    pub canary_ppm: u32,
    pub config_ppm: u32,
    pub http1: bool,
    pub steer: [u64; STEER_COUNTERS as usize],
    /// Distinct backend addresses of stable, then canary, in the kernel now.
    pub backends: [u32; 2],
    /// Metric slots of stable, then canary.
    pub versions: [Vec<u64>; 2],
}

/// What the share windows need of one service: steered connections and, for `l7: http1`
/// services, requests, per version (stable, canary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareCount {
    pub name: String,
    pub connections: (u64, u64),
    pub requests: Option<(u64, u64)>,
}
