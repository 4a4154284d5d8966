//! Backends discovered by DNS, in the real kernel: BIND on loopback answers for the names,
//! the test changes its records (nsupdate), stops it, breaks its zone; clients in the steered
//! cgroup connect to the virtual address; loopback servers count what they accepted. Needs
//! root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, Backend, TestCgroup,
    dns::DnsServer,
    http::{Behaviour, HttpBackend, Scraped},
    load::{Load, unix_ms},
    probe, root_or_skip, tag, unused_port, z_score,
};

/// The records' TTL, and the agent's lower bound on it: the agent asks again every second.
const TTL: u32 = 1;
/// Longest a DNS change may take to reach every new connection: one TTL, the lookup and the
/// apply (on loopback, milliseconds), with room for a loaded CI machine.
const FOLLOW_LAG: Duration = Duration::from_millis(2_000);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn discovery(dns: &DnsServer) -> String {
    format!(
        "discovery: {{nameservers: [\"{}\"], min_ttl: {TTL}s, max_ttl: 2s, timeout: 500ms}}",
        dns.addr
    )
}

/// A port free on every address of `ips` (backends of one name share a port).
fn common_port(ips: &[&str]) -> u16 {
    loop {
        let port = unused_port(ips[0]);
        if ips
            .iter()
            .all(|i| std::net::TcpListener::bind(SocketAddr::new(ip(i), port)).is_ok())
        {
            return port;
        }
    }
}

/// An agent for `services`, its names answered by `dns`, started.
fn start_agent(t: &str, cg: &TestCgroup, dns: &DnsServer, services: &str) -> Agent {
    let mut agent = Agent::prepare(t, cg, "");
    agent.write_raw_config(&agent.config_text_with(cg, &discovery(dns), services));
    agent.spawn();
    agent
}

fn named_service(vip: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    \
         stable: [{{dns: \"{}\", port: {port}}}]\n    \
         canary: [{{dns: \"{}\", port: {port}}}]\n{extra}",
        DnsServer::name("stable"),
        DnsServer::name("canary")
    )
}

fn vip(ipv4: &str) -> SocketAddr {
    format!("{ipv4}:{}", unused_port(ipv4))
        .parse()
        .expect("vip")
}

/// The service `web`'s canary name as `sluice status` shows it (null before it has one).
fn canary_name(agent: &Agent) -> serde_json::Value {
    agent.service("web")["names"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["role"] == "canary")
        .cloned()
        .unwrap_or_default()
}

/// A per-version series of the service `web`, as its `/metrics` shows it now.
fn web_series(agent: &Agent, name: &str, version: &str, extra: &[(&str, &str)]) -> u64 {
    let (scraped, _) = Scraped::fetch(agent.metrics_addr());
    let mut labels = vec![("service", "web"), ("version", version)];
    labels.extend_from_slice(extra);
    scraped.get(name, &labels)
}

/// Waits until `sluice status` shows the service's canary name resolving to `n` addresses.
fn wait_canary_addresses(agent: &Agent, n: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let canary = canary_name(agent);
        if canary["addresses"].as_array().is_some_and(|a| a.len() == n) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "the canary name never resolved to {n} addresses: {canary:#}\nlog:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rollout_decisions(agent: &Agent) -> Vec<String> {
    agent.rollout("web")["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["action"].as_str().expect("action").to_owned())
        .collect()
}

#[test]
fn a_canary_scaling_up_and_down_is_followed_within_a_ttl_and_stays_one_rollout() {
    if !root_or_skip("a_canary_scaling_up_and_down_is_followed") {
        return;
    }
    let t = tag("dns-scale");
    let cg = TestCgroup::new(&t);
    let dns = DnsServer::start(&t, TTL);
    let ips = ["127.0.53.1", "127.0.53.11", "127.0.53.12", "127.0.53.13"];
    let port = common_port(&ips);
    let at = |i: &str| SocketAddr::new(ip(i), port);
    let stable = Backend::start_at(at(ips[0]), "s1").expect("s1");
    let c: Vec<Backend> = ips[1..]
        .iter()
        .enumerate()
        .map(|(n, i)| Backend::start_at(at(i), &format!("c{}", n + 1)).expect("canary"))
        .collect();
    dns.set(&DnsServer::name("stable"), &[ip(ips[0])]);
    dns.set(&DnsServer::name("canary"), &[ip(ips[1]), ip(ips[2])]);
    let vip = vip("127.77.53.1");
    // A rollout held at its first step (50 %): the test watches that pods coming and going
    // neither restart it nor move it.
    let rollout = "    rollout:\n      steps: [50, 60]\n      interval: 1h\n      \
                   min_samples: 1000000\n      deadline: 2h\n      \
                   checks: {max_connect_error_percent: 50}\n";
    let agent = start_agent(&t, &cg, &dns, &named_service(vip, port, rollout));
    agent.wait_phase("web", "Progressing", Duration::from_secs(10));
    let before = rollout_decisions(&agent);
    assert_eq!(
        before,
        vec!["start", "step_up"],
        "{:#}",
        agent.rollout("web")
    );

    let r = probe(Some(&cg), vip, 2_000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.from("c3"),
        0,
        "c3 is not in the answer yet: {:?}",
        r.replies
    );
    assert!(r.from("c1") > 0 && r.from("c2") > 0, "{:?}", r.replies);

    // Scale-up: a third pod joins the canary name.
    dns.set(
        &DnsServer::name("canary"),
        &[ip(ips[1]), ip(ips[2]), ip(ips[3])],
    );
    let changed = Instant::now();
    let followed = loop {
        let r = probe(Some(&cg), vip, 20);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        if r.from("c3") > 0 {
            break changed.elapsed();
        }
        assert!(
            changed.elapsed() < FOLLOW_LAG,
            "c3 got no connection {FOLLOW_LAG:?} after joining the answer; log:\n{}",
            agent.log()
        );
    };
    eprintln!("MEASURED dns change to first connection to the new pod: {followed:?}");
    // Its share: a third of the canary's connections each.
    let r = probe(Some(&cg), vip, 6_000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let canary: u64 = ["c1", "c2", "c3"].iter().map(|n| r.from(n)).sum();
    for name in ["c1", "c2", "c3"] {
        let z = z_score(r.from(name), canary, 1.0 / 3.0);
        assert!(
            z.abs() < 4.5,
            "{name}: {} of {canary} (z = {z:.2})",
            r.from(name)
        );
    }
    let z = z_score(canary, 6_000, 0.5);
    assert!(z.abs() < 4.5, "canary share {canary}/6000 (z = {z:.2})");
    assert_eq!(
        rollout_decisions(&agent),
        before,
        "the same canary name is the same rollout"
    );
    assert_eq!(agent.rollout("web")["step"], 1);

    // A pod gone not-ready leaves the answer: it gets no new connection after the next
    // resolution.
    dns.set(&DnsServer::name("canary"), &[ip(ips[1]), ip(ips[2])]);
    let gone = wait_canary_addresses(&agent, 2, FOLLOW_LAG);
    eprintln!("MEASURED dns change to the agent steering without the pod: {gone:?}");
    let c3_before = c[2].accepted();
    let r = probe(Some(&cg), vip, 3_000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from("c3"), 0, "{:?}", r.replies);
    assert_eq!(
        c[2].accepted(),
        c3_before,
        "the server saw no new connection"
    );
    assert!(r.from("c1") > 0 && r.from("c2") > 0 && stable.accepted() > 0);
    assert_eq!(rollout_decisions(&agent), before);

    // sluice_backends counts what the kernel holds.
    assert_eq!(web_series(&agent, "sluice_backends", "canary", &[]), 2);
    assert_eq!(web_series(&agent, "sluice_backends", "stable", &[]), 1);
}

#[test]
fn a_dns_outage_servfail_and_empty_answer_keep_the_last_good_set() {
    if !root_or_skip("a_dns_outage_keeps_the_last_good_set") {
        return;
    }
    let t = tag("dns-fail");
    let cg = TestCgroup::new(&t);
    let mut dns = DnsServer::start(&t, TTL);
    let ips = ["127.0.54.1", "127.0.54.11", "127.0.54.12"];
    let port = common_port(&ips);
    let at = |i: &str| SocketAddr::new(ip(i), port);
    let _s1 = Backend::start_at(at(ips[0]), "s1").expect("s1");
    let _c1 = Backend::start_at(at(ips[1]), "c1").expect("c1");
    let _c2 = Backend::start_at(at(ips[2]), "c2").expect("c2");
    dns.set(&DnsServer::name("stable"), &[ip(ips[0])]);
    dns.set(&DnsServer::name("canary"), &[ip(ips[1]), ip(ips[2])]);
    let vip = vip("127.77.54.1");
    let agent = start_agent(
        &t,
        &cg,
        &dns,
        &named_service(vip, port, "    canary_percent: 50\n"),
    );
    wait_canary_addresses(&agent, 2, Duration::from_secs(5));

    let steer_as_before = |phase: &str| {
        let r = probe(Some(&cg), vip, 1_000);
        assert!(
            r.errors.is_empty(),
            "{phase}: failed connections {:?}",
            r.errors
        );
        assert_eq!(r.total(), 1_000, "{phase}");
        for name in ["s1", "c1", "c2"] {
            assert!(r.from(name) > 100, "{phase}: {name} {:?}", r.replies);
        }
    };
    let lookups = |result: &str| {
        web_series(
            &agent,
            "sluice_discovery_lookups_total",
            "canary",
            &[("result", result)],
        )
    };
    // Until the count of `results` grows by at least two lookups (a retry included).
    let wait_failures = |results: &[&str]| {
        let count = || results.iter().map(|r| lookups(r)).sum::<u64>();
        let start = count();
        let end = Instant::now() + Duration::from_secs(15);
        while count() < start + 2 {
            assert!(
                Instant::now() < end,
                "no {results:?} lookups counted: {:#}",
                canary_name(&agent)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    steer_as_before("answering");

    // 1. Nothing answers.
    dns.stop();
    wait_failures(&["timeout", "unreachable"]);
    let n = canary_name(&agent);
    assert_eq!(n["addresses"].as_array().map(Vec::len), Some(2), "{n:#}");
    assert!(n["failures_in_a_row"].as_u64() >= Some(2), "{n:#}");
    steer_as_before("server stopped");

    // 2. SERVFAIL (the zone does not load).
    dns.restart_broken();
    wait_failures(&["servfail"]);
    steer_as_before("servfail");

    // 3. An empty answer: the name is there, with no A record.
    dns.restart();
    dns.set(&DnsServer::name("canary"), &[ip("fd00::53")]);
    wait_failures(&["empty"]);
    steer_as_before("empty answer");
    let n = canary_name(&agent);
    assert_eq!(n["result"], "empty", "{n:#}");
    assert_eq!(n["addresses"].as_array().map(Vec::len), Some(2), "{n:#}");
    assert_eq!(
        web_series(&agent, "sluice_discovery_names_failing", "canary", &[]),
        1
    );
    assert_eq!(web_series(&agent, "sluice_backends", "canary", &[]), 2);
    // One log line per change of result, not one per failed lookup: stopped, servfail,
    // empty (each failed two or more times).
    let failed_lines = agent
        .log()
        .lines()
        .filter(|l| l.contains("lookup failed: steering stays on its last good set"))
        .filter(|l| l.contains("canary.sluice.test"))
        .count();
    assert!(
        (3..=4).contains(&failed_lines),
        "{failed_lines} lines:\n{}",
        agent.log()
    );

    // Back: a new answer is followed again.
    dns.set(&DnsServer::name("canary"), &[ip(ips[1])]);
    wait_canary_addresses(&agent, 1, FOLLOW_LAG + Duration::from_secs(2));
    let r = probe(Some(&cg), vip, 1_000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from("c2"), 0, "{:?}", r.replies);
    assert!(r.from("c1") > 100, "{:?}", r.replies);
}

#[test]
fn a_name_that_never_resolved_serves_the_literals_or_refuses_to_start() {
    if !root_or_skip("a_name_that_never_resolved") {
        return;
    }
    let t = tag("dns-never");
    let cg = TestCgroup::new(&t);
    let dns = DnsServer::start(&t, TTL);
    let literal = Backend::start("127.0.55.1", "literal");
    let vip = vip("127.77.55.1");
    let service = format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    \
         stable: [{{address: \"{}\"}}, {{dns: \"{}\", port: 8080}}]\n",
        literal.addr,
        DnsServer::name("missing")
    );
    // refuse: exits before touching the kernel, naming the name.
    let agent = Agent::prepare(&t, &cg, "");
    let refuse = format!(
        "discovery: {{nameservers: [\"{}\"], min_ttl: 1s, timeout: 500ms, unresolved_at_start: refuse}}",
        dns.addr
    );
    agent.write_raw_config(&agent.config_text_with(&cg, &refuse, &service));
    let (status, log) = agent.run_expecting_refusal();
    assert!(!status.success());
    assert!(
        log.contains("missing.sluice.test.") && log.contains("nxdomain"),
        "{log}"
    );
    assert!(
        !agent.maps_dir().exists(),
        "a refusal pins nothing: {}",
        agent.maps_dir().display()
    );
    drop(agent);

    // serve (the default): the stable version steers to its literal backend meanwhile.
    let agent = start_agent(&t, &cg, &dns, &service);
    let r = probe(Some(&cg), vip, 500);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from("literal"), 500, "{:?}", r.replies);
    assert!(
        agent.log().contains("a name did not resolve"),
        "{}",
        agent.log()
    );
}

/// Which canary backends are in the answer, second by second: the first half flaps c1 in
/// and out beside c2, the second half c3 beside c2; c4 listens and is never in an answer.
fn flap_set(second: u32) -> &'static [usize] {
    match (second < 15, second.is_multiple_of(2)) {
        (true, true) => &[1, 2],
        (true, false) => &[2],
        (false, true) => &[2, 3],
        (false, false) => &[3],
    }
}

#[test]
fn a_flapping_answer_loses_no_connection_and_never_half_applies() {
    if !root_or_skip("a_flapping_answer_loses_no_connection") {
        return;
    }
    let t = tag("dns-flap");
    let cg = TestCgroup::new(&t);
    let dns = DnsServer::start(&t, TTL);
    let ips = [
        "127.0.56.1",
        "127.0.56.11",
        "127.0.56.12",
        "127.0.56.13",
        "127.0.56.14",
    ];
    let port = common_port(&ips);
    let at = |i: &str| SocketAddr::new(ip(i), port);
    let backends: Vec<HttpBackend> = ips
        .iter()
        .map(|i| HttpBackend::start_at(at(i), Behaviour::default()).expect("backend"))
        .collect();
    dns.set(&DnsServer::name("stable"), &[ip(ips[0])]);
    let set_canary = |members: &[usize]| {
        let addrs: Vec<IpAddr> = members.iter().map(|m| ip(ips[*m])).collect();
        dns.set(&DnsServer::name("canary"), &addrs);
    };
    set_canary(flap_set(0));
    let vip = vip("127.77.56.1");
    let agent = start_agent(
        &t,
        &cg,
        &dns,
        &named_service(vip, port, "    canary_percent: 50\n"),
    );
    wait_canary_addresses(&agent, 2, Duration::from_secs(5));

    // 30 s of answers changing every second, under 200 new connections a second.
    let load = Load::start(&cg, vip, 200, 40.0);
    let mut changes: Vec<(u64, &'static [usize])> = vec![(unix_ms(), flap_set(0))];
    let start = Instant::now();
    for second in 1..30u32 {
        let due = Duration::from_secs(u64::from(second));
        std::thread::sleep(due.saturating_sub(start.elapsed()));
        // Stamped before the server changes: nothing can follow a change before its stamp.
        changes.push((unix_ms(), flap_set(second)));
        set_canary(flap_set(second));
    }
    std::thread::sleep(Duration::from_secs(1));
    let result = load.stop();
    let end = unix_ms();

    assert_eq!(result.failed(), 0, "failed requests: {:?}", result.failures);
    assert!(result.requests() > 4_000, "{} requests", result.requests());
    // Every connection a canary backend accepted: it was in the answer at some moment of
    // the FOLLOW_LAG before (the kernel follows the answer within that, and a half-applied
    // or stale set would show as a connection outside it).
    let lag = FOLLOW_LAG.as_millis() as u64;
    let in_answer = |member: usize, at: u64| {
        changes.iter().enumerate().any(|(i, (from, set))| {
            let until = changes.get(i + 1).map_or(end, |(t, _)| *t);
            set.contains(&member) && *from <= at && until + lag >= at
        })
    };
    let mut per_backend = BTreeMap::new();
    for (member, b) in backends.iter().enumerate().skip(1) {
        let seen = b.seen();
        let outside: Vec<u64> = seen
            .accepted_at
            .iter()
            .copied()
            .filter(|at| !in_answer(member, *at))
            .collect();
        assert!(
            outside.is_empty(),
            "c{member} accepted {} connections when it had not been in the answer for \
             {lag} ms (first at {:?}); changes: {changes:?}",
            outside.len(),
            outside.first()
        );
        per_backend.insert(format!("c{member}"), seen.connections);
    }
    eprintln!("MEASURED flapping: connections per canary backend {per_backend:?}");
    assert_eq!(per_backend["c4"], 0, "c4 was never in an answer");
    assert!(
        per_backend["c1"] > 0 && per_backend["c3"] > 0,
        "{per_backend:?}"
    );
    // The kernel never missed a slot or found a version without backends.
    assert_eq!(agent.counter("web", "slot_missing"), 0);
    assert_eq!(agent.counter("web", "no_backend"), 0);
}

#[test]
fn aaaa_records_and_a_named_virtual_address_steer_too() {
    if !root_or_skip("aaaa_records_and_a_named_virtual_address") {
        return;
    }
    let t = tag("dns-v6");
    let cg = TestCgroup::new(&t);
    let dns = DnsServer::start(&t, TTL);
    // IPv6: the only loopback address is ::1, so one backend, found by its AAAA record.
    let v6_backend = Backend::start("::1", "v6");
    dns.set(&DnsServer::name("v6-stable"), &[ip("::1"), ip("127.0.0.1")]);
    let v6_vip: SocketAddr = format!("[::1]:{}", unused_port("::1"))
        .parse()
        .expect("vip");
    // IPv4, with the virtual address itself given by name (a Service's ClusterIP).
    let v4_backend = Backend::start("127.0.57.1", "v4");
    let v4_vip = vip("127.77.57.1");
    dns.set(&DnsServer::name("web-vip"), &[v4_vip.ip()]);
    let services = format!(
        "  - name: v6\n    virtual_addresses: [\"{v6_vip}\"]\n    \
         stable: [{{dns: \"{}\", port: {}}}]\n  \
         - name: v4\n    virtual_addresses: [{{dns: \"{}\", port: {}}}]\n    \
         stable: [{{address: \"{}\"}}]\n",
        DnsServer::name("v6-stable"),
        v6_backend.addr.port(),
        DnsServer::name("web-vip"),
        v4_vip.port(),
        v4_backend.addr,
    );
    let agent = start_agent(&t, &cg, &dns, &services);
    let r = probe(Some(&cg), v6_vip, 200);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from("v6"), 200, "{:?}", r.replies);
    assert_eq!(v6_backend.accepted(), 200);
    let r = probe(Some(&cg), v4_vip, 200);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from("v4"), 200, "{:?}", r.replies);
    assert_eq!(
        r.peer_vip, 200,
        "getpeername shows the resolved virtual address"
    );
    let v4 = agent.service("v4");
    assert_eq!(v4["virtual_addresses"][0], v4_vip.to_string(), "{v4:#}");
    // Only the AAAA record is a backend of the IPv6 service.
    assert_eq!(
        agent.service("v6")["stable"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn a_reload_to_a_name_resolves_it_before_the_kernel_changes() {
    if !root_or_skip("a_reload_to_a_name_resolves_it_first") {
        return;
    }
    let t = tag("dns-reload");
    let cg = TestCgroup::new(&t);
    let dns = DnsServer::start(&t, TTL);
    let literal = Backend::start("127.0.58.1", "literal");
    let named = Backend::start("127.0.58.2", "named");
    dns.set(&DnsServer::name("pods"), &[named.addr.ip()]);
    let vip = vip("127.77.58.1");
    let with = |stable: String| {
        format!("  - name: web\n    virtual_addresses: [\"{vip}\"]\n    stable: [{stable}]\n")
    };
    let mut agent = Agent::prepare(&t, &cg, "");
    let config = |stable: String| agent.config_text_with(&cg, &discovery(&dns), &with(stable));
    let literal_config = config(format!("{{address: \"{}\"}}", literal.addr));
    let named_config = config(format!(
        "{{dns: \"{}\", port: {}}}",
        DnsServer::name("pods"),
        named.addr.port()
    ));
    agent.write_raw_config(&literal_config);
    agent.spawn();
    assert_eq!(probe(Some(&cg), vip, 100).from("literal"), 100);
    // The first configuration needed no resolver lookups; this one's name is looked up
    // before it is applied: the first connections after the apply already reach its pod (a
    // stable version without backends would leave them to the unserved virtual address).
    agent.write_raw_config(&named_config);
    agent.signal(libc::SIGHUP);
    agent.wait_log("configuration applied", 1, Duration::from_secs(10));
    let r = probe(Some(&cg), vip, 100);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from("named"), 100, "{:?}", r.replies);
    // And the agent says so in that order: the name's set, then the apply.
    let log = agent.log();
    let resolved = log
        .find("a name's set changed")
        .expect("the name's set logged");
    let applied = log.find("configuration applied").expect("the apply logged");
    assert!(resolved < applied, "{log}");
}
