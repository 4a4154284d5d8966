//! The decision log: every decision changes the phase, lands in the rollout's ring of recent
//! decisions and its counts, and is logged with the evidence behind it.

use super::{clock::Moment, machine::Rollout, state::DECISIONS_KEPT};
use crate::{
    config::ppm_to_percent,
    view::{Action, CheckResult, Decision, Phase},
};

impl Rollout {
    /// Records a decision: phase, ring of recent decisions, counts, and a structured log line
    /// carrying the evidence.
    pub(super) fn decide(
        &mut self,
        name: &str,
        now: Moment,
        action: Action,
        phase: Phase,
        reason: String,
        checks: Vec<CheckResult>,
    ) {
        let step = if phase == Phase::Initializing {
            0
        } else {
            self.state.step + 1
        };
        let weight_percent = ppm_to_percent(self.state.weight_ppm);
        // A run of waits is logged once, when it begins.
        let repeat_wait = action == Action::Wait && self.state.phase == Phase::Waiting;
        if action.is_alarm() || !repeat_wait {
            let evidence = serde_json::to_string(&checks).unwrap_or_default();
            if action.is_alarm() {
                tracing::warn!(service = name, action = action.name(), phase = phase.name(), step, weight_percent, reason = %reason, evidence = %evidence, "rollout decision");
            } else {
                tracing::info!(service = name, action = action.name(), phase = phase.name(), step, weight_percent, reason = %reason, evidence = %evidence, "rollout decision");
            }
        }
        *self.state.decision_counts.entry(action).or_default() += 1;
        let mut decision = Decision {
            at_unix_ms: now.unix_ms,
            action,
            phase,
            step,
            weight_percent,
            reason: reason.clone(),
            checks,
            repeats: 0,
            drained: None,
        };
        // A run of waits at one step is one entry: keep the ring for decisions that matter.
        let ring = &mut self.state.decisions;
        if action == Action::Wait
            && ring
                .back()
                .is_some_and(|last| last.action == Action::Wait && last.step == step)
            && let Some(last) = ring.pop_back()
        {
            decision.repeats = last.repeats + 1;
        }
        ring.push_back(decision);
        while ring.len() > DECISIONS_KEPT {
            ring.pop_front();
        }
        self.state.phase = phase;
        self.state.reason = reason;
    }
}
