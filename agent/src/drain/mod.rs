//! Draining: ending steered connections so that their clients reconnect and are steered
//! afresh. Steering happens at `connect()`, so without this a pool of keep-alive
//! connections keeps whatever version it drew: a rollback only stops new connections, and
//! a pool's share of requests is the share of connections it happened to open.
//!
//! - **Rollback**: when a service's canary share in the kernel goes to 0 (a rollback, an
//!   abort, `sluice weight S 0`, a configuration of 0), its canary connections are ended:
//!   with `l7: http1` each when at rest ([`plan::at_rest`]: right after an answer, or
//!   silent), otherwise (or still busy) at the grace deadline. A drain that an agent restart
//!   cut short is redone by the next agent, which drains every service it finds at 0.
//! - **Maximum age**: steered connections older than `max_connection_age` are ended when at
//!   rest ([`plan::at_rest`]).
//!
//! The work runs on a thread of its own with its own handles on the pinned maps, so a
//! drain of thousands of connections never holds up the guard. It wakes on every change
//! the daemon makes, and every 250 ms; it lists sockets (sock_diag, in every network
//! namespace the steered processes live in) only while a drain is under way or an age is
//! due: at rest it costs a few map reads a tick and nothing per packet.

#[expect(unsafe_code, reason = "sock_diag over raw netlink sockets")]
pub mod diag;
mod kernel;
#[expect(unsafe_code, reason = "setns into another network namespace")]
mod netns;
pub mod plan;
mod run;
mod watch;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
};

pub use plan::{How, Policy, Reason};

/// One finished drain of a service's canary connections.
#[derive(Clone, Debug, PartialEq)]
pub struct DrainReport {
    pub service: String,
    /// Connections ended: at rest, and at the grace deadline.
    pub idle: u64,
    pub at_grace: u64,
    /// Of those at the grace, how many had an HTTP request waiting for its response: the
    /// only requests a drain can cost.
    pub in_flight: u64,
    /// From the share reaching 0 (as the drainer saw it) to the last one ended.
    pub seconds: f64,
    /// Network namespaces found that could not be entered (their connections were not
    /// seen).
    pub unreachable_namespaces: usize,
}

/// What the exporter shows.
#[derive(Clone, Debug, Default)]
pub struct DrainStats {
    /// Connections ended, by (service, reason, how).
    pub ended: BTreeMap<(String, Reason, How), u64>,
    pub unreachable_namespaces: usize,
}

/// The daemon's handle on the drainer thread.
pub struct Drainer {
    updates: mpsc::Sender<Update>,
    stats: Arc<Mutex<DrainStats>>,
}

/// What the daemon tells the drainer: the services as applied, and where namespaces are
/// pinned. Sent after every change the daemon makes to the kernel.
#[derive(Clone, Debug)]
pub struct Update {
    pub policies: Vec<Policy>,
    pub netns_dirs: Vec<PathBuf>,
}

impl Update {
    /// The services as applied (with the ids the kernel gave them) and the configuration's
    /// drain settings.
    pub fn new<'a>(
        config: &crate::config::Config,
        applied: impl Iterator<Item = (&'a crate::desired::DesiredService, u32)>,
    ) -> Self {
        let policies = applied
            .filter_map(|(d, id)| {
                let s = config.services.iter().find(|s| s.name == d.name)?;
                let vip = *d.vips.first()?;
                Some(Policy {
                    name: d.name.clone(),
                    id,
                    vip,
                    // The HTTP state on a tag is kept by the signal programs.
                    http1: s.http1 && config.signals,
                    on_rollback: s.drain.on_rollback,
                    grace: s.drain.grace,
                    max_age: s.max_connection_age,
                    canary_backends: d
                        .canary
                        .iter()
                        .map(|b| {
                            std::net::SocketAddr::new(
                                crate::desired::words_addr(b.addr),
                                u16::from_be(b.port),
                            )
                        })
                        .collect(),
                })
            })
            .collect();
        Self {
            policies,
            netns_dirs: config.network_namespaces.clone(),
        }
    }
}

impl Drainer {
    /// Starts the thread on the maps pinned under `pin_dir`, for the processes of `cgroup`.
    pub fn start(
        pin_dir: &Path,
        cgroup: &Path,
        first: Update,
    ) -> Result<(Self, tokio::sync::mpsc::UnboundedReceiver<DrainReport>), aya::maps::MapError>
    {
        let kernel = kernel::Kernel::open(pin_dir)?;
        let (updates, rx) = mpsc::channel();
        let (reports, reports_rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(DrainStats::default()));
        let worker = run::Worker::new(kernel, cgroup.to_owned(), first, stats.clone(), reports);
        std::thread::Builder::new()
            .name("sluice-drain".into())
            .spawn(move || worker.run(rx))
            .map_err(aya::maps::MapError::IoError)?;
        Ok((Self { updates, stats }, reports_rx))
    }

    pub fn update(&self, update: Update) {
        let _ = self.updates.send(update);
    }

    pub fn stats(&self) -> DrainStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
