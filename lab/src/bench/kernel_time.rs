//! Kernel run time of sluice's programs (`kernel.bpf_stats_enabled`, read with bpftool), and
//! pinning the measuring process to one CPU.

use std::{collections::BTreeMap, process::Command};

use anyhow::Context as _;

use crate::util::output;

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
