//! The rollout controller: per service, walk the canary share up step by step while the
//! evidence holds, take it back the moment it doesn't, and explain every decision.
//!
//! The daemon calls [`Controller::tick`] every [`TICK`] with fresh kernel counters. Each
//! tick runs the guard; each `interval` also runs an analysis of canary against stable over
//! the same window. The controller decides and records; the daemon writes the weights it
//! returns into the kernel and persists the state.

mod analysis;
mod evidence;
mod guard;
mod state;
mod stats;
mod status;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use analysis::{CheckResult, Verdict, fmt_duration};
pub use state::{Action, Decision, Phase, StateError};
pub use status::{RolloutStatus, VersionLive};

use analysis::{Window, analyse, overall};
use evidence::Evidence;
use guard::GuardWindow;
use sluice_common::PPM;
use state::{DECISIONS_KEPT, RolloutState};

use crate::{
    config::{Config, OnDeadline, Promotion, RolloutConfig, ServiceConfig, ppm_to_percent},
    dataplane::ServiceSample,
};

/// How often guards run (and counters are read for them).
pub const TICK: Duration = Duration::from_millis(250);
/// The live view (`sluice status`) shows rates over this long.
const LIVE: Duration = Duration::from_secs(3);

/// Both versions' cumulative counters at one moment (stable, canary).
type Reading = [Vec<u64>; 2];

#[derive(Clone)]
struct Rollout {
    config: RolloutConfig,
    http1: bool,
    /// Canary backends as configured, for the promotion hint.
    canary: Vec<String>,
    state: RolloutState,
    /// Start of the analysis window: when, and the counters then. `None` until the first
    /// tick of a step (and after a restart, so a window never spans the agent's absence).
    window: Option<(Instant, Reading)>,
    next_analysis: Option<Instant>,
    guard: GuardWindow,
    recent: VecDeque<(Instant, Reading)>,
    last_checks: Vec<CheckResult>,
}

/// What the daemon must do after a tick or a command.
#[derive(Debug, Default)]
pub struct Outcome {
    /// New canary shares to write now.
    pub weights: Vec<(String, u32)>,
    /// A promotion finished: apply the effective configuration (canary set becomes stable).
    pub reapply: bool,
    /// The state changed: persist it.
    pub changed: bool,
}

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
    state_path: PathBuf,
    rollouts: BTreeMap<String, Rollout>,
}

fn fingerprint(s: &ServiceConfig) -> String {
    let list = |v: &[crate::config::BackendConfig]| {
        let mut v: Vec<String> = v
            .iter()
            .map(|b| format!("{}*{}", b.address, b.weight))
            .collect();
        v.sort();
        v.join(",")
    };
    format!("stable={} canary={}", list(&s.stable), list(&s.canary))
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    /// Loads the persisted state and lines it up with `config`.
    pub fn load(config: &Config) -> Result<(Self, Outcome), StateError> {
        let file = state::load(&config.state_path)?;
        let mut c = Self {
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
        let now = unix_ms();
        for s in &config.services {
            let (Some(rc), false) = (&s.rollout, s.canary.is_empty()) else {
                continue;
            };
            let fp = fingerprint(s);
            match prior.remove(&s.name) {
                Some(mut r) if r.state.fingerprint == fp => {
                    let before = r.state.weight_ppm;
                    r.reconfigure(&s.name, rc, s);
                    if r.state.weight_ppm != before {
                        outcome.weights.push((s.name.clone(), r.state.weight_ppm));
                        outcome.changed = true;
                    }
                    self.rollouts.insert(s.name.clone(), r);
                }
                existing => {
                    let state = RolloutState {
                        fingerprint: fp,
                        phase: Phase::Initializing,
                        reason: String::new(),
                        step: 0,
                        weight_ppm: 0,
                        failed_checks: 0,
                        started_unix_ms: now,
                        step_started_unix_ms: now,
                        decisions: VecDeque::new(),
                        decision_counts: BTreeMap::new(),
                        at_gate: false,
                    };
                    let mut r = Rollout::new(state, rc, s);
                    let reason = if existing.is_some() {
                        "the canary backends changed: the analysis starts again at the first step"
                    } else {
                        "a new canary backend set"
                    };
                    r.decide(
                        &s.name,
                        Action::Start,
                        Phase::Initializing,
                        reason.into(),
                        Vec::new(),
                    );
                    self.rollouts.insert(s.name.clone(), r);
                    outcome.weights.push((s.name.clone(), 0));
                    outcome.changed = true;
                }
            }
        }
        outcome.changed |= !prior.is_empty();
        outcome
    }

    /// The configuration as the kernel should hold it: promoted canary sets are the stable
    /// set (and there is no canary left).
    pub fn effective(&self, config: &Config) -> Config {
        let mut c = config.clone();
        for s in &mut c.services {
            if self
                .rollouts
                .get(&s.name)
                .is_some_and(|r| r.state.phase == Phase::Succeeded)
            {
                s.stable = std::mem::take(&mut s.canary);
            }
        }
        c
    }

    /// The share each rolled-out service must have, whatever the configuration says.
    pub fn forced_weights(&self) -> HashMap<String, u32> {
        self.rollouts
            .iter()
            .map(|(n, r)| (n.clone(), r.state.weight_ppm))
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
    pub fn tick(&mut self, now: Instant, samples: &[ServiceSample]) -> Outcome {
        let mut outcome = Outcome::default();
        for s in samples {
            if let Some(r) = self.rollouts.get_mut(&s.name) {
                r.tick(&s.name, now, &s.versions, &mut outcome);
            }
        }
        outcome
    }

    /// The kernel refused a weight: the rollout cannot be carried out.
    pub fn failed(&mut self, service: &str, why: String) {
        if let Some(r) = self.rollouts.get_mut(service) {
            r.decide(service, Action::Error, Phase::Failed, why, Vec::new());
        }
    }

    pub fn promote(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let r = self.live_rollout(service)?;
        r.state.weight_ppm = PPM;
        r.state.at_gate = false;
        r.decide(
            service,
            Action::Promote,
            Phase::Promoting,
            "operator: sluice promote".into(),
            Vec::new(),
        );
        Ok(Outcome {
            weights: vec![(service.to_owned(), PPM)],
            reapply: false,
            changed: true,
        })
    }

    pub fn abort(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let r = self.live_rollout(service)?;
        r.roll_back(
            service,
            Action::Abort,
            "operator: sluice abort".into(),
            Vec::new(),
        );
        Ok(Outcome {
            weights: vec![(service.to_owned(), 0)],
            reapply: false,
            changed: true,
        })
    }

    pub fn pause(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let r = self.live_rollout(service)?;
        if r.state.phase == Phase::Paused {
            return Err(CommandError::AlreadyPaused(service.to_owned()));
        }
        r.window = None;
        r.decide(
            service,
            Action::Pause,
            Phase::Paused,
            "operator: sluice pause (the share stays; guards keep watching)".into(),
            Vec::new(),
        );
        Ok(Outcome {
            changed: true,
            ..Outcome::default()
        })
    }

    pub fn resume(&mut self, service: &str) -> Result<Outcome, CommandError> {
        let r = self.live_rollout(service)?;
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
        r.state.step_started_unix_ms = unix_ms();
        r.decide(
            service,
            Action::Resume,
            Phase::Progressing,
            "operator: sluice resume (a new analysis window starts)".into(),
            Vec::new(),
        );
        Ok(Outcome {
            changed: true,
            ..Outcome::default()
        })
    }

    fn live_rollout(&mut self, service: &str) -> Result<&mut Rollout, CommandError> {
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
        Ok(r)
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

impl Rollout {
    fn new(state: RolloutState, config: &RolloutConfig, service: &ServiceConfig) -> Self {
        Self {
            config: config.clone(),
            http1: service.http1,
            canary: service
                .canary
                .iter()
                .map(|b| b.address.to_string())
                .collect(),
            state,
            window: None,
            next_analysis: None,
            guard: GuardWindow::default(),
            recent: VecDeque::new(),
            last_checks: Vec::new(),
        }
    }

    /// New settings for the same canary set: the state and the window carry on. A rollout
    /// that is stepping takes its step's new share (a paused one keeps the share it holds).
    fn reconfigure(&mut self, name: &str, config: &RolloutConfig, service: &ServiceConfig) {
        self.config = config.clone();
        self.http1 = service.http1;
        self.state.step = self.state.step.min(config.steps_ppm.len() - 1);
        let share = config.steps_ppm[self.state.step];
        if matches!(self.state.phase, Phase::Progressing | Phase::Waiting)
            && self.state.weight_ppm != share
        {
            tracing::info!(
                service = name,
                step = self.state.step + 1,
                previous_percent = ppm_to_percent(self.state.weight_ppm),
                percent = ppm_to_percent(share),
                "the rollout's steps changed: the current step's new share applies"
            );
            self.state.weight_ppm = share;
        }
    }

    fn tick(&mut self, name: &str, now: Instant, reading: &Reading, out: &mut Outcome) {
        let totals = evidence::totals(&reading[1], self.http1);
        self.guard.record(now, totals.samples, totals.errors);
        self.recent.push_back((now, reading.clone()));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > LIVE)
        {
            self.recent.pop_front();
        }
        let phase = self.state.phase;
        if phase.is_final() {
            return;
        }
        // The guard first, in every phase that sends the canary traffic.
        if self.state.weight_ppm > 0
            && let Some(t) = self.guard.check(&self.config.guard)
        {
            let g = self.config.guard;
            let reason = format!(
                "guard: {} of the canary's last {} attempts failed (more than {} of {})",
                t.failures, t.attempts, g.max_failures, g.last
            );
            // The evidence in the shape of a check: failures counted against the bound, over
            // the last ticks that hold (about) `last` attempts.
            let evidence = CheckResult {
                check: "guard".into(),
                verdict: Verdict::Fail,
                value: Some(t.failures as f64),
                threshold: g.max_failures as f64,
                unit: "count".into(),
                samples: [0, t.attempts],
                detail: format!(
                    "{} failures (failed connects, resets, 5xx, unanswered requests) in the \
                     canary's last {} attempts",
                    t.failures, t.attempts
                ),
            };
            self.roll_back(name, Action::GuardRollback, reason, vec![evidence]);
            out.weights.push((name.to_owned(), 0));
            out.changed = true;
            return;
        }
        match phase {
            Phase::Initializing => {
                self.state.step = 0;
                self.enter_step(now, reading, 0);
                self.decide(
                    name,
                    Action::StepUp,
                    Phase::Progressing,
                    format!(
                        "step 1: canary share {}%",
                        ppm_to_percent(self.state.weight_ppm)
                    ),
                    Vec::new(),
                );
                out.weights.push((name.to_owned(), self.state.weight_ppm));
                out.changed = true;
            }
            Phase::Promoting => {
                self.state.weight_ppm = 0;
                self.decide(
                    name,
                    Action::Promoted,
                    Phase::Succeeded,
                    format!(
                        "promoted: {} is the stable set now; update the configuration to \
                         stable: [{}] and canary: [] to match",
                        self.canary.join(", "),
                        self.canary.join(", ")
                    ),
                    Vec::new(),
                );
                out.reapply = true;
                out.changed = true;
            }
            Phase::Progressing | Phase::Waiting => self.analyse_if_due(name, now, reading, out),
            Phase::Paused | Phase::Succeeded | Phase::RolledBack | Phase::Failed => {}
        }
    }

    fn enter_step(&mut self, now: Instant, reading: &Reading, step: usize) {
        self.state.step = step;
        self.state.weight_ppm = self.config.steps_ppm[step];
        self.state.step_started_unix_ms = unix_ms();
        self.window = Some((now, reading.clone()));
        self.next_analysis = Some(now + self.config.interval);
    }

    fn analyse_if_due(&mut self, name: &str, now: Instant, reading: &Reading, out: &mut Outcome) {
        let Some((_, start)) = &self.window else {
            // First tick of a resumed (or restarted) rollout: the window starts now.
            self.window = Some((now, reading.clone()));
            self.next_analysis = Some(now + self.config.interval);
            return;
        };
        if self.next_analysis.is_some_and(|t| now < t) {
            return;
        }
        let stable = Evidence::between(&start[0], &reading[0], self.http1);
        let canary = Evidence::between(&start[1], &reading[1], self.http1);
        let results = analyse(
            &self.config.checks,
            &Window {
                stable: &stable,
                canary: &canary,
                http1: self.http1,
                min_samples: self.config.min_samples,
            },
        );
        self.last_checks = results.clone();
        self.next_analysis = Some(now + self.config.interval);
        let steps = self.config.steps_ppm.len();
        let step = self.state.step;
        out.changed = true;
        match overall(&results) {
            analysis::Verdict::Pass if step + 1 < steps => {
                self.enter_step(now, reading, step + 1);
                let reason = format!(
                    "every check passed at step {}; step {} of {}: canary share {}%",
                    step + 1,
                    step + 2,
                    steps,
                    ppm_to_percent(self.state.weight_ppm)
                );
                self.decide(name, Action::StepUp, Phase::Progressing, reason, results);
                out.weights.push((name.to_owned(), self.state.weight_ppm));
            }
            analysis::Verdict::Pass => {
                self.window = None;
                if self.config.promotion == Promotion::Manual {
                    self.state.at_gate = true;
                    let reason = format!(
                        "every check passed at the last step ({} of {}); promotion waits for \
                         `sluice promote`",
                        step + 1,
                        steps
                    );
                    self.decide(name, Action::Gate, Phase::Paused, reason, results);
                } else {
                    self.state.weight_ppm = PPM;
                    let reason = format!(
                        "every check passed at the last step ({} of {}): all new connections \
                         go to the canary",
                        step + 1,
                        steps
                    );
                    self.decide(name, Action::Promote, Phase::Promoting, reason, results);
                    out.weights.push((name.to_owned(), PPM));
                }
            }
            analysis::Verdict::Fail => {
                self.state.failed_checks += 1;
                let failed: Vec<&str> = results
                    .iter()
                    .filter(|r| r.verdict == analysis::Verdict::Fail)
                    .map(|r| r.check.as_str())
                    .collect();
                let reason = format!(
                    "failed: {} ({} of {} failed analyses allowed)",
                    failed.join(", "),
                    self.state.failed_checks,
                    self.config.failure_threshold
                );
                if self.state.failed_checks >= self.config.failure_threshold {
                    self.roll_back(name, Action::Rollback, reason, results);
                    out.weights.push((name.to_owned(), 0));
                } else {
                    self.window = Some((now, reading.clone()));
                    self.decide(
                        name,
                        Action::CheckFailed,
                        Phase::Progressing,
                        reason,
                        results,
                    );
                }
            }
            analysis::Verdict::Inconclusive => {
                let waited = unix_ms().saturating_sub(self.state.step_started_unix_ms);
                let why: Vec<String> = results
                    .iter()
                    .filter(|r| r.verdict == analysis::Verdict::Inconclusive)
                    .map(|r| format!("{}: {}", r.check, r.detail))
                    .collect();
                if Duration::from_millis(waited) >= self.config.deadline {
                    let reason = format!(
                        "no conclusive evidence within the deadline ({:?}): {}",
                        self.config.deadline,
                        why.join("; ")
                    );
                    match self.config.on_deadline {
                        OnDeadline::Rollback => {
                            self.roll_back(name, Action::Deadline, reason, results);
                            out.weights.push((name.to_owned(), 0));
                        }
                        OnDeadline::Pause => {
                            self.window = None;
                            self.decide(name, Action::Deadline, Phase::Paused, reason, results);
                        }
                    }
                } else {
                    let reason = format!("waiting for evidence: {}", why.join("; "));
                    self.decide(name, Action::Wait, Phase::Waiting, reason, results);
                }
            }
        }
    }

    fn roll_back(&mut self, name: &str, action: Action, reason: String, checks: Vec<CheckResult>) {
        self.state.weight_ppm = 0;
        self.window = None;
        self.decide(name, action, Phase::RolledBack, reason, checks);
    }

    /// Records a decision: phase, ring of recent decisions, counts, and a structured log line
    /// carrying the evidence.
    fn decide(
        &mut self,
        name: &str,
        action: Action,
        phase: Phase,
        reason: String,
        checks: Vec<CheckResult>,
    ) {
        let evidence = serde_json::to_string(&checks).unwrap_or_default();
        let level_warn = matches!(
            action,
            Action::Rollback | Action::GuardRollback | Action::Deadline | Action::Error
        );
        let step = if phase == Phase::Initializing {
            0
        } else {
            self.state.step + 1
        };
        let weight_percent = ppm_to_percent(self.state.weight_ppm);
        if level_warn {
            tracing::warn!(service = name, action = action.name(), phase = phase.name(), step, weight_percent, reason = %reason, evidence = %evidence, "rollout decision");
        } else if action != Action::Wait || self.state.phase != Phase::Waiting {
            tracing::info!(service = name, action = action.name(), phase = phase.name(), step, weight_percent, reason = %reason, evidence = %evidence, "rollout decision");
        }
        *self
            .state
            .decision_counts
            .entry(action.name().to_owned())
            .or_default() += 1;
        let d = Decision {
            at_unix_ms: unix_ms(),
            action,
            phase,
            step,
            weight_percent,
            reason: reason.clone(),
            checks,
        };
        // A run of waits at one step is one entry: keep the ring for decisions that matter.
        let repeat_wait = action == Action::Wait
            && self
                .state
                .decisions
                .back()
                .is_some_and(|last| last.action == Action::Wait && last.step == step);
        if repeat_wait {
            self.state.decisions.pop_back();
        }
        self.state.decisions.push_back(d);
        while self.state.decisions.len() > DECISIONS_KEPT {
            self.state.decisions.pop_front();
        }
        self.state.phase = phase;
        self.state.reason = reason;
    }
}

#[cfg(test)]
mod tests;
