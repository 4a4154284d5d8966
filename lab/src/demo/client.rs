//! The demo client: a separate process that joins the demo cgroup before it opens a socket,
//! then sends GETs to the virtual address at a fixed rate, a new connection each (so every
//! request is steered), for a bounded time or until a stop file appears. It prints what it
//! saw as one JSON line at the end: the blast radius, from the caller's side.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Requests a second.
pub const RATE: u64 = 250;
const THREADS: u64 = 4;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    http_5xx: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    /// Connection errors by kind (refused, timed out, reset, ...).
    error_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

pub fn client(cgroup: &Path, address: SocketAddr, seconds: u64, stop: &Path) -> anyhow::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", cgroup.display()))?;
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (tally, stop) = (tally.clone(), stop.to_owned());
            thread::spawn(move || {
                for i in 0..RATE * seconds / THREADS {
                    let due =
                        start + Duration::from_secs_f64((t + i * THREADS) as f64 / RATE as f64);
                    if due >= end || (i % 25 == 0 && stop.exists()) {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let counter = match get(address) {
                        Ok(200) => &tally.ok,
                        Ok(s) if s >= 500 => &tally.http_5xx,
                        Ok(_) => &tally.other,
                        Err(e) => {
                            if let Ok(mut kinds) = tally.error_kinds.lock() {
                                *kinds.entry(format!("{:?}", e.kind())).or_default() += 1;
                            }
                            &tally.errors
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let line = serde_json::json!({
        "ok": tally.ok.load(Ordering::Relaxed),
        "http_5xx": tally.http_5xx.load(Ordering::Relaxed),
        "other": tally.other.load(Ordering::Relaxed),
        "errors": tally.errors.load(Ordering::Relaxed),
        "error_kinds": *tally.error_kinds.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
    });
    println!("{line}");
    Ok(())
}

fn get(address: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}
