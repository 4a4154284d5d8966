use proptest::prelude::*;

use super::*;
use crate::maps::MODE_RANDOM;

fn service(mode: u8, canary_ppm: u32, stable_slots: u16, canary_slots: u16) -> Service {
    Service {
        canary_ppm,
        salt: 0x5eed,
        stable_slots,
        canary_slots,
        mode,
        ..Service::default()
    }
}

fn draws(random: u32, cgroup_id: u64) -> Draws {
    Draws {
        random,
        random_slot: random.rotate_left(13),
        cgroup_id,
        in_segment: true,
    }
}

#[test]
fn bucket_spans_the_whole_range() {
    assert_eq!(bucket(0), 0);
    assert_eq!(bucket(u32::MAX), PPM - 1);
    assert!(wants_canary(u32::MAX, PPM), "100 % takes every draw");
    assert!(!wants_canary(0, 0), "0 % takes none");
}

#[test]
fn slot_of_covers_every_slot_and_stays_in_range() {
    assert_eq!(slot_of(0, 7), 0);
    assert_eq!(slot_of(u32::MAX, 7), 6);
    assert_eq!(slot_of(u32::MAX, 1), 0);
}

#[test]
fn empty_canary_falls_back_to_stable_and_says_so() {
    let svc = service(MODE_RANDOM, PPM, 2, 0);
    let d = decide(&svc, &draws(7, 1));
    assert!(matches!(
        d,
        Decision::Steer {
            version: VERSION_STABLE,
            canary_fallback: true,
            ..
        }
    ));
}

#[test]
fn no_backend_at_all_is_refused() {
    let svc = service(MODE_RANDOM, 500_000, 0, 0);
    assert_eq!(decide(&svc, &draws(7, 1)), Decision::NoBackend);
}

#[test]
fn empty_stable_with_live_canary_serves_canary() {
    let svc = service(MODE_RANDOM, 0, 0, 3);
    assert!(matches!(
        decide(&svc, &draws(7, 1)),
        Decision::Steer {
            version: VERSION_CANARY,
            ..
        }
    ));
}

#[test]
fn callers_outside_the_segment_stay_on_stable() {
    let svc = service(MODE_RANDOM, PPM, 1, 1);
    let mut d = draws(7, 1);
    d.in_segment = false;
    assert!(matches!(
        decide(&svc, &d),
        Decision::Steer {
            version: VERSION_STABLE,
            canary_fallback: false,
            ..
        }
    ));
}

#[test]
fn sticky_split_of_many_callers_matches_the_share() {
    // 200k distinct cgroup ids at 5 %: the sticky hash must spread like a uniform draw.
    let n = 200_000u64;
    let svc = service(MODE_STICKY, 50_000, 1, 1);
    let canary = (0..n)
        .filter(|id| {
            matches!(
                decide(&svc, &draws(0, 10_000 + id)),
                Decision::Steer {
                    version: VERSION_CANARY,
                    ..
                }
            )
        })
        .count() as f64;
    let (p, n) = (0.05, n as f64);
    let z = (canary - n * p) / (n * p * (1.0 - p)).sqrt();
    assert!(z.abs() < 4.0, "z = {z}, canary = {canary}");
}

proptest! {
    /// Cohorts only grow: a caller on the canary at some share stays there at every higher
    /// share, whatever the per-connection random draw is.
    #[test]
    fn sticky_cohorts_only_grow(
        cgroup_id in any::<u64>(),
        salt in any::<u64>(),
        low in 0..=PPM,
        high in 0..=PPM,
        r1 in any::<u32>(),
        r2 in any::<u32>(),
    ) {
        let (low, high) = (low.min(high), low.max(high));
        let mut svc = service(MODE_STICKY, low, 3, 2);
        svc.salt = salt;
        let at_low = decide(&svc, &draws(r1, cgroup_id));
        svc.canary_ppm = high;
        let at_high = decide(&svc, &draws(r2, cgroup_id));
        if let Decision::Steer { version: VERSION_CANARY, .. } = at_low {
            let on_canary = matches!(at_high, Decision::Steer { version: VERSION_CANARY, .. });
            prop_assert!(on_canary);
        }
    }

    /// A sticky caller's version does not depend on the per-connection draws.
    #[test]
    fn sticky_is_sticky(cgroup_id in any::<u64>(), ppm in 0..=PPM, r1 in any::<u32>(), r2 in any::<u32>()) {
        let svc = service(MODE_STICKY, ppm, 3, 2);
        let v = |r| match decide(&svc, &draws(r, cgroup_id)) {
            Decision::Steer { version, .. } => version,
            Decision::NoBackend => 9,
        };
        prop_assert_eq!(v(r1), v(r2));
    }

    /// Every decision picks a slot inside the chosen version's table.
    #[test]
    fn slot_is_always_in_range(
        mode in 0u8..2, ppm in 0..=PPM, stable in 0u16..100, canary in 0u16..100,
        r in any::<u32>(), cg in any::<u64>(), seg in any::<bool>(),
    ) {
        let svc = service(mode, ppm, stable, canary);
        let mut d = draws(r, cg);
        d.in_segment = seg;
        match decide(&svc, &d) {
            Decision::Steer { version: VERSION_STABLE, slot, .. } => prop_assert!(slot < stable),
            Decision::Steer { version, slot, .. } => {
                prop_assert_eq!(version, VERSION_CANARY);
                prop_assert!(slot < canary);
            }
            Decision::NoBackend => prop_assert!(stable == 0 && canary == 0),
        }
    }
}
