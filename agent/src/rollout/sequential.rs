//! Failing early on overwhelming evidence, between analyses: Wald's sequential probability
//! ratio test on the canary's errors, started afresh at every tick of the analysis window
//! and looked at every tick. It can only fail a canary, never pass one.
//!
//! The null hypothesis is the error-rate check's boundary: the canary errs at stable's rate
//! plus the margin. The alternative is stable's rate plus twice the margin. Under the null
//! the likelihood ratio of a test started at any one tick is a martingale (under anything
//! better for the canary a supermartingale), so by Ville's inequality the chance that it
//! ever reaches `starts / ALPHA`, however often it is looked at, is at most
//! `ALPHA / starts`. A window has at most `starts` ticks to start from (its longest life is
//! the deadline), so the chance that any of them does is at most `ALPHA`: looking every
//! 250 ms, from every tick, does not add false rollbacks. The largest of those tests is
//! Page's CUSUM statistic, kept in O(1) a tick: `max(0, previous) + this tick's log ratio`.
//! Starting from every tick is what lets a fault that begins in the middle of a window be
//! judged on its own samples, not diluted by the healthy ones before it.
//!
//! That holds exactly for a known stable rate; here stable's rate is the window's estimate
//! (stable has the larger share of traffic in every step but the last), smoothed so that
//! zero errors is not certainty, so it holds approximately, and the simulation in
//! `tests/simulation.rs` checks the false rollbacks it gives.

use super::evidence::Counts;

/// The chance, per analysis window, that a canary at the margin is failed early.
pub const ALPHA: f64 = 0.001;

/// What the test saw when it failed the canary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overwhelming {
    /// ln of the likelihood ratio, against `threshold` = ln(starts / ALPHA).
    pub log_ratio: f64,
    pub threshold: f64,
    /// The null and alternative error rates tested.
    pub null: f64,
    pub alternative: f64,
    /// The canary's samples and errors since the tick the test that fired started at.
    pub samples: u64,
    pub errors: u64,
}

/// The test of one analysis window: the largest log likelihood ratio over every start tick.
#[derive(Clone, Debug)]
pub struct Sequential {
    /// The canary's cumulative counts at the last tick.
    last: Counts,
    /// The largest log ratio of a test started at some tick (0: start at the next one).
    statistic: f64,
    /// The canary's samples and errors since that start.
    samples: u64,
    errors: u64,
}

impl Sequential {
    /// A window starting with the canary's cumulative counts `canary`.
    pub fn new(canary: Counts) -> Self {
        Self {
            last: canary,
            statistic: 0.0,
            samples: 0,
            errors: 0,
        }
    }

    /// One tick: the canary's cumulative counts now, stable's over the window so far, the
    /// margin, and how many ticks the window can start a test at. `Some` when the evidence
    /// is overwhelming.
    pub fn tick(
        &mut self,
        canary: Counts,
        stable: &Counts,
        margin: f64,
        starts: u64,
    ) -> Option<Overwhelming> {
        // Counters only grow; smaller ones restarted (a recycled id), and count from 0.
        let (n, x) = if canary.samples < self.last.samples {
            (canary.samples, canary.errors)
        } else {
            (
                canary.samples - self.last.samples,
                canary.errors.saturating_sub(self.last.errors),
            )
        };
        self.last = canary;
        if margin <= 0.0 {
            return None;
        }
        let stable_rate = (stable.errors as f64 + 0.5) / (stable.samples as f64 + 1.0);
        let null = (stable_rate + margin).min(0.98);
        let alternative = (stable_rate + 2.0 * margin).min(0.99);
        if alternative <= null {
            return None;
        }
        if self.statistic <= 0.0 {
            // Every test started before now is at or below 1: the best starts now.
            (self.statistic, self.samples, self.errors) = (0.0, 0, 0);
        }
        let x = x.min(n);
        let (xf, nf) = (x as f64, n as f64);
        self.statistic +=
            xf * (alternative / null).ln() + (nf - xf) * ((1.0 - alternative) / (1.0 - null)).ln();
        self.samples += n;
        self.errors += x;
        let threshold = (starts.max(1) as f64 / ALPHA).ln();
        (self.statistic >= threshold).then_some(Overwhelming {
            log_ratio: self.statistic,
            threshold,
            null,
            alternative,
            samples: self.samples,
            errors: self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(samples: u64, errors: u64) -> Counts {
        Counts {
            samples,
            errors,
            ..Counts::default()
        }
    }

    /// Feeds `ticks` ticks of `per_tick` canary samples at `rate` errors (stable at 0 %,
    /// three times the canary's traffic) after `healthy` ticks without errors; the tick
    /// the test fired at, counted from the first faulty one.
    fn fire_after(healthy: u64, per_tick: u64, rate: f64, ticks: u64, margin: f64) -> Option<u64> {
        let mut s = Sequential::new(c(0, 0));
        let (mut n, mut x, mut exact) = (0, 0, 0.0);
        for t in 0..healthy + ticks {
            n += per_tick;
            if t >= healthy {
                exact += rate * per_tick as f64;
                x = exact as u64;
            }
            if s.tick(c(n, x), &c(3 * n, 0), margin, 2_400).is_some() {
                return Some(t.saturating_sub(healthy));
            }
        }
        None
    }

    #[test]
    fn a_canary_failing_a_fifth_of_its_requests_is_failed_within_a_hundred() {
        // The demo's faulty canary: 20 % errors, stable none, a 2-point margin, 15 canary
        // samples a tick.
        let ticks = fire_after(0, 15, 0.2, 100, 0.02).expect("failed early");
        assert!(ticks * 15 <= 150, "after {} canary samples", ticks * 15);
    }

    #[test]
    fn healthy_samples_before_a_fault_do_not_delay_it() {
        let fresh = fire_after(0, 15, 0.2, 100, 0.02).expect("fires");
        // A minute of healthy traffic first: the test started at the fault decides as fast.
        let late = fire_after(240, 15, 0.2, 100, 0.02).expect("fires");
        assert!(late <= fresh + 1, "{late} ticks against {fresh}");
    }

    #[test]
    fn a_canary_as_good_as_stable_is_not_failed_however_long_it_is_watched() {
        let mut s = Sequential::new(c(0, 0));
        for t in 1..=10_000u64 {
            let n = 10 * t;
            assert!(
                s.tick(c(n, n / 100), &c(9 * n, 9 * n / 100), 0.01, 2_400)
                    .is_none(),
                "{t}"
            );
        }
    }

    #[test]
    fn without_a_margin_or_samples_there_is_no_test() {
        let mut s = Sequential::new(c(0, 0));
        assert!(s.tick(c(0, 0), &c(100, 0), 0.01, 2_400).is_none());
        assert!(s.tick(c(100, 100), &c(100, 0), 0.0, 2_400).is_none());
    }
}
