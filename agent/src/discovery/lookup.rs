//! One lookup of one name, through hickory-resolver, as an answer or a named failure.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{op::ResponseCode, rr::RecordType},
};

use crate::config::{DiscoveryConfig, Family, NameServers};

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot read the resolver configuration {path}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the resolver configuration {path} is not usable: {reason}")]
    BadResolvConf { path: PathBuf, reason: String },
    #[error("building the resolver: {0}")]
    Build(String),
}

/// What one lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Addresses, and the smallest TTL among their records.
    Answer {
        addresses: BTreeSet<IpAddr>,
        ttl: Duration,
    },
    Failed(Failure),
}

/// Why a lookup gave no addresses. Each is a `result` label of
/// `sluice_discovery_lookups_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The name exists, with no record of this family (NOERROR, no answer).
    Empty,
    NxDomain,
    ServFail,
    Refused,
    /// No server answered in time.
    Timeout,
    /// No server could be reached (refused, unreachable).
    Unreachable,
    /// Anything else (a malformed answer, another response code).
    Error,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Empty => "empty",
            Failure::NxDomain => "nxdomain",
            Failure::ServFail => "servfail",
            Failure::Refused => "refused",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Error => "error",
        }
    }

    pub const ALL: [Failure; 7] = [
        Failure::Empty,
        Failure::NxDomain,
        Failure::ServFail,
        Failure::Refused,
        Failure::Timeout,
        Failure::Unreachable,
        Failure::Error,
    ];
}

/// A stub resolver built from the `discovery:` settings.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    pub fn new(settings: &DiscoveryConfig) -> Result<Self, ResolverError> {
        let (config, mut opts) = match &settings.servers {
            NameServers::ResolvConf(path) => resolv_conf(path)?,
            NameServers::Listed(servers) => {
                let name_servers = servers
                    .iter()
                    .map(|s| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = s.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = s.port();
                        let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                        ns.connections = vec![udp, tcp];
                        ns
                    })
                    .collect();
                let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
                let mut opts = ResolverOpts::default();
                // Listed servers come with no search list: names are absolute.
                opts.ndots = 0;
                (config, opts)
            }
        };
        // The follower of each name is the cache (it asks again when the TTL runs out): a
        // second cache here would answer from memory when the server has changed.
        opts.cache_size = 0;
        // `dns:` means DNS: /etc/hosts is the node's, not the cluster's.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = settings.timeout;
        opts.attempts = 1;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Self {
            inner,
            timeout: settings.timeout,
        })
    }

    /// Looks `name` up in `family` (A or AAAA), within the configured timeout however many
    /// servers and search domains that takes.
    pub async fn lookup(&self, name: &str, family: Family) -> Lookup {
        let kind = match family {
            Family::V4 => RecordType::A,
            Family::V6 => RecordType::AAAA,
        };
        let asked = tokio::time::timeout(self.timeout, self.inner.lookup(name, kind)).await;
        let answer = match asked {
            Err(_) => return Lookup::Failed(Failure::Timeout),
            Ok(Err(e)) => return Lookup::Failed(failure(&e)),
            Ok(Ok(answer)) => answer,
        };
        let mut addresses = BTreeSet::new();
        let mut ttl = u32::MAX;
        for record in answer.answers() {
            let ip = match (&record.data, family) {
                (hickory_resolver::proto::rr::RData::A(a), Family::V4) => IpAddr::V4(a.0),
                (hickory_resolver::proto::rr::RData::AAAA(a), Family::V6) => IpAddr::V6(a.0),
                // CNAMEs on the way, records of another type.
                _ => continue,
            };
            addresses.insert(ip);
            ttl = ttl.min(record.ttl);
        }
        if addresses.is_empty() {
            return Lookup::Failed(Failure::Empty);
        }
        Lookup::Answer {
            addresses,
            ttl: Duration::from_secs(u64::from(ttl)),
        }
    }
}

fn resolv_conf(path: &Path) -> Result<(ResolverConfig, ResolverOpts), ResolverError> {
    // A resolv.conf is a few lines; anything larger is not one.
    let bytes = crate::config::read_regular_file(path, 64 * 1024).map_err(|source| {
        ResolverError::ResolvConf {
            path: path.to_owned(),
            source,
        }
    })?;
    hickory_resolver::system_conf::parse_resolv_conf(bytes).map_err(|e| {
        ResolverError::BadResolvConf {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })
}

fn failure(e: &NetError) -> Failure {
    match e {
        NetError::Timeout => Failure::Timeout,
        NetError::Io(_) | NetError::NoConnections | NetError::Busy => Failure::Unreachable,
        NetError::Dns(DnsError::NoRecordsFound(n)) => match n.response_code {
            ResponseCode::NXDomain => Failure::NxDomain,
            ResponseCode::NoError => Failure::Empty,
            ResponseCode::ServFail => Failure::ServFail,
            ResponseCode::Refused => Failure::Refused,
            _ => Failure::Error,
        },
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Failure::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => Failure::Refused,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Failure::NxDomain,
        _ => Failure::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_a_result_the_metrics_write() {
        for f in Failure::ALL {
            assert!(crate::view::LOOKUP_RESULTS.contains(&f.label()), "{f:?}");
        }
        assert_eq!(crate::view::LOOKUP_RESULTS.len(), Failure::ALL.len() + 1);
    }
}
