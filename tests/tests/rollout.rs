//! The rollout controller end to end: real kernel programs, real HTTP servers on loopback,
//! real load from a client in a cgroup (a new connection per request, so every request is
//! steered). Each scenario reports, from the client's side, how many requests failed because
//! of the canary (the blast radius) and, where there is a fault, the time from the fault to
//! weight 0; and asserts bounds on both. Needs root.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, TestCgroup,
    http::{Behaviour, HttpBackend, Scraped},
    load::{Load, unix_ms},
    root_or_skip, tag, unused_port,
};

/// Requests a second the clients send (new connections each).
const RATE: u32 = 400;

/// The rollout every scenario runs unless it says otherwise: three steps, an analysis a
/// second, the canary's error rate judged against stable's with 95 % confidence (margin one
/// point), its p99 time to first byte at most twice stable's, and the default guard.
const ROLLOUT: &str = "    rollout:
      steps: [20, 50, 80]
      interval: 1s
      min_samples: 100
      failure_threshold: 2
      checks:
        max_error_increase_percent: 1
        max_p99_ratio: 2
      guard: {last: 20, max_failures: 10}
";

struct Scenario {
    cg: TestCgroup,
    vip: SocketAddr,
    stable: HttpBackend,
    canary: HttpBackend,
    agent: Agent,
}

fn service_yaml(name: &str, vip: SocketAddr, stable: SocketAddr, canary: SocketAddr) -> String {
    format!(
        "  - name: {name}\n    virtual_addresses: [\"{vip}\"]\n    l7: http1\n    \
         stable: [{{address: \"{stable}\"}}]\n    canary: [{{address: \"{canary}\"}}]\n"
    )
}

fn vip(ip: &str) -> SocketAddr {
    format!("{ip}:{}", unused_port(ip)).parse().expect("vip")
}

fn scenario(name: &str, canary: Behaviour, rollout: &str) -> Scenario {
    let t = tag(name);
    let cg = TestCgroup::new(&t);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", canary);
    let vip = vip("127.77.9.1");
    let yaml = service_yaml("web", vip, stable.addr, canary.addr) + rollout;
    let agent = Agent::start(&t, &cg, &yaml);
    Scenario {
        cg,
        vip,
        stable,
        canary,
        agent,
    }
}

fn actions(rollout: &serde_json::Value) -> Vec<String> {
    rollout["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["action"].as_str().expect("action").to_owned())
        .collect()
}

fn decision<'a>(rollout: &'a serde_json::Value, action: &str) -> &'a serde_json::Value {
    rollout["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| d["action"] == action)
        .unwrap_or_else(|| panic!("no {action} decision in {rollout:#}"))
}

/// Requests a backend has answered so far.
fn answered(b: &HttpBackend) -> u64 {
    b.seen().responses.values().sum()
}

#[test]
fn a_healthy_canary_is_promoted_through_every_step() {
    if !root_or_skip("a_healthy_canary_is_promoted_through_every_step") {
        return;
    }
    let s = scenario("ro-healthy", Behaviour::default(), ROLLOUT);
    let load = Load::start(&s.cg, s.vip, RATE, 40.0);
    let started = Instant::now();
    let r = s
        .agent
        .wait_phase("web", "Succeeded", Duration::from_secs(35));
    let took = started.elapsed();
    // After promotion every new connection goes to the (former) canary backends.
    let (stable_then, canary_then) = (answered(&s.stable), answered(&s.canary));
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.stop();
    let (stable_after, canary_after) = (
        answered(&s.stable) - stable_then,
        answered(&s.canary) - canary_then,
    );
    println!(
        "healthy: promoted in {took:?}; blast radius {} failed of {} requests; after promotion \
         stable answered {stable_after}, canary {canary_after}",
        seen.failed(),
        seen.requests()
    );
    let a = actions(&r);
    assert_eq!(
        a.iter().filter(|x| *x == "step_up").count(),
        3,
        "three steps: {a:?}"
    );
    assert!(a.contains(&"promote".to_owned()) && a.contains(&"promoted".to_owned()));
    assert!(!a.iter().any(|x| x.contains("rollback")), "{a:?}");
    assert_eq!(seen.failed(), 0, "no request may fail: {seen:?}");
    assert_eq!(
        seen.statuses.get(&200).copied(),
        Some(seen.requests()),
        "{seen:?}"
    );
    // A connection steered just before the promotion may still be answered by stable.
    assert!(stable_after <= 2, "stable still got {stable_after}");
    assert!(canary_after > 100, "the canary took over: {canary_after}");
    let svc = s.agent.service("web");
    assert_eq!(svc["stable"][0], s.canary.addr.to_string(), "{svc:#}");
    assert_eq!(svc["canary"].as_array().map(Vec::len), Some(0), "{svc:#}");
    assert_eq!(svc["canary_percent"], 0.0);
    // The step-ups carry the evidence they were taken on.
    let step = decision(&r, "step_up");
    assert!(step["reason"].as_str().expect("reason").contains("step 1"));
}

#[test]
fn a_canary_with_three_percent_errors_is_rolled_back_never_promoted() {
    if !root_or_skip("a_canary_with_three_percent_errors_is_rolled_back_never_promoted") {
        return;
    }
    let faulty = Behaviour {
        fail_every: 33,
        ..Behaviour::default()
    };
    let s = scenario("ro-5xx", faulty, ROLLOUT);
    let load = Load::start(&s.cg, s.vip, RATE, 40.0);
    let r = s
        .agent
        .wait_phase("web", "RolledBack", Duration::from_secs(35));
    let canary_then = answered(&s.canary);
    std::thread::sleep(Duration::from_secs(1));
    let canary_after = answered(&s.canary) - canary_then;
    let seen = load.stop();
    let rollback = decision(&r, "rollback");
    let first_fault = seen.failures.iter().map(|f| f.1).min().expect("a 503");
    let to_zero = rollback["at_unix_ms"].as_u64().expect("at") - first_fault;
    let canary_503 = s.canary.seen().responses.get(&503).copied().unwrap_or(0);
    println!(
        "3% 5xx: blast radius {} failed of {} requests (the canary sent {canary_503} 503s); \
         first failure to weight 0: {to_zero} ms",
        seen.failed(),
        seen.requests()
    );
    let a = actions(&r);
    assert!(!a.iter().any(|x| x.starts_with("promote")), "{a:?}");
    assert_eq!(r["weight_percent"], 0.0);
    // Every failure the clients saw is a 503 the canary sent; stable sent none.
    assert_eq!(seen.failed(), canary_503, "{seen:?}");
    assert_eq!(s.stable.seen().responses.get(&503), None);
    let check = rollback["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "error_rate_increase")
        .expect("error_rate_increase");
    assert_eq!(check["verdict"], "fail", "{check:#}");
    // Bounds: the two failed analyses need a few hundred canary requests at 3 %; the
    // rollout never went past 50 %.
    assert!(seen.failed() <= 40, "blast radius {}", seen.failed());
    assert!(to_zero <= 15_000, "{to_zero} ms to weight 0");
    // Weight 0: new connections no longer reach the canary.
    assert!(canary_after <= 2, "the canary still got {canary_after}");

    // The decision is a log event with its evidence, and exported.
    let log = s.agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("rollout decision") && l.contains("action=\"rollback\""))
        .unwrap_or_else(|| panic!("no rollback event in the log:\n{log}"));
    assert!(
        line.contains("error_rate_increase") && line.contains("threshold"),
        "{line}"
    );
    let (m, exposition) = Scraped::fetch(s.agent.metrics_addr());
    let web = |extra: (&'static str, &'static str)| [("service", "web"), extra];
    assert_eq!(
        m.get(
            "sluice_rollout_decisions_total",
            &web(("action", "rollback"))
        ),
        1
    );
    assert_eq!(
        m.get("sluice_rollout_phase", &web(("phase", "RolledBack"))),
        1
    );
    let value = m.sum(
        "sluice_rollout_check_value",
        &web(("check", "error_rate_increase")),
    );
    let threshold = m.sum(
        "sluice_rollout_check_threshold",
        &web(("check", "error_rate_increase")),
    );
    assert!(value > 0.02 && value < 0.04, "{value}");
    assert!((threshold - 0.01).abs() < 1e-9, "{threshold}");
    sluice_tests::promtool_check(&exposition);
}

#[test]
fn a_canary_slower_by_80ms_is_rolled_back() {
    if !root_or_skip("a_canary_slower_by_80ms_is_rolled_back") {
        return;
    }
    let slow = Behaviour {
        delay: Duration::from_millis(80),
        ..Behaviour::default()
    };
    let s = scenario("ro-slow", slow, ROLLOUT);
    let started = unix_ms();
    let load = Load::start(&s.cg, s.vip, RATE, 40.0);
    let r = s
        .agent
        .wait_phase("web", "RolledBack", Duration::from_secs(35));
    let seen = load.stop();
    let rollback = decision(&r, "rollback");
    let to_zero = rollback["at_unix_ms"].as_u64().expect("at") - started;
    let slowed = answered(&s.canary);
    println!(
        "80 ms slower: {slowed} requests slowed, {} failed of {}; load start to weight 0: \
         {to_zero} ms",
        seen.failed(),
        seen.requests()
    );
    let check = rollback["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "p99_ratio")
        .expect("p99_ratio");
    assert_eq!(check["verdict"], "fail", "{check:#}");
    assert!(check["value"].as_f64().expect("ratio") > 2.0);
    assert!(!actions(&r).iter().any(|x| x.starts_with("promote")));
    assert_eq!(seen.failed(), 0, "slow is not failed: {seen:?}");
    // Two failed analyses at 20 %: about two seconds of a fifth of the load.
    assert!(slowed <= 600, "{slowed} requests went to the slow canary");
    assert!(to_zero <= 10_000, "{to_zero} ms to weight 0");
}

#[test]
fn a_canary_that_starts_refusing_is_cut_off_by_the_guard_within_2s() {
    if !root_or_skip("a_canary_that_starts_refusing_is_cut_off_by_the_guard_within_2s") {
        return;
    }
    // An hour-long interval: only the guard can act.
    let rollout = ROLLOUT.replace("interval: 1s", "interval: 1h");
    let mut s = scenario("ro-refuse", Behaviour::default(), &rollout);
    let load = Load::start(&s.cg, s.vip, RATE, 20.0);
    s.agent
        .wait_phase("web", "Progressing", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    assert!(answered(&s.canary) > 50, "the canary was taking traffic");
    let fault = unix_ms();
    s.canary.close();
    let r = s
        .agent
        .wait_phase("web", "RolledBack", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.stop();
    let guard = decision(&r, "guard_rollback");
    let to_zero = guard["at_unix_ms"].as_u64().expect("at") - fault;
    // Refused once the listener is gone; reset if a connection was in its accept queue
    // when it closed. Both are the crash's doing.
    let refused: Vec<u64> = seen
        .failures
        .iter()
        .filter(|(kind, _)| kind == "ConnectionRefused" || kind == "ConnectionReset")
        .map(|(_, at)| *at)
        .collect();
    let last_failure = refused.iter().max().copied().unwrap_or(fault) - fault;
    println!(
        "refusing canary: blast radius {} failed of {} requests; fault to weight 0: {to_zero} \
         ms (decision), last failed request {last_failure} ms after the fault; {}",
        seen.failed(),
        seen.requests(),
        guard["reason"]
    );
    assert_eq!(seen.failed(), refused.len() as u64, "{seen:?}");
    assert!(to_zero < 2_000, "{to_zero} ms from fault to weight 0");
    assert!(
        last_failure < 2_000,
        "clients failed until {last_failure} ms after the fault"
    );
    // At most 2 s of a fifth of the load; in practice the guard's 11 failures and a tick.
    assert!(
        seen.failed() <= u64::from(RATE) * 2 / 5,
        "blast radius {}",
        seen.failed()
    );
    assert!(seen.failed() > 10, "the guard needs more than 10 failures");
}

#[test]
fn without_traffic_a_rollout_waits_and_never_promotes() {
    if !root_or_skip("without_traffic_a_rollout_waits_and_never_promotes") {
        return;
    }
    let s = scenario("ro-idle", Behaviour::default(), ROLLOUT);
    let r = s.agent.wait_phase("web", "Waiting", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    let r2 = s.agent.rollout("web");
    println!("no traffic: {}", r2["reason"]);
    assert_eq!(r2["phase"], "Waiting", "{r2:#}");
    assert_eq!(r2["step"], 1);
    assert_eq!(r2["weight_percent"], 20.0);
    assert!(
        r2["decision_counts"]["wait"].as_u64().expect("waits")
            > r["decision_counts"]["wait"].as_u64().expect("waits"),
        "it keeps analysing"
    );
    assert!(
        r2["last_checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["verdict"] == "inconclusive")
    );
    let (m, _) = Scraped::fetch(s.agent.metrics_addr());
    assert_eq!(
        m.get(
            "sluice_rollout_phase",
            &[("service", "web"), ("phase", "Waiting")]
        ),
        1
    );
    assert_eq!(
        m.get(
            "sluice_rollout_phase",
            &[("service", "web"), ("phase", "Succeeded")]
        ),
        0
    );
}

#[test]
fn a_restarted_agent_resumes_at_the_same_step_and_weight() {
    if !root_or_skip("a_restarted_agent_resumes_at_the_same_step_and_weight") {
        return;
    }
    let mut s = scenario("ro-restart", Behaviour::default(), ROLLOUT);
    let load = Load::start(&s.cg, s.vip, RATE, 40.0);
    let end = Instant::now() + Duration::from_secs(20);
    while s.agent.rollout("web")["step"] != 2 {
        assert!(Instant::now() < end, "never reached step 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.agent.kill9();
    // While the agent is down the kernel keeps steering at 50 %.
    let canary_then = answered(&s.canary);
    std::thread::sleep(Duration::from_secs(1));
    assert!(answered(&s.canary) - canary_then > 100);
    s.agent.spawn();
    let r = s.agent.rollout("web");
    let svc = s.agent.service("web");
    println!(
        "restart: resumed in {} at step {} with weight {}%",
        r["phase"], r["step"], r["weight_percent"]
    );
    assert_eq!(r["step"], 2, "{r:#}");
    assert_eq!(r["weight_percent"], 50.0);
    assert_eq!(svc["canary_percent"], 50.0, "the kernel's share");
    assert_eq!(
        actions(&r).iter().filter(|a| *a == "step_up").count(),
        2,
        "the decisions survived"
    );
    let r = s
        .agent
        .wait_phase("web", "Succeeded", Duration::from_secs(25));
    let seen = load.stop();
    println!(
        "restart: promoted afterwards; blast radius {} failed of {}",
        seen.failed(),
        seen.requests()
    );
    assert_eq!(seen.failed(), 0, "{seen:?}");
    assert_eq!(actions(&r).iter().filter(|a| *a == "step_up").count(), 3);
    // A finished rollout is not re-run by another restart.
    s.agent.kill9();
    s.agent.spawn();
    let r = s.agent.rollout("web");
    assert_eq!(r["phase"], "Succeeded");
    assert_eq!(
        s.agent.service("web")["stable"][0],
        s.canary.addr.to_string()
    );
}

#[test]
fn operators_abort_pause_resume_and_promote_through_the_cli() {
    if !root_or_skip("operators_abort_pause_resume_and_promote_through_the_cli") {
        return;
    }
    let t = tag("ro-cli");
    let cg = TestCgroup::new(&t);
    let backends: Vec<HttpBackend> = (0..4)
        .map(|_| HttpBackend::start("127.0.0.1", Behaviour::default()))
        .collect();
    let (va, vb) = (vip("127.77.9.2"), vip("127.77.9.3"));
    // Hour-long intervals: nothing moves unless an operator moves it.
    let rollout = ROLLOUT.replace("interval: 1s", "interval: 1h");
    let yaml = service_yaml("a", va, backends[0].addr, backends[1].addr)
        + &rollout
        + &service_yaml("b", vb, backends[2].addr, backends[3].addr)
        + &rollout;
    let agent = Agent::start(&t, &cg, &yaml);
    agent.wait_phase("a", "Progressing", Duration::from_secs(5));
    agent.wait_phase("b", "Progressing", Duration::from_secs(5));

    // `sluice weight` may not fight the controller.
    let (ok, _, err) = agent.sluice(&["weight", "a", "50"]);
    assert!(!ok && err.contains("rollout"), "{err}");

    let (ok, out, err) = agent.sluice(&["abort", "a"]);
    assert!(ok, "{err}");
    assert!(out.contains("RolledBack"), "{out}");
    let (ok, _, err) = agent.sluice(&["resume", "a"]);
    assert!(!ok && err.contains("finished"), "{err}");

    let (ok, out, err) = agent.sluice(&["pause", "b"]);
    assert!(ok && out.contains("Paused"), "{out}{err}");
    let (ok, out, err) = agent.sluice(&["resume", "b"]);
    assert!(ok && out.contains("Progressing"), "{out}{err}");
    let (ok, out, err) = agent.sluice(&["promote", "b"]);
    assert!(ok && out.contains("Promoting"), "{out}{err}");
    agent.wait_phase("b", "Succeeded", Duration::from_secs(3));
    let (ok, _, err) = agent.sluice(&["promote", "nope"]);
    assert!(!ok && err.contains("no rollout"), "{err}");

    // What the clients see now: a only on its stable, b only on its (promoted) canary.
    let before: Vec<u64> = backends.iter().map(answered).collect();
    let la = Load::start(&cg, va, 100, 2.0);
    let lb = Load::start(&cg, vb, 100, 2.0);
    let (sa, sb) = (la.finish(), lb.finish());
    let got: Vec<u64> = backends
        .iter()
        .zip(&before)
        .map(|(b, n)| answered(b) - n)
        .collect();
    println!(
        "operator: a aborted -> stable {} canary {}; b promoted -> stable {} canary {}",
        got[0], got[1], got[2], got[3]
    );
    assert_eq!(sa.failed() + sb.failed(), 0);
    assert_eq!((got[0], got[1]), (sa.requests(), 0));
    assert_eq!((got[2], got[3]), (0, sb.requests()));

    // The table and the detail view name the phase and the decisions.
    let (ok, out, _) = agent.sluice(&["status", "a"]);
    assert!(
        ok && out.contains("rollout: RolledBack") && out.contains("abort"),
        "{out}"
    );
}

#[test]
fn a_manual_promotion_gate_waits_for_the_operator() {
    if !root_or_skip("a_manual_promotion_gate_waits_for_the_operator") {
        return;
    }
    let rollout = ROLLOUT.replace(
        "steps: [20, 50, 80]",
        "steps: [50]\n      promotion: manual",
    );
    let s = scenario("ro-gate", Behaviour::default(), &rollout);
    let load = Load::start(&s.cg, s.vip, RATE, 30.0);
    let r = s.agent.wait_phase("web", "Paused", Duration::from_secs(20));
    assert!(actions(&r).contains(&"gate".to_owned()), "{r:#}");
    std::thread::sleep(Duration::from_secs(2));
    let r = s.agent.rollout("web");
    assert_eq!(r["phase"], "Paused", "the gate holds");
    assert_eq!(r["weight_percent"], 50.0);
    let (ok, _, err) = s.agent.sluice(&["resume", "web"]);
    assert!(!ok && err.contains("promotion gate"), "{err}");
    let (ok, out, err) = s.agent.sluice(&["promote", "web"]);
    assert!(ok, "{err}");
    println!("gate: {}", out.trim());
    s.agent
        .wait_phase("web", "Succeeded", Duration::from_secs(3));
    let seen = load.stop();
    assert_eq!(seen.failed(), 0, "{seen:?}");
}
