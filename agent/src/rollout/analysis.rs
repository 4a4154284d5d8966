//! One analysis: the configured checks over one window, each with a verdict and the evidence
//! behind it. Too few samples is never a pass: it is `Inconclusive`, and the window grows.

use super::{
    evidence::{Evidence, count, quantile},
    stats::{difference_interval, normal_quantile},
};
use crate::{
    config::Checks,
    view::{Check, CheckResult, Unit, Verdict, fmt_duration},
};

/// The window's two versions and what they are judged by.
pub struct Window<'a> {
    pub stable: &'a Evidence,
    pub canary: &'a Evidence,
    pub http1: bool,
    pub min_samples: u64,
}

pub fn analyse(checks: &Checks, w: &Window<'_>) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let samples = [w.stable.samples, w.canary.samples];
    let result = |check, verdict, value, threshold, unit, detail: String| CheckResult {
        check,
        verdict,
        value,
        threshold,
        unit,
        samples,
        detail,
    };
    let short = |n: u64, who: &str| format!("{who} has {n} of {} samples", w.min_samples);
    // `enough` names the version that is short of samples, if one is.
    let enough_canary = w.canary.samples >= w.min_samples;
    let enough_both = enough_canary && w.stable.samples >= w.min_samples;
    let missing = || {
        if !enough_canary {
            short(w.canary.samples, "canary")
        } else {
            short(w.stable.samples, "stable")
        }
    };

    if let Some(min) = checks.min_success {
        let success = w.canary.error_rate().map(|e| 1.0 - e);
        let (verdict, detail) = match success {
            Some(s) if enough_canary => (
                if s >= min {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                format!(
                    "canary {} errors in {} samples",
                    w.canary.errors, w.canary.samples
                ),
            ),
            _ => (Verdict::Inconclusive, missing()),
        };
        out.push(result(
            Check::SuccessRate,
            verdict,
            success,
            min,
            Unit::Ratio,
            detail,
        ));
    }
    if let Some(max) = checks.max_connect_error {
        let rate = (w.canary.connects > 0)
            .then(|| w.canary.connect_failures as f64 / w.canary.connects as f64);
        let (verdict, detail) = match rate {
            Some(r) if w.canary.connects >= w.min_samples => (
                if r <= max {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                format!(
                    "canary {} failed of {} connects",
                    w.canary.connect_failures, w.canary.connects
                ),
            ),
            _ => (
                Verdict::Inconclusive,
                short(w.canary.connects, "canary (connects)"),
            ),
        };
        out.push(result(
            Check::ConnectErrorRate,
            verdict,
            rate,
            max,
            Unit::Ratio,
            detail,
        ));
    }
    for (check, max, buckets) in [
        (Check::P99Ttfb, checks.max_p99_ttfb, &w.canary.ttfb),
        (
            Check::P99Connect,
            checks.max_p99_connect,
            &w.canary.connect_latency,
        ),
    ] {
        let Some(max) = max else { continue };
        let p99 = quantile(buckets, 0.99);
        let n = count(buckets);
        let (verdict, detail) = match p99 {
            Some(p) if n >= w.min_samples => (
                if p <= max {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                format!("canary p99 {} over {n} samples", fmt_duration(p)),
            ),
            _ => (Verdict::Inconclusive, short(n, "canary (latency)")),
        };
        out.push(result(
            check,
            verdict,
            p99.map(|d| d.as_secs_f64()),
            max.as_secs_f64(),
            Unit::Seconds,
            detail,
        ));
    }
    if let Some(margin) = checks.max_error_increase {
        let z = normal_quantile(checks.confidence);
        let (s, c) = (w.stable, w.canary);
        let (lo, hi) = difference_interval(c.errors, c.samples, s.errors, s.samples, z);
        let diff = match (c.error_rate(), s.error_rate()) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        let (verdict, detail) = if !enough_both {
            (Verdict::Inconclusive, missing())
        } else {
            // Fail: the canary is worse by more than the margin, with confidence. Pass: it
            // is not, with the same confidence. Neither: more evidence is needed.
            let verdict = if lo > margin {
                Verdict::Fail
            } else if hi <= margin {
                Verdict::Pass
            } else {
                Verdict::Inconclusive
            };
            (
                verdict,
                format!(
                    "canary {}/{} ({:.2}%), stable {}/{} ({:.2}%); canary minus stable is in \
                     [{:+.2}, {:+.2}] points at {}% confidence, margin {:.2}",
                    c.errors,
                    c.samples,
                    100.0 * c.error_rate().unwrap_or(0.0),
                    s.errors,
                    s.samples,
                    100.0 * s.error_rate().unwrap_or(0.0),
                    100.0 * lo,
                    100.0 * hi,
                    100.0 * checks.confidence,
                    100.0 * margin,
                ),
            )
        };
        out.push(result(
            Check::ErrorRateIncrease,
            verdict,
            diff,
            margin,
            Unit::Ratio,
            detail,
        ));
    }
    if let Some(ratio) = checks.max_p99_ratio {
        let (cb, sb) = (w.canary.latency(w.http1), w.stable.latency(w.http1));
        let (cn, sn) = (count(cb), count(sb));
        let what = if w.http1 {
            "time to first byte"
        } else {
            "connect latency"
        };
        let (verdict, value, detail) = match (quantile(cb, 0.99), quantile(sb, 0.99)) {
            (Some(c), Some(s)) if cn >= w.min_samples && sn >= w.min_samples => {
                let base = s.max(checks.p99_ratio_floor);
                let r = c.as_secs_f64() / base.as_secs_f64();
                (
                    if r <= ratio {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    },
                    Some(r),
                    format!(
                        "{what} p99: canary {}, stable {} (counted as at least {})",
                        fmt_duration(c),
                        fmt_duration(s),
                        fmt_duration(checks.p99_ratio_floor)
                    ),
                )
            }
            _ => (
                Verdict::Inconclusive,
                None,
                if cn < w.min_samples {
                    short(cn, "canary (latency)")
                } else {
                    short(sn, "stable (latency)")
                },
            ),
        };
        out.push(result(
            Check::P99Ratio,
            verdict,
            value,
            ratio,
            Unit::Factor,
            detail,
        ));
    }
    out
}

/// The window's overall verdict: any fail fails, then any inconclusive waits.
pub fn overall(results: &[CheckResult]) -> Verdict {
    if results.iter().any(|r| r.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if results.iter().any(|r| r.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    }
}
