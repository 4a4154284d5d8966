//! The HTTP half of `cargo xtask measure`: wrk from a client in the measurement cgroup,
//! rounds alternating direct / steering only / steering with every signal hook, keep-alive
//! and one connection per request.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    measure::{HTTP_BACKEND, HTTP_VIP, add_cost, prog_stats},
    util::{output, run},
};

const SECONDS: u32 = 5;
const CONNECTIONS: u32 = 8;

pub fn rounds(
    ensure_agent: &mut dyn FnMut(bool) -> anyhow::Result<()>,
    cgroup: &std::path::Path,
    rounds: u32,
) -> anyhow::Result<()> {
    if output(Command::new("sh").args(["-c", "command -v wrk"])).is_none() {
        eprintln!("measure: installing wrk (Debian)");
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // (label, target, signals)
    let modes = [
        ("direct", HTTP_BACKEND, true),
        ("steering only", HTTP_VIP, false),
        ("steering + signals", HTTP_VIP, true),
    ];
    for (kind, extra) in [
        ("keep-alive", ""),
        ("connection per request", "-H 'Connection: close'"),
    ] {
        let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut cost: BTreeMap<((), String), (u64, u64)> = BTreeMap::new();
        for _ in 0..rounds {
            for (label, target, signals) in modes {
                ensure_agent(signals)?;
                let before = prog_stats()?;
                let rate = wrk(cgroup, target, extra)?;
                if label == "steering + signals" {
                    add_cost(&mut cost, &(), &before, &prog_stats()?);
                }
                rates.entry(label).or_default().push(rate);
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let direct = median(&rates["direct"]);
        println!(
            "HTTP requests per second, {kind} (wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, median of {rounds} alternating rounds):"
        );
        for (label, _, _) in modes {
            let r = median(&rates[label]);
            println!("  {label:<20} {r:>9.0}   ratio to direct {:.3}", r / direct);
        }
        let only = median(&rates["steering only"]);
        let all = median(&rates["steering + signals"]);
        println!(
            "  signals cost vs steering only: {:.1} %",
            100.0 * (1.0 - all / only)
        );
        println!("  kernel run time per call with every hook on ({kind}):");
        for (((), name), (ns, cnt)) in &cost {
            if *cnt > 0 {
                println!(
                    "    {name:<22} {:>7.1} ns  ({cnt} calls)",
                    *ns as f64 / *cnt as f64
                );
            }
        }
    }
    Ok(())
}

/// Runs wrk in the cgroup against `target`; requests per second.
fn wrk(cgroup: &std::path::Path, target: &str, extra: &str) -> anyhow::Result<f64> {
    // wrk on CPU 0, the responders (this process's threads) on CPU 1: two cores, one each,
    // instead of the scheduler's reshuffling adding noise to every ratio.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec taskset -c 0 wrk -t1 -c{CONNECTIONS} -d{SECONDS}s {extra} http://{target}/",
        cgroup.display()
    );
    let out = output(Command::new("sh").args(["-c", &script])).context("wrk failed")?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors against {target}:\n{out}");
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))
}

/// Pins this process (and the responder threads it starts afterwards) to one CPU.
pub fn pin_self_to_cpu(cpu: usize) {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) <= cpu {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}
