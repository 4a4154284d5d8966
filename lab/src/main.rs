//! `sluice-lab`: the bench and the demo, run for real on this machine (`cargo xtask bench`
//! and `cargo xtask demo` set up, then run this). Agents, servers, clients, cgroups and the
//! agent's configurations come from the test kit (`sluice-tests`); this crate only arranges
//! them and reports.

mod bench;
mod demo;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-lab", about = "sluice's bench and demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a canary rollout live: a stable and a canary HTTP backend on loopback, a client
    /// in a demo cgroup, and the daemon walking the canary up step by step on the evidence
    /// until it is promoted (about a minute and a half).
    Demo {
        /// The canary starts failing part of its requests half-way: watch it rolled back.
        #[arg(long)]
        faulty_canary: bool,
        /// One rollout across three node agents through a 3-member etcd on loopback, the
        /// leader killed mid-rollout (about a minute).
        #[arg(long, conflicts_with = "faulty_canary")]
        cluster: bool,
    },
    /// Benchmark sluice side by side with no steering, iptables, nftables, haproxy and
    /// Envoy, in one run in a network namespace of its own; writes target/bench/report.md
    /// and target/bench/report.json (about 12 minutes). Installs what it needs.
    Bench {
        /// A smoke run of about 40 seconds whose numbers mean nothing (`cargo xtask test`
        /// runs it), with the debug builds: writes target/bench-quick/ instead.
        #[arg(long)]
        quick: bool,
        /// Only the signal hooks' cost: HTTP rounds through direct, steering only and
        /// steering with signals, keep-alive and one connection per request (about five
        /// minutes); writes target/bench-signals/report.json.
        #[arg(long, conflicts_with = "quick")]
        signals: bool,
        /// Only what following DNS names costs the agent: N services by name against N by
        /// address, two agents side by side (about a minute); writes
        /// target/bench-discovery/report.{json,md}.
        #[arg(long, conflicts_with_all = ["quick", "signals"])]
        discovery: bool,
        /// Only draining: how fast a share of 0 reaches pools of 8, 1 000 and 10 000
        /// keep-alive connections, and what `max_connection_age` costs a closed-loop pool
        /// (about two minutes); writes target/bench-drain/report.{json,md}.
        #[arg(long, conflicts_with_all = ["quick", "signals", "discovery"])]
        drain: bool,
        /// Only cluster mode's cost to etcd: synthetic nodes publishing evidence and
        /// watching rollouts against a 3-member etcd on loopback (about a minute); writes
        /// target/bench-cluster/report.{json,md}.
        #[arg(long, conflicts_with_all = ["quick", "signals", "discovery", "drain"])]
        cluster: bool,
        /// Synthetic nodes with --cluster.
        #[arg(long, default_value_t = 500, requires = "cluster")]
        publishers: usize,
        /// Services under a rollout on each node with --cluster.
        #[arg(long, default_value_t = 20, requires = "cluster")]
        rollouts: usize,
        /// Seconds between a node's publications with --cluster.
        #[arg(long, default_value_t = 2.0, requires = "cluster")]
        publish_interval: f64,
        /// Services a side with --discovery.
        #[arg(long, default_value_t = 1000, requires = "discovery")]
        services: u32,
        /// Seconds measured with --discovery.
        #[arg(long, default_value_t = 30, requires = "discovery")]
        window: u64,
        /// Rounds of each way with --signals.
        #[arg(long, default_value_t = 25, requires = "signals")]
        rounds: u32,
        /// Seconds a round with --signals.
        #[arg(long, default_value_t = 2, requires = "signals")]
        seconds: u32,
        /// With --signals: after the rounds, one more round of each way under
        /// `perf record -a -g` (cpu-clock), written to target/bench-signals/perf-*.data, to
        /// see where a way's extra time goes, inside the hooks and around them.
        #[arg(long, requires = "signals")]
        perf: bool,
    },
    /// Writes target/bench/report.md again from target/bench/report.json (after a change to
    /// the report's layout).
    BenchRender,
    /// (internal) The demo's client: joins a cgroup and sends requests in a bounded loop.
    #[command(hide = true)]
    DemoClient {
        cgroup: std::path::PathBuf,
        address: std::net::SocketAddr,
        seconds: u64,
        stop_file: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo {
            faulty_canary,
            cluster,
        } => demo::demo(faulty_canary, cluster),
        Command::Bench {
            quick,
            signals,
            discovery,
            drain,
            cluster,
            publishers,
            rollouts,
            publish_interval,
            services,
            window,
            rounds,
            seconds,
            perf,
        } => {
            if cluster {
                bench::cluster::run(bench::cluster::Options {
                    publishers,
                    services: rollouts,
                    publish_interval: std::time::Duration::from_secs_f64(publish_interval),
                    seconds: 30,
                })
            } else if drain {
                bench::drain::run()
            } else if discovery {
                bench::discovery::run(services, window)
            } else if signals {
                bench::signals::run(rounds, seconds, perf)
            } else {
                bench::bench(quick)
            }
        }
        Command::BenchRender => bench::render(),
        Command::DemoClient {
            cgroup,
            address,
            seconds,
            stop_file,
        } => demo::client(&cgroup, address, seconds, &stop_file),
    }
}
