//! `cargo xtask demo [--faulty-canary]`: a canary rollout, live. Two HTTP backends on
//! loopback (stable and canary), a client in a demo cgroup calling a virtual address, and the
//! daemon with `config/demo.yaml`, whose rollout walks the canary up step by step while its
//! error rate and latency hold against stable's, and promotes it. With `--faulty-canary`
//! the canary starts failing part of its requests half-way, and the rollout takes it back.
//! Everything it starts is stopped, and every pin, cgroup and file it made removed, when it
//! ends or is interrupted (Ctrl-C).

mod client;
mod cluster;
mod view;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use client::client;

use sluice_tests::{
    TestCgroup,
    agent::wait_until_answering,
    http::{Behaviour, HttpBackend},
    load::unix_ms,
};

use crate::util::{cargo, run, workspace_root};

const VIP: &str = "127.0.10.100:80";
const STABLE: &str = "127.0.10.1:8080";
const CANARY: &str = "127.0.10.2:8080";
const PIN_PATH: &str = "/sys/fs/bpf/sluice-demo";
const SOCKET: &str = "/run/sluice-demo/sluice.sock";
const STATE: &str = "/run/sluice-demo/rollouts.json";
const CGROUP: &str = "sluice-demo";
/// The faulty canary starts failing once the rollout is at this step (25 %).
const FAULT_AT_STEP: u64 = 3;
/// ... one request in this many (20 %).
const FAULT_EVERY: u64 = 5;
/// The demo gives up after this long whatever the rollout does.
const LIMIT: Duration = Duration::from_secs(240);

pub fn demo(faulty: bool, in_cluster: bool) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("the demo attaches kernel programs: run it as root");
    }
    run(cargo().args(["build", "--package", "sluice"]))?;
    let root = workspace_root();
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("Ctrl-C handler")?;
    if in_cluster {
        run(cargo().args([
            "build",
            "--package",
            "sluice-tests",
            "--bin",
            "sluice-probe",
        ]))?;
        // The test kit's agents and clients find their binaries through these.
        // SAFETY: set before the demo starts any thread that reads the environment.
        unsafe {
            std::env::set_var("SLUICE_BIN", root.join("target/debug/sluice"));
            std::env::set_var("SLUICE_PROBE", root.join("target/debug/sluice-probe"));
        }
        let result = cluster::demo(&interrupted);
        if interrupted.load(Ordering::SeqCst) {
            println!("\ninterrupted: everything the demo started is stopped and removed");
        }
        return result;
    }
    let mut env = DemoEnv {
        sluice: root.join("target/debug/sluice"),
        stop_file: root.join("target/sluice-demo.stop"),
        cgroup: None,
        daemon: None,
        client: None,
        backends: Vec::new(),
    };
    let result = show(&mut env, &root, faulty, &interrupted);
    env.cleanup();
    if interrupted.load(Ordering::SeqCst) {
        println!("\ninterrupted: everything the demo started is stopped and removed");
    }
    result
}

fn show(
    env: &mut DemoEnv,
    root: &Path,
    faulty: bool,
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    // A state file from an interrupted earlier run would resume that rollout.
    let _ = std::fs::remove_file(STATE);
    let _ = std::fs::remove_file(&env.stop_file);
    let cg = TestCgroup::named(CGROUP);
    let cgroup = cg.path().to_owned();
    env.cgroup = Some(cg);
    for addr in [STABLE, CANARY] {
        let backend = HttpBackend::start_at(addr.parse()?, Behaviour::default())
            .with_context(|| format!("bind {addr}"))?;
        env.backends.push(backend);
    }

    let log_path = root.join("target/sluice-demo.log");
    let log = std::fs::File::create(&log_path)?;
    env.daemon = Some(
        Command::new(&env.sluice)
            .args(["run", "--config"])
            .arg(root.join("config/demo.yaml"))
            .stderr(log)
            .spawn()
            .context("starting sluice run")?,
    );
    if !wait_until_answering(&env.sluice, Path::new(SOCKET), Duration::from_secs(10)) {
        bail!("the daemon did not come up; see {}", log_path.display());
    }
    env.client = Some(
        Command::new(std::env::current_exe()?)
            .arg("demo-client")
            .arg(&cgroup)
            .arg(VIP)
            .arg(LIMIT.as_secs().to_string())
            .arg(&env.stop_file)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the demo client")?,
    );

    println!("sluice demo: a rollout of service `demo` (config/demo.yaml)");
    println!(
        "  a client in cgroup {} sends {} requests/s to {VIP}, a new connection each;",
        cgroup.display(),
        client::RATE
    );
    println!(
        "  sluice steers each connection in the kernel to stable {STABLE} or canary {CANARY},"
    );
    println!("  measures both versions there, and moves the canary's share by the evidence.");
    if faulty {
        println!(
            "  --faulty-canary: at step {FAULT_AT_STEP}, the canary starts answering {}% of its \
             requests 503.",
            100 / FAULT_EVERY
        );
    }
    println!("  daemon log: {}\n", log_path.display());

    let start = Instant::now();
    let mut shown = std::collections::HashSet::new();
    let mut last: serde_json::Value;
    // When the fault began (unix ms), to time the rollback from.
    let mut fault_at: Option<u64> = None;
    let mut finished_at = None;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Ok(());
        }
        thread::sleep(Duration::from_secs(1));
        let r = rollout(&env.sluice)?;
        // Decisions are a ring of the last 20: show the ones not shown yet (waits only as
        // the live line's phase).
        for d in r["decisions"].as_array().into_iter().flatten() {
            let key = (
                d["at_unix_ms"].as_u64().unwrap_or(0),
                d["action"].to_string(),
            );
            if d["action"] != "wait" && shown.insert(key) {
                println!("{}", view::decision(d));
            }
        }
        println!("{}", view::line(start.elapsed().as_secs(), &r));
        last = r.clone();
        let at_fault_step = r["step"].as_u64().is_some_and(|s| s >= FAULT_AT_STEP)
            && matches!(r["phase"].as_str(), Some("Progressing" | "Waiting"));
        if faulty && fault_at.is_none() && at_fault_step {
            env.backends[1].set_fail_every(FAULT_EVERY);
            fault_at = Some(unix_ms());
            println!(
                "  !! the canary starts answering {}% of its requests 503",
                100 / FAULT_EVERY
            );
        }
        let phase = r["phase"].as_str().unwrap_or("");
        let done = matches!(phase, "Succeeded" | "RolledBack" | "Failed");
        match finished_at {
            None if done => finished_at = Some(Instant::now()),
            // A few more seconds of traffic show where it goes now.
            Some(t) if t.elapsed() >= Duration::from_secs(4) => break,
            _ => {}
        }
        if start.elapsed() >= LIMIT {
            println!("the demo's time limit passed before the rollout finished");
            break;
        }
    }
    std::fs::write(&env.stop_file, b"")?;
    let mut text = String::new();
    if let Some(mut c) = env.client.take() {
        if let Some(mut out) = c.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        let _ = c.wait();
    }
    println!("\n$ sluice status demo");
    run(Command::new(&env.sluice).args(["status", "demo", "--socket", SOCKET]))?;
    let seen: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    let count = |i: usize, which: &str| {
        let seen = env.backends[i].seen();
        let status = if which == "ok" { 200 } else { 503 };
        seen.responses.get(&status).copied().unwrap_or(0)
    };
    println!(
        "\nthe backends answered: stable {} ok, {} failed; canary {} ok, {} failed",
        count(0, "ok"),
        count(0, "failed"),
        count(1, "ok"),
        count(1, "failed")
    );
    println!(
        "the client saw: {} ok, {} 5xx, {} connection errors {} (the blast radius: {} requests)",
        seen["ok"],
        seen["http_5xx"],
        seen["errors"],
        seen["error_kinds"],
        seen["http_5xx"].as_u64().unwrap_or(0) + seen["errors"].as_u64().unwrap_or(0)
    );
    if let Some(fault) = fault_at {
        let rolled_back = last["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["phase"] == "RolledBack")
            .and_then(|d| d["at_unix_ms"].as_u64());
        match rolled_back {
            Some(at) => println!(
                "the canary was rolled back {:.1} s after its fault began, having answered {} \
                 requests 503",
                at.saturating_sub(fault) as f64 / 1e3,
                count(1, "failed")
            ),
            None => println!("the canary was not rolled back"),
        }
    }
    Ok(())
}

/// The demo service's rollout from `sluice status`.
fn rollout(sluice: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(sluice)
        .args(["status", "demo", "--output", "json", "--socket", SOCKET])
        .output()
        .context("sluice status")?;
    if !out.status.success() {
        bail!("sluice status: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("status JSON")?;
    Ok(v["services"][0]["rollout"].clone())
}

struct DemoEnv {
    sluice: PathBuf,
    stop_file: PathBuf,
    cgroup: Option<TestCgroup>,
    daemon: Option<Child>,
    client: Option<Child>,
    backends: Vec<HttpBackend>,
}

impl DemoEnv {
    fn cleanup(&mut self) {
        // The client first (by its pid), then the daemon through `detach`, which removes
        // every program, link, pin and the rollout state; if the daemon already exited it
        // removes them itself.
        if let Some(mut c) = self.client.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(&self.sluice)
            .args(["detach", "--pin-path", PIN_PATH, "--state-path", STATE])
            .args(["--socket", SOCKET])
            .stdout(Stdio::null())
            .status();
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Dropping them closes the backends and removes the cgroup (once the client has
        // left it).
        self.backends.clear();
        self.cgroup = None;
        let _ = std::fs::remove_file(&self.stop_file);
        // The daemon removes its socket when it exits on its own; not when it was killed.
        if let Some(dir) = Path::new(SOCKET).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
