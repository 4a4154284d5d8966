//! The demo's HTTP backends: answer every request `200 ok` (or, once told to fail, a share
//! of them `503`), one new connection per request as the demo client sends them, and count
//! what they answered: the truth the rollout's numbers can be checked against.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;

#[derive(Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Answer this many of every 1000 requests with 503.
    pub fail_per_mille: AtomicU32,
    seq: AtomicU64,
}

pub struct HttpBackend {
    addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpBackend {
    pub fn start(addr: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, halt) = (counts.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let c = c.clone();
                    thread::spawn(move || serve(conn, &c));
                }
            }
        });
        Ok(Self {
            addr,
            counts,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop (loopback, our own listener).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, counts: &Counts) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    // Spread the failures evenly: request n fails when the running share falls behind.
    let n = counts.seq.fetch_add(1, Ordering::Relaxed);
    let per_mille = u64::from(counts.fail_per_mille.load(Ordering::Relaxed));
    let fail = (n + 1) * per_mille / 1000 > n * per_mille / 1000;
    let response: &[u8] = if fail {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfail"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    };
    let mut out = conn;
    if out.write_all(response).is_ok() {
        let counter = if fail { &counts.failed } else { &counts.ok };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let _ = out.shutdown(Shutdown::Write);
}
