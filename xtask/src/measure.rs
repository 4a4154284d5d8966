//! `cargo xtask measure`: what steering costs, measured side by side in one run.
//!
//! A client process in a throwaway cgroup connects N times to a loopback backend, alternately
//! straight to the backend and through a virtual address sluice steers to it. Both paths run
//! the same connect4 program (a direct connect takes its early exit: the "not a virtual
//! address" cost); the per-program run time comes from the kernel's own accounting
//! (kernel.bpf_stats_enabled), as deltas over each kind of round.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    local::{Backend, cgroup2_mount, wait_for_daemon},
    measure_http,
    responder::Responder,
    util::{output, workspace_root},
};

const BACKEND: &str = "127.0.12.1:8080";
const CANARY: &str = "127.0.12.2:8080";
const VIP: &str = "127.0.12.100:80";
/// The HTTP rounds' service (l7: http1) and its responders.
pub const HTTP_BACKEND: &str = "127.0.12.1:8088";
const HTTP_CANARY: &str = "127.0.12.2:8088";
pub const HTTP_VIP: &str = "127.0.12.101:80";
const PIN_PATH: &str = "/sys/fs/bpf/sluice-measure";
const SOCKET: &str = "/run/sluice-measure/sluice.sock";
const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The agent under measurement, restarted when the signals switch changes.
struct MeasuredAgent {
    sluice: std::path::PathBuf,
    config: std::path::PathBuf,
    cgroup: std::path::PathBuf,
    child: Option<std::process::Child>,
    signals: Option<bool>,
}

impl MeasuredAgent {
    fn ensure(&mut self, signals: bool) -> anyhow::Result<()> {
        if self.signals == Some(signals) {
            return Ok(());
        }
        self.stop();
        std::fs::write(
            &self.config,
            format!(
                "cgroup: {}\npin_path: {PIN_PATH}\napi_socket: {SOCKET}\nmetrics_address: 127.0.0.1:0\n\
                 signals: {signals}\nservices:\n  - name: measure\n    \
                 virtual_addresses: [\"{VIP}\"]\n    canary_percent: 10\n    stable: [{{address: \"{BACKEND}\"}}]\n    \
                 canary: [{{address: \"{CANARY}\"}}]\n  - name: measure-http\n    l7: http1\n    \
                 virtual_addresses: [\"{HTTP_VIP}\"]\n    canary_percent: 10\n    \
                 stable: [{{address: \"{HTTP_BACKEND}\"}}]\n    canary: [{{address: \"{HTTP_CANARY}\"}}]\n",
                self.cgroup.display()
            ),
        )?;
        let child = Command::new(&self.sluice)
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        wait_for_daemon(&self.sluice, Path::new(SOCKET), Duration::from_secs(10))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// SIGKILL by the pid we started: the pins stay, the next start re-adopts them.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(SOCKET);
    }
}

/// Everything `measure` sets up, undone on drop: also when a round fails or panics.
impl Drop for MeasuredAgent {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new(&self.sluice)
            .args(["detach", "--pin-path", PIN_PATH, "--socket", SOCKET])
            .output();
        let _ = std::fs::remove_dir(&self.cgroup);
        for dir in [self.config.parent(), Path::new(SOCKET).parent()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Restores kernel.bpf_stats_enabled on drop.
struct StatsSwitch(String);

impl StatsSwitch {
    fn on() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
        std::fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(before.trim().to_owned()))
    }
}

impl Drop for StatsSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.0);
    }
}

pub fn measure(connections: u64, rounds: u32, http_only: bool) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("measuring attaches kernel programs: run it as root");
    }
    // The tests' probe is the client: it joins the cgroup, then connect, read, getpeername
    // and close with a reset (no TIME_WAIT), N times.
    let (sluice, _probe) = crate::util::build_release_binaries()?;
    let cgroup = cgroup2_mount()?.join("sluice-measure");
    std::fs::create_dir_all(&cgroup)?;
    // Greeting servers for the connection rounds, HTTP responders for the request rounds.
    let backend = Backend::start(BACKEND, "stable")?;
    let canary = Backend::start(CANARY, "canary")?;
    measure_http::pin_self_to_cpu(1);
    let http_stable = Responder::start(HTTP_BACKEND)?;
    let http_canary = Responder::start(HTTP_CANARY)?;
    let dir = std::env::temp_dir().join("sluice-measure");
    std::fs::create_dir_all(&dir)?;
    let mut agent = MeasuredAgent {
        sluice: sluice.clone(),
        config: dir.join("sluice.yaml"),
        cgroup: cgroup.clone(),
        child: None,
        signals: None,
    };
    let _stats = StatsSwitch::on()?;
    agent.ensure(true)?;
    if !http_only {
        rounds_side_by_side(&cgroup, connections, rounds)?;
    }
    measure_http::rounds(&mut |s| agent.ensure(s), &cgroup, rounds)?;
    drop(agent);
    backend.stop();
    canary.stop();
    http_stable.stop();
    http_canary.stop();
    Ok(())
}

fn rounds_side_by_side(cgroup: &Path, connections: u64, rounds: u32) -> anyhow::Result<()> {
    let mut rate = BTreeMap::<&str, Vec<f64>>::new();
    let mut cost = BTreeMap::<(&str, String), (u64, u64)>::new();
    for round in 0..rounds {
        for (label, target) in [("direct", BACKEND), ("steered", VIP)] {
            let before = prog_stats()?;
            let start = Instant::now();
            let out = output(
                Command::new(workspace_root().join("target/release/sluice-probe"))
                    .arg("--cgroup")
                    .arg(cgroup)
                    .args(["--connect", target, "--count", &connections.to_string()]),
            )
            .context("the probe failed")?;
            let secs = start.elapsed().as_secs_f64();
            let report: serde_json::Value = serde_json::from_str(&out).context("probe output")?;
            let ok: u64 = report["replies"]
                .as_object()
                .map(|r| r.values().filter_map(serde_json::Value::as_u64).sum())
                .unwrap_or(0);
            if ok != connections {
                bail!("{label} round {round}: {ok} of {connections} connections succeeded");
            }
            rate.entry(label)
                .or_default()
                .push(connections as f64 / secs);
            add_cost(&mut cost, &label, &before, &prog_stats()?);
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (direct, steered) = (median(&rate["direct"]), median(&rate["steered"]));
    println!("connections per second (median of {rounds} rounds of {connections}, alternating):");
    println!("  direct to the backend   {direct:>9.0}");
    println!(
        "  through the VIP         {steered:>9.0}   ratio {:.3}",
        steered / direct
    );
    println!("kernel run time per call (bpf_stats), by the kind of round it ran in:");
    for ((label, name), (ns, cnt)) in &cost {
        if *cnt > 0 {
            println!(
                "  {label:<8} {name:<22} {:>7.1} ns  ({cnt} calls)",
                *ns as f64 / *cnt as f64
            );
        }
    }
    Ok(())
}

/// (name, run_time_ns, run_cnt) of every loaded sluice program, by program id.
pub fn prog_stats() -> anyhow::Result<BTreeMap<u64, (String, u64, u64)>> {
    let out = output(Command::new("bpftool").args(["--json", "prog", "show"]))
        .context("bpftool prog show")?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool json")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str().filter(|n| n.starts_with("sluice_"))?;
            Some((
                p["id"].as_u64()?,
                (
                    name.to_owned(),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// Adds what each program ran between two readings to `cost`, by name. Programs are
/// compared by id: an agent restart replaces program instances between readings.
pub fn add_cost<K: Ord + Clone>(
    cost: &mut BTreeMap<(K, String), (u64, u64)>,
    key: &K,
    before: &BTreeMap<u64, (String, u64, u64)>,
    after: &BTreeMap<u64, (String, u64, u64)>,
) {
    for (id, (name, ns, cnt)) in after {
        let (b_ns, b_cnt) = before.get(id).map_or((0, 0), |(_, n, c)| (*n, *c));
        let e = cost.entry((key.clone(), name.clone())).or_default();
        e.0 += ns.saturating_sub(b_ns);
        e.1 += cnt.saturating_sub(b_cnt);
    }
}
