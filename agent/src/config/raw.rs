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
