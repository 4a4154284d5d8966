//! `--pool N --interval-ms I --seconds S`: a keep-alive pool of N connections, as services
//! hold them, in one thread over poll(2) so that it holds thousands. Each connection sends a
//! GET every I ms (0: as soon as its answer is in, a closed loop), and right before each
//! reuse checks the connection as urllib3 does: readable while idle means the peer ended it,
//! and it is replaced by a new connection (steered afresh) instead of used.
//!
//! Prints a JSON line once every connection is made, then one JSON object: answers by
//! backend (`X-Served-By`), the last answer's time by backend (unix ms), connections
//! replaced after such a check (and when the last was), and requests that failed.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

enum State {
    Idle { due: Instant },
    Waiting { buf: Vec<u8> },
}

struct Conn {
    stream: TcpStream,
    state: State,
}

fn connect(target: SocketAddr, due: Instant) -> Option<Conn> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
    stream.set_nonblocking(true).ok()?;
    let _ = stream.set_nodelay(true);
    Some(Conn {
        stream,
        state: State::Idle { due },
    })
}

/// A whole response in `buf`: (status, X-Served-By).
fn complete(buf: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(buf).ok()?;
    let head_end = text.find("\r\n\r\n")?;
    let head = &text[..head_end];
    let mut length = 0;
    let mut served_by = String::from("?");
    for line in head.lines().skip(1) {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-served-by:") {
            served_by = line["x-served-by:".len()..].trim().to_owned();
        }
    }
    if buf.len() < head_end + 4 + length {
        return None;
    }
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, served_by))
}

/// Whether the socket is readable (or ended) right now: a zero-timeout poll of it alone.
fn readable_now(stream: &TcpStream) -> bool {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn run(target: SocketAddr, n: usize, interval: Duration, seconds: f64) {
    // All connected first (said on a line of its own), then `seconds` of requests.
    let connecting = Instant::now();
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| connect(target, connecting)).collect();
    let start = Instant::now();
    println!(
        "{}",
        serde_json::json!({
            "connected": conns.iter().filter(|c| c.is_some()).count(),
            "seconds": (start - connecting).as_secs_f64(),
        })
    );
    let _ = std::io::stdout().flush();
    for (i, c) in conns.iter_mut().flatten().enumerate() {
        c.state = State::Idle {
            due: start + interval.mul_f64(i as f64 / n as f64),
        };
    }
    let end = start + Duration::from_secs_f64(seconds);
    let mut last_replaced = 0u64;
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let (mut replaced, mut failed, mut unconnected) = (0u64, 0u64, 0u64);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(n);
    let mut read_buf = [0u8; 4096];
    while Instant::now() < end {
        fds.clear();
        for c in &conns {
            fds.push(libc::pollfd {
                fd: c.as_ref().map_or(-1, |c| c.stream.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that lives across the
        // call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
        let now = Instant::now();
        for (slot, fd) in conns.iter_mut().zip(&fds) {
            let Some(c) = slot else {
                *slot = connect(target, now);
                unconnected += u64::from(slot.is_none());
                continue;
            };
            let ready = fd.revents != 0;
            match &mut c.state {
                State::Idle { due } => {
                    if ready {
                        // The check before reuse: readable while idle is the peer's end.
                        replaced += 1;
                        last_replaced = unix_ms();
                        *slot = connect(target, now);
                    } else if now >= *due {
                        // Checked again at the moment of reuse, as urllib3 does: the poll
                        // above may be milliseconds old with thousands of connections.
                        if readable_now(&c.stream) {
                            replaced += 1;
                            last_replaced = unix_ms();
                            *slot = connect(target, now);
                            continue;
                        }
                        if c.stream
                            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                            .is_ok()
                        {
                            c.state = State::Waiting { buf: Vec::new() };
                        } else {
                            failed += 1;
                            *slot = connect(target, now);
                        }
                    }
                }
                State::Waiting { buf } => {
                    if !ready {
                        continue;
                    }
                    match c.stream.read(&mut read_buf) {
                        Ok(0) | Err(_) => {
                            failed += 1;
                            *slot = connect(target, now);
                        }
                        Ok(k) => {
                            buf.extend_from_slice(&read_buf[..k]);
                            if let Some((_, by)) = complete(buf) {
                                *answers.entry(by.clone()).or_default() += 1;
                                last.insert(by, unix_ms());
                                c.state = State::Idle {
                                    due: now + interval,
                                };
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "answers": answers,
            "last_answer_unix_ms": last,
            "replaced": replaced,
            "last_replaced_unix_ms": last_replaced,
            "failed": failed,
            "unconnected": unconnected,
        })
    );
}
