//! `discovery:`: how the names a configuration gives (`dns:` backends and virtual
//! addresses) are resolved, and how often.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{ConfigError, duration, raw::RawDiscovery};

/// The resolver configuration read when no nameservers are given.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// A record's TTL is raised to this: CoreDNS answers headless Services with a 5 s TTL, and a
/// node asking more often only loads the cluster's DNS.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(5);
/// A record's TTL is lowered to this: a pod that goes away is noticed within it.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30);
/// How long one lookup may take, every server and retry included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most nameservers a configuration may list.
const MAX_NAMESERVERS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub servers: NameServers,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub timeout: Duration,
    pub unresolved_at_start: Unresolved,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            servers: NameServers::ResolvConf(PathBuf::from(DEFAULT_RESOLV_CONF)),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            timeout: DEFAULT_TIMEOUT,
            unresolved_at_start: Unresolved::Serve,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameServers {
    /// Nameservers, search list and `ndots` from this file (read when the agent starts and
    /// when the configuration reloads).
    ResolvConf(PathBuf),
    /// These servers, asked in order; names are taken as absolute.
    Listed(Vec<SocketAddr>),
}

/// What a name that has never resolved does when the agent starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// Start anyway: its version steers to the addresses that did resolve and the literal
    /// ones; a version with none has no backends yet, and its connections go where they were
    /// going (stable's) or to stable (canary's). The name is retried.
    Serve,
    /// Refuse to start, naming the names.
    Refuse,
}

pub(super) fn discovery(raw: Option<RawDiscovery>) -> Result<DiscoveryConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let defaults = DiscoveryConfig::default();
    let servers = match (raw.resolv_conf, raw.nameservers) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "discovery.nameservers",
                "give either `nameservers` or `resolv_conf`, not both",
            ));
        }
        (Some(path), None) => NameServers::ResolvConf(resolv_conf_path(&path)?),
        (None, Some(list)) => NameServers::Listed(nameservers(&list)?),
        (None, None) => defaults.servers,
    };
    let ttl = |key: &str, raw: Option<String>, default| {
        raw.map(|t| duration(&format!("discovery.{key}"), &t))
            .transpose()
            .map(|d| d.unwrap_or(default))
    };
    let min_ttl = ttl("min_ttl", raw.min_ttl, defaults.min_ttl)?;
    let max_ttl = ttl("max_ttl", raw.max_ttl, defaults.max_ttl)?;
    let timeout = ttl("timeout", raw.timeout, defaults.timeout)?;
    if min_ttl < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "discovery.min_ttl",
            format!("{min_ttl:?} is below 1s: every node would ask the cluster's DNS that often"),
        ));
    }
    if max_ttl < min_ttl {
        return Err(ConfigError::invalid(
            "discovery.max_ttl",
            format!("{max_ttl:?} is below min_ttl ({min_ttl:?})"),
        ));
    }
    if timeout > min_ttl {
        return Err(ConfigError::invalid(
            "discovery.timeout",
            format!(
                "{timeout:?} is longer than min_ttl ({min_ttl:?}): lookups of one name would overlap"
            ),
        ));
    }
    let unresolved_at_start = match raw.unresolved_at_start.as_deref() {
        None | Some("serve") => Unresolved::Serve,
        Some("refuse") => Unresolved::Refuse,
        Some(other) => {
            return Err(ConfigError::invalid(
                "discovery.unresolved_at_start",
                format!("{other:?}: expected \"serve\" or \"refuse\""),
            ));
        }
    };
    Ok(DiscoveryConfig {
        servers,
        min_ttl,
        max_ttl,
        timeout,
        unresolved_at_start,
    })
}

fn resolv_conf_path(p: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(p);
    if p.contains('\0') || !path.is_absolute() {
        return Err(ConfigError::invalid(
            "discovery.resolv_conf",
            format!("{p:?} must be an absolute path"),
        ));
    }
    Ok(path)
}

fn nameservers(list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    if list.is_empty() || list.len() > MAX_NAMESERVERS {
        return Err(ConfigError::invalid(
            "discovery.nameservers",
            format!("needs 1 to {MAX_NAMESERVERS} servers, found {}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("discovery.nameservers[{i}]");
            let addr = s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    ConfigError::invalid(
                        &key,
                        format!("{s:?} is not an address (\"10.96.0.10\", \"127.0.0.1:5353\", \"[fd00::a]:53\")"),
                    )
                })?;
            if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{s:?}: not a unicast address with a port"),
                ));
            }
            Ok(addr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawDiscovery {
        serde_yaml::from_str(yaml).expect("test document")
    }

    #[test]
    fn defaults_read_resolv_conf() {
        let d = discovery(None).expect("defaults are valid");
        assert_eq!(d, DiscoveryConfig::default());
        assert_eq!(
            d.servers,
            NameServers::ResolvConf(PathBuf::from("/etc/resolv.conf"))
        );
    }

    #[test]
    fn nameservers_take_port_53_unless_given() {
        let d = discovery(Some(raw(
            "{nameservers: [\"10.96.0.10\", \"127.0.0.1:5353\", \"[fd00::a]:53\"]}",
        )))
        .expect("valid");
        let NameServers::Listed(list) = d.servers else {
            panic!("listed servers")
        };
        assert_eq!(list[0], "10.96.0.10:53".parse().expect("test value"));
        assert_eq!(list[1].port(), 5353);
        assert!(list[2].is_ipv6());
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (yaml, key) in [
            (
                "{nameservers: [], resolv_conf: /etc/resolv.conf}",
                "discovery.nameservers",
            ),
            ("{nameservers: []}", "discovery.nameservers"),
            ("{nameservers: [\"dns.local\"]}", "discovery.nameservers[0]"),
            ("{nameservers: [\"0.0.0.0\"]}", "discovery.nameservers[0]"),
            ("{resolv_conf: etc/resolv.conf}", "discovery.resolv_conf"),
            ("{min_ttl: 500ms}", "discovery.min_ttl"),
            ("{min_ttl: 10s, max_ttl: 5s}", "discovery.max_ttl"),
            ("{min_ttl: 1s, timeout: 2s}", "discovery.timeout"),
            (
                "{unresolved_at_start: wait}",
                "discovery.unresolved_at_start",
            ),
        ] {
            match discovery(Some(raw(yaml))) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }
}
