//! Command line: one file per subcommand.

mod check;
mod detach;
mod rollout;
mod run;
mod status;
mod weight;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{api::RolloutAction, config::DEFAULT_API_SOCKET};

/// Exit codes (sysexits.h), so scripts and probes can tell failures apart.
pub mod exit {
    /// Bad configuration or arguments.
    pub const USAGE: u8 = 64;
    /// The daemon is not reachable.
    pub const UNAVAILABLE: u8 = 69;
    /// Any other failure.
    pub const SOFTWARE: u8 = 70;
    /// Needs root.
    pub const NOPERM: u8 = 77;
}

/// sluice steers a share of new TCP connections to a service's virtual address to its canary
/// backends, in the kernel, at connect() time, for every process in a cgroup v2 subtree. It
/// measures both versions in the kernel and, for services with a `rollout:`, walks the canary
/// up step by step while the evidence holds, and takes it back when it doesn't.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node daemon: validate the config, attach the programs (or re-adopt pinned
    /// ones), keep the maps in line with the config (reloads on SIGHUP and when the file
    /// changes) and serve the control socket. SIGTERM leaves steering in place.
    Run {
        /// Configuration file (YAML).
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Log format (logs go to stderr; RUST_LOG filters, default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
        log_format: LogFormat,
    },
    /// Validate a configuration file without root and without a daemon. Exits 64 if invalid.
    /// The document alone is checked, so a config can be checked anywhere for any node; with
    /// --on-this-node, its cgroups must also exist here, as `sluice run` requires.
    Check {
        /// Configuration file (YAML).
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Also resolve `cgroup` and every `segment` against this node's cgroup2 tree.
        #[arg(long)]
        on_this_node: bool,
    },
    /// Show each service's virtual addresses, share, backends and steering counters; with a
    /// SERVICE, also its rollout: phase, step, weight, live numbers and the last decisions
    /// with their evidence.
    Status {
        /// Only this service.
        service: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_API_SOCKET, env = "SLUICE_SOCKET")]
        socket: PathBuf,
    },
    /// Set a service's canary share now (percent, 0 to 100, up to 4 decimals). New
    /// connections see it at once; open ones keep their backend. Kept until the
    /// configuration's own share for the service changes. Refused for a service under a
    /// rollout (use promote, abort, pause, resume).
    Weight {
        /// Service name, as in the configuration.
        service: String,
        /// Canary share in percent.
        percent: f64,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_API_SOCKET, env = "SLUICE_SOCKET")]
        socket: PathBuf,
    },
    /// Promote a rollout now: all new connections go to the canary backends, which become
    /// the stable set. Skips the remaining steps and any promotion gate.
    Promote(RolloutArgs),
    /// Abort a rollout: the canary share goes to 0 at once (RolledBack). Final for this
    /// canary set; a new canary set starts a new rollout.
    Abort(RolloutArgs),
    /// Pause a rollout: the share stays where it is, analysis stops; guards keep watching.
    Pause(RolloutArgs),
    /// Resume a paused rollout at the same step, with a fresh analysis window.
    Resume(RolloutArgs),
    /// Remove every program, link and pin of one agent, and its rollout state: steering
    /// stops. A daemon answering on the socket is asked to do it (and exit), and refuses if
    /// its pins are not the ones named; without a daemon the pins are removed here, and only
    /// from bpffs, laid out as sluice lays them out.
    Detach {
        /// Take the pin path, state path and socket from this configuration file (its
        /// `api_socket` wins over --socket and SLUICE_SOCKET).
        #[arg(long, short, conflicts_with_all = ["pin_path", "state_path"])]
        config: Option<PathBuf>,
        /// The pin directory of the agent to detach (the config's `pin_path`).
        #[arg(long, default_value = crate::config::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// The rollout state file (the config's `state_path`), removed with the pins.
        #[arg(long, default_value = crate::config::DEFAULT_STATE_PATH)]
        state_path: PathBuf,
        /// The daemon's control socket (the config's `api_socket`).
        #[arg(long, default_value = DEFAULT_API_SOCKET, env = "SLUICE_SOCKET")]
        socket: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RolloutArgs {
    /// Service name, as in the configuration.
    service: String,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_API_SOCKET, env = "SLUICE_SOCKET")]
    socket: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => run::run(&config, log_format),
        Command::Check {
            config,
            on_this_node,
        } => check::check(&config, on_this_node),
        Command::Status {
            service,
            output,
            socket,
        } => status::status(&socket, service.as_deref(), output),
        Command::Weight {
            service,
            percent,
            socket,
        } => weight::weight(&socket, &service, percent),
        Command::Promote(a) => rollout::control(&a.socket, &a.service, RolloutAction::Promote),
        Command::Abort(a) => rollout::control(&a.socket, &a.service, RolloutAction::Abort),
        Command::Pause(a) => rollout::control(&a.socket, &a.service, RolloutAction::Pause),
        Command::Resume(a) => rollout::control(&a.socket, &a.service, RolloutAction::Resume),
        Command::Detach {
            config,
            pin_path,
            state_path,
            socket,
        } => {
            let target = match config {
                Some(path) => match detach::Target::from_config(&path) {
                    Ok(t) => t,
                    Err(e) => return fail(exit::USAGE, &e),
                },
                None => detach::Target {
                    pin_path,
                    state_path,
                    socket,
                },
            };
            detach::detach(&target)
        }
    }
}

/// The tail every control command shares: the daemon's own error (exit 64), an answer of
/// the wrong kind (70), or no daemon at all (69).
fn not_ok(answer: Result<crate::api::Response, crate::api::ClientError>) -> ExitCode {
    match answer {
        Ok(crate::api::Response::Error { message }) => {
            eprintln!("sluice: {message}");
            ExitCode::from(exit::USAGE)
        }
        Ok(other) => {
            eprintln!("sluice: unexpected response {other:?}");
            ExitCode::from(exit::SOFTWARE)
        }
        Err(e) => fail(exit::UNAVAILABLE, &e),
    }
}

/// Prints an error with its causes to stderr and returns `code`.
fn fail(code: u8, e: &dyn std::error::Error) -> ExitCode {
    eprintln!("sluice: {}", crate::error_chain(e));
    ExitCode::from(code)
}
