use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

/// A TCP server on loopback that answers each connection with its name (a line), and again
/// for every line it receives; it counts the connections it accepted. This is the server's
/// side of every assertion: what it counts is what it saw.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    /// On a free port of `ip`.
    pub fn start(ip: &str, name: &str) -> Self {
        let ip: std::net::IpAddr = ip.parse().expect("backend ip");
        Self::start_at(SocketAddr::new(ip, 0), name).expect("bind backend")
    }

    /// On `addr` (port 0: a free one).
    pub fn start_at(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt, line) = (accepted.clone(), stop.clone(), format!("{name}\n"));
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let line = line.clone();
                thread::spawn(move || serve(conn, &line));
            }
        });
        Ok(Self {
            addr,
            name: name.to_owned(),
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve(mut conn: TcpStream, line: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    if conn.write_all(line.as_bytes()).is_err() {
        return;
    }
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut buf = String::new();
    while matches!(reader.read_line(&mut buf), Ok(n) if n > 0) {
        if conn.write_all(line.as_bytes()).is_err() {
            return;
        }
        buf.clear();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop: a connection to our own listener on loopback.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
