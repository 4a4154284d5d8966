//! The test kit of sluice's kernel tests, bench and demo: throwaway cgroups, loopback
//! backends that say who they are and count what they saw, the agent as a real process, a
//! typed configuration builder, and the probe client. Everything a test creates is
//! removed when its handle drops; processes are stopped by their own pid only.

pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod config;
pub mod dns;
pub mod etcd;
pub mod http;
pub mod load;
pub mod pki;
pub mod pool;
pub mod ports;
pub mod schema;

use std::{net::SocketAddr, process::Command};

pub use agent::Agent;

/// Programs attached to the cgroup with signals on (the tests' default): connect4/6,
/// getpeername4/6, skb egress/ingress.
pub const CGROUP_PROGRAMS: usize = 6;
/// With signals off: connect4/6, getpeername4/6, sock_release (which then ends the tags).
pub const CGROUP_PROGRAMS_STEERING_ONLY: [&str; 5] = [
    "sluice_connect4",
    "sluice_connect6",
    "sluice_getpeername4",
    "sluice_getpeername6",
    "sluice_sock_release",
];
/// Links a restarted agent re-adopts: the cgroup ones plus four TCP tracepoints (resets
/// received and sent, retransmissions, socket destruction).
pub const ADOPTED_LINKS: usize = CGROUP_PROGRAMS + 4;
pub use backend::Backend;
pub use cgroup::TestCgroup;
pub use ports::unused_port;

/// Whether a test that needs root may run. Without root it says so and skips, unless
/// `CI=true`, where skipping would hide that nothing was tested: then it fails.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root, and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// A unique tag for names of things a test creates.
pub fn tag(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// What the probe saw over N connections.
#[derive(Debug)]
pub struct ProbeResult {
    pub replies: std::collections::BTreeMap<String, u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub peer_vip: u64,
    pub peer_other: u64,
}

impl ProbeResult {
    pub fn from(&self, backend: &str) -> u64 {
        self.replies.get(backend).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.replies.values().sum()
    }
}

/// The probe binary: cargo builds it beside the test executables' `deps/` folder.
pub fn probe_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_PROBE") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("sluice-probe")
}

/// Runs the probe (in `cgroup`, if any) against `target` `count` times with `extra`
/// arguments, and parses its JSON line.
fn run_probe(
    cgroup: Option<&TestCgroup>,
    target: SocketAddr,
    count: u64,
    extra: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(probe_bin());
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg.path());
    }
    let out = cmd
        .args([
            "--connect",
            &target.to_string(),
            "--count",
            &count.to_string(),
        ])
        .args(extra)
        .output()
        .expect("run sluice-probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe output")
}

/// Runs the probe with TCP_SYNCNT set: `count` connects that give up after `syncnt` SYN
/// retransmissions.
pub fn syn_limited_probe(
    cgroup: &TestCgroup,
    target: SocketAddr,
    count: u64,
    syncnt: u32,
) -> ProbeResult {
    let v = run_probe(
        Some(cgroup),
        target,
        count,
        &["--syncnt", &syncnt.to_string()],
    );
    probe_result(&v)
}

/// Starts the probe for one connect with TCP_SYNCNT set and returns at once: a connect that
/// keeps sending its SYN (to a [`full_listener`]) until the test kills the probe.
pub fn spawn_syn_limited_probe(
    cgroup: &TestCgroup,
    target: SocketAddr,
    syncnt: u32,
) -> std::process::Child {
    Command::new(probe_bin())
        .arg("--cgroup")
        .arg(cgroup.path())
        .args(["--connect", &target.to_string(), "--count", "1"])
        .args(["--syncnt", &syncnt.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("syn-limited probe")
}

/// A listener with a backlog of 0 that never accepts: once one connection waits in its
/// queue, the kernel drops every further SYN (real loss, on loopback).
pub fn full_listener(ip: std::net::Ipv4Addr) -> (std::net::TcpListener, std::net::TcpStream) {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls; the new descriptor is handed to TcpListener, which owns it.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let bound = libc::bind(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(bound, 0, "bind");
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        std::net::TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().expect("addr");
    // Fill the one slot of the accept queue, from this (unsteered) process.
    let filler = std::net::TcpStream::connect(addr).expect("fill the accept queue");
    (listener, filler)
}

/// A probe in `cgroup` holding one connection to `target` (`--hold`): it prints the backend
/// that answered (the first line, returned here), then waits for a line on its stdin, sends
/// one more request on the same connection and prints who answered that.
pub fn hold_probe(
    cgroup: &TestCgroup,
    target: SocketAddr,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    use std::io::BufRead as _;
    let mut child = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(cgroup.path())
        .args(["--connect", &target.to_string(), "--hold"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hold probe");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first line");
    (child, out, line)
}

/// Runs the probe: joins `cgroup` (if any), makes `count` connections to `target`.
pub fn probe(cgroup: Option<&TestCgroup>, target: SocketAddr, count: u64) -> ProbeResult {
    let v = run_probe(cgroup, target, count, &[]);
    probe_result(&v)
}

fn probe_result(v: &serde_json::Value) -> ProbeResult {
    let map = |k: &str| {
        v[k].as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
            .collect()
    };
    ProbeResult {
        replies: map("replies"),
        errors: map("errors"),
        peer_vip: v["peer_vip"].as_u64().expect("peer_vip"),
        peer_other: v["peer_other"].as_u64().expect("peer_other"),
    }
}

/// z-score of `k` successes in `n` trials against probability `p`.
pub fn z_score(k: u64, n: u64, p: f64) -> f64 {
    let n_f = n as f64;
    (k as f64 - n_f * p) / (n_f * p * (1.0 - p)).sqrt()
}

/// An address on `ip` with a port free now (for a virtual address).
pub fn free_address(ip: &str) -> SocketAddr {
    format!("{ip}:{}", unused_port(ip))
        .parse()
        .expect("an address")
}

/// One service of a stable and a canary backend, at `percent` canary, as config YAML.
pub fn service_yaml(
    name: &str,
    vip: SocketAddr,
    stable: &Backend,
    canary: &Backend,
    percent: u32,
) -> String {
    format!(
        "  - name: {name}\n    virtual_addresses: [\"{vip}\"]\n    canary_percent: {percent}\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n",
        stable.addr, canary.addr
    )
}

/// How many lines of `text` hold `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// `bpftool --json ARGS`, parsed.
pub fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        // `bpftool cgroup show` prints nothing at all for a cgroup with no programs.
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

/// SO_LINGER 0: close() sends a reset instead of a FIN.
pub fn reset_on_close(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a pointer to a live, correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// What the probe saw over N HTTP connections.
#[derive(Debug)]
pub struct HttpProbeResult {
    pub statuses: std::collections::BTreeMap<u16, u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub connections: u64,
    /// Each answered request's time from its first byte written to its response read, by
    /// the backend that answered (`X-Served-By`).
    pub latencies_us: std::collections::BTreeMap<String, Vec<u64>>,
}

/// Runs the probe in HTTP mode: `connections` connections, each sending `paths` in turn
/// (keep-alive), reading every response.
pub fn http_probe(
    cgroup: Option<&TestCgroup>,
    target: SocketAddr,
    connections: u64,
    paths: &[&str],
) -> HttpProbeResult {
    http_probe_parallel(cgroup, target, 1, connections, paths)
}

/// [`http_probe`] on `parallel` threads at once, each with `connections` connections.
pub fn http_probe_parallel(
    cgroup: Option<&TestCgroup>,
    target: SocketAddr,
    parallel: u64,
    connections: u64,
    paths: &[&str],
) -> HttpProbeResult {
    let parallel = parallel.to_string();
    let v = run_probe(
        cgroup,
        target,
        connections,
        &["--http", &paths.join(","), "--parallel", &parallel],
    );
    HttpProbeResult {
        statuses: v["statuses"]
            .as_object()
            .expect("statuses")
            .iter()
            .map(|(k, v)| (k.parse().expect("code"), v.as_u64().expect("n")))
            .collect(),
        errors: v["errors"]
            .as_object()
            .expect("errors")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("n")))
            .collect(),
        connections: v["connections"].as_u64().expect("connections"),
        latencies_us: v["latencies_us"]
            .as_object()
            .expect("latencies_us")
            .iter()
            .map(|(k, v)| {
                let l = v.as_array().expect("latencies");
                (
                    k.clone(),
                    l.iter().map(|l| l.as_u64().expect("µs")).collect(),
                )
            })
            .collect(),
    }
}

/// `promtool check metrics` must accept an exposition (Prometheus' own linter).
pub fn promtool_check(exposition: &str) {
    use std::io::Write as _;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
