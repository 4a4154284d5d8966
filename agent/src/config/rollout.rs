//! `services[].rollout`: how the controller walks a canary up, what evidence it wants, and
//! when it gives up. Validated here, carried out by [`crate::rollout`].

use std::time::Duration;

use sluice_common::PPM;

use super::{
    ConfigError, duration,
    raw::{RawChecks, RawGuard, RawRollout},
};

/// Most steps a rollout may have.
const MAX_STEPS: usize = 100;
/// Shortest analysis interval: shorter ones would judge on a handful of requests.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutConfig {
    /// Canary shares in ppm, strictly increasing (within each wave); promotion follows the
    /// last.
    pub steps_ppm: Vec<u32>,
    /// Per step, the nodes whose callers get its share (the others hold 0): all of them
    /// unless the steps come in `waves`.
    pub step_nodes: Vec<super::Nodes>,
    /// How often the canary is judged against stable.
    pub interval: Duration,
    /// Samples (HTTP requests, or connections for `l7: none`) each version needs in a window
    /// before it can be judged. Fewer: the window grows (Waiting), it never passes.
    pub min_samples: u64,
    /// Failed analyses in a row that roll the canary back (a passing analysis resets the
    /// count).
    pub failure_threshold: u32,
    /// Failed analyses in all, passes between them or not, that roll it back (`None`: no
    /// such limit).
    pub max_failed_analyses: Option<u32>,
    /// Between analyses, fail the canary at once when a sequential test on its errors finds
    /// overwhelming evidence (with the error-rate comparison only).
    pub fail_fast: bool,
    /// Longest time one step may wait for conclusive evidence.
    pub deadline: Duration,
    pub on_deadline: OnDeadline,
    pub promotion: Promotion,
    pub checks: Checks,
    pub guard: Guard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadline {
    Rollback,
    Pause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// Promote when the last step passes.
    Auto,
    /// Pause after the last step until `sluice promote`.
    Manual,
}

/// The analysis checks; `None` is a check not asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Checks {
    /// Canary alone: share of samples that succeeded, as a fraction.
    pub min_success: Option<f64>,
    pub max_p99_ttfb: Option<Duration>,
    pub max_p99_connect: Option<Duration>,
    /// Canary alone: failed connects over connection attempts, as a fraction.
    pub max_connect_error: Option<f64>,
    /// Canary against stable: how much higher (absolute, as a fraction) the canary's error
    /// rate may be, judged with `confidence` on the difference of the two proportions.
    pub max_error_increase: Option<f64>,
    pub confidence: f64,
    /// Canary against stable: the canary's p99 at most this many times stable's.
    pub max_p99_ratio: Option<f64>,
    /// Stable's p99 counts as at least this in the ratio: 30 µs against 90 µs is no
    /// regression anyone would roll back for.
    pub p99_ratio_floor: Duration,
}

/// Fast guard, between analyses: more than `max_failures` failures (failed connects, resets,
/// 5xx, incomplete requests) in the canary's last `last` attempts cuts its share to 0 at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub last: u64,
    pub max_failures: u64,
}

const DEFAULT_CONFIDENCE: f64 = 0.95;
/// `step` without `max` walks up to half the traffic, then promotes: stable keeps enough
/// traffic to be compared with at every step.
const DEFAULT_MAX_STEP: f64 = 50.0;
const DEFAULT_FLOOR: Duration = Duration::from_millis(5);

pub(super) fn rollout(
    key: &str,
    raw: RawRollout,
    http1: bool,
) -> Result<RolloutConfig, ConfigError> {
    let (steps_ppm, step_nodes) = match &raw.waves {
        Some(waves) => {
            if raw.steps.is_some() || raw.step.is_some() || raw.max.is_some() {
                return Err(ConfigError::invalid(
                    format!("{key}.waves"),
                    "give either waves or steps (or step and max), not both",
                ));
            }
            super::waves::waves(&format!("{key}.waves"), waves, MAX_STEPS, percents_to_ppm)?
        }
        None => {
            let s = steps(key, &raw)?;
            let nodes = vec![super::Nodes::All; s.len()];
            (s, nodes)
        }
    };
    let interval = match &raw.interval {
        None => Duration::from_secs(30),
        Some(t) => duration(&format!("{key}.interval"), t)?,
    };
    if interval < MIN_INTERVAL {
        return Err(ConfigError::invalid(
            format!("{key}.interval"),
            format!("{interval:?} is shorter than {MIN_INTERVAL:?}"),
        ));
    }
    let min_samples = positive(&format!("{key}.min_samples"), raw.min_samples, 100)?;
    let failure_threshold = positive(
        &format!("{key}.failure_threshold"),
        raw.failure_threshold,
        2,
    )?;
    let failure_threshold = u32::try_from(failure_threshold)
        .map_err(|_| ConfigError::invalid(format!("{key}.failure_threshold"), "is too large"))?;
    let max_failed_analyses = raw
        .max_failed_analyses
        .map(|n| {
            let k = format!("{key}.max_failed_analyses");
            let n = u32::try_from(positive(&k, Some(n), 0)?)
                .map_err(|_| ConfigError::invalid(&k, "is too large"))?;
            if n < failure_threshold {
                return Err(ConfigError::invalid(
                    k,
                    format!(
                        "{n} is below failure_threshold ({failure_threshold}): the limit in a row \
                         could never be reached"
                    ),
                ));
            }
            Ok(n)
        })
        .transpose()?;
    let deadline = match &raw.deadline {
        None => Duration::from_secs(600).max(interval),
        Some(t) => duration(&format!("{key}.deadline"), t)?,
    };
    if deadline < interval {
        return Err(ConfigError::invalid(
            format!("{key}.deadline"),
            format!("{deadline:?} is shorter than the interval ({interval:?})"),
        ));
    }
    let on_deadline = match raw.on_deadline.as_deref() {
        None | Some("pause") => OnDeadline::Pause,
        Some("rollback") => OnDeadline::Rollback,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.on_deadline"),
                format!("{other:?}: expected \"rollback\" or \"pause\""),
            ));
        }
    };
    let promotion = match raw.promotion.as_deref() {
        None | Some("auto") => Promotion::Auto,
        Some("manual") => Promotion::Manual,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.promotion"),
                format!("{other:?}: expected \"auto\" or \"manual\""),
            ));
        }
    };
    let checks = checks(&format!("{key}.checks"), raw.checks, http1)?;
    let compares = checks.max_error_increase.is_some() || checks.max_p99_ratio.is_some();
    if compares && steps_ppm.last() == Some(&PPM) {
        return Err(ConfigError::invalid(
            format!("{key}.steps"),
            "a last step of 100 leaves stable no traffic to be compared with; end below 100 \
             (promotion sends everything to the canary after the last step)",
        ));
    }
    let guard = guard(&format!("{key}.guard"), raw.guard)?;
    Ok(RolloutConfig {
        steps_ppm,
        step_nodes,
        interval,
        min_samples,
        failure_threshold,
        max_failed_analyses,
        fail_fast: raw.fail_fast.unwrap_or(true),
        deadline,
        on_deadline,
        promotion,
        checks,
        guard,
    })
}

fn steps(key: &str, raw: &RawRollout) -> Result<Vec<u32>, ConfigError> {
    let percents: Vec<(String, f64)> = match (&raw.steps, raw.step, raw.max) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{key}.steps"),
                "give either steps or step (and max), not both",
            ));
        }
        (Some(list), None, None) => list
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{key}.steps[{i}]"), *p))
            .collect(),
        (None, Some(step), max) => {
            let max = max.unwrap_or(DEFAULT_MAX_STEP);
            for (k, v) in [("step", step), ("max", max)] {
                if !v.is_finite() || v <= 0.0 || v > 100.0 {
                    return Err(ConfigError::invalid(
                        format!("{key}.{k}"),
                        format!("{v} is out of range (0, 100]"),
                    ));
                }
            }
            if step > max {
                return Err(ConfigError::invalid(
                    format!("{key}.step"),
                    format!("{step} is above max ({max}): there would be no step below max"),
                ));
            }
            if max / step > MAX_STEPS as f64 {
                return Err(ConfigError::invalid(
                    format!("{key}.step"),
                    format!("{step} up to {max} makes more than {MAX_STEPS} steps"),
                ));
            }
            let mut v: Vec<(String, f64)> = (1..)
                .map(|k| f64::from(k) * step)
                .take_while(|p| *p < max - 1e-9)
                .map(|p| (format!("{key}.step"), p))
                .collect();
            v.push((format!("{key}.max"), max));
            v
        }
        (None, None, _) => {
            return Err(ConfigError::invalid(
                format!("{key}.steps"),
                "missing: give steps (a list of percents) or step (and max)",
            ));
        }
    };
    if percents.is_empty() || percents.len() > MAX_STEPS {
        return Err(ConfigError::invalid(
            format!("{key}.steps"),
            format!("1 to {MAX_STEPS} steps, got {}", percents.len()),
        ));
    }
    percents_to_ppm(percents)
}

/// Percents, each named by its key, to strictly increasing ppm.
fn percents_to_ppm(percents: Vec<(String, f64)>) -> Result<Vec<u32>, ConfigError> {
    let mut out: Vec<u32> = Vec::with_capacity(percents.len());
    for (k, p) in percents {
        if !p.is_finite() || p <= 0.0 || p > 100.0 {
            return Err(ConfigError::invalid(
                k,
                format!("{p} is out of range (0, 100]"),
            ));
        }
        let ppm = ((p * f64::from(PPM) / 100.0).round() as u32).clamp(1, PPM);
        if out.last().is_some_and(|last| ppm <= *last) {
            return Err(ConfigError::invalid(k, format!("{p}: steps must increase")));
        }
        out.push(ppm);
    }
    Ok(out)
}

fn checks(key: &str, raw: Option<RawChecks>, http1: bool) -> Result<Checks, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Checks {
            min_success: None,
            max_p99_ttfb: None,
            max_p99_connect: None,
            max_connect_error: None,
            max_error_increase: Some(0.01),
            confidence: DEFAULT_CONFIDENCE,
            max_p99_ratio: Some(2.0),
            p99_ratio_floor: DEFAULT_FLOOR,
        });
    };
    let fraction = |k: &str, v: Option<f64>| -> Result<Option<f64>, ConfigError> {
        v.map(|p| {
            if p.is_finite() && (0.0..=100.0).contains(&p) {
                Ok(p / 100.0)
            } else {
                Err(ConfigError::invalid(
                    format!("{key}.{k}"),
                    format!("{p} is out of range 0..=100"),
                ))
            }
        })
        .transpose()
    };
    let dur = |k: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
        v.as_deref()
            .map(|t| duration(&format!("{key}.{k}"), t))
            .transpose()
    };
    let max_p99_ttfb = dur("max_p99_ttfb", &raw.max_p99_ttfb)?;
    if max_p99_ttfb.is_some() && !http1 {
        return Err(ConfigError::invalid(
            format!("{key}.max_p99_ttfb"),
            "time to first byte is measured only with l7: http1",
        ));
    }
    let confidence = raw.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    if !(0.5..=0.9999).contains(&confidence) {
        return Err(ConfigError::invalid(
            format!("{key}.confidence"),
            format!("{confidence} is out of range 0.5..=0.9999"),
        ));
    }
    if let Some(r) = raw.max_p99_ratio
        && !(r.is_finite() && r >= 1.0)
    {
        return Err(ConfigError::invalid(
            format!("{key}.max_p99_ratio"),
            format!("{r}: must be at least 1"),
        ));
    }
    if raw.max_error_increase_percent == Some(0.0) {
        return Err(ConfigError::invalid(
            format!("{key}.max_error_increase_percent"),
            "0 passes only a canary measurably better than stable: next to an error-free \
             stable, an error-free canary would never pass (the interval of the difference \
             always reaches above 0); give a margin above 0 (the default is 1)",
        ));
    }
    let checks = Checks {
        min_success: fraction("min_success_percent", raw.min_success_percent)?,
        max_p99_ttfb,
        max_p99_connect: dur("max_p99_connect", &raw.max_p99_connect)?,
        max_connect_error: fraction("max_connect_error_percent", raw.max_connect_error_percent)?,
        max_error_increase: fraction("max_error_increase_percent", raw.max_error_increase_percent)?,
        confidence,
        max_p99_ratio: raw.max_p99_ratio,
        p99_ratio_floor: dur("p99_ratio_floor", &raw.p99_ratio_floor)?.unwrap_or(DEFAULT_FLOOR),
    };
    let any = checks.min_success.is_some()
        || checks.max_p99_ttfb.is_some()
        || checks.max_p99_connect.is_some()
        || checks.max_connect_error.is_some()
        || checks.max_error_increase.is_some()
        || checks.max_p99_ratio.is_some();
    if !any {
        return Err(ConfigError::invalid(
            key,
            "names no check: a rollout without evidence would promote anything",
        ));
    }
    Ok(checks)
}

fn guard(key: &str, raw: Option<RawGuard>) -> Result<Guard, ConfigError> {
    let raw = raw.unwrap_or(RawGuard {
        last: None,
        max_failures: None,
    });
    let last = positive(&format!("{key}.last"), raw.last, 20)?;
    let max_failures = match raw.max_failures {
        None => last / 2,
        Some(n) if (0..i64::try_from(last).unwrap_or(i64::MAX)).contains(&n) => n as u64,
        Some(n) => {
            return Err(ConfigError::invalid(
                format!("{key}.max_failures"),
                format!(
                    "{n} is out of range 0..{last}: the guard trips on more than max_failures \
                     of the last {last} attempts, so at {last} or more it could never trip"
                ),
            ));
        }
    };
    Ok(Guard { last, max_failures })
}

fn positive(key: &str, v: Option<i64>, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if n >= 1 => Ok(n as u64),
        Some(n) => Err(ConfigError::invalid(
            key,
            format!("{n}: must be at least 1"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_and_max_expand_to_a_list_ending_at_max() {
        let raw = RawRollout {
            steps: None,
            step: Some(10.0),
            max: Some(35.0),
            interval: None,
            min_samples: None,
            failure_threshold: None,
            max_failed_analyses: None,
            fail_fast: None,
            deadline: None,
            on_deadline: None,
            promotion: None,
            checks: None,
            guard: None,
            waves: None,
        };
        let r = rollout("r", raw, true).expect("valid");
        assert_eq!(r.steps_ppm, vec![100_000, 200_000, 300_000, 350_000]);
        assert_eq!(r.interval, Duration::from_secs(30));
        assert_eq!(r.deadline, Duration::from_secs(600));
        assert_eq!(
            r.guard,
            Guard {
                last: 20,
                max_failures: 10
            }
        );
    }
}
