//! `BanStore`: the agent's state in SQLite (`state_dir/xban.sqlite3`), readable
//! with the `sqlite3` CLI. A ban is written here before it is reported done, so
//! a restart (or `kill -9`) loses none.
//!
//! Here: opening, the connection, and group commit. The tables by topic:
//! `schema.rs` (migrations), `bans.rs` (bans and their history),
//! `positions.rs` (where each log source got to); `checkpoint.rs` runs the
//! write-ahead log checkpoints on their own thread; `marker.rs` is the
//! restore marker a clean stop leaves beside the database, `snapshot.rs`
//! the compact copy of the ban rows it leaves there too.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use checkpoint::Checkpointer;

mod bans;
mod checkpoint;
pub(crate) mod marker;
mod positions;
mod rows;
mod schema;
pub(crate) mod snapshot;

/// What tells one offence from another within the same second of log time:
/// a digest of the line that caused the ban (the last matched line), so a
/// re-read of that line is the same offence and a new line is another.
/// Empty for bans with no matched lines (manual, blocklist). FNV-1a, so the
/// key is the same across builds and versions.
pub(crate) fn offence_key(matches: &[String]) -> String {
    let Some(line) = matches.last() else {
        return String::new();
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in line.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ban database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("ban database {path} has schema version {found}, newer than this xban knows ({known}): upgrade xban, or move the file away to start afresh")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("bans snapshot {path}: {source}")]
    Snapshot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ban database {path}, row {target}/{jail}: {message}")]
    BadRow {
        path: PathBuf,
        target: String,
        jail: String,
        message: String,
    },
}

pub struct BanStore {
    conn: Connection,
    path: PathBuf,
    batch: Batch,
    /// Checkpoints the write-ahead log from its own thread (none in memory).
    _checkpointer: Option<Checkpointer>,
    /// Bans being read ahead for the restore (see `read_bans_ahead`).
    ahead: Option<bans::Ahead>,
}

/// Group commit: while a batch is armed, ban writes join one transaction
/// (opened by the first of them) that [`BanStore::commit_batch`] ends, so a
/// burst of bans costs one commit instead of one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    Off,
    Armed,
    Open,
}

impl BanStore {
    pub fn open(state_dir: &Path) -> Result<BanStore, StoreError> {
        let path = state_dir.join(crate::sys::paths::STATE_DB);
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(wrap)?;
        // WAL: readers (sqlite3 CLI) never block the agent; NORMAL sync is
        // durable across process crashes, which is what kill -9 tests.
        // No checkpoints on this connection: see `Checkpointer`.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(wrap)?;
        let mut store = BanStore {
            conn,
            path,
            batch: Batch::Off,
            _checkpointer: None,
            ahead: None,
        };
        store.migrate()?;
        store._checkpointer = Some(Checkpointer::start(&store.path));
        Ok(store)
    }

    /// A store that lives in memory only (dry runs).
    pub fn open_in_memory() -> Result<BanStore, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut store = BanStore {
            conn,
            path,
            batch: Batch::Off,
            _checkpointer: None,
            ahead: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Statements of another module (its own tables), all-or-nothing, in
    /// the armed batch's transaction when there is one.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        if self.batch == Batch::Armed {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(wrap)?;
            self.batch = Batch::Open;
        }
        let sp = self.conn.savepoint().map_err(wrap)?;
        let out = f(&sp).map_err(wrap)?;
        sp.commit().map_err(wrap)?;
        Ok(out)
    }

    /// Read another module's tables.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        f(&self.conn).map_err(self.wrap())
    }

    /// From now until [`commit_batch`](Self::commit_batch), ban writes share
    /// one transaction. Reads on this connection see them before the commit.
    pub fn arm_batch(&mut self) {
        if self.batch == Batch::Off {
            self.batch = Batch::Armed;
        }
    }

    /// Commits the batch's bans, if any were written. On error the batch is
    /// rolled back: none of its bans are stored.
    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        let was = std::mem::replace(&mut self.batch, Batch::Off);
        if was != Batch::Open {
            return Ok(());
        }
        self.conn.execute_batch("COMMIT").map_err(|source| {
            let _ = self.conn.execute_batch("ROLLBACK");
            StoreError::Sqlite {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Ends an open batch without storing its bans (after a failed write).
    pub fn abort_batch(&mut self) {
        if std::mem::replace(&mut self.batch, Batch::Off) == Batch::Open {
            // SQLite may have rolled back already (SQLITE_FULL): ignore.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Limit the database's size in pages: writes past it fail as on a full
    /// disk (tests).
    #[cfg(test)]
    pub fn set_max_pages(&self, pages: u64) {
        self.conn
            .pragma_update(None, "max_page_count", pages as i64)
            .unwrap();
    }

    #[cfg(test)]
    pub fn page_count(&self) -> u64 {
        self.conn
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
