//! Failing early, the machine's side: every tick of a window, feed the sequential test
//! (`sequential.rs`) and roll back with its evidence when it fires.

use super::{
    Reading, TICK,
    clock::Moment,
    evidence::Counts,
    machine::Rollout,
    sequential::{ALPHA, Sequential},
};
use crate::view::{Action, Check, CheckResult, Unit, Verdict};

impl Rollout {
    /// The sequential test on the window so far; overwhelming evidence rolls back now.
    pub(super) fn fails_fast(&mut self, name: &str, now: Moment, reading: &Reading) -> bool {
        let (Some(margin), true) = (self.config.checks.max_error_increase, self.config.fail_fast)
        else {
            return false;
        };
        let Some((started, start)) = &self.window else {
            return false;
        };
        let started = *started;
        let stable = Counts::between(&start[0], &reading[0], self.http1);
        let at_start = Counts::of(&start[1], self.http1);
        let test = match &mut self.sequential {
            Some((at, test)) if *at == started => test,
            other => &mut other.insert((started, Sequential::new(at_start))).1,
        };
        // A window lives until the deadline at most (and an analysis more): that many
        // ticks for a test to start at.
        let life = self.config.deadline + self.config.interval;
        let starts = (life.as_millis() / TICK.as_millis()) as u64 + 1;
        let canary = Counts::of(&reading[1], self.http1);
        let Some(o) = test.tick(canary, &stable, margin, starts) else {
            return false;
        };
        let detail = format!(
            "canary {}/{} errors since the test that fired began, stable {}/{} over the \
             window: the likelihood of an error rate of {:.2}% (stable's plus twice the \
             margin) against {:.2}% (plus the margin) reached e^{:.1}, past e^{:.1} (one \
             chance in {:.0} at the margin, for a test started at any of the window's {} \
             ticks, however often it is looked at)",
            o.errors,
            o.samples,
            stable.errors,
            stable.samples,
            100.0 * o.alternative,
            100.0 * o.null,
            o.log_ratio,
            o.threshold,
            1.0 / ALPHA,
            starts,
        );
        let evidence = CheckResult {
            check: Check::ErrorRateSequential,
            verdict: Verdict::Fail,
            value: Some(o.log_ratio),
            threshold: o.threshold,
            unit: Unit::LogRatio,
            samples: [stable.samples, o.samples],
            detail,
        };
        let reason = format!(
            "failed early: {} errors in {} canary samples is overwhelming evidence of an error \
             rate above stable's plus the margin",
            o.errors, o.samples
        );
        self.roll_back(name, now, Action::Rollback, reason, vec![evidence]);
        true
    }
}
