//! The checkpointer thread: copies the write-ahead log into the database
//! file off the event loop.

use std::path::Path;

use rusqlite::Connection;

/// How often the checkpointer copies the write-ahead log into the database.
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies the write-ahead log into the database file from its own thread
/// and connection. A checkpoint fsyncs, and on a busy disk one fsync takes
/// up to a second (measured in a burst); the agent's own connection, which
/// commits every ban on the event loop, never checkpoints and so never
/// fsyncs. A passive checkpoint blocks no writer.
///
/// Dropping it stops the thread and waits for it, so that once the store is
/// dropped its last connection is closed (the log copied and removed) and
/// the database file no longer changes (see `marker`).
pub(super) struct Checkpointer {
    /// Dropped to stop the thread at once.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Checkpointer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("xban-checkpoint".into())
            .spawn(move || {
                let conn = match Connection::open(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(
                            "ban database {}: no checkpointer ({e}); the write-ahead log is copied at the agent's stop only",
                            path.display()
                        );
                        return;
                    }
                };
                let mut last_error = None;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let done: rusqlite::Result<(i64, i64, i64)> = conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        });
                    // Said once per kind of failure (a full disk fails every
                    // time until there is space), and when it is over.
                    let error = done.err().map(|e| e.to_string());
                    if error != last_error {
                        match &error {
                            Some(e) => tracing::warn!(
                                "ban database {}: checkpoint failed ({e}); bans stay in the write-ahead log",
                                path.display()
                            ),
                            None => tracing::info!("ban database {}: checkpoints work again", path.display()),
                        }
                        last_error = error;
                    }
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("ban database: no checkpointer thread ({e})");
                None
            }
        };
        Checkpointer {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
