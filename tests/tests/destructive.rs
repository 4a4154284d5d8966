//! Nothing sluice did not make is ever removed: `detach` addresses only the daemon that owns
//! the pins it names, removes pins only from bpffs and only in sluice's layout, leaves a
//! state file that is not sluice's alone, and the daemon never replaces a file that is not a
//! socket at its `api_socket`. Needs root.

use std::{path::Path, process::Command};

use sluice_tests::{Agent, Backend, TestCgroup, probe, root_or_skip, tag, unused_port};

fn one_service(vip: std::net::SocketAddr, stable: &Backend) -> String {
    format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    stable: [{{address: \"{}\"}}]\n",
        stable.addr
    )
}

/// `sluice ARGS` with no SLUICE_SOCKET from the environment: (success, stdout, stderr).
fn sluice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sluice_tests::agent::sluice_bin())
        .args(args)
        .env_remove("SLUICE_SOCKET")
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice detach` of the agent with these pins, state file and socket.
fn detach(pins: &Path, state: &Path, socket: &Path) -> (bool, String, String) {
    let [pins, state, socket] = [pins, state, socket].map(|p| p.display().to_string());
    sluice(&[
        "detach",
        "--pin-path",
        &pins,
        "--state-path",
        &state,
        "--socket",
        &socket,
    ])
}

/// Every file below `dir`, sorted.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn detach_naming_other_pins_is_refused_by_the_daemon_and_changes_nothing() {
    if !root_or_skip("detach_naming_other_pins_is_refused_by_the_daemon_and_changes_nothing") {
        return;
    }
    let t = tag("detach-other");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let vip = format!("127.77.9.1:{}", unused_port("127.77.9.1"))
        .parse()
        .expect("vip");
    let agent = Agent::start(&t, &cg, &one_service(vip, &stable));
    let pins_before = files(&agent.pin_path);
    assert!(!pins_before.is_empty());
    let attached = Agent::attached(cg.path());
    let other_pins = format!("/sys/fs/bpf/sluice-test-{t}-other");
    let other_state = agent.dir().join("other.json");
    let (ok, out, err) = detach(Path::new(&other_pins), &other_state, &agent.socket);
    assert!(!ok, "refused: {out} {err}");
    assert!(
        err.contains("this daemon's pins are under") && err.contains("nothing was removed"),
        "{err}"
    );
    // The daemon, its pins, its links and its steering are all still there.
    assert_eq!(files(&agent.pin_path), pins_before);
    assert_eq!(Agent::attached(cg.path()), attached);
    assert!(agent.sluice(&["status"]).0, "the daemon still answers");
    let r = probe(Some(&cg), vip, 50);
    assert_eq!(r.from("stable"), 50, "{r:?}");

    // Named by its own configuration, it does detach.
    let config = agent.config_path.display().to_string();
    let (ok, out, err) = sluice(&["detach", "--config", &config]);
    assert!(ok, "{out} {err}");
    assert!(!agent.pin_path.exists(), "its pins are gone");
    assert!(Agent::attached(cg.path()).is_empty());
}

#[test]
fn detach_without_a_daemon_removes_only_sluice_pins_on_bpffs() {
    if !root_or_skip("detach_without_a_daemon_removes_only_sluice_pins_on_bpffs") {
        return;
    }
    let t = tag("detach-foreign");
    let scratch = std::env::temp_dir().join(format!("sluice-test-{t}"));
    let _ = std::fs::remove_dir_all(&scratch);
    // A tree shaped like sluice's pins, but in /tmp: not on bpffs, so not sluice's.
    let tree = scratch.join("pins");
    for f in [
        "v5/maps/SLUICE_SERVICES",
        "v5/links/cg1/connect4",
        "notes.txt",
    ] {
        let p = tree.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "an operator's file").expect("write");
    }
    let state = scratch.join("rollouts.json");
    std::fs::write(&state, "{\"an\": \"operator's file\"}").expect("write");
    let before = files(&scratch);
    let socket = scratch.join("no-daemon.sock").display().to_string();
    let (ok, _, err) = detach(&tree, &state, Path::new(&socket));
    assert!(!ok);
    assert!(err.contains("is not on a bpf filesystem"), "{err}");
    assert_eq!(files(&scratch), before, "nothing was removed");

    // On bpffs, but with a directory sluice never makes: refused too.
    let foreign = std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-test-{t}"));
    std::fs::create_dir_all(foreign.join("v5/maps")).expect("mkdir on bpffs");
    std::fs::create_dir_all(foreign.join("someone-else")).expect("mkdir on bpffs");
    let (ok, _, err) = detach(&foreign, &state, Path::new(&socket));
    assert!(!ok);
    assert!(
        err.contains("someone-else") && err.contains("nothing was removed"),
        "{err}"
    );
    assert!(foreign.join("someone-else").exists() && foreign.join("v5/maps").exists());

    // sluice's own (empty) layout goes; the state file that is not sluice's stays.
    std::fs::remove_dir(foreign.join("someone-else")).expect("rmdir");
    let (ok, out, err) = detach(&foreign, &state, Path::new(&socket));
    assert!(ok, "{out} {err}");
    assert!(!foreign.exists());
    assert!(err.contains("left alone"), "{err}");
    assert_eq!(
        files(&scratch),
        before,
        "the operator's files are all there"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn an_api_socket_path_holding_a_file_is_refused_before_the_kernel_is_touched() {
    if !root_or_skip("an_api_socket_path_holding_a_file_is_refused_before_the_kernel_is_touched") {
        return;
    }
    let t = tag("socket-file");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let vip = format!("127.77.9.2:{}", unused_port("127.77.9.2"))
        .parse()
        .expect("vip");
    let agent = Agent::prepare(&t, &cg, &one_service(vip, &stable));
    let victim = agent.dir().join("precious.txt");
    std::fs::write(&victim, "do not delete").expect("write");
    let text = agent.config_text(&cg, &one_service(vip, &stable)).replace(
        &format!("api_socket: {}", agent.socket.display()),
        &format!("api_socket: {}", victim.display()),
    );
    agent.write_raw_config(&text);
    let (status, log) = agent.run_expecting_refusal();
    assert_eq!(status.code(), Some(70), "{log}");
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("still there"),
        "do not delete"
    );
    assert!(!agent.pin_path.exists(), "no pins were made");
    assert!(
        Agent::attached(cg.path()).is_empty(),
        "nothing was attached"
    );
}

#[test]
fn an_unbindable_metrics_address_or_a_fake_cgroup_is_refused_before_the_kernel_is_touched() {
    if !root_or_skip(
        "an_unbindable_metrics_address_or_a_fake_cgroup_is_refused_before_the_kernel_is_touched",
    ) {
        return;
    }
    let t = tag("unbindable");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let vip = format!("127.77.9.3:{}", unused_port("127.77.9.3"))
        .parse()
        .expect("vip");
    let agent = Agent::prepare(&t, &cg, &one_service(vip, &stable));
    // TEST-NET-1: an address no host of ours has, so binding it fails (nothing is sent).
    let text = agent.config_text(&cg, &one_service(vip, &stable)).replace(
        &format!("metrics_address: 127.0.0.1:{}", agent.metrics_port),
        "metrics_address: 192.0.2.1:19464",
    );
    agent.write_raw_config(&text);
    let (status, log) = agent.run_expecting_refusal();
    assert_eq!(status.code(), Some(70), "{log}");
    assert!(log.contains("cannot listen on 192.0.2.1:19464"), "{log}");
    assert!(!agent.pin_path.exists(), "no pins were made");
    assert!(
        Agent::attached(cg.path()).is_empty(),
        "nothing was attached"
    );

    // A directory that holds a file named cgroup.controllers is not a cgroup.
    let fake = agent.dir().join("fake-cgroup");
    std::fs::create_dir_all(&fake).expect("mkdir");
    std::fs::write(fake.join("cgroup.controllers"), "").expect("write");
    let text = agent.config_text(&cg, &one_service(vip, &stable)).replace(
        &format!("cgroup: {}", cg.path().display()),
        &format!("cgroup: {}", fake.display()),
    );
    agent.write_raw_config(&text);
    let (status, log) = agent.run_expecting_refusal();
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(
        log.contains("outside the cgroup2 mount") || log.contains("not an existing cgroup v2"),
        "{log}"
    );
    assert!(!agent.pin_path.exists());
}
