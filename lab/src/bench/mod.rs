//! `cargo xtask bench [--quick]`: sluice side by side with no steering, iptables, nftables,
//! haproxy and Envoy, in one run, in a network namespace of its own. Writes
//! `target/bench/report.md` and `target/bench/report.json` (`--quick` writes to
//! `target/bench-quick/`: a smoke run of the debug builds whose numbers mean nothing). Every
//! figure is also given as a ratio to the direct path measured in the same run.

mod agents;
pub mod cluster;
pub mod discovery;
pub mod drain;
mod env;
mod host;
mod kernel_time;
mod paths;
mod report;
mod runs;
pub mod signals;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use sluice_tests::Backend;

use crate::util::workspace_root;
use agents::{Agent, FLIP_VIP};
use env::BenchEnv;
use host::{install, machine, versions};
use kernel_time::{add_cost, pin_self_to_cpu, prog_stats};
use paths::{ALL, GREET_CANARY, GREET_STABLE, Way};

/// How much of everything: the full run, or the smoke run `cargo xtask test` does.
struct Plan {
    rounds: u32,
    /// HTTP rounds: more of them, as their ratios are the noisiest (about ±8 % a round here).
    http_rounds: u32,
    connections: u64,
    fixed_rates: Vec<f64>,
    fixed_seconds: f64,
    http_seconds: u32,
    split_connections: u64,
    scale: Vec<u32>,
    weight_repeats: u32,
    idle_seconds: u64,
    /// Named services of the discovery round, and its window.
    discovery_services: u32,
    discovery_seconds: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                http_rounds: 1,
                connections: 300,
                fixed_rates: vec![1000.0],
                fixed_seconds: 0.3,
                http_seconds: 1,
                split_connections: 1000,
                scale: vec![1, 100],
                weight_repeats: 1,
                idle_seconds: 1,
                discovery_services: 20,
                discovery_seconds: 2,
            }
        } else {
            // Many short rounds rather than a few long ones: the ratios are medians of
            // per-round ratios, and this machine's other load comes in bursts of seconds.
            Self {
                rounds: 7,
                http_rounds: 7,
                connections: 8_000,
                fixed_rates: vec![2000.0, 5000.0],
                fixed_seconds: 3.0,
                http_seconds: 3,
                split_connections: 100_000,
                scale: vec![1, 100, 1000, 10_000],
                weight_repeats: 5,
                idle_seconds: 10,
                discovery_services: 1000,
                discovery_seconds: 30,
            }
        }
    }
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const WRK_CONNECTIONS: u32 = 8;
/// Client threads for the connection rounds that measure capacity. One client connecting
/// one at a time waits on the server's CPU for most of each connection, so its rate is a
/// latency; four keep the client's CPU busy, so their rate is what that CPU can do, and a
/// path's extra CPU work shows in full.
pub const PARALLEL: u32 = 4;

pub fn bench(quick: bool) -> anyhow::Result<()> {
    require_root()?;
    install()?;
    let (sluice, probe) = crate::util::build_binaries(!quick)?;
    let root = workspace_root();
    let out_dir = root.join(if quick {
        "target/bench-quick"
    } else {
        "target/bench"
    });
    let versions = versions()?;
    let plan = Plan::new(quick);
    let started = Instant::now();
    let (mut results, outcome, interrupted) =
        in_bench_env(|env, results| measure_all(env, &plan, &sluice, &probe, results))?;
    results["versions"] = versions;
    results["machine"] = machine();
    results["quick"] = json!(quick);
    results["rounds"] = json!({ "connections": plan.rounds, "http": plan.http_rounds });
    results["seconds"] = json!(started.elapsed().as_secs_f64());
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = report::markdown(&results);
    std::fs::write(out_dir.join("report.md"), &md)?;
    println!("{md}");
    println!(
        "bench: {} in {:.0} s; wrote {}",
        if quick { "smoke run" } else { "full run" },
        started.elapsed().as_secs_f64(),
        out_dir.join("report.md").display()
    );
    outcome?;
    if quick {
        smoke_check(&results, &plan)?;
    }
    if interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    if !crate::util::is_root() {
        anyhow::bail!(
            "the bench attaches kernel programs and makes a network namespace: run it as root"
        );
    }
    Ok(())
}

/// Runs `measure` in the bench's own network namespace with kernel.bpf_stats_enabled off,
/// then restores the setting and removes every process, cgroup and pin the bench made,
/// whatever happened. Returns what `measure` filled in (with the error, if any, under
/// "error": a failed or interrupted run still reports what it measured), its outcome, and
/// whether Ctrl-C interrupted it.
fn in_bench_env(
    measure: impl FnOnce(&mut BenchEnv, &mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<(Value, anyhow::Result<()>, bool)> {
    let interrupted = Arc::new(AtomicBool::new(false));
    // Before any thread starts: the namespace is entered by this thread alone, and every
    // thread and process started later inherits it.
    let mut env = BenchEnv::enter(interrupted.clone())?;
    let flag = interrupted.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let stats_before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    let mut results = json!({});
    let outcome = set_stats(false).and_then(|()| measure(&mut env, &mut results));
    let _ = std::fs::write(STATS, stats_before.trim());
    drop(env);
    if let Err(e) = &outcome {
        results["error"] = json!(format!("{e:#}"));
    }
    Ok((results, outcome, interrupted.load(Ordering::SeqCst)))
}

/// The client cgroup of each way: each sluice agent's own, and one for every other path.
fn client_cgroups(
    env: &mut BenchEnv,
    steer: &Agent,
    signals: &Agent,
) -> anyhow::Result<impl Fn(Way) -> PathBuf + use<>> {
    let (steer, signals) = (steer.cgroup.clone(), signals.cgroup.clone());
    let other = env.cgroup("sluice-bench-client")?;
    Ok(move |w: Way| match w {
        Way::SluiceSteering => steer.clone(),
        Way::SluiceSignals => signals.clone(),
        _ => other.clone(),
    })
}

fn measure_all(
    env: &mut BenchEnv,
    plan: &Plan,
    sluice: &Path,
    probe: &Path,
    results: &mut Value,
) -> anyhow::Result<()> {
    pin_self_to_cpu(1);
    let greet = [
        Backend::start_at(GREET_STABLE.parse()?, "stable")?,
        Backend::start_at(GREET_CANARY.parse()?, "canary")?,
    ];
    paths::start_nginx(env)?;
    paths::start_haproxy(env)?;
    paths::start_envoy(env)?;
    paths::load_iptables(env, 0)?;
    paths::load_nftables(env)?;
    let steer = Agent::start(env, sluice, "steer", false)?;
    let signals = Agent::start(env, sluice, "signals", true)?;
    // What each path was, exactly: the files the servers, proxies, rules and agents were
    // started with (the scale phase adds rule pairs and services of the same shape).
    for file in [
        "nginx.conf",
        "haproxy.cfg",
        "envoy.yaml",
        "iptables.rules",
        "nftables.rules",
        "steer.yaml",
        "signals.yaml",
    ] {
        let text = std::fs::read_to_string(env.dir.join(file))
            .with_context(|| format!("reading back {file}"))?;
        results["setup"][file] = json!(text);
    }
    let cgroup = client_cgroups(env, &steer, &signals)?;
    let other = cgroup(Way::Direct);
    let mut cost = Cost::new();

    eprintln!("bench: agents idle for {} s", plan.idle_seconds);
    // Idle agents first.
    let idle = |a: &Agent| -> anyhow::Result<Value> {
        let ((), u) = runs::usage_during(a.pid, || {
            std::thread::sleep(std::time::Duration::from_secs(plan.idle_seconds));
            Ok(())
        })?;
        Ok(u)
    };
    results["agent"]["idle"] = json!({ "steering": idle(&steer)?, "signals": idle(&signals)? });

    eprintln!("bench: new connections, closed loop and at fixed rates");
    // 2. New connections, closed loop then at fixed rates.
    let [closed, closed_parallel] = closed_loop_rounds(env, plan, probe, &ALL, &cgroup)?;
    results["connections"]["closed_loop"] = per_way(&closed);
    results["connections"]["closed_loop_parallel"] = per_way(&closed_parallel);
    for rate in &plan.fixed_rates {
        let mut fixed: BTreeMap<Way, Vec<Value>> = BTreeMap::new();
        for w in ALL {
            env.check_interrupt()?;
            let n = (rate * plan.fixed_seconds) as u64;
            fixed.entry(w).or_default().push(runs::connections(
                probe,
                &cgroup(w),
                w.conn_target(),
                n,
                Some(*rate),
                PARALLEL,
            )?);
        }
        results["connections"]["fixed_rate"][format!("{rate}")] = per_way(&fixed);
    }

    eprintln!("bench: HTTP with wrk");
    // 3. HTTP, keep-alive and one connection per request.
    for (kind, close) in [("keep_alive", false), ("connection_per_request", true)] {
        let mut rounds: BTreeMap<Way, Vec<Value>> = BTreeMap::new();
        let mut load_usage = Vec::new();
        for _ in 0..plan.http_rounds {
            for w in ALL {
                env.check_interrupt()?;
                let (r, u) = runs::usage_during(signals.pid, || {
                    runs::wrk(
                        &cgroup(w),
                        w.http_target(),
                        plan.http_seconds,
                        WRK_CONNECTIONS,
                        close,
                    )
                })?;
                if w == Way::SluiceSignals {
                    load_usage.push(u);
                }
                rounds.entry(w).or_default().push(r);
            }
        }
        results["http"][kind] = per_way(&rounds);
        results["agent"]["under_load"][kind] = json!(load_usage);
    }
    if let Some(name) = env.exited() {
        anyhow::bail!("{name} exited during the run");
    }

    // 1. Kernel time per call, in rounds of their own: with kernel.bpf_stats_enabled every
    // program run also reads the clock twice (about 60 ns here), a cost production does not
    // pay and that grows with the number of hooks a packet meets, so no throughput round
    // above ran with it.
    eprintln!("bench: kernel time per call of each hook");
    set_stats(true)?;
    for w in ALL {
        env.check_interrupt()?;
        costed(&mut cost, "connections", w, || {
            runs::connections(
                probe,
                &cgroup(w),
                w.conn_target(),
                plan.connections,
                None,
                1,
            )
        })?;
        for (kind, close) in [("keep_alive", false), ("connection_per_request", true)] {
            costed(&mut cost, kind, w, || {
                let seconds = plan.http_seconds;
                runs::wrk(&cgroup(w), w.http_target(), seconds, WRK_CONNECTIONS, close)
            })?;
        }
    }
    // Sockets the hooks see but do not own: connections from the sluice cgroups straight to
    // a backend (no virtual address). Every hook must leave them at its first check.
    for (w, cg) in [
        (Way::SluiceSteering, &steer.cgroup),
        (Way::SluiceSignals, &signals.cgroup),
    ] {
        env.check_interrupt()?;
        results["connections"]["untagged"][w.key()] = costed(&mut cost, "untagged", w, || {
            runs::connections(probe, cg, GREET_STABLE, plan.connections, None, 1)
        })?;
        costed(&mut cost, "floor", w, || {
            runs::udp_connects(probe, cg, GREET_STABLE, plan.connections)
        })?;
    }
    set_stats(false)?;

    eprintln!("bench: split accuracy");
    // 5. Split accuracy at 5 %.
    for (key, target, cg) in [
        ("sluice", paths::SPLIT_SLUICE, steer.cgroup.clone()),
        ("iptables", paths::SPLIT_IPTABLES, other.clone()),
        ("haproxy", paths::SPLIT_HAPROXY, other.clone()),
    ] {
        env.check_interrupt()?;
        results["split"][key] = runs::split(probe, &cg, target, plan.split_connections, 0.05)?;
    }

    // 6. The time a share change takes to reach new connections.
    let mut flips = Vec::new();
    for _ in 0..plan.weight_repeats {
        env.check_interrupt()?;
        flips.push(runs::weight_latency(
            sluice,
            &steer.socket,
            probe,
            &steer.cgroup,
            FLIP_VIP,
            "100",
            "canary",
        )?);
        flips.push(runs::weight_latency(
            sluice,
            &steer.socket,
            probe,
            &steer.cgroup,
            FLIP_VIP,
            "0",
            "stable",
        )?);
    }
    results["weight_change"] = json!(flips);

    // 4. Scale: N services in sluice against N rule pairs in iptables.
    for n in &plan.scale {
        env.check_interrupt()?;
        eprintln!("bench: scale, {n} services");
        steer.scale_to(sluice, env, *n)?;
        paths::load_iptables(env, n - 1)?;
        let ways = [Way::Direct, Way::SluiceSteering, Way::Iptables];
        let [rounds, rounds_parallel] = closed_loop_rounds(env, plan, probe, &ways, &cgroup)?;
        results["scale"][format!("{n}")] = per_way(&rounds);
        results["scale_parallel"][format!("{n}")] = per_way(&rounds_parallel);
        if *n == 1000 || (plan.scale.last() == Some(n) && *n < 1000) {
            let ((), u) = runs::usage_during(steer.pid, || {
                std::thread::sleep(std::time::Duration::from_secs(plan.idle_seconds));
                Ok(())
            })?;
            results["agent"]["scrape"] = json!({
                "services": n + 3,
                "time": runs::scrape_time(steer.metrics_addr(env)?, 5)?,
                "idle": u,
            });
        }
    }
    paths::load_iptables(env, 0)?;

    // 7. What following names costs: last, as its two agents stay until the end.
    eprintln!(
        "bench: discovery, {} named services against as many literal ones",
        plan.discovery_services
    );
    results["discovery"] =
        discovery::measure(env, sluice, plan.discovery_services, plan.discovery_seconds)?;

    // 1. Kernel time per call of each hook, by the kind of round it ran in.
    let mut hooks = Vec::new();
    for (((kind, way), program), (ns, cnt)) in &cost {
        let per_call = if *cnt > 0 {
            *ns as f64 / *cnt as f64
        } else {
            0.0
        };
        hooks.push(json!({ "rounds": kind, "way": way, "program": program, "ns_per_call": per_call, "calls": cnt }));
    }
    results["hooks"] = json!(hooks);
    drop(greet);
    Ok(())
}

/// Closed-loop connection rounds through `ways`, alternating, each round one at a time and
/// then [`PARALLEL`] at a time: the rounds of each, by way.
fn closed_loop_rounds(
    env: &BenchEnv,
    plan: &Plan,
    probe: &Path,
    ways: &[Way],
    cgroup: &dyn Fn(Way) -> PathBuf,
) -> anyhow::Result<[BTreeMap<Way, Vec<Value>>; 2]> {
    let mut out: [BTreeMap<Way, Vec<Value>>; 2] = Default::default();
    for _ in 0..plan.rounds {
        for &w in ways {
            for (parallel, into) in [1, PARALLEL].into_iter().zip(out.iter_mut()) {
                env.check_interrupt()?;
                let r = runs::connections(
                    probe,
                    &cgroup(w),
                    w.conn_target(),
                    plan.connections,
                    None,
                    parallel,
                )?;
                into.entry(w).or_default().push(r);
            }
        }
    }
    Ok(out)
}

/// Kernel time and calls of each program, by (kind of round, way) and program name.
type Cost = BTreeMap<((String, String), String), (u64, u64)>;

/// Runs `round` and adds what every sluice program ran meanwhile to `cost`, under (`kind`,
/// `way`).
fn costed<T>(
    cost: &mut Cost,
    kind: &str,
    way: Way,
    round: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let before = prog_stats()?;
    let out = round()?;
    let key = (kind.to_owned(), way.key().to_owned());
    add_cost(cost, &key, &before, &prog_stats()?);
    Ok(out)
}

/// Switches the kernel's per-program run time accounting (restored when the bench ends).
fn set_stats(on: bool) -> anyhow::Result<()> {
    std::fs::write(STATS, if on { "1" } else { "0" }).context("kernel.bpf_stats_enabled")
}

/// Writes target/bench/report.md again from target/bench/report.json.
pub fn render() -> anyhow::Result<()> {
    let dir = workspace_root().join("target/bench");
    let text =
        std::fs::read_to_string(dir.join("report.json")).context("target/bench/report.json")?;
    let results: Value = serde_json::from_str(&text)?;
    std::fs::write(dir.join("report.md"), report::markdown(&results))?;
    Ok(())
}

/// Per way: the rounds, their medians, and the ratio to direct (the median of the rounds'
/// ratios, see [`runs::paired_ratio`]).
fn per_way(rounds: &BTreeMap<Way, Vec<Value>>) -> Value {
    let direct = rounds
        .get(&Way::Direct)
        .map(|r| runs::summarise(r))
        .unwrap_or(Value::Null);
    let mut out = serde_json::Map::new();
    for (w, r) in rounds {
        let mut s = runs::summarise(r);
        s["label"] = json!(w.label());
        s["ratio_to_direct"] = json!(runs::paired_ratio(&s, &direct));
        out.insert(w.key().into(), s);
    }
    Value::Object(out)
}

/// At most this share of a baseline's requests may fail in a smoke run. A proxy or a DNAT
/// rule that drops one request in thousands on a busy loopback is the baseline's behaviour
/// (the report shows it, by kind); the smoke run checks the bench still measures it.
const BASELINE_ERROR_BOUND: f64 = 0.01;

/// What a smoke run must show, whatever the numbers: every path carried every kind of
/// traffic, sluice's paths and the direct one without a single error, the baselines within
/// [`BASELINE_ERROR_BOUND`]; the split and the share change were measured.
fn smoke_check(r: &Value, plan: &Plan) -> anyhow::Result<()> {
    for (what, table) in [
        ("connections", &r["connections"]["closed_loop"]),
        (
            "connections, 4 at a time",
            &r["connections"]["closed_loop_parallel"],
        ),
        ("HTTP keep-alive", &r["http"]["keep_alive"]),
        (
            "HTTP connection per request",
            &r["http"]["connection_per_request"],
        ),
    ] {
        for w in ALL {
            let m = &table[w.key()]["median"];
            let rate = m["per_second"].as_f64().unwrap_or(0.0);
            let errors = m["errors"].as_u64().unwrap_or(u64::MAX);
            let requests = m["requests"].as_u64().unwrap_or(0);
            let allowed = match w {
                Way::Direct | Way::SluiceSteering | Way::SluiceSignals => 0,
                _ => (requests as f64 * BASELINE_ERROR_BOUND) as u64,
            };
            if rate.is_nan() || rate <= 0.0 || requests == 0 || errors > allowed {
                anyhow::bail!(
                    "smoke: {what} through {}: {rate} a second, {errors} errors of {requests} \
                     (at most {allowed} allowed); by kind, round by round: {}",
                    w.label(),
                    table[w.key()]["rounds"]
                        .as_array()
                        .map(|rs| rs
                            .iter()
                            .map(|x| x["error_kinds"].to_string())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
            }
        }
    }
    for k in ["sluice", "iptables", "haproxy"] {
        let n = r["split"][k]["connections"].as_u64().unwrap_or(0);
        if n != plan.split_connections {
            anyhow::bail!(
                "smoke: the {k} split counted {n} of {} connections",
                plan.split_connections
            );
        }
    }
    if r["weight_change"]
        .as_array()
        .is_none_or(|v| v.len() != 2 * plan.weight_repeats as usize)
    {
        anyhow::bail!("smoke: the share change was not timed");
    }
    Ok(())
}
