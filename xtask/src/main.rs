//! `cargo xtask setup|test|demo|bench`: everything a fresh machine needs, then the job.
//!
//! xtask is orchestration only and builds before anything is installed, so it depends on no
//! crate that needs the kernel toolchain: the demo and the bench live in `lab/` and run
//! through `cargo run`, after set-up.

mod image;
mod setup;
mod test;

use clap::{Parser, Subcommand};
use xtask::util::{self, cargo, run};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sluice's set-up, tests, demo and bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): the nightly's rust-src and
    /// clippy, bpf-linker built against the nightly's own LLVM, bpftool; mount bpffs.
    Setup,
    /// Set up, then run every test: fmt and clippy (the kernel crate and the lab included),
    /// host unit tests, the kernel tests (they need root; with CI=true they fail rather than
    /// skip without it) and the bench's smoke run.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then build the agent as a static binary in an OCI image from scratch:
    /// target/image/oci (layout), sluice-oci.tar and sluice-docker.tar.
    Image,
    /// Set up, build, and show a canary rollout live (`cargo xtask demo --help` for more).
    #[command(disable_help_flag = true)]
    Demo {
        /// Passed to the lab's demo: `--faulty-canary`, `--help`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then benchmark sluice side by side with its baselines (`cargo xtask bench
    /// --help` for the options and run times).
    #[command(disable_help_flag = true)]
    Bench {
        /// Passed to the lab's bench: `--quick`, `--signals`, `--help`, ...
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Test { args } => {
            setup::setup()?;
            test::test(&args)
        }
        Command::Image => {
            setup::setup()?;
            setup::image_tools()?;
            image::image()
        }
        Command::Demo { args } => {
            setup::setup()?;
            lab("demo", &args)
        }
        Command::Bench { args } => {
            setup::setup()?;
            lab("bench", &args)
        }
    }
}

/// Runs one of the lab's commands (`lab/`: the demo and the bench).
pub fn lab(command: &str, args: &[String]) -> anyhow::Result<()> {
    run(cargo()
        .args(["run", "--quiet", "--package", "sluice-lab", "--", command])
        .args(args))
}
