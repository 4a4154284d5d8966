use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{Request, Response};

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
    // A socket file left by a daemon that died: nobody answered on it above.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, calls.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "accepting an API connection failed"),
            }
        }
    });
    Ok(())
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<ApiCall>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    let mut written_ack = None;
    let response = match reader.read_line(&mut line).await {
        Err(e) => Response::Error {
            message: format!("reading the request: {e}"),
        },
        Ok(_) => match serde_json::from_str::<Request>(&line) {
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
    if let Err(e) = write.write_all(out.as_bytes()).await {
        tracing::debug!(error = %e, "writing an API response failed");
    }
    if let Some(ack) = written_ack {
        let _ = ack.send(());
    }
}
