use std::{
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

use super::{Request, Response};
use crate::limits::{Backoff, CONNECTIONS, IO_TIMEOUT};

/// Longest request line: every request is a few hundred bytes.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request on its way to the daemon loop, with the way back.
pub struct ApiCall {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
    /// Fires once the response has been written to the client: a daemon that exits after
    /// answering (detach) waits for it, or the client would read nothing.
    pub written: oneshot::Receiver<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another sluice daemon already answers on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket: refusing to replace it (choose another api_socket)")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket (root only) and forwards every request to `calls`.
pub fn serve(path: &Path, calls: mpsc::Sender<ApiCall>) -> Result<(), ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse(path.to_owned()));
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(bind_err)?;
    }
    // A socket left by a daemon that died (nobody answered on it above) goes; anything else
    // at that path is not ours to remove.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    tokio::spawn(async move {
        let mut backoff = Backoff::new("API");
        loop {
            // A connection beyond the limit waits in the listen queue until one ends.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.reset();
                    let calls = calls.clone();
                    tokio::spawn(async move {
                        handle(stream, calls).await;
                        drop(slot);
                    });
                }
                Err(e) => backoff.failed(&e).await,
            }
        }
    });
    Ok(())
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<ApiCall>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST + 1));
    let mut written_ack = None;
    let read = tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await;
    let response = match read {
        Err(_) => Response::Error {
            message: format!("no whole request within {IO_TIMEOUT:?}"),
        },
        Ok(Err(e)) => Response::Error {
            message: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => Response::Error {
            message: format!("a request has at most {MAX_REQUEST} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("not a request: {e}"),
            },
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                let (written_tx, written) = oneshot::channel();
                written_ack = Some(written_tx);
                let call = ApiCall {
                    request,
                    reply,
                    written,
                };
                if calls.send(call).await.is_err() {
                    return;
                }
                rx.await.unwrap_or(Response::Error {
                    message: "the daemon is shutting down".into(),
                })
            }
        },
    };
    let Ok(mut out) = serde_json::to_string(&response) else {
        return;
    };
    out.push('\n');
    match tokio::time::timeout(IO_TIMEOUT, write.write_all(out.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "writing an API response failed"),
        Err(_) => tracing::debug!("an API client did not read its response in time"),
    }
    if let Some(ack) = written_ack {
        let _ = ack.send(());
    }
}
