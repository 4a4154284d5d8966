//! Reloads: every bad configuration is rejected with a message naming its key, and the
//! kernel maps are byte-for-byte what they were (read with bpftool, not with sluice); a good
//! one then applies. Needs root.

use std::{path::PathBuf, process::Command, time::Duration};

use sluice_tests::{Agent, Backend, TestCgroup, bpftool, probe, root_or_skip, tag, unused_port};

fn dump_maps(agent: &Agent) -> Vec<serde_json::Value> {
    [
        "SLUICE_SERVICES",
        "SLUICE_SLOTS",
        "SLUICE_SEGMENTS",
        "SLUICE_VIP_PORTS",
    ]
    .iter()
    .map(|m| {
        let path = agent.maps_dir().join(m).display().to_string();
        bpftool(&["map", "dump", "pinned", &path])
    })
    .collect()
}

/// The bad configurations of `config/bad` (the document is wrong) and then those of
/// `config/bad-on-node` (the document is fine, but names cgroups this node does not have).
fn bad_configs() -> Vec<(PathBuf, String, Vec<String>)> {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut files = Vec::new();
    for dir in ["bad", "bad-on-node"] {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(config.join(dir))
            .expect("config/bad*")
            .map(|e| e.expect("entry").path())
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .expect("expect line")
                .split(" ... ")
                .map(String::from)
                .collect();
            (f, text, expect)
        })
        .collect()
}

#[test]
fn bad_configs_are_rejected_and_change_nothing_in_the_kernel() {
    if !root_or_skip("bad_configs_are_rejected_and_change_nothing_in_the_kernel") {
        return;
    }
    let t = tag("reload");
    let cg = TestCgroup::new(&t);
    let segment = cg.child("team-a");
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let stable_b = Backend::start("127.0.0.1", "stable");
    let vip: std::net::SocketAddr = format!("127.77.4.1:{}", unused_port("127.77.4.1"))
        .parse()
        .expect("vip");
    let services = |share: u32| {
        format!(
            "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: {share}\n    \
             stable: [{{address: \"{}\", weight: 2}}, {{address: \"{}\"}}]\n    \
             canary: [{{address: \"{}\"}}]\n    segment: [\"{}\"]\n",
            stable.addr,
            stable_b.addr,
            canary.addr,
            segment.path().display()
        )
    };
    let agent = Agent::start(&t, &cg, &services(10));
    let before = dump_maps(&agent);
    assert!(
        before
            .iter()
            .all(|m| !m.as_array().expect("array").is_empty()),
        "every map holds entries: {before:?}"
    );

    let bad = bad_configs();
    assert!(bad.len() >= 15);
    for (i, (file, text, expect)) in bad.iter().enumerate() {
        // Through the file watcher for most, SIGHUP for every third.
        agent.write_raw_config(text);
        if i % 3 == 0 {
            agent.signal(libc::SIGHUP);
        }
        agent.wait_log("configuration rejected", i + 1, Duration::from_secs(5));
        let log = agent.log();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("configuration rejected"))
            .expect("line");
        for part in expect {
            assert!(
                last.contains(part.as_str()),
                "{}: log line {last:?} lacks {part:?}",
                file.display()
            );
        }
        assert_eq!(
            dump_maps(&agent),
            before,
            "{} changed the kernel maps",
            file.display()
        );
        // `sluice check` says the same, exit 64; for a config that is wrong only for this
        // node, only `--on-this-node` does.
        let check = |extra: &[&str]| {
            Command::new(sluice_tests::agent::sluice_bin())
                .args(["check", "--config"])
                .arg(file)
                .args(extra)
                .output()
                .expect("sluice check")
                .status
                .code()
        };
        let on_node_only = file.parent().is_some_and(|d| d.ends_with("bad-on-node"));
        let document = if on_node_only { Some(0) } else { Some(64) };
        assert_eq!(check(&[]), document, "{}", file.display());
        assert_eq!(check(&["--on-this-node"]), Some(64), "{}", file.display());
    }
    // Steering still runs on the old configuration.
    let r = probe(Some(&segment), vip, 100);
    assert_eq!(r.total(), 100, "{r:?}");

    // Keys that need a restart are refused on reload, whatever else is valid.
    let restart_only = agent.config_text_with(&cg, "signals: false", &services(20));
    agent.write_raw_config(&restart_only);
    agent.wait_log("cannot change on reload", 1, Duration::from_secs(5));
    assert!(
        agent.log().contains("key=\"signals\"") || agent.log().contains("key=signals"),
        "{}",
        agent.log()
    );
    assert_eq!(dump_maps(&agent), before);
    assert_eq!(
        Agent::attached(cg.path()).len(),
        sluice_tests::CGROUP_PROGRAMS,
        "signal programs stay attached"
    );

    // A good configuration then applies: the dumps can and do see a change.
    agent.write_config(&cg, &services(20));
    agent.wait_log("configuration applied", 1, Duration::from_secs(5));
    assert_ne!(dump_maps(&agent), before);
    assert_eq!(agent.status()["services"][0]["canary_percent"], 20.0);
    drop(agent);
    drop(segment);
}

#[test]
fn a_bad_config_at_startup_exits_64_and_leaves_existing_pins_alone() {
    if !root_or_skip("a_bad_config_at_startup_exits_64") {
        return;
    }
    let t = tag("badstart");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let vip: std::net::SocketAddr = format!("127.77.4.2:{}", unused_port("127.77.4.2"))
        .parse()
        .expect("vip");
    let yaml = format!(
        "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    stable: [{{address: \"{}\"}}]\n",
        stable.addr
    );
    let mut agent = Agent::start(&t, &cg, &yaml);
    agent.kill9();
    let before = dump_maps(&agent);
    let text = agent.config_text(&cg, &yaml) + "    canary_percent: 101\n";
    agent.write_raw_config(&text);
    let (status, err) = agent.run_expecting_refusal();
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(
        err.contains("services[0].canary_percent: 101 is out of range"),
        "{err}"
    );
    assert_eq!(dump_maps(&agent), before);
    assert_eq!(
        Agent::attached(cg.path()).len(),
        sluice_tests::CGROUP_PROGRAMS,
        "the running programs are left alone"
    );
}

/// A Kubernetes ConfigMap volume updates by writing a new `..<timestamp>` directory and
/// atomically swapping the `..data` symlink; the file path itself is a symlink through it.
/// The daemon must notice and apply the new content.
#[test]
fn a_configmap_style_symlink_swap_is_applied() {
    if !root_or_skip("a_configmap_style_symlink_swap_is_applied") {
        return;
    }
    let t = tag("symlink");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let vip: std::net::SocketAddr = format!("127.77.4.3:{}", unused_port("127.77.4.3"))
        .parse()
        .expect("vip");
    let services = |share: u32| {
        format!(
            "  - name: web\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: {share}\n    \
             stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n",
            stable.addr, canary.addr
        )
    };
    let mut agent = Agent::start(&t, &cg, &services(0));
    agent.kill9();
    // Re-lay the config as a ConfigMap volume: sluice.yaml -> ..data/sluice.yaml,
    // ..data -> ..v1.
    let volume = agent.config_path.parent().expect("dir").join("volume");
    let texts = [
        agent.config_text(&cg, &services(0)),
        agent.config_text(&cg, &services(100)),
    ];
    let version_dir = |n: u32, text: &str| {
        let d = volume.join(format!("..v{n}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("sluice.yaml"), text).expect("write");
    };
    version_dir(1, &texts[0]);
    std::os::unix::fs::symlink("..v1", volume.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/sluice.yaml", volume.join("sluice.yaml"))
        .expect("file link");
    std::fs::remove_file(&agent.config_path).expect("rm");
    std::os::unix::fs::symlink(volume.join("sluice.yaml"), &agent.config_path).expect("link");
    agent.spawn();
    assert_eq!(probe(Some(&cg), vip, 100).from("stable"), 100);

    // The update: a new directory, then an atomic rename of a fresh ..data symlink.
    version_dir(2, &texts[1]);
    std::os::unix::fs::symlink("..v2", volume.join("..data_tmp")).expect("tmp link");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap");
    agent.wait_log("configuration applied", 1, Duration::from_secs(5));
    let r = probe(Some(&cg), vip, 100);
    assert_eq!(r.from("canary"), 100, "{r:?}");
}

/// Whether `port`'s bit is set in SLUICE_VIP_PORTS, read with bpftool. Ports are indexed as
/// the kernel holds them: the two bytes in network order, read as a native u16.
fn port_bit(agent: &Agent, port: u16) -> bool {
    let raw = u16::from_ne_bytes(port.to_be_bytes());
    let (word, bit) = (u32::from(raw >> 6), raw & 63);
    let path = agent
        .maps_dir()
        .join("SLUICE_VIP_PORTS")
        .display()
        .to_string();
    let key: Vec<String> = word.to_ne_bytes().iter().map(u8::to_string).collect();
    let mut args = vec!["map", "lookup", "pinned", &path, "key"];
    args.extend(key.iter().map(String::as_str));
    let v = bpftool(&args);
    let bytes: Vec<u8> = v["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| {
            let h = b.as_str().expect("hex byte");
            u8::from_str_radix(h.trim_start_matches("0x"), 16).expect("hex")
        })
        .collect();
    let w = u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
    w >> bit & 1 == 1
}

#[test]
fn the_port_bitmap_follows_the_virtual_addresses() {
    if !root_or_skip("the_port_bitmap_follows_the_virtual_addresses") {
        return;
    }
    let t = tag("ports");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let ip = "127.77.4.9";
    let p1 = unused_port(ip);
    // A second port in another bit of the bitmap.
    let p2 = (1..)
        .map(|_| unused_port(ip))
        .find(|p| {
            (u16::from_ne_bytes(p.to_be_bytes()) ^ u16::from_ne_bytes(p1.to_be_bytes())) & 63 != 0
        })
        .expect("a second port");
    let service = |port: u16| {
        format!(
            "  - name: web\n    virtual_addresses: [\"{ip}:{port}\"]\n    stable: [{{address: \"{}\"}}]\n",
            stable.addr
        )
    };
    let agent = Agent::start(&t, &cg, &service(p1));
    assert!(port_bit(&agent, p1), "the first port is marked");
    assert!(!port_bit(&agent, p2));
    agent.write_config(&cg, &service(p2));
    agent.wait_log("configuration applied", 1, Duration::from_secs(5));
    assert!(port_bit(&agent, p2), "the new port is marked");
    assert!(!port_bit(&agent, p1), "the old port is cleared");
    let to = format!("{ip}:{p2}").parse().expect("vip");
    let r = probe(Some(&cg), to, 20);
    assert_eq!(r.from("stable"), 20, "{r:?}");
}
