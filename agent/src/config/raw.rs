//! The file's shape. Every struct rejects unknown keys: a typo must not silently become a
//! default. The shapes also serialise, so tools that write configurations (the test kit's
//! builder) write exactly what this parses.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    #[serde(default = "default_signals")]
    pub signals: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_tag_slots: Option<u64>,
    /// Required, so that an empty or truncated file never reads as "no services": a
    /// configuration that steers nothing says `services: []`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<RawService>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub virtual_addresses: Vec<String>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default = "default_selection")]
    pub selection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(default)]
    pub canary_percent: f64,
    pub stable: Vec<RawBackend>,
    #[serde(default)]
    pub canary: Vec<RawBackend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<Vec<String>>,
    #[serde(default = "default_l7")]
    pub l7: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RawRollout>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: i64,
}

fn default_protocol() -> String {
    "tcp".into()
}

fn default_selection() -> String {
    "random".into()
}

fn default_weight() -> i64 {
    1
}

fn default_l7() -> String {
    "none".into()
}

fn default_signals() -> bool {
    true
}

/// `services[].rollout`: the controller's plan for this service's canary.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<RawChecks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<RawGuard>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_success_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ttfb: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_connect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connect_error_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_increase_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ratio_floor: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<i64>,
}
