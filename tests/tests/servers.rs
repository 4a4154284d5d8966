//! The agent's two servers against idle, oversized and too many clients, and against running
//! out of file descriptors: the control socket and `/metrics` stay answering, and accept
//! failures back off with one log line a burst. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, Backend, TestCgroup, count_lines as count, free_address as vip, http::get, root_or_skip,
    service_yaml as service, tag,
};

#[test]
fn idle_and_oversized_clients_cannot_hold_the_servers() {
    if !root_or_skip("idle_and_oversized_clients_cannot_hold_the_servers") {
        return;
    }
    let t = tag("clients");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let web = vip("127.77.10.5");
    let agent = Agent::start(&t, &cg, &service("web", web, &stable, &canary, 0));
    let metrics = agent.metrics_addr();
    // 300 scrapers that connect and say nothing: the control socket does not notice.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(metrics).expect("connect"))
        .collect();
    let started = Instant::now();
    let (ok, out, err) = agent.sluice(&["status", "--output", "json"]);
    assert!(ok, "{out} {err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // With 100 still idle, a real scrape gets its turn once the first 64 time out (5 s).
    idle.truncate(100);
    let started = Instant::now();
    assert_eq!(get(metrics, "/metrics").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
    // A request line of 1 MiB on the control socket is refused after 64 KiB.
    let mut s = UnixStream::connect(&agent.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(&vec![b'x'; 1 << 20]);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.contains("a request has at most 65536 bytes"),
        "{answer:?}"
    );
    assert!(agent.sluice(&["status"]).0);
}

#[test]
fn out_of_file_descriptors_the_servers_back_off_and_recover() {
    if !root_or_skip("out_of_file_descriptors_the_servers_back_off_and_recover") {
        return;
    }
    let t = tag("emfile");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let web = vip("127.77.10.6");
    let agent = Agent::start(&t, &cg, &service("web", web, &stable, &canary, 0));
    let metrics = agent.metrics_addr();
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .expect("fds")
        .count();
    // The soft limit only: raising a hard limit again would need CAP_SYS_RESOURCE.
    let soft = |limit: &str| {
        let set = Command::new("prlimit")
            .arg(format!("--pid={}", agent.pid()))
            .arg(format!("--nofile={limit}:"))
            .status()
            .expect("prlimit");
        assert!(set.success(), "prlimit --nofile={limit}:");
    };
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).expect("limits");
    let original = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("the soft limit")
        .to_owned();
    soft(&(open_fds + 8).to_string());
    let lines_before = agent.log().lines().count();
    // Far more connections than descriptors left: accepting fails with EMFILE.
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(metrics).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    assert_eq!(
        count(&log, "accepting connections fails"),
        1,
        "one line a burst:\n{log}"
    );
    assert!(
        log.lines().count() - lines_before < 10,
        "no log storm: {} lines",
        log.lines().count() - lines_before
    );
    drop(held);
    soft(&original);
    // The backlog drains; then a scrape is answered and the recovery is said once.
    let end = Instant::now() + Duration::from_secs(20);
    while count(&agent.log(), "accepting connections works again") == 0 && Instant::now() < end {
        let _ = TcpStream::connect(metrics);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        count(&agent.log(), "accepting connections works again"),
        1,
        "{}",
        agent.log()
    );
    assert_eq!(get(metrics, "/metrics").0, 200);
    assert!(agent.sluice(&["status"]).0);
}
