//! The least privilege `sluice run` needs, proven: as root with only CAP_BPF, CAP_NET_ADMIN and
//! CAP_PERFMON it steers and counts; without any one of them it refuses at start naming the
//! capability and what needs it, and touches nothing. Needs root.

use sluice_tests::{
    Agent, Backend, TestCgroup, http::Scraped, probe, root_or_skip, tag, unused_port,
};

const NEEDED: [(&str, &str); 3] = [
    ("bpf", "CAP_BPF"),
    ("net_admin", "CAP_NET_ADMIN"),
    ("perfmon", "CAP_PERFMON"),
];

fn service(vip: std::net::SocketAddr, stable: &Backend, canary: &Backend) -> String {
    format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: 50\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n",
        stable.addr, canary.addr
    )
}

#[test]
fn bpf_net_admin_and_perfmon_are_enough_to_steer_and_count() {
    if !root_or_skip("bpf_net_admin_and_perfmon_are_enough_to_steer_and_count") {
        return;
    }
    let t = tag("least-privilege");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = format!("127.77.11.1:{}", unused_port("127.77.11.1"))
        .parse()
        .expect("vip");
    let mut agent = Agent::prepare(&t, &cg, &service(vip, &stable, &canary));
    agent.limit_capabilities(&NEEDED.map(|(c, _)| c));
    agent.spawn();
    let r = probe(Some(&cg), vip, 200);
    assert_eq!(r.total(), 200, "{r:?}");
    assert!(r.from("stable") > 0 && r.from("canary") > 0, "{r:?}");
    // What the servers saw, and what the kernel counted for each version.
    assert_eq!(stable.accepted() + canary.accepted(), 200);
    let m = Scraped::fetch(agent.metrics_addr()).0;
    let established = |v: &str| {
        m.get(
            "sluice_connections_established_total",
            &[("service", "web"), ("version", v)],
        )
    };
    assert_eq!(established("stable"), stable.accepted());
    assert_eq!(established("canary"), canary.accepted());
}

#[test]
fn each_missing_capability_is_named_at_start_and_nothing_is_touched() {
    if !root_or_skip("each_missing_capability_is_named_at_start_and_nothing_is_touched") {
        return;
    }
    let t = tag("missing-capability");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = format!("127.77.11.2:{}", unused_port("127.77.11.2"))
        .parse()
        .expect("vip");
    let mut agent = Agent::prepare(&t, &cg, &service(vip, &stable, &canary));
    for (dropped, name) in NEEDED {
        let kept: Vec<&str> = NEEDED
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != dropped)
            .collect();
        agent.limit_capabilities(&kept);
        let (status, log) = agent.run_expecting_refusal();
        assert_eq!(status.code(), Some(77), "without {name}: {log}");
        assert!(
            log.contains(&format!("needs {name} (")),
            "without {name}: {log}"
        );
        for (other, other_name) in NEEDED {
            if other != dropped {
                assert!(!log.contains(other_name), "only {name} is missing: {log}");
            }
        }
        assert!(!agent.pin_path.exists(), "without {name}: no pins");
        assert!(
            Agent::attached(cg.path()).is_empty(),
            "without {name}: nothing attached"
        );
    }
}
