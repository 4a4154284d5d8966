//! `sluice run`: load, apply, attach, then serve the API and reload on SIGHUP or when the
//! configuration file changes, until SIGTERM/SIGINT (steering stays) or `sluice detach`.
//!
//! Every change reaches the kernel the same way: the inputs (configuration, this node's
//! cgroups, the rollouts' decisions) go through [`crate::desired::desired_state`], and
//! [`Dataplane::apply`] makes the maps hold the result, all or nothing.

mod control;
mod reload;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    api::{self, Request},
    config::{Config, ConfigError, Node},
    dataplane::{ApplyReport, Dataplane, DataplaneError},
    desired::desired_state,
    metrics::{self, Scrape, ShareWindows},
    rollout::{self, Controller, Outcome, StateError, SystemClock},
};

/// How often the configuration file is re-read to notice changes. ConfigMap updates swap a
/// symlink: re-reading the path (rather than watching one inode) sees through that.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// How often counters are sampled for the one-minute share windows. Each sample reads two
/// counters of every service (four for HTTP ones): every 5 s keeps that small on nodes with
/// thousands of services, and a minute still holds 12 samples.
const SHARE_SAMPLE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("sluice run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotRoot,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Api(#[from] api::ServerError),
    #[error(transparent)]
    Metrics(#[from] metrics::ServeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("installing a signal handler")]
    Signal(#[source] std::io::Error),
}

/// Everything the loop owns: the inputs of the desired state and the kernel it goes to.
struct Daemon {
    config_path: PathBuf,
    config: Config,
    node: Node,
    rollouts: Controller,
    dp: Dataplane,
}

pub async fn run(config_path: PathBuf, config: Config, node: Node) -> Result<(), DaemonError> {
    if crate::sys::effective_uid() != 0 {
        return Err(DaemonError::NotRoot);
    }
    let mut loaded_text = std::fs::read(&config_path).unwrap_or_default();
    let (calls_tx, mut calls) = mpsc::channel(16);
    // Refuse to start beside a running daemon before touching the kernel.
    api::serve(&config.api_socket, calls_tx)?;
    let (rollouts, loaded) = Controller::load(&config, Arc::new(SystemClock))?;
    let dp = Dataplane::load(&config, &node)?;
    let mut d = Daemon {
        config_path,
        config,
        node,
        rollouts,
        dp,
    };
    let report = d.steer()?;
    if loaded.changed {
        d.save();
    }
    let adopted = d.dp.attach()?;
    let (scrape_tx, mut scrapes) = mpsc::channel(16);
    let metrics_address = metrics::serve(d.config.metrics_address, scrape_tx).await?;
    let mut windows = ShareWindows::default();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %d.config_path.display(),
        cgroup = %d.dp.cgroup().display(),
        pin_dir = %d.dp.pin_dir().display(),
        api_socket = %d.config.api_socket.display(),
        metrics = %metrics_address,
        services = d.config.services.len(),
        added = report.added,
        adopted_links = adopted,
        "sluice started"
    );
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut watch = tokio::time::interval(WATCH_PERIOD);
    let mut share_sample = tokio::time::interval(SHARE_SAMPLE_PERIOD);
    let mut rollout_tick = tokio::time::interval(rollout::TICK);
    rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                loaded_text = std::fs::read(&d.config_path).unwrap_or_default();
                d.reload("SIGHUP");
            }
            _ = share_sample.tick() => match d.dp.share_counts() {
                Ok(counts) => windows.record(&counts, std::time::Instant::now()),
                Err(e) => tracing::warn!(error = %crate::error_chain(&e), "reading counters failed"),
            },
            _ = rollout_tick.tick() => d.rollout_tick(),
            _ = watch.tick() => {
                let text = std::fs::read(&d.config_path).unwrap_or_default();
                if text != loaded_text {
                    loaded_text = text;
                    d.reload("file changed");
                }
            }
            Some(scrape) = scrapes.recv() => match scrape {
                Scrape::Metrics(reply) => {
                    let _ = reply.send(d.exposition(&windows));
                }
                Scrape::Ready(reply) => {
                    let _ = reply.send(());
                }
            },
            Some(call) = calls.recv() => {
                let detach = call.request == Request::Detach;
                let response = d.handle(call.request);
                let _ = call.reply.send(response);
                if detach {
                    let _ = tokio::time::timeout(Duration::from_secs(2), call.written).await;
                    remove_socket(&d.config.api_socket);
                    return Ok(());
                }
            }
        }
    }
    let _ = std::fs::remove_file(&d.config.api_socket);
    tracing::info!(
        "stopping; programs stay attached and keep steering with the last configuration"
    );
    Ok(())
}

/// Removes the socket, and its directory if that is now empty (we created it).
fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

impl Daemon {
    /// Inputs -> desired state -> kernel.
    fn steer(&mut self) -> Result<ApplyReport, DataplaneError> {
        let desired = desired_state(&self.config, &self.node, &self.rollouts.shares());
        self.dp.apply(desired)
    }

    /// A guard tick (and, when due, an analysis) of every active rollout.
    fn rollout_tick(&mut self) {
        let active = self.rollouts.active();
        if active.is_empty() {
            return;
        }
        match self.dp.samples_of(&active) {
            Ok(samples) => {
                let outcome = self.rollouts.tick(&samples);
                self.carry_out(outcome);
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "reading counters for the rollouts failed")
            }
        }
    }

    /// Writes what the controller decided into the kernel, then persists its state. A
    /// decision the kernel refuses fails those rollouts (they can no longer do what they say).
    fn carry_out(&mut self, outcome: Outcome) {
        let mut changed = outcome.changed;
        if !outcome.weights.is_empty()
            && let Err(e) = self.steer()
        {
            let why = format!(
                "writing the rollout's decision into the kernel failed: {}",
                crate::error_chain(&e)
            );
            for (service, _) in &outcome.weights {
                self.rollouts.failed(service, why.clone());
            }
            changed = true;
        }
        if changed {
            self.save();
        }
    }

    fn save(&self) {
        if let Err(e) = self.rollouts.save() {
            tracing::error!(error = %crate::error_chain(&e), "persisting the rollout state failed; a restart would resume from the last state written");
        }
    }

    /// `/metrics`: every service's counters and every rollout, or why they cannot be read.
    fn exposition(&self, windows: &ShareWindows) -> Result<String, String> {
        let samples = self.dp.samples().map_err(|e| {
            let reason = crate::error_chain(&e);
            tracing::warn!(error = %reason, "reading counters for /metrics failed");
            reason
        })?;
        metrics::encode(&samples, windows, &self.rollouts.statuses()).map_err(|e| {
            tracing::error!(error = %e, "encoding metrics failed");
            format!("encoding metrics failed: {e}")
        })
    }
}
