//! One test a behaviour of one rollout: promotion, rollback on each check, waiting, the
//! deadline, the guard, restarts, new canary sets, the gate, pause and resume.

use sluice_common::PPM;

use super::*;

const FAST: &str = "      steps: [10, 50]
      interval: 1s
      min_samples: 100
      failure_threshold: 2";

#[test]
fn a_healthy_canary_is_promoted_through_every_step() {
    let (mut r, _d) = Run::new(FAST);
    assert_eq!(r.phase(), Phase::Initializing);
    r.tick(0, 0, 0, 0);
    assert_eq!(r.weights, vec![100_000]);
    // 1 000 stable and 500 canary requests a second, no errors: each interval passes once
    // enough samples make the error-rate interval tight (0 of 500 at 95 %: < 0.6 points).
    for _ in 0..40 {
        r.tick(250, 125, 0, 0);
        if r.phase() == Phase::Succeeded {
            break;
        }
    }
    assert_eq!(r.phase(), Phase::Succeeded, "{:?}", r.actions());
    // Every step, then all to the canary, then the promoted set is stable (no canary share).
    assert_eq!(r.weights, vec![100_000, 500_000, PPM, 0]);
    assert_eq!(
        r.c.shares()["web"],
        RolloutShare {
            canary_ppm: 0,
            promoted: true
        }
    );
}

#[test]
fn three_percent_errors_against_none_roll_back() {
    let (mut r, _d) = Run::new(FAST);
    r.tick(0, 0, 0, 0);
    for i in 0..40u64 {
        // 3 errors in every 100 canary requests.
        r.tick(750, 100, 3, 0);
        if r.phase() == Phase::RolledBack {
            assert!(i >= 7, "two failed intervals take at least 2 s");
            break;
        }
    }
    assert_eq!(r.phase(), Phase::RolledBack, "{:?}", r.actions());
    assert_eq!(*r.weights.last().expect("test value"), 0);
    assert!(
        !r.weights.contains(&500_000),
        "never stepped up: {:?}",
        r.weights
    );
    let last = r.c.rollouts["web"]
        .state
        .decisions
        .back()
        .expect("test value")
        .clone();
    assert_eq!(last.action, Action::Rollback);
    let check = last
        .checks
        .iter()
        .find(|c| c.check == Check::ErrorRateIncrease)
        .expect("test value");
    assert_eq!(check.verdict, Verdict::Fail);
    assert!((check.value.expect("test value") - 0.03).abs() < 1e-9);
}

#[test]
fn a_slow_canary_fails_the_latency_ratio() {
    let (mut r, _d) = Run::new(FAST);
    r.canary_ttfb = 80_000_000;
    r.tick(0, 0, 0, 0);
    for _ in 0..20 {
        r.tick(250, 125, 0, 0);
    }
    assert_eq!(r.phase(), Phase::RolledBack, "{:?}", r.actions());
    let last = r.c.rollouts["web"]
        .state
        .decisions
        .back()
        .expect("test value")
        .clone();
    let check = last
        .checks
        .iter()
        .find(|c| c.check == Check::P99Ratio)
        .expect("test value");
    assert_eq!(check.verdict, Verdict::Fail);
}

#[test]
fn no_traffic_waits_and_never_passes() {
    let (mut r, _d) = Run::new(FAST);
    r.tick(0, 0, 0, 0);
    for _ in 0..40 {
        r.tick(0, 0, 0, 0);
    }
    assert_eq!(r.phase(), Phase::Waiting);
    assert_eq!(r.weights, vec![100_000]);
    // A run of waits is one decision in the ring.
    assert_eq!(
        r.actions(),
        vec![Action::Start, Action::StepUp, Action::Wait]
    );
    let state = &r.c.rollouts["web"].state;
    let waits = state.decision_counts[&Action::Wait];
    assert!(waits >= 9);
    // ... and says how many waits it stands for, as the counts do.
    let merged = state.decisions.back().expect("the wait");
    assert_eq!(merged.repeats + 1, waits);
}

#[test]
fn the_deadline_rolls_back_when_configured() {
    let (mut r, _d) = Run::new(
        "      steps: [10, 50]
      interval: 1s
      deadline: 2s
      on_deadline: rollback",
    );
    r.tick(0, 0, 0, 0);
    // Too few samples: the step waits, and waits, until two seconds have passed.
    for _ in 0..7 {
        r.tick(1, 0, 0, 0);
    }
    assert_eq!(r.phase(), Phase::Waiting, "{:?}", r.actions());
    for _ in 0..5 {
        r.tick(1, 0, 0, 0);
    }
    assert_eq!(r.phase(), Phase::RolledBack);
    assert_eq!(r.actions().last(), Some(&Action::Deadline));
    assert_eq!(r.weights.last(), Some(&0));
}

#[test]
fn the_guard_cuts_a_failing_canary_off_between_analyses() {
    let (mut r, _d) = Run::new(
        "      steps: [10, 50]
      interval: 1h
      guard: {last: 20, max_failures: 5}",
    );
    r.tick(0, 0, 0, 0);
    r.tick(250, 25, 0, 0);
    assert_eq!(r.phase(), Phase::Progressing);
    // Six refused connects in one tick: more than 5 of the last 20 attempts.
    r.tick(250, 0, 0, 6);
    assert_eq!(r.phase(), Phase::RolledBack);
    assert_eq!(r.actions().last(), Some(&Action::GuardRollback));
    assert_eq!(r.weights.last(), Some(&0));
    // The evidence: 6 failures in the last attempts, against a bound of 5 in 20.
    let d = r.c.rollouts["web"]
        .state
        .decisions
        .back()
        .expect("a decision")
        .clone();
    let g = &d.checks[0];
    assert_eq!((g.check, g.verdict), (Check::Guard, Verdict::Fail));
    assert_eq!((g.value, g.threshold), (Some(6.0), 5.0));
    assert!(g.samples[1] >= 6, "{g:?}");
}

#[test]
fn state_survives_a_restart_and_a_finished_rollout_is_not_rerun() {
    let (mut r, _d) = Run::new(FAST);
    r.tick(0, 0, 0, 0);
    for _ in 0..40 {
        r.tick(250, 125, 0, 0);
        if r.weights.len() == 2 {
            break;
        }
    }
    assert_eq!(r.weights, vec![100_000, 500_000]);
    r.c.save().expect("test value");
    let cfg = config(FAST, r.c.state_path());
    let (again, outcome) = Controller::load(&cfg, r.clock.clone()).expect("test value");
    assert!(
        outcome.weights.is_empty(),
        "a resumed rollout keeps its weight"
    );
    assert_eq!(again.shares()["web"].canary_ppm, 500_000);
    assert_eq!(again.status("web").expect("test value").step, 2);

    let mut done = again.clone();
    done.abort("web").expect("test value");
    done.save().expect("test value");
    let (again, _) = Controller::load(&cfg, r.clock.clone()).expect("test value");
    assert_eq!(again.has_rollout("web"), Some(Phase::RolledBack));
    assert!(again.active().is_empty());
    assert_eq!(
        again.shares()["web"],
        RolloutShare {
            canary_ppm: 0,
            promoted: false
        }
    );
}

#[test]
fn a_new_canary_set_restarts_from_the_first_step() {
    let (mut r, _d) = Run::new(FAST);
    r.tick(0, 0, 0, 0);
    for _ in 0..40 {
        r.tick(250, 125, 0, 0);
        if r.weights.len() == 2 {
            break;
        }
    }
    let path = r.c.state_path().to_owned();
    let mut cfg = config(FAST, &path);
    cfg.services[0].canary[0].target =
        crate::config::Target::Address("127.0.0.1:8003".parse().expect("test value"));
    let outcome = r.c.reconcile(&cfg);
    assert_eq!(outcome.weights, vec![("web".to_owned(), 0)]);
    assert_eq!(r.phase(), Phase::Initializing);
    // Other settings changing keep the rollout where it is.
    let mut cfg2 = cfg.clone();
    cfg2.services[0]
        .rollout
        .as_mut()
        .expect("test value")
        .min_samples = 5;
    assert!(r.c.reconcile(&cfg2).weights.is_empty());
}

#[test]
fn a_manual_gate_waits_for_the_operator() {
    let (mut r, _d) = Run::new(
        "      steps: [20]
      interval: 1s
      min_samples: 100
      promotion: manual",
    );
    r.tick(0, 0, 0, 0);
    for _ in 0..40 {
        r.tick(250, 125, 0, 0);
    }
    assert_eq!(r.phase(), Phase::Paused);
    assert!(matches!(r.c.resume("web"), Err(CommandError::AtGate(_))));
    let out = r.c.promote("web").expect("test value");
    assert_eq!(out.weights, vec![("web".to_owned(), PPM)]);
    r.tick(250, 125, 0, 0);
    assert_eq!(r.phase(), Phase::Succeeded);
    assert!(matches!(
        r.c.abort("web"),
        Err(CommandError::Finished { .. })
    ));
}

#[test]
fn pause_holds_the_share_and_resume_continues() {
    let (mut r, _d) = Run::new(FAST);
    r.tick(0, 0, 0, 0);
    r.c.pause("web").expect("test value");
    for _ in 0..20 {
        r.tick(250, 125, 0, 0);
    }
    assert_eq!(r.phase(), Phase::Paused);
    assert_eq!(r.weights, vec![100_000]);
    r.c.resume("web").expect("test value");
    for _ in 0..40 {
        r.tick(250, 125, 0, 0);
    }
    assert_eq!(r.phase(), Phase::Succeeded);
}

#[test]
fn changed_steps_move_a_stepping_rollout_to_its_steps_new_share() {
    let (mut r, _d) = Run::new(FAST);
    r.tick(0, 0, 0, 0);
    assert_eq!(r.c.shares()["web"].canary_ppm, 100_000);
    let path = r.c.state_path().to_owned();
    let cfg = config(
        "      steps: [20, 50]
      interval: 1s
      min_samples: 100",
        &path,
    );
    let outcome = r.c.reconcile(&cfg);
    assert_eq!(outcome.weights, vec![("web".to_owned(), 200_000)]);
    assert_eq!(r.c.shares()["web"].canary_ppm, 200_000);
    assert_eq!(
        r.phase(),
        Phase::Progressing,
        "same canary set, same rollout"
    );
}

/// Four ticks: one interval of `FAST`-like timing, failing (8 % canary errors) or healthy.
fn interval(r: &mut Run, failing: bool) {
    for _ in 0..4 {
        if failing {
            r.tick(750, 100, 8, 0);
        } else {
            r.tick(250, 125, 0, 0);
        }
    }
}

/// Failing early is off: these tests count failed analyses.
const THREE_STEPS: &str = "      steps: [10, 30, 50]
      interval: 1s
      min_samples: 100
      failure_threshold: 2
      fail_fast: false";

#[test]
fn only_failures_in_a_row_roll_back() {
    let (mut r, _d) = Run::new(THREE_STEPS);
    r.tick(0, 0, 0, 0);
    // fail, pass (step 2), fail: two failed analyses, never two in a row.
    interval(&mut r, true);
    assert_eq!(r.actions().last(), Some(&Action::CheckFailed));
    interval(&mut r, false);
    assert_eq!(r.actions().last(), Some(&Action::StepUp));
    assert_eq!(r.c.rollouts["web"].state.failed_in_a_row, 0);
    interval(&mut r, true);
    assert_eq!(r.actions().last(), Some(&Action::CheckFailed));
    let state = &r.c.rollouts["web"].state;
    assert_eq!((state.failed_checks, state.failed_in_a_row), (2, 1));
    let status = r.c.status("web").expect("status");
    assert_eq!((status.failed_checks, status.failed_in_a_row), (2, 1));
    for _ in 0..10 {
        interval(&mut r, false);
    }
    assert_eq!(r.phase(), Phase::Succeeded, "{:?}", r.actions());
    // And two in a row do roll back.
    let (mut r, _d) = Run::new(THREE_STEPS);
    r.tick(0, 0, 0, 0);
    interval(&mut r, true);
    interval(&mut r, true);
    assert_eq!(r.phase(), Phase::RolledBack, "{:?}", r.actions());
}

#[test]
fn max_failed_analyses_limits_them_in_all() {
    let (mut r, _d) = Run::new(&format!("{THREE_STEPS}\n      max_failed_analyses: 2"));
    r.tick(0, 0, 0, 0);
    interval(&mut r, true);
    interval(&mut r, false);
    interval(&mut r, true);
    assert_eq!(r.phase(), Phase::RolledBack, "{:?}", r.actions());
    let reason = &r.c.rollouts["web"].state.reason;
    assert!(
        reason.contains("1 of 2 failed analyses in a row; 2 of 2 in all"),
        "{reason}"
    );
}

#[test]
fn overwhelming_evidence_fails_the_canary_before_the_analysis() {
    let (mut r, _d) = Run::new("      steps: [25, 50]\n      interval: 30s");
    r.tick(0, 0, 0, 0);
    // 20 % of the canary's requests fail, a 25 % share of 250 requests a second.
    let mut ticks = 0;
    while r.phase() != Phase::RolledBack && ticks < 120 {
        r.tick(47, 16, 3, 0);
        ticks += 1;
    }
    assert_eq!(r.phase(), Phase::RolledBack, "{:?}", r.actions());
    assert!(ticks <= 12, "rolled back after {ticks} ticks: within 3 s");
    let last = r.c.rollouts["web"]
        .state
        .decisions
        .back()
        .expect("a decision")
        .clone();
    assert_eq!(last.action, Action::Rollback);
    assert_eq!(last.checks[0].check, Check::ErrorRateSequential);
    // Without it, the same canary waits for the 30 s analysis.
    let (mut r, _d) =
        Run::new("      steps: [25, 50]\n      interval: 30s\n      fail_fast: false");
    r.tick(0, 0, 0, 0);
    for _ in 0..12 {
        r.tick(47, 16, 3, 0);
    }
    assert_eq!(r.phase(), Phase::Progressing);
}
