//! Failing early on overwhelming evidence, between analyses: Wald's sequential probability
//! ratio test on the canary's errors over the current analysis window, looked at every
//! tick. It can only fail a canary, never pass one.
//!
//! The null hypothesis is the error-rate check's boundary: the canary errs at stable's rate
//! plus the margin. The alternative is stable's rate plus twice the margin. Under the null
//! the likelihood ratio is a martingale, and under anything better for the canary a
//! supermartingale, so by Ville's inequality the chance that it ever reaches `1 / ALPHA`,
//! however often it is looked at, is at most `ALPHA`: looking every 250 ms does not add
//! false rollbacks. That holds exactly for a known stable rate; here stable's rate is the
//! window's estimate (stable has the larger share of traffic in every step but the last),
//! smoothed so that zero errors is not certainty, so it holds approximately, and the
//! simulation in `tests/simulation.rs` checks the false rollbacks it gives.

use super::evidence::Counts;

/// The chance, per analysis window, that a canary at the margin is failed early.
pub const ALPHA: f64 = 0.001;

/// What the test saw when it failed the canary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overwhelming {
    /// ln of the likelihood ratio, against `threshold` = ln(1 / ALPHA).
    pub log_ratio: f64,
    pub threshold: f64,
    /// The null and alternative error rates tested.
    pub null: f64,
    pub alternative: f64,
}

/// Whether the window's evidence against the canary is overwhelming.
pub fn overwhelming(stable: &Counts, canary: &Counts, margin: f64) -> Option<Overwhelming> {
    if canary.samples == 0 || margin <= 0.0 {
        return None;
    }
    let stable_rate = (stable.errors as f64 + 0.5) / (stable.samples as f64 + 1.0);
    let null = (stable_rate + margin).min(0.98);
    let alternative = (stable_rate + 2.0 * margin).min(0.99);
    if alternative <= null {
        return None;
    }
    let (x, n) = (canary.errors as f64, canary.samples as f64);
    let log_ratio =
        x * (alternative / null).ln() + (n - x) * ((1.0 - alternative) / (1.0 - null)).ln();
    let threshold = (1.0 / ALPHA).ln();
    (log_ratio >= threshold).then_some(Overwhelming {
        log_ratio,
        threshold,
        null,
        alternative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(samples: u64, errors: u64) -> Counts {
        Counts {
            samples,
            errors,
            ..Counts::default()
        }
    }

    #[test]
    fn a_canary_failing_a_fifth_of_its_requests_is_failed_within_a_hundred() {
        // The demo's faulty canary: 20 % errors, stable none, a 1-point margin.
        let first = (1..=200u64)
            .find(|n| overwhelming(&e(3 * n, 0), &e(*n, n / 5), 0.01).is_some())
            .expect("failed early");
        assert!(first <= 100, "after {first} canary samples");
    }

    #[test]
    fn a_canary_as_good_as_stable_is_not_failed_however_long_it_is_watched() {
        for n in (100..=100_000u64).step_by(100) {
            assert!(
                overwhelming(&e(9 * n, 9 * n / 100), &e(n, n / 100), 0.01).is_none(),
                "{n}"
            );
        }
    }

    #[test]
    fn without_a_margin_or_samples_there_is_no_test() {
        assert!(overwhelming(&e(100, 0), &e(0, 0), 0.01).is_none());
        assert!(overwhelming(&e(100, 0), &e(100, 100), 0.0).is_none());
    }
}
