//! Sticky selection in the real kernel: a few dozen client cgroups, each always on one
//! version, exactly the version the pure function in sluice-common predicts; raising the
//! share only moves callers from stable to canary. Needs root.

use sluice::config::Selection;
use sluice_common::steer::{sticky_draw, wants_canary};
use sluice_tests::{Agent, Backend, TestCgroup, probe, root_or_skip, tag, unused_port};

const CLIENTS: usize = 40;
const CONNECTIONS: u64 = 10;

#[test]
fn callers_keep_their_version_and_cohorts_only_grow() {
    if !root_or_skip("callers_keep_their_version_and_cohorts_only_grow") {
        return;
    }
    let t = tag("sticky");
    let cg = TestCgroup::new(&t);
    let clients: Vec<TestCgroup> = (0..CLIENTS)
        .map(|i| cg.child(&format!("client-{i}")))
        .collect();
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = format!("127.77.2.1:{}", unused_port("127.77.2.1"))
        .parse()
        .expect("vip");
    let yaml = format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    selection: sticky\n    \
         salt: test-salt\n    canary_percent: 30\n    stable: [{{address: \"{}\"}}]\n    \
         canary: [{{address: \"{}\"}}]\n",
        stable.addr, canary.addr
    );
    let agent = Agent::start(&t, &cg, &yaml);
    let config = sluice::config::parse(&agent.config_path).expect("config");
    let Selection::Sticky { salt } = config.services[0].selection else {
        panic!("sticky expected");
    };

    let mut previous: Option<Vec<bool>> = None;
    let mut on_canary_per_step = Vec::new();
    for percent in [30u32, 60, 90] {
        agent.weight("web", f64::from(percent));
        let on_canary: Vec<bool> = clients
            .iter()
            .map(|client| {
                let r = probe(Some(client), vip, CONNECTIONS);
                assert_eq!(r.total(), CONNECTIONS, "{r:?}");
                let canary = r.from("canary");
                assert!(
                    canary == 0 || canary == CONNECTIONS,
                    "a sticky caller was split across versions: {r:?}"
                );
                let expected = wants_canary(sticky_draw(client.id(), salt), percent * 10_000);
                assert_eq!(
                    canary == CONNECTIONS,
                    expected,
                    "kernel and sluice-common disagree for cgroup {}",
                    client.id()
                );
                canary == CONNECTIONS
            })
            .collect();
        let n = on_canary.iter().filter(|c| **c).count();
        eprintln!("{percent}%: {n} of {CLIENTS} callers on the canary");
        on_canary_per_step.push(n);
        if let Some(prev) = &previous {
            for (i, (was, is)) in prev.iter().zip(&on_canary).enumerate() {
                assert!(
                    !*was || *is,
                    "client-{i} moved from canary back to stable at {percent}%"
                );
            }
        }
        previous = Some(on_canary);
    }
    // Some callers did move (the chance that none of 40 has its bucket in [30 %, 90 %) is
    // 0.4^40): the monotonicity above was tested, not vacuous.
    assert!(
        on_canary_per_step[2] > on_canary_per_step[0],
        "{on_canary_per_step:?}"
    );
    drop(agent);
    drop(clients);
}
