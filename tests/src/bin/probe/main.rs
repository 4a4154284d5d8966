//! The test client. Joins a cgroup before it opens any socket (a process must be in the
//! cgroup when it creates its sockets), then either makes N connections to an address and
//! reports which backend answered each and what `getpeername` said, or (`--hold`) keeps one
//! connection open across a change the test makes and reports its backend before and after.
//!
//! `--load RATE --seconds S --threads N [--stop-file F] [--path P]`: HTTP GETs at a fixed rate, one new connection
//! each (so each request is steered anew), for a bounded time; see `load.rs`.
//!
//! `--pool N --interval-ms I --seconds S`: a keep-alive pool of N connections that checks
//! each before reuse; see `pool.rs`.
//!
//! `--count N [--rate R] [--parallel P]` paces the connections, and spreads them over P
//! threads, each connecting one at a time (default 1: strictly one after another);
//! `--until NAME --seconds S` connects until NAME answers (the time a share change takes to
//! reach new connections). `--udp-connects N` connects N UDP sockets to the address, which
//! sends nothing: it runs the connect hooks' cheapest path, their floor.
//!
//! Output: one JSON object per line on stdout.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

mod http;
mod load;
mod pool;
mod timed;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("missing {name}"))
            .clone()
    };
    if let Some(i) = args.iter().position(|a| a == "--cgroup") {
        let cgroup = &args[i + 1];
        std::fs::write(
            format!("{cgroup}/cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap_or_else(|e| panic!("joining {cgroup}: {e}"));
    }
    let target: SocketAddr = arg("--connect").parse().expect("--connect ADDR:PORT");
    if let Some(i) = args.iter().position(|a| a == "--load") {
        let rate: f64 = args[i + 1].parse().expect("--load REQUESTS_PER_SECOND");
        let seconds: f64 = arg("--seconds").parse().expect("--seconds S");
        let threads: usize = arg("--threads").parse().expect("--threads N");
        let stop_file = args
            .iter()
            .position(|a| a == "--stop-file")
            .map(|i| std::path::PathBuf::from(&args[i + 1]));
        let path = args
            .iter()
            .position(|a| a == "--path")
            .map_or_else(|| "/".to_owned(), |i| args[i + 1].clone());
        load::run(target, rate, seconds, threads, stop_file, &path);
    } else if let Some(i) = args.iter().position(|a| a == "--pool") {
        let n: usize = args[i + 1].parse().expect("--pool CONNECTIONS");
        let interval: u64 = arg("--interval-ms").parse().expect("--interval-ms MS");
        let seconds: f64 = arg("--seconds").parse().expect("--seconds S");
        pool::run(target, n, Duration::from_millis(interval), seconds);
    } else if args.iter().any(|a| a == "--hold") {
        hold(target);
    } else if let Some(i) = args.iter().position(|a| a == "--syncnt") {
        let syncnt: i32 = args[i + 1].parse().expect("--syncnt N");
        let count: u64 = arg("--count").parse().expect("--count N");
        syn_limited(target, count, syncnt);
    } else if let Some(i) = args.iter().position(|a| a == "--http") {
        let count: u64 = arg("--count").parse().expect("--count N");
        let paths: Vec<&str> = args[i + 1].split(',').collect();
        let parallel: u64 = args
            .iter()
            .position(|a| a == "--parallel")
            .map_or(1, |i| args[i + 1].parse().expect("--parallel THREADS"));
        assert!(parallel >= 1, "--parallel must be at least 1");
        http::http(target, count, &paths, parallel);
    } else if let Some(i) = args.iter().position(|a| a == "--until") {
        let seconds: f64 = arg("--seconds").parse().expect("--seconds S");
        until(target, &args[i + 1], Duration::from_secs_f64(seconds));
    } else if let Some(i) = args.iter().position(|a| a == "--udp-connects") {
        udp_connects(target, args[i + 1].parse().expect("--udp-connects N"));
    } else {
        let count: u64 = arg("--count").parse().expect("--count N");
        let rate: Option<f64> = args
            .iter()
            .position(|a| a == "--rate")
            .map(|i| args[i + 1].parse().expect("--rate PER_SECOND"));
        let parallel: u64 = args
            .iter()
            .position(|a| a == "--parallel")
            .map_or(1, |i| args[i + 1].parse().expect("--parallel THREADS"));
        assert!(parallel >= 1, "--parallel must be at least 1");
        many(target, count, rate, parallel);
    }
}

/// `count` UDP sockets connected to `target` and closed: no packet leaves, but the connect
/// hooks run (and leave at their protocol check).
fn udp_connects(target: SocketAddr, count: u64) {
    let start = std::time::Instant::now();
    let mut errors = 0u64;
    for _ in 0..count {
        let ok = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.connect(target));
        errors += u64::from(ok.is_err());
    }
    let out = serde_json::json!({ "count": count, "errors": errors, "seconds": start.elapsed().as_secs_f64() });
    println!("{out}");
}

/// Connects, reads the backend's name line.
fn connect(target: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok((s, line.trim().to_owned()))
}

/// What one thread of [`many`] saw.
#[derive(Default)]
struct Seen {
    replies: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    peer_vip: u64,
    peer_other: u64,
    latencies_ns: Vec<u64>,
}

/// `count` connections (or paced at `rate` a second), over `parallel` threads that each make
/// theirs one after another. Each: connect, read the greeting, `getpeername`, close with a
/// reset. Reports what answered, how long each took (connect to greeting read), and how
/// long the whole run took.
fn many(target: SocketAddr, count: u64, rate: Option<f64>, parallel: u64) {
    let start = std::time::Instant::now();
    let threads: Vec<_> = (0..parallel)
        .map(|t| {
            // An even share of the count (and of the rate) for each thread.
            let mine = count / parallel + u64::from(t < count % parallel);
            std::thread::spawn(move || {
                connect_in_a_row(target, mine, rate.map(|r| r / parallel as f64), start)
            })
        })
        .collect();
    let mut all = Seen::default();
    for t in threads {
        let seen = t.join().expect("a probe thread panicked");
        for (k, v) in seen.replies {
            *all.replies.entry(k).or_default() += v;
        }
        for (k, v) in seen.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.peer_vip += seen.peer_vip;
        all.peer_other += seen.peer_other;
        all.latencies_ns.extend(seen.latencies_ns);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut latencies_ns = all.latencies_ns;
    latencies_ns.sort_unstable();
    let pct = |q: f64| {
        latencies_ns
            .get(
                ((latencies_ns.len() as f64 * q) as usize)
                    .min(latencies_ns.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0)
    };
    let out = serde_json::json!({
        "replies": all.replies, "errors": all.errors, "peer_vip": all.peer_vip,
        "peer_other": all.peer_other, "parallel": parallel,
        "seconds": seconds, "p50_ns": pct(0.5), "p99_ns": pct(0.99),
    });
    println!("{out}");
}

fn connect_in_a_row(
    target: SocketAddr,
    count: u64,
    rate: Option<f64>,
    start: std::time::Instant,
) -> Seen {
    let mut seen = Seen {
        latencies_ns: Vec::with_capacity(count as usize),
        ..Seen::default()
    };
    for n in 0..count {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let began = std::time::Instant::now();
        let result = connect(target);
        seen.latencies_ns.push(began.elapsed().as_nanos() as u64);
        match result {
            Ok((s, name)) => {
                *seen.replies.entry(name).or_default() += 1;
                if s.peer_addr().ok() == Some(target) {
                    seen.peer_vip += 1;
                } else {
                    seen.peer_other += 1;
                }
                // Close with a reset: no TIME_WAIT, so tens of thousands of connections in
                // a row never run out of ports.
                sluice_tests::reset_on_close(&s);
            }
            Err(e) => *seen.errors.entry(format!("{:?}", e.kind())).or_default() += 1,
        }
    }
    seen
}

/// Connects (and resets) again and again until a connection is answered by `name`; prints
/// when that connection began (unix ns) and how many came before it.
fn until(target: SocketAddr, name: &str, limit: Duration) {
    let start = std::time::Instant::now();
    let mut tries = 0u64;
    while start.elapsed() < limit {
        let began = std::time::SystemTime::now();
        tries += 1;
        if let Ok((s, reply)) = connect(target) {
            sluice_tests::reset_on_close(&s);
            if reply == name {
                let at = began
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                println!(
                    "{}",
                    serde_json::json!({ "at_unix_ns": at, "tries": tries })
                );
                return;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "at_unix_ns": null, "tries": tries })
    );
}

/// `count` connects with TCP_SYNCNT (SYN retransmissions before giving up) set, one after
/// the other; reports the errors. IPv4 only.
fn syn_limited(target: SocketAddr, count: u64, syncnt: i32) {
    let SocketAddr::V4(v4) = target else {
        panic!("--syncnt takes an IPv4 address")
    };
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut connected = 0u64;
    for _ in 0..count {
        match connect_syncnt(v4, syncnt) {
            Ok(()) => connected += 1,
            Err(e) => *errors.entry(format!("{:?}", e.kind())).or_default() += 1,
        }
    }
    println!(
        "{}",
        serde_json::json!({ "replies": { "connected": connected }, "errors": errors, "peer_vip": 0, "peer_other": 0 })
    );
}

fn connect_syncnt(target: std::net::SocketAddrV4, syncnt: i32) -> std::io::Result<()> {
    let last = std::io::Error::last_os_error;
    // SAFETY: plain socket calls on a descriptor this function owns and closes; the option
    // and address point at live values of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(last());
        }
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const syncnt).cast(),
            size_of::<i32>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(target.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let ret = libc::connect(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let result = if ret == 0 { Ok(()) } else { Err(last()) };
        libc::close(fd);
        result
    }
}

fn hold(target: SocketAddr) {
    let (mut s, before) = connect(target).expect("connect");
    println!("{}", serde_json::json!({ "backend": before }));
    std::io::stdout().flush().expect("stdout");
    // Wait for the test to change the configuration.
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("stdin");
    s.write_all(b"again\n")
        .expect("write on the held connection");
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .expect("read on the held connection");
    println!("{}", serde_json::json!({ "backend_after": line.trim() }));
}
