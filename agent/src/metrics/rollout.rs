//! The rollout controller's series.

use super::families::{Families, pair};
use crate::view::{Action, Phase, RolloutStatus, Verdict};

/// The rollout controller: phase (one series per phase, 1 for the current one), step,
/// failed analyses, decisions by action, and each check's last value and threshold.
pub(super) fn rollout_series(f: &mut Families, service: &str, r: &RolloutStatus) {
    for phase in Phase::ALL {
        f.gauge(
            "sluice_rollout_phase",
            "Rollout phase: 1 for the phase the rollout is in, 0 for the others.",
            vec![pair("service", service), pair("phase", phase.name())],
            if r.phase == phase { 1.0 } else { 0.0 },
        );
    }
    let one = || vec![pair("service", service)];
    f.gauge(
        "sluice_rollout_step",
        "Current rollout step, 1-based (0 before the first).",
        one(),
        r.step as f64,
    );
    f.gauge(
        "sluice_rollout_steps",
        "Steps of the rollout.",
        one(),
        r.steps_percent.len() as f64,
    );
    f.gauge(
        "sluice_rollout_weight_ratio",
        "Canary share the rollout has set (0 to 1).",
        one(),
        r.weight_percent / 100.0,
    );
    f.gauge(
        "sluice_rollout_failed_analyses",
        "Failed analyses in this rollout, in all; max_failed_analyses of them (if set) roll it back.",
        one(),
        f64::from(r.failed_checks),
    );
    f.gauge(
        "sluice_rollout_failed_analyses_in_a_row",
        "Failed analyses since the last that passed; failure_threshold of them roll the rollout back.",
        one(),
        f64::from(r.failed_in_a_row),
    );
    for action in Action::ALL {
        f.counter(
            "sluice_rollout_decisions_total",
            "Rollout decisions by action (step_up, wait, check_failed, rollback, guard_rollback, ...).",
            vec![pair("service", service), pair("action", action.name())],
            r.decision_counts.get(&action).copied().unwrap_or(0),
        );
    }
    for c in &r.last_checks {
        let labels = || vec![pair("service", service), pair("check", c.check.name())];
        if let Some(v) = c.value {
            f.gauge(
                "sluice_rollout_check_value",
                "Last analysis: the check's measured value (ratio, seconds or factor).",
                labels(),
                v,
            );
        }
        f.gauge(
            "sluice_rollout_check_threshold",
            "Last analysis: the check's threshold, in the value's unit.",
            labels(),
            c.threshold,
        );
        f.gauge(
            "sluice_rollout_check_passed",
            "Last analysis: 1 pass, 0 fail, -1 inconclusive.",
            labels(),
            match c.verdict {
                Verdict::Pass => 1.0,
                Verdict::Fail => 0.0,
                Verdict::Inconclusive => -1.0,
            },
        );
    }
}
