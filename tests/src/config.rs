//! A typed builder for sluice configurations, written with the agent's own file shapes
//! (`sluice::config::raw`), so what it writes is exactly what the agent parses.

use std::{net::SocketAddr, path::Path};

pub use sluice::config::raw::{RawBackend, RawChecks, RawConfig, RawGuard, RawRollout, RawService};

/// A whole configuration file.
#[derive(Clone, Debug)]
pub struct ConfigBuilder(RawConfig);

impl Default for ConfigBuilder {
    fn default() -> Self {
        // The file's own defaults, and no services yet (said explicitly, as the file must).
        Self(serde_yaml::from_str("services: []").expect("a configuration without services parses"))
    }
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cgroup(mut self, path: &Path) -> Self {
        self.0.cgroup = Some(path.display().to_string());
        self
    }

    pub fn pin_path(mut self, path: &Path) -> Self {
        self.0.pin_path = Some(path.display().to_string());
        self
    }

    pub fn api_socket(mut self, path: &Path) -> Self {
        self.0.api_socket = Some(path.display().to_string());
        self
    }

    pub fn state_path(mut self, path: &Path) -> Self {
        self.0.state_path = Some(path.display().to_string());
        self
    }

    pub fn metrics_address(mut self, address: &str) -> Self {
        self.0.metrics_address = Some(address.to_owned());
        self
    }

    pub fn signals(mut self, on: bool) -> Self {
        self.0.signals = on;
        self
    }

    pub fn service(mut self, service: ServiceBuilder) -> Self {
        self.0.services.get_or_insert_with(Vec::new).push(service.0);
        self
    }

    /// The configuration as YAML.
    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.0).expect("a configuration serialises")
    }

    /// Writes it to `path` atomically (a temporary beside it, then a rename), as a ConfigMap
    /// update would.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, self.yaml())?;
        std::fs::rename(&tmp, path)
    }
}

/// One service.
#[derive(Clone, Debug)]
pub struct ServiceBuilder(RawService);

impl ServiceBuilder {
    pub fn new(name: &str, virtual_address: SocketAddr) -> Self {
        let mut raw: RawService = serde_yaml::from_str(&format!(
            "{{name: {name:?}, virtual_addresses: [\"{virtual_address}\"], stable: []}}"
        ))
        .expect("a minimal service parses");
        raw.stable.clear();
        Self(raw)
    }

    pub fn stable(mut self, address: SocketAddr) -> Self {
        self.0.stable.push(backend(address, 1));
        self
    }

    pub fn canary(mut self, address: SocketAddr) -> Self {
        self.0.canary.push(backend(address, 1));
        self
    }

    pub fn canary_percent(mut self, percent: f64) -> Self {
        self.0.canary_percent = percent;
        self
    }

    /// Parse HTTP/1.x on its connections (`l7: http1`).
    pub fn http1(mut self, on: bool) -> Self {
        self.0.l7 = if on { "http1" } else { "none" }.to_owned();
        self
    }
}

fn backend(address: SocketAddr, weight: i64) -> RawBackend {
    RawBackend {
        address: Some(address.to_string()),
        dns: None,
        port: None,
        weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_builder_writes_the_agent_parses() {
        let vip: SocketAddr = "10.96.0.10:80".parse().expect("address");
        let stable: SocketAddr = "10.0.1.1:8080".parse().expect("address");
        let canary: SocketAddr = "10.0.2.1:8080".parse().expect("address");
        let yaml = ConfigBuilder::new()
            .signals(false)
            .pin_path(Path::new("/sys/fs/bpf/sluice-x"))
            .service(
                ServiceBuilder::new("web", vip)
                    .stable(stable)
                    .canary(canary)
                    .canary_percent(12.5)
                    .http1(true),
            )
            .yaml();
        let c = sluice::config::parse_str(&yaml).expect("valid");
        assert!(!c.signals);
        assert_eq!(c.pin_path, Path::new("/sys/fs/bpf/sluice-x"));
        let s = &c.services[0];
        use sluice::config::Target;
        assert_eq!(
            (s.name.as_str(), &s.virtual_addresses[0]),
            ("web", &Target::Address(vip))
        );
        assert_eq!(
            (&s.stable[0].target, &s.canary[0].target),
            (&Target::Address(stable), &Target::Address(canary))
        );
        assert_eq!((s.canary_ppm, s.http1), (125_000, true));
    }
}
