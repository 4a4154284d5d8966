//! A real DNS server for the discovery tests: BIND's `named` on a loopback port, primary for
//! one zone whose records the test changes with `nsupdate` (RFC 2136 dynamic updates: an
//! RRset is replaced atomically, as a cluster's DNS replaces a headless Service's records).
//! It can also be stopped (nothing answers) and started with its zone broken (every query in
//! it answers SERVFAIL). Processes are stopped by their own pid only; the directory goes
//! with the handle.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The zone every test name lives in.
pub const ZONE: &str = "sluice.test";

pub struct DnsServer {
    dir: PathBuf,
    pub addr: SocketAddr,
    ttl: u32,
    child: Option<Child>,
}

impl DnsServer {
    /// Starts `named` on a free loopback port, answering for [`ZONE`] with records of `ttl`
    /// seconds.
    pub fn start(tag: &str, ttl: u32) -> Self {
        Self::start_with(tag, ttl, &[])
    }

    /// As [`DnsServer::start`], with these records in the zone from the start (many names at
    /// once, without an update each).
    pub fn start_with(tag: &str, ttl: u32, records: &[(String, Vec<IpAddr>)]) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-dns-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dns dir");
        let port = crate::unused_port("127.0.0.1");
        let mut server = Self {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ttl,
            child: None,
        };
        let mut zone = format!(
            "$TTL {ttl}\n@ IN SOA ns.{ZONE}. admin.{ZONE}. 1 60 60 60 {ttl}\n\
             @ IN NS ns.{ZONE}.\nns IN A 127.0.0.1\n"
        );
        for (name, addresses) in records {
            for a in addresses {
                let kind = if a.is_ipv4() { "A" } else { "AAAA" };
                zone.push_str(&format!("{name} IN {kind} {a}\n"));
            }
        }
        std::fs::write(server.dir.join("zone.db"), zone).expect("zone file");
        std::fs::write(server.dir.join("broken.db"), "this is not a zone\n").expect("broken");
        server.run("zone.db");
        server
    }

    /// A name in the zone: `{short}.sluice.test.` (absolute).
    pub fn name(short: &str) -> String {
        format!("{short}.{ZONE}.")
    }

    fn run(&mut self, zone_file: &str) {
        let dir = self.dir.display();
        let conf = format!(
            "options {{\n  directory \"{dir}\";\n  pid-file \"{dir}/named.pid\";\n  \
             listen-on port {} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  \
             recursion no;\n  notify no;\n  dnssec-validation no;\n}};\n\
             controls {{ }};\n\
             zone \"{ZONE}\" {{ type primary; file \"{dir}/{zone_file}\"; \
             allow-update {{ 127.0.0.1; }}; }};\n",
            self.addr.port()
        );
        std::fs::write(self.dir.join("named.conf"), conf).expect("named.conf");
        let log = std::fs::File::create(self.dir.join("named.log")).expect("named log");
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(self.dir.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start named (Debian bind9; `cargo xtask test` installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "named did not answer within 10 s: {}",
                std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether anything answers a query on the port (any response code).
    fn answers(&self) -> bool {
        let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        // A query for the zone's SOA: id 0x5151, recursion not desired.
        let mut query = vec![0x51, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ZONE.split('.') {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 6, 0, 1]);
        let mut buf = [0u8; 512];
        socket.send_to(&query, self.addr).is_ok()
            && socket
                .recv_from(&mut buf)
                .is_ok_and(|(n, _)| n >= 12 && buf[..2] == [0x51, 0x51])
    }

    /// Replaces the name's A and AAAA records with `addresses`, in one update. Only IPv6
    /// addresses make an A query find the name with no A record (an empty answer, not
    /// NXDOMAIN); no addresses remove the name (NXDOMAIN).
    pub fn set(&self, name: &str, addresses: &[IpAddr]) {
        let mut script = format!(
            "server 127.0.0.1 {}\nzone {ZONE}\nupdate delete {name} A\nupdate delete {name} AAAA\n",
            self.addr.port()
        );
        for a in addresses {
            let kind = if a.is_ipv4() { "A" } else { "AAAA" };
            script.push_str(&format!("update add {name} {} {kind} {a}\n", self.ttl));
        }
        script.push_str("send\n");
        let mut child = Command::new("nsupdate")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsupdate (Debian bind9-dnsutils)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("nsupdate script");
        let out = child.wait_with_output().expect("nsupdate");
        assert!(
            out.status.success(),
            "nsupdate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (its pid): from now on nothing answers on the port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    /// Starts it again with its zone file broken: the zone does not load, and every query in
    /// it answers SERVFAIL.
    pub fn restart_broken(&mut self) {
        self.stop();
        self.run("broken.db");
    }

    /// Starts it again with its zone (and the updates made so far, from its journal).
    pub fn restart(&mut self) {
        self.stop();
        self.run("zone.db");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
