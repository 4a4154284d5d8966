//! What `sluice status` shows of a rollout: where it stands, the recent decisions with their
//! evidence, and a live view of both versions over the last few seconds.

use super::{
    evidence::{Counts, Evidence, quantile},
    machine::Rollout,
};
use crate::{
    config::{Promotion, ppm_to_percent},
    view::{Phase, RolloutStatus, VersionLive},
};

pub(super) fn status(r: &Rollout) -> RolloutStatus {
    let window_samples = match (&r.window, r.recent.back()) {
        (Some((_, start)), Some((_, now))) => Some([
            Counts::between(&start[0], &now[0], r.http1).samples,
            Counts::between(&start[1], &now[1], r.http1).samples,
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
                    p50_seconds: quantile(e.latency(r.http1), 0.5).map(|d| d.as_secs_f64()),
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
        weight_ppm: s.weight_ppm,
        failed_checks: s.failed_checks,
        failed_in_a_row: s.failed_in_a_row,
        failure_threshold: r.config.failure_threshold,
        max_failed_analyses: r.config.max_failed_analyses,
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
