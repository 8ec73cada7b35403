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
pub(super) struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Checkpointer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
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
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
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
        if let Err(e) = spawned {
            tracing::error!("ban database: no checkpointer thread ({e})");
        }
        Checkpointer { stop }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
