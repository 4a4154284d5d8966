//! Steering in the real kernel: a probe process in a throwaway cgroup connects to a virtual
//! address; loopback servers count what they accepted. Needs root.

use std::{net::SocketAddr, time::Duration};

use sluice_tests::{Agent, Backend, TestCgroup, probe, root_or_skip, tag, unused_port, z_score};

fn vip(ip: &str) -> SocketAddr {
    format!("{ip}:{}", unused_port(ip)).parse().expect("vip")
}

fn service(
    name: &str,
    vip: SocketAddr,
    share: f64,
    stable: &[&Backend],
    canary: &[&Backend],
) -> String {
    let list = |bs: &[&Backend]| {
        bs.iter()
            .map(|b| format!("\"{}\"", b.addr))
            .map(|a| format!("{{address: {a}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "  - name: {name}\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: {share}\n    \
         stable: [{}]\n    canary: [{}]\n",
        list(stable),
        list(canary)
    )
}

#[test]
fn split_follows_the_share_at_half_one_ten_and_fifty_percent() {
    if !root_or_skip("split_follows_the_share") {
        return;
    }
    let t = tag("split");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = vip("127.77.1.1");
    let agent = Agent::start(&t, &cg, &service("web", vip, 0.0, &[&stable], &[&canary]));

    // (share %, connections): enough that the canary expects about 200+ connections.
    for (share, n) in [
        (1.0, 20_000u64),
        (10.0, 5_000),
        (50.0, 2_000),
        (0.5, 40_000),
    ] {
        agent.weight("web", share);
        let (s0, c0) = (stable.accepted(), canary.accepted());
        let r = probe(Some(&cg), vip, n);
        assert!(r.errors.is_empty(), "errors at {share}%: {:?}", r.errors);
        assert_eq!(r.total(), n);
        assert_eq!(r.peer_vip, n, "getpeername must return the virtual address");
        // What the servers accepted is what the client was answered by.
        assert_eq!(stable.accepted() - s0, r.from("stable"));
        assert_eq!(canary.accepted() - c0, r.from("canary"));
        let z = z_score(r.from("canary"), n, share / 100.0);
        eprintln!(
            "share {share}%: canary {} of {n} (z = {z:.2})",
            r.from("canary")
        );
        assert!(
            z.abs() < 4.0,
            "canary got {} of {n} at {share}% (z = {z:.2})",
            r.from("canary")
        );
    }
    let total = 20_000 + 5_000 + 2_000 + 40_000;
    let steered = agent.counter("web", "steered_stable") + agent.counter("web", "steered_canary");
    assert_eq!(
        steered, total,
        "the kernel counted every steered connection once"
    );
    assert_eq!(agent.counter("web", "peername_rewritten"), total);
}

#[test]
fn backend_weights_hold_inside_a_version() {
    if !root_or_skip("backend_weights_hold_inside_a_version") {
        return;
    }
    let t = tag("weights");
    let cg = TestCgroup::new(&t);
    let (a, b) = (
        Backend::start("127.0.0.1", "a"),
        Backend::start("127.0.0.1", "b"),
    );
    let vip = vip("127.77.1.2");
    let yaml = format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    \
         stable: [{{address: \"{}\", weight: 3}}, {{address: \"{}\", weight: 1}}]\n",
        a.addr, b.addr
    );
    let _agent = Agent::start(&t, &cg, &yaml);
    let n = 8_000;
    let r = probe(Some(&cg), vip, n);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(a.accepted(), r.from("a"));
    assert_eq!(b.accepted(), r.from("b"));
    let z = z_score(r.from("a"), n, 0.75);
    assert!(
        z.abs() < 4.0,
        "weight 3:1 gave a = {} of {n} (z = {z:.2})",
        r.from("a")
    );
}

#[test]
fn processes_outside_the_cgroup_and_other_addresses_are_untouched() {
    if !root_or_skip("processes_outside_the_cgroup_are_untouched") {
        return;
    }
    let t = tag("outside");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = vip("127.77.1.3");
    let agent = Agent::start(&t, &cg, &service("web", vip, 50.0, &[&stable], &[&canary]));

    // Outside the cgroup the virtual address is just an address nobody listens on.
    let r = probe(None, vip, 20);
    assert_eq!(r.total(), 0);
    assert_eq!(
        r.errors.get("ConnectionRefused"),
        Some(&20),
        "{:?}",
        r.errors
    );
    assert_eq!(stable.accepted() + canary.accepted(), 0);

    // Inside the cgroup, a connection to a backend's own address is not rewritten.
    let r = probe(Some(&cg), stable.addr, 50);
    assert_eq!(r.from("stable"), 50);
    assert_eq!(r.peer_vip, 50, "peer is the address connected to");
    assert_eq!(canary.accepted(), 0);
    assert_eq!(
        agent.counter("web", "steered_stable") + agent.counter("web", "steered_canary"),
        0
    );
}

#[test]
fn ipv6_and_v4_mapped_callers_are_steered() {
    if !root_or_skip("ipv6_and_v4_mapped_callers_are_steered") {
        return;
    }
    let t = tag("ipv6");
    let cg = TestCgroup::new(&t);
    let (s6, c6) = (
        Backend::start("::1", "stable6"),
        Backend::start("::1", "canary6"),
    );
    let (s4, c4) = (
        Backend::start("127.0.0.1", "stable4"),
        Backend::start("127.0.0.1", "canary4"),
    );
    let vip6: SocketAddr = format!("[::1]:{}", unused_port("::1"))
        .parse()
        .expect("vip6");
    let vip4 = vip("127.77.1.4");
    let yaml =
        service("web6", vip6, 50.0, &[&s6], &[&c6]) + &service("web4", vip4, 50.0, &[&s4], &[&c4]);
    let _agent = Agent::start(&t, &cg, &yaml);

    let n = 2_000;
    let r = probe(Some(&cg), vip6, n);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.peer_vip, n);
    assert_eq!(s6.accepted() + c6.accepted(), n);
    assert!(z_score(r.from("canary6"), n, 0.5).abs() < 4.0, "{r:?}");

    // An IPv6 socket connecting to the v4-mapped form of an IPv4 virtual address.
    let mapped: SocketAddr = format!("[::ffff:{}]:{}", vip4.ip(), vip4.port())
        .parse()
        .expect("mapped");
    let r = probe(Some(&cg), mapped, n);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.peer_vip, n,
        "getpeername6 returns the v4-mapped virtual address"
    );
    assert_eq!(s4.accepted() + c4.accepted(), n);
    assert!(z_score(r.from("canary4"), n, 0.5).abs() < 4.0, "{r:?}");
}

#[test]
fn share_change_reaches_the_next_connection_and_open_ones_stay() {
    if !root_or_skip("share_change_reaches_the_next_connection") {
        return;
    }
    use std::io::{BufRead as _, Write as _};
    let t = tag("change");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let stable2 = Backend::start("127.0.0.1", "stable2");
    let vip = vip("127.77.1.5");
    let agent = Agent::start(&t, &cg, &service("web", vip, 0.0, &[&stable], &[&canary]));

    let (mut hold, mut out, mut line) = sluice_tests::hold_probe(&cg, vip);
    assert!(
        line.contains("\"stable\""),
        "held connection started on stable: {line}"
    );

    // Every connection after the command returns sees the new share, the first included.
    agent.weight("web", 100.0);
    let r = probe(Some(&cg), vip, 200);
    assert_eq!(r.from("canary"), 200, "{r:?}");
    agent.weight("web", 0.0);
    let r = probe(Some(&cg), vip, 200);
    assert_eq!(r.from("stable"), 200, "{r:?}");

    // A new backend set (a new generation of slots) also applies at once...
    agent.write_config(&cg, &service("web", vip, 0.0, &[&stable2], &[&canary]));
    agent.wait_log("configuration applied", 1, Duration::from_secs(5));
    let r = probe(Some(&cg), vip, 200);
    assert_eq!(r.from("stable2"), 200, "{r:?}");

    // ...while the connection opened before all of it still talks to its backend.
    hold.stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    line.clear();
    out.read_line(&mut line).expect("second line");
    assert!(line.contains("\"backend_after\":\"stable\""), "{line}");
    assert!(hold.wait().expect("hold exit").success());
}

#[test]
fn empty_canary_falls_back_to_stable_and_is_counted() {
    if !root_or_skip("empty_canary_falls_back_to_stable") {
        return;
    }
    let t = tag("fallback");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let vip = vip("127.77.1.6");
    let agent = Agent::start(&t, &cg, &service("web", vip, 100.0, &[&stable], &[]));
    let r = probe(Some(&cg), vip, 300);
    assert_eq!(r.from("stable"), 300, "{r:?}");
    assert_eq!(stable.accepted(), 300);
    assert_eq!(agent.counter("web", "canary_empty_fallback"), 300);
}

#[test]
fn segments_keep_unlisted_callers_on_stable() {
    if !root_or_skip("segments_keep_unlisted_callers_on_stable") {
        return;
    }
    let t = tag("segment");
    let cg = TestCgroup::new(&t);
    let (team_a, team_b) = (cg.child("team-a"), cg.child("team-b"));
    let team_a_pod = team_a.child("pod");
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = vip("127.77.1.7");
    let yaml = service("web", vip, 100.0, &[&stable], &[&canary])
        + &format!("    segment: [\"{}\"]\n", team_a.path().display());
    let agent = Agent::start(&t, &cg, &yaml);

    let r = probe(Some(&team_a), vip, 100);
    assert_eq!(
        r.from("canary"),
        100,
        "a listed cgroup reaches the canary: {r:?}"
    );
    let r = probe(Some(&team_a_pod), vip, 100);
    assert_eq!(
        r.from("canary"),
        100,
        "so does a cgroup below a listed one: {r:?}"
    );
    let r = probe(Some(&team_b), vip, 100);
    assert_eq!(
        r.from("stable"),
        100,
        "an unlisted cgroup stays on stable: {r:?}"
    );
    let r = probe(Some(&cg), vip, 100);
    assert_eq!(r.from("stable"), 100, "so does the parent: {r:?}");
    assert_eq!(stable.accepted(), 200);
    assert_eq!(canary.accepted(), 200);
    assert_eq!(agent.counter("web", "segment_excluded"), 200);
    drop(agent);
    drop(team_a_pod);
}
