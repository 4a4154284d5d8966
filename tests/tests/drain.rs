//! Draining pooled connections, end to end: real kernel programs, real keep-alive pools
//! (urllib3's, which checks a pooled connection before reusing it, and wrk, which does
//! not), real servers. What is asserted is what the clients and servers saw. Needs root.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, TestCgroup,
    http::{Behaviour, HttpBackend},
    load::unix_ms,
    pool::{Netns, PoolRun, PooledClient, urllib3_present},
    root_or_skip, tag, unused_port,
};

fn ready(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    assert!(
        urllib3_present(),
        "{test}: needs Debian's python3-urllib3 (cargo xtask test installs it)"
    );
    true
}

fn service(
    name: &str,
    vip: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "  - name: {name}\n    virtual_addresses: [\"{vip}\"]\n    \
         stable: [{{address: \"{stable}\"}}]\n    canary: [{{address: \"{canary}\"}}]\n{extra}"
    )
}

/// A free loopback port to serve as a virtual address.
fn loopback_vip() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port("127.0.0.1")))
}

/// A pooled client that drew at least one canary connection, started again until it has
/// (up to 10 times). A shared pool that is seldom busy may open a single connection, which
/// misses a 50 % canary half the time: ten misses in a row is 1 in 1 024 at worst, and 1 in
/// 256^10 for 8 connections. Requests the canary saw before it are not the pool's.
fn pool_on_the_canary(
    start: impl Fn() -> PooledClient,
    canary: &HttpBackend,
    settle: Duration,
) -> PooledClient {
    let before = canary.seen().requests;
    for _ in 0..10 {
        let c = start();
        std::thread::sleep(settle);
        if canary.seen().requests > before {
            return c;
        }
    }
    panic!("the pool drew no canary connection in 10 tries");
}

/// One keep-alive GET on an open connection; the status.
fn get_on(s: &mut TcpStream) -> std::io::Result<u16> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if h == "\r\n" || h.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))
}

fn drained_total(agent: &Agent, service: &str, reason: &str) -> u64 {
    let (_, text) = sluice_tests::http::get(agent.metrics_addr(), "/metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("sluice_connections_drained_total{")
                && l.contains(&format!("service=\"{service}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A pool of 8 threads with a connection each at 200 requests/s, a canary that starts
/// failing 1 in 3, the rollout rolling back (the guard, or failing early). The client and its
/// servers live in a network namespace of their own (as a pod's do), found only through the
/// client's process.
#[test]
fn a_rollback_reaches_a_pooled_client_in_its_own_namespace() {
    let test = "a_rollback_reaches_a_pooled_client_in_its_own_namespace";
    if !ready(test) {
        return;
    }
    let t = tag("drain-pool");
    let cg = TestCgroup::new(&t);
    let ns = Netns::new(&t);
    // Answers that take 20 ms keep several of the pool's connections busy at once.
    let slow = Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let (mut stable, mut canary) = ns.within(|| {
        (
            HttpBackend::start("127.0.0.1", slow),
            HttpBackend::start("127.0.0.1", slow),
        )
    });
    let vip = loopback_vip();
    let rollout = "    l7: http1\n    rollout:\n      steps: [50, 80]\n      interval: 1h\n      \
                   guard: {last: 20, max_failures: 10}\n";
    let mut agent = Agent::prepare(
        &t,
        &cg,
        &service("web", vip, stable.addr, canary.addr, rollout),
    );
    let text = agent.config_text_with(
        &cg,
        // Only the client's process leads to its namespace.
        "network_namespaces: []",
        &service("web", vip, stable.addr, canary.addr, rollout),
    );
    agent.write_raw_config(&text);
    agent.spawn();
    agent.wait_phase("web", "Progressing", Duration::from_secs(5));
    // A connection that is not sluice's: outside the cgroup, straight to the canary.
    let mut foreign = ns.within(|| TcpStream::connect(canary.addr).expect("foreign connection"));
    foreign
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("as the test set it up");
    get_on(&mut foreign).expect("foreign request");

    // A connection per thread: each rests between its answer and its next request, as a
    // pool not in constant use does (a shared pool hands the connection answered last to
    // the next request, and can lose one to the race docs/connections.md describes).
    let client = pool_on_the_canary(
        || PooledClient::start_per_thread(&cg, Some(&ns), vip, 8, 200.0, 10.0),
        &canary,
        Duration::from_secs(2),
    );
    // A pool given up for drawing no canary (and so opening no canary connection) ended
    // its stable connections: count from here.
    let stable_before = stable.seen().ended;
    canary.set_fail_every(3);
    let r = agent.wait_phase("web", "RolledBack", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    // While the pool still runs: every canary connection ended, no stable one did.
    let (stable_ended, canary_ended) = (stable.seen().ended - stable_before, canary.seen().ended);
    // Every canary connection the pool opened (less the foreign one): none since the rollback.
    let canary_connections = canary.seen().connections - 1;
    let run = client.finish();
    let decision = r["decisions"]
        .as_array()
        .expect("as the test set it up")
        .iter()
        .find(|d| d["phase"] == "RolledBack")
        .unwrap_or_else(|| panic!("no rollback in {r:#}"))
        .clone();
    let at_zero = decision["at_unix_ms"]
        .as_u64()
        .expect("as the test set it up");
    let from_canary = run.from(canary.addr);
    let last_canary = from_canary
        .iter()
        .map(|a| a.at_unix_ms)
        .max()
        .expect("as the test set it up");
    let errors = run.errors();
    println!(
        "pooled rollback: {} requests, {} from the canary ({} of them 503) on {canary_connections} \
         canary connections; last canary answer {} ms after the share reached 0; {} failed; \
         stable accepted {} connections",
        run.answers.len(),
        from_canary.len(),
        from_canary.iter().filter(|a| a.status == 503).count(),
        last_canary as i64 - at_zero as i64,
        errors.len(),
        stable.seen().connections
    );
    assert!(
        last_canary <= at_zero + 1_000,
        "a canary answer {} ms after the share reached 0",
        last_canary - at_zero
    );
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    assert_eq!(stable_ended, 0, "a stable connection was ended");
    assert_eq!(
        canary_ended, canary_connections,
        "every canary connection of the pool ended"
    );
    // The connection that is not sluice's is untouched.
    get_on(&mut foreign).expect("the foreign connection still works");
    // The evidence: on the decision, in the metrics.
    let end = Instant::now() + Duration::from_secs(3);
    let drained = loop {
        let r = agent.rollout("web");
        let d = r["decisions"]
            .as_array()
            .expect("as the test set it up")
            .iter()
            .find(|d| d["phase"] == "RolledBack")
            .and_then(|d| d.get("drained").cloned());
        if let Some(d) = d {
            break d;
        }
        assert!(Instant::now() < end, "no drain on the decision: {r:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        drained["idle"].as_u64().expect("as the test set it up")
            + drained["at_grace"].as_u64().expect("as the test set it up"),
        canary_connections
    );
    assert_eq!(drained["unreachable_namespaces"], 0);
    assert_eq!(drained_total(&agent, "web", "rollback"), canary_connections);
    drop(foreign);
    ns.within(|| {
        stable.close();
        canary.close();
    });
}

/// wrk keeps its connections and never checks them: a drained connection fails its next
/// request (a read error), and wrk reconnects, to stable. The share goes to 0 by an
/// operator (`sluice weight`), not a rollout.
#[test]
fn a_client_that_never_checks_its_pool_sees_the_drain_as_errors() {
    let test = "a_client_that_never_checks_its_pool_sees_the_drain_as_errors";
    if !ready(test) {
        return;
    }
    let t = tag("drain-wrk");
    let cg = TestCgroup::new(&t);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let vip = loopback_vip();
    let yaml = service(
        "web",
        vip,
        stable.addr,
        canary.addr,
        "    l7: http1\n    canary_percent: 50\n",
    );
    let agent = Agent::start(&t, &cg, &yaml);
    let procs = cg.path().join("cgroup.procs");
    let wrk = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec wrk -t 2 -c 8 -d 6s http://{vip}/",
            procs.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk");
    std::thread::sleep(Duration::from_secs(2));
    assert!(canary.seen().requests > 0, "wrk drew no canary connection");
    agent.weight("web", 0.0);
    let at_zero = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let canary_then = canary.seen().requests;
    let out = wrk.wait_with_output().expect("wrk");
    let report = String::from_utf8_lossy(&out.stdout);
    let canary_after = canary.seen().requests - canary_then;
    let errors = report
        .lines()
        .find(|l| l.contains("Socket errors"))
        .unwrap_or("Socket errors: none")
        .trim()
        .to_owned();
    println!(
        "wrk: {} canary requests later than {:?} after the share reached 0; {errors}",
        canary_after,
        at_zero.elapsed().min(Duration::from_secs(1))
    );
    assert_eq!(
        canary_after, 0,
        "the canary answered after its connections were drained"
    );
    assert!(stable.seen().requests > 0);
}

/// A pool of 8 connections at a 10 % share: with `max_connection_age: 5s` its connections
/// are drawn again and again, and its share of requests goes to 10 %; without, it keeps
/// what it drew.
#[test]
fn max_connection_age_makes_a_pool_follow_the_weight() {
    let test = "max_connection_age_makes_a_pool_follow_the_weight";
    if !ready(test) {
        return;
    }
    let t = tag("drain-age");
    let cg = TestCgroup::new(&t);
    // Each service has its own backends: the servers count each pool's connections.
    // Answers that take 20 ms keep several of a pool's connections busy at once.
    let slow = Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let start = || HttpBackend::start("127.0.0.1", slow);
    let (stable, canary, kept_stable, kept_canary) = (start(), start(), start(), start());
    let aged_vip = loopback_vip();
    let kept_vip = loopback_vip();
    let yaml = service(
        "aged",
        aged_vip,
        stable.addr,
        canary.addr,
        "    l7: http1\n    canary_percent: 10\n    max_connection_age: 5s\n",
    ) + &service(
        "kept",
        kept_vip,
        kept_stable.addr,
        kept_canary.addr,
        "    l7: http1\n    canary_percent: 10\n",
    );
    let agent = Agent::start(&t, &cg, &yaml);
    let started = unix_ms();
    // Each of 8 threads with a connection of its own: the request share is the share of
    // the connections, each connection a draw.
    let aged = PooledClient::start_per_thread(&cg, None, aged_vip, 8, 200.0, 30.0);
    let kept = PooledClient::start_per_thread(&cg, None, kept_vip, 8, 200.0, 30.0);
    // Counted while the pools still run (their connections end when they exit).
    std::thread::sleep(Duration::from_secs(29));
    let kept_ended = kept_stable.seen().ended + kept_canary.seen().ended;
    let (aged, kept) = (aged.finish(), kept.finish());
    let share = |run: &PoolRun, canary: SocketAddr, from_ms: u64| {
        let late: Vec<_> = run
            .answers
            .iter()
            .filter(|a| a.at_unix_ms >= from_ms)
            .collect();
        let c = late
            .iter()
            .filter(|a| a.served_by.as_deref() == Some(canary.to_string().as_str()))
            .count();
        c as f64 / late.len() as f64
    };
    // After three ages.
    let from = started + 15_000;
    let aged_share = share(&aged, canary.addr, from);
    let kept_share = share(&kept, kept_canary.addr, from);
    // Connections as the servers accepted them (the pool reconnects a dropped connection
    // without counting it as new).
    let aged_connections = stable.seen().connections + canary.seen().connections;
    let kept_connections = kept_stable.seen().connections + kept_canary.seen().connections;
    // Each connection is one draw of the share, weighted by how long it served in the
    // window (its share of the window's requests, the threads being evenly paced): the
    // request share's spread is that of a mean over the effective number of draws.
    let until = started + 30_000;
    let weights: Vec<f64> = [&stable, &canary]
        .iter()
        .flat_map(|b| {
            let seen = b.seen();
            seen.accepted_at
                .into_iter()
                .zip(seen.ended_at)
                .collect::<Vec<_>>()
        })
        .map(|(opened, ended)| {
            let ended = if ended == 0 { until } else { ended.min(until) };
            ended.saturating_sub(opened.max(from)) as f64
        })
        .filter(|w| *w > 0.0)
        .collect();
    let draws = weights.iter().sum::<f64>().powi(2) / weights.iter().map(|w| w * w).sum::<f64>();
    let sd = (0.1 * 0.9 / draws).sqrt();
    println!(
        "max_connection_age 5s: {} connections over 30 s, canary share of requests after 15 s \
         {:.1} % (10 % ± {:.1} % for 3 sd, {draws:.1} effective draws); without: {} connections, share {:.1} %; errors {} / {}",
        aged_connections,
        100.0 * aged_share,
        300.0 * sd,
        kept_connections,
        100.0 * kept_share,
        aged.errors().len(),
        kept.errors().len()
    );
    assert!(aged.errors().is_empty(), "{:?}", aged.errors());
    assert!((aged_share - 0.1).abs() <= 3.0 * sd, "share {aged_share}");
    let pool = kept_connections;
    assert!(
        aged_connections >= pool * 3,
        "{aged_connections} connections: each of the pool's {pool} re-drawn at least twice"
    );
    assert!(aged.errors().is_empty(), "{:?}", aged.errors());
    assert!(
        kept_connections <= 8,
        "without an age the pool keeps its connections"
    );
    assert!(kept.errors().is_empty());
    assert_eq!(kept_ended, 0, "without an age no connection is ended");
    assert!(drained_total(&agent, "aged", "max_connection_age") >= 2 * pool);
    assert_eq!(drained_total(&agent, "kept", "max_connection_age"), 0);
}

/// The agent is killed with a drain under way (a busy grace, no HTTP parsing): the next
/// agent finds the canary at 0 and finishes it.
#[test]
fn a_drain_cut_short_by_a_restart_is_redone() {
    let test = "a_drain_cut_short_by_a_restart_is_redone";
    if !ready(test) {
        return;
    }
    let t = tag("drain-restart");
    let cg = TestCgroup::new(&t);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start("127.0.0.1", Behaviour::default());
    let vip = loopback_vip();
    let long = service(
        "web",
        vip,
        stable.addr,
        canary.addr,
        "    canary_percent: 50\n    drain: {grace: 1h}\n",
    );
    let mut agent = Agent::start(&t, &cg, &long);
    let client = pool_on_the_canary(
        || PooledClient::start_per_thread(&cg, None, vip, 8, 40.0, 10.0),
        &canary,
        Duration::from_secs(1),
    );
    agent.weight("web", 0.0);
    std::thread::sleep(Duration::from_millis(500));
    agent.kill9();
    // Half done: the grace is an hour, so the canary still serves its connections.
    let before = canary.seen().requests;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        canary.seen().requests > before,
        "the canary connections were still open"
    );
    agent.write_config(
        &cg,
        &service(
            "web",
            vip,
            stable.addr,
            canary.addr,
            "    canary_percent: 50\n    drain: {grace: 1s}\n",
        ),
    );
    agent.spawn();
    agent.wait_log(
        "drained the canary's connections",
        1,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    let then = canary.seen().requests;
    let run = client.finish();
    println!(
        "restart mid-drain: canary answered {} requests after the new agent's drain; {} \
         requests failed (at the grace, no HTTP parsing)",
        canary.seen().requests - then,
        run.errors().len()
    );
    assert_eq!(
        canary.seen().requests,
        then,
        "the new agent finished the drain"
    );
    // The runtime share survived the restart: the canary took no new connection.
    assert!(
        agent.service("web")["canary_percent"]
            .as_f64()
            .unwrap_or(0.0)
            == 0.0
    );
}

/// A held connection, by a Python client in `ns`: `check` answers `open` or `ended`.
const HOLDER: &str = r#"
import select, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=2)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
answer = s.recv(4096).decode()
by = [l.split(":", 1)[1].strip() for l in answer.split("\r\n") if l.lower().startswith("x-served-by:")]
print(by[0] if by else "?", flush=True)
for line in sys.stdin:
    readable, _, _ = select.select([s], [], [], 0)
    print("ended" if readable else "open", flush=True)
"#;

/// The DaemonSet's way to pods' namespaces: the pinned ones in `network_namespaces`. The
/// connection's process leaves the steered cgroup after connecting, so only the pinned
/// namespace leads to its socket: without the directory it is not drained, with it it is.
#[test]
fn pinned_namespaces_are_reached_without_the_process() {
    let test = "pinned_namespaces_are_reached_without_the_process";
    if !root_or_skip(test) {
        return;
    }
    use std::io::BufRead as _;
    let t = tag("drain-pinned");
    let cg = TestCgroup::new(&t);
    let elsewhere = TestCgroup::new(&format!("{t}-elsewhere"));
    let ns = Netns::new(&t);
    let mut canary = ns.within(|| HttpBackend::start("127.0.0.1", Behaviour::default()));
    let mut stable = ns.within(|| HttpBackend::start("127.0.0.1", Behaviour::default()));
    let vip = loopback_vip();
    let yaml = service(
        "web",
        vip,
        stable.addr,
        canary.addr,
        "    l7: http1\n    canary_percent: 100\n",
    );
    let mut agent = Agent::prepare(&t, &cg, &yaml);
    agent.write_raw_config(&agent.config_text_with(&cg, "network_namespaces: []", &yaml));
    agent.spawn();
    let procs = cg.path().join("cgroup.procs");
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec \"$@\"", procs.display()))
        .args([
            "sh",
            "ip",
            "netns",
            "exec",
            &ns.name,
            sluice_tests::pool::PYTHON,
            "-c",
            HOLDER,
        ])
        .args([vip.ip().to_string(), vip.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let mut input = holder.stdin.take().expect("stdin");
    let mut output = BufReader::new(holder.stdout.take().expect("stdout"));
    let mut line = String::new();
    output.read_line(&mut line).expect("served by");
    assert_eq!(
        line.trim(),
        canary.addr.to_string(),
        "steered to the canary"
    );
    // Out of the steered cgroup: its socket stays steered and tagged.
    std::fs::write(
        elsewhere.path().join("cgroup.procs"),
        holder.id().to_string(),
    )
    .expect("move the holder");
    let mut check = || {
        writeln!(input, "check").expect("ask");
        let mut l = String::new();
        output.read_line(&mut l).expect("answer");
        l.trim().to_owned()
    };
    agent.weight("web", 0.0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(check(), "open", "no process and no directory lead to it");
    // The default directories: /run/netns, where `ip netns` pinned it.
    agent.write_config(&cg, &yaml);
    agent.wait_log("configuration applied", 1, Duration::from_secs(5));
    agent.weight("web", 100.0);
    agent.weight("web", 0.0);
    let asked = Instant::now();
    let mut state = check();
    while state == "open" && asked.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        state = check();
    }
    println!(
        "pinned namespace: the held canary connection {state} after {:?}",
        asked.elapsed()
    );
    assert_eq!(state, "ended", "drained through /run/netns");
    drop(input);
    let _ = holder.wait();
    ns.within(|| {
        stable.close();
        canary.close();
    });
}
