//! `cargo xtask bench --drain`: what draining costs and how fast it reaches pooled clients.
//!
//! 1. **Drain time.** Pools of 8, 1 000 and 10 000 keep-alive connections (the probe's
//!    `--pool`: one request a second on each, every connection checked before reuse, as
//!    urllib3 does) through an `l7: http1` service at a 50 % share; then
//!    `sluice weight SERVICE 0`. Reported: from the share change to the client's last
//!    replacement of an ended connection and to its last answer from the canary, and the
//!    requests that failed.
//! 2. **What `max_connection_age` costs.** A closed-loop pool of 64 connections (each sends
//!    its next request as soon as its answer is in) against a service without an age and,
//!    side by side in alternating rounds, the same backends behind a service with
//!    `max_connection_age: 1s` (the shortest allowed, the worst case) and one with 5s.
//!    Reported: requests a second of each, and the ratios to no age.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use sluice_tests::{
    agent::wait_until_answering,
    http::{Behaviour, HttpBackend},
    load::unix_ms,
};

use super::env::BenchEnv;
use crate::util::workspace_root;

const POOLS: [usize; 3] = [8, 1_000, 10_000];
const AGES: [(&str, Option<&str>); 3] = [("none", None), ("5s", Some("5s")), ("1s", Some("1s"))];
const AGE_ROUNDS: usize = 7;
const AGE_SECONDS: f64 = 4.0;
const AGE_POOL: usize = 64;

pub fn run() -> anyhow::Result<()> {
    super::require_root()?;
    super::install()?;
    let (sluice, probe) = crate::util::build_release_binaries()?;
    let (mut results, outcome, interrupted) = super::in_bench_env(|env, results| {
        results["drain"] = measure(env, &sluice, &probe)?;
        Ok(())
    })?;
    results["machine"] = super::host::machine();
    let dir = workspace_root().join("target/bench-drain");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = report(&results["drain"]);
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{md}");
    println!("bench: wrote {}", dir.join("report.md").display());
    outcome?;
    if interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

fn vip(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 5, 0, 1 + i as u8], 80))
}

fn measure(env: &mut BenchEnv, sluice: &Path, probe: &Path) -> anyhow::Result<Value> {
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let cgroup = env.cgroup("sluice-bench-drain")?;
    let socket = "/run/sluice-bench-drain/sluice.sock";
    let pins = "/sys/fs/bpf/sluice-bench-drain";
    let state = env.dir.join("drain-state.json");
    env.remember_agent(sluice, pins, socket, &state.display().to_string());
    let metrics = sluice_tests::unused_port("127.0.0.1");
    let mut yaml = format!(
        "cgroup: {}\npin_path: {pins}\napi_socket: {socket}\nstate_path: {}\n\
         metrics_address: 127.0.0.1:{metrics}\nsocket_tag_slots: 65536\nservices:\n",
        cgroup.display(),
        state.display()
    );
    let backends = format!(
        "    stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n    l7: http1\n",
        stable.addr, canary.addr
    );
    for (i, n) in POOLS.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: pool-{n}\n    virtual_addresses: [\"{}\"]\n    canary_percent: 50\n{backends}",
            vip(i)
        ));
    }
    for (j, (name, age)) in AGES.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: age-{name}\n    virtual_addresses: [\"{}\"]\n    canary_percent: 10\n{backends}",
            vip(10 + j)
        ));
        if let Some(a) = age {
            yaml.push_str(&format!("    max_connection_age: {a}\n"));
        }
    }
    let config = env.dir.join("drain.yaml");
    std::fs::write(&config, yaml)?;
    let log = std::fs::File::create(env.dir.join("drain.log"))?;
    env.spawn(
        "sluice drain",
        Command::new(sluice)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log),
    )?;
    if !wait_until_answering(sluice, Path::new(socket), Duration::from_secs(30)) {
        anyhow::bail!("the agent did not answer within 30 s");
    }
    let pool = |target: SocketAddr, n: usize, interval_ms: u64, seconds: f64| {
        Command::new(probe)
            .arg("--cgroup")
            .arg(&cgroup)
            .args([
                "--connect",
                &target.to_string(),
                "--pool",
                &n.to_string(),
                "--interval-ms",
                &interval_ms.to_string(),
                "--seconds",
                &seconds.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
    };
    let mut drains = Vec::new();
    for (i, n) in POOLS.iter().enumerate() {
        env.check_interrupt()?;
        // Once all are connected, two seconds of steady requests.
        let mut child = pool(vip(i), *n, 1_000, 7.0)?;
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        let connected: Value = serde_json::from_str(&line)?;
        anyhow::ensure!(
            connected["connected"].as_u64() == Some(*n as u64),
            "the pool made {} of {n} connections",
            connected["connected"]
        );
        std::thread::sleep(Duration::from_secs(2));
        let at_zero = unix_ms();
        let set = Command::new(sluice)
            .args(["weight", &format!("pool-{n}"), "0", "--socket", socket])
            .output()?;
        anyhow::ensure!(
            set.status.success(),
            "sluice weight: {}",
            String::from_utf8_lossy(&set.stderr)
        );
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest)?;
        child.wait()?;
        let v: Value = serde_json::from_str(&rest)?;
        let canary_key = canary.addr.to_string();
        let last = v["last_answer_unix_ms"][&canary_key].as_u64().unwrap_or(0);
        drains.push(json!({
            "connections": n,
            "canary_answers": v["answers"][&canary_key],
            "last_canary_answer_ms_after_zero": last as i64 - at_zero as i64,
            "last_replaced_ms_after_zero": v["last_replaced_unix_ms"].as_u64().unwrap_or(0) as i64 - at_zero as i64,
            "replaced": v["replaced"],
            "failed": v["failed"],
            "client": v,
        }));
    }
    // The age rounds: each service in turn, AGE_ROUNDS times.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); AGES.len()];
    for _ in 0..AGE_ROUNDS {
        for (j, _) in AGES.iter().enumerate() {
            env.check_interrupt()?;
            let out = pool(vip(10 + j), AGE_POOL, 0, AGE_SECONDS)?.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
            let answers: u64 = v["answers"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            rates[j].push(answers as f64 / AGE_SECONDS);
        }
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let base = median(&rates[0]);
    let ages: Vec<Value> = AGES
        .iter()
        .zip(&rates)
        .map(|((name, _), r)| {
            json!({
                "max_connection_age": name,
                "requests_per_second": r,
                "median": median(r),
                "ratio_to_none": median(r) / base,
            })
        })
        .collect();
    Ok(json!({
        "drains": drains,
        "ages": ages,
        "age_pool": AGE_POOL,
        "age_seconds": AGE_SECONDS,
        "age_rounds": AGE_ROUNDS,
    }))
}

fn report(v: &Value) -> String {
    let mut md = String::from(
        "# Drain\n\nFrom `sluice weight SERVICE 0` to the client's last replacement of an ended connection (the drain as the client saw it), and to its last answer from the canary (negative: before the change).\n\n| pooled connections | canary answers | last connection replaced | last canary answer | connections replaced | requests failed |\n|---|---|---|---|---|---|\n",
    );
    for d in v["drains"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} ms | {} ms | {} | {} |\n",
            d["connections"],
            d["canary_answers"],
            d["last_replaced_ms_after_zero"],
            d["last_canary_answer_ms_after_zero"],
            d["replaced"],
            d["failed"]
        ));
    }
    md.push_str(&format!(
        "\n# max_connection_age\n\nClosed-loop pool of {} connections, {} s rounds, {} rounds each, alternating; medians.\n\n| max_connection_age | requests/s | ratio to none |\n|---|---|---|\n",
        v["age_pool"], v["age_seconds"], v["age_rounds"]
    ));
    for a in v["ages"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {:.0} | {:.3} |\n",
            a["max_connection_age"].as_str().unwrap_or("?"),
            a["median"].as_f64().unwrap_or(f64::NAN),
            a["ratio_to_none"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    md
}
