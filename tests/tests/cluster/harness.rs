//! The cluster tests' harness: a real 3-member etcd, the backends, and the "nodes" (an
//! agent each, with its own cgroup and clients), with what the tests read of them.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, TestCgroup,
    etcd::EtcdCluster,
    http::{Behaviour, HttpBackend, Scraped},
    load::{Load, LoadResult},
    tag, unused_port,
};

/// The lease (and so the failover bound) the tests run with: etcd's shortest.
pub const TTL_S: u64 = 2;
/// Requests a second each node's clients send (new connections each).
pub const RATE: u32 = 150;

/// Fields drop in order: the clients, then the agent, then the cgroup they were in.
pub struct Node {
    pub load: Option<Load>,
    pub agent: Agent,
    pub cg: TestCgroup,
    pub name: String,
}

pub struct Cluster {
    pub etcd: EtcdCluster,
    pub nodes: Vec<Node>,
    pub vip: SocketAddr,
    pub stable: HttpBackend,
    pub canary: HttpBackend,
    pub prefix: String,
}

pub fn rollout(steps: &str) -> String {
    format!(
        "    rollout:\n      {steps}\n      interval: 1s\n      min_samples: 100\n      \
         failure_threshold: 2\n      checks:\n        max_error_increase_percent: 1\n      \
         guard: {{last: 20, max_failures: 10}}\n"
    )
}

impl Cluster {
    /// etcd, the backends, and `labels.len()` agents (one per label set), not yet loaded.
    pub fn start(name: &str, canary: Behaviour, rollout_yaml: &str, labels: &[&str]) -> Self {
        let t = tag(name);
        let etcd = EtcdCluster::start(&t, 3);
        let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
        let canary = HttpBackend::start("127.0.0.1", canary);
        let vip: SocketAddr = format!("127.77.14.1:{}", unused_port("127.77.14.1"))
            .parse()
            .expect("vip");
        let prefix = format!("/sluice-test-{t}");
        let mut c = Self {
            etcd,
            nodes: Vec::new(),
            vip,
            stable,
            canary,
            prefix,
        };
        let endpoints = c.etcd.endpoints();
        for (i, l) in labels.iter().enumerate() {
            c.add_node(&t, i, l, &endpoints, rollout_yaml);
        }
        c
    }

    pub fn services(&self, rollout_yaml: &str) -> String {
        format!(
            "  - name: web\n    virtual_addresses: [\"{}\"]\n    l7: http1\n    \
             stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n{rollout_yaml}",
            self.vip, self.stable.addr, self.canary.addr
        )
    }

    pub fn cluster_block(&self, node: &str, labels: &str, endpoints: &[String]) -> String {
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "cluster:\n  endpoints: [{}]\n  prefix: {}\n  lease_ttl: {TTL_S}s\n  \
             publish_interval: 250ms\n  node_name: {node}\n  labels: {{{labels}}}",
            list.join(", "),
            self.prefix
        )
    }

    pub fn add_node(
        &mut self,
        t: &str,
        i: usize,
        labels: &str,
        endpoints: &[String],
        rollout_yaml: &str,
    ) {
        let name = format!("n{i}");
        let cg = TestCgroup::new(&format!("{t}-{name}"));
        let mut agent = Agent::prepare(&format!("{t}-{name}"), &cg, "");
        let text = agent.config_text_with(
            &cg,
            &self.cluster_block(&name, labels, endpoints),
            &self.services(rollout_yaml),
        );
        agent.write_raw_config(&text);
        agent.spawn();
        self.nodes.push(Node {
            name,
            cg,
            agent,
            load: None,
        });
    }

    pub fn load(&mut self, seconds: f64) {
        for n in &mut self.nodes {
            n.load = Some(Load::start(&n.cg, self.vip, RATE, seconds));
        }
    }

    pub fn stop_load(&mut self) -> Vec<LoadResult> {
        self.nodes
            .iter_mut()
            .map(|n| n.load.take().map(Load::stop).unwrap_or_default())
            .collect()
    }

    /// The index of the node that leads, waiting up to `timeout` for one.
    pub fn leader(&self, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.agent.answers() && n.agent.status()["cluster"]["leads"] == true {
                    return i;
                }
            }
            assert!(Instant::now() < end, "no node leads after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every running node's `sluice_cluster_connected` and `sluice_cluster_leader`, as its
    /// `/metrics` shows them.
    pub fn cluster_gauges(&self) -> Vec<(Option<f64>, Option<f64>)> {
        self.nodes
            .iter()
            .map(|n| {
                let (m, _) = Scraped::fetch(n.agent.metrics_addr());
                let gauge = |name: &str| m.0.get(&(name.to_owned(), Vec::new())).copied();
                (
                    gauge("sluice_cluster_connected"),
                    gauge("sluice_cluster_leader"),
                )
            })
            .collect()
    }

    /// Node `i`'s samples and errors of `web`'s stable and canary versions, in that order,
    /// from one scrape of its `/metrics`, by the evidence's definition: requests and failed
    /// connects; 5xx, incomplete requests and failed connects.
    pub fn evidence_in_metrics(&self, i: usize) -> [(u64, u64); 2] {
        let (m, _) = Scraped::fetch(self.nodes[i].agent.metrics_addr());
        ["stable", "canary"].map(|version| {
            let of = |name: &str, more: &[(&str, &str)]| {
                let mut want = vec![("service", "web"), ("version", version)];
                want.extend_from_slice(more);
                m.get(name, &want)
            };
            let failed_connects = of("sluice_connections_failed_total", &[]);
            (
                of("sluice_http_requests_total", &[]) + failed_connects,
                of("sluice_http_responses_total", &[("class", "5xx")])
                    + of("sluice_http_incomplete_requests_total", &[])
                    + failed_connects,
            )
        })
    }

    /// The rollout's state as etcd holds it (read with etcdctl, not through sluice).
    pub fn stored(&self) -> serde_json::Value {
        self.stored_now().expect("etcd holds the rollout")
    }

    pub fn stored_now(&self) -> Option<serde_json::Value> {
        let text = self.etcd.get(&format!("{}/rollouts/web", self.prefix))?;
        Some(serde_json::from_str::<serde_json::Value>(&text).expect("json")["state"].clone())
    }

    /// Every running node's kernel share (percent).
    pub fn shares(&self) -> Vec<Option<f64>> {
        self.nodes
            .iter()
            .map(|n| {
                n.agent.answers().then(|| {
                    n.agent.service("web")["canary_percent"]
                        .as_f64()
                        .expect("share")
                })
            })
            .collect()
    }

    /// The end of every agent's log, but for its decisions (the rollout state has those).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.agent.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("rollout decision"))
                .collect();
            out += &format!(
                "--- {} ---\n{}\n",
                n.name,
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        out
    }

    /// Polls every node's share until `done` holds of the stored rollout, recording each
    /// node's distinct shares in order.
    pub fn watch_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&serde_json::Value) -> bool,
    ) -> Vec<Vec<f64>> {
        let mut seen: Vec<Vec<f64>> = vec![Vec::new(); self.nodes.len()];
        let end = Instant::now() + timeout;
        loop {
            for (i, s) in self.shares().into_iter().enumerate() {
                if let Some(s) = s
                    && seen[i].last() != Some(&s)
                {
                    seen[i].push(s);
                }
            }
            if done(&self.stored()) {
                return seen;
            }
            assert!(
                Instant::now() < end,
                "not done after {timeout:?}: {:#}; shares seen {seen:?}\n{}",
                self.stored(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn phase(s: &serde_json::Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

pub fn count(s: &serde_json::Value, action: &str) -> u64 {
    s["decision_counts"][action].as_u64().unwrap_or(0)
}
