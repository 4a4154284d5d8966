//! Pooled clients and network namespaces for the drain tests.
//!
//! [`PooledClient`] runs `clients/pool.py` (urllib3's pool, Debian's `python3-urllib3`) in a
//! cgroup and, optionally, a network namespace; [`Netns`] is a namespace made for one test,
//! with its loopback up, in which backends can be started.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::TestCgroup;

/// Debian's interpreter, where `python3-urllib3` installs (not whatever `python3` is first
/// on the PATH).
pub const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/pool.py")
}

/// One answer (or failure) the pooled client saw.
#[derive(Clone, Debug)]
pub struct Answer {
    pub at_unix_ms: u64,
    pub served_by: Option<String>,
    pub status: u16,
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PoolRun {
    pub answers: Vec<Answer>,
}

impl PoolRun {
    pub fn errors(&self) -> Vec<&Answer> {
        self.answers.iter().filter(|a| a.error.is_some()).collect()
    }

    pub fn from(&self, backend: SocketAddr) -> Vec<&Answer> {
        let b = backend.to_string();
        self.answers
            .iter()
            .filter(|a| a.served_by.as_deref() == Some(b.as_str()))
            .collect()
    }
}

/// A running pooled client.
pub struct PooledClient {
    child: Option<Child>,
}

impl PooledClient {
    /// `pool` connections, `rate` requests a second in all, for `seconds`, to `target`,
    /// started in `cgroup` (and in `netns`, if given).
    pub fn start(
        cgroup: &TestCgroup,
        netns: Option<&Netns>,
        target: SocketAddr,
        pool: u32,
        rate: f64,
        seconds: f64,
    ) -> Self {
        Self::start_shaped(cgroup, netns, target, pool, rate, seconds, "shared")
    }

    /// As [`PooledClient::start`], each thread with a connection of its own: requests spread
    /// evenly over the connections, so the request share is the connections' share.
    pub fn start_per_thread(
        cgroup: &TestCgroup,
        netns: Option<&Netns>,
        target: SocketAddr,
        pool: u32,
        rate: f64,
        seconds: f64,
    ) -> Self {
        Self::start_shaped(cgroup, netns, target, pool, rate, seconds, "per-thread")
    }

    fn start_shaped(
        cgroup: &TestCgroup,
        netns: Option<&Netns>,
        target: SocketAddr,
        pool: u32,
        rate: f64,
        seconds: f64,
        shape: &str,
    ) -> Self {
        let procs = cgroup.path().join("cgroup.procs");
        let mut inner = vec![PYTHON.to_owned(), script().display().to_string()];
        inner.extend([
            target.ip().to_string(),
            target.port().to_string(),
            pool.to_string(),
            rate.to_string(),
            seconds.to_string(),
            shape.to_owned(),
        ]);
        if let Some(ns) = netns {
            let mut wrapped = vec![
                "ip".to_owned(),
                "netns".into(),
                "exec".into(),
                ns.name.clone(),
            ];
            wrapped.extend(inner);
            inner = wrapped;
        }
        // The shell joins the cgroup, then becomes the client: every socket it makes is
        // the cgroup's from the start.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec \"$@\"", procs.display()))
            .arg("sh")
            .args(&inner)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the pooled client");
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the run to end and parses what the client saw.
    pub fn finish(mut self) -> PoolRun {
        let out = self
            .child
            .take()
            .expect("running")
            .wait_with_output()
            .expect("pooled client");
        assert!(
            out.status.success(),
            "pooled client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client output");
        let answers = v["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .map(|r| Answer {
                at_unix_ms: r[0].as_u64().expect("time"),
                served_by: r[1].as_str().map(str::to_owned),
                status: r[2].as_u64().expect("status") as u16,
                error: r[3].as_str().map(str::to_owned),
            })
            .collect();
        PoolRun { answers }
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether urllib3 is importable by [`PYTHON`] (`cargo xtask test` installs it).
pub fn urllib3_present() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import urllib3"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A network namespace of the test's own (`ip netns add`), loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("sluice-{tag}");
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().expect("ip");
            assert!(s.success(), "ip {args:?} failed");
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes (listeners) belong to
    /// the namespace for their whole life, whichever thread uses them later.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd as _;
        let ns = std::fs::File::open(self.path()).expect("open the namespace");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only; the thread ends after `f`.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in the namespace")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
