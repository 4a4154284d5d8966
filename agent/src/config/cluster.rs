//! `cluster:`: run one rollout per service across every node, through etcd. Without it the
//! agent decides alone, on its own node's callers, and keeps its state in `state_path`.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// Key prefix every agent of one cluster shares.
pub const DEFAULT_PREFIX: &str = "/sluice";
/// A node whose agent stops renewing its lease is gone this long after (and a leader that
/// dies is replaced this long after).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// etcd refuses leases shorter than about 1.5 election timeouts; below 2 s a loaded member
/// would expire healthy nodes.
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
const MAX_LEASE_TTL: Duration = Duration::from_secs(300);
/// How often a node publishes its counters for the leader's analysis.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(2);
const MIN_PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
const MAX_PUBLISH_INTERVAL: Duration = Duration::from_secs(60);
const MAX_ENDPOINTS: usize = 16;
const MAX_LABELS: usize = 64;
/// Kubernetes' limits on label keys (with prefix) and values.
const MAX_LABEL_KEY: usize = 317;
const MAX_LABEL_VALUE: usize = 63;
/// Node names are DNS subdomains, as Kubernetes node names are.
const MAX_NODE_NAME: usize = 253;

/// The file's shape of `cluster:`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_interval: Option<String>,
    /// Default: the `NODE_NAME` environment variable (the DaemonSet sets it from the
    /// downward API), else the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RawAuth>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM bundle of the CAs that sign the members' certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Client certificate and key (PEM), for members that ask for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The name the members' certificates carry, when it is not the endpoint's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub username: String,
    /// A file holding the password (a Secret mounted as a file), never the password itself.
    pub password_file: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key sluice writes is under this, ending in `/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub publish_interval: Duration,
    /// As written; [`ClusterConfig::node_name`] supplies the default.
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password_file: PathBuf,
}

impl ClusterConfig {
    /// This node's name: as configured, else `NODE_NAME`, else the host name.
    pub fn node_name(&self) -> Result<String, ConfigError> {
        let (name, from) = match &self.node_name {
            Some(n) => (n.clone(), "cluster.node_name"),
            None => match std::env::var("NODE_NAME") {
                Ok(n) if !n.is_empty() => (n, "NODE_NAME"),
                _ => (crate::sys::host_name(), "the host name"),
            },
        };
        node_name(from, &name)?;
        Ok(name)
    }
}

pub fn cluster(raw: Option<RawCluster>) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.endpoints.is_empty() || raw.endpoints.len() > MAX_ENDPOINTS {
        return Err(ConfigError::invalid(
            "cluster.endpoints",
            format!(
                "{} endpoints: give 1 to {MAX_ENDPOINTS} etcd client URLs",
                raw.endpoints.len()
            ),
        ));
    }
    let mut https = None;
    for (i, e) in raw.endpoints.iter().enumerate() {
        let key = format!("cluster.endpoints[{i}]");
        let secure = endpoint(&key, e)?;
        if https.is_some_and(|h| h != secure) {
            return Err(ConfigError::invalid(
                key,
                "mixes http:// and https:// endpoints: one cluster speaks one of them",
            ));
        }
        https = Some(secure);
    }
    let prefix = prefix(raw.prefix.as_deref().unwrap_or(DEFAULT_PREFIX))?;
    let lease_ttl = bounded(
        "cluster.lease_ttl",
        raw.lease_ttl.as_deref(),
        DEFAULT_LEASE_TTL,
        MIN_LEASE_TTL,
        MAX_LEASE_TTL,
    )?;
    if lease_ttl.subsec_nanos() != 0 {
        return Err(ConfigError::invalid(
            "cluster.lease_ttl",
            "etcd leases count whole seconds",
        ));
    }
    let publish_interval = bounded(
        "cluster.publish_interval",
        raw.publish_interval.as_deref(),
        DEFAULT_PUBLISH_INTERVAL,
        MIN_PUBLISH_INTERVAL,
        MAX_PUBLISH_INTERVAL,
    )?;
    if let Some(n) = &raw.node_name {
        node_name("cluster.node_name", n)?;
    }
    if raw.labels.len() > MAX_LABELS {
        return Err(ConfigError::invalid(
            "cluster.labels",
            format!("{} labels, at most {MAX_LABELS}", raw.labels.len()),
        ));
    }
    for (k, v) in &raw.labels {
        label(&format!("cluster.labels.{k}"), k, v)?;
    }
    let tls = raw.tls.map(tls).transpose()?;
    if https == Some(true) && tls.is_none() {
        return Err(ConfigError::invalid(
            "cluster.tls",
            "missing: https:// endpoints need `tls:` (at least `ca:`, the members' CA)",
        ));
    }
    if https == Some(false) && tls.is_some() {
        return Err(ConfigError::invalid(
            "cluster.tls",
            "given with http:// endpoints: use https:// to speak TLS",
        ));
    }
    let auth = raw
        .auth
        .map(|a| {
            if a.username.is_empty() || a.username.len() > 256 {
                return Err(ConfigError::invalid(
                    "cluster.auth.username",
                    "must be 1 to 256 characters",
                ));
            }
            Ok(AuthConfig {
                username: a.username,
                password_file: absolute("cluster.auth.password_file", &a.password_file)?,
            })
        })
        .transpose()?;
    Ok(Some(ClusterConfig {
        endpoints: raw.endpoints,
        prefix,
        lease_ttl,
        publish_interval,
        node_name: raw.node_name,
        labels: raw.labels,
        tls,
        auth,
    }))
}

/// Whether the endpoint speaks TLS.
fn endpoint(key: &str, e: &str) -> Result<bool, ConfigError> {
    let (secure, rest) = if let Some(r) = e.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = e.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(ConfigError::invalid(
            key,
            format!("{e:?}: expected http://host:port or https://host:port"),
        ));
    };
    let port = rest.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 && !rest.contains('/') => Ok(secure),
        _ => Err(ConfigError::invalid(
            key,
            format!("{e:?}: expected a host and a port, as in http://10.0.0.1:2379"),
        )),
    }
}

fn prefix(p: &str) -> Result<String, ConfigError> {
    let valid = p.starts_with('/')
        && p.len() <= 128
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if !valid {
        return Err(ConfigError::invalid(
            "cluster.prefix",
            format!(
                "{p:?}: expected an absolute key path of letters, digits and /-_. (at most 128)"
            ),
        ));
    }
    Ok(format!("{}/", p.trim_end_matches('/')))
}

fn bounded(
    key: &str,
    raw: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = raw else {
        return Ok(default);
    };
    let d = duration(key, text)?;
    if d < min || d > max {
        return Err(ConfigError::invalid(
            key,
            format!("{text:?} is outside {min:?} to {max:?}"),
        ));
    }
    Ok(d)
}

/// A node name: a DNS subdomain (what Kubernetes allows), since it becomes a key.
pub fn node_name(key: &str, n: &str) -> Result<(), ConfigError> {
    let valid = !n.is_empty()
        && n.len() <= MAX_NODE_NAME
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.'])
        && !n.ends_with(['-', '.']);
    if valid {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "{n:?} is not a node name (lower-case letters, digits, '-' and '.', at most \
                 {MAX_NODE_NAME})"
            ),
        ))
    }
}

/// A label as Kubernetes allows it: `[prefix/]name` and a value of at most 63 characters.
pub fn label(key: &str, k: &str, v: &str) -> Result<(), ConfigError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    let key_ok = k.len() <= MAX_LABEL_KEY && name.len() <= 63 && name_ok(name);
    if !key_ok {
        return Err(ConfigError::invalid(
            key,
            format!("{k:?} is not a label key ([prefix/]name of letters, digits, -_.)"),
        ));
    }
    if v.len() > MAX_LABEL_VALUE || !(v.is_empty() || name_ok(v)) {
        return Err(ConfigError::invalid(
            key,
            format!("{v:?} is not a label value (at most 63 letters, digits, -_.)"),
        ));
    }
    Ok(())
}

fn tls(raw: RawTls) -> Result<TlsConfig, ConfigError> {
    // The agent carries no root store (its image has none either): an etcd's members are
    // signed by the cluster's own CA, which is named.
    let Some(ca) = raw.ca.as_deref() else {
        return Err(ConfigError::invalid(
            "cluster.tls.ca",
            "missing: name the PEM bundle of the CA that signs the members' certificates",
        ));
    };
    let ca = absolute("cluster.tls.ca", ca)?;
    let identity = match (raw.cert, raw.key) {
        (Some(c), Some(k)) => Some((
            absolute("cluster.tls.cert", &c)?,
            absolute("cluster.tls.key", &k)?,
        )),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "cluster.tls.key",
                "missing: a client certificate needs its key",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "cluster.tls.cert",
                "missing: a client key needs its certificate",
            ));
        }
    };
    Ok(TlsConfig {
        ca,
        identity,
        server_name: raw.server_name,
    })
}

fn absolute(key: &str, p: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(p);
    if path.is_absolute() && !p.contains('\0') {
        Ok(path)
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{p:?} is not an absolute path"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(endpoints: &[&str]) -> RawCluster {
        RawCluster {
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            ..RawCluster::default()
        }
    }

    #[test]
    fn defaults_and_prefix_normalised() {
        let c = cluster(Some(raw(&["http://127.0.0.1:2379"])))
            .expect("valid")
            .expect("present");
        assert_eq!(c.prefix, "/sluice/");
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.publish_interval, DEFAULT_PUBLISH_INTERVAL);
    }

    #[test]
    fn refusals_name_the_key() {
        let cases: Vec<(RawCluster, &str)> = vec![
            (raw(&[]), "cluster.endpoints"),
            (raw(&["127.0.0.1:2379"]), "cluster.endpoints[0]"),
            (raw(&["http://127.0.0.1"]), "cluster.endpoints[0]"),
            (
                raw(&["http://127.0.0.1:2379", "https://127.0.0.1:2380"]),
                "cluster.endpoints[1]",
            ),
            (raw(&["https://127.0.0.1:2379"]), "cluster.tls"),
            (
                RawCluster {
                    lease_ttl: Some("1s".into()),
                    ..raw(&["http://127.0.0.1:2379"])
                },
                "cluster.lease_ttl",
            ),
            (
                RawCluster {
                    lease_ttl: Some("2500ms".into()),
                    ..raw(&["http://127.0.0.1:2379"])
                },
                "cluster.lease_ttl",
            ),
            (
                RawCluster {
                    node_name: Some("Node_1".into()),
                    ..raw(&["http://127.0.0.1:2379"])
                },
                "cluster.node_name",
            ),
            (
                RawCluster {
                    prefix: Some("sluice".into()),
                    ..raw(&["http://127.0.0.1:2379"])
                },
                "cluster.prefix",
            ),
            (
                RawCluster {
                    labels: [("zone".to_owned(), "eu west".to_owned())].into(),
                    ..raw(&["http://127.0.0.1:2379"])
                },
                "cluster.labels.zone",
            ),
        ];
        for (r, key) in cases {
            let e = cluster(Some(r)).expect_err("invalid");
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }
}
