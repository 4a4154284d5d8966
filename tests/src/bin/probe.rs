//! The test client. Joins a cgroup before it opens any socket (a process must be in the
//! cgroup when it creates its sockets), then either makes N connections to an address and
//! reports which backend answered each and what `getpeername` said, or (`--hold`) keeps one
//! connection open across a change the test makes and reports its backend before and after.
//!
//! Output: one JSON object per line on stdout.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

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
    if args.iter().any(|a| a == "--hold") {
        hold(target);
    } else {
        let count: u64 = arg("--count").parse().expect("--count N");
        many(target, count);
    }
}

/// Connects, reads the backend's name line.
fn connect(target: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok((s, line.trim().to_owned()))
}

fn many(target: SocketAddr, count: u64) {
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut peer_vip, mut peer_other) = (0u64, 0u64);
    for _ in 0..count {
        match connect(target) {
            Ok((s, name)) => {
                *replies.entry(name).or_default() += 1;
                if s.peer_addr().ok() == Some(target) {
                    peer_vip += 1;
                } else {
                    peer_other += 1;
                }
                // Close with a reset: no TIME_WAIT, so tens of thousands of connections in
                // a row never run out of ports.
                reset_on_close(&s);
            }
            Err(e) => *errors.entry(format!("{:?}", e.kind())).or_default() += 1,
        }
    }
    let out = serde_json::json!({
        "replies": replies, "errors": errors, "peer_vip": peer_vip, "peer_other": peer_other,
    });
    println!("{out}");
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

/// SO_LINGER with a zero timeout: close() sends a reset and leaves no TIME_WAIT.
fn reset_on_close(s: &TcpStream) {
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
