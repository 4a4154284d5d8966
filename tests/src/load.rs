//! The probe's `--load` mode as a background process: fixed-rate HTTP requests on new
//! connections from inside a cgroup, with every failure timestamped.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use crate::{TestCgroup, probe_bin};

pub struct Load {
    child: Option<Child>,
    stop_file: std::path::PathBuf,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Every failed request (5xx or a connection error): kind and when, unix ms.
    pub failures: Vec<(String, u64)>,
}

impl LoadResult {
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    pub fn failed(&self) -> u64 {
        self.failures.len() as u64
    }
}

impl Load {
    /// Starts `rate` requests a second for `seconds` against `target` from `cgroup`.
    pub fn start(cgroup: &TestCgroup, target: SocketAddr, rate: u32, seconds: f64) -> Self {
        Self::start_path(cgroup, target, rate, seconds, "/")
    }

    /// [`Load::start`] with every request for `path`.
    pub fn start_path(
        cgroup: &TestCgroup,
        target: SocketAddr,
        rate: u32,
        seconds: f64,
        path: &str,
    ) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let stop_file = std::env::temp_dir().join(format!(
            "sluice-load-stop-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&stop_file);
        let child = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--connect", &target.to_string()])
            .args(["--load", &rate.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--threads", "8"])
            .args(["--path", path])
            .arg("--stop-file")
            .arg(&stop_file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the load probe");
        Self {
            child: Some(child),
            stop_file,
        }
    }

    /// Ends the run now (the clients finish the requests they are in) and parses it.
    pub fn stop(self) -> LoadResult {
        std::fs::write(&self.stop_file, b"").expect("stop file");
        self.finish()
    }

    /// Waits for the run to end and parses what it printed.
    pub fn finish(mut self) -> LoadResult {
        let mut child = self.child.take().expect("running");
        let mut text = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut text)
            .expect("read probe output");
        let status = child.wait().expect("wait for the probe");
        assert!(status.success(), "load probe failed: {status}");
        let mut r = LoadResult::default();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("probe line");
            if let Some(kind) = v["fail"].as_str() {
                r.failures
                    .push((kind.to_owned(), v["at_unix_ms"].as_u64().expect("at")));
            } else {
                r.statuses = v["statuses"]
                    .as_object()
                    .expect("statuses")
                    .iter()
                    .map(|(k, v)| (k.parse().expect("code"), v.as_u64().expect("n")))
                    .collect();
                r.errors = v["errors"]
                    .as_object()
                    .expect("errors")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().expect("n")))
                    .collect();
            }
        }
        r
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stop_file);
        // A test that failed half-way: stop the load we started (by its pid).
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
