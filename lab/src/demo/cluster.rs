//! `cargo xtask demo --cluster`: one rollout across three nodes, live. A 3-member etcd on
//! loopback ports, three agents (each its own cgroup, pins, socket and node name, as three
//! nodes of a cluster would have), a client in each node's cgroup, and one stable and one
//! canary backend. Each second shows every node's share and who leads; at step 3 the
//! leader's agent is killed, and another takes over at the same step. Everything it starts
//! is stopped and removed when it ends or is interrupted (Ctrl-C).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;
use sluice_tests::{
    Agent, TestCgroup,
    etcd::EtcdCluster,
    http::{Behaviour, HttpBackend},
    load::Load,
};

const NODES: usize = 3;
const RATE: u32 = 150;
const KILL_AT_STEP: u64 = 3;
const LIMIT: Duration = Duration::from_secs(180);

struct Node {
    load: Option<Load>,
    agent: Agent,
    _cg: TestCgroup,
    name: String,
}

pub fn demo(interrupted: &AtomicBool) -> anyhow::Result<()> {
    println!("sluice cluster demo: etcd (3 members) and {NODES} node agents on loopback");
    let etcd = EtcdCluster::start("demo-cluster", 3);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let vip: SocketAddr = "127.0.11.100:80".parse()?;
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let services = format!(
        "  - name: demo\n    virtual_addresses: [\"{vip}\"]\n    l7: http1\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n    rollout:\n      \
         steps: [5, 10, 25, 50, 75]\n      interval: 3s\n      min_samples: 100\n      \
         checks: {{max_error_increase_percent: 1, max_p99_ratio: 2}}\n",
        stable.addr, canary.addr
    );
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let name = format!("node-{i}");
        let cg = TestCgroup::named(&format!("sluice-demo-{name}"));
        let mut agent = Agent::prepare(&format!("demo-{name}"), &cg, "");
        let cluster = format!(
            "cluster:\n  endpoints: [{}]\n  prefix: /sluice-demo\n  lease_ttl: 2s\n  \
             publish_interval: 500ms\n  node_name: {name}\n  labels: {{zone: z{i}}}",
            endpoints.join(", ")
        );
        agent.write_raw_config(&agent.config_text_with(&cg, &cluster, &services));
        agent.spawn();
        let load = Some(Load::start(&cg, vip, RATE, LIMIT.as_secs_f64()));
        nodes.push(Node {
            load,
            agent,
            _cg: cg,
            name,
        });
    }
    println!(
        "  each node's client sends {RATE} requests/s to {vip} (a new connection each); \
         steps 5, 10, 25, 50, 75 %, an analysis every 3 s on the sum of every node's counters"
    );
    println!("  at step {KILL_AT_STEP} the leader's agent is killed (SIGKILL)\n");
    let started = Instant::now();
    let mut killed: Option<(usize, Instant)> = None;
    let mut took_over = None;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Ok(());
        }
        if started.elapsed() > LIMIT {
            bail!("the rollout did not finish within {LIMIT:?}");
        }
        let mut line = format!("{:>5.1}s ", started.elapsed().as_secs_f64());
        let mut leader = None;
        let mut phase = String::new();
        let mut step = 0;
        for (i, n) in nodes.iter().enumerate() {
            if !n.agent.answers() {
                // As wide as a live node's cell, so the columns stay aligned.
                line += &format!(" | {:<7}{:<15}", n.name, " (killed)");
                continue;
            }
            let status = n.agent.status();
            let svc = n.agent.service("demo");
            let share = svc["canary_percent"].as_f64().unwrap_or(0.0);
            if status["cluster"]["leads"] == true {
                leader = Some(i);
            }
            phase = svc["rollout"]["phase"].as_str().unwrap_or("").to_owned();
            step = svc["rollout"]["step"].as_u64().unwrap_or(0);
            let mark = if status["cluster"]["leads"] == true {
                "*"
            } else {
                " "
            };
            line += &format!(" | {:<7}{mark} canary {share:>5.1}%", n.name);
        }
        println!("{line} | {phase} step {step}");
        if let (Some((dead, at)), Some(l), None) = (killed, leader, took_over)
            && l != dead
        {
            took_over = Some(at.elapsed());
            println!(
                "        {} leads now, {:.1} s after the kill; the rollout carries on at step {step}",
                nodes[l].name,
                at.elapsed().as_secs_f64()
            );
            nodes[dead].agent.spawn();
            let share = nodes[dead].agent.service("demo")["canary_percent"].clone();
            println!(
                "        {} restarted: it steers with the cluster's share ({share}%) from its first connection",
                nodes[dead].name
            );
        }
        if killed.is_none()
            && step >= KILL_AT_STEP
            && let Some(l) = leader
        {
            println!(
                "        killing the leader {} (SIGKILL): its kernel keeps steering",
                nodes[l].name
            );
            nodes[l].agent.kill9();
            killed = Some((l, Instant::now()));
        }
        if phase == "Succeeded" || phase == "RolledBack" {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut failed = 0;
    let mut requests = 0;
    for n in &mut nodes {
        if let Some(l) = n.load.take() {
            let r = l.stop();
            failed += r.failed();
            requests += r.requests();
        }
    }
    println!(
        "\ndone: one rollout for every node; the clients sent {requests} requests, {failed} failed; \
         leader failover {}",
        took_over.map_or("not seen".to_owned(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );
    drop(nodes);
    drop(etcd);
    Ok(())
}
