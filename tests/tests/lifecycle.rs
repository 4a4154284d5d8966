//! The daemon's life: SIGKILL leaves steering running, a restart re-adopts the pinned links
//! (no second attachment) and the counters go on; SIGTERM leaves steering in place;
//! `sluice detach` removes everything; a service with no backend is refused at once.
//! Needs root.

use std::time::{Duration, Instant};

use sluice_tests::{
    ADOPTED_LINKS, Agent, Backend, CGROUP_PROGRAMS, TestCgroup, bpftool, probe, root_or_skip, tag,
    unused_port,
};

fn two_version_service(vip: std::net::SocketAddr, stable: &Backend, canary: &Backend) -> String {
    format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: 50\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n",
        stable.addr, canary.addr
    )
}

fn steered(agent: &Agent) -> u64 {
    agent.counter("web", "steered_stable") + agent.counter("web", "steered_canary")
}

#[test]
fn sigkill_keeps_steering_and_restart_readopts_without_reattaching() {
    if !root_or_skip("sigkill_keeps_steering_and_restart_readopts") {
        return;
    }
    let t = tag("restart");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = format!("127.77.3.1:{}", unused_port("127.77.3.1"))
        .parse()
        .expect("vip");
    let mut agent = Agent::start(&t, &cg, &two_version_service(vip, &stable, &canary));
    let attached = Agent::attached(cg.path());
    assert_eq!(attached.len(), CGROUP_PROGRAMS, "{attached:?}");
    agent.weight("web", 20.0);

    let r = probe(Some(&cg), vip, 1_000);
    assert_eq!(r.total(), 1_000);
    assert_eq!(steered(&agent), 1_000);

    agent.kill9();
    // Agent gone: the kernel keeps steering with the last configuration (20 %).
    let r = probe(Some(&cg), vip, 2_000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.peer_vip, 2_000);
    assert!(
        r.from("canary") > 250 && r.from("canary") < 550,
        "still 20 %: {r:?}"
    );

    agent.spawn();
    agent.wait_log(
        &format!("adopted_links={ADOPTED_LINKS}"),
        1,
        Duration::from_secs(5),
    );
    let attached = Agent::attached(cg.path());
    assert_eq!(
        attached.len(),
        CGROUP_PROGRAMS,
        "a restart must not attach a second time: {attached:?}"
    );
    // Counters went on while the agent was down, and were not reset by the restart.
    assert_eq!(steered(&agent), 3_000);
    // The runtime share survived too.
    let status = agent.status();
    assert_eq!(status["services"][0]["canary_percent"], 20.0);
    let r = probe(Some(&cg), vip, 500);
    assert_eq!(r.total(), 500);
    assert_eq!(steered(&agent), 3_500);
    assert_eq!(stable.accepted() + canary.accepted(), 3_500);
}

#[test]
fn sigterm_leaves_steering_and_detach_removes_everything() {
    if !root_or_skip("sigterm_leaves_steering_and_detach_removes_everything") {
        return;
    }
    let t = tag("detach");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip = format!("127.77.3.2:{}", unused_port("127.77.3.2"))
        .parse()
        .expect("vip");
    let mut agent = Agent::start(&t, &cg, &two_version_service(vip, &stable, &canary));
    agent.signal(libc::SIGTERM);
    agent.wait_log("programs stay attached", 1, Duration::from_secs(5));
    let r = probe(Some(&cg), vip, 200);
    assert_eq!(r.total(), 200, "steering survives SIGTERM: {r:?}");

    agent.spawn();
    let (ok, out, err) = agent.sluice(&[
        "detach",
        "--pin-path",
        &agent.pin_path.display().to_string(),
    ]);
    assert!(ok, "detach: {out} {err}");
    assert!(
        Agent::attached(cg.path()).is_empty(),
        "nothing attached after detach"
    );
    assert!(!agent.pin_path.exists(), "no pins after detach");
    let r = probe(Some(&cg), vip, 20);
    assert_eq!(
        r.errors.get("ConnectionRefused"),
        Some(&20),
        "the virtual address is plain again: {r:?}"
    );
    agent.kill9();
}

/// A service entry with no backend in either version (a state validation never writes, so
/// the test writes it with bpftool): the connect fails at once with ECONNREFUSED, counted.
#[test]
fn no_backend_at_all_is_refused_at_once_and_counted() {
    if !root_or_skip("no_backend_at_all_is_refused_at_once") {
        return;
    }
    let t = tag("nobackend");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip: std::net::SocketAddr = format!("127.77.3.3:{}", unused_port("127.77.3.3"))
        .parse()
        .expect("vip");
    let agent = Agent::start(&t, &cg, &two_version_service(vip, &stable, &canary));
    let map = agent
        .maps_dir()
        .join("SLUICE_SERVICES")
        .display()
        .to_string();
    let key = sluice::desired::vip_key(vip);
    let key_hex = hex(bytes_of(&key));
    let entry = bpftool(
        &["map", "lookup", "pinned", &map, "key", "hex"]
            .iter()
            .copied()
            .chain(key_hex.iter().map(String::as_str))
            .collect::<Vec<_>>(),
    );
    assert!(entry.is_object(), "{entry}");
    let mut svc = service_from_bpftool(&entry);
    assert_eq!(
        (svc.stable_slots, svc.canary_slots),
        (1, 1),
        "read back what the agent wrote"
    );
    svc.stable_slots = 0;
    svc.canary_slots = 0;
    let value_hex = hex(bytes_of(&svc));
    let mut args = vec!["map", "update", "pinned", &map, "key", "hex"];
    args.extend(key_hex.iter().map(String::as_str));
    args.extend(["value", "hex"]);
    args.extend(value_hex.iter().map(String::as_str));
    let out = std::process::Command::new("bpftool")
        .args(&args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let start = Instant::now();
    let r = probe(Some(&cg), vip, 50);
    let took = start.elapsed();
    assert_eq!(r.errors.get("ConnectionRefused"), Some(&50), "{r:?}");
    assert!(
        took < Duration::from_secs(2),
        "refusals must be immediate, took {took:?}"
    );
    assert_eq!(stable.accepted() + canary.accepted(), 0);
    assert_eq!(agent.counter("web", "no_backend"), 50);
}

/// A SLUICE_SERVICES value as bpftool reads it (`"value": ["0x01", ...]`).
fn service_from_bpftool(entry: &serde_json::Value) -> sluice_common::maps::Service {
    let bytes: Vec<u8> = entry["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| {
            u8::from_str_radix(b.as_str().expect("hex").trim_start_matches("0x"), 16)
                .expect("hex byte")
        })
        .collect();
    let mut svc = sluice_common::maps::Service::default();
    bytes_of_mut(&mut svc).copy_from_slice(&bytes);
    svc
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the map types are repr(C) with explicit padding: every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
}

fn bytes_of_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: as for bytes_of; any byte pattern is a valid value of these types.
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast(), size_of::<T>()) }
}

#[test]
fn an_unreadable_rollout_state_stops_the_start_and_touches_nothing() {
    if !root_or_skip("an_unreadable_rollout_state_stops_the_start_and_touches_nothing") {
        return;
    }
    let t = tag("badstate");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip: std::net::SocketAddr = format!("127.77.8.1:{}", unused_port("127.77.8.1"))
        .parse()
        .expect("vip");
    let mut agent = Agent::start(&t, &cg, &two_version_service(vip, &stable, &canary));
    agent.kill9();
    let pins_before = pins(&agent.pin_path);
    let attached_before = Agent::attached(cg.path());
    std::fs::write(&agent.state_path, b"{ not json").expect("write state");

    let (status, err) = agent.run_expecting_refusal();
    assert_eq!(status.code(), Some(70), "{err}");
    assert!(
        err.contains("rollouts.json is not readable") && err.contains("move it away"),
        "{err}"
    );
    // The kernel is as the killed agent left it: the same pins and programs, and steering
    // goes on.
    assert_eq!(pins(&agent.pin_path), pins_before);
    assert_eq!(Agent::attached(cg.path()), attached_before);
    let r = probe(Some(&cg), vip, 100);
    assert_eq!(r.total(), 100, "{r:?}");
    assert!(r.from("canary") > 0 && r.from("stable") > 0, "{r:?}");
}

/// Every path under a pin directory, sorted.
fn pins(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}
