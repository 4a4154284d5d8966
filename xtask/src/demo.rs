//! `cargo xtask demo`: steering shown live. Everything it starts is stopped, and every pin
//! and cgroup it made removed, when it ends or is interrupted (Ctrl-C).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{cargo, run, workspace_root};

const VIP: &str = "127.0.10.100:80";
const STABLE: &str = "127.0.10.1:8080";
const CANARY: &str = "127.0.10.2:8080";
const PIN_PATH: &str = "/sys/fs/bpf/sluice-demo";
const SOCKET: &str = "/run/sluice-demo/sluice.sock";
/// Canary share steps, percent, each held for `STEP`.
const STEPS: [f64; 6] = [0.0, 1.0, 5.0, 25.0, 50.0, 100.0];
const STEP: Duration = Duration::from_secs(5);
/// The client's connection rate ceiling, per second.
const CLIENT_RATE: u64 = 400;

pub fn demo() -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("the demo attaches kernel programs: run it as root");
    }
    run(cargo().args(["build", "--package", "sluice"]))?;
    let root = workspace_root();
    let sluice = root.join("target/debug/sluice");
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("Ctrl-C handler")?;

    let mut env = DemoEnv {
        sluice: sluice.clone(),
        cgroup: None,
        children: Vec::new(),
        backends: Vec::new(),
    };
    let result = show(&mut env, &root, &interrupted);
    env.cleanup();
    if interrupted.load(Ordering::SeqCst) {
        println!("\ninterrupted: everything the demo started is stopped and removed");
    }
    result
}

fn show(env: &mut DemoEnv, root: &Path, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let cgroup = cgroup2_mount()?.join("sluice-demo");
    std::fs::create_dir_all(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
    env.cgroup = Some(cgroup.clone());
    let stable = Backend::start(STABLE, "stable")?;
    let canary = Backend::start(CANARY, "canary")?;
    let (stable_count, canary_count) = (stable.count.clone(), canary.count.clone());
    env.backends.extend([stable, canary]);

    let log_path = root.join("target/sluice-demo.log");
    let log = std::fs::File::create(&log_path)?;
    let daemon = Command::new(&env.sluice)
        .args(["run", "--config"])
        .arg(root.join("config/demo.yaml"))
        .stderr(log)
        .spawn()
        .context("starting sluice run")?;
    env.children.push(daemon);
    wait_for_socket(Path::new(SOCKET), Duration::from_secs(10))
        .with_context(|| format!("the daemon did not come up; see {}", log_path.display()))?;

    let total_secs = STEP.as_secs() * STEPS.len() as u64 + 2;
    let client = Command::new(std::env::current_exe()?)
        .args(["demo-client"])
        .arg(&cgroup)
        .args([VIP, &total_secs.to_string()])
        .spawn()
        .context("starting the demo client")?;
    env.children.push(client);

    println!(
        "sluice demo: a client in cgroup {} connects to {VIP};",
        cgroup.display()
    );
    println!("sluice steers each new connection to stable ({STABLE}) or canary ({CANARY}).");
    println!(
        "The backends count what they receive; the share is stepped up with `sluice weight`.\n"
    );
    let (mut last_s, mut last_c) = (0u64, 0u64);
    for percent in STEPS {
        let out = Command::new(&env.sluice)
            .args(["weight", "demo", &percent.to_string(), "--socket", SOCKET])
            .output()?;
        if !out.status.success() {
            bail!(
                "sluice weight failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("$ sluice weight demo {percent}");
        let step_end = Instant::now() + STEP;
        while Instant::now() < step_end {
            if interrupted.load(Ordering::SeqCst) {
                return Ok(());
            }
            thread::sleep(Duration::from_secs(1));
            let (s, c) = (
                stable_count.load(Ordering::Relaxed),
                canary_count.load(Ordering::Relaxed),
            );
            let (ds, dc) = (s - last_s, c - last_c);
            (last_s, last_c) = (s, c);
            let share = if ds + dc > 0 {
                100.0 * dc as f64 / (ds + dc) as f64
            } else {
                0.0
            };
            let bar_len = 40usize;
            let filled = ((share / 100.0) * bar_len as f64).round() as usize;
            println!(
                "  configured {percent:>5.1}%  stable {ds:>4}/s  canary {dc:>4}/s  measured {share:>5.1}%  [{}{}]",
                "#".repeat(filled),
                ".".repeat(bar_len - filled)
            );
        }
    }
    println!("\n$ sluice status --socket {SOCKET}");
    run(Command::new(&env.sluice).args(["status", "--socket", SOCKET]))?;
    println!(
        "\nbackends received: stable {}, canary {} connections in all",
        stable_count.load(Ordering::Relaxed),
        canary_count.load(Ordering::Relaxed)
    );
    Ok(())
}

struct DemoEnv {
    sluice: PathBuf,
    cgroup: Option<PathBuf>,
    children: Vec<Child>,
    backends: Vec<Backend>,
}

impl DemoEnv {
    fn cleanup(&mut self) {
        // The client first (by its pid), then the daemon through `detach`, which removes
        // every program, link and pin; if the daemon already exited it removes the pins.
        for child in self.children.iter_mut().skip(1) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.sluice)
            .args(["detach", "--pin-path", PIN_PATH, "--socket", SOCKET])
            .stdout(Stdio::null())
            .status();
        for child in self.children.iter_mut().take(1) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for b in self.backends.drain(..) {
            b.stop();
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = std::fs::remove_dir(&cg);
        }
        // The daemon removes its socket when it exits on its own; not when it was killed.
        if let Some(dir) = Path::new(SOCKET).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn wait_for_socket(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("no answer on {} after {timeout:?}", path.display())
}

pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// A TCP server on loopback that answers every connection with its name, and counts them.
pub struct Backend {
    addr: SocketAddr,
    pub count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Backend {
    pub fn start(addr: &str, name: &'static str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut conn) = conn {
                    c.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.write_all(name.as_bytes());
                    let _ = conn.shutdown(Shutdown::Write);
                }
            }
        });
        Ok(Self {
            addr,
            count,
            stop,
            thread,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop (loopback, our own listener).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.thread.join();
    }
}

/// The demo client: joins `cgroup` before opening any socket, then connects to `address`
/// at up to `CLIENT_RATE` per second for `seconds`, reading each reply.
pub fn client(cgroup: &Path, address: SocketAddr, seconds: u64) -> anyhow::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", cgroup.display()))?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let period = Duration::from_micros(1_000_000 / CLIENT_RATE);
    let mut next = Instant::now();
    for _ in 0..CLIENT_RATE * seconds {
        if Instant::now() >= end {
            break;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf);
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    Ok(())
}
