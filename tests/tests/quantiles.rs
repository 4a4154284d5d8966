//! The latency the kernel reports, held to what the client measured: the median and p99
//! time to first byte that `sluice status` shows (the quantiles the analysis reads, from
//! the same histograms) are within 10 % of the client's own at 1, 10, 30, 100 and 300 ms.
//! The client times each request from its write to its answer's arrival at the client's
//! socket (the kernel's receive timestamp, `SO_TIMESTAMPNS`): what the network and the
//! server took, without the client thread's own wake-up, which no server-side or
//! network-side measurement can see. Needs root.

use std::{net::SocketAddr, time::Duration};

use sluice_tests::{
    Agent, TestCgroup,
    http::{Behaviour, HttpBackend},
    http_probe_parallel, root_or_skip, tag, unused_port,
};

/// (server delay ms, client threads, connections one after the other on each, requests
/// per connection): 32 connections (each steered, so both versions get some) and 200
/// requests or more, all within about 2 s, so that the status's 3 s live window holds
/// every one.
const LOADS: [(u64, u64, u64, usize); 5] = [
    (1, 2, 16, 40),
    (10, 4, 8, 18),
    (30, 8, 4, 15),
    (100, 16, 2, 10),
    (300, 32, 1, 7),
];

/// The `q` quantile of a sample, nearest rank.
fn quantile(sorted: &[u64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

#[test]
fn reported_latency_quantiles_are_within_ten_percent_of_the_clients() {
    if !root_or_skip("reported_latency_quantiles_are_within_ten_percent_of_the_clients") {
        return;
    }
    let t = tag("quantiles");
    let cg = TestCgroup::new(&t);
    let mut backends = std::collections::BTreeMap::new();
    let mut yaml = String::new();
    let mut vips = Vec::new();
    for (i, (delay_ms, ..)) in LOADS.iter().enumerate() {
        let behaviour = Behaviour {
            delay: Duration::from_millis(*delay_ms),
            ..Behaviour::default()
        };
        let (stable, canary) = (
            HttpBackend::start("127.0.0.1", behaviour),
            HttpBackend::start("127.0.0.1", behaviour),
        );
        let ip = format!("127.77.12.{}", i + 1);
        let vip: SocketAddr = format!("{ip}:{}", unused_port(&ip)).parse().expect("vip");
        // A rollout that stays at its first step for the test's length, so both versions
        // get traffic and the status shows both live.
        yaml += &format!(
            "  - name: d{delay_ms}ms\n    virtual_addresses: [\"{vip}\"]\n    l7: http1\n    \
             stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n    \
             rollout: {{steps: [50], interval: 1h}}\n",
            stable.addr, canary.addr
        );
        backends.insert(format!("d{delay_ms}ms"), (stable, canary));
        vips.push(vip);
    }
    let agent = Agent::start(&t, &cg, &yaml);
    let mut failures = Vec::new();
    for ((delay_ms, parallel, connections, per_connection), vip) in LOADS.iter().zip(&vips) {
        let name = format!("d{delay_ms}ms");
        let paths = vec!["/status/200"; *per_connection];
        let r = http_probe_parallel(Some(&cg), *vip, *parallel, *connections, &paths);
        assert!(r.errors.is_empty(), "{name}: client errors {:?}", r.errors);
        // One tick more, so that the agent's last reading holds the last answers.
        std::thread::sleep(Duration::from_millis(300));
        let rollout = agent.rollout(&name);
        let (stable, canary) = (&backends[&name].0, &backends[&name].1);
        for (v, (version, addr)) in [("stable", stable.addr), ("canary", canary.addr)]
            .into_iter()
            .enumerate()
        {
            let mut client = r
                .latencies_us
                .get(&addr.to_string())
                .cloned()
                .unwrap_or_default();
            assert!(
                client.len() >= 50,
                "{name} {version}: {} answers, too few for a p99",
                client.len()
            );
            client.sort_unstable();
            let truth = [quantile(&client, 0.5), quantile(&client, 0.99)];
            let live = &rollout["live"][v];
            for (q, key) in ["p50_seconds", "p99_seconds"].iter().enumerate() {
                let reported = live[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name} {version}: no {key} in {rollout:#}"));
                let error = (reported - truth[q]).abs() / truth[q];
                eprintln!(
                    "{name} {version} {key}: reported {:.3} ms, client {:.3} ms ({} answers): \
                     {:+.1} %",
                    reported * 1e3,
                    truth[q] * 1e3,
                    client.len(),
                    100.0 * (reported - truth[q]) / truth[q],
                );
                if error > 0.10 {
                    failures.push(format!(
                        "{name} {version} {key}: {reported} s against the client's {} s",
                        truth[q]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "more than 10 % off: {failures:#?}");
}
