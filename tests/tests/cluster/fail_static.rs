//! Fail static: nodes that lose etcd, all of it or alone, keep their shares, never raise
//! them, say so, and converge on the cluster's state when etcd answers again.

use std::time::{Duration, Instant};

use sluice_tests::{etcd::Relay, http::Behaviour, root_or_skip, tag};

use crate::harness::{Cluster, rollout};

#[test]
fn etcd_outages_fail_static_and_every_node_converges_after() {
    if !root_or_skip("etcd_outages_fail_static_and_every_node_converges_after") {
        return;
    }
    let mut c = Cluster::start(
        "cl-outage",
        Behaviour::default(),
        &rollout("steps: [10, 20, 30, 40, 50, 60, 70]"),
        &["zone: a", "zone: b", "zone: c"],
    );
    c.load(90.0);
    c.watch_until(Duration::from_secs(20), |s| {
        s["step_index"].as_u64() >= Some(1)
    });
    // One member killed: the rollout goes on.
    c.etcd.kill(0);
    let before = c.stored()["step_index"].as_u64().expect("step");
    c.watch_until(Duration::from_secs(15), |s| {
        s["step_index"].as_u64() > Some(before)
    });
    // Every member stopped for 30 s: every node keeps its share, none raises it.
    for i in 1..3 {
        c.etcd.kill(i);
    }
    let held = c.shares();
    let stopped = Instant::now();
    let mut disconnected = [false; 3];
    while stopped.elapsed() < Duration::from_secs(30) {
        assert_eq!(c.shares(), held, "a share changed while etcd was down");
        for (i, n) in c.nodes.iter().enumerate() {
            disconnected[i] |= n.agent.status()["cluster"]["connected"] == false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        disconnected, [true; 3],
        "every node said it was disconnected"
    );
    // ... and says so in its metrics and its log, leading no more.
    assert_eq!(
        c.cluster_gauges(),
        vec![(Some(0.0), Some(0.0)); 3],
        "sluice_cluster_connected, sluice_cluster_leader while etcd is down"
    );
    for n in &c.nodes {
        assert!(
            n.agent.log().contains("lost etcd"),
            "{}: no log line",
            n.name
        );
    }
    let canary_during = c.canary.seen().requests;
    assert!(canary_during > 0, "steering went on");
    for i in 0..3 {
        c.etcd.restart(i);
    }
    let back = Instant::now();
    // Converged: every node connected, with the share etcd holds.
    let converged = loop {
        let want = c
            .stored_now()
            .map(|s| s["weight_ppm"].as_f64().unwrap_or(-1.0) / 10_000.0);
        let connected = c
            .nodes
            .iter()
            .all(|n| n.agent.status()["cluster"]["connected"] == true);
        if connected && want.is_some_and(|w| c.shares().iter().all(|s| *s == Some(w))) {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "no convergence: {:?}",
            c.shares()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("etcd back: every node converged {converged:?} after the restart");
    // Connected again, with one leader among them.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let gauges = c.cluster_gauges();
        let leaders: f64 = gauges.iter().filter_map(|g| g.1).sum();
        if gauges.iter().all(|g| g.0 == Some(1.0)) && leaders == 1.0 {
            break;
        }
        assert!(Instant::now() < end, "after the outage: {gauges:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = c.stop_load();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.failed(), 0, "node {i}'s clients: {r:?}");
    }
}

#[test]
fn a_node_cut_off_alone_keeps_its_share_and_converges_on_return() {
    if !root_or_skip("a_node_cut_off_alone_keeps_its_share_and_converges_on_return") {
        return;
    }
    let t = tag("cl-cutoff");
    let mut c = Cluster::start(
        "cl-cutoff",
        Behaviour::default(),
        &rollout("steps: [10, 20, 30, 40, 50, 60, 70]"),
        &["zone: a", "zone: b"],
    );
    // The third node reaches etcd only through relays the test cuts.
    let relays: Vec<Relay> = (0..3)
        .map(|i| Relay::start(c.etcd.client_addr(i)))
        .collect();
    let through: Vec<String> = relays
        .iter()
        .map(|r| format!("http://{}", r.addr))
        .collect();
    let yaml = rollout("steps: [10, 20, 30, 40, 50, 60, 70]");
    c.add_node(&t, 2, "zone: c", &through, &yaml);
    c.load(60.0);
    c.watch_until(Duration::from_secs(20), |s| {
        s["step_index"].as_u64() >= Some(1)
    });
    for r in &relays {
        r.cut();
    }
    let held = c.shares()[2];
    let cut = Instant::now();
    let mut others_moved = false;
    let mut said = false;
    while cut.elapsed() < Duration::from_secs(8) {
        let now = c.shares();
        assert_eq!(now[2], held, "the cut-off node's share changed");
        others_moved |= now[0] != held;
        said |= c.nodes[2].agent.status()["cluster"]["connected"] == false;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(said, "the cut-off node said it was disconnected");
    assert!(others_moved, "the connected nodes went on stepping");
    for r in &relays {
        r.restore();
    }
    let back = Instant::now();
    loop {
        let want = c.stored()["weight_ppm"].as_f64().expect("ppm") / 10_000.0;
        if c.shares()[2] == Some(want) {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "no convergence");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "cut-off node converged {:?} after its return",
        back.elapsed()
    );
    let results = c.stop_load();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.failed(), 0, "node {i}'s clients: {r:?}");
    }
}
