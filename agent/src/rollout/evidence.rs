//! What one version did over a window, from two readings of its cumulative kernel counters.
//!
//! A "sample" is what the error rate is a proportion of: an HTTP request (or a connection
//! that failed before it could carry one) on `l7: http1` services, a connection attempt on
//! the others. An error is, on HTTP services, a 5xx response, a request left unanswered by a
//! close or reset, or a failed connect; on the others, a failed connect or a reset received.

use std::time::Duration;

use sluice_common::metrics::{
    ESTABLISHED, FAILED_OTHER, FAILED_REFUSED, FAILED_TIMEOUT, HIST_CONNECT, HIST_TTFB, HTTP_CODES,
    HTTP_INCOMPLETE, HTTP_METHODS, HTTP_REQUESTS, HTTP_RESPONSES, HTTP_RESPONSES_OTHER,
    LATENCY_BUCKETS, LATENCY_MAX_NS, RESETS_RECEIVED, latency_lower_ns, latency_upper_ns,
};

/// A latency histogram's per-bucket counts over a window (log-linear, see
/// `sluice_common::metrics::latency_bucket_of`; the last bucket is +Inf).
pub type Buckets = [u64; LATENCY_BUCKETS as usize];

#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub samples: u64,
    pub errors: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub ttfb: Buckets,
    pub connect_latency: Buckets,
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            samples: 0,
            errors: 0,
            connects: 0,
            connect_failures: 0,
            ttfb: [0; LATENCY_BUCKETS as usize],
            connect_latency: [0; LATENCY_BUCKETS as usize],
        }
    }
}

fn sum(slots: &[u64], from: u32, len: usize) -> u64 {
    slots[from as usize..from as usize + len].iter().sum()
}

/// What an error rate is computed from: a window's counts without its histograms, cheap
/// enough to take every tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub samples: u64,
    pub errors: u64,
    pub connects: u64,
    pub connect_failures: u64,
}

impl Counts {
    /// The cumulative counts of one reading (summed over CPUs).
    pub fn of(slots: &[u64], http1: bool) -> Self {
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
        Self {
            samples,
            errors,
            connects,
            connect_failures,
        }
    }

    /// What happened between two readings of the same version's counters.
    pub fn between(then: &[u64], now: &[u64], http1: bool) -> Self {
        Self::between_or_restart(then, now, http1).0
    }

    /// [`Counts::between`], and whether the counters restarted in between.
    fn between_or_restart(then: &[u64], now: &[u64], http1: bool) -> (Self, bool) {
        let (a, b) = (Self::of(then, http1), Self::of(now, http1));
        // Counters only grow; a smaller reading means the service's id was recycled (its
        // counters restarted), so the later reading alone is the truth.
        if b.samples < a.samples || b.connects < a.connects {
            return (b, true);
        }
        let counts = Self {
            samples: b.samples - a.samples,
            errors: b.errors.saturating_sub(a.errors),
            connects: b.connects - a.connects,
            connect_failures: b.connect_failures.saturating_sub(a.connect_failures),
        };
        (counts, false)
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.errors as f64 / self.samples as f64)
    }
}

impl Evidence {
    /// What happened between two readings of the same version's counters, with the
    /// latency histograms.
    pub fn between(then: &[u64], now: &[u64], http1: bool) -> Self {
        let (c, restarted) = Counts::between_or_restart(then, now, http1);
        let hist = |start: u32| -> Buckets {
            let start = start as usize;
            std::array::from_fn(|i| {
                let b = now[start + i];
                if restarted {
                    b
                } else {
                    b.saturating_sub(then[start + i])
                }
            })
        };
        Self {
            samples: c.samples,
            errors: c.errors,
            connects: c.connects,
            connect_failures: c.connect_failures,
            ttfb: hist(HIST_TTFB),
            connect_latency: hist(HIST_CONNECT),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            samples: self.samples,
            errors: self.errors,
            connects: self.connects,
            connect_failures: self.connect_failures,
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        self.counts().error_rate()
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

/// The `q` quantile of a latency histogram: the middle of the bucket that holds the
/// `ceil(q * count)`-th duration, so within half a bucket (at most 1/16, 6.25 %, above
/// 8 µs) of the exact quantile of the same durations, however they lie in the bucket.
/// (Interpolating inside the bucket, as Prometheus' `histogram_quantile` does, can be off
/// by a whole bucket when the durations are bunched at one end.) `None` when it is empty;
/// a quantile in the +Inf bucket reads as the largest finite bound.
pub fn quantile(buckets: &Buckets, q: f64) -> Option<Duration> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let Some(upper) = latency_upper_ns(i as u32) else {
                return Some(Duration::from_nanos(LATENCY_MAX_NS));
            };
            let lower = latency_lower_ns(i as u32);
            return Some(Duration::from_nanos(lower + (upper - lower) / 2));
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
    use sluice_common::metrics::{METRIC_SLOTS, latency_bucket_of};

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
    fn quantile_is_the_middle_of_its_bucket() {
        let mut b: Buckets = [0; LATENCY_BUCKETS as usize];
        // 99 fast answers in (0, 1] µs and one of 80.5 ms.
        b[0] = 99;
        b[latency_bucket_of(80_500_000) as usize] = 1;
        assert_eq!(quantile(&b, 0.5), Some(Duration::from_nanos(500)));
        let p99 = quantile(&b, 0.99).expect("test value");
        assert!(p99 <= Duration::from_micros(1), "{p99:?}");
        b[latency_bucket_of(80_500_000) as usize] = 10;
        // 80.5 ms lies in (73.728, 81.92] ms: its middle is 2.6 % off.
        assert_eq!(quantile(&b, 0.99), Some(Duration::from_micros(77_824)));
        assert_eq!(quantile(&[0; LATENCY_BUCKETS as usize], 0.99), None);
    }
}
