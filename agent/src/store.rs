//! `BanStore`: the agent's state in SQLite (`state_dir/xban.sqlite3`), readable
//! with the `sqlite3` CLI. A ban is written here before it is reported done, so
//! a restart (or `kill -9`) loses none.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::addr::Target;
use crate::ban::{BanClass, BanRecord, UnixSecs};

/// Migrations, in order. `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: bans (one row per target and jail), ban history, file positions.
    "CREATE TABLE bans (
        target TEXT NOT NULL,
        jail TEXT NOT NULL,
        class TEXT NOT NULL CHECK (class IN ('drop', 'tarpit')),
        banned_at INTEGER NOT NULL,
        expires_at INTEGER,
        failures INTEGER NOT NULL,
        matches TEXT NOT NULL,
        PRIMARY KEY (target, jail)
    );
    CREATE INDEX bans_expires ON bans (expires_at);
    CREATE TABLE ban_history (
        target TEXT NOT NULL,
        jail TEXT NOT NULL,
        banned_at INTEGER NOT NULL
    );
    CREATE INDEX ban_history_target ON ban_history (target, banned_at);
    CREATE TABLE positions (
        source TEXT PRIMARY KEY,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        offset INTEGER NOT NULL
    );
    CREATE TABLE cursors (
        source TEXT PRIMARY KEY,
        cursor TEXT NOT NULL
    );",
    // 2: a ban is in the history once: a re-read of the same log lines
    // (after a crash) must not count as another offence.
    "DELETE FROM ban_history WHERE rowid NOT IN
        (SELECT MIN(rowid) FROM ban_history GROUP BY target, jail, banned_at);
    CREATE UNIQUE INDEX ban_history_once ON ban_history (target, jail, banned_at);",
    // 3: log time has whole seconds, and two offences can share one: the
    // line that caused the ban tells them apart (a replay has the same line).
    "ALTER TABLE ban_history ADD COLUMN offence TEXT NOT NULL DEFAULT '';
    DROP INDEX ban_history_once;
    CREATE UNIQUE INDEX ban_history_once ON ban_history (target, jail, banned_at, offence);",
];

/// What tells one offence from another within the same second of log time:
/// a digest of the line that caused the ban (the last matched line), so a
/// re-read of that line is the same offence and a new line is another.
/// Empty for bans with no matched lines (manual, blocklist). FNV-1a, so the
/// key is the same across builds and versions.
pub fn offence_key(matches: &[String]) -> String {
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
}

/// How often the checkpointer copies the write-ahead log into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies the write-ahead log into the database file from its own thread
/// and connection. A checkpoint fsyncs, and on a busy disk one fsync takes
/// up to a second (measured in a burst); the agent's own connection, which
/// commits every ban on the event loop, never checkpoints and so never
/// fsyncs. A passive checkpoint blocks no writer.
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    fn start(path: &Path) -> Checkpointer {
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

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.wrap())?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(wrap)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(wrap)?;
        }
        tx.commit().map_err(wrap)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.wrap())
    }

    /// Insert or replace a jail's ban and note it in the ban history at
    /// `event_at` (the log time of the failure that caused it), atomically.
    pub fn put_ban(&mut self, rec: &BanRecord, event_at: UnixSecs) -> Result<(), StoreError> {
        self.put_bans(std::slice::from_ref(rec), Some(event_at))
    }

    /// Many bans in one transaction (or in the armed batch's); with
    /// `event_at`, each goes into the history too (bans loaded from a
    /// blocklist file do not).
    pub fn put_bans(
        &mut self,
        recs: &[BanRecord],
        event_at: Option<UnixSecs>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        match self.batch {
            Batch::Off => {
                let tx = self.conn.transaction().map_err(wrap)?;
                write_bans(&tx, recs, event_at).map_err(wrap)?;
                tx.commit().map_err(wrap)
            }
            Batch::Armed | Batch::Open => {
                if self.batch == Batch::Armed {
                    self.conn.execute_batch("BEGIN IMMEDIATE").map_err(wrap)?;
                    self.batch = Batch::Open;
                }
                // A savepoint keeps this call all-or-nothing within the batch.
                let sp = self.conn.savepoint().map_err(wrap)?;
                write_bans(&sp, recs, event_at).map_err(wrap)?;
                sp.commit().map_err(wrap)
            }
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

    /// Bans, each with its own history time, in one transaction.
    pub fn put_bans_at(&mut self, recs: &[(BanRecord, UnixSecs)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        for (rec, at) in recs {
            write_bans(&tx, std::slice::from_ref(rec), Some(*at)).map_err(wrap)?;
        }
        tx.commit().map_err(wrap)
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

    /// Remove one jail's ban of a target, or all of them (`jail = None`).
    pub fn delete_ban(&mut self, target: &Target, jail: Option<&str>) -> Result<usize, StoreError> {
        let t = target.to_string();
        match jail {
            Some(j) => self.conn.execute(
                "DELETE FROM bans WHERE target = ?1 AND jail = ?2",
                params![t, j],
            ),
            None => self
                .conn
                .execute("DELETE FROM bans WHERE target = ?1", params![t]),
        }
        .map_err(self.wrap())
    }

    /// Remove bans that expired at or before `now`; returns how many.
    pub fn delete_expired(&mut self, now: UnixSecs) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM bans WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                params![now],
            )
            .map_err(self.wrap())
    }

    /// The targets of bans that expired at or before `now`.
    pub fn for_each_expired(
        &self,
        now: UnixSecs,
        mut f: impl FnMut(Target),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT target FROM bans WHERE expires_at IS NOT NULL AND expires_at <= ?1")
            .map_err(self.wrap())?;
        let mut rows = stmt.query(params![now]).map_err(self.wrap())?;
        while let Some(row) = rows.next().map_err(self.wrap())? {
            if let Ok(t) = row
                .get_ref(0)
                .map_err(self.wrap())?
                .as_str()
                .unwrap_or("")
                .parse()
            {
                f(t);
            }
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT target, jail, class, banned_at, expires_at, failures, matches FROM bans",
            )
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(self.wrap())?;
        let mut out = Vec::new();
        for row in rows {
            let (target, jail, class, banned_at, expires_at, failures, matches) =
                row.map_err(self.wrap())?;
            let bad = |message: String| StoreError::BadRow {
                path: self.path.clone(),
                target: target.clone(),
                jail: jail.clone(),
                message,
            };
            out.push(BanRecord {
                target: target
                    .parse()
                    .map_err(|e: crate::addr::AddrError| bad(e.to_string()))?,
                class: class.parse::<BanClass>().map_err(bad)?,
                jail,
                banned_at,
                expires_at,
                failures,
                matches: serde_json::from_str(&matches).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Every stored ban without its matched lines (`matches` is empty),
    /// handed to `f` row by row so that all bans are never in memory twice.
    /// Returns how many there were.
    pub fn for_each_ban(&self, mut f: impl FnMut(BanRecord)) -> Result<usize, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT target, jail, class, banned_at, expires_at, failures FROM bans")
            .map_err(self.wrap())?;
        let mut rows = stmt.query([]).map_err(self.wrap())?;
        let mut n = 0;
        while let Some(row) = rows.next().map_err(self.wrap())? {
            let get = |row: &rusqlite::Row| -> rusqlite::Result<_> {
                Ok((
                    row.get_ref(0)?.as_str()?.parse::<Target>(),
                    row.get::<_, String>(1)?,
                    row.get_ref(2)?.as_str()?.parse::<BanClass>(),
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, u32>(5)?,
                ))
            };
            let (target, jail, class, banned_at, expires_at, failures) =
                get(row).map_err(self.wrap())?;
            let bad = |message: String| StoreError::BadRow {
                path: self.path.clone(),
                target: row.get::<_, String>(0).unwrap_or_default(),
                jail: jail.clone(),
                message,
            };
            f(BanRecord {
                target: target.map_err(|e| bad(e.to_string()))?,
                class: class.map_err(bad)?,
                jail,
                banned_at,
                expires_at,
                failures,
                matches: Vec::new(),
            });
            n += 1;
        }
        Ok(n)
    }

    /// How many times the target was banned since `since` (all jails, or one).
    pub fn ban_count_since(
        &self,
        target: &Target,
        jail: Option<&str>,
        since: UnixSecs,
    ) -> Result<u32, StoreError> {
        let t = target.to_string();
        // Cached: this runs for every ban, and parsing it each time costs
        // more than the indexed lookup.
        match jail {
            Some(j) => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM ban_history WHERE target = ?1 AND jail = ?2 AND banned_at >= ?3",
                )
                .and_then(|mut s| s.query_row(params![t, j, since], |r| r.get(0))),
            None => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM ban_history WHERE target = ?1 AND banned_at >= ?2",
                )
                .and_then(|mut s| s.query_row(params![t, since], |r| r.get(0))),
        }
        .map_err(self.wrap())
    }

    /// Like [`ban_count_since`](Self::ban_count_since), leaving out the
    /// history row of the ban being decided (`jail` at `event_at`, caused by
    /// the line of `offence`, see [`offence_key`]), which a re-read of the
    /// same lines finds there already: a replay decides as the first
    /// reading did.
    pub fn earlier_ban_count(
        &self,
        target: &Target,
        only_jail: Option<&str>,
        since: UnixSecs,
        jail: &str,
        event_at: UnixSecs,
        offence: &str,
    ) -> Result<u32, StoreError> {
        let t = target.to_string();
        match only_jail {
            Some(j) => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM ban_history WHERE target = ?1 AND jail = ?2 AND banned_at >= ?3 AND NOT (jail = ?4 AND banned_at = ?5 AND offence IN ('', ?6))",
                )
                .and_then(|mut s| {
                    s.query_row(params![t, j, since, jail, event_at, offence], |r| r.get(0))
                }),
            None => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM ban_history WHERE target = ?1 AND banned_at >= ?2 AND NOT (jail = ?3 AND banned_at = ?4 AND offence IN ('', ?5))",
                )
                .and_then(|mut s| {
                    s.query_row(params![t, since, jail, event_at, offence], |r| r.get(0))
                }),
        }
        .map_err(self.wrap())
    }

    /// Host and prefix bans in the history since `since`, oldest first.
    pub fn history_since(
        &self,
        since: UnixSecs,
    ) -> Result<Vec<(Target, String, UnixSecs)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT target, jail, banned_at FROM ban_history WHERE banned_at >= ?1 ORDER BY banned_at")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map(params![since], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.wrap())?;
        let mut out = Vec::new();
        for row in rows {
            let (t, jail, at) = row.map_err(self.wrap())?;
            // A row we cannot parse is skipped: history only tunes escalation.
            if let Ok(target) = t.parse() {
                out.push((target, jail, at));
            }
        }
        Ok(out)
    }

    /// Forget history older than `before` (dbpurgeage); returns rows removed.
    pub fn purge_history(&mut self, before: UnixSecs) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM ban_history WHERE banned_at < ?1",
                params![before],
            )
            .map_err(self.wrap())
    }

    pub fn save_position(
        &mut self,
        source: &str,
        dev: u64,
        inode: u64,
        offset: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO positions (source, dev, inode, offset) VALUES (?1, ?2, ?3, ?4)",
                params![source, dev as i64, inode as i64, offset as i64],
            )
            .map(|_| ())
            .map_err(self.wrap())
    }

    /// Every saved position whose source key starts with `prefix`.
    pub fn positions_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT source, dev, inode, offset FROM positions WHERE substr(source, 1, length(?1)) = ?1")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map(params![prefix], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(self.wrap())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.wrap())
    }

    pub fn save_cursor(&mut self, source: &str, cursor: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO cursors (source, cursor) VALUES (?1, ?2)",
                params![source, cursor],
            )
            .map(|_| ())
            .map_err(self.wrap())
    }

    pub fn cursor(&self, source: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT cursor FROM cursors WHERE source = ?1",
                params![source],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.wrap())
    }

    pub fn position(&self, source: &str) -> Result<Option<(u64, u64, u64)>, StoreError> {
        self.conn
            .query_row(
                "SELECT dev, inode, offset FROM positions WHERE source = ?1",
                params![source],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                    ))
                },
            )
            .optional()
            .map_err(self.wrap())
    }
}

/// The statements of [`BanStore::put_bans`], on a transaction or on the
/// connection inside an open batch.
fn write_bans(
    conn: &Connection,
    recs: &[BanRecord],
    event_at: Option<UnixSecs>,
) -> rusqlite::Result<()> {
    let mut put = conn.prepare_cached(
        "INSERT OR REPLACE INTO bans (target, jail, class, banned_at, expires_at, failures, matches)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut hist = conn.prepare_cached(
        // A row from before migration 3 has no offence key: it is taken as
        // this offence, so a replay across the upgrade is not counted twice.
        "INSERT INTO ban_history (target, jail, banned_at, offence) SELECT ?1, ?2, ?3, ?4
         WHERE NOT EXISTS (SELECT 1 FROM ban_history
             WHERE target = ?1 AND jail = ?2 AND banned_at = ?3 AND offence IN ('', ?4))",
    )?;
    for rec in recs {
        let target = rec.target.to_string();
        let matches = serde_json::to_string(&rec.matches).unwrap_or_else(|_| "[]".into());
        put.execute(params![
            target,
            rec.jail,
            rec.class.as_str(),
            rec.banned_at,
            rec.expires_at,
            rec.failures,
            matches
        ])?;
        if let Some(at) = event_at {
            hist.execute(params![target, rec.jail, at, offence_key(&rec.matches)])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(target: &str, jail: &str, expires: Option<i64>) -> BanRecord {
        BanRecord {
            target: target.parse().unwrap(),
            jail: jail.into(),
            class: BanClass::Drop,
            banned_at: 100,
            expires_at: expires,
            failures: 3,
            matches: vec!["line one".into(), "line two".into()],
        }
    }

    /// The agent's connection never checkpoints (a checkpoint fsyncs, on
    /// the event loop); the checkpointer thread copies the log into the
    /// database file, and a reopened store sees every ban either way.
    #[test]
    fn the_log_is_checkpointed_by_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(crate::sys::paths::STATE_DB);
        let mut store = BanStore::open(dir.path()).unwrap();
        let auto: i64 = store
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, 0);
        let before = std::fs::metadata(&db).unwrap().len();
        let recs: Vec<BanRecord> = (0..2000)
            .map(|i| rec(&format!("10.0.{}.{}", i / 256, i % 256), "sshd", None))
            .collect();
        store.put_bans(&recs, Some(100)).unwrap();
        let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 20;
        while std::fs::metadata(&db).unwrap().len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file never grew: nothing was checkpointed"
            );
            std::thread::sleep(CHECKPOINT_EVERY / 5);
        }
        drop(store);
        let again = BanStore::open(dir.path()).unwrap();
        assert_eq!(again.load_bans().unwrap().len(), 2000);
    }

    #[test]
    fn history_is_idempotent_and_old_duplicates_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let t: Target = "203.0.113.5".parse().unwrap();
        {
            // A database written by the previous schema, with a replayed ban
            // recorded twice.
            let conn = Connection::open(dir.path().join(crate::sys::paths::STATE_DB)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for _ in 0..2 {
                conn.execute(
                    "INSERT INTO ban_history (target, jail, banned_at) VALUES ('203.0.113.5', 'sshd', 100)",
                    [],
                )
                .unwrap();
            }
        }
        let mut s = BanStore::open(dir.path()).unwrap();
        assert_eq!(s.ban_count_since(&t, None, 0).unwrap(), 1, "merged");
        // Replaying the same ban (same jail, same log time) is a no-op.
        for _ in 0..3 {
            s.put_ban(&rec("203.0.113.5", "sshd", Some(700)), 100)
                .unwrap();
        }
        assert_eq!(s.ban_count_since(&t, None, 0).unwrap(), 1);
        // Another jail or another time is another ban.
        s.put_ban(&rec("203.0.113.5", "web", Some(700)), 100)
            .unwrap();
        s.put_ban(&rec("203.0.113.5", "sshd", Some(700)), 101)
            .unwrap();
        assert_eq!(s.ban_count_since(&t, None, 0).unwrap(), 3);
        // The ban being decided is not one of its own earlier bans.
        let first = offence_key(&rec("203.0.113.5", "sshd", None).matches);
        assert_eq!(
            s.earlier_ban_count(&t, None, 0, "sshd", 101, &first)
                .unwrap(),
            2
        );
        assert_eq!(
            s.earlier_ban_count(&t, Some("sshd"), 0, "sshd", 101, &first)
                .unwrap(),
            1
        );
        // Another offence in the same second of log time (another line
        // caused it) is another ban, and the first counts as earlier.
        let mut second = rec("203.0.113.5", "sshd", Some(700));
        second.matches = vec!["sshd[2]: Failed password from 203.0.113.5 port 2".into()];
        s.put_ban(&second, 101).unwrap();
        assert_eq!(s.ban_count_since(&t, Some("sshd"), 0).unwrap(), 3);
        let key = offence_key(&second.matches);
        assert_eq!(
            s.earlier_ban_count(&t, Some("sshd"), 0, "sshd", 101, &key)
                .unwrap(),
            2
        );
        // Its replay is still that one offence.
        s.put_ban(&second, 101).unwrap();
        assert_eq!(s.ban_count_since(&t, Some("sshd"), 0).unwrap(), 3);
    }

    #[test]
    fn bans_survive_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = BanStore::open(dir.path()).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            s.put_ban(&rec("203.0.113.1", "sshd", Some(200)), 100)
                .unwrap();
            s.put_ban(&rec("203.0.113.1", "web", None), 100).unwrap();
            s.put_ban(&rec("2001:db8::/64", "sshd", Some(50)), 90)
                .unwrap();
        }
        let mut s = BanStore::open(dir.path()).unwrap();
        let mut bans = s.load_bans().unwrap();
        bans.sort_by(|a, b| (a.target, &a.jail).cmp(&(b.target, &b.jail)));
        assert_eq!(bans.len(), 3);
        assert_eq!(bans[0], rec("203.0.113.1", "sshd", Some(200)));
        // The restore path streams the same rows, without the matched lines.
        let mut streamed = Vec::new();
        assert_eq!(s.for_each_ban(|r| streamed.push(r)).unwrap(), 3);
        streamed.sort_by(|a, b| (a.target, &a.jail).cmp(&(b.target, &b.jail)));
        let without_matches: Vec<BanRecord> = bans
            .iter()
            .map(|r| BanRecord {
                matches: Vec::new(),
                ..r.clone()
            })
            .collect();
        assert_eq!(streamed, without_matches);
        assert_eq!(s.delete_expired(100).unwrap(), 1);
        assert_eq!(
            s.delete_ban(&"203.0.113.1".parse().unwrap(), Some("web"))
                .unwrap(),
            1
        );
        assert_eq!(s.load_bans().unwrap().len(), 1);
        // History is kept for escalation even after bans end.
        assert_eq!(
            s.ban_count_since(&"203.0.113.1".parse().unwrap(), None, 0)
                .unwrap(),
            2
        );
        assert_eq!(
            s.ban_count_since(&"203.0.113.1".parse().unwrap(), Some("web"), 0)
                .unwrap(),
            1
        );
        assert_eq!(
            s.ban_count_since(&"203.0.113.1".parse().unwrap(), None, 101)
                .unwrap(),
            0
        );
    }

    #[test]
    fn batched_bans_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = BanStore::open(dir.path()).unwrap();
        let other = BanStore::open(dir.path()).unwrap();
        s.arm_batch();
        s.put_ban(&rec("203.0.113.1", "sshd", Some(200)), 100)
            .unwrap();
        s.put_ban(&rec("203.0.113.2", "sshd", Some(200)), 100)
            .unwrap();
        // This connection reads its own batch (escalation counts need it)...
        let t1: Target = "203.0.113.1".parse().unwrap();
        assert_eq!(s.ban_count_since(&t1, None, 0).unwrap(), 1);
        // ... others see nothing before the commit.
        assert!(other.load_bans().unwrap().is_empty());
        s.commit_batch().unwrap();
        assert_eq!(other.load_bans().unwrap().len(), 2);
        // A batch without writes commits nothing; one never committed is lost.
        s.arm_batch();
        s.commit_batch().unwrap();
        s.arm_batch();
        s.put_ban(&rec("203.0.113.3", "sshd", Some(200)), 100)
            .unwrap();
        drop(s);
        assert_eq!(other.load_bans().unwrap().len(), 2);
        // Outside a batch every put commits at once, as before.
        let mut s = BanStore::open(dir.path()).unwrap();
        s.put_ban(&rec("203.0.113.4", "sshd", Some(200)), 100)
            .unwrap();
        assert_eq!(other.load_bans().unwrap().len(), 3);
    }

    #[test]
    fn positions_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = BanStore::open(dir.path()).unwrap();
        assert_eq!(s.position("/var/log/auth.log").unwrap(), None);
        s.save_position("/var/log/auth.log", 1, 2, 3).unwrap();
        s.save_position("/var/log/auth.log", 1, 2, 30).unwrap();
        assert_eq!(s.position("/var/log/auth.log").unwrap(), Some((1, 2, 30)));
        s.save_position("other:/x", 1, 2, 3).unwrap();
        assert_eq!(
            s.positions_with_prefix("/var/").unwrap(),
            vec![("/var/log/auth.log".to_string(), 1, 2, 30)]
        );
        assert_eq!(s.cursor("journal:sshd").unwrap(), None);
        s.save_cursor("journal:sshd", "s=abc").unwrap();
        assert_eq!(s.cursor("journal:sshd").unwrap().as_deref(), Some("s=abc"));
    }

    #[test]
    fn newer_schema_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = BanStore::open(dir.path()).unwrap();
            s.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = BanStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
