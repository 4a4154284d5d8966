//! `cargo xtask bench --cluster`: what cluster mode costs etcd, measured with many synthetic
//! nodes against a real 3-member etcd on loopback.
//!
//! Each synthetic node does what an agent does: a lease, its presence key, and every
//! `publish_interval` one transaction putting its evidence for each service under a
//! rollout (the agent's own encoding, [`sluice::cluster::NodeEvidence`], of counters with
//! as many nonzero slots as an HTTP service carries), under its lease. Each also holds a
//! watch on the rollouts, as every agent does. One leader holds a watch on all evidence and,
//! every second, reads each service's evidence as a new leader would. Reported: bytes and
//! operations written a second, the leader's read per analysis (bytes, latency), the time
//! from a rollout write to every node's watch (fan-out), etcd's CPU and database growth;
//! and, from those, what 5 000 nodes with 20 rollouts would cost.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use serde_json::{Value, json};
use sluice::cluster::NodeEvidence;
use sluice_tests::etcd::EtcdCluster;
use tokio_stream::StreamExt as _;

use crate::util::workspace_root;

const PREFIX: &str = "/sluice-bench/";
/// Connections the synthetic nodes share (a real node has one each; etcd's cost is per
/// request and per watch, which this keeps).
const CONNECTIONS: usize = 24;
/// Nonzero counter slots per version of an HTTP service with traffic: steering and
/// connection counters, methods and status classes, and the occupied buckets of four
/// histograms.
const NONZERO_SLOTS: usize = 48;

pub struct Options {
    pub publishers: usize,
    pub services: usize,
    pub publish_interval: Duration,
    pub seconds: u64,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    super::require_root()?;
    let etcd = EtcdCluster::start("bench-cluster", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(&etcd, &o));
    let mut results = result?;
    results["machine"] = super::host::machine();
    let dir = workspace_root().join("target/bench-cluster");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = report(&results);
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{md}");
    println!("bench: wrote {}", dir.join("report.md").display());
    drop(etcd);
    Ok(())
}

/// A node's counters for one service: `NONZERO_SLOTS` slots of realistic size.
fn reading(seed: u64, tick: u64) -> [Vec<u64>; 2] {
    let slots = sluice_common::metrics::METRIC_SLOTS as usize;
    let mut v = [vec![0u64; slots], vec![0u64; slots]];
    for (k, version) in v.iter_mut().enumerate() {
        for i in 0..NONZERO_SLOTS {
            let at = (i * 7 + k * 3 + seed as usize) % slots;
            version[at] = 10_000 + seed * 977 + (i as u64) * 131 + tick * 40 * (k as u64 + 1);
        }
    }
    v
}

#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    txns: AtomicU64,
    txn_us: AtomicU64,
}

async fn measure(etcd: &EtcdCluster, o: &Options) -> anyhow::Result<Value> {
    let endpoints = etcd.endpoints();
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        clients.push(Client::connect([endpoints[i % endpoints.len()].clone()], None).await?);
    }
    let tally = Arc::new(Tally::default());
    let labels = BTreeMap::from([("zone".to_owned(), "z".to_owned())]);
    let value_bytes =
        serde_json::to_vec(&NodeEvidence::new("node-00000", &labels, &reading(1, 1), 0))?.len();
    let deadline = Instant::now() + Duration::from_secs(o.seconds + 5);
    // The nodes: leases, presence, and their publishing loops.
    let mut tasks = Vec::new();
    for n in 0..o.publishers {
        let mut c = clients[n % CONNECTIONS].clone();
        let (tally, labels) = (tally.clone(), labels.clone());
        let (services, every) = (o.services, o.publish_interval);
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{n:05}");
            let lease = c.lease_grant(30, None).await?.id();
            c.put(
                format!("{PREFIX}nodes/{node}"),
                "{}",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
            // Spread over the interval, as real nodes started at different times are.
            let offset = every.mul_f64(n as f64 / 1000.0 % 1.0);
            tokio::time::sleep(offset).await;
            let mut tick = 0;
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut ops = Vec::new();
                let mut bytes = 0;
                for s in 0..services {
                    let e =
                        NodeEvidence::new(&node, &labels, &reading(n as u64 + s as u64, tick), 0);
                    let key = format!("{PREFIX}evidence/svc-{s:02}/{node}");
                    let value = serde_json::to_vec(&e)?;
                    bytes += key.len() + value.len();
                    ops.push(TxnOp::put(
                        key,
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    ));
                }
                c.txn(Txn::new().and_then(ops)).await?;
                tally.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                tally.txns.fetch_add(1, Ordering::Relaxed);
                tally
                    .txn_us
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                tick += 1;
                tokio::time::sleep_until((started + every).into()).await;
            }
            anyhow::Ok(())
        }));
    }
    // Every node's watch on the rollouts: the fan-out.
    let fanout: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let mut watchers = Vec::new();
    for n in 0..o.publishers {
        let mut c = clients[n % CONNECTIONS].clone();
        let fanout = fanout.clone();
        watchers.push(tokio::spawn(async move {
            let mut w = c
                .watch(
                    format!("{PREFIX}rollouts/"),
                    Some(WatchOptions::new().with_prefix()),
                )
                .await?;
            while let Some(Ok(r)) = w.next().await {
                let now = unix_us();
                for e in r.events() {
                    if let Some(kv) = e.kv()
                        && let Ok(sent) =
                            std::str::from_utf8(kv.value()).unwrap_or("").parse::<u64>()
                        && let Ok(mut f) = fanout.lock()
                    {
                        f.push(now.saturating_sub(sent));
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    // The leader's watch on every node's evidence.
    let leader_bytes = Arc::new(AtomicU64::new(0));
    let mut lc = clients[0].clone();
    let lb = leader_bytes.clone();
    let leader_watch = tokio::spawn(async move {
        let mut w = lc
            .watch(
                format!("{PREFIX}evidence/"),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        while let Some(Ok(r)) = w.next().await {
            let b: usize = r
                .events()
                .iter()
                .filter_map(|e| e.kv().map(|kv| kv.key().len() + kv.value().len()))
                .sum();
            lb.fetch_add(b as u64, Ordering::Relaxed);
        }
        anyhow::Ok(())
    });
    // Warm up (every node registered and publishing), then the measured window.
    tokio::time::sleep(o.publish_interval * 2 + Duration::from_secs(2)).await;
    let cpu0 = etcd_cpu_seconds(etcd);
    let db0 = db_size(etcd);
    let (b0, t0, u0, l0) = (
        tally.bytes.load(Ordering::Relaxed),
        tally.txns.load(Ordering::Relaxed),
        tally.txn_us.load(Ordering::Relaxed),
        leader_bytes.load(Ordering::Relaxed),
    );
    if let Ok(mut f) = fanout.lock() {
        f.clear();
    }
    let window = Instant::now();
    let mut reads_ms = Vec::new();
    let mut read_bytes = Vec::new();
    let mut rc = clients[1].clone();
    let mut wc = clients[2].clone();
    let mut k = 0;
    while window.elapsed() < Duration::from_secs(o.seconds) {
        // A rollout write, stamped, for the fan-out.
        let sent = unix_us();
        wc.put(
            format!("{PREFIX}rollouts/svc-{:02}", k % o.services),
            sent.to_string(),
            None,
        )
        .await?;
        // The leader's read of every service's evidence, as at a new term.
        let started = Instant::now();
        let mut bytes = 0;
        for s in 0..o.services {
            let r = rc
                .get(
                    format!("{PREFIX}evidence/svc-{s:02}/"),
                    Some(GetOptions::new().with_prefix()),
                )
                .await?;
            bytes += r
                .kvs()
                .iter()
                .map(|kv| kv.key().len() + kv.value().len())
                .sum::<usize>();
        }
        reads_ms.push(started.elapsed().as_secs_f64() * 1e3);
        read_bytes.push(bytes);
        k += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let secs = window.elapsed().as_secs_f64();
    let cpu = etcd_cpu_seconds(etcd) - cpu0;
    let db = db_size(etcd).saturating_sub(db0);
    let (b1, t1, u1, l1) = (
        tally.bytes.load(Ordering::Relaxed),
        tally.txns.load(Ordering::Relaxed),
        tally.txn_us.load(Ordering::Relaxed),
        leader_bytes.load(Ordering::Relaxed),
    );
    for t in tasks {
        t.abort();
    }
    for w in watchers {
        w.abort();
    }
    leader_watch.abort();
    let mut f = fanout.lock().map(|f| f.clone()).unwrap_or_default();
    f.sort_unstable();
    let q = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let written_per_s = (b1 - b0) as f64 / secs;
    let txns_per_s = (t1 - t0) as f64 / secs;
    let mean_read_bytes = read_bytes.iter().sum::<usize>() as f64 / read_bytes.len().max(1) as f64;
    reads_ms.sort_by(f64::total_cmp);
    let per_pair = written_per_s / (o.publishers * o.services) as f64;
    Ok(json!({
        "cluster": {
            "publishers": o.publishers,
            "services": o.services,
            "publish_interval_s": o.publish_interval.as_secs_f64(),
            "window_s": secs,
            "value_bytes": value_bytes,
            "written_bytes_per_s": written_per_s,
            "txns_per_s": txns_per_s,
            "puts_per_s": txns_per_s * o.services as f64,
            "mean_txn_ms": (u1 - u0) as f64 / 1000.0 / (t1 - t0).max(1) as f64,
            "leader_watch_bytes_per_s": (l1 - l0) as f64 / secs,
            "leader_read_bytes_per_analysis": mean_read_bytes,
            "leader_read_ms_p50": reads_ms.get(reads_ms.len() / 2).copied().unwrap_or(0.0),
            "leader_read_ms_max": reads_ms.last().copied().unwrap_or(0.0),
            "fanout_events": f.len(),
            "fanout_ms_p50": q(&f, 0.5),
            "fanout_ms_p99": q(&f, 0.99),
            "fanout_ms_max": q(&f, 1.0),
            "etcd_cpu_cores": cpu / secs,
            "etcd_db_growth_bytes_per_s": db as f64 / secs,
            "at_5000_nodes_20_rollouts": {
                "written_bytes_per_s": per_pair * 5000.0 * 20.0,
                "puts_per_s": 5000.0 * 20.0 / o.publish_interval.as_secs_f64(),
                "leader_read_bytes_per_analysis": mean_read_bytes / (o.publishers * o.services) as f64 * 5000.0 * 20.0,
            },
        }
    }))
}

/// Microseconds since the Unix epoch: the fan-out is timed across tasks by the wall clock.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU seconds the etcd members have used so far.
fn etcd_cpu_seconds(etcd: &EtcdCluster) -> f64 {
    let tick = 100.0;
    etcd.pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some((utime + stime) / tick)
        })
        .sum()
}

/// The database size of the first member (etcdctl endpoint status).
fn db_size(etcd: &EtcdCluster) -> u64 {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoints()[0],
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v[0]["Status"]["dbSize"].as_u64())
        .unwrap_or(0)
}

fn report(r: &Value) -> String {
    let c = &r["cluster"];
    let f = |k: &str| c[k].as_f64().unwrap_or(0.0);
    let at = &c["at_5000_nodes_20_rollouts"];
    format!(
        "# Cluster mode against etcd\n\n\
         {} synthetic nodes x {} services under a rollout, publishing every {} s, against a \
         3-member etcd on loopback, measured over {:.0} s.\n\n\
         | | |\n|---|---|\n\
         | evidence value (one node, one service) | {} bytes |\n\
         | written | {:.2} MB/s, {:.0} puts/s in {:.0} transactions/s (mean {:.1} ms) |\n\
         | leader's watch on the evidence | {:.2} MB/s |\n\
         | leader's read of every service's evidence | {:.2} MB, {:.0} ms (max {:.0} ms) |\n\
         | fan-out: rollout write to {} watches | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events) |\n\
         | etcd CPU (3 members) | {:.2} cores |\n\
         | etcd database growth | {:.2} MB/s (before compaction) |\n\n\
         At 5 000 nodes and 20 rollouts with the same interval: {:.1} MB/s and {:.0} puts/s \
         written, and a leader's full read of {:.0} MB.\n",
        c["publishers"],
        c["services"],
        f("publish_interval_s"),
        f("window_s"),
        c["value_bytes"],
        f("written_bytes_per_s") / 1e6,
        f("puts_per_s"),
        f("txns_per_s"),
        f("mean_txn_ms"),
        f("leader_watch_bytes_per_s") / 1e6,
        f("leader_read_bytes_per_analysis") / 1e6,
        f("leader_read_ms_p50"),
        f("leader_read_ms_max"),
        c["publishers"],
        f("fanout_ms_p50"),
        f("fanout_ms_p99"),
        f("fanout_ms_max"),
        c["fanout_events"],
        f("etcd_cpu_cores"),
        f("etcd_db_growth_bytes_per_s") / 1e6,
        at["written_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6,
        at["puts_per_s"].as_f64().unwrap_or(0.0),
        at["leader_read_bytes_per_analysis"].as_f64().unwrap_or(0.0) / 1e6,
    )
}
