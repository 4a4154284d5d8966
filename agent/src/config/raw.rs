//! The file's shape. Every struct rejects unknown keys: a typo must not silently become a
//! default.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cgroup: Option<String>,
    pub pin_path: Option<String>,
    pub api_socket: Option<String>,
    pub metrics_address: Option<String>,
    #[serde(default = "default_signals")]
    pub signals: bool,
    pub state_path: Option<String>,
    pub socket_tag_slots: Option<u64>,
    #[serde(default)]
    pub services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub virtual_addresses: Vec<String>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default = "default_selection")]
    pub selection: String,
    pub salt: Option<String>,
    #[serde(default)]
    pub canary_percent: f64,
    pub stable: Vec<RawBackend>,
    #[serde(default)]
    pub canary: Vec<RawBackend>,
    pub segment: Option<Vec<String>>,
    #[serde(default = "default_l7")]
    pub l7: String,
    pub rollout: Option<RawRollout>,
}

#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub steps: Option<Vec<f64>>,
    pub step: Option<f64>,
    pub max: Option<f64>,
    pub interval: Option<String>,
    pub min_samples: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub deadline: Option<String>,
    pub on_deadline: Option<String>,
    pub promotion: Option<String>,
    pub checks: Option<RawChecks>,
    pub guard: Option<RawGuard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    pub min_success_percent: Option<f64>,
    pub max_p99_ttfb: Option<String>,
    pub max_p99_connect: Option<String>,
    pub max_connect_error_percent: Option<f64>,
    pub max_error_increase_percent: Option<f64>,
    pub confidence: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub p99_ratio_floor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub last: Option<i64>,
    pub max_failures: Option<i64>,
}
