//! The two sluice agents under measurement, each attached to its own client cgroup: one with
//! steering only (`signals: false`), one with every signal hook. Both carry the same virtual
//! addresses; a client's cgroup picks the agent. The steering agent also carries the split
//! and flip services and, for the scale rounds, N-1 filler services.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sluice_tests::{
    agent::wait_until_answering,
    config::{ConfigBuilder, ServiceBuilder},
};

use super::{
    env::BenchEnv,
    paths::{GREET_CANARY, GREET_STABLE, HTTP_CANARY, HTTP_STABLE, SPLIT_SLUICE},
};

/// The flip service: 0 % canary until the bench sets it, to time a share change.
pub const FLIP_VIP: &str = "127.0.1.4:80";

pub struct Agent {
    pub name: &'static str,
    pub cgroup: PathBuf,
    pub config: PathBuf,
    pub socket: String,
    pub pid: u32,
    signals: bool,
    /// Free when the agent was made, inside the bench's namespace.
    metrics_port: u16,
}

fn service(
    name: &str,
    vip: &str,
    stable: &str,
    canary: &str,
    percent: f64,
    http: bool,
) -> anyhow::Result<ServiceBuilder> {
    Ok(ServiceBuilder::new(name, vip.parse()?)
        .stable(stable.parse()?)
        .canary(canary.parse()?)
        .canary_percent(percent)
        .http1(http))
}

impl Agent {
    pub fn start(
        env: &mut BenchEnv,
        sluice: &Path,
        name: &'static str,
        signals: bool,
    ) -> anyhow::Result<Self> {
        let cgroup = env.cgroup(&format!("sluice-bench-{name}"))?;
        let pins = format!("/sys/fs/bpf/sluice-bench-{name}");
        let socket = format!("/run/sluice-bench-{name}/sluice.sock");
        let state = env.dir.join(format!("{name}-state.json"));
        env.remember_agent(sluice, &pins, &socket, &state.display().to_string());
        let config = env.dir.join(format!("{name}.yaml"));
        let mut a = Self {
            name,
            cgroup,
            config,
            socket,
            pid: 0,
            signals,
            metrics_port: sluice_tests::unused_port("127.0.0.1"),
        };
        a.write_config(&pins, &state, 1)?;
        let log = std::fs::File::create(env.dir.join(format!("{name}.log")))?;
        a.pid = env.spawn(
            &format!("sluice {name}"),
            Command::new(sluice)
                .args(["run", "--config"])
                .arg(&a.config)
                .stdout(std::process::Stdio::null())
                .stderr(log),
        )?;
        if !wait_until_answering(sluice, Path::new(&a.socket), Duration::from_secs(20)) {
            anyhow::bail!(
                "the {name} agent did not answer on {} within 20 s",
                a.socket
            );
        }
        Ok(a)
    }

    fn pins(&self) -> String {
        format!("/sys/fs/bpf/sluice-bench-{}", self.name)
    }

    /// Writes the config with `services` services in all (the measured ones plus fillers);
    /// the running agent picks it up within a second.
    pub fn write_config(&self, pins: &str, state: &Path, services: u32) -> anyhow::Result<()> {
        let mut config = ConfigBuilder::new()
            .cgroup(&self.cgroup)
            .pin_path(Path::new(pins))
            .api_socket(Path::new(&self.socket))
            .state_path(state)
            .metrics_address(&format!("127.0.0.1:{}", self.metrics_port))
            .signals(self.signals)
            .service(service(
                "conn",
                "127.0.1.1:80",
                GREET_STABLE,
                GREET_CANARY,
                10.0,
                false,
            )?)
            .service(service(
                "http",
                "127.0.1.2:80",
                HTTP_STABLE,
                HTTP_CANARY,
                10.0,
                self.signals,
            )?);
        if !self.signals {
            config = config
                .service(service(
                    "split",
                    SPLIT_SLUICE,
                    GREET_STABLE,
                    GREET_CANARY,
                    5.0,
                    false,
                )?)
                .service(service(
                    "flip",
                    FLIP_VIP,
                    GREET_STABLE,
                    GREET_CANARY,
                    0.0,
                    false,
                )?);
            for i in 0..services.saturating_sub(1) {
                let vip = format!("127.1.{}.{}:80", i / 250, 1 + i % 250);
                let filler = format!("filler-{i}");
                config = config.service(service(
                    &filler,
                    &vip,
                    GREET_STABLE,
                    GREET_CANARY,
                    10.0,
                    false,
                )?);
            }
        }
        config.write(&self.config)?;
        Ok(())
    }

    /// Reconfigures the steering agent to `services` services and waits until it has them.
    pub fn scale_to(&self, sluice: &Path, env: &BenchEnv, services: u32) -> anyhow::Result<()> {
        let state = env.dir.join(format!("{}-state.json", self.name));
        self.write_config(&self.pins(), &state, services)?;
        // The measured services (conn, http, split, flip) plus the fillers.
        let want = services.saturating_sub(1) + 4;
        let end = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < end {
            let out = Command::new(sluice)
                .args(["status", "--output", "json", "--socket", &self.socket])
                .output()?;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                if v["services"].as_array().map_or(0, Vec::len) == want as usize {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        anyhow::bail!("the agent did not take {services} services within 120 s")
    }

    /// The address its `/metrics` listens on (from its startup log line).
    pub fn metrics_addr(&self, env: &BenchEnv) -> anyhow::Result<std::net::SocketAddr> {
        let log = std::fs::read_to_string(env.dir.join(format!("{}.log", self.name)))?;
        let addr = log
            .lines()
            .rev()
            .find_map(|l| l.split("metrics=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| anyhow::anyhow!("no metrics= in the {} agent's log", self.name))?;
        Ok(addr.parse()?)
    }
}
