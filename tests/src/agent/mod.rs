use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::TestCgroup;

mod tags;

/// `sluice run` as a real process, with its own config file, pin directory, socket and log.
/// Dropping it kills the process (by its pid) and removes every pin it made.
pub struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    pub config_path: PathBuf,
    pub pin_path: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub state_path: PathBuf,
    /// A port free when the agent was prepared, for its `/metrics`.
    pub metrics_port: u16,
    /// Capabilities `sluice run` is limited to (`None`: root's all).
    capabilities: Option<Vec<String>>,
}

pub fn sluice_bin() -> PathBuf {
    std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice"))
}

/// Whether the daemon behind `socket` answers `sluice status`: its socket accepts before the
/// programs are attached, but requests are answered only once it is steering.
pub fn answers(sluice: &Path, socket: &Path) -> bool {
    Command::new(sluice)
        .args(["status", "--output", "json", "--socket"])
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `timeout` for the daemon behind `socket` to answer.
pub fn wait_until_answering(sluice: &Path, socket: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if answers(sluice, socket) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Agent {
    /// Writes a config (header for `cgroup` + `services_yaml`) and starts the daemon.
    pub fn start(tag: &str, cgroup: &TestCgroup, services_yaml: &str) -> Self {
        let mut agent = Self::prepare(tag, cgroup, services_yaml);
        agent.spawn();
        agent
    }

    /// Writes a config as [`Agent::start`] does, without starting the daemon.
    pub fn prepare(tag: &str, cgroup: &TestCgroup, services_yaml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let agent = Self {
            child: None,
            config_path: dir.join("sluice.yaml"),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{tag}")),
            socket: dir.join("api/sluice.sock"),
            log_path: dir.join("sluice.log"),
            state_path: dir.join("rollouts.json"),
            metrics_port: crate::unused_port("127.0.0.1"),
            capabilities: None,
            dir,
        };
        agent.write_config(cgroup, services_yaml);
        agent
    }

    /// The agent's own scratch directory (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_text(&self, cgroup: &TestCgroup, services_yaml: &str) -> String {
        format!(
            "cgroup: {}\npin_path: {}\napi_socket: {}\nstate_path: {}\nmetrics_address: 127.0.0.1:{}\nservices:\n{services_yaml}",
            cgroup.path().display(),
            self.pin_path.display(),
            self.socket.display(),
            self.state_path.display(),
            self.metrics_port
        )
    }

    /// [`Agent::config_text`] with `top_level` (one `key: value` line) before `services:`.
    pub fn config_text_with(
        &self,
        cgroup: &TestCgroup,
        top_level: &str,
        services_yaml: &str,
    ) -> String {
        self.config_text(cgroup, services_yaml)
            .replace("services:\n", &format!("{top_level}\nservices:\n"))
    }

    pub fn write_config(&self, cgroup: &TestCgroup, services_yaml: &str) {
        self.write_raw_config(&self.config_text(cgroup, services_yaml));
    }

    /// Replaces the config file atomically (rename), as a ConfigMap update would.
    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.dir.join("sluice.yaml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// From now on `sluice run` starts with only these capabilities (as root, e.g. `bpf`,
    /// `net_admin`), through util-linux's setpriv: its bounding set, and so what root's exec
    /// gets, holds nothing else.
    pub fn limit_capabilities(&mut self, capabilities: &[&str]) {
        self.capabilities = Some(capabilities.iter().map(|c| (*c).to_owned()).collect());
    }

    /// `sluice run` on this agent's config file, its log into `log`.
    fn run_command(&self, log: std::fs::File) -> Command {
        let mut cmd = match &self.capabilities {
            None => Command::new(sluice_bin()),
            Some(caps) => {
                let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--bounding-set=-all{keep}"))
                    .arg("--inh-caps=-all")
                    .arg("--")
                    .arg(sluice_bin());
                cmd
            }
        };
        cmd.args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// Starts (or restarts) the daemon and waits until its socket answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = self
            .run_command(log)
            .spawn()
            .expect("start sluice run (SLUICE_BIN)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if answers(&sluice_bin(), &self.socket) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("sluice run exited with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "sluice run did not answer within 15 s; log:\n{}",
            self.log()
        );
    }

    /// SIGKILL, by the pid we started.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the daemon is running and answers its socket.
    pub fn answers(&self) -> bool {
        self.child.is_some() && answers(&sluice_bin(), &self.socket)
    }

    /// The daemon's pid (it must be running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the daemon (by its pid).
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: plain kill(2) on a pid we started and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Runs a sluice CLI command against this daemon; (success, stdout, stderr).
    pub fn sluice(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(sluice_bin())
            .args(args)
            .env("SLUICE_SOCKET", &self.socket)
            .output()
            .expect("run sluice");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `sluice status --output json`, held to docs/status.schema.json.
    pub fn status(&self) -> serde_json::Value {
        let (ok, out, err) = self.sluice(&["status", "--output", "json"]);
        assert!(ok, "sluice status failed: {err}");
        let status = serde_json::from_str(&out).expect("status json");
        crate::schema::assert_status_schema(&status);
        status
    }

    /// One steering counter of one service, as the daemon reports it.
    pub fn counter(&self, service: &str, counter: &str) -> u64 {
        self.service(service)["counters"][counter]
            .as_u64()
            .expect("counter")
    }

    pub fn weight(&self, service: &str, percent: f64) {
        let (ok, _, err) = self.sluice(&["weight", service, &percent.to_string()]);
        assert!(ok, "sluice weight failed: {err}");
    }

    /// One service's entry in `sluice status`.
    pub fn service(&self, service: &str) -> serde_json::Value {
        let status = self.status();
        status["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["name"] == service)
            .unwrap_or_else(|| panic!("no service {service} in status"))
            .clone()
    }

    /// The rollout of a service, as `sluice status` reports it.
    pub fn rollout(&self, service: &str) -> serde_json::Value {
        self.service(service)["rollout"].clone()
    }

    /// Waits until the rollout's phase is `phase`; returns the rollout.
    pub fn wait_phase(&self, service: &str, phase: &str, timeout: Duration) -> serde_json::Value {
        let end = Instant::now() + timeout;
        loop {
            let r = self.rollout(service);
            if r["phase"] == phase {
                return r;
            }
            assert!(
                Instant::now() < end,
                "rollout of {service} never reached {phase}; now:\n{r:#}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().matches(needle).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("log never had {n}x {needle:?}:\n{}", self.log());
    }

    /// The address `/metrics` is served on (the config asks for port 0; the startup log says
    /// which port the daemon got).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("sluice started"))
            .expect("startup line");
        let addr = line
            .split("metrics=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("metrics= in the startup line");
        addr.parse().expect("metrics address")
    }

    pub fn maps_dir(&self) -> PathBuf {
        sluice::dataplane::abi_dir(&self.pin_path).join("maps")
    }

    /// Runs `sluice run` on the current config file, expecting it to refuse to start: its exit
    /// status and its log. Leaves `self`'s own process (if any) alone. An agent that starts
    /// after all is killed (by its pid) after 15 s, and the test fails.
    pub fn run_expecting_refusal(&self) -> (std::process::ExitStatus, String) {
        let log_path = self.dir.join("refused.log");
        let log = std::fs::File::create(&log_path).expect("refusal log");
        let mut child = self.run_command(log).spawn().expect("sluice run");
        let end = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for sluice run") {
                break status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice run did not refuse to start within 15 s; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status,
            std::fs::read_to_string(&log_path).expect("read refusal log"),
        )
    }

    /// Programs attached to a cgroup, as bpftool sees them.
    pub fn attached(cgroup: &Path) -> Vec<String> {
        let v = crate::bpftool(&["cgroup", "show", &cgroup.display().to_string()]);
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["name"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(sluice_bin())
            .args(["detach", "--pin-path"])
            .arg(&self.pin_path)
            .arg("--state-path")
            .arg(&self.state_path)
            .arg("--socket")
            .arg(&self.socket)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
