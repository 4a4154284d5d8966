//! The daemon against odd hosts and clumsy input: files written in place, empty files,
//! devices and huge files as its configuration, its cgroup deleted and made again, a full disk
//! under its state, a cgroup namespace of its own. Each asserts what clients saw, not only
//! what sluice says. Needs root.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, Backend, TestCgroup, count_lines as count, free_address as vip, http::Scraped,
    http::get, probe, root_or_skip, service_yaml as service, tag,
};

#[test]
fn a_file_written_in_place_is_taken_only_once_it_is_whole_and_has_settled() {
    if !root_or_skip("a_file_written_in_place_is_taken_only_once_it_is_whole_and_has_settled") {
        return;
    }
    let t = tag("in-place");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let (web, api) = (vip("127.77.10.1"), vip("127.77.10.2"));
    let both = service("web", web, &stable, &canary, 0) + &service("api", api, &stable, &canary, 0);
    let agent = Agent::start(&t, &cg, &both);
    let whole = agent.config_text(&cg, &both);
    // Half the file, in place (same inode), as an editor or `cp` over it writes it: it parses
    // (only `web` is left), and it stays so for 2.5 s.
    let half = agent.config_text(&cg, &service("web", web, &stable, &canary, 0));
    std::fs::write(&agent.config_path, &half).expect("write in place");
    std::thread::sleep(Duration::from_millis(2_500));
    let r = probe(Some(&cg), api, 50);
    assert_eq!(r.from("stable"), 50, "the half file was not applied: {r:?}");
    // The rest arrives: back to the whole file, which is what is in force anyway.
    std::fs::write(&agent.config_path, &whole).expect("write in place");
    std::thread::sleep(Duration::from_millis(4_500));
    assert_eq!(
        count(&agent.log(), "configuration applied"),
        0,
        "{}",
        agent.log()
    );

    // A whole new version written in place is taken once it has stood still for the settle
    // time (3 s, on a 1 s poll).
    let shifted =
        service("web", web, &stable, &canary, 0) + &service("api", api, &stable, &canary, 100);
    std::fs::write(&agent.config_path, agent.config_text(&cg, &shifted)).expect("write in place");
    let started = Instant::now();
    agent.wait_log("configuration applied", 1, Duration::from_secs(8));
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    let r = probe(Some(&cg), api, 50);
    assert_eq!(r.from("canary"), 50, "{r:?}");

    // An empty file (atomically replaced) is no configuration: nothing changes.
    agent.write_raw_config("");
    agent.wait_log("configuration rejected", 1, Duration::from_secs(5));
    assert!(agent.log().contains("services: missing"), "{}", agent.log());
    let r = probe(Some(&cg), web, 50);
    assert_eq!(r.total(), 50, "{r:?}");
    let (m, metrics) = Scraped::fetch(agent.metrics_addr());
    assert_eq!(
        m.get("sluice_config_reloads_total", &[("result", "applied")]),
        1,
        "{metrics}"
    );
    assert_eq!(
        m.get("sluice_config_reloads_total", &[("result", "rejected")]),
        1
    );
}

#[test]
fn the_attach_cgroup_deleted_is_reported_and_made_again_is_steered_again() {
    if !root_or_skip("the_attach_cgroup_deleted_is_reported_and_made_again_is_steered_again") {
        return;
    }
    let t = tag("cgroup-gone");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let web = vip("127.77.10.3");
    let agent = Agent::start(&t, &cg, &service("web", web, &stable, &canary, 100));
    assert_eq!(probe(Some(&cg), web, 20).from("canary"), 20);
    let metrics = agent.metrics_addr();
    assert_eq!(get(metrics, "/ready").0, 200);

    std::fs::remove_dir(cg.path()).expect("rmdir the cgroup");
    agent.wait_log("the attach cgroup was deleted", 1, Duration::from_secs(5));
    let (code, body) = get(metrics, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("was deleted"), "{body}");
    let m = Scraped::fetch(metrics).0;
    assert_eq!(m.get("sluice_cgroup_attached", &[]), 0);

    std::fs::create_dir(cg.path()).expect("mkdir the cgroup again");
    agent.wait_log(
        "the attach cgroup was made again",
        1,
        Duration::from_secs(5),
    );
    assert_eq!(get(metrics, "/ready").0, 200);
    let r = probe(Some(&cg), web, 20);
    assert_eq!(r.from("canary"), 20, "steered again: {r:?}");
    assert_eq!(
        Scraped::fetch(metrics).0.get("sluice_cgroup_attached", &[]),
        1
    );
    assert_eq!(
        Agent::attached(cg.path()).len(),
        sluice_tests::CGROUP_PROGRAMS,
        "every program on the new cgroup"
    );
    // Only the new cgroup's links are pinned.
    let links = std::fs::read_dir(agent.maps_dir().parent().expect("abi dir").join("links"))
        .expect("links")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("cg"))
        })
        .count();
    assert_eq!(links, 1);
}

#[test]
fn a_failed_state_save_is_counted_and_leaves_no_temporary() {
    if !root_or_skip("a_failed_state_save_is_counted_and_leaves_no_temporary") {
        return;
    }
    let t = tag("state-full");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let web = vip("127.77.10.4");
    let rollout = format!(
        "  - name: web\n    virtual_addresses: [\"{web}\"]\n    l7: http1\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n    \
         rollout: {{steps: [10, 50], interval: 1h}}\n",
        stable.addr, canary.addr
    );
    let mut agent = Agent::prepare(&t, &cg, &rollout);
    // A 64 KiB tmpfs, full: the state cannot be written there.
    let full = agent.dir().join("full");
    std::fs::create_dir_all(&full).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&full)
        .status()
        .expect("mount");
    assert!(mounted.success());
    let filler = full.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 256 * 1024]);
    let state = full.join("rollouts.json");
    let text = agent.config_text(&cg, &rollout).replace(
        &format!("state_path: {}", agent.state_path.display()),
        &format!("state_path: {}", state.display()),
    );
    agent.write_raw_config(&text);
    agent.spawn();
    agent.wait_log(
        "persisting the rollout state failed",
        1,
        Duration::from_secs(5),
    );
    let m = Scraped::fetch(agent.metrics_addr()).0;
    assert!(m.get("sluice_state_saves_total", &[("result", "failed")]) >= 1);
    let left: Vec<String> = std::fs::read_dir(&full)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["filler".to_owned()],
        "no temporary, no half state file"
    );
    agent.kill9();
    let _ = Command::new("umount").arg(&full).status();
}

#[test]
fn a_device_a_fifo_or_a_huge_file_as_the_config_is_refused_without_stalling() {
    if !root_or_skip("a_device_a_fifo_or_a_huge_file_as_the_config_is_refused_without_stalling") {
        return;
    }
    let t = tag("odd-config");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let web = vip("127.77.10.7");
    let agent = Agent::start(&t, &cg, &service("web", web, &stable, &canary, 0));
    let metrics = agent.metrics_addr();
    let fifo = agent.dir().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let huge = agent.dir().join("huge.yaml");
    std::fs::write(&huge, vec![b'#'; 36 << 20]).expect("write");
    let nested = agent.dir().join("nested.yaml");
    std::fs::write(&nested, "services: ".to_owned() + &"[".repeat(30_000)).expect("write");
    for (i, target) in [Path::new("/dev/zero"), &fifo, &huge, &nested]
        .iter()
        .enumerate()
    {
        // The config path becomes a symlink to it, as a ConfigMap's file is.
        let _ = std::fs::remove_file(&agent.config_path);
        std::os::unix::fs::symlink(target, &agent.config_path).expect("symlink");
        agent.signal(libc::SIGHUP);
        let started = Instant::now();
        agent.wait_log("configuration rejected", i + 1, Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{target:?}: {:?}",
            started.elapsed()
        );
        // The loop answers at once meanwhile.
        let started = Instant::now();
        assert_eq!(get(metrics, "/live").0, 200);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let log = agent.log();
    for why in ["not a regular file", "at most", "nested more than"] {
        assert!(log.contains(why), "{why}:\n{log}");
    }
    let r = probe(Some(&cg), web, 20);
    assert_eq!(r.from("stable"), 20, "steering as before: {r:?}");
}

#[test]
fn in_a_cgroup_namespace_of_its_own_the_nodes_tree_must_be_named() {
    if !root_or_skip("in_a_cgroup_namespace_of_its_own_the_nodes_tree_must_be_named") {
        return;
    }
    let t = tag("cgroup-ns");
    let cg = TestCgroup::new(&t);
    let dir = std::env::temp_dir().join(format!("sluice-test-{t}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mount = sluice::cgroup::cgroup2_mount().expect("cgroup2 mount");
    let relative = cg.path().strip_prefix(&mount).expect("below the mount");
    let config = |extra: &str| {
        let path = dir.join("sluice.yaml");
        std::fs::write(
            &path,
            format!(
                "{extra}cgroup: {}\nservices:\n  - name: web\n    \
                 virtual_addresses: [\"10.96.0.10:80\"]\n    stable: [{{address: 10.0.1.1:8080}}]\n",
                relative.display()
            ),
        )
        .expect("write");
        path
    };
    // `unshare --cgroup`: a cgroup namespace of its own, as a container's process has.
    let check = |path: &Path, own_namespace: bool| {
        let mut cmd = if own_namespace {
            let mut c = Command::new("unshare");
            c.args(["--cgroup", "--"])
                .arg(sluice_tests::agent::sluice_bin());
            c
        } else {
            Command::new(sluice_tests::agent::sluice_bin())
        };
        let out = cmd
            .args(["check", "--on-this-node", "--config"])
            .arg(path)
            .output()
            .expect("sluice check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plain = config("");
    assert_eq!(check(&plain, false).0, Some(0), "on the host it binds");
    let (code, err) = check(&plain, true);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("cgroup_root: missing: this process runs in a cgroup namespace of its own"),
        "{err}"
    );
    let named = config(&format!("cgroup_root: {}\n", mount.display()));
    let (code, err) = check(&named, true);
    assert_eq!(code, Some(0), "with the node's tree named it binds: {err}");
    let wrong = config(&format!("cgroup_root: {}\n", dir.display()));
    let (code, err) = check(&wrong, true);
    assert_eq!(code, Some(64));
    assert!(err.contains("is not a cgroup2 filesystem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
