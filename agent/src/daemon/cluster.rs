//! The daemon in cluster mode: what the kernel steers follows the rollouts as etcd holds
//! them; this node's guard may lower its own share at once; the leader's analysis moves the
//! rollouts by conditioned writes.
//!
//! The controller holds this node's working copy of every rollout. Only a state etcd has
//! taken reaches the kernel (`confirmed`), so a node that loses etcd keeps its last shares
//! and can never raise them, while its guard still lowers them (`lowered`).

use std::collections::{BTreeMap, BTreeSet};

use super::Daemon;

mod tick;
use crate::{
    api::{Request, Response},
    cluster::{After, Cluster, Event, Stored, Tally, WriteError},
    config::{ClusterConfig, Nodes},
    desired::{RolloutShare, RolloutShares},
    view::{ClusterHealth, Phase},
};

pub(super) struct ClusterSide {
    pub handle: Cluster,
    pub connected: bool,
    pub leader: Option<String>,
    pub leads: bool,
    /// Rollouts as etcd last said (kept through an outage: fail static).
    pub confirmed: BTreeMap<String, Stored>,
    /// Services whose canary this node's guard cut, with the start of the rollout it cut:
    /// 0 here until the cluster's state has the rollback.
    pub lowered: BTreeMap<String, u64>,
    /// Services with a write in flight: not ticked until it answers.
    pub pending: BTreeSet<String>,
    /// The leader's sums of every node's evidence, per service (new with each term).
    pub tallies: BTreeMap<String, Tally>,
    /// When this node lost etcd (unix ms), while it has.
    pub disconnected_since: Option<u64>,
}

impl ClusterSide {
    pub fn new(handle: Cluster) -> Self {
        Self {
            handle,
            connected: false,
            leader: None,
            leads: false,
            confirmed: BTreeMap::new(),
            lowered: BTreeMap::new(),
            pending: BTreeSet::new(),
            tallies: BTreeMap::new(),
            disconnected_since: Some(crate::rollout::unix_ms()),
        }
    }

    pub fn health(&self) -> ClusterHealth {
        ClusterHealth {
            connected: self.connected,
            leader: self.leads,
        }
    }
}

/// Whether a step's share goes to this node's callers.
fn here(nodes: Option<&Nodes>, labels: &BTreeMap<String, String>) -> bool {
    nodes.is_none_or(|n| n.matches(labels))
}

impl Daemon {
    fn cluster_mut(&mut self) -> Option<&mut ClusterSide> {
        self.cluster.as_mut()
    }

    /// The shares the kernel must hold in cluster mode: the cluster's state of each rollout
    /// about the canary set this node is configured with; 0 where this node is outside the
    /// step's wave or its guard cut the canary; 0 for a rollout etcd has not taken yet.
    pub(super) fn cluster_shares(&self, c: &ClusterSide) -> RolloutShares {
        let mut out = RolloutShares::new();
        for s in &self.config.services {
            let Some(mine) = self.rollouts.state_of(&s.name) else {
                continue;
            };
            let mut share = RolloutShare {
                canary_ppm: 0,
                promoted: false,
            };
            if let Some(stored) = c.confirmed.get(&s.name)
                && stored.state.fingerprint == mine.fingerprint
            {
                let st = &stored.state;
                let promoting = matches!(st.phase, Phase::Promoting | Phase::Succeeded);
                let wave = s.rollout.as_ref().and_then(|r| r.step_nodes.get(st.step));
                if promoting || here(wave, &c.handle.labels) {
                    share.canary_ppm = st.weight_ppm;
                }
                share.promoted = st.phase == Phase::Succeeded;
            }
            if c.lowered.contains_key(&s.name) {
                share.canary_ppm = 0;
            }
            out.insert(s.name.clone(), share);
        }
        out
    }

    /// One event of the session.
    pub(super) fn cluster_event(&mut self, e: Event) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match e {
            Event::Connected(up) => {
                c.connected = up;
                c.disconnected_since = (!up).then(crate::rollout::unix_ms);
                self.health.cluster = Some(c.health());
            }
            Event::Leader { name, me } => {
                if me && !c.leads {
                    // A new term: sums start from what the nodes publish from now on, and
                    // every rollout resumes at the step etcd holds, with a fresh window.
                    c.tallies.clear();
                    let confirmed: Vec<_> = c
                        .confirmed
                        .iter()
                        .map(|(n, s)| (n.clone(), s.state.clone()))
                        .collect();
                    for (service, state) in confirmed {
                        self.rollouts.adopt(&service, &state);
                        self.rollouts.restart_window(&service);
                    }
                }
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                c.leads = me;
                c.leader = name;
                self.health.cluster = Some(c.health());
            }
            Event::Rollouts { changes, snapshot } => self.rollouts_changed(changes, snapshot),
            Event::Written {
                service,
                result,
                after,
            } => self.written(&service, result, after),
        }
    }

    fn rollouts_changed(&mut self, changes: Vec<(String, Option<Stored>)>, snapshot: bool) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if snapshot {
            let named: BTreeSet<&String> = changes.iter().map(|(n, _)| n).collect();
            c.confirmed.retain(|n, _| named.contains(n));
        }
        for (service, stored) in changes {
            match stored {
                Some(s) => {
                    if c.confirmed
                        .get(&service)
                        .is_some_and(|old| old.revision > s.revision)
                    {
                        continue;
                    }
                    if c.lowered.get(&service).is_some_and(|started| {
                        *started != s.state.started_unix_ms || s.state.phase.is_final()
                    }) {
                        c.lowered.remove(&service);
                    }
                    if !c.pending.contains(&service) {
                        self.rollouts.adopt(&service, &s.state);
                    }
                    c.confirmed.insert(service, s);
                }
                None => {
                    c.confirmed.remove(&service);
                }
            }
        }
        self.retry_lowered();
        self.follow();
    }

    /// Guard rollbacks not yet in etcd (it was unreachable, or another write won): written
    /// again on the cluster's current state.
    fn retry_lowered(&mut self) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let due: Vec<(String, Stored)> = c
            .lowered
            .keys()
            .filter(|s| !c.pending.contains(*s))
            .filter_map(|s| c.confirmed.get(s).map(|st| (s.clone(), st.clone())))
            .filter(|(_, st)| !st.state.phase.is_final())
            .collect();
        for (service, stored) in due {
            self.rollouts.adopt(&service, &stored.state);
            let node = self
                .cluster
                .as_ref()
                .map(|c| c.handle.node.clone())
                .unwrap_or_default();
            if self.rollouts.guard_rollback_again(&service, &node) {
                self.write(&service, stored.revision, false, After::Guard);
            }
        }
    }

    /// At start: waits (a bounded time) for the session's first read of the rollouts, so
    /// the first apply already has the cluster's shares.
    pub(super) async fn first_cluster_state(
        &mut self,
        events: &mut tokio::sync::mpsc::Receiver<Event>,
    ) {
        let until = tokio::time::Instant::now() + 2 * crate::cluster::REQUEST_TIMEOUT;
        loop {
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(Some(e)) => {
                    let snapshot = matches!(e, Event::Rollouts { snapshot: true, .. });
                    self.cluster_event(e);
                    if snapshot {
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(
                        "etcd did not answer at start: steering with the last rollout state this node saw, until it does"
                    );
                    return;
                }
            }
        }
    }

    /// Applies the shares as they now stand, and keeps the node's last view on disk.
    pub(super) fn follow(&mut self) {
        if let Err(e) = self.steer() {
            tracing::error!(error = %crate::error_chain(&e), "applying the cluster's rollout state failed; the kernel keeps the previous shares");
        }
        self.save();
    }

    /// Sends this node's copy of a rollout to etcd, conditioned on `based_on`.
    fn write(&mut self, service: &str, based_on: i64, as_leader: bool, after: After) {
        let Some(state) = self.rollouts.state_of(service).cloned() else {
            return;
        };
        let Some(c) = self.cluster_mut() else {
            return;
        };
        c.pending.insert(service.to_owned());
        if let Err((why, after)) = c.handle.write(service, state, based_on, as_leader, after) {
            self.written(service, Err(why), after);
        }
    }

    fn written(&mut self, service: &str, result: Result<i64, WriteError>, after: After) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.pending.remove(service);
        match &result {
            Ok(revision) => {
                if let Some(state) = self.rollouts.state_of(service).cloned() {
                    let by = c.handle.node.clone();
                    let newer = c
                        .confirmed
                        .get(service)
                        .is_none_or(|s| s.revision < *revision);
                    if newer {
                        c.confirmed.insert(
                            service.to_owned(),
                            Stored {
                                state,
                                revision: *revision,
                                by,
                            },
                        );
                    }
                }
                if matches!(after, After::Guard) {
                    tracing::info!(service, "the guard's rollback is the cluster's now");
                }
                self.follow();
            }
            Err(e) => {
                let back = c.confirmed.get(service).map(|s| s.state.clone());
                let guard = matches!(after, After::Guard);
                if guard {
                    tracing::warn!(service, error = %e, "the guard's rollback is not in etcd yet: this node's canary stays at 0, and the rollback is written again when etcd answers");
                } else if !matches!(after, After::Command(_)) {
                    tracing::warn!(service, error = %e, "a rollout decision was not written; the cluster's state stands");
                }
                // A lost guard write keeps this node's copy rolled back (it is retried on
                // the cluster's next state); anything else takes the cluster's state again.
                if !guard && let Some(state) = back {
                    self.rollouts.adopt(service, &state);
                }
            }
        }
        if let After::Command(reply) = after {
            let response = match result {
                Ok(_) => match self.rollouts.status(service) {
                    Some(status) => Response::Rollout {
                        service: service.to_owned(),
                        status: Box::new(status),
                    },
                    None => Response::Error {
                        message: format!("{service:?} has no rollout"),
                    },
                },
                Err(e) => Response::Error {
                    message: format!("the command did not take effect: {e}"),
                },
            };
            let _ = reply.send(response);
        }
    }

    /// Cluster mode: an operator's command acts on the cluster's rollout, written to etcd
    /// before it is answered. Other requests are answered as on a single host.
    pub(super) fn cluster_command(
        &mut self,
        request: Request,
        reply: tokio::sync::oneshot::Sender<Response>,
    ) -> Option<(Request, tokio::sync::oneshot::Sender<Response>)> {
        let Request::Rollout { service, action } = request else {
            return Some((request, reply));
        };
        let Some(c) = self.cluster.as_ref() else {
            return Some((Request::Rollout { service, action }, reply));
        };
        let refuse = |message: String| Response::Error { message };
        if c.pending.contains(&service) {
            let _ = reply.send(refuse(format!(
                "a write of {service:?}'s rollout is in flight; try again"
            )));
            return None;
        }
        let Some(stored) = c.confirmed.get(&service).cloned() else {
            let _ = reply.send(refuse(format!(
                "etcd holds no rollout of {service:?} yet (is this node connected? `sluice status` says)"
            )));
            return None;
        };
        if !self.rollouts.adopt(&service, &stored.state)
            && self.rollouts.state_of(&service) != Some(&stored.state)
        {
            let _ = reply.send(refuse(format!(
                "the cluster's rollout of {service:?} is about another canary set than this \
                 node's configuration"
            )));
            return None;
        }
        let result = self.command(&service, action);
        match result {
            Ok(_) => self.write(&service, stored.revision, false, After::Command(reply)),
            Err(e) => {
                let _ = reply.send(refuse(crate::error_chain(&e)));
            }
        }
        None
    }
}

/// What `sluice status` says of the cluster.
pub(super) fn status(c: &ClusterSide, config: &ClusterConfig) -> crate::api::ClusterStatus {
    crate::api::ClusterStatus {
        node: c.handle.node.clone(),
        labels: c.handle.labels.clone(),
        endpoints: config.endpoints.clone(),
        connected: c.connected,
        disconnected_since_unix_ms: c.disconnected_since,
        leader: c.leader.clone(),
        leads: c.leads,
    }
}
