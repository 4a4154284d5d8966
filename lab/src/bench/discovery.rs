//! What following names costs the agent: two steering-only agents side by side for the same
//! window, each with N services of one stable and one canary backend set of two addresses:
//! one with the addresses written in, one with every set a DNS name (2N names, answered by
//! BIND on loopback with the TTL CoreDNS gives headless Services, 5 s). The difference in
//! CPU time and memory is what discovery costs; the named agent's lookups say how many it
//! made for it.

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use sluice_tests::{agent::wait_until_answering, dns::DnsServer, http::Scraped};

use super::{env::BenchEnv, runs::usage_during};
use crate::util::workspace_root;

/// `cargo xtask bench --discovery`: only this comparison, with `services` services a side
/// for `seconds`; writes target/bench-discovery/report.{json,md}.
pub fn run(services: u32, seconds: u64) -> anyhow::Result<()> {
    super::require_root()?;
    super::install()?;
    let (sluice, _probe) = crate::util::build_release_binaries()?;
    let (mut results, outcome, interrupted) = super::in_bench_env(|env, results| {
        results["discovery"] = measure(env, &sluice, services, seconds)?;
        Ok(())
    })?;
    results["machine"] = super::host::machine();
    let dir = workspace_root().join("target/bench-discovery");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut md = String::new();
    super::report::discovery(&mut md, &results["discovery"]);
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{md}");
    println!("bench: wrote {}", dir.join("report.md").display());
    outcome?;
    if interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// CoreDNS's TTL for a headless Service's records, and the agent's default lower bound.
const TTL: u32 = 5;

struct Measured {
    name: &'static str,
    pid: u32,
    socket: String,
    metrics: std::net::SocketAddr,
    /// From spawn to answering: the named agent's includes its first round of lookups.
    start_seconds: f64,
}

fn addresses(i: u32, canary: bool) -> Vec<IpAddr> {
    let third = if canary { 128 } else { 0 } + (i / 250) as u8;
    (0..2)
        .map(|k| IpAddr::from([127, 3, third, (1 + (i % 125) * 2 + k) as u8]))
        .collect()
}

fn config(dir: &Path, name: &str, cgroup: &Path, metrics: u16, dns: &DnsServer, n: u32) -> String {
    let mut out = format!(
        "cgroup: {}\npin_path: /sys/fs/bpf/sluice-bench-{name}\n\
         api_socket: /run/sluice-bench-{name}/sluice.sock\nstate_path: {}\n\
         metrics_address: 127.0.0.1:{metrics}\nsignals: false\n",
        cgroup.display(),
        dir.join(format!("{name}-state.json")).display()
    );
    if name == "named" {
        out.push_str(&format!("discovery: {{nameservers: [\"{}\"]}}\n", dns.addr));
    }
    out.push_str("services:\n");
    for i in 0..n {
        let vip = format!("127.4.{}.{}:80", i / 250, 1 + i % 250);
        let set = |canary: bool| -> String {
            if name == "named" {
                let role = if canary { "canary" } else { "stable" };
                format!(
                    "[{{dns: \"{}\", port: 8080}}]",
                    DnsServer::name(&format!("svc-{i}-{role}"))
                )
            } else {
                let list: Vec<String> = addresses(i, canary)
                    .iter()
                    .map(|a| format!("{{address: \"{a}:8080\"}}"))
                    .collect();
                format!("[{}]", list.join(", "))
            }
        };
        out.push_str(&format!(
            "  - name: svc-{i}\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: 10\n    \
             stable: {}\n    canary: {}\n",
            set(false),
            set(true)
        ));
    }
    out
}

fn lookups(metrics: std::net::SocketAddr) -> f64 {
    let (scraped, _) = Scraped::fetch(metrics);
    scraped.sum("sluice_discovery_lookups_total", &[])
}

/// Runs both agents for `seconds` and reports each one's cost and the ratio.
pub fn measure(env: &mut BenchEnv, sluice: &Path, n: u32, seconds: u64) -> anyhow::Result<Value> {
    let records: Vec<(String, Vec<IpAddr>)> = (0..n)
        .flat_map(|i| {
            [false, true].map(|canary| {
                let role = if canary { "canary" } else { "stable" };
                (format!("svc-{i}-{role}"), addresses(i, canary))
            })
        })
        .collect();
    let dns = DnsServer::start_with("bench", TTL, &records);
    let mut agents = Vec::new();
    for name in ["literal", "named"] {
        let cgroup = env.cgroup(&format!("sluice-bench-{name}"))?;
        let socket = format!("/run/sluice-bench-{name}/sluice.sock");
        let pins = format!("/sys/fs/bpf/sluice-bench-{name}");
        let state = env.dir.join(format!("{name}-state.json"));
        env.remember_agent(sluice, &pins, &socket, &state.display().to_string());
        let metrics = sluice_tests::unused_port("127.0.0.1");
        let path = env.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config(&env.dir, name, &cgroup, metrics, &dns, n))?;
        let log = std::fs::File::create(env.dir.join(format!("{name}.log")))?;
        let started = std::time::Instant::now();
        let pid = env.spawn(
            &format!("sluice {name}"),
            Command::new(sluice)
                .args(["run", "--config"])
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(log),
        )?;
        if !wait_until_answering(sluice, Path::new(&socket), Duration::from_secs(120)) {
            anyhow::bail!("the {name} agent did not answer within 120 s");
        }
        agents.push(Measured {
            name,
            pid,
            socket,
            metrics: std::net::SocketAddr::from(([127, 0, 0, 1], metrics)),
            start_seconds: started.elapsed().as_secs_f64(),
        });
    }
    // Past the first round of lookups: both agents in their steady state.
    std::thread::sleep(Duration::from_secs(u64::from(TTL) + 1));
    // Both agents are scraped alike (an exposition's buffers stay in a process's memory):
    // before and after the window.
    let scrape = || {
        agents
            .iter()
            .map(|a| lookups(a.metrics))
            .collect::<Vec<f64>>()
    };
    let lookups_before = scrape();
    let counted_from = std::time::Instant::now();
    // The same window for both: one measured inside the other.
    let ((((), named), lookups_after), literal) = usage_during(agents[0].pid, || {
        let (r, named) = usage_during(agents[1].pid, || {
            std::thread::sleep(Duration::from_secs(seconds));
            Ok(())
        })?;
        Ok(((r, named), scrape()))
    })?;
    // From just after the first scrape to just before the last one ended: the scrapes of a
    // thousand services' metrics take a while themselves.
    let counted_for = counted_from.elapsed().as_secs_f64();
    let lookups_made = lookups_after[1] - lookups_before[1];
    env.check_interrupt()?;
    let mut out = json!({ "services": n, "names": 2 * n, "ttl_seconds": TTL, "seconds": seconds });
    for (a, usage) in agents.iter().zip([literal, named]) {
        out[a.name] = json!({ "usage": usage, "start_seconds": a.start_seconds });
        // Both agents steer every service with both canary addresses: their status says so.
        let status = Command::new(sluice)
            .args(["status", "--output", "json", "--socket", &a.socket])
            .output()?;
        let v: Value = serde_json::from_slice(&status.stdout)?;
        let steered = v["services"].as_array().map_or(0, |s| {
            s.iter()
                .filter(|s| s["canary"].as_array().map_or(0, Vec::len) == 2)
                .count()
        });
        anyhow::ensure!(
            steered == n as usize,
            "the {} agent steers {steered} of {n} services with both canary addresses",
            a.name
        );
    }
    let usage = out.clone();
    let of = |name: &str, key: &str| usage[name]["usage"][key].as_f64().unwrap_or(f64::NAN);
    let cpu = |name: &str| of(name, "cpu_percent_of_a_core");
    out["lookups_per_second"] = json!(lookups_made / counted_for);
    out["cpu_percent_added"] = json!(cpu("named") - cpu("literal"));
    out["rss_kib_added"] = json!(of("named", "rss_kib") - of("literal", "rss_kib"));
    out["cpu_ratio"] = json!(cpu("named") / cpu("literal"));
    out["rss_ratio"] = json!(of("named", "rss_kib") / of("literal", "rss_kib"));
    drop(dns);
    Ok(out)
}
