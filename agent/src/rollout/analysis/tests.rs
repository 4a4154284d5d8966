//! The latency comparison on synthetic histograms: one slow request is no verdict, a real
//! tail regression fails, a shared slowdown does not.

use sluice_common::metrics::{LATENCY_BUCKETS, LATENCY_MAX_NS, latency_bucket_of};

use super::*;
use crate::config::parse_str;

fn checks() -> Checks {
    let c = parse_str(
        r#"
services:
  - name: web
    virtual_addresses: ["10.99.0.1:80"]
    l7: http1
    stable: [{address: "127.0.0.1:8001"}]
    canary: [{address: "127.0.0.1:8002"}]
    rollout: {steps: [10, 50], checks: {max_p99_ratio: 2}}
"#,
    )
    .expect("test config");
    c.services[0].rollout.clone().expect("rollout").checks
}

/// `n` requests at `fast_ms`, then `slow` more at `slow_ms`.
fn evidence(n: u64, fast_ms: f64, slow: u64, slow_ms: f64) -> Evidence {
    let mut ttfb = [0u64; LATENCY_BUCKETS as usize];
    ttfb[latency_bucket_of((fast_ms * 1e6) as u64) as usize] += n;
    ttfb[latency_bucket_of((slow_ms * 1e6) as u64) as usize] += slow;
    Evidence {
        samples: n + slow,
        ttfb,
        ..Evidence::default()
    }
}

fn verdict(stable: &Evidence, canary: &Evidence) -> (Verdict, String) {
    let w = Window {
        stable,
        canary,
        http1: true,
        min_samples: 100,
    };
    let r = analyse(&checks(), &w);
    let check = r
        .iter()
        .find(|c| c.check == Check::P99Ratio)
        .expect("the ratio check");
    (check.verdict, check.detail.clone())
}

#[test]
fn one_slow_request_among_a_hundred_and_twenty_is_no_verdict() {
    // 120 canary requests, one of them 20 ms: its raw p99 is that request (4x stable's
    // floored p99); judged with confidence it is only inconclusive.
    let (v, detail) = verdict(&evidence(400, 2.0, 0, 0.0), &evidence(119, 2.0, 1, 20.0));
    assert_eq!(v, Verdict::Inconclusive, "{detail}");
}

#[test]
fn a_tail_on_a_fifth_of_the_requests_fails() {
    let (v, detail) = verdict(&evidence(2000, 2.0, 0, 0.0), &evidence(400, 2.0, 100, 32.0));
    assert_eq!(v, Verdict::Fail, "{detail}");
    assert!(detail.contains("canary 100/500"), "{detail}");
}

#[test]
fn a_healthy_canary_with_enough_requests_passes() {
    let (v, detail) = verdict(&evidence(3000, 2.0, 0, 0.0), &evidence(1000, 3.0, 0, 0.0));
    assert_eq!(v, Verdict::Pass, "{detail}");
}

#[test]
fn both_versions_slowed_alike_do_not_fail_the_canary() {
    // A host hiccup: 3 % of everyone's requests at 40 ms. Stable's p99 moves with it, and so
    // does the limit; what is compared is the difference.
    let (v, detail) = verdict(
        &evidence(2910, 2.0, 90, 40.0),
        &evidence(970, 2.0, 30, 40.0),
    );
    assert_ne!(v, Verdict::Fail, "{detail}");
}

#[test]
fn the_limit_is_lowered_to_a_bucket_bound() {
    use std::time::Duration;
    // 2 x 7 ms = 14 ms lies in the bucket (13.312, 14.336] ms: counted above 13.312 ms.
    let (bound, above) = above_bound(Duration::from_millis(14));
    assert_eq!(bound, Duration::from_micros(13_312));
    assert_eq!(above as u32, latency_bucket_of(13_312_001));
    // A limit on a bound counts what is above that bound.
    let (bound, above) = above_bound(Duration::from_micros(14_336));
    assert_eq!(bound, Duration::from_micros(14_336));
    assert_eq!(above as u32, latency_bucket_of(14_336_001));
    let (last, inf) = above_bound(Duration::from_secs(100));
    assert_eq!(
        (last, inf as u32),
        (Duration::from_nanos(LATENCY_MAX_NS), LATENCY_BUCKETS - 1)
    );
    let (first, above) = above_bound(Duration::from_nanos(300));
    assert_eq!((first, above), (Duration::ZERO, 0));
}
