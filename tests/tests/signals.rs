//! Golden signals measured in the kernel, held to what the client and the servers saw.
//! Needs root.

use std::{net::SocketAddr, time::Duration};

use sluice_tests::{
    Agent, Backend, TestCgroup, hold_probe,
    http::{Behaviour, HttpBackend, Scraped},
    http_probe, probe, root_or_skip, tag, unused_port,
};

fn vip(ip: &str) -> SocketAddr {
    format!("{ip}:{}", unused_port(ip)).parse().expect("vip")
}

fn http_service(
    name: &str,
    vip: SocketAddr,
    share: f64,
    stable: SocketAddr,
    canary: SocketAddr,
) -> String {
    format!(
        "  - name: {name}\n    virtual_addresses: [\"{vip}\"]\n    l7: http1\n    canary_percent: {share}\n    \
         stable: [{{address: \"{stable}\"}}]\n    canary: [{{address: \"{canary}\"}}]\n"
    )
}

const VERSIONS: [&str; 2] = ["stable", "canary"];

#[test]
fn every_counter_equals_what_clients_and_servers_saw() {
    if !root_or_skip("every_counter_equals_what_clients_and_servers_saw") {
        return;
    }
    let t = tag("exact");
    let cg = TestCgroup::new(&t);
    let backends = [
        HttpBackend::start("127.0.0.1", Behaviour::default()),
        HttpBackend::start("127.0.0.1", Behaviour::default()),
    ];
    let dead = vip("127.0.0.1"); // nothing listens there: connects to it are refused
    let web = vip("127.77.5.1");
    let refusing = vip("127.77.5.2");
    // A plain TCP service (no l7): its client closes with a reset, which the kernel counts
    // as sent; greeting backends answer each connection with their name.
    let plain = vip("127.77.5.4");
    let greeters = [
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    ];
    let yaml = http_service("web", web, 50.0, backends[0].addr, backends[1].addr)
        + &http_service("refusing", refusing, 100.0, backends[0].addr, dead)
        + &format!(
            "  - name: plain\n    virtual_addresses: [\"{plain}\"]\n    canary_percent: 50\n    \
             stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n",
            greeters[0].addr, greeters[1].addr
        );
    let mut agent = Agent::start(&t, &cg, &yaml);

    // Unrelated traffic at the same time, to the same servers: from outside the cgroup
    // through nothing, and from inside the cgroup straight to a backend (not a virtual
    // address). It answers 418, a code the steered traffic never asks for.
    let noise = std::thread::spawn({
        let (a, b) = (backends[0].addr, backends[1].addr);
        let cg_path = cg.path().to_owned();
        move || {
            let outside = http_probe(None, a, 20, &["/status/418"; 3]);
            let inside_cg = TestCgroup::at_existing(&cg_path);
            let inside = http_probe(Some(&inside_cg), b, 20, &["/status/418"; 3]);
            std::mem::forget(inside_cg);
            (outside, inside)
        }
    });
    let paths = [
        "/status/200",
        "/status/404",
        "/status/503",
        "/status/201",
        "/status/200",
    ];
    let main = http_probe(Some(&cg), web, 60, &paths);
    let cont = http_probe(Some(&cg), web, 10, &["/continue"]);
    let resets = http_probe(Some(&cg), web, 10, &["/status/200", "/reset"]);
    let refused = http_probe(Some(&cg), refusing, 20, &["/status/200"]);
    let plain_seen = probe(Some(&cg), plain, 15);
    assert_eq!(plain_seen.total(), 15, "{plain_seen:?}");
    let (outside, inside) = noise.join().expect("noise");

    // What the client saw.
    assert!(main.errors.is_empty(), "{main:?}");
    assert_eq!(main.statuses.values().sum::<u64>(), 300);
    assert_eq!(cont.statuses.get(&200), Some(&10));
    assert_eq!(resets.statuses.get(&200), Some(&10));
    assert_eq!(
        resets.errors.values().sum::<u64>(),
        10,
        "every /reset was reset: {resets:?}"
    );
    assert_eq!(
        refused.errors.get("ConnectionRefused"),
        Some(&20),
        "{refused:?}"
    );
    assert_eq!(outside.statuses.get(&418), Some(&60));
    assert_eq!(inside.statuses.get(&418), Some(&60));

    // Let the last closes reach the kernel hooks.
    std::thread::sleep(Duration::from_millis(300));
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    let mut total_responses = 0;
    for (v, version) in VERSIONS.iter().enumerate() {
        let seen = backends[v].seen();
        fn labels<'a>(version: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
            let mut l = vec![("service", "web"), ("version", version)];
            l.extend_from_slice(extra);
            l
        }
        let l = |extra: &[(&'static str, &'static str)]| labels(version, extra);
        // Connections: what the server accepted, less the unrelated ones it also accepted.
        let unrelated = 20;
        assert_eq!(
            m.get("sluice_connections_established_total", &l(&[])),
            seen.connections - unrelated,
            "{version}"
        );
        assert_eq!(
            m.get("sluice_connections_closed_total", &l(&[])),
            seen.connections - unrelated
        );
        assert_eq!(m.get("sluice_connections_active", &l(&[])), 0);
        assert_eq!(
            m.get("sluice_connect_duration_seconds_count", &l(&[])),
            seen.connections - unrelated
        );
        assert_eq!(
            m.get("sluice_tcp_rtt_seconds_count", &l(&[])),
            seen.connections - unrelated
        );
        assert_eq!(
            m.get("sluice_connection_duration_seconds_count", &l(&[])),
            seen.connections - unrelated
        );
        // Requests and responses, code by code; 418 (unrelated) never counted.
        let unrelated_requests = 60;
        assert_eq!(
            m.get("sluice_http_requests_total", &l(&[])),
            seen.requests - unrelated_requests,
            "{version}"
        );
        for (code, n) in &seen.responses {
            let expect = if *code == 418 { 0 } else { *n };
            let counted = if [200u16, 201, 404, 503].contains(code) {
                m.get(
                    "sluice_http_responses_total",
                    &labels(version, &[("code", code.to_string().as_str())]),
                )
            } else {
                m.get("sluice_http_responses_total", &l(&[("code", "other")]))
            };
            assert_eq!(counted, expect, "{version} code {code}");
            total_responses += expect;
        }
        let final_responses: u64 = seen
            .responses
            .iter()
            .filter(|(c, _)| **c != 418)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            m.get("sluice_http_response_first_byte_seconds_count", &l(&[])),
            final_responses
        );
        assert_eq!(
            m.get("sluice_http_interim_responses_total", &l(&[])),
            seen.interim,
            "100 Continue is interim"
        );
        assert_eq!(
            m.get("sluice_http_requests_total", &l(&[("method", "POST")])),
            seen.interim
        );
        assert_eq!(
            m.get("sluice_http_incomplete_requests_total", &l(&[])),
            seen.resets,
            "reset mid-request"
        );
        assert_eq!(
            m.get("sluice_tcp_resets_received_total", &l(&[])),
            seen.resets
        );
        assert_eq!(m.get("sluice_http_unparseable_total", &l(&[])), 0);
    }
    assert_eq!(total_responses, 300 + 10 + 10);
    // The refusing service: every connect went to the (dead) canary and was refused.
    let r = |version: &'static str, reason: &'static str| {
        m.get(
            "sluice_connections_failed_total",
            &[
                ("service", "refusing"),
                ("version", version),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(r("canary", "refused"), 20);
    assert_eq!(
        r("canary", "timeout") + r("canary", "other") + r("stable", "refused"),
        0
    );
    assert_eq!(
        m.get(
            "sluice_connections_established_total",
            &[("service", "refusing")]
        ),
        0
    );
    // The plain service: 15 resets sent (the probe's close), none received, no HTTP series.
    for (version, greeter) in VERSIONS.iter().zip(&greeters) {
        let l = [("service", "plain"), ("version", *version)];
        assert_eq!(
            m.get("sluice_tcp_resets_sent_total", &l),
            plain_seen.from(&greeter.name),
            "{version}"
        );
        assert_eq!(m.get("sluice_tcp_resets_received_total", &l), 0);
        // Each connection received the greeting line and sent nothing (tcp_sock's
        // bytes_received and bytes_acked, read where the agent found them in BTF).
        let greeting = greeter.name.len() as u64 + 1;
        assert_eq!(
            m.get("sluice_received_bytes_total", &l),
            plain_seen.from(&greeter.name) * greeting,
            "{version}"
        );
        assert_eq!(m.get("sluice_sent_bytes_total", &l), 0, "{version}");
    }
    assert_eq!(
        m.get("sluice_tcp_resets_sent_total", &[("service", "plain")]),
        15
    );
    assert!(
        !m.0.keys().any(|(n, l)| n.starts_with("sluice_http")
            && l.contains(&("service".into(), "plain".into())))
    );

    // Counters survive a restart: no reset, no double count.
    let before = m;
    agent.kill9();
    agent.spawn();
    let (after, _) = Scraped::fetch(agent.metrics_addr());
    for name in [
        "sluice_http_requests_total",
        "sluice_connections_established_total",
        "sluice_http_responses_total",
        "sluice_tcp_resets_received_total",
    ] {
        assert_eq!(
            after.get(name, &[]),
            before.get(name, &[]),
            "{name} after restart"
        );
    }
    // And they go on counting.
    let more = http_probe(Some(&cg), web, 10, &["/status/200"]);
    assert_eq!(more.statuses.get(&200), Some(&10), "{more:?}");
    let (later, _) = Scraped::fetch(agent.metrics_addr());
    assert_eq!(
        later.get("sluice_connections_attempted_total", &[("service", "web")]),
        before.get("sluice_connections_attempted_total", &[("service", "web")]) + 10
    );
}

#[test]
fn a_slow_canary_shows_in_its_time_to_first_byte() {
    if !root_or_skip("a_slow_canary_shows_in_its_time_to_first_byte") {
        return;
    }
    let t = tag("latency");
    let cg = TestCgroup::new(&t);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start(
        "127.0.0.1",
        Behaviour {
            delay: Duration::from_millis(20),
            ..Behaviour::default()
        },
    );
    let web = vip("127.77.5.3");
    let agent = Agent::start(
        &t,
        &cg,
        &http_service("web", web, 50.0, stable.addr, canary.addr),
    );
    let r = http_probe(Some(&cg), web, 40, &["/status/200"; 5]);
    assert_eq!(r.statuses.get(&200), Some(&200), "{r:?}");
    std::thread::sleep(Duration::from_millis(200));
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    let ttfb = "sluice_http_response_first_byte_seconds";
    let canary_median = m.median_bucket(ttfb, &[("service", "web"), ("version", "canary")]);
    let stable_median = m.median_bucket(ttfb, &[("service", "web"), ("version", "stable")]);
    eprintln!("median TTFB bucket: canary le={canary_median}, stable le={stable_median}");
    assert_eq!(
        canary_median, 0.032768,
        "20 ms lies in the exported bucket (16.384 ms, 32.768 ms]"
    );
    assert!(
        stable_median <= 0.001024,
        "stable answers in about 1 ms or less: le={stable_median}"
    );
    for version in VERSIONS {
        let l = [("service", "web"), ("version", version)];
        let established = m.get("sluice_connections_established_total", &l);
        assert_eq!(
            m.get("sluice_connect_duration_seconds_count", &l),
            established
        );
        // The start is taken when the SYN goes out: a loopback handshake takes well under
        // 10 ms, where a missing start would count from boot.
        let mean = m.sum("sluice_connect_duration_seconds_sum", &l) / established as f64;
        assert!(
            established > 0 && mean < 0.010,
            "{version}: mean connect latency {mean} s over {established} connections"
        );
        assert_eq!(m.get("sluice_tcp_rtt_seconds_count", &l), established);
    }
}

/// Real SYN loss on loopback (a listener whose accept queue is full drops SYNs): connects
/// that give up after one SYN retransmission are counted as timeouts, exactly as the
/// clients saw them, with their retransmissions and RTO expiries.
#[test]
fn handshake_timeouts_retransmits_and_rtos_are_counted() {
    if !root_or_skip("handshake_timeouts_retransmits_and_rtos_are_counted") {
        return;
    }
    let t = tag("timeout");
    let cg = TestCgroup::new(&t);
    let (listener, _filler) = sluice_tests::full_listener("127.0.0.1".parse().expect("ip"));
    let stable = listener.local_addr().expect("addr");
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let slow = vip("127.77.5.5");
    let agent = Agent::start(
        &t,
        &cg,
        &http_service("slow", slow, 0.0, stable, canary.addr),
    );

    // Three clients in parallel, two connects each, one SYN retransmission allowed.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let path = cg.path().to_owned();
            std::thread::spawn(move || {
                let cg = TestCgroup::at_existing(&path);
                let r = sluice_tests::syn_limited_probe(&cg, slow, 2, 1);
                std::mem::forget(cg);
                r
            })
        })
        .collect();
    let timed_out: u64 = clients
        .into_iter()
        .map(|c| {
            let r = c.join().expect("client");
            assert_eq!(r.errors.keys().collect::<Vec<_>>(), ["TimedOut"], "{r:?}");
            r.errors["TimedOut"]
        })
        .sum();
    assert_eq!(timed_out, 6);

    let (m, _) = Scraped::fetch(agent.metrics_addr());
    let l = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("service", "slow"), ("version", "stable")];
        l.extend_from_slice(extra);
        l
    };
    assert_eq!(
        m.get(
            "sluice_connections_failed_total",
            &l(&[("reason", "timeout")])
        ),
        timed_out
    );
    assert_eq!(
        m.get(
            "sluice_connections_failed_total",
            &l(&[("reason", "refused")])
        ),
        0
    );
    assert_eq!(m.get("sluice_connections_established_total", &l(&[])), 0);
    // In SYN_SENT every expiry of the retransmission timer either sends the SYN again, which
    // the socket's total_rto counts (as tcp_info's tcpi_total_rto does), or gives up: a
    // timeout. So RTO expiries = retransmitted SYNs, exactly. (How many retransmissions
    // TCP_SYNCNT=1 allows depends on the kernel: 6.x spaces the first SYN retransmissions
    // linearly, tcp_syn_linear_timeouts, and sends two.) Every connect did the same. The
    // failed connect zeroed the socket's counters (tcp_disconnect) before it was destroyed:
    // these were counted as they happened.
    let retransmits = m.get("sluice_tcp_retransmits_total", &l(&[]));
    let rtos = m.get("sluice_tcp_rto_expirations_total", &l(&[]));
    eprintln!("{timed_out} timeouts: {retransmits} retransmitted segments, {rtos} RTO expiries");
    assert!(
        retransmits >= timed_out && retransmits % timed_out == 0,
        "{retransmits} retransmissions"
    );
    assert_eq!(
        rtos, retransmits,
        "every RTO expiry but the last retransmitted a SYN"
    );

    // Retransmissions count as they happen, not when the connection ends: a connect still
    // sending its SYN (a retransmission a second, 6.x's linear timeouts) shows them.
    let mut pending = sluice_tests::spawn_syn_limited_probe(&cg, slow, 6);
    std::thread::sleep(Duration::from_millis(2_600));
    let (live, _) = Scraped::fetch(agent.metrics_addr());
    let live_retransmits = live.get("sluice_tcp_retransmits_total", &l(&[])) - retransmits;
    let timeouts = |m: &Scraped| {
        m.get(
            "sluice_connections_failed_total",
            &l(&[("reason", "timeout")]),
        )
    };
    assert!(
        (1..=3).contains(&live_retransmits),
        "{live_retransmits} SYN retransmissions counted while the connect went on"
    );
    assert_eq!(timeouts(&live), timed_out, "the connect has not ended yet");
    // The client gives up (killed, by its pid): a connect that retransmitted and got no
    // answer is a timeout.
    pending.kill().expect("kill the pending client");
    pending.wait().expect("client exit");
    std::thread::sleep(Duration::from_millis(300));
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    assert_eq!(timeouts(&m), timed_out + 1);
    assert_eq!(
        m.get("sluice_tcp_retransmits_total", &l(&[])),
        m.get("sluice_tcp_rto_expirations_total", &l(&[]))
    );
    drop(listener);
}

/// The lowest service ids keep their signals in a per-CPU array, the others in a per-CPU
/// hash (`sluice_common::metrics::ARRAY_METRICS_SERVICES`): both count, and apart.
#[test]
fn services_past_the_metrics_array_count_in_the_hash() {
    if !root_or_skip("services_past_the_metrics_array_count_in_the_hash") {
        return;
    }
    let t = tag("metricshash");
    let cg = TestCgroup::new(&t);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let array_services = sluice_common::metrics::ARRAY_METRICS_SERVICES;
    // Ids go to services in configuration order, lowest free first: the first service gets
    // id 0 (array), the last one an id past the array (hash).
    let first = vip("127.77.9.1");
    let mut yaml = http_service("first", first, 50.0, stable.addr, canary.addr);
    for i in 0..array_services {
        let filler: SocketAddr = format!("127.78.{}.{}:80", i / 250, 1 + i % 250)
            .parse()
            .expect("filler vip");
        yaml += &http_service(
            &format!("filler-{i}"),
            filler,
            50.0,
            stable.addr,
            canary.addr,
        );
    }
    let last = vip("127.77.9.2");
    yaml += &http_service("last", last, 50.0, stable.addr, canary.addr);
    let agent = Agent::start(&t, &cg, &yaml);
    // 258 services: ids 256 and 257 (the last filler and `last`) live in the hash, two
    // versions each.
    let hash = agent
        .maps_dir()
        .join("SLUICE_METRICS")
        .display()
        .to_string();
    let entries = sluice_tests::bpftool(&["map", "dump", "pinned", &hash]);
    assert_eq!(entries.as_array().map_or(0, Vec::len), 4, "{entries}");

    let r = http_probe(Some(&cg), first, 30, &["/status/200"]);
    assert_eq!(r.statuses.get(&200), Some(&30), "{r:?}");
    let r = http_probe(Some(&cg), last, 40, &["/status/200", "/status/404"]);
    assert_eq!(r.statuses.get(&200), Some(&40), "{r:?}");
    assert_eq!(r.statuses.get(&404), Some(&40), "{r:?}");
    std::thread::sleep(Duration::from_millis(200));
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    let count = |service: &str, name: &str| m.get(name, &[("service", service)]);
    assert_eq!(count("first", "sluice_http_requests_total"), 30);
    assert_eq!(count("first", "sluice_connections_established_total"), 30);
    assert_eq!(count("last", "sluice_http_requests_total"), 80);
    assert_eq!(count("last", "sluice_connections_established_total"), 40);
    assert_eq!(
        m.get(
            "sluice_http_responses_total",
            &[("service", "last"), ("code", "404")]
        ),
        40
    );
    assert_eq!(count("filler-0", "sluice_http_requests_total"), 0);
    // Each version of the last service counted what went to it.
    let to_canary = m.get(
        "sluice_connections_established_total",
        &[("service", "last"), ("version", "canary")],
    );
    assert!(to_canary > 0 && to_canary < 40, "50 % of 40: {to_canary}");

    // A connection outlives its service (id 258, in the hash tier): the configuration drops
    // the service and with it its metrics, the client dies, TCP closes the connection with
    // nothing left to count it in, and the tag still goes.
    let greeter = Backend::start("127.0.0.1", "held");
    let held = vip("127.77.9.3");
    let with_held = format!(
        "{yaml}  - name: held\n    virtual_addresses: [\"{held}\"]\n    stable: [{{address: \"{}\"}}]\n",
        greeter.addr
    );
    agent.write_config(&cg, &with_held);
    agent.wait_log("configuration applied", 1, Duration::from_secs(10));
    let (mut client, _out, greeting) = hold_probe(&cg, held);
    assert!(greeting.contains("held"), "{greeting}");
    assert_eq!(agent.sock_tags(), 1);
    agent.write_config(&cg, &yaml);
    agent.wait_log("configuration applied", 2, Duration::from_secs(10));
    client.kill().expect("kill the client");
    client.wait().expect("client exit");
    agent.assert_tags_gone();
}
