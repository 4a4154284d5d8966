//! One service's rollout: the state machine that walks its canary share up step by step,
//! guards it between analyses, and takes it back when the evidence says so.

use std::{collections::VecDeque, time::Instant};

use sluice_common::PPM;

use super::{
    Outcome, Reading,
    analysis::{Window, analyse, overall},
    clock::Moment,
    evidence::{Counts, Evidence},
    guard::GuardWindow,
    sequential::Sequential,
    state::RolloutState,
};
use crate::{
    config::{OnDeadline, Promotion, RolloutConfig, ServiceConfig, ppm_to_percent},
    view::{Action, Check, CheckResult, Phase, Unit, Verdict},
};

/// The live view (`sluice status`) shows rates over this long.
const LIVE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone)]
pub(super) struct Rollout {
    pub config: RolloutConfig,
    pub http1: bool,
    /// Canary backends as configured, for the promotion hint.
    pub canary: Vec<String>,
    pub state: RolloutState,
    /// Start of the analysis window: when, and the counters then. `None` until the first
    /// tick of a step (and after a restart, so a window never spans the agent's absence).
    pub window: Option<(Instant, Reading)>,
    pub next_analysis: Option<Instant>,
    pub guard: GuardWindow,
    /// The failing-early test of the window that started at this instant.
    pub sequential: Option<(Instant, Sequential)>,
    pub recent: VecDeque<(Instant, Reading)>,
    pub last_checks: Vec<CheckResult>,
    /// Cluster mode: the node whose guard is being run, for the decision's reason.
    guard_node: Option<String>,
}

impl Rollout {
    pub fn new(state: RolloutState, config: &RolloutConfig, service: &ServiceConfig) -> Self {
        Self {
            config: config.clone(),
            http1: service.http1,
            canary: service
                .canary
                .iter()
                .map(|b| b.target.to_string())
                .collect(),
            state,
            window: None,
            next_analysis: None,
            guard: GuardWindow::default(),
            sequential: None,
            recent: VecDeque::new(),
            last_checks: Vec::new(),
            guard_node: None,
        }
    }

    /// New settings for the same canary set: the state and the window carry on. A rollout
    /// that is stepping takes its step's new share (a paused one keeps the share it holds).
    pub fn reconfigure(&mut self, name: &str, config: &RolloutConfig, service: &ServiceConfig) {
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

    /// One tick. `guarding`: run the guard on this reading too (a single host; in cluster
    /// mode the guard runs on the node's own counters, [`Rollout::guard_only`]).
    pub fn tick(
        &mut self,
        name: &str,
        now: Moment,
        reading: &Reading,
        guarding: bool,
        out: &mut Outcome,
    ) {
        if guarding {
            let totals = Counts::of(&reading[1], self.http1);
            self.guard.record(now.at, totals.samples, totals.errors);
        }
        self.recent.push_back((now.at, reading.clone()));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.at.duration_since(*at) > LIVE)
        {
            self.recent.pop_front();
        }
        let phase = self.state.phase;
        if phase.is_final() {
            return;
        }
        // The guard first, in every phase that sends the canary traffic.
        if guarding && self.state.weight_ppm > 0 && self.guard_trips(name, now) {
            out.steer(name, 0);
            return;
        }
        match phase {
            Phase::Initializing => {
                self.enter_step(now, reading, 0);
                let reason = format!(
                    "step 1: canary share {}%",
                    ppm_to_percent(self.state.weight_ppm)
                );
                self.decide(
                    name,
                    now,
                    Action::StepUp,
                    Phase::Progressing,
                    reason,
                    Vec::new(),
                );
                out.steer(name, self.state.weight_ppm);
            }
            Phase::Promoting => {
                self.state.weight_ppm = 0;
                let reason = format!(
                    "promoted: {} is the stable set now; update the configuration to \
                     stable: [{}] and canary: [] to match",
                    self.canary.join(", "),
                    self.canary.join(", ")
                );
                self.decide(
                    name,
                    now,
                    Action::Promoted,
                    Phase::Succeeded,
                    reason,
                    Vec::new(),
                );
                out.steer(name, 0);
            }
            Phase::Progressing | Phase::Waiting => {
                if self.fails_fast(name, now, reading) {
                    out.steer(name, 0);
                    return;
                }
                self.analyse_if_due(name, now, reading, out);
            }
            Phase::Paused | Phase::Succeeded | Phase::RolledBack | Phase::Failed => {}
        }
    }

    /// The guard alone, on this node's own counters (cluster mode): whether it tripped (and
    /// rolled the canary back).
    pub fn guard_only(&mut self, name: &str, now: Moment, local: &Reading, node: &str) -> bool {
        let totals = Counts::of(&local[1], self.http1);
        self.guard.record(now.at, totals.samples, totals.errors);
        if self.state.phase.is_final() || self.state.weight_ppm == 0 {
            return false;
        }
        self.guard_node = Some(node.to_owned());
        let tripped = self.guard_trips(name, now);
        self.guard_node = None;
        tripped
    }

    /// Runs the guard; a trip rolls the canary back.
    fn guard_trips(&mut self, name: &str, now: Moment) -> bool {
        let Some(t) = self.guard.check(&self.config.guard) else {
            return false;
        };
        let g = self.config.guard;
        let on = match &self.guard_node {
            Some(node) => format!(" on node {node}"),
            None => String::new(),
        };
        let reason = format!(
            "guard{on}: {} of the canary's last {} attempts failed (more than {} of {})",
            t.failures, t.attempts, g.max_failures, g.last
        );
        // The evidence in the shape of a check: failures counted against the bound, over the
        // last ticks that hold (about) `last` attempts.
        let evidence = CheckResult {
            check: Check::Guard,
            verdict: Verdict::Fail,
            value: Some(t.failures as f64),
            threshold: g.max_failures as f64,
            unit: Unit::Count,
            samples: [0, t.attempts],
            detail: format!(
                "{} failures (failed connects, resets, 5xx, unanswered requests) in the \
                 canary's last {} attempts",
                t.failures, t.attempts
            ),
        };
        self.roll_back(name, now, Action::GuardRollback, reason, vec![evidence]);
        true
    }

    pub fn enter_step(&mut self, now: Moment, reading: &Reading, step: usize) {
        self.state.step = step;
        self.state.weight_ppm = self.config.steps_ppm[step];
        self.state.step_started_unix_ms = now.unix_ms;
        self.window = Some((now.at, reading.clone()));
        self.next_analysis = Some(now.at + self.config.interval);
    }

    fn analyse_if_due(&mut self, name: &str, now: Moment, reading: &Reading, out: &mut Outcome) {
        let Some((_, start)) = &self.window else {
            // First tick of a resumed (or restarted) rollout: the window starts now.
            self.window = Some((now.at, reading.clone()));
            self.next_analysis = Some(now.at + self.config.interval);
            return;
        };
        if self.next_analysis.is_some_and(|t| now.at < t) {
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
        self.next_analysis = Some(now.at + self.config.interval);
        out.changed = true;
        match overall(&results) {
            Verdict::Pass => self.passed(name, now, reading, results, out),
            Verdict::Fail => self.failed(name, now, reading, results, out),
            Verdict::Inconclusive => self.inconclusive(name, now, results, out),
        }
    }

    fn passed(
        &mut self,
        name: &str,
        now: Moment,
        reading: &Reading,
        results: Vec<CheckResult>,
        out: &mut Outcome,
    ) {
        // A passing analysis ends a run of failures: only failures in a row roll back (and,
        // if set, `max_failed_analyses` in all).
        self.state.failed_in_a_row = 0;
        let steps = self.config.steps_ppm.len();
        let step = self.state.step;
        if step + 1 < steps {
            self.enter_step(now, reading, step + 1);
            let reason = format!(
                "every check passed at step {}; step {} of {}: canary share {}%",
                step + 1,
                step + 2,
                steps,
                ppm_to_percent(self.state.weight_ppm)
            );
            self.decide(
                name,
                now,
                Action::StepUp,
                Phase::Progressing,
                reason,
                results,
            );
            out.steer(name, self.state.weight_ppm);
            return;
        }
        self.window = None;
        if self.config.promotion == Promotion::Manual {
            self.state.at_gate = true;
            let reason = format!(
                "every check passed at the last step ({} of {}); promotion waits for \
                 `sluice promote`",
                step + 1,
                steps
            );
            self.decide(name, now, Action::Gate, Phase::Paused, reason, results);
        } else {
            self.state.weight_ppm = PPM;
            let reason = format!(
                "every check passed at the last step ({} of {}): all new connections go to \
                 the canary",
                step + 1,
                steps
            );
            self.decide(
                name,
                now,
                Action::Promote,
                Phase::Promoting,
                reason,
                results,
            );
            out.steer(name, PPM);
        }
    }

    fn failed(
        &mut self,
        name: &str,
        now: Moment,
        reading: &Reading,
        results: Vec<CheckResult>,
        out: &mut Outcome,
    ) {
        self.state.failed_checks += 1;
        self.state.failed_in_a_row += 1;
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .map(|r| r.check.name())
            .collect();
        let in_all = match self.config.max_failed_analyses {
            Some(max) => format!("; {} of {max} in all", self.state.failed_checks),
            None => String::new(),
        };
        let reason = format!(
            "failed: {} ({} of {} failed analyses in a row{in_all})",
            failed.join(", "),
            self.state.failed_in_a_row,
            self.config.failure_threshold
        );
        let too_many = self.state.failed_in_a_row >= self.config.failure_threshold
            || self
                .config
                .max_failed_analyses
                .is_some_and(|max| self.state.failed_checks >= max);
        if too_many {
            self.roll_back(name, now, Action::Rollback, reason, results);
            out.steer(name, 0);
        } else {
            self.window = Some((now.at, reading.clone()));
            let phase = Phase::Progressing;
            self.decide(name, now, Action::CheckFailed, phase, reason, results);
        }
    }

    fn inconclusive(
        &mut self,
        name: &str,
        now: Moment,
        results: Vec<CheckResult>,
        out: &mut Outcome,
    ) {
        let waited = now.unix_ms.saturating_sub(self.state.step_started_unix_ms);
        let why: Vec<String> = results
            .iter()
            .filter(|r| r.verdict == Verdict::Inconclusive)
            .map(|r| format!("{}: {}", r.check.name(), r.detail))
            .collect();
        if std::time::Duration::from_millis(waited) < self.config.deadline {
            let reason = format!("waiting for evidence: {}", why.join("; "));
            self.decide(name, now, Action::Wait, Phase::Waiting, reason, results);
            return;
        }
        let reason = format!(
            "no conclusive evidence within the deadline ({:?}): {}",
            self.config.deadline,
            why.join("; ")
        );
        // Pausing is for a canary nothing speaks against. One whose last conclusive
        // analysis failed, with none passing since, is rolled back: the blip that
        // `failure_threshold` forgives would have been followed by a pass by now.
        if self.state.failed_in_a_row > 0 {
            let reason = format!(
                "{reason}; its last conclusive analysis failed ({} of {} in a row) and none \
                 has passed since",
                self.state.failed_in_a_row, self.config.failure_threshold
            );
            self.roll_back(name, now, Action::Deadline, reason, results);
            out.steer(name, 0);
            return;
        }
        match self.config.on_deadline {
            OnDeadline::Rollback => {
                self.roll_back(name, now, Action::Deadline, reason, results);
                out.steer(name, 0);
            }
            OnDeadline::Pause => {
                self.window = None;
                self.decide(name, now, Action::Deadline, Phase::Paused, reason, results);
            }
        }
    }

    pub fn roll_back(
        &mut self,
        name: &str,
        now: Moment,
        action: Action,
        reason: String,
        checks: Vec<CheckResult>,
    ) {
        self.state.weight_ppm = 0;
        self.window = None;
        self.decide(name, now, action, Phase::RolledBack, reason, checks);
    }
}
