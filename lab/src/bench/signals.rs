//! `cargo xtask bench --signals`: only what the golden signals' cost goal needs, with more
//! rounds than the full bench gives it. HTTP through nginx, keep-alive and one connection
//! per request, rotating direct / steering only / steering with every signal hook, throughput
//! with `kernel.bpf_stats_enabled` off; then one round of each with stats on for the kernel
//! time per call. Writes target/bench-signals/report.json and prints the ratios.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{
    Cost, WRK_CONNECTIONS, agents::Agent, costed, env::BenchEnv, paths, paths::Way, per_way, runs,
    set_stats,
};
use crate::util::workspace_root;

const WAYS: [Way; 3] = [Way::Direct, Way::SluiceSteering, Way::SluiceSignals];
const KINDS: [(&str, bool); 2] = [("keep_alive", false), ("connection_per_request", true)];

pub fn run(rounds: u32, seconds: u32, perf: bool) -> anyhow::Result<()> {
    super::require_root()?;
    super::install()?;
    let (sluice, _probe) = crate::util::build_release_binaries()?;
    let (mut results, outcome, interrupted) =
        super::in_bench_env(|env, results| measure(env, &sluice, rounds, seconds, perf, results))?;
    results["rounds"] = json!(rounds);
    results["seconds_per_round"] = json!(seconds);
    let dir = workspace_root().join("target/bench-signals");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    print_summary(&results);
    println!("bench: wrote {}", dir.join("report.json").display());
    outcome?;
    if interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

fn measure(
    env: &mut BenchEnv,
    sluice: &std::path::Path,
    rounds: u32,
    seconds: u32,
    perf: bool,
    results: &mut Value,
) -> anyhow::Result<()> {
    super::kernel_time::pin_self_to_cpu(1);
    let nginx = paths::start_nginx(env)?;
    let steer = Agent::start(env, sluice, "steer", false)?;
    let signals = Agent::start(env, sluice, "signals", true)?;
    let cgroup = super::client_cgroups(env, &steer, &signals)?;
    for (kind, close) in KINDS {
        eprintln!("bench: HTTP {kind}, {rounds} rounds of {seconds} s a way");
        let mut by_way: BTreeMap<Way, Vec<Value>> = BTreeMap::new();
        for round in 0..rounds {
            // Each round starts with another way: a way that always ran right after another
            // would inherit its TIME_WAIT sockets and its place in the machine's bursts.
            for w in (0..WAYS.len()).map(|i| WAYS[(round as usize + i) % WAYS.len()]) {
                env.check_interrupt()?;
                let busy0 = cpu_busy()?;
                let cpu0 = cpu_ns(&cgroup(w), nginx)?;
                let mut r =
                    runs::wrk(&cgroup(w), w.http_target(), seconds, WRK_CONNECTIONS, close)?;
                let cpu1 = cpu_ns(&cgroup(w), nginx)?;
                r["cpu_busy_percent"] = json!(busy_since(&busy0)?);
                let requests = r["requests"].as_f64().unwrap_or(f64::NAN);
                r["cpu_ns_per_request"] = json!((cpu1 - cpu0) as f64 / requests);
                by_way.entry(w).or_default().push(r);
            }
        }
        results["http"][kind] = per_way(&by_way);
    }
    if let Some(name) = env.exited() {
        anyhow::bail!("{name} exited during the run");
    }
    eprintln!("bench: kernel time per call (one round of each with bpf_stats on)");
    let mut cost = Cost::new();
    set_stats(true)?;
    for (kind, close) in KINDS {
        env.check_interrupt()?;
        let r = costed(&mut cost, kind, Way::SluiceSignals, || {
            runs::wrk(
                &signals.cgroup,
                Way::SluiceSignals.http_target(),
                seconds,
                WRK_CONNECTIONS,
                close,
            )
        })?;
        results["costed_requests"][kind] = r["requests"].clone();
    }
    set_stats(false)?;
    if perf {
        for (kind, close) in KINDS {
            for w in WAYS {
                env.check_interrupt()?;
                profile(&cgroup(w), w, kind, close, seconds)?;
            }
        }
    }
    let mut hooks = Vec::new();
    for (((kind, _), program), (ns, calls)) in &cost {
        if *calls > 0 {
            hooks.push(json!({ "rounds": kind, "program": program, "ns_per_call": *ns as f64 / *calls as f64, "calls": calls }));
        }
    }
    results["hooks"] = json!(hooks);
    Ok(())
}

/// One round of a way under `perf record -a -g`, into target/bench-signals/perf-KIND-WAY.data.
/// The whole machine is sampled: the hooks' work in softirqs and the kernel's around them
/// (cgroup program arrays, map allocation, RCU) count as much as the programs' own time.
fn profile(
    cgroup: &std::path::Path,
    w: Way,
    kind: &str,
    close: bool,
    seconds: u32,
) -> anyhow::Result<()> {
    let out = workspace_root().join(format!("target/bench-signals/perf-{kind}-{}.data", w.key()));
    std::fs::create_dir_all(out.parent().context("no parent")?)?;
    eprintln!(
        "bench: perf record of {} {kind} into {}",
        w.label(),
        out.display()
    );
    let mut perf = std::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "4999",
            "-a",
            "-g",
            "-o",
        ])
        .arg(&out)
        .args(["--", "sleep", &(seconds + 1).to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("perf (linux-perf) not installed?")?;
    let r = runs::wrk(cgroup, w.http_target(), seconds, WRK_CONNECTIONS, close);
    let status = perf.wait()?;
    let r = r?;
    anyhow::ensure!(status.success(), "perf record failed: {status}");
    // A profile's shares mean a cost a request only beside the rate it ran at.
    eprintln!(
        "bench: profiled {} {kind}: {} requests/s",
        w.label(),
        r["per_second"]
    );
    Ok(())
}

/// CPU time, in ns, of the client's cgroup (wrk) and of nginx so far. Loopback packets are
/// processed in the softirq of the task that sent them, charged to that task (this kernel has
/// no IRQ time accounting), so this is the kernel and user work of both ends, sluice's hooks
/// included, and not the machine's other load: a measure of a request's cost that other
/// tenants' bursts, which move the throughput, do not move.
fn cpu_ns(cgroup: &std::path::Path, nginx: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(cgroup.join("cpu.stat"))?;
    let client_us: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .context("no usage_usec in cpu.stat")?;
    let mut server_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{nginx}/task"))? {
        // schedstat: time on the CPU (ns), time waiting, timeslices.
        let text = std::fs::read_to_string(task?.path().join("schedstat"))?;
        server_ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(client_us * 1000 + server_ns)
}

/// Busy and total jiffies of each CPU (`/proc/stat`).
fn cpu_busy() -> anyhow::Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string("/proc/stat")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect())
}

/// Per CPU, the busy share since `before`, in percent.
fn busy_since(before: &[(u64, u64)]) -> anyhow::Result<Vec<f64>> {
    Ok(cpu_busy()?
        .iter()
        .zip(before)
        .map(|((b1, t1), (b0, t0))| 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
        .collect())
}

/// A 90 % bootstrap interval of the median of `v` (percentile method, 2000 resamples, a
/// fixed seed so that a report renders the same twice).
pub fn median_interval(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut medians: Vec<f64> = (0..2000)
        .map(|_| {
            let sample: Vec<f64> = (0..v.len())
                .map(|_| v[(next() % v.len() as u64) as usize])
                .collect();
            runs::median(&sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (medians[100], medians[1899])
}

/// One field of every round of a way.
fn per_round(way: &Value, field: &str) -> Vec<f64> {
    way["rounds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r[field].as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn print_summary(r: &Value) {
    for (kind, _) in KINDS {
        let t = &r["http"][kind];
        let rate = |w: Way| {
            t[w.key()]["median"]["per_second"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        let signals_vs_steering =
            runs::paired_ratio(&t[Way::SluiceSignals.key()], &t[Way::SluiceSteering.key()]);
        println!("HTTP {kind} (median of per-round ratios):");
        for w in WAYS {
            println!(
                "  {:<22} {:>9.0} req/s   to direct {:.3}",
                w.label(),
                rate(w),
                t[w.key()]["ratio_to_direct"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!("  signals / steering only: {signals_vs_steering:.3}");
        let ratios: Vec<f64> = per_round(&t[Way::SluiceSignals.key()], "per_second")
            .iter()
            .zip(per_round(&t[Way::Direct.key()], "per_second"))
            .map(|(s, d)| s / d)
            .collect();
        let (low, high) = median_interval(&ratios);
        println!(
            "  signals / direct: median {:.3}, 90 % interval {low:.3}–{high:.3}",
            runs::median(&ratios)
        );
        let cpu = |w: Way| per_round(&t[w.key()], "cpu_ns_per_request");
        let direct_cpu = cpu(Way::Direct);
        for w in WAYS {
            let mine = cpu(w);
            // Per round, direct's CPU time a request over this way's: the throughput ratio a
            // CPU-bound path would have, without the other load's noise.
            let ratios: Vec<f64> = direct_cpu.iter().zip(&mine).map(|(d, m)| d / m).collect();
            println!(
                "  {:<22} {:>7.1} µs of CPU a request   direct / this {:.3}",
                w.label(),
                runs::median(&mine) / 1e3,
                runs::median(&ratios)
            );
        }
        let requests = r["costed_requests"][kind].as_f64().unwrap_or(f64::NAN);
        let mut per_request = 0.0;
        for h in r["hooks"].as_array().into_iter().flatten() {
            if h["rounds"] == kind {
                let calls = h["calls"].as_f64().unwrap_or(0.0);
                let ns = h["ns_per_call"].as_f64().unwrap_or(0.0);
                per_request += calls * ns / requests;
                println!(
                    "    {:<22} {:>7.1} ns a call, {:.2} calls a request",
                    h["program"].as_str().unwrap_or(""),
                    ns,
                    calls / requests
                );
            }
        }
        println!("    kernel time a request (stats on): {per_request:.0} ns");
    }
}
