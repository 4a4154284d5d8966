//! One analysis: the configured checks over one window, each with a verdict and the evidence
//! behind it. Too few samples is never a pass: it is `Inconclusive`, and the window grows.

use sluice_common::metrics::{latency_bucket_of, latency_lower_ns, latency_upper_ns};

use super::{
    evidence::{Buckets, Evidence, count, quantile},
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
        let (verdict, value, detail) = latency_against_stable(checks, w, ratio);
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

/// The share of requests a p99 leaves above it.
const P99_TAIL: f64 = 0.01;

/// Canary against stable on latency, judged with confidence rather than on two raw p99s
/// (with 90 samples a p99 is the slowest request, and one hiccup would decide it).
///
/// The limit is `ratio` times stable's p99 (counted as at least the floor), lowered to the
/// bucket bound at or below it so that the counts above it are exact. A canary within the
/// limit has at most about 1 % of its requests above it, as stable has; the check is on the
/// difference of the two shares above the bound, with the interval the error-rate check
/// uses and a margin of that 1 point: fail when the whole interval lies above it, pass when
/// it lies below, inconclusive otherwise. Lowering the limit makes the check stricter on a
/// slower canary (by up to a bucket's width, 2 to 2.5 times) and changes nothing for one
/// that is as fast as stable: both have the same share above any bound. Both versions
/// slowed alike (a host hiccup) move both shares and not their difference. The value shown
/// is the raw p99 ratio.
fn latency_against_stable(
    checks: &Checks,
    w: &Window<'_>,
    ratio: f64,
) -> (Verdict, Option<f64>, String) {
    let (cb, sb) = (w.canary.latency(w.http1), w.stable.latency(w.http1));
    let (cn, sn) = (count(cb), count(sb));
    let what = if w.http1 {
        "time to first byte"
    } else {
        "connect latency"
    };
    let short = |n: u64, who: &str| format!("{who} has {n} of {} samples", w.min_samples);
    let (Some(c99), Some(s99)) = (quantile(cb, 0.99), quantile(sb, 0.99)) else {
        return (
            Verdict::Inconclusive,
            None,
            short(cn.min(sn), "a version (latency)"),
        );
    };
    if cn < w.min_samples || sn < w.min_samples {
        let detail = if cn < w.min_samples {
            short(cn, "canary (latency)")
        } else {
            short(sn, "stable (latency)")
        };
        return (Verdict::Inconclusive, None, detail);
    }
    let base = s99.max(checks.p99_ratio_floor);
    let raw_ratio = c99.as_secs_f64() / base.as_secs_f64();
    let limit = base.mul_f64(ratio);
    let (bound, above) = above_bound(limit);
    let slower = |b: &Buckets| b[above..].iter().sum::<u64>();
    let (cs, ss) = (slower(cb), slower(sb));
    let z = normal_quantile(checks.confidence);
    let (lo, hi) = difference_interval(cs, cn, ss, sn, z);
    let verdict = if lo > P99_TAIL {
        Verdict::Fail
    } else if hi <= P99_TAIL {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let bound_text = fmt_duration(bound);
    let detail = format!(
        "{what} p99: canary {}, stable {} (counted as at least {}); slower than {} ({ratio}x, \
         at the bucket bound {bound_text}): canary {cs}/{cn} ({:.2}%), stable {ss}/{sn} ({:.2}%); \
         canary minus stable is in [{:+.2}, {:+.2}] points at {}% confidence, margin {:.0}",
        fmt_duration(c99),
        fmt_duration(s99),
        fmt_duration(checks.p99_ratio_floor),
        fmt_duration(limit),
        100.0 * cs as f64 / cn as f64,
        100.0 * ss as f64 / sn as f64,
        100.0 * lo,
        100.0 * hi,
        100.0 * checks.confidence,
        100.0 * P99_TAIL,
    );
    (verdict, Some(raw_ratio), detail)
}

/// The largest bucket bound at or below `limit`, and the index of the first bucket above
/// it: the requests in that bucket and after are certainly slower than the bound.
fn above_bound(limit: std::time::Duration) -> (std::time::Duration, usize) {
    let ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    let i = latency_bucket_of(ns);
    let (bound, above) = match latency_upper_ns(i) {
        Some(upper) if upper == ns => (upper, i + 1),
        _ => (latency_lower_ns(i), i),
    };
    (std::time::Duration::from_nanos(bound), above as usize)
}

#[cfg(test)]
mod tests;
