//! The control socket's requests, answered by the loop that owns the maps.

use tokio::sync::oneshot;

use super::Daemon;
use crate::{
    api::{Request, Response, RolloutAction},
    cluster::NodeBreakdown,
    config::{percent_to_ppm_checked, ppm_to_percent},
    dataplane::detach_pins,
    rollout::CommandError,
    view::ClusterNodes,
};

fn error(e: &dyn std::error::Error) -> Response {
    Response::Error {
        message: crate::error_chain(e),
    }
}

impl Daemon {
    /// Requests answered later, in cluster mode: commands (once etcd has them) and the
    /// status (with every node's counts, read from etcd). The rest come back to be answered
    /// now.
    pub(super) fn deferred(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Response>,
    ) -> Option<(Request, oneshot::Sender<Response>)> {
        let Some(c) = &self.cluster else {
            return Some((request, reply));
        };
        match request {
            Request::Rollout { .. } => self.cluster_command(request, reply),
            Request::Status => {
                let mut response = self.status();
                let http1: std::collections::BTreeMap<String, bool> = self
                    .config
                    .services
                    .iter()
                    .map(|s| (s.name.clone(), s.http1))
                    .collect();
                let reads: Vec<_> = match &response {
                    Response::Status { services, .. } => services
                        .iter()
                        .filter(|s| s.rollout.is_some())
                        .map(|s| (s.name.clone(), c.handle.read_evidence(&s.name)))
                        .collect(),
                    _ => Vec::new(),
                };
                tokio::spawn(async move {
                    let mut found = std::collections::BTreeMap::new();
                    for (name, rx) in reads {
                        let read = tokio::time::timeout(crate::cluster::REQUEST_TIMEOUT, rx).await;
                        let nodes = match read {
                            Ok(Ok(Ok(list))) => {
                                let h = http1.get(&name).copied().unwrap_or(false);
                                let mut nodes: Vec<_> = list
                                    .iter()
                                    .filter_map(|e| NodeBreakdown::of(e, h))
                                    .collect();
                                nodes.sort_by(|a, b| a.node.cmp(&b.node));
                                ClusterNodes { nodes, error: None }
                            }
                            Ok(Ok(Err(e))) => ClusterNodes {
                                nodes: Vec::new(),
                                error: Some(e),
                            },
                            _ => ClusterNodes {
                                nodes: Vec::new(),
                                error: Some("etcd did not answer in time".into()),
                            },
                        };
                        found.insert(name, nodes);
                    }
                    if let Response::Status { services, .. } = &mut response {
                        for s in services {
                            s.cluster_nodes = found.remove(&s.name);
                        }
                    }
                    let _ = reply.send(response);
                });
                None
            }
            other => Some((other, reply)),
        }
    }

    pub(super) fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => self.status(),
            Request::SetWeight { service, percent } => self.set_weight(service, percent),
            Request::Rollout { service, action } => self.rollout(service, action),
            Request::Detach { pin_path } => self.detach(&pin_path),
        }
    }

    fn status(&self) -> Response {
        match self.dp.status() {
            Ok(mut services) => {
                let mut names = self.discovery.statuses(&self.config);
                for s in &mut services {
                    s.rollout = self.rollouts.status(&s.name).map(Box::new);
                    s.names = names.remove(&s.name).unwrap_or_default();
                }
                Response::Status {
                    version: env!("CARGO_PKG_VERSION").into(),
                    cgroup: self.dp.cgroup().display().to_string(),
                    pin_dir: self.dp.pin_dir().display().to_string(),
                    config: self.config_path.display().to_string(),
                    services,
                    cluster: match (&self.cluster, &self.config.cluster) {
                        (Some(c), Some(cc)) => Some(super::cluster::status(c, cc)),
                        _ => None,
                    },
                }
            }
            Err(e) => error(&e),
        }
    }

    /// `sluice weight`: an operator's runtime share, written straight to the service's
    /// entries (and kept by later applies until the configured share changes).
    fn set_weight(&mut self, service: String, percent: f64) -> Response {
        if let Some(phase) = self.rollouts.has_rollout(&service) {
            return Response::Error {
                message: format!(
                    "{service:?} is run by its rollout ({}): use sluice promote, abort, \
                     pause or resume",
                    phase.name()
                ),
            };
        }
        let ppm = match percent_to_ppm_checked(percent) {
            Ok(p) => p,
            Err(e) => return error(&e),
        };
        match self.dp.set_weight(&service, ppm) {
            Ok(previous) => {
                self.tell_drainer();
                tracing::info!(
                    service,
                    previous_percent = ppm_to_percent(previous),
                    percent,
                    "canary share set"
                );
                Response::Weight {
                    service,
                    previous_percent: ppm_to_percent(previous),
                    percent: ppm_to_percent(ppm),
                }
            }
            Err(e) => error(&e),
        }
    }

    fn rollout(&mut self, service: String, action: RolloutAction) -> Response {
        let result = self.command(&service, action);
        match result {
            Ok(outcome) => {
                self.carry_out(outcome);
                match self.rollouts.status(&service) {
                    Some(status) => Response::Rollout {
                        service,
                        status: Box::new(status),
                    },
                    None => error(&CommandError::NoRollout(service)),
                }
            }
            Err(e) => error(&e),
        }
    }

    /// An operator's command on this node's copy of a rollout.
    pub(super) fn command(
        &mut self,
        service: &str,
        action: RolloutAction,
    ) -> Result<crate::rollout::Outcome, CommandError> {
        match action {
            RolloutAction::Promote => self.rollouts.promote(service),
            RolloutAction::Abort => self.rollouts.abort(service),
            RolloutAction::Pause => self.rollouts.pause(service),
            RolloutAction::Resume => self.rollouts.resume(service),
        }
    }

    fn detach(&mut self, asked: &std::path::Path) -> Response {
        let normal = |p: &std::path::Path| p.components().collect::<std::path::PathBuf>();
        if normal(asked) != normal(&self.config.pin_path) {
            return Response::Error {
                message: format!(
                    "this daemon's pins are under {}, not {}: it detaches only its own \
                     (nothing was removed)",
                    self.config.pin_path.display(),
                    asked.display()
                ),
            };
        }
        match detach_pins(&self.config.pin_path) {
            Ok(removed) => {
                // Rollout state describes the steering just removed: it goes with it.
                let _ = std::fs::remove_file(&self.config.state_path);
                tracing::info!(
                    removed = removed.len(),
                    "detached: every program, link and pin removed"
                );
                Response::Detached {
                    removed: removed.len(),
                }
            }
            Err(e) => error(&e),
        }
    }
}
