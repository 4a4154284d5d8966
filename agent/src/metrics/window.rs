//! The measured canary share over the last minute, per service: of connections (what the
//! kernel steered) and of HTTP requests (what went over them). The two differ when
//! connections are long-lived: a 10 % connection share can carry any request share.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::view::ShareCount;

pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Point {
    at: Instant,
    /// (stable, canary) connections, then requests, cumulative.
    connections: (u64, u64),
    requests: (u64, u64),
}

#[derive(Default)]
pub struct ShareWindows {
    points: HashMap<String, VecDeque<Point>>,
}

impl ShareWindows {
    /// Records the current counters (the daemon calls this every few seconds).
    pub fn record(&mut self, counts: &[ShareCount], now: Instant) {
        self.points
            .retain(|name, _| counts.iter().any(|s| &s.name == name));
        for s in counts {
            let points = self.points.entry(s.name.clone()).or_default();
            points.push_back(Point {
                at: now,
                connections: s.connections,
                requests: s.requests.unwrap_or_default(),
            });
            while points.len() > 2 && now.duration_since(points[1].at) >= WINDOW {
                points.pop_front();
            }
        }
    }

    /// (connection share, request share) of the canary over the window, each `None` when
    /// nothing happened in it.
    pub fn shares(&self, service: &str) -> (Option<f64>, Option<f64>) {
        let Some(points) = self.points.get(service) else {
            return (None, None);
        };
        let (Some(first), Some(last)) = (points.front(), points.back()) else {
            return (None, None);
        };
        let share = |a: (u64, u64), b: (u64, u64)| {
            let stable = b.0.saturating_sub(a.0);
            let canary = b.1.saturating_sub(a.1);
            (stable + canary > 0).then(|| canary as f64 / (stable + canary) as f64)
        };
        (
            share(first.connections, last.connections),
            share(first.requests, last.requests),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(stable: u64, canary: u64) -> ShareCount {
        ShareCount {
            name: "web".into(),
            connections: (stable, canary),
            requests: None,
        }
    }

    #[test]
    fn share_is_over_the_window_not_the_lifetime() {
        let mut w = ShareWindows::default();
        let t0 = Instant::now();
        let minute = WINDOW + Duration::from_secs(1);
        w.record(&[sample(1_000, 0)], t0);
        w.record(&[sample(1_000, 500)], t0 + minute);
        w.record(&[sample(1_090, 510)], t0 + minute + minute);
        // The 500 canary connections of the first minute are out of the window: 10 of the
        // last 100 went to the canary (over the lifetime it would be 510 of 1600).
        let (conn, req) = w.shares("web");
        assert_eq!(conn, Some(0.1));
        assert_eq!(req, None);
    }
}
