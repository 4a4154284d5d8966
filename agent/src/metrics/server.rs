//! A deliberately small HTTP/1.1 server: GET /metrics, /ready, /live, one request per
//! connection. Enough for Prometheus and kubelet probes, nothing to configure.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

use crate::limits::{Backoff, CONNECTIONS, IO_TIMEOUT};

/// What the server asks the daemon loop (which owns the maps).
pub enum Scrape {
    /// The exposition, or why it cannot be had (answered 503 with that reason).
    Metrics(oneshot::Sender<Result<String, String>>),
    /// Answered by the loop itself: it is running, programs attached, config applied; or
    /// why it is not ready (answered 503 with that reason).
    Ready(oneshot::Sender<Result<(), String>>),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} for metrics")]
pub struct ServeError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

const MAX_HEAD: usize = 8 * 1024;

pub async fn serve(
    address: SocketAddr,
    scrapes: mpsc::Sender<Scrape>,
) -> Result<SocketAddr, ServeError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError { address, source })?;
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    tokio::spawn(async move {
        let mut backoff = Backoff::new("metrics");
        loop {
            // A connection beyond the limit waits in the listen queue until one ends.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.reset();
                    let scrapes = scrapes.clone();
                    tokio::spawn(async move {
                        handle(stream, scrapes).await;
                        drop(slot);
                    });
                }
                Err(e) => backoff.failed(&e).await,
            }
        }
    });
    Ok(bound)
}

async fn handle(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>) {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            let (tx, rx) = oneshot::channel();
            match ask(&scrapes, Scrape::Metrics(tx), rx).await {
                Some(Ok(text)) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
                Some(Err(reason)) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("{reason}\n"),
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "daemon busy\n".into(),
                ),
            }
        }
        (b"GET", b"/ready") => {
            let (tx, rx) = oneshot::channel();
            match ask(&scrapes, Scrape::Ready(tx), rx).await {
                Some(Ok(())) => ("200 OK", "text/plain", "ready\n".into()),
                Some(Err(reason)) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("{reason}\n"),
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".into(),
                ),
            }
        }
        (b"GET", b"/live") => ("200 OK", "text/plain", "live\n".into()),
        (b"GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /ready, /live\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A scraper that stops reading gives up its connection after the timeout.
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Sends a scrape to the daemon loop and waits up to 5 s for its answer.
async fn ask<T>(
    scrapes: &mpsc::Sender<Scrape>,
    scrape: Scrape,
    rx: oneshot::Receiver<T>,
) -> Option<T> {
    scrapes.send(scrape).await.ok()?;
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GET `path` from the server at `addr`; the whole response.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).await.expect("read");
        text
    }

    #[tokio::test(flavor = "current_thread")]
    async fn metrics_that_cannot_be_read_answer_503_with_the_reason() {
        let (tx, mut rx) = mpsc::channel(4);
        let addr = serve("127.0.0.1:0".parse().expect("address"), tx)
            .await
            .expect("bind");
        let reason = "reading the steering counters from the kernel failed (nothing was written)";
        tokio::spawn(async move {
            while let Some(scrape) = rx.recv().await {
                match scrape {
                    Scrape::Metrics(reply) => {
                        let _ = reply.send(Err(reason.to_owned()));
                    }
                    Scrape::Ready(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        });
        let text = get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.ends_with(&format!("\r\n\r\n{reason}\n")), "{text}");
        // The rest of the server is unaffected.
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200 "));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200 "));
    }
}
