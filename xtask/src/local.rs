//! Local fixtures the demo and the measurements share: a greeting TCP backend on loopback,
//! the cgroup2 mount, waiting for a daemon's socket.

use std::{
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Waits until the daemon answers `sluice status`: its socket accepts connections before the
/// programs are attached, but requests are answered only once it is steering.
pub fn wait_for_daemon(sluice: &Path, socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let answered = std::process::Command::new(sluice)
            .args(["status", "--output", "json", "--socket"])
            .arg(socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if answered {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("no answer on {} after {timeout:?}", socket.display())
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

/// A TCP server on loopback that answers every connection with its name.
pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Backend {
    pub fn start(addr: &str, name: &'static str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut conn) = conn {
                    let _ = conn.write_all(name.as_bytes());
                    let _ = conn.shutdown(Shutdown::Write);
                }
            }
        });
        Ok(Self { addr, stop, thread })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop (loopback, our own listener).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.thread.join();
    }
}
