//! What `sluice status` shows of a rollout: where it stands, the recent decisions with their
//! evidence, and a live view of both versions over the last few seconds.

use serde::{Deserialize, Serialize};

use super::{
    Rollout,
    analysis::CheckResult,
    evidence::{Evidence, quantile},
    state::{Decision, Phase},
};
use crate::config::{Promotion, ppm_to_percent};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub phase: Phase,
    pub reason: String,
    /// 1-based step; 0 before the first.
    pub step: usize,
    pub steps_percent: Vec<f64>,
    pub weight_percent: f64,
    pub failed_checks: u32,
    pub failure_threshold: u32,
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
    /// Decisions by action over the rollout's life.
    pub decision_counts: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionLive {
    /// Samples (requests, or connections for `l7: none`) per second.
    pub rate: f64,
    pub error_rate: Option<f64>,
    /// p99 time to first byte (connect latency for `l7: none`), seconds.
    pub p99_seconds: Option<f64>,
}

pub(super) fn status(r: &Rollout) -> RolloutStatus {
    let window_samples = match (&r.window, r.recent.back()) {
        (Some((_, start)), Some((_, now))) => Some([
            Evidence::between(&start[0], &now[0], r.http1).samples,
            Evidence::between(&start[1], &now[1], r.http1).samples,
        ]),
        _ => None,
    };
    let live = match (r.recent.front(), r.recent.back()) {
        (Some((t0, first)), Some((t1, last))) if t1 > t0 => {
            let secs = t1.duration_since(*t0).as_secs_f64();
            let v = |i: usize| {
                let e = Evidence::between(&first[i], &last[i], r.http1);
                VersionLive {
                    rate: e.samples as f64 / secs,
                    error_rate: e.error_rate(),
                    p99_seconds: quantile(e.latency(r.http1), 0.99).map(|d| d.as_secs_f64()),
                }
            };
            Some([v(0), v(1)])
        }
        _ => None,
    };
    let s = &r.state;
    RolloutStatus {
        phase: s.phase,
        reason: s.reason.clone(),
        step: if s.phase == Phase::Initializing {
            0
        } else {
            s.step + 1
        },
        steps_percent: r
            .config
            .steps_ppm
            .iter()
            .map(|p| ppm_to_percent(*p))
            .collect(),
        weight_percent: ppm_to_percent(s.weight_ppm),
        failed_checks: s.failed_checks,
        failure_threshold: r.config.failure_threshold,
        interval_seconds: r.config.interval.as_secs_f64(),
        min_samples: r.config.min_samples,
        promotion: match r.config.promotion {
            Promotion::Auto => "auto",
            Promotion::Manual => "manual",
        }
        .into(),
        started_unix_ms: s.started_unix_ms,
        window_samples,
        live,
        last_checks: r.last_checks.clone(),
        decisions: s.decisions.iter().cloned().collect(),
        decision_counts: s.decision_counts.clone(),
    }
}
