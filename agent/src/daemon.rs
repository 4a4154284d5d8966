//! `sluice run`: load, apply, attach, then serve the API and reload on SIGHUP or when the
//! configuration file changes, until SIGTERM/SIGINT (steering stays) or `sluice detach`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    api::{self, Request, Response, RolloutAction},
    config::{self, Config, ConfigError},
    dataplane::{Dataplane, DataplaneError, detach_pins},
    metrics::{self, Scrape, ShareWindows},
    rollout::{self, Controller, Outcome, StateError},
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

pub async fn run(config_path: PathBuf, config: Config) -> Result<(), DaemonError> {
    if crate::sys::effective_uid() != 0 {
        return Err(DaemonError::NotRoot);
    }
    let mut loaded_text = std::fs::read(&config_path).unwrap_or_default();
    let (calls_tx, mut calls) = mpsc::channel(16);
    // Refuse to start beside a running daemon before touching the kernel.
    api::serve(&config.api_socket, calls_tx)?;
    let (mut rollouts, loaded) = Controller::load(&config)?;
    let mut dp = Dataplane::load(&config)?;
    let report = dp.apply(&rollouts.effective(&config), &rollouts.forced_weights())?;
    if loaded.changed {
        save(&rollouts);
    }
    let adopted = dp.attach()?;
    let (scrape_tx, mut scrapes) = mpsc::channel(16);
    let metrics_address = metrics::serve(config.metrics_address, scrape_tx).await?;
    let mut windows = ShareWindows::default();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.display(),
        cgroup = %dp.cgroup().display(),
        pin_dir = %dp.pin_dir().display(),
        api_socket = %config.api_socket.display(),
        metrics = %metrics_address,
        services = config.services.len(),
        added = report.added,
        adopted_links = adopted,
        "sluice started"
    );
    let mut config = config;
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
                loaded_text = std::fs::read(&config_path).unwrap_or_default();
                reload(&mut dp, &mut config, &mut rollouts, &config_path, "SIGHUP");
            }
            _ = share_sample.tick() => match dp.share_counts() {
                Ok(counts) => windows.record(&counts, std::time::Instant::now()),
                Err(e) => tracing::warn!(error = %crate::error_chain(&e), "reading counters failed"),
            },
            _ = rollout_tick.tick() => {
                let active = rollouts.active();
                if !active.is_empty() {
                    match dp.samples_of(&active) {
                        Ok(samples) => {
                            let outcome = rollouts.tick(std::time::Instant::now(), &samples);
                            carry_out(&mut dp, &config, &mut rollouts, outcome);
                        }
                        Err(e) => tracing::warn!(error = %crate::error_chain(&e), "reading counters for the rollouts failed"),
                    }
                }
            }
            _ = watch.tick() => {
                let text = std::fs::read(&config_path).unwrap_or_default();
                if text != loaded_text {
                    loaded_text = text;
                    reload(&mut dp, &mut config, &mut rollouts, &config_path, "file changed");
                }
            }
            Some(scrape) = scrapes.recv() => match scrape {
                Scrape::Metrics(reply) => {
                    let text = match dp.samples() {
                        Ok(samples) => metrics::encode(&samples, &windows, &rollouts.statuses()),
                        Err(e) => {
                            tracing::warn!(error = %crate::error_chain(&e), "reading counters failed");
                            String::new()
                        }
                    };
                    let _ = reply.send(text);
                }
                Scrape::Ready(reply) => {
                    let _ = reply.send(());
                }
            },
            Some(call) = calls.recv() => {
                let detach = call.request == Request::Detach;
                let response = handle(&mut dp, &config, &mut rollouts, &config_path, call.request);
                let _ = call.reply.send(response);
                if detach {
                    let _ = tokio::time::timeout(Duration::from_secs(2), call.written).await;
                    remove_socket(&config.api_socket);
                    return Ok(());
                }
            }
        }
    }
    let _ = std::fs::remove_file(&config.api_socket);
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

/// Writes what the controller decided into the kernel, then persists its state. A weight the
/// kernel refuses fails that rollout (it can no longer do what it says).
fn carry_out(dp: &mut Dataplane, config: &Config, rollouts: &mut Controller, outcome: Outcome) {
    let mut changed = outcome.changed;
    for (service, ppm) in outcome.weights {
        if let Err(e) = dp.set_weight(&service, ppm) {
            let why = format!(
                "writing the canary share failed: {}",
                crate::error_chain(&e)
            );
            rollouts.failed(&service, why);
            changed = true;
        }
    }
    if outcome.reapply {
        let effective = rollouts.effective(config);
        match dp.apply(&effective, &rollouts.forced_weights()) {
            Ok(_) => tracing::info!("promoted canary sets are the stable sets in the kernel now"),
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "installing the promoted backend sets failed; all new connections still go to the canary backends")
            }
        }
    }
    if changed {
        save(rollouts);
    }
}

fn save(rollouts: &Controller) {
    if let Err(e) = rollouts.save() {
        tracing::error!(error = %crate::error_chain(&e), "persisting the rollout state failed; a restart would resume from the last state written");
    }
}

/// Re-reads and applies the configuration. Any error leaves the running one in force.
fn reload(
    dp: &mut Dataplane,
    current: &mut Config,
    rollouts: &mut Controller,
    path: &Path,
    why: &str,
) {
    let next = match config::parse(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(reason = why, error = %e, "configuration rejected; the previous one stays in force");
            return;
        }
    };
    for (key, changed) in [
        ("cgroup", next.cgroup != current.cgroup),
        ("pin_path", next.pin_path != current.pin_path),
        ("api_socket", next.api_socket != current.api_socket),
        (
            "metrics_address",
            next.metrics_address != current.metrics_address,
        ),
        ("signals", next.signals != current.signals),
        ("state_path", next.state_path != current.state_path),
        (
            "socket_tag_slots",
            next.socket_tag_slots != current.socket_tag_slots,
        ),
    ] {
        if changed {
            tracing::error!(
                reason = why,
                key,
                "cannot change on reload, restart the agent; the previous configuration stays in force"
            );
            return;
        }
    }
    // Reconcile a copy: if the kernel refuses the configuration, the rollouts stay as they were.
    let mut next_rollouts = rollouts.clone();
    let outcome = next_rollouts.reconcile(&next);
    match dp.apply(
        &next_rollouts.effective(&next),
        &next_rollouts.forced_weights(),
    ) {
        Ok(r) => {
            *rollouts = next_rollouts;
            if outcome.changed {
                save(rollouts);
            }
            tracing::info!(
                reason = why,
                added = r.added,
                changed = r.changed,
                unchanged = r.unchanged,
                removed_addresses = r.removed_vips,
                "configuration applied"
            );
            *current = next;
        }
        Err(e) => {
            tracing::error!(reason = why, error = %crate::error_chain(&e), "applying the configuration failed; nothing changed")
        }
    }
}

fn handle(
    dp: &mut Dataplane,
    config: &Config,
    rollouts: &mut Controller,
    config_path: &Path,
    request: Request,
) -> Response {
    let error = |e: &dyn std::error::Error| Response::Error {
        message: crate::error_chain(e),
    };
    match request {
        Request::Status => match dp.status() {
            Ok(mut services) => {
                for s in &mut services {
                    s.rollout = rollouts.status(&s.name).map(Box::new);
                }
                Response::Status {
                    version: env!("CARGO_PKG_VERSION").into(),
                    cgroup: dp.cgroup().display().to_string(),
                    pin_dir: dp.pin_dir().display().to_string(),
                    config: config_path.display().to_string(),
                    services,
                }
            }
            Err(e) => error(&e),
        },
        Request::SetWeight { service, percent } => {
            if let Some(phase) = rollouts.has_rollout(&service) {
                return Response::Error {
                    message: format!(
                        "{service:?} is run by its rollout ({}): use sluice promote, abort, \
                         pause or resume",
                        phase.name()
                    ),
                };
            }
            let ppm = match config::percent_to_ppm_checked(percent) {
                Ok(p) => p,
                Err(e) => return error(&e),
            };
            match dp.set_weight(&service, ppm) {
                Ok(previous) => {
                    tracing::info!(
                        service,
                        previous_percent = config::ppm_to_percent(previous),
                        percent,
                        "canary share set"
                    );
                    Response::Weight {
                        service,
                        previous_percent: config::ppm_to_percent(previous),
                        percent: config::ppm_to_percent(ppm),
                    }
                }
                Err(e) => error(&e),
            }
        }
        Request::Rollout { service, action } => {
            let result = match action {
                RolloutAction::Promote => rollouts.promote(&service),
                RolloutAction::Abort => rollouts.abort(&service),
                RolloutAction::Pause => rollouts.pause(&service),
                RolloutAction::Resume => rollouts.resume(&service),
            };
            match result {
                Ok(outcome) => {
                    carry_out(dp, config, rollouts, outcome);
                    match rollouts.status(&service) {
                        Some(status) => Response::Rollout {
                            service,
                            status: Box::new(status),
                        },
                        None => error(&rollout::CommandError::NoRollout(service)),
                    }
                }
                Err(e) => error(&e),
            }
        }
        Request::Detach => match detach_pins(&config.pin_path) {
            Ok(removed) => {
                // Rollout state describes the steering just removed: it goes with it.
                let _ = std::fs::remove_file(&config.state_path);
                tracing::info!(
                    removed = removed.len(),
                    "detached: every program, link and pin removed"
                );
                Response::Detached {
                    removed: removed.len(),
                }
            }
            Err(e) => error(&e),
        },
    }
}
