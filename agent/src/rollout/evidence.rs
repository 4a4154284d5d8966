//! What one version did over a window, from two readings of its cumulative kernel counters.
//!
//! A "sample" is what the error rate is a proportion of: an HTTP request (or a connection
//! that failed before it could carry one) on `l7: http1` services, a connection attempt on
//! the others. An error is, on HTTP services, a 5xx response, a request left unanswered by a
//! close or reset, or a failed connect; on the others, a failed connect or a reset received.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_common::metrics::{
    BUCKET_BOUNDS_NS, BUCKETS, ESTABLISHED, FAILED_OTHER, FAILED_REFUSED, FAILED_TIMEOUT,
    HIST_CONNECT, HIST_TTFB, HTTP_CODES, HTTP_INCOMPLETE, HTTP_METHODS, HTTP_REQUESTS,
    HTTP_RESPONSES, HTTP_RESPONSES_OTHER, RESETS_RECEIVED,
};

/// A histogram's per-bucket counts over a window (the last bucket is +Inf).
pub type Buckets = [u64; BUCKETS as usize];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub samples: u64,
    pub errors: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub ttfb: Buckets,
    pub connect_latency: Buckets,
}

fn sum(slots: &[u64], from: u32, len: usize) -> u64 {
    slots[from as usize..from as usize + len].iter().sum()
}

/// The cumulative numbers of one reading (summed over CPUs).
pub fn totals(slots: &[u64], http1: bool) -> Evidence {
    let connect_failures = slots[FAILED_REFUSED as usize]
        + slots[FAILED_TIMEOUT as usize]
        + slots[FAILED_OTHER as usize];
    let connects = slots[ESTABLISHED as usize] + connect_failures;
    let (samples, errors) = if http1 {
        let five_xx_codes = HTTP_CODES
            .iter()
            .enumerate()
            .filter(|(_, c)| **c >= 500)
            .map(|(i, _)| slots[HTTP_RESPONSES as usize + i])
            .sum::<u64>()
            + slots[HTTP_RESPONSES_OTHER as usize + 4];
        (
            sum(slots, HTTP_REQUESTS, HTTP_METHODS.len()) + connect_failures,
            five_xx_codes + slots[HTTP_INCOMPLETE as usize] + connect_failures,
        )
    } else {
        (connects, connect_failures + slots[RESETS_RECEIVED as usize])
    };
    let hist = |start: u32| -> Buckets { std::array::from_fn(|i| slots[start as usize + i]) };
    Evidence {
        samples,
        errors,
        connects,
        connect_failures,
        ttfb: hist(HIST_TTFB),
        connect_latency: hist(HIST_CONNECT),
    }
}

impl Evidence {
    /// What happened between two readings of the same version's counters.
    pub fn between(then: &[u64], now: &[u64], http1: bool) -> Self {
        let (a, b) = (totals(then, http1), totals(now, http1));
        // Counters only grow; a smaller reading means the service's id was recycled (its
        // counters restarted), so the later reading alone is the truth.
        if b.samples < a.samples || b.connects < a.connects {
            return b;
        }
        Self {
            samples: b.samples - a.samples,
            errors: b.errors.saturating_sub(a.errors),
            connects: b.connects - a.connects,
            connect_failures: b.connect_failures.saturating_sub(a.connect_failures),
            ttfb: std::array::from_fn(|i| b.ttfb[i].saturating_sub(a.ttfb[i])),
            connect_latency: std::array::from_fn(|i| {
                b.connect_latency[i].saturating_sub(a.connect_latency[i])
            }),
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.errors as f64 / self.samples as f64)
    }

    /// Latency used by the comparison: time to first byte on HTTP, connect latency else.
    pub fn latency(&self, http1: bool) -> &Buckets {
        if http1 {
            &self.ttfb
        } else {
            &self.connect_latency
        }
    }
}

/// The `q` quantile of a bucketed histogram, interpolated linearly inside its bucket as
/// Prometheus' `histogram_quantile` does; `None` when it is empty. A quantile in the +Inf
/// bucket reads as the largest finite bound.
pub fn quantile(buckets: &Buckets, q: f64) -> Option<Duration> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = BUCKET_BOUNDS_NS.get(i) else {
                return Some(Duration::from_nanos(
                    BUCKET_BOUNDS_NS[BUCKET_BOUNDS_NS.len() - 1],
                ));
            };
            let lower = if i == 0 { 0 } else { BUCKET_BOUNDS_NS[i - 1] };
            let within = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
            let ns = lower as f64 + within * (upper - lower) as f64;
            return Some(Duration::from_nanos(ns as u64));
        }
        below += n;
    }
    None
}

pub fn count(buckets: &Buckets) -> u64 {
    buckets.iter().sum()
}

#[cfg(test)]
mod tests {
    use sluice_common::metrics::{METRIC_SLOTS, bucket_of};

    use super::*;

    #[test]
    fn http_errors_are_5xx_incomplete_and_failed_connects() {
        let mut then = vec![0u64; METRIC_SLOTS as usize];
        then[HTTP_REQUESTS as usize] = 100;
        let mut now = then.clone();
        now[HTTP_REQUESTS as usize] += 50; // GET
        now[HTTP_REQUESTS as usize + 2] += 10; // POST
        let code = |c: u16| {
            HTTP_RESPONSES as usize + HTTP_CODES.iter().position(|x| *x == c).expect("test value")
        };
        now[code(200)] += 50;
        now[code(404)] += 3; // not an error of the server
        now[code(503)] += 2;
        now[HTTP_RESPONSES_OTHER as usize + 4] += 1; // 599
        now[HTTP_INCOMPLETE as usize] += 1;
        now[FAILED_REFUSED as usize] += 4;
        let e = Evidence::between(&then, &now, true);
        assert_eq!(e.samples, 60 + 4);
        assert_eq!(e.errors, 2 + 1 + 1 + 4);
        assert_eq!(e.connect_failures, 4);
    }

    #[test]
    fn tcp_errors_are_failed_connects_and_resets_received() {
        let then = vec![0u64; METRIC_SLOTS as usize];
        let mut now = then.clone();
        now[ESTABLISHED as usize] = 95;
        now[FAILED_REFUSED as usize] = 3;
        now[FAILED_TIMEOUT as usize] = 2;
        now[RESETS_RECEIVED as usize] = 4;
        // HTTP slots are not read for a service without l7.
        now[HTTP_REQUESTS as usize] = 1_000;
        let e = Evidence::between(&then, &now, false);
        assert_eq!((e.samples, e.errors), (100, 5 + 4));
        assert_eq!((e.connects, e.connect_failures), (100, 5));
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let mut b: Buckets = [0; BUCKETS as usize];
        // 99 fast answers (<= 10 µs) and one in (50, 100] ms.
        b[0] = 99;
        b[bucket_of(80_000_000) as usize] = 1;
        assert_eq!(quantile(&b, 0.5), Some(Duration::from_nanos(5_050)));
        let p99 = quantile(&b, 0.99).expect("test value");
        assert!(p99 <= Duration::from_micros(10), "{p99:?}");
        b[bucket_of(80_000_000) as usize] = 10;
        let p99 = quantile(&b, 0.99).expect("test value");
        assert!(p99 > Duration::from_millis(50) && p99 <= Duration::from_millis(100));
        assert_eq!(quantile(&[0; BUCKETS as usize], 0.99), None);
    }
}
