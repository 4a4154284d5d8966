//! A real etcd cluster on loopback ports for the cluster tests: Debian's etcd 3.4, each
//! member a process this test started, with its own data directory; in secure mode with
//! TLS, client certificates and user authentication, as a production etcd runs. Dropping it kills the
//! members (by their pids) and removes their directories.

use crate::pki::{Pair, Pki};

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    initial: String,
    token: String,
    root: PathBuf,
    secure: Option<Secure>,
}

/// What a member asks of clients in secure mode: TLS with a client certificate signed by
/// `pki`, and, once [`EtcdCluster::enable_auth`] ran, a user and password.
struct Secure {
    pki: Pki,
    server: Pair,
    /// etcdctl's own certificate and password, as etcd's `root` user.
    root: Pair,
    root_password: Option<String>,
}

impl EtcdCluster {
    /// `n` members, started together; returns once every member answers.
    pub fn start(tag: &str, n: usize) -> Self {
        Self::start_with(tag, n, false)
    }

    /// As [`EtcdCluster::start`], with TLS on the client URLs and client certificates
    /// required (`--client-cert-auth`), signed by a CA made for it ([`EtcdCluster::pki`]).
    pub fn start_secure(tag: &str, n: usize) -> Self {
        Self::start_with(tag, n, true)
    }

    fn start_with(tag: &str, n: usize, secure: bool) -> Self {
        let root = std::env::temp_dir().join(format!("sluice-etcd-{tag}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("etcd dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: crate::unused_port("127.0.0.1"),
                peer: crate::unused_port("127.0.0.1"),
                dir: root.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let secure = secure.then(|| {
            let pki = Pki::new(&root.join("pki"));
            Secure {
                server: pki.server("etcd"),
                root: pki.client("root"),
                pki,
                root_password: None,
            }
        });
        let mut c = Self {
            members,
            initial,
            token: format!("sluice-{tag}"),
            root,
            secure,
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy(Duration::from_secs(20));
        c
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{}.log", m.name)))
            .expect("etcd log");
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), m.client);
        let mut etcd = Command::new("etcd");
        if let Some(s) = &self.secure {
            etcd.arg("--cert-file")
                .arg(&s.server.cert)
                .arg("--key-file")
                .arg(&s.server.key)
                .arg("--trusted-ca-file")
                .arg(s.pki.ca())
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &self.initial,
                "--initial-cluster-token",
                &self.token,
                "--initial-cluster-state",
                "new",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian's etcd-server; `cargo xtask setup` installs it)");
        self.members[i].child = Some(child);
    }

    fn scheme(&self) -> &'static str {
        if self.secure.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    /// The CA that signs the members' and the clients' certificates (secure mode).
    pub fn pki(&self) -> &Pki {
        &self.secure.as_ref().expect("a secure cluster").pki
    }

    /// Turns on etcd's user authentication: a `root` user for etcdctl, and `user` with
    /// `password`, allowed to read and write the keys under `prefix` and nothing else.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root_password = "root-secret";
        let range_end = prefix_end(prefix);
        let steps: [&[&str]; 7] = [
            &["user", "add", &format!("root:{root_password}")],
            &["user", "grant-role", "root", "root"],
            &["user", "add", &format!("{user}:{password}")],
            &["role", "add", user],
            &[
                "role",
                "grant-permission",
                user,
                "readwrite",
                prefix,
                &range_end,
            ],
            &["user", "grant-role", user, user],
            &["auth", "enable"],
        ];
        for args in steps {
            let out = self
                .etcdctl(&self.endpoints())
                .args(args)
                .output()
                .expect("etcdctl");
            assert!(
                out.status.success(),
                "etcdctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.secure
            .as_mut()
            .expect("a secure cluster")
            .root_password = Some(root_password.into());
    }

    /// etcdctl (v3 API) on `endpoints`, with the root user's credentials in secure mode.
    fn etcdctl(&self, endpoints: &[String]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &endpoints.join(","),
            "--command-timeout",
            "5s",
        ]);
        if let Some(s) = &self.secure {
            c.arg("--cacert")
                .arg(s.pki.ca())
                .arg("--cert")
                .arg(&s.root.cert)
                .arg("--key")
                .arg(&s.root.key);
            if let Some(p) = &s.root_password {
                c.args(["--user", &format!("root:{p}")]);
            }
        }
        c
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].client))
    }

    /// The running members' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// SIGKILL of member `i`, by the pid we started.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Waits until `etcdctl endpoint health` passes for every running member.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect();
        loop {
            let ok = self
                .etcdctl(&running)
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some((name, status)) = self.exited_member() {
                panic!(
                    "etcd member {name} exited while starting ({status}); its log ends:\n{}",
                    self.log_tail(&name)
                );
            }
            assert!(
                Instant::now() < end,
                "etcd did not become healthy in {timeout:?}; logs under {}; m0's ends:\n{}",
                self.root.display(),
                self.log_tail("m0")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The name of a member this test started that is no longer running.
    fn exited_member(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.members.iter_mut().find_map(|m| {
            let status = m.child.as_mut()?.try_wait().ok()??;
            m.child = None;
            Some((m.name.clone(), status))
        })
    }

    /// The last lines of member `name`'s log, for a failure message.
    fn log_tail(&self, name: &str) -> String {
        let log =
            std::fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `etcdctl get KEY --print-value-only`, for what the test reads of the cluster itself.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self
            .etcdctl(&self.endpoints())
            .args(["get", key, "--print-value-only"])
            .output()
            .expect("etcdctl");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The end of the key range of every key starting with `prefix` (its last byte plus one).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.pop().expect("a non-empty prefix");
    bytes.push(last + 1);
    String::from_utf8(bytes).expect("an ASCII prefix")
}

/// A TCP relay on a loopback port to one etcd member: cutting it closes every connection
/// through it and refuses new ones, as a network partition of that one node would.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, s, st) = (open.clone(), stop.clone(), streams.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(to) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for (a, b) in [(&client, &server), (&server, &client)] {
                    let (mut r, mut w) =
                        (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut r, &mut w);
                        let _ = w.shutdown(Shutdown::Both);
                        let _ = r.shutdown(Shutdown::Both);
                    });
                }
                if let Ok(mut v) = st.lock() {
                    v.push(client);
                    v.push(server);
                }
            }
        });
        Self {
            addr,
            open,
            stop,
            streams,
            thread: Some(thread),
        }
    }

    /// Closes every connection through the relay and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut v) = self.streams.lock() {
            for s in v.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
