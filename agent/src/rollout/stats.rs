//! The statistics behind the canary-against-stable comparison: Wilson score intervals for
//! each version's error rate and Newcombe's interval for their difference (method 10 of
//! Newcombe 1998). Unlike the Wald interval they stay honest at zero errors and small
//! samples, which is exactly where a healthy canary lives.

/// The standard normal quantile (inverse CDF), Acklam's rational approximation: relative
/// error below 1.2e-9 over (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p <= 0.0 {
        f64::NEG_INFINITY
    } else if p >= 1.0 {
        f64::INFINITY
    } else if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Wilson score interval of a proportion `x / n` at normal quantile `z`.
pub fn wilson(x: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Interval for `p1 - p2` (Newcombe's hybrid score method), each side at quantile `z`.
pub fn difference_interval(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> (f64, f64) {
    let p = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let (p1, p2) = (p(x1, n1), p(x2, n2));
    let (l1, u1) = wilson(x1, n1, z);
    let (l2, u2) = wilson(x2, n2, z);
    let d = p1 - p2;
    (
        d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn quantiles_match_the_tables() {
        assert!(close(normal_quantile(0.5), 0.0, 1e-9));
        assert!(close(normal_quantile(0.95), 1.644_853_6, 1e-6));
        assert!(close(normal_quantile(0.975), 1.959_964_0, 1e-6));
        assert!(close(normal_quantile(0.99), 2.326_347_9, 1e-6));
        assert!(close(normal_quantile(0.01), -2.326_347_9, 1e-6));
        assert!(close(normal_quantile(0.9999), 3.719_016_5, 1e-6));
    }

    #[test]
    fn wilson_matches_newcombe_examples() {
        // Newcombe (1998), table I, 95 % two-sided: 81/263 -> 0.2553..0.3662; 0/10 -> 0..0.2775.
        let z = normal_quantile(0.975);
        let (lo, hi) = wilson(81, 263, z);
        assert!(
            close(lo, 0.2553, 5e-4) && close(hi, 0.3662, 5e-4),
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10, z);
        assert!(
            close(lo, 0.0, 1e-12) && close(hi, 0.2775, 5e-4),
            "{lo} {hi}"
        );
    }

    #[test]
    fn difference_matches_newcombe_example() {
        // Newcombe (1998), table II, method 10: 56/70 - 48/80 -> 0.0524..0.3339.
        let z = normal_quantile(0.975);
        let (lo, hi) = difference_interval(56, 70, 48, 80, z);
        assert!(
            close(lo, 0.0524, 5e-4) && close(hi, 0.3339, 5e-4),
            "{lo} {hi}"
        );
    }

    #[test]
    fn zero_errors_need_enough_samples_to_pass_a_one_point_margin() {
        let z = normal_quantile(0.95);
        // 0 of 100 against 0 of 2000: the canary could still be 2.6 points worse.
        assert!(difference_interval(0, 100, 0, 2_000, z).1 > 0.01);
        // 0 of 500: at most 0.54 points worse.
        assert!(difference_interval(0, 500, 0, 10_000, z).1 < 0.01);
    }
}
