//! The bench's world, and its undoing: a network namespace of its own (the process enters it
//! before it starts any thread, so every server, client, proxy, agent and rule it makes lives
//! there), throwaway cgroups, and the processes it starts. Dropping [`BenchEnv`] stops every
//! process by the pid it was given, removes the cgroups, the agents' pins and files, and
//! deletes the namespace (its iptables and nftables state goes with it).

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail};

use sluice_tests::TestCgroup;

use crate::util::run;

pub const NETNS: &str = "sluice-bench";

pub struct BenchEnv {
    pub dir: PathBuf,
    cgroups: Vec<TestCgroup>,
    children: Vec<(String, Child)>,
    /// (sluice binary, pin path, socket, state file) of each agent started.
    agents: Vec<(PathBuf, String, String, String)>,
    pub interrupted: Arc<AtomicBool>,
}

impl BenchEnv {
    /// Creates the namespace, brings its loopback up, and moves this process into it.
    pub fn enter(interrupted: Arc<AtomicBool>) -> anyhow::Result<Self> {
        // A namespace left by an interrupted run that could not clean up.
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", NETNS]))?;
        run(Command::new("ip").args(["-n", NETNS, "link", "set", "lo", "up"]))?;
        let ns = std::fs::File::open(format!("/run/netns/{NETNS}"))
            .context("opening the bench namespace")?;
        // SAFETY: setns on a namespace file we just opened; it changes only this thread, and
        // every thread and process this one starts afterwards inherits it.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "entering the bench namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        // Connection-per-request rounds make hundreds of thousands of conntrack entries (the
        // iptables and nftables paths load conntrack into the namespace); closed ones need
        // not linger for two minutes here.
        let _ = std::fs::write(
            "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait",
            "5",
        );
        // Timestamps without the per-address-pair random offset. On this one loopback every
        // path ends at the same server ports, but a DNAT path's client takes its offset from
        // the virtual address and every other path's from the backend's: a new SYN then
        // lands on a server TIME_WAIT of the same 4-tuple with a smaller timestamp, PAWS
        // drops it, and the client stalls a full second. Which path paid depended on which
        // ran before it. Only the offset changes: timestamps, PAWS and TIME_WAIT stay on.
        std::fs::write("/proc/sys/net/ipv4/tcp_timestamps", "2")
            .context("net.ipv4.tcp_timestamps in the bench namespace")?;
        let dir = std::env::temp_dir().join("sluice-bench");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            cgroups: Vec::new(),
            children: Vec::new(),
            agents: Vec::new(),
            interrupted,
        })
    }

    pub fn check_interrupt(&self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// A cgroup of the bench's, removed when the bench ends.
    pub fn cgroup(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let cg = TestCgroup::named(name);
        let path = cg.path().to_owned();
        self.cgroups.push(cg);
        Ok(path)
    }

    /// Starts a long-running process, remembered for cleanup.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<u32> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Whether a started process has exited (it should not have).
    pub fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| n.clone()))
    }

    pub fn remember_agent(&mut self, sluice: &Path, pin_path: &str, socket: &str, state: &str) {
        self.agents.push((
            sluice.to_owned(),
            pin_path.to_owned(),
            socket.to_owned(),
            state.to_owned(),
        ));
    }
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (sluice, pins, socket, state) in &self.agents {
            let _ = Command::new(sluice)
                .args(["detach", "--pin-path", pins, "--state-path", state])
                .args(["--socket", socket])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Some(d) = Path::new(socket).parent() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        // Each waits a moment for processes just killed to leave it.
        while let Some(cg) = self.cgroups.pop() {
            drop(cg);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
