//! The image, run in a real container with exactly the DaemonSet's privileges: crun (Debian)
//! runs its root filesystem with capabilities BPF, NET_ADMIN and PERFMON only, a read-only
//! root, a network and a cgroup namespace of its own, and the DaemonSet's mounts (the host's
//! bpffs, the host's cgroup2 tree read-only at /host/sys/fs/cgroup, the config, the socket's
//! and the state's directories). A client on the host is steered, its connections counted,
//! and a rollout promoted, as the servers saw; with any one capability removed the container
//! exits at start naming it. Needs root, crun and umoci, and the image `cargo xtask test`
//! builds (target/image).
//!
//! crun refuses a hybrid cgroup host (cgroup v1 controllers beside the v2 tree). The test
//! runs it in a mount namespace of its own where /sys/fs/cgroup is the cgroup2 tree alone (a
//! tmpfs over the v1 tree, the v2 tree moved onto it), with crun's cgroup manager off: the
//! container then stays in the test's cgroup, in a cgroup namespace rooted there.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_tests::{Backend, TestCgroup, http::Scraped, probe, root_or_skip, tag, unused_port};

const CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
const METRICS_PORT: u16 = 19464;

/// One container of the image, and everything it uses on the host; removed on drop.
struct Container {
    name: String,
    dir: PathBuf,
    pin_path: PathBuf,
    runner: Option<Child>,
}

fn image() -> Option<PathBuf> {
    let layout = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/oci");
    if layout.join("index.json").exists() {
        return Some(layout);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "no image at {}: `cargo xtask test` builds it",
            layout.display()
        );
    }
    eprintln!("SKIPPED the container tests: no image (run `cargo xtask image` as root)");
    None
}

impl Container {
    /// Unpacks the image into a bundle that runs `sluice run` with `caps` and `config`.
    fn new(t: &str, layout: &Path, caps: &[&str], config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-test-{t}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["etc", "run", "state"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dir");
        }
        std::fs::write(dir.join("etc/sluice.yaml"), config).expect("config");
        let bundle = dir.join("bundle");
        let unpacked = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:sluice", layout.display()))
            .arg(&bundle)
            .output()
            .expect("umoci unpack");
        assert!(
            unpacked.status.success(),
            "{}",
            String::from_utf8_lossy(&unpacked.stderr)
        );
        let path = bundle.join("config.json");
        let mut spec: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("spec")).expect("json");
        spec["process"]["terminal"] = json!(false);
        let set = json!(caps);
        spec["process"]["capabilities"] = json!({
            "bounding": set, "effective": set, "permitted": set,
            "inheritable": [], "ambient": [],
        });
        spec["process"]["noNewPrivileges"] = json!(true);
        spec["root"]["readonly"] = json!(true);
        spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(json!({"type": "cgroup"}));
        let mounts = spec["mounts"].as_array_mut().expect("mounts");
        for (src, dst, ro) in [
            (PathBuf::from("/sys/fs/bpf"), "/sys/fs/bpf", false),
            // In the runner's mount namespace /sys/fs/cgroup is the cgroup2 tree alone; read-only
            // recursively (rro), as the DaemonSet's recursiveReadOnly mounts it.
            (PathBuf::from("/sys/fs/cgroup"), "/host/sys/fs/cgroup", true),
            (dir.join("etc"), "/etc/sluice", true),
            (dir.join("run"), "/run/sluice", false),
            (dir.join("state"), "/var/lib/sluice", false),
        ] {
            let options = if ro {
                json!(["rbind", "rprivate", "rro"])
            } else {
                json!(["rbind", "rprivate", "rw"])
            };
            mounts.push(
                json!({"destination": dst, "type": "bind", "source": src, "options": options}),
            );
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("spec");
        Self {
            name: format!("sluice-test-{t}"),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{t}")),
            dir,
            runner: None,
        }
    }

    /// crun in a mount namespace of its own where /sys/fs/cgroup is the cgroup2 tree alone.
    fn command(&self) -> Command {
        let script = format!(
            "set -e; mount --make-rprivate /; mkdir -p {d}/cg2; \
             mount --bind \"$(findmnt -n -o TARGET -t cgroup2 | head -n1)\" {d}/cg2; \
             mount -t tmpfs tmpfs /sys/fs/cgroup; mount --move {d}/cg2 /sys/fs/cgroup; \
             exec crun --cgroup-manager=disabled run --bundle {d}/bundle {n}",
            d = self.dir.display(),
            n = self.name
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--", "sh", "-c", &script]);
        cmd
    }

    /// Runs it to its end (a refused start): exit code and output.
    fn run_to_end(&self) -> (Option<i32>, String) {
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .expect("crun run");
        let _ = Command::new("crun")
            .args(["delete", "-f", &self.name])
            .output();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Starts it and waits until the agent answers on its socket.
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("container.log")).expect("log");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("crun run");
        self.runner = Some(child);
        let socket = self.dir.join("run/sluice.sock");
        let sluice = sluice_tests::agent::sluice_bin();
        assert!(
            sluice_tests::agent::wait_until_answering(&sluice, &socket, Duration::from_secs(20)),
            "the containerised agent did not answer; its log:\n{}",
            std::fs::read_to_string(self.dir.join("container.log")).unwrap_or_default()
        );
    }

    /// `sluice ARGS` from the host, on the container's socket.
    fn sluice(&self, args: &[&str]) -> Value {
        let out = Command::new(sluice_tests::agent::sluice_bin())
            .args(args)
            .args(["--output", "json", "--socket"])
            .arg(self.dir.join("run/sluice.sock"))
            .output()
            .expect("sluice");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = serde_json::from_slice(&out.stdout).expect("json");
        if args.first() == Some(&"status") {
            sluice_tests::schema::assert_status_schema(&v);
        }
        v
    }

    /// `/metrics`, from inside the container's network namespace.
    fn metrics(&self) -> Scraped {
        let state = Command::new("crun")
            .args(["state", &self.name])
            .output()
            .expect("crun state");
        let pid = serde_json::from_slice::<Value>(&state.stdout).expect("state")["pid"]
            .as_u64()
            .expect("pid");
        let netns = format!("--net=/proc/{pid}/ns/net");
        let _ = Command::new("nsenter")
            .args([&netns, "ip", "link", "set", "lo", "up"])
            .status();
        let out = Command::new("nsenter")
            .args([
                &netns,
                "curl",
                "-sf",
                &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
            ])
            .output()
            .expect("curl in the container's network namespace");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Scraped::parse(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("crun")
            .args(["kill", &self.name, "TERM"])
            .output();
        if let Some(mut c) = self.runner.take() {
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("crun")
            .args(["delete", "-f", &self.name])
            .output();
        let state = self.dir.join("state/rollouts.json");
        let _ = Command::new(sluice_tests::agent::sluice_bin())
            .arg("detach")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .arg("--state-path")
            .arg(&state)
            .arg("--socket")
            .arg(self.dir.join("run/sluice.sock"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(t: &str, cg: &TestCgroup, services: &str) -> String {
    let mount = sluice::cgroup::cgroup2_mount().expect("cgroup2 mount");
    let relative = cg.path().strip_prefix(&mount).expect("below the mount");
    format!(
        "cgroup_root: /host/sys/fs/cgroup\ncgroup: {}\npin_path: /sys/fs/bpf/sluice-test-{t}\n\
         metrics_address: 0.0.0.0:{METRICS_PORT}\nservices:\n{services}",
        relative.display()
    )
}

#[test]
fn the_image_steers_counts_and_rolls_out_in_a_container_with_three_capabilities() {
    if !root_or_skip("the_image_steers_counts_and_rolls_out_in_a_container_with_three_capabilities")
    {
        return;
    }
    let Some(layout) = image() else { return };
    let t = tag("container");
    let cg = TestCgroup::new(&t);
    let (stable, canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let (r_stable, r_canary) = (
        Backend::start("127.0.0.1", "stable"),
        Backend::start("127.0.0.1", "canary"),
    );
    let web: std::net::SocketAddr = format!("127.77.12.1:{}", unused_port("127.77.12.1"))
        .parse()
        .expect("vip");
    let roll: std::net::SocketAddr = format!("127.77.12.2:{}", unused_port("127.77.12.2"))
        .parse()
        .expect("vip");
    let services = format!(
        "  - name: web\n    virtual_addresses: [\"{web}\"]\n    canary_percent: 50\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n\
         \x20 - name: roll\n    virtual_addresses: [\"{roll}\"]\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n    \
         rollout: {{steps: [50], interval: 1s, min_samples: 50}}\n",
        stable.addr, canary.addr, r_stable.addr, r_canary.addr
    );
    let mut c = Container::new(&t, &layout, &CAPS, &config(&t, &cg, &services));
    c.start();
    // Steering: a client on the host, in the steered cgroup, through the virtual address.
    let r = probe(Some(&cg), web, 200);
    assert_eq!(r.total(), 200, "{r:?}");
    assert_eq!(stable.accepted() + canary.accepted(), 200);
    assert!(
        stable.accepted() > 40 && canary.accepted() > 40,
        "about half each: {r:?}"
    );
    // Signals: every handshake counted, per version, as the servers accepted them.
    let m = c.metrics();
    let established = |v: &str| {
        m.get(
            "sluice_connections_established_total",
            &[("service", "web"), ("version", v)],
        )
    };
    assert_eq!(established("stable"), stable.accepted());
    assert_eq!(established("canary"), canary.accepted());
    eprintln!(
        "in the container: 200 steered, stable {} canary {} accepted and counted",
        stable.accepted(),
        canary.accepted()
    );
    // A rollout: the canary gets its step's share, passes, and is promoted.
    let end = Instant::now() + Duration::from_secs(60);
    let phase = loop {
        let _ = probe(Some(&cg), roll, 400);
        let status = c.sluice(&["status", "roll"]);
        let phase = status["services"][0]["rollout"]["phase"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if phase == "Succeeded" || phase == "RolledBack" || Instant::now() > end {
            break phase;
        }
    };
    assert_eq!(phase, "Succeeded", "{}", c.sluice(&["status", "roll"]));
    assert!(r_canary.accepted() > 0 && r_stable.accepted() > 0);
    let before = r_canary.accepted();
    let after = probe(Some(&cg), roll, 50);
    assert_eq!(
        after.from("canary"),
        50,
        "promoted: every new connection to the canary"
    );
    assert_eq!(r_canary.accepted(), before + 50);
    eprintln!(
        "in the container: promoted after {} stable and {before} canary connections of the rollout",
        r_stable.accepted()
    );
}

#[test]
fn without_any_one_capability_the_containerised_agent_refuses_naming_it() {
    if !root_or_skip("without_any_one_capability_the_containerised_agent_refuses_naming_it") {
        return;
    }
    let Some(layout) = image() else { return };
    let t = tag("container-caps");
    let cg = TestCgroup::new(&t);
    let stable = Backend::start("127.0.0.1", "stable");
    let services = format!(
        "  - name: web\n    virtual_addresses: [\"127.77.12.3:80\"]\n    stable: [{{address: \"{}\"}}]\n",
        stable.addr
    );
    for dropped in CAPS {
        let kept: Vec<&str> = CAPS.iter().copied().filter(|c| *c != dropped).collect();
        let c = Container::new(&t, &layout, &kept, &config(&t, &cg, &services));
        let (code, output) = c.run_to_end();
        assert_eq!(code, Some(77), "without {dropped}: {output}");
        assert!(
            output.contains(&format!("needs {dropped} (")),
            "without {dropped}: {output}"
        );
        assert!(!c.pin_path.exists(), "without {dropped}: no pins");
    }
}
