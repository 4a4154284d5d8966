//! An HTTP/1.1 backend for the golden-signal tests. Keep-alive; the path decides the answer:
//! `/status/NNN` answers NNN; `/reset` reads the request and resets the connection without
//! answering; `/continue` (POST with `Expect: 100-continue`) sends `100 Continue`, reads the
//! body, answers 200. Every answer can be delayed (`delay`), and every `fail_every`-th request
//! answered 503 instead. Every answer says which backend sent it (`X-Served-By: ip:port`).
//! It counts what it did: that is the truth the kernel is held to.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

#[derive(Clone, Copy, Default)]
pub struct Behaviour {
    pub delay: Duration,
    /// Answer every n-th request with 503 (0: never).
    pub fail_every: u64,
    /// Answer every n-th request for this path with 503: one set of callers' requests.
    pub fail_path: Option<(&'static str, u64)>,
}

#[derive(Default, Debug, Clone)]
pub struct Seen {
    pub connections: u64,
    pub requests: u64,
    /// Final responses sent, by status.
    pub responses: BTreeMap<u16, u64>,
    pub interim: u64,
    pub resets: u64,
    /// Connections that ended (the client closed or reset them, or a read failed).
    pub ended: u64,
    /// When each connection was accepted, unix ms (bounded: the first 1 000 000).
    pub accepted_at: Vec<u64>,
    /// When each of those ended, unix ms (0: still open), by the same index.
    pub ended_at: Vec<u64>,
}

pub struct HttpBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// `Behaviour::fail_every`, changeable while it runs.
    fail_every: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// The listening socket, to wake the accept loop from any thread or namespace.
    listener: TcpListener,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpBackend {
    /// On a free port of `ip`.
    pub fn start(ip: &str, behaviour: Behaviour) -> Self {
        let ip: std::net::IpAddr = ip.parse().expect("backend ip");
        Self::start_at(SocketAddr::new(ip, 0), behaviour).expect("bind http backend")
    }

    /// On `addr` (port 0: a free one).
    pub fn start_at(addr: SocketAddr, behaviour: Behaviour) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        // A deeper accept queue than std's 128, for pools that connect thousands at once.
        use std::os::fd::AsRawFd as _;
        // SAFETY: listen(2) again on a listening socket this function owns: only the
        // backlog changes.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        let addr = listener.local_addr()?;
        let waker = listener.try_clone()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let on_path = Arc::new(AtomicU64::new(0));
        let fail_every = Arc::new(AtomicU64::new(behaviour.fail_every));
        let (s, halt, fail) = (seen.clone(), stop.clone(), fail_every.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let index = {
                    let mut seen = s.lock().expect("seen");
                    seen.connections += 1;
                    (seen.accepted_at.len() < 1_000_000).then(|| {
                        seen.accepted_at.push(crate::load::unix_ms());
                        seen.ended_at.push(0);
                        seen.accepted_at.len() - 1
                    })
                };
                let (s, counter, fail) = (s.clone(), counter.clone(), fail.clone());
                let on_path = on_path.clone();
                thread::spawn(move || {
                    let path_fault = behaviour.fail_path.map(|(p, n)| (p, n, &*on_path));
                    serve(conn, behaviour.delay, &fail, path_fault, &s, &counter);
                    let mut seen = s.lock().expect("seen");
                    seen.ended += 1;
                    if let Some(i) = index {
                        seen.ended_at[i] = crate::load::unix_ms();
                    }
                });
            }
        });
        Ok(Self {
            addr,
            seen,
            fail_every,
            stop,
            listener: waker,
            thread: Some(thread),
        })
    }

    /// From now on answer every `n`-th request with 503 (0: none).
    pub fn set_fail_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("seen").clone()
    }

    /// Stops accepting and closes the listening socket: from now on connects are refused
    /// (a crashed backend). What it saw stays readable.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop (a shut down listener fails every accept at once, in any
        // network namespace); it sees `stop`, returns, and drops the listener.
        use std::os::fd::AsRawFd as _;
        // SAFETY: shutdown(2) on a socket this struct owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    delay: Duration,
    fail_every: &AtomicU64,
    path_fault: Option<(&str, u64, &AtomicU64)>,
    seen: &Mutex<Seen>,
    counter: &AtomicU64,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    // Which backend answered, for clients that time each version on their own.
    let served_by = conn
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    // Both halves borrow the one socket: one descriptor a connection, so a backend holds
    // as many connections as the open-file limit.
    let mut reader = BufReader::new(&conn);
    let mut out = &conn;
    loop {
        let mut request_line = String::new();
        if !matches!(reader.read_line(&mut request_line), Ok(n) if n > 0) {
            return;
        }
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        let mut content_length = 0usize;
        let mut expect_continue = false;
        loop {
            let mut h = String::new();
            if !matches!(reader.read_line(&mut h), Ok(n) if n > 0) {
                return;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("expect: 100-continue") {
                expect_continue = true;
            }
            if h == "\r\n" {
                break;
            }
        }
        seen.lock().expect("seen").requests += 1;
        if path == "/reset" {
            seen.lock().expect("seen").resets += 1;
            crate::reset_on_close(out);
            return;
        }
        if expect_continue {
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            seen.lock().expect("seen").interim += 1;
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let mut status: u16 = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        let every = fail_every.load(Ordering::Relaxed);
        if every > 0 && n.is_multiple_of(every) {
            status = 503;
        }
        if let Some((p, every, count)) = path_fault
            && p == path
            && (count.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(every)
        {
            status = 503;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let response = format!(
            "HTTP/1.1 {status} X\r\nX-Served-By: {served_by}\r\nContent-Length: 2\r\n\r\nok"
        );
        // Counted before it is written, so that a client that has read it always finds it
        // counted; taken back if the write fails.
        *seen
            .lock()
            .expect("seen")
            .responses
            .entry(status)
            .or_default() += 1;
        if out.write_all(response.as_bytes()).is_err() {
            if let Some(n) = seen.lock().expect("seen").responses.get_mut(&status) {
                *n -= 1;
            }
            return;
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.close();
    }
}

/// `GET path` from an HTTP server (the agent's metrics server): (status code, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// One scrape of `/metrics`, parsed: (name, sorted labels) -> value.
#[derive(Debug)]
pub struct Scraped(pub BTreeMap<(String, Vec<(String, String)>), f64>);

impl Scraped {
    pub fn fetch(addr: SocketAddr) -> (Self, String) {
        let mut s = TcpStream::connect(addr).expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (Self::parse(&body), body)
    }

    /// An exposition's text, parsed.
    pub fn parse(body: &str) -> Self {
        let mut map = BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut labels: Vec<(String, String)> = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            labels.sort();
            map.insert((name.to_owned(), labels), value.parse().expect("number"));
        }
        Self(map)
    }

    /// Sum of every series named `name` whose labels include all of `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, labels), _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        self.sum(name, want) as u64
    }

    /// The upper bound (seconds) of the bucket holding the median of a histogram.
    pub fn median_bucket(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let count = self.sum(&format!("{name}_count"), want);
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|((n, labels), _)| {
                n == &format!("{name}_bucket")
                    && want
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|((_, labels), v)| {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("+Inf");
                (
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect("le")
                    },
                    *v,
                )
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= count / 2.0)
            .map(|(le, _)| *le)
            .expect("median bucket")
    }
}
