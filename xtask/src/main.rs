//! `cargo xtask setup|test|demo`: everything a fresh machine needs, then the job.

mod bench;
mod demo;
mod local;
mod measure;
mod measure_http;
mod responder;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sluice's set-up, tests and demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): the nightly's rust-src,
    /// bpf-linker built against the nightly's own LLVM, bpftool; mount bpffs.
    Setup,
    /// Set up, then run every test: fmt and clippy, host unit tests, and the kernel tests
    /// (they need root; with CI=true they fail rather than skip without it).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and show a canary rollout live: a stable and a canary HTTP backend on
    /// loopback, a client in a demo cgroup, and the daemon walking the canary up step by
    /// step on the evidence until it is promoted (about a minute and a half).
    Demo {
        /// The canary starts failing part of its requests half-way: watch it rolled back.
        #[arg(long)]
        faulty_canary: bool,
    },
    /// Measure steering's cost: kernel run time per call of each hook
    /// (kernel.bpf_stats_enabled) and connections per second through a virtual address
    /// against a direct connect to the same backend, alternating in one run.
    Measure {
        /// Connections per round.
        #[arg(long, default_value_t = 20_000)]
        connections: u64,
        /// Rounds of each path (alternating direct, steered).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Only the HTTP rounds (skip the connection rounds).
        #[arg(long)]
        http_only: bool,
    },
    /// Benchmark sluice side by side with no steering, iptables, nftables, haproxy and
    /// Envoy, in one run in a network namespace of its own; writes bench/report.md and
    /// bench/report.json (about 12 minutes). Installs what it needs.
    Bench {
        /// A smoke run of about 40 seconds whose numbers mean nothing (`cargo xtask test`
        /// runs it): writes target/bench-quick/ instead.
        #[arg(long)]
        quick: bool,
        /// Only the signal hooks' cost: HTTP rounds through direct, steering only and
        /// steering with signals, keep-alive and one connection per request (about five
        /// minutes); writes target/bench-signals/report.json.
        #[arg(long, conflicts_with = "quick")]
        signals: bool,
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
    /// (internal) Writes bench/report.md again from bench/report.json (after a change to the
    /// report's layout).
    #[command(hide = true)]
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
        Command::Setup => setup::setup(),
        Command::Test { args } => {
            setup::setup()?;
            test::test(&args)
        }
        Command::Demo { faulty_canary } => {
            setup::setup()?;
            demo::demo(faulty_canary)
        }
        Command::Measure {
            connections,
            rounds,
            http_only,
        } => {
            setup::setup()?;
            measure::measure(connections, rounds, http_only)
        }
        Command::Bench {
            quick,
            signals,
            rounds,
            seconds,
            perf,
        } => {
            setup::setup()?;
            if signals {
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
