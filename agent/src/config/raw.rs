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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<RawDiscovery>,
    /// Directories of pinned network namespaces to drain connections in (default
    /// `["/run/netns"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_namespaces: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::RawCluster>,
    /// Required, so that an empty or truncated file never reads as "no services": a
    /// configuration that steers nothing says `services: []`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<RawService>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub virtual_addresses: Vec<RawVirtualAddress>,
    /// `ipv4` or `ipv6`: needed only when every virtual address is a name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<RawDrain>,
    /// Steered connections older than this are ended between requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<String>,
}

/// `drain:`: what happens to the canary's open connections when its share goes to 0.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrain {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_rollback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// A literal `ip:port`; or, instead, `dns` and `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A name whose A (IPv4 services) or AAAA (IPv6) records are the backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default = "default_weight")]
    pub weight: i64,
}

/// A virtual address: `"ip:port"`, or `{dns: name, port: N}` (a Service's ClusterIP by
/// name).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum RawVirtualAddress {
    Literal(String),
    Name(RawName),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawName {
    pub dns: String,
    pub port: i64,
}

// By hand rather than `untagged`, so that a wrong map says which key is wrong instead of
// "did not match any variant".
impl<'de> Deserialize<'de> for RawVirtualAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawVirtualAddress;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"ip:port\" or {dns: name, port: number}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawVirtualAddress::Literal(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawName::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawVirtualAddress::Name)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// `discovery:`: how backends given by name are resolved.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved_at_start: Option<String>,
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
    pub max_failed_analyses: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
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
    /// Steps in waves of nodes (cluster mode): each wave's steps go to its nodes' callers
    /// only, then the next wave's. Instead of `steps` or `step`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waves: Option<Vec<super::waves::RawWave>>,
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
