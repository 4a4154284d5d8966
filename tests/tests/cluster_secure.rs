//! Cluster mode against an etcd run as production runs it: TLS on the client URLs, client
//! certificates required, and user authentication with a role limited to sluice's prefix.
//! A real agent with its certificate and password leads, holds the rollout in etcd and steers
//! real clients by it; agents without the password or the certificate are refused by etcd,
//! say so, and never lead. Needs root.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, TestCgroup,
    etcd::EtcdCluster,
    http::{Behaviour, HttpBackend},
    load::Load,
    root_or_skip, tag, unused_port,
};

struct Node {
    agent: Agent,
    cg: TestCgroup,
}

/// An agent of the cluster, started, with `tls` and `auth` as its `cluster:` block gives
/// them.
fn node(
    t: &str,
    name: &str,
    etcd: &EtcdCluster,
    prefix: &str,
    tls: &str,
    password: Option<&str>,
    services: &str,
) -> Node {
    let mut n = prepared(t, name, etcd, prefix, tls, password, services);
    n.agent.spawn();
    n
}

/// As [`node`], not started.
fn prepared(
    t: &str,
    name: &str,
    etcd: &EtcdCluster,
    prefix: &str,
    tls: &str,
    password: Option<&str>,
    services: &str,
) -> Node {
    let cg = TestCgroup::new(&format!("{t}-{name}"));
    let agent = Agent::prepare(&format!("{t}-{name}"), &cg, "");
    let auth = match password {
        Some(p) => {
            let file = agent.dir().join("etcd-password");
            std::fs::write(&file, format!("{p}\n")).expect("password file");
            format!(
                "\n  auth: {{username: sluice, password_file: {}}}",
                file.display()
            )
        }
        None => String::new(),
    };
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let cluster = format!(
        "cluster:\n  endpoints: [{}]\n  prefix: {prefix}\n  lease_ttl: 2s\n  \
         publish_interval: 250ms\n  node_name: {name}\n  tls: {{{tls}}}{auth}",
        endpoints.join(", ")
    );
    let text = agent.config_text_with(&cg, &cluster, services);
    agent.write_raw_config(&text);
    Node { agent, cg }
}

/// Waits for `cluster.connected` in the agent's status to be `want`.
fn wait_connected(n: &Node, want: bool, timeout: Duration) -> serde_json::Value {
    let end = Instant::now() + timeout;
    loop {
        if n.agent.answers() {
            let s = n.agent.status();
            if s["cluster"]["connected"] == want {
                return s["cluster"].clone();
            }
        }
        assert!(
            Instant::now() < end,
            "cluster.connected is not {want} after {timeout:?}\n{}",
            n.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_etcd_with_tls_client_certificates_and_users_admits_only_the_agent_with_both() {
    if !root_or_skip(
        "an_etcd_with_tls_client_certificates_and_users_admits_only_the_agent_with_both",
    ) {
        return;
    }
    let t = tag("cl-secure");
    let prefix = format!("/sluice-test-{t}/");
    let mut etcd = EtcdCluster::start_secure(&t, 1);
    etcd.enable_auth("sluice", "s3cret", &prefix);
    let pki = etcd.pki();
    let client = pki.client("sluice");
    let stranger = pki.client("stranger");
    let ca = pki.ca();
    let with_cert = |pair: &sluice_tests::pki::Pair| {
        format!(
            "ca: {}, cert: {}, key: {}",
            ca.display(),
            pair.cert.display(),
            pair.key.display()
        )
    };

    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let vip: SocketAddr = format!("127.77.15.1:{}", unused_port("127.77.15.1"))
        .parse()
        .expect("vip");
    // Held at its one step for the whole test (the analysis needs more than it gets).
    let services = format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    l7: http1\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n    rollout:\n      \
         steps: [50]\n      interval: 1h\n      deadline: 2h\n",
        stable.addr, canary.addr
    );

    // A CA file that is not there: the agent refuses to start, naming it, before it touches
    // the kernel.
    let missing = std::env::temp_dir().join(format!("sluice-{t}-no-such-ca.crt"));
    let refused = prepared(
        &t,
        "n9",
        &etcd,
        &prefix,
        &format!("ca: {}", missing.display()),
        Some("s3cret"),
        &services,
    );
    let (exit, log) = refused.agent.run_expecting_refusal();
    assert!(!exit.success(), "{log}");
    assert!(log.contains(&missing.display().to_string()), "{log}");
    assert!(!refused.agent.maps_dir().exists(), "pinned maps: {log}");
    println!(
        "secure: a missing CA: {}",
        log.lines().last().unwrap_or_default()
    );

    // Certificate and password: connected, leads, and the rollout it made is in etcd.
    let good = node(
        &t,
        "n0",
        &etcd,
        &prefix,
        &with_cert(&client),
        Some("s3cret"),
        &services,
    );
    let status = wait_connected(&good, true, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    while good.agent.status()["cluster"]["leads"] != true {
        assert!(
            Instant::now() < end,
            "n0 does not lead\n{}",
            good.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Read by etcdctl as root, over TLS.
    let key = format!("{prefix}rollouts/web");
    let end = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let stored = etcd
            .get(&key)
            .map(|text| serde_json::from_str::<serde_json::Value>(&text).expect("json"));
        if let Some(s) = stored.filter(|s| s["state"]["weight_ppm"] == 500_000) {
            break s;
        }
        assert!(
            Instant::now() < end,
            "etcd holds no {key} at its step\n{}",
            good.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("secure: n0 {status}; stored {}", stored["state"]);
    // ... and steers real clients by it.
    let load = Load::start(&good.cg, vip, 100, 3.0).finish();
    let (to_stable, to_canary) = (stable.seen().requests, canary.seen().requests);
    println!("secure: {load:?}; stable saw {to_stable}, canary {to_canary}");
    assert_eq!(load.failed(), 0, "{load:?}");
    assert!(load.requests() >= 200, "{load:?}");
    assert!(
        to_stable > 50 && to_canary > 50,
        "a 50 % share: stable {to_stable}, canary {to_canary}"
    );

    // A certificate of a user etcd does not know, without a password; the right
    // certificate with a wrong password: etcd refuses both.
    let no_password = node(
        &t,
        "n1",
        &etcd,
        &prefix,
        &with_cert(&stranger),
        None,
        &services,
    );
    let wrong = node(
        &t,
        "n2",
        &etcd,
        &prefix,
        &with_cert(&client),
        Some("guess"),
        &services,
    );
    // The password without a client certificate: the TLS handshake fails.
    let no_cert = node(
        &t,
        "n3",
        &etcd,
        &prefix,
        &format!("ca: {}", ca.display()),
        Some("s3cret"),
        &services,
    );
    // Time for several attempts each.
    std::thread::sleep(Duration::from_secs(6));
    for (name, n, why) in [
        ("n1", &no_password, "permission denied"),
        ("n2", &wrong, "authentication failed"),
        ("n3", &no_cert, "client certificates"),
    ] {
        let s = wait_connected(n, false, Duration::from_secs(1));
        println!("secure: {name} {s}");
        assert_ne!(s["leads"], true, "{name}");
        let log = n.agent.log();
        let said: Vec<&str> = log.lines().filter(|l| l.contains("etcd")).take(2).collect();
        println!("secure: {name} says {said:#?}");
        assert!(
            log.to_lowercase().contains(why),
            "{name}'s log does not say {why:?}:\n{log}"
        );
        // Failing static: it steers by its configuration's starting share (0 % until the
        // cluster answers), never by a guess.
        assert_eq!(n.agent.service("web")["canary_percent"], 0.0, "{name}");
    }
    // None of them took the lead or wrote: the one node still leads, the rollout unchanged.
    assert_eq!(good.agent.status()["cluster"]["leads"], true);
    let after: serde_json::Value =
        serde_json::from_str(&etcd.get(&key).expect("rollout")).expect("json");
    assert_eq!(after["state"], stored["state"]);
}
