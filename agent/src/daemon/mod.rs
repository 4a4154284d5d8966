//! `sluice run`: load, apply, attach, then serve the API and reload on SIGHUP or when the
//! configuration file changes, until SIGTERM/SIGINT (steering stays) or `sluice detach`.
//!
//! Every change reaches the kernel the same way: the inputs (configuration, this node's
//! cgroups, the rollouts' decisions) go through [`crate::desired::desired_state`], and
//! [`Dataplane::apply`] makes the maps hold the result, all or nothing.

mod cluster;
mod control;
mod privileges;
mod reload;
mod watch;

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
    api::{self, Response},
    cluster::Cluster,
    config::{Config, ConfigError, Node},
    dataplane::{ApplyReport, CgroupChange, Dataplane, DataplaneError},
    desired::desired_state,
    discovery::{Discovery, DiscoveryError, Found},
    drain::{DrainReport, Drainer, Update},
    metrics::{self, Scrape, ShareWindows},
    rollout::{self, Controller, Outcome, StateError, SystemClock},
    view::AgentHealth,
};
use reload::Reloads;
use watch::{Seen, Watch};

/// How often the configuration file is re-read to notice changes. ConfigMap updates swap a
/// symlink: re-reading the path (rather than watching one inode) sees through that.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// How often counters are sampled for the one-minute share windows. Each sample reads two
/// counters of every service (four for HTTP ones): every 5 s keeps that small on nodes with
/// thousands of services, and a minute still holds 12 samples.
const SHARE_SAMPLE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("sluice run needs root (with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    NotRoot,
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
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
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("installing a signal handler")]
    Signal(#[source] std::io::Error),
}

/// Everything the loop owns: the inputs of the desired state and the kernel it goes to.
struct Daemon {
    config_path: PathBuf,
    config: Config,
    node: Node,
    rollouts: Controller,
    discovery: Discovery,
    /// The last discovered sets did not reach the kernel.
    discovery_unapplied: bool,
    dp: Dataplane,
    /// Ends steered connections (rollbacks, maximum ages); started once the maps are pinned.
    drainer: Option<Drainer>,
    health: AgentHealth,
    /// Cluster mode: the session with etcd and what it said (`None`: this node alone).
    cluster: Option<cluster::ClusterSide>,
}

pub async fn run(config_path: PathBuf, config: Config, node: Node) -> Result<(), DaemonError> {
    if crate::sys::effective_uid() != 0 {
        return Err(DaemonError::NotRoot);
    }
    privileges::check()?;
    privileges::warn_without_setns();
    let mut watch = Watch::new(&config_path);
    // Both servers are bound before the kernel is touched: a daemon that cannot serve
    // refuses to start having changed nothing (and one already running is not disturbed).
    let (calls_tx, mut calls) = mpsc::channel(16);
    api::serve(&config.api_socket, calls_tx)?;
    let (scrape_tx, mut scrapes) = mpsc::channel(16);
    let metrics_address = metrics::serve(config.metrics_address, scrape_tx).await?;
    let (rollouts, loaded) = Controller::load(&config, Arc::new(SystemClock))?;
    // Names are looked up before the kernel is touched: a refusal changes nothing.
    let (discovery, mut found) = Discovery::start(&config).await?;
    // Cluster mode: the cluster's rollouts are read before the kernel is touched, so a node
    // that starts (or restarts) mid-rollout steers its first connection with the current
    // share. An etcd that does not answer in time leaves the last state this node saw.
    let (cluster_side, mut cluster_events) = match &config.cluster {
        Some(cc) => {
            let (handle, events) = Cluster::start(cc)?;
            (Some(cluster::ClusterSide::new(handle)), Some(events))
        }
        None => (None, None),
    };
    let dp = Dataplane::load(&config, &node)?;
    let mut d = Daemon {
        config_path,
        config,
        node,
        rollouts,
        discovery,
        discovery_unapplied: false,
        dp,
        drainer: None,
        health: AgentHealth::default(),
        cluster: cluster_side,
    };
    if let Some(events) = cluster_events.as_mut() {
        d.health.cluster = d.cluster.as_ref().map(cluster::ClusterSide::health);
        d.first_cluster_state(events).await;
    }
    let report = d.steer()?;
    if loaded.changed {
        d.save();
    }
    let adopted = d.dp.attach()?;
    let (drainer, mut drained) = Drainer::start(
        d.dp.pin_dir(),
        d.dp.cgroup(),
        Update::new(&d.config, d.dp.applied()),
    )
    .map_err(|source| DataplaneError::Map {
        name: "the drainer's maps",
        source,
    })?;
    d.drainer = Some(drainer);
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
    let mut reloads = Reloads::new(d.config_path.clone());
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut watch_tick = tokio::time::interval(WATCH_PERIOD);
    let mut share_sample = tokio::time::interval(SHARE_SAMPLE_PERIOD);
    let mut rollout_tick = tokio::time::interval(rollout::TICK);
    rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                watch.take(&d.config_path);
                reloads.start("SIGHUP", d.discovery.known());
            }
            // Parsed off the loop: no file, however large or nested, holds up the guard.
            Some((parsed, why)) = reloads.done() => {
                d.reload(parsed, why);
                reloads.finished(d.discovery.known());
            }
            Some(first) = found.recv() => d.discovered(first, &mut found),
            Some(report) = drained.recv() => d.drained(report),
            Some(e) = next_event(&mut cluster_events) => d.cluster_event(e),
            _ = share_sample.tick() => match d.dp.share_counts() {
                Ok(counts) => windows.record(&counts, std::time::Instant::now()),
                Err(e) => tracing::warn!(error = %crate::error_chain(&e), "reading counters failed"),
            },
            _ = rollout_tick.tick() => d.rollout_tick(),
            _ = watch_tick.tick() => {
                if watch.poll(Seen::read(&d.config_path), std::time::Instant::now()) {
                    reloads.start("file changed", d.discovery.known());
                }
                d.check_cgroup();
            }
            Some(scrape) = scrapes.recv() => match scrape {
                Scrape::Metrics(reply) => {
                    let _ = reply.send(d.exposition(&windows));
                }
                Scrape::Ready(reply) => {
                    let _ = reply.send(d.ready());
                }
            },
            Some(call) = calls.recv() => {
                let (request, reply) = match d.deferred(call.request, call.reply) {
                    Some(now) => now,
                    None => continue,
                };
                let call = api::ApiCall { request, reply, written: call.written };
                let response = d.handle(call.request);
                // Only a detach that happened ends the daemon; a refused one changes nothing.
                let detached = matches!(response, Response::Detached { .. });
                let _ = call.reply.send(response);
                if detached {
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

/// The next event of the cluster session (never, on a single host).
async fn next_event(
    events: &mut Option<mpsc::Receiver<crate::cluster::Event>>,
) -> Option<crate::cluster::Event> {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
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
        let shares = match &self.cluster {
            Some(c) => self.cluster_shares(c),
            None => self.rollouts.shares(),
        };
        let desired = desired_state(
            &self.config,
            &self.node,
            &shares,
            &self.discovery.resolved(),
        );
        let report = self.dp.apply(desired)?;
        self.tell_drainer();
        Ok(report)
    }

    /// Wakes the drainer with the services as the kernel now holds them.
    fn tell_drainer(&self) {
        if let Some(drainer) = &self.drainer {
            drainer.update(Update::new(&self.config, self.dp.applied()));
        }
    }

    /// A finished drain: its numbers go with the rollback decision that caused it.
    fn drained(&mut self, report: DrainReport) {
        if self.rollouts.drained(&report) {
            self.save();
        }
    }

    /// Followers' lookups: this one and any already waiting, then one apply if a set
    /// changed. Sets the kernel refuses stay unapplied (it keeps the previous ones) and are
    /// tried again with the next lookup.
    fn discovered(
        &mut self,
        first: (crate::discovery::NameKey, crate::discovery::Lookup),
        found: &mut Found,
    ) {
        let mut changed = self.discovery.record(&first.0, &first.1);
        while let Ok((key, lookup)) = found.try_recv() {
            changed |= self.discovery.record(&key, &lookup);
        }
        if !(changed || self.discovery_unapplied) {
            return;
        }
        match self.steer() {
            Ok(_) => self.discovery_unapplied = false,
            Err(e) => {
                if !self.discovery_unapplied {
                    tracing::error!(error = %crate::error_chain(&e), "applying the discovered backends failed; the kernel keeps the previous sets, and the next lookup tries again");
                }
                self.discovery_unapplied = true;
            }
        }
    }

    /// A guard tick (and, when due, an analysis) of every active rollout.
    fn rollout_tick(&mut self) {
        let mut active = self.rollouts.active();
        if let Some(c) = &self.cluster {
            // Finished rollouts too: their evidence is published a while longer.
            for name in c.confirmed.keys() {
                if !active.contains(name) {
                    active.push(name.clone());
                }
            }
        }
        if active.is_empty() {
            return;
        }
        match self.dp.samples_of(&active) {
            Ok(samples) if self.cluster.is_some() => self.cluster_tick(&samples),
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

    fn save(&mut self) {
        // In cluster mode the file keeps the last state etcd confirmed: what a restart
        // during an outage steers with.
        let saved = match &self.cluster {
            Some(c) => {
                let states = c
                    .confirmed
                    .iter()
                    .map(|(n, s)| (n.clone(), s.state.clone()))
                    .collect();
                rollout::save_states(self.rollouts.state_path(), &states)
            }
            None => self.rollouts.save(),
        };
        self.health.saved(saved.is_ok());
        if let Err(e) = saved {
            tracing::error!(error = %crate::error_chain(&e), "persisting the rollout state failed; a restart would resume from the last state written");
        }
    }

    /// `/ready`: running, steering, and the cgroup it steers is there.
    fn ready(&self) -> Result<(), String> {
        match &self.health.cgroup_missing {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// Notices the attach cgroup deleted (and says so once), and attaches to it again when it
    /// is made again.
    fn check_cgroup(&mut self) {
        let path = self.dp.cgroup().display().to_string();
        match self.dp.check_cgroup() {
            Ok(()) => {}
            Err(CgroupChange::Missing) => {
                if self.health.cgroup_missing.is_none() {
                    tracing::error!(cgroup = %path, "the attach cgroup was deleted: nothing below it is steered until it is made again");
                    self.health.cgroup_missing =
                        Some(format!("the attach cgroup {path} was deleted"));
                }
            }
            Err(CgroupChange::Reattached) => {
                tracing::info!(cgroup = %path, "the attach cgroup was made again: the programs are attached to it");
                self.health.cgroup_missing = None;
            }
            Err(CgroupChange::ReattachFailed(why)) => {
                let reason = format!("attaching to the recreated cgroup {path} failed: {why}");
                if self.health.cgroup_missing.as_deref() != Some(reason.as_str()) {
                    tracing::error!(cgroup = %path, error = %why, "attaching to the recreated cgroup failed; retrying every second");
                }
                self.health.cgroup_missing = Some(reason);
            }
        }
    }

    /// `/metrics`: every service's counters and every rollout, or why they cannot be read.
    fn exposition(&self, windows: &ShareWindows) -> Result<String, String> {
        let samples = self.dp.samples().map_err(|e| {
            let reason = crate::error_chain(&e);
            tracing::warn!(error = %reason, "reading counters for /metrics failed");
            reason
        })?;
        let discovery = self.discovery.series(&self.config);
        metrics::encode(
            &samples,
            windows,
            &self.rollouts.statuses(),
            &discovery,
            &self.health,
            &self
                .drainer
                .as_ref()
                .map(Drainer::stats)
                .unwrap_or_default(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "encoding metrics failed");
            format!("encoding metrics failed: {e}")
        })
    }
}
