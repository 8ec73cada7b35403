//! The control socket. The server only parses and forwards; the agent's
//! main loop owns all state and answers, so requests never race with bans.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{parse_request, ControlMessage, Reply, Request, MAX_REQUEST};
use crate::api::conn_limit::{AcceptBackoff, Limiter, Limits, Slot};

/// Bind the socket (owner-only permissions), replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        crate::sys::setup::private_dir(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // Never delete what is not a socket (a mistyped path to a file).
        if !meta.file_type().is_socket() {
            bail!(
                "[agent] socket: {} exists and is not a socket: set socket to a path of its own, e.g. {}",
                path.display(),
                crate::sys::paths::SOCKET
            );
        }
        // A socket that still answers belongs to a running agent.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another xban agent is already listening on {}: stop it first (systemctl stop xban), or set a different [agent] socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("bind control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Control connections open at once. The CLI opens one per command, so this
/// is only reached by something holding connections open.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request line (the CLI sends it at once).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a reply may take to be taken by the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections until the channel closes.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<ControlMessage>) {
    serve_with(
        listener,
        tx,
        Limits {
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
        },
    )
    .await
}

pub async fn serve_with(listener: UnixListener, tx: mpsc::Sender<ControlMessage>, limits: Limits) {
    let limiter = Limiter::new(limits);
    let mut backoff = AcceptBackoff::default();
    loop {
        let slot = limiter.slot().await;
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                backoff.failed("control socket", &e).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx, slot).await {
                tracing::debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    tx: mpsc::Sender<ControlMessage>,
    mut slot: Slot,
) -> Result<()> {
    // Only root (or the agent's own user) may drive the agent.
    let cred = stream.peer_cred()?;
    let me = nix::unistd::geteuid().as_raw();
    let (read, mut write) = stream.into_split();
    if cred.uid() != 0 && cred.uid() != me {
        let reply = Reply::err(format!(
            "permission denied: uid {} may not control xban (run the command as root)",
            cred.uid()
        ));
        write_reply(&mut write, &reply).await?;
        return Ok(());
    }
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut raw = Vec::new();
    slot.read_request(reader.read_until(b'\n', &mut raw))
        .await?;
    let reply = match parse_request(&raw) {
        Err(message) => Reply::err(message),
        Ok(request) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx
                .send(ControlMessage {
                    request,
                    reply: reply_tx,
                })
                .await
                .is_err()
            {
                Reply::err("the agent is shutting down")
            } else {
                reply_rx
                    .await
                    .unwrap_or_else(|_| Reply::err("the agent is shutting down"))
            }
        }
    };
    write_reply(&mut write, &reply).await
}
async fn write_reply(w: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> Result<()> {
    let mut text = serde_json::to_string(reply)?;
    text.push('\n');
    tokio::time::timeout(WRITE_TIMEOUT, async {
        w.write_all(text.as_bytes()).await?;
        w.shutdown().await
    })
    .await
    .context("the client did not take the reply")??;
    Ok(())
}

/// Client side: send one request, wait for its reply.
pub fn request(socket: &Path, req: &Request) -> Result<Reply> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return anyhow::anyhow!(
                "permission denied on {}: only root may control xban (run the command with sudo)",
                socket.display()
            );
        }
        anyhow::anyhow!(
            "cannot reach the xban agent at {}: {e} (is it running? start it with `xban run` or `systemctl start xban`; check [agent] socket in the config)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    // The agent may answer (a refusal) and close before reading the
    // request: a failed write is not the end, its reply is what counts.
    let write_error = stream.write_all(text.as_bytes()).err();
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(match write_error {
            Some(e) => anyhow::anyhow!("the agent closed the connection: {e}"),
            None => anyhow::anyhow!("the agent closed the connection without a reply"),
        });
    }
    serde_json::from_str(&line)
        .with_context(|| format!("unreadable reply from the agent: {line:?}"))
}

/// Is an agent answering on this socket?
pub fn agent_running(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_answers_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let _ = m.reply.send(Reply::ok(format!("{:?}", m.request)));
            }
        });
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || request(&p, &Request::Stats))
            .await
            .unwrap()
            .unwrap();
        assert!(reply.ok);
        assert_eq!(reply.data, serde_json::json!("Stats"));
        // Garbage gets an error reply; the server keeps serving.
        let p = path.clone();
        let garbage = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{not json\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let reply: Reply = serde_json::from_str(&garbage).unwrap();
        assert!(!reply.ok && reply.error.unwrap().starts_with("malformed request"));
        // Bytes that are not UTF-8 get an error reply too, not silence.
        let p = path.clone();
        let binary = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"cmd\":\"stat\xff\xfes\"}\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let reply: Reply = serde_json::from_str(&binary).expect("a reply to non-UTF-8 bytes");
        let e = reply.error.unwrap();
        assert!(
            !reply.ok && e.contains("not UTF-8") && e.contains("offset 12"),
            "{e}"
        );
        let p = path.clone();
        assert!(
            tokio::task::spawn_blocking(move || request(&p, &Request::Stats))
                .await
                .unwrap()
                .unwrap()
                .ok
        );
        // Connections that say nothing cannot lock the socket: the oldest
        // idle ones are closed for new ones, which are answered.
        let idle: Vec<std::os::unix::net::UnixStream> = (0..MAX_CONNECTIONS * 4)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        let p = path.clone();
        let started = std::time::Instant::now();
        let reply = tokio::task::spawn_blocking(move || request(&p, &Request::Stats))
            .await
            .unwrap()
            .unwrap();
        assert!(reply.ok);
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "answered without waiting for idle ones to time out: {:?}",
            started.elapsed()
        );
        drop(idle);
        // A second agent on the same socket is refused.
        assert!(bind(&path)
            .unwrap_err()
            .to_string()
            .contains("already listening"));
    }
}
