//! Cluster mode end to end: a real 3-member etcd on loopback ports, and three "nodes" on
//! this machine, each a real agent with its own cgroup, pins, socket, metrics port and node
//! name, with real clients in its cgroup and real HTTP backends shared by all. What is
//! asserted is what the clients and servers saw and what every node's kernel holds. Needs
//! root.

#[path = "cluster/fail_static.rs"]
mod fail_static;
#[path = "cluster/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, RATE, TTL_S, count, phase, rollout};
use sluice_tests::{
    http::Behaviour,
    load::{Load, LoadResult},
    root_or_skip,
};

#[test]
fn a_healthy_canary_is_promoted_on_every_node_once() {
    if !root_or_skip("a_healthy_canary_is_promoted_on_every_node_once") {
        return;
    }
    let mut c = Cluster::start(
        "cl-healthy",
        Behaviour::default(),
        &rollout("steps: [20, 50, 80]"),
        &["zone: a", "zone: b", "zone: c"],
    );
    c.load(40.0);
    let seen = c.watch_until(Duration::from_secs(40), |s| phase(s) == "Succeeded");
    std::thread::sleep(Duration::from_millis(500));
    let results = c.stop_load();
    let s = c.stored();
    println!(
        "healthy: shares seen per node {seen:?}; decisions {:#}",
        s["decision_counts"]
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.failed(), 0, "node {i}'s clients: {r:?}");
        assert!(r.requests() > 1000, "node {i}'s clients: {r:?}");
    }
    // One rollout: three steps and one promotion, whichever node made them.
    assert_eq!(count(&s, "step_up"), 3, "{s:#}");
    assert_eq!(count(&s, "promote"), 1, "{s:#}");
    assert_eq!(count(&s, "promoted"), 1, "{s:#}");
    assert_eq!(
        count(&s, "rollback") + count(&s, "guard_rollback"),
        0,
        "{s:#}"
    );
    // Every node's kernel went through the same shares, in order.
    for (i, shares) in seen.iter().enumerate() {
        let steps: Vec<f64> = shares
            .iter()
            .copied()
            .filter(|p| [20.0, 50.0, 80.0].contains(p))
            .collect();
        assert_eq!(steps, vec![20.0, 50.0, 80.0], "node {i}: {shares:?}");
        assert!(
            shares
                .iter()
                .all(|p| [0.0, 20.0, 50.0, 80.0, 100.0].contains(p)),
            "node {i}: {shares:?}"
        );
    }
    // Promoted everywhere: the canary is every node's stable set now.
    for n in &c.nodes {
        let svc = n.agent.service("web");
        assert_eq!(
            svc["stable"][0],
            c.canary.addr.to_string(),
            "{}: {svc:#}",
            n.name
        );
        assert_eq!(svc["canary_percent"], 0.0, "{}", n.name);
    }
}

#[test]
fn a_faulty_canary_is_rolled_back_on_every_node() {
    if !root_or_skip("a_faulty_canary_is_rolled_back_on_every_node") {
        return;
    }
    let faulty = Behaviour {
        fail_every: 20,
        ..Behaviour::default()
    };
    let mut c = Cluster::start(
        "cl-faulty",
        faulty,
        &rollout("steps: [20, 50, 80]"),
        &["zone: a", "zone: b", "zone: c"],
    );
    c.load(40.0);
    c.watch_until(Duration::from_secs(40), |s| phase(s) == "RolledBack");
    let canary_then = c.canary.seen().requests;
    std::thread::sleep(Duration::from_secs(1));
    let canary_after = c.canary.seen().requests - canary_then;
    let results = c.stop_load();
    let s = c.stored();
    let failed: u64 = results.iter().map(LoadResult::failed).sum();
    let canary_503 = c.canary.seen().responses.get(&503).copied().unwrap_or(0);
    println!(
        "faulty: {failed} failed requests in all (the canary sent {canary_503} 503s); {:#}",
        s["decision_counts"]
    );
    assert_eq!(count(&s, "promote"), 0, "{s:#}");
    assert_eq!(failed, canary_503, "every failure is a canary 503");
    assert_eq!(c.shares(), vec![Some(0.0); 3]);
    assert!(canary_after <= 3, "the canary still got {canary_after}");
}

#[test]
fn a_canary_failing_one_nodes_callers_is_caught_on_the_clusters_evidence() {
    if !root_or_skip("a_canary_failing_one_nodes_callers_is_caught_on_the_clusters_evidence") {
        return;
    }
    // Every 6th request from node 2's callers fails on the canary: node 2's canary error
    // rate is ~17 %, below its guard (10 of 20), and the cluster's ~5.5 %.
    let faulty = Behaviour {
        fail_path: Some(("/from-n2", 6)),
        ..Behaviour::default()
    };
    let mut c = Cluster::start(
        "cl-onenode",
        faulty,
        &rollout("steps: [20, 50, 80]"),
        &["zone: a", "zone: b", "zone: c"],
    );
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let path = if i == 2 { "/from-n2" } else { "/" };
        n.load = Some(Load::start_path(&n.cg, c.vip, RATE, 40.0, path));
    }
    c.watch_until(Duration::from_secs(40), |s| phase(s) == "RolledBack");
    let s = c.stored();
    let results = c.stop_load();
    // Everything published: the breakdown settles on the nodes' final counts.
    std::thread::sleep(Duration::from_secs(1));
    let status = c.nodes[0].agent.status();
    let web = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "web")
        .expect("web")
        .clone();
    let rows = web["cluster_nodes"]["nodes"]
        .as_array()
        .expect("per-node rows")
        .clone();
    println!(
        "one node's callers: {:#}; per node {rows:?}",
        s["decision_counts"]
    );
    assert_eq!(count(&s, "rollback"), 1, "the analysis caught it: {s:#}");
    assert_eq!(count(&s, "guard_rollback"), 0, "not a guard: {s:#}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (i, r) in results.iter().enumerate() {
        let row = rows
            .iter()
            .find(|row| row["node"] == format!("n{i}"))
            .expect("row");
        let client_503 = r.statuses.get(&503).copied().unwrap_or(0);
        // The published counts are the node's own: its callers' 503s, exactly.
        assert_eq!(
            row["canary_errors"].as_u64(),
            Some(client_503),
            "n{i}: {row:#} {r:?}"
        );
        if i == 2 {
            assert!(client_503 > 0, "n2's callers saw the canary fail");
        } else {
            assert_eq!(client_503, 0, "n{i}'s callers saw no failure");
        }
        // ... and exactly what that node's own /metrics show, version by version.
        let mut samples = 0;
        for (version, scraped) in ["stable", "canary"]
            .into_iter()
            .zip(c.evidence_in_metrics(i))
        {
            let published = (
                row[format!("{version}_samples")].as_u64(),
                row[format!("{version}_errors")].as_u64(),
            );
            assert_eq!(
                published,
                (Some(scraped.0), Some(scraped.1)),
                "n{i} {version}: {row:#}"
            );
            samples += scraped.0;
        }
        // Every request the node's clients made, once.
        assert_eq!(samples, r.requests(), "n{i}: {r:?}");
    }
    assert_eq!(c.shares(), vec![Some(0.0); 3]);
}

#[test]
fn the_leader_killed_mid_rollout_is_replaced_and_the_rollout_carries_on() {
    if !root_or_skip("the_leader_killed_mid_rollout_is_replaced_and_the_rollout_carries_on") {
        return;
    }
    let mut c = Cluster::start(
        "cl-failover",
        Behaviour::default(),
        &rollout("steps: [10, 20, 30, 40, 50, 60]"),
        &["zone: a", "zone: b", "zone: c"],
    );
    c.load(60.0);
    let leader = c.leader(Duration::from_secs(10));
    c.watch_until(Duration::from_secs(30), |s| {
        s["step_index"].as_u64() >= Some(2)
    });
    c.nodes[leader].agent.kill9();
    let killed = Instant::now();
    let next = c.leader(Duration::from_secs(10));
    let failover = killed.elapsed();
    println!("leader n{leader} killed; n{next} leads after {failover:?}");
    assert_ne!(next, leader);
    assert!(
        failover <= Duration::from_secs(TTL_S + 1),
        "failover took {failover:?} (lease {TTL_S} s)"
    );
    // The killed node rejoins mid-rollout: its first answer already has the cluster's share.
    c.nodes[leader].agent.spawn();
    let share = c.nodes[leader].agent.service("web")["canary_percent"].clone();
    let stored = c.stored();
    let want = stored["weight_ppm"].as_f64().expect("ppm") / 10_000.0;
    println!("rejoined with {share} (cluster {want})");
    assert_eq!(share.as_f64(), Some(want), "{stored:#}");
    c.watch_until(Duration::from_secs(40), |s| phase(s) == "Succeeded");
    let results = c.stop_load();
    let s = c.stored();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.failed(), 0, "node {i}'s clients: {r:?}");
    }
    // No step skipped or repeated across the change of leader.
    assert_eq!(count(&s, "step_up"), 6, "{s:#}");
    assert_eq!(count(&s, "promoted"), 1, "{s:#}");
}

#[test]
fn a_guard_trip_on_one_node_zeroes_every_node_within_a_second() {
    if !root_or_skip("a_guard_trip_on_one_node_zeroes_every_node_within_a_second") {
        return;
    }
    // Node 1's callers: every request to the canary fails once the fault is on.
    let faulty = Behaviour {
        fail_path: Some(("/from-n1", 1)),
        ..Behaviour::default()
    };
    let mut c = Cluster::start(
        "cl-guard",
        faulty,
        &rollout("steps: [20, 50, 80]"),
        &["zone: a", "zone: b", "zone: c"],
    );
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != 1 {
            n.load = Some(Load::start(&n.cg, c.vip, RATE, 40.0));
        }
    }
    c.watch_until(Duration::from_secs(20), |s| {
        s["weight_ppm"].as_u64() > Some(0)
    });
    let started = Instant::now();
    c.nodes[1].load = Some(Load::start_path(
        &c.nodes[1].cg,
        c.vip,
        RATE,
        40.0,
        "/from-n1",
    ));
    // Every node at 0.
    let mut zero_at = vec![None; 3];
    while zero_at.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(20) {
        for (i, s) in c.shares().into_iter().enumerate() {
            if s == Some(0.0) && zero_at[i].is_none() {
                zero_at[i] = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = c.stored();
    c.stop_load();
    println!(
        "guard: every node's share 0 at {zero_at:?} after node 1's fault; {:?}",
        s["decisions"].as_array().and_then(|d| d.last())
    );
    assert_eq!(count(&s, "guard_rollback"), 1, "{s:#}");
    let reason = s["reason"].as_str().unwrap_or("");
    assert!(reason.contains("on node n1"), "{reason}");
    let first = zero_at[1].expect("node 1 at 0");
    for (i, z) in zero_at.iter().enumerate() {
        let z = z.unwrap_or_else(|| panic!("node {i} never at 0"));
        assert!(
            z.saturating_sub(first) <= Duration::from_secs(1),
            "node {i} at 0 {z:?}, node 1 at {first:?}"
        );
    }
}

#[test]
fn nodes_outside_the_wave_hold_zero_until_it_widens() {
    if !root_or_skip("nodes_outside_the_wave_hold_zero_until_it_widens") {
        return;
    }
    let waves = "waves:\n        - {nodes: {zone: a}, steps: [20, 50]}\n        - {nodes: all, steps: [10, 30]}";
    let mut c = Cluster::start(
        "cl-waves",
        Behaviour::default(),
        &rollout(waves),
        &["zone: a", "zone: b", "zone: b"],
    );
    c.load(40.0);
    let seen = c.watch_until(Duration::from_secs(40), |s| phase(s) == "Succeeded");
    let results = c.stop_load();
    println!("waves: shares seen per node {seen:?}");
    let s = c.stored();
    assert_eq!(count(&s, "step_up"), 4, "{s:#}");
    let steps = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .copied()
            .filter(|p| ![0.0, 100.0].contains(p))
            .collect()
    };
    assert_eq!(steps(&seen[0]), vec![20.0, 50.0, 10.0, 30.0], "{seen:?}");
    for (i, shares) in seen.iter().enumerate().skip(1) {
        assert_eq!(
            steps(shares),
            vec![10.0, 30.0],
            "node {i} took only the wide wave: {shares:?}"
        );
    }
    // Before the wave widened, node 1's and 2's callers never reached the canary.
    for r in &results {
        assert_eq!(r.failed(), 0, "{r:?}");
    }
}
