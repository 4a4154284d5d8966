//! The controller across services: lines rollouts up with the configuration, runs each one's
//! tick, carries out operator commands, and says what it decided as [`RolloutShares`].

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
};

use sluice_common::PPM;

use super::{
    Outcome, Reading,
    clock::{Clock, Moment},
    machine::Rollout,
    state::{self, RolloutState, StateError},
    status,
};
use crate::{
    config::{BackendConfig, Config, ServiceConfig},
    desired::{RolloutShare, RolloutShares},
    view::{Action, Phase, RolloutStatus, ServiceSample},
};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("service {0:?} has no rollout (no `rollout:` in its configuration, or no canary)")]
    NoRollout(String),
    #[error(
        "the rollout of {service:?} has finished ({phase}); change its canary backends to start another"
    )]
    Finished {
        service: String,
        phase: &'static str,
    },
    #[error("the rollout of {service:?} is {phase}, not Paused")]
    NotPaused {
        service: String,
        phase: &'static str,
    },
    #[error("the rollout of {0:?} is already paused")]
    AlreadyPaused(String),
    #[error(
        "the rollout of {0:?} waits at its promotion gate: `sluice promote` or `sluice abort` it"
    )]
    AtGate(String),
}

/// Clone is how a reload stays all or nothing: reconcile a copy, apply it, keep it only if
/// the kernel took it.
#[derive(Clone)]
pub struct Controller {
    clock: Arc<dyn Clock>,
    state_path: PathBuf,
    pub(super) rollouts: BTreeMap<String, Rollout>,
}

/// Which backend sets a rollout is about: a change of either starts a new rollout.
fn fingerprint(s: &ServiceConfig) -> String {
    let list = |v: &[BackendConfig]| {
        let mut v: Vec<String> = v
            .iter()
            .map(|b| format!("{}*{}", b.target, b.weight))
            .collect();
        v.sort();
        v.join(",")
    };
    format!("stable={} canary={}", list(&s.stable), list(&s.canary))
}

impl Controller {
    /// Loads the persisted state and lines it up with `config`.
    pub fn load(config: &Config, clock: Arc<dyn Clock>) -> Result<(Self, Outcome), StateError> {
        let file = state::load(&config.state_path)?;
        let mut c = Self {
            clock,
            state_path: config.state_path.clone(),
            rollouts: BTreeMap::new(),
        };
        for s in &config.services {
            if let (Some(rc), Some(st)) = (&s.rollout, file.rollouts.get(&s.name)) {
                c.rollouts
                    .insert(s.name.clone(), Rollout::new(st.clone(), rc, s));
            }
        }
        let mut outcome = c.reconcile(config);
        // Rollouts of services no longer configured were dropped: the file must say so.
        outcome.changed |= file.rollouts.len() != c.rollouts.len();
        Ok((c, outcome))
    }

    /// Lines the rollouts up with a (new) configuration: a service with a rollout and a
    /// canary set it has not seen starts one at Initializing (share 0); a known set keeps its
    /// state and takes the new settings; services without a rollout or canary drop theirs.
    pub fn reconcile(&mut self, config: &Config) -> Outcome {
        let mut outcome = Outcome::default();
        let mut prior = std::mem::take(&mut self.rollouts);
        let now = self.clock.now();
        for s in &config.services {
            let (Some(rc), false) = (&s.rollout, s.canary.is_empty()) else {
                continue;
            };
            let fp = fingerprint(s);
            let rollout = match prior.remove(&s.name) {
                Some(mut r) if r.state.fingerprint == fp => {
                    let before = r.state.weight_ppm;
                    r.reconfigure(&s.name, rc, s);
                    if r.state.weight_ppm != before {
                        outcome.steer(&s.name, r.state.weight_ppm);
                    }
                    r
                }
                existing => {
                    let reason = if existing.is_some() {
                        "the canary backends changed: the analysis starts again at the first step"
                    } else {
                        "a new canary backend set"
                    };
                    let mut r = Rollout::new(fresh_state(fp, now), rc, s);
                    let phase = Phase::Initializing;
                    r.decide(
                        &s.name,
                        now,
                        Action::Start,
                        phase,
                        reason.into(),
                        Vec::new(),
                    );
                    outcome.steer(&s.name, 0);
                    r
                }
            };
            self.rollouts.insert(s.name.clone(), rollout);
        }
        outcome.changed |= !prior.is_empty();
        outcome
    }

    /// What the rollouts decided, for the desired state: every rollout's share, and which
    /// canary sets are promoted (the stable set now).
    pub fn shares(&self) -> RolloutShares {
        self.rollouts
            .iter()
            .map(|(n, r)| {
                let share = RolloutShare {
                    canary_ppm: r.state.weight_ppm,
                    promoted: r.state.phase == Phase::Succeeded,
                };
                (n.clone(), share)
            })
            .collect()
    }

    /// Services whose rollouts still need counters.
    pub fn active(&self) -> Vec<String> {
        self.rollouts
            .iter()
            .filter(|(_, r)| !r.state.phase.is_final())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn has_rollout(&self, service: &str) -> Option<Phase> {
        self.rollouts.get(service).map(|r| r.state.phase)
    }

    pub fn save(&self) -> Result<(), StateError> {
        let states: BTreeMap<String, RolloutState> = self
            .rollouts
            .iter()
            .map(|(n, r)| (n.clone(), r.state.clone()))
            .collect();
        state::save(&self.state_path, &states)
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// One controller step with fresh counters of the active services.
    pub fn tick(&mut self, samples: &[ServiceSample]) -> Outcome {
        let now = self.clock.now();
        let mut outcome = Outcome::default();
        for s in samples {
            if let Some(r) = self.rollouts.get_mut(&s.name) {
                r.tick(&s.name, now, &s.versions, true, &mut outcome);
            }
        }
        outcome
    }

    /// Cluster mode, every node: the guards alone, on this node's own counters. The services
    /// whose guard tripped (their copy is rolled back; the cluster's is not yet).
    pub fn guard_tick(&mut self, samples: &[ServiceSample], node: &str) -> Vec<String> {
        let now = self.clock.now();
        samples
            .iter()
            .filter(|s| {
                self.rollouts
                    .get_mut(&s.name)
                    .is_some_and(|r| r.guard_only(&s.name, now, &s.versions, node))
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// Cluster mode, the leader: one tick of a rollout's analysis on the cluster's counters
    /// (the guards run on each node). Whether its state changed.
    pub fn analysis_tick(&mut self, service: &str, cluster: &Reading) -> bool {
        let now = self.clock.now();
        let Some(r) = self.rollouts.get_mut(service) else {
            return false;
        };
        let before = r.state.clone();
        let mut outcome = Outcome::default();
        r.tick(service, now, cluster, false, &mut outcome);
        r.state != before
    }

    /// Cluster mode: the cluster's state of a rollout replaces this copy when it differs (a
    /// decision made elsewhere, or a write of ours that lost). The analysis window starts
    /// again; the guard's recent counts stay, they are this node's. Only a state about the
    /// canary set this node is configured with is taken. Whether it was.
    pub fn adopt(&mut self, service: &str, state: &RolloutState) -> bool {
        let Some(r) = self.rollouts.get_mut(service) else {
            return false;
        };
        if r.state.fingerprint != state.fingerprint || r.state == *state {
            return false;
        }
        r.state = state.clone();
        r.window = None;
        r.next_analysis = None;
        r.sequential = None;
        true
    }

    /// Cluster mode: this node's guard tripped but its rollback did not reach etcd; the
    /// cluster's state (adopted since) is rolled back again. Whether there was one to.
    pub fn guard_rollback_again(&mut self, service: &str, node: &str) -> bool {
        let now = self.clock.now();
        let Some(r) = self.rollouts.get_mut(service) else {
            return false;
        };
        if r.state.phase.is_final() {
            return false;
        }
        let reason = format!(
            "guard on node {node}: it tripped while its rollback could not be written (etcd \
             unreachable, or another write came first); written now"
        );
        r.roll_back(service, now, Action::GuardRollback, reason, Vec::new());
        true
    }

    /// Cluster mode: a new analysis window from the next tick (the nodes it judges changed).
    pub fn restart_window(&mut self, service: &str) {
        if let Some(r) = self.rollouts.get_mut(service) {
            r.window = None;
            r.sequential = None;
        }
    }

    /// This node's copy of a rollout's state.
    pub fn state_of(&self, service: &str) -> Option<&RolloutState> {
        self.rollouts.get(service).map(|r| &r.state)
    }

    /// The nodes the rollout's current step goes to.
    pub fn step_nodes(&self, service: &str) -> Option<&crate::config::Nodes> {
        let r = self.rollouts.get(service)?;
        r.config.step_nodes.get(r.state.step)
    }

    /// The kernel refused what a rollout decided: the rollout cannot be carried out.
    pub fn failed(&mut self, service: &str, why: String) {
        let now = self.clock.now();
        if let Some(r) = self.rollouts.get_mut(service) {
            r.decide(service, now, Action::Error, Phase::Failed, why, Vec::new());
        }
    }

    /// A drain of the service's canary connections finished: its numbers join the rollback
    /// decision behind it (the latest, if it rolled back and has none yet). Whether the
    /// state changed.
    pub fn drained(&mut self, report: &crate::drain::DrainReport) -> bool {
        let Some(r) = self.rollouts.get_mut(&report.service) else {
            return false;
        };
        let Some(last) = r.state.decisions.back_mut() else {
            return false;
        };
        if last.phase != Phase::RolledBack || last.drained.is_some() {
            return false;
        }
        last.drained = Some(crate::view::Drained {
            idle: report.idle,
            at_grace: report.at_grace,
            in_flight: report.in_flight,
            seconds: report.seconds,
            unreachable_namespaces: report.unreachable_namespaces as u64,
        });
        true
    }

    pub fn promote(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let (r, now) = self.live_rollout(service)?;
        r.state.weight_ppm = PPM;
        r.state.at_gate = false;
        let reason = "operator: sluice promote".into();
        r.decide(
            service,
            now,
            Action::Promote,
            Phase::Promoting,
            reason,
            Vec::new(),
        );
        Ok(Outcome::steering(service, PPM))
    }

    pub fn abort(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let (r, now) = self.live_rollout(service)?;
        let reason = "operator: sluice abort".into();
        r.roll_back(service, now, Action::Abort, reason, Vec::new());
        Ok(Outcome::steering(service, 0))
    }

    pub fn pause(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let (r, now) = self.live_rollout(service)?;
        if r.state.phase == Phase::Paused {
            return Err(CommandError::AlreadyPaused(service.to_owned()));
        }
        r.window = None;
        let reason = "operator: sluice pause (the share stays; guards keep watching)".into();
        r.decide(
            service,
            now,
            Action::Pause,
            Phase::Paused,
            reason,
            Vec::new(),
        );
        Ok(Outcome::persist())
    }

    pub fn resume(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let (r, now) = self.live_rollout(service)?;
        if r.state.phase != Phase::Paused {
            return Err(CommandError::NotPaused {
                service: service.to_owned(),
                phase: r.state.phase.name(),
            });
        }
        if r.state.at_gate {
            return Err(CommandError::AtGate(service.to_owned()));
        }
        r.window = None;
        r.state.step_started_unix_ms = now.unix_ms;
        let reason = "operator: sluice resume (a new analysis window starts)".into();
        r.decide(
            service,
            now,
            Action::Resume,
            Phase::Progressing,
            reason,
            Vec::new(),
        );
        Ok(Outcome::persist())
    }

    fn live_rollout(&mut self, service: &str) -> Result<(&mut Rollout, Moment), CommandError> {
        let now = self.clock.now();
        let r = self
            .rollouts
            .get_mut(service)
            .ok_or_else(|| CommandError::NoRollout(service.to_owned()))?;
        if r.state.phase.is_final() {
            return Err(CommandError::Finished {
                service: service.to_owned(),
                phase: r.state.phase.name(),
            });
        }
        Ok((r, now))
    }

    pub fn status(&self, service: &str) -> Option<RolloutStatus> {
        let r = self.rollouts.get(service)?;
        Some(status::status(r))
    }

    pub fn statuses(&self) -> Vec<(String, RolloutStatus)> {
        self.rollouts
            .iter()
            .map(|(n, r)| (n.clone(), status::status(r)))
            .collect()
    }
}

/// The state of a rollout that has just begun: share 0, before its first step.
fn fresh_state(fingerprint: String, now: Moment) -> RolloutState {
    RolloutState {
        fingerprint,
        phase: Phase::Initializing,
        reason: String::new(),
        step: 0,
        weight_ppm: 0,
        failed_checks: 0,
        failed_in_a_row: 0,
        started_unix_ms: now.unix_ms,
        step_started_unix_ms: now.unix_ms,
        decisions: VecDeque::new(),
        decision_counts: BTreeMap::new(),
        at_gate: false,
    }
}
