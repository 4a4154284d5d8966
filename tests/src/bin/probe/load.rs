//! Load for the rollout scenarios: `rate` requests a second, each a GET on a new connection,
//! spread over `threads` threads, for `seconds` (and at most `rate * seconds` requests).
//! Every failure is printed the moment it happens (`{"fail": kind, "at_unix_ms": t}`), so
//! the test can time it against the fault it injected; a summary line ends the run. The run
//! ends early once `stop_file` exists.

use std::{
    collections::BTreeMap,
    io::{BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

pub fn run(
    target: SocketAddr,
    rate: f64,
    seconds: f64,
    threads: usize,
    stop_file: Option<std::path::PathBuf>,
    path: &str,
) {
    let request_text: Arc<str> =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into();
    assert!(
        rate > 0.0 && seconds > 0.0 && threads > 0,
        "bad load arguments"
    );
    let total = (rate * seconds).round() as u64;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (tally, out, stop_file) = (tally.clone(), out.clone(), stop_file.clone());
            let request_text = request_text.clone();
            std::thread::spawn(move || {
                // Request i of this thread is due at start + (t + i * threads) / rate.
                let mut i = 0u64;
                loop {
                    let n = t as u64 + i * threads as u64;
                    if n >= total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    if due >= end || stop_file.as_ref().is_some_and(|f| f.exists()) {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let result = request(target, &request_text);
                    let mut tl = tally.lock().expect("tally");
                    let fail = match result {
                        Ok(status) => {
                            *tl.statuses.entry(status).or_default() += 1;
                            (status >= 500).then(|| status.to_string())
                        }
                        Err(kind) => {
                            *tl.errors.entry(kind.clone()).or_default() += 1;
                            Some(kind)
                        }
                    };
                    drop(tl);
                    if let Some(kind) = fail {
                        let line = serde_json::json!({ "fail": kind, "at_unix_ms": unix_ms() });
                        let mut o = out.lock().expect("stdout");
                        let _ = writeln!(o, "{line}");
                        let _ = o.flush();
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let tl = tally.lock().expect("tally");
    let summary = serde_json::json!({ "statuses": tl.statuses, "errors": tl.errors });
    let mut o = out.lock().expect("stdout");
    let _ = writeln!(o, "{summary}");
}

fn request(target: SocketAddr, text: &str) -> Result<u16, String> {
    let kind = |e: std::io::Error| format!("{:?}", e.kind());
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(kind)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(kind)?;
    s.write_all(text.as_bytes()).map_err(kind)?;
    let mut reader = BufReader::new(s);
    super::http::read_response(&mut reader)
        .map(|(status, _)| status)
        .map_err(kind)
}
