//! The fast guard: between analyses, every tick, look at the canary's most recent attempts.
//! A canary that refuses connections or answers 5xx to everything is cut off within a tick
//! or two of the K-th failure, not after `interval x failure_threshold`.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::config::Guard;

/// Failures older than this no longer count, however few attempts came since.
pub const LOOKBACK: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Point {
    at: Instant,
    /// Cumulative canary attempts and failures.
    attempts: u64,
    failures: u64,
}

#[derive(Clone, Debug, Default)]
pub struct GuardWindow {
    points: VecDeque<Point>,
}

/// What the guard saw when it tripped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tripped {
    pub attempts: u64,
    pub failures: u64,
}

impl GuardWindow {
    pub fn record(&mut self, at: Instant, attempts: u64, failures: u64) {
        if self
            .points
            .back()
            .is_some_and(|p| attempts < p.attempts || failures < p.failures)
        {
            // Counters went back (a recycled id): what came before says nothing now.
            self.points.clear();
        }
        self.points.push_back(Point {
            at,
            attempts,
            failures,
        });
        while self
            .points
            .front()
            .is_some_and(|p| at.duration_since(p.at) > LOOKBACK)
        {
            self.points.pop_front();
        }
    }

    /// Whether more than `max_failures` of (about) the last `last` attempts failed. Ticks
    /// are the resolution: the window is the shortest run of recent ticks holding `last`
    /// attempts, or all of the lookback when fewer came.
    pub fn check(&self, guard: &Guard) -> Option<Tripped> {
        let newest = self.points.back()?;
        let mut seen = Tripped {
            attempts: 0,
            failures: 0,
        };
        for p in self.points.iter().rev().skip(1) {
            seen = Tripped {
                attempts: newest.attempts - p.attempts,
                failures: newest.failures - p.failures,
            };
            if seen.attempts >= guard.last {
                break;
            }
        }
        (seen.failures > guard.max_failures).then_some(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: Guard = Guard {
        last: 20,
        max_failures: 10,
    };

    #[test]
    fn trips_on_a_burst_of_failures_not_on_old_ones() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(250);
        let mut g = GuardWindow::default();
        // Healthy: 10 attempts a tick, one failure every other tick.
        for i in 0..40u64 {
            g.record(t0 + tick * i as u32, 10 * i, i / 2);
            assert_eq!(g.check(&GUARD), None, "tick {i}");
        }
        // Then every attempt fails: 11 failures among the last 20 attempts trips it.
        g.record(t0 + tick * 40, 400 + 11, 19 + 11);
        let t = g.check(&GUARD).expect("tripped");
        assert!(t.failures > 10 && t.attempts >= 11, "{t:?}");
    }

    #[test]
    fn failures_past_the_lookback_are_forgotten() {
        let t0 = Instant::now();
        let mut g = GuardWindow::default();
        g.record(t0, 0, 0);
        g.record(t0 + Duration::from_secs(1), 15, 15);
        assert!(g.check(&GUARD).is_some());
        g.record(t0 + LOOKBACK + Duration::from_secs(5), 15, 15);
        assert_eq!(g.check(&GUARD), None);
    }
}
