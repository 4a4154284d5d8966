//! Where a rollout stands and why: its phase, its decisions with the checks behind them, and
//! the live view `sluice status` shows.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Initializing,
    Progressing,
    /// Not enough evidence yet at this step: the analysis window grows.
    Waiting,
    Paused,
    Promoting,
    Succeeded,
    RolledBack,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Initializing,
        Phase::Progressing,
        Phase::Waiting,
        Phase::Paused,
        Phase::Promoting,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Progressing => "Progressing",
            Phase::Waiting => "Waiting",
            Phase::Paused => "Paused",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }

    /// Finished: nothing more happens until the canary set changes.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Failed)
    }
}

/// What a decision did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A rollout began (new canary set).
    Start,
    /// Every check passed: the next step.
    StepUp,
    /// Not enough evidence: keep the share, widen the window.
    Wait,
    /// A check failed, below the failure threshold: stay at this step.
    CheckFailed,
    /// Failed checks reached the threshold: share to 0.
    Rollback,
    /// The guard saw too many recent canary failures: share to 0 at once.
    GuardRollback,
    /// No conclusive evidence before the deadline.
    Deadline,
    /// The last step passed but promotion waits for an operator.
    Gate,
    Promote,
    Promoted,
    Pause,
    Resume,
    Abort,
    /// The kernel refused a write; the rollout cannot go on.
    Error,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::Start,
        Action::StepUp,
        Action::Wait,
        Action::CheckFailed,
        Action::Rollback,
        Action::GuardRollback,
        Action::Deadline,
        Action::Gate,
        Action::Promote,
        Action::Promoted,
        Action::Pause,
        Action::Resume,
        Action::Abort,
        Action::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::StepUp => "step_up",
            Action::Wait => "wait",
            Action::CheckFailed => "check_failed",
            Action::Rollback => "rollback",
            Action::GuardRollback => "guard_rollback",
            Action::Deadline => "deadline",
            Action::Gate => "gate",
            Action::Promote => "promote",
            Action::Promoted => "promoted",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Error => "error",
        }
    }

    /// Decisions that take the canary's share away or stop the rollout: logged as warnings.
    pub fn is_alarm(self) -> bool {
        matches!(
            self,
            Action::Rollback | Action::GuardRollback | Action::Deadline | Action::Error
        )
    }
}

/// One entry of a rollout's decision log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_unix_ms: u64,
    pub action: Action,
    /// The phase after the decision.
    pub phase: Phase,
    /// 1-based step, 0 before the first.
    pub step: usize,
    pub weight_percent: f64,
    pub reason: String,
    /// The checks behind the decision (empty for operator actions).
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// Further waits at the same step merged into this entry (its time, reason and checks
    /// are the last one's): `decision_counts` counts each of them.
    #[serde(default)]
    pub repeats: u64,
    /// For a rollback: how its canary connections were ended, once that is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Drained>,
}

/// How a rollback's open canary connections were ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drained {
    /// Ended between requests.
    pub idle: u64,
    /// Ended at the grace deadline.
    pub at_grace: u64,
    /// Of those, how many had an HTTP request waiting for its response.
    pub in_flight: u64,
    /// From the share reaching 0 to the last connection ended.
    pub seconds: f64,
    /// Network namespaces that could not be entered: their connections were not seen.
    pub unreachable_namespaces: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// What a check judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Canary alone: share of samples that succeeded.
    SuccessRate,
    /// Canary alone: failed connects over connection attempts.
    ConnectErrorRate,
    /// Canary alone: p99 time to first byte.
    P99Ttfb,
    /// Canary alone: p99 connect latency.
    P99Connect,
    /// Canary against stable: the difference of their error rates, with confidence.
    ErrorRateIncrease,
    /// Canary against stable: the ratio of their p99 latencies.
    P99Ratio,
    /// The fast guard between analyses: recent canary failures.
    Guard,
    /// Between analyses: a sequential test on the canary's errors over the window, which
    /// can only fail it.
    ErrorRateSequential,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::SuccessRate => "success_rate",
            Check::ConnectErrorRate => "connect_error_rate",
            Check::P99Ttfb => "p99_ttfb",
            Check::P99Connect => "p99_connect",
            Check::ErrorRateIncrease => "error_rate_increase",
            Check::P99Ratio => "p99_ratio",
            Check::Guard => "guard",
            Check::ErrorRateSequential => "error_rate_sequential",
        }
    }
}

/// The unit of a check's value and threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A fraction, 0 to 1.
    Ratio,
    Seconds,
    /// A multiple (canary over stable).
    Factor,
    Count,
    /// The natural log of a likelihood ratio.
    LogRatio,
}

impl Unit {
    /// A value in this unit, for people.
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds => fmt_duration(Duration::from_secs_f64(v.max(0.0))),
            Unit::Ratio => format!("{:.2}%", 100.0 * v),
            Unit::Count => format!("{v:.0}"),
            Unit::Factor => format!("{v:.2}x"),
            Unit::LogRatio => format!("e^{v:.1}"),
        }
    }
}

/// One check's outcome. Values and thresholds are in the check's `unit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: Check,
    pub verdict: Verdict,
    pub value: Option<f64>,
    pub threshold: f64,
    pub unit: Unit,
    /// Samples in the window, stable then canary.
    pub samples: [u64; 2],
    /// The evidence in words, e.g. the confidence interval.
    pub detail: String,
}

/// A rollout as `sluice status SERVICE` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub phase: Phase,
    pub reason: String,
    /// 1-based step; 0 before the first (the state file's `step_index` is 0-based).
    pub step: usize,
    pub steps_percent: Vec<f64>,
    pub weight_percent: f64,
    /// The share in parts per million, as the state file holds it (exact).
    pub weight_ppm: u32,
    /// Failed analyses over the rollout's life.
    pub failed_checks: u32,
    /// Failed analyses since the last that passed; `failure_threshold` of them roll back.
    #[serde(default)]
    pub failed_in_a_row: u32,
    pub failure_threshold: u32,
    /// Failed analyses in all that roll back, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_analyses: Option<u32>,
    pub interval_seconds: f64,
    pub min_samples: u64,
    pub promotion: String,
    pub started_unix_ms: u64,
    /// Samples in the current analysis window so far (stable, canary).
    pub window_samples: Option<[u64; 2]>,
    /// Stable, then canary, over the last few seconds.
    pub live: Option<[VersionLive; 2]>,
    pub last_checks: Vec<CheckResult>,
    pub decisions: Vec<Decision>,
    /// Decisions by action over the rollout's life; a run of waits merged into one entry
    /// of `decisions` counts every wait (`repeats`).
    pub decision_counts: BTreeMap<Action, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionLive {
    /// Samples (requests, or connections for `l7: none`) per second.
    pub rate: f64,
    pub error_rate: Option<f64>,
    /// Median time to first byte (connect latency for `l7: none`), seconds.
    #[serde(default)]
    pub p50_seconds: Option<f64>,
    /// p99 time to first byte (connect latency for `l7: none`), seconds.
    pub p99_seconds: Option<f64>,
}

/// A duration for people: `1.25s`, `4.2ms`, `80µs`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2}s")
    } else if s >= 1e-3 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{:.0}µs", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_their_serialised_form() {
        for a in Action::ALL {
            assert_eq!(
                serde_json::to_string(&a).expect("serialise"),
                format!("\"{}\"", a.name())
            );
        }
        for c in [
            Check::SuccessRate,
            Check::ConnectErrorRate,
            Check::P99Ttfb,
            Check::P99Connect,
            Check::ErrorRateIncrease,
            Check::P99Ratio,
            Check::Guard,
        ] {
            assert_eq!(
                serde_json::to_string(&c).expect("serialise"),
                format!("\"{}\"", c.name())
            );
        }
    }

    #[test]
    fn decision_counts_keep_their_json_shape() {
        let counts: BTreeMap<Action, u64> = [(Action::StepUp, 2), (Action::Wait, 7)].into();
        let text = serde_json::to_string(&counts).expect("serialise");
        assert_eq!(text, r#"{"step_up":2,"wait":7}"#);
        let back: BTreeMap<Action, u64> = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, counts);
    }
}
