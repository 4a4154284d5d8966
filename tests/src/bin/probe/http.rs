//! `--http PATHS --count N [--parallel P]`: keep-alive HTTP/1.1 connections that send every
//! path in turn, timing each answer from its write to its arrival (see `timed.rs`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::timed;

/// What HTTP connections saw: answers by status, errors by kind, and each answered
/// request's time from its first byte written to its response read, in microseconds, by
/// the server that answered (its `X-Served-By` header, "" without one).
#[derive(Default)]
struct HttpSeen {
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    connections: u64,
    latencies_us: BTreeMap<String, Vec<u64>>,
}

/// `parallel` threads, each opening `count` keep-alive connections one after the other,
/// each sending every path in turn and reading each answer. `/continue` is a POST with
/// `Expect: 100-continue`: the body goes after the 100.
pub fn http(target: SocketAddr, count: u64, paths: &[&str], parallel: u64) {
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    let threads: Vec<_> = (0..parallel)
        .map(|_| {
            let paths = paths.clone();
            std::thread::spawn(move || http_connections(target, count, &paths))
        })
        .collect();
    let mut all = HttpSeen::default();
    for t in threads {
        let seen = t.join().expect("http thread");
        for (k, v) in seen.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        for (k, v) in seen.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.connections += seen.connections;
        for (k, v) in seen.latencies_us {
            all.latencies_us.entry(k).or_default().extend(v);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "statuses": all.statuses,
            "errors": all.errors,
            "connections": all.connections,
            "latencies_us": all.latencies_us,
        })
    );
}

fn http_connections(target: SocketAddr, count: u64, paths: &[String]) -> HttpSeen {
    let mut seen = HttpSeen::default();
    for _ in 0..count {
        let conn = TcpStream::connect_timeout(&target, Duration::from_secs(2));
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                *seen.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
                continue;
            }
        };
        seen.connections += 1;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let timed = timed::TimedStream::new(s.try_clone().expect("clone")).expect("timestamps");
        let mut reader = BufReader::new(timed);
        for path in paths {
            reader.get_mut().mark();
            let sent_ns = timed::now_ns();
            let result = if path == "/continue" {
                s.write_all(b"POST /continue HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
                    .and_then(|()| read_response(&mut reader))
                    .and_then(|(interim, _)| {
                        assert_eq!(interim, 100, "expected 100 Continue");
                        s.write_all(b"0123456789")?;
                        read_response(&mut reader)
                    })
            } else {
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .and_then(|()| read_response(&mut reader))
            };
            match result {
                Ok((status, served_by)) => {
                    *seen.statuses.entry(status).or_default() += 1;
                    // From the request's write to its answer's arrival at this socket (the
                    // kernel's receive timestamp), so this thread's own wake-up is left out.
                    let arrived = reader.get_ref().arrival_ns().unwrap_or_else(timed::now_ns);
                    let us = arrived.saturating_sub(sent_ns) / 1_000;
                    seen.latencies_us.entry(served_by).or_default().push(us);
                }
                Err(e) => {
                    *seen.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
                    break;
                }
            }
        }
    }
    seen
}

/// Reads one response (status line, headers, Content-Length body); returns its status and
/// its `X-Served-By` header ("" without one).
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    let mut served_by = String::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-served-by:") {
            served_by = h["x-served-by:".len()..].trim().to_owned();
        }
        if h == "\r\n" || h.is_empty() {
            break;
        }
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(reader, &mut body)?;
    Ok((status, served_by))
}
