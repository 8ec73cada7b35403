//! Ban rows (`bans`) and the ban history escalation counts (`ban_history`).

use rusqlite::{params, Connection};

use super::{offence_key, BanStore, Batch, StoreError};
use crate::addr::Target;
use crate::ban::{BanClass, BanRecord, BookRows, BuiltBook, UnixSecs};

/// Stored bans being read by a thread of their own, into the book's
/// structures (see [`BanStore::read_bans_ahead`]).
pub(super) struct Ahead {
    thread: std::thread::JoinHandle<Result<BuiltBook, StoreError>>,
}

/// Every ban of `conn`, made into the book's structures.
fn read_book(conn: &Connection, path: &std::path::Path) -> Result<BuiltBook, StoreError> {
    let mut rows = BookRows::default();
    super::rows::for_each_row(conn, path, |target, jail, class, at, exp, failures| {
        rows.push(target, jail, class, at, exp, failures);
        true
    })?;
    Ok(rows.build())
}

/// The statements of [`BanStore::put_bans`], on a transaction or on the
/// connection inside an open batch. With a history time, each ban goes
/// into the history too. Statements are prepared once for the whole batch.
pub(super) fn write_bans<'a>(
    conn: &Connection,
    recs: impl IntoIterator<Item = (&'a BanRecord, Option<UnixSecs>)>,
) -> rusqlite::Result<()> {
    let mut put = conn.prepare_cached(
        "INSERT OR REPLACE INTO bans (target, jail, class, banned_at, expires_at, failures, matches)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    // The unique index keeps a replay (same target, jail, time and
    // offence) out of the history, without a lookup first.
    let mut hist = conn.prepare_cached(
        "INSERT OR IGNORE INTO ban_history (target, jail, banned_at, offence) VALUES (?1, ?2, ?3, ?4)",
    )?;
    // Rows from before migration 3 have no offence key (marked '*' by
    // migration 5): such a row stands for any offence of its time, so a
    // replay across the upgrade is not counted twice. Only while some are
    // left (a partial index answers) does each ban look for one.
    let legacy: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM ban_history WHERE offence = '*')")?
        .query_row([], |r| r.get(0))?;
    let mut seen = match legacy {
        true => Some(conn.prepare_cached(
            "SELECT 1 FROM ban_history
             WHERE target = ?1 AND jail = ?2 AND banned_at = ?3 AND offence = '*'",
        )?),
        false => None,
    };
    for (rec, event_at) in recs {
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
        let Some(at) = event_at else { continue };
        if let Some(seen) = seen.as_mut() {
            if seen.exists(params![target, rec.jail, at])? {
                continue;
            }
        }
        hist.execute(params![target, rec.jail, at, offence_key(&rec.matches)])?;
    }
    Ok(())
}

impl BanStore {
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
                write_bans(&tx, recs.iter().map(|r| (r, event_at))).map_err(wrap)?;
                tx.commit().map_err(wrap)
            }
            Batch::Armed | Batch::Open => {
                if self.batch == Batch::Armed {
                    self.conn.execute_batch("BEGIN IMMEDIATE").map_err(wrap)?;
                    self.batch = Batch::Open;
                }
                // A savepoint keeps this call all-or-nothing within the batch.
                let sp = self.conn.savepoint().map_err(wrap)?;
                write_bans(&sp, recs.iter().map(|r| (r, event_at))).map_err(wrap)?;
                sp.commit().map_err(wrap)
            }
        }
    }

    /// Bans, each with its own history time: in the armed batch's
    /// transaction (a failure leaves it for the caller to abort: no
    /// savepoint per ban), else in one transaction of their own.
    pub fn put_bans_at<'a>(
        &mut self,
        recs: impl IntoIterator<Item = (&'a BanRecord, UnixSecs)>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut recs = recs.into_iter().map(|(r, at)| (r, Some(at))).peekable();
        if recs.peek().is_none() {
            return Ok(());
        }
        match self.batch {
            Batch::Off => {
                let tx = self.conn.transaction().map_err(wrap)?;
                write_bans(&tx, recs).map_err(wrap)?;
                tx.commit().map_err(wrap)
            }
            Batch::Armed | Batch::Open => {
                if self.batch == Batch::Armed {
                    self.conn.execute_batch("BEGIN IMMEDIATE").map_err(wrap)?;
                    self.batch = Batch::Open;
                }
                write_bans(&self.conn, recs).map_err(wrap)
            }
        }
    }

    /// Remove these jails' bans, in one transaction.
    pub fn delete_bans<'a>(
        &mut self,
        bans: impl IntoIterator<Item = (&'a Target, &'a str)>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM bans WHERE target = ?1 AND jail = ?2")
                .map_err(wrap)?;
            for (t, j) in bans {
                del.execute(params![t.to_string(), j]).map_err(wrap)?;
            }
        }
        tx.commit().map_err(wrap)
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

    /// Every stored ban without its matched lines (they stay in the
    /// database: the agent never shows them, and a million bans' worth is
    /// gigabytes), made into the book's structures. After
    /// [`read_bans_ahead`](Self::read_bans_ahead), from that thread (the
    /// database as it was then).
    pub fn read_book(&mut self) -> Result<BuiltBook, StoreError> {
        if let Some(ahead) = self.ahead.take() {
            match ahead.thread.join() {
                Ok(built) => return built,
                Err(_) => tracing::warn!(
                    "the thread reading the stored bans ahead failed; reading them again"
                ),
            }
        }
        read_book(&self.conn, &self.path)
    }

    /// Starts reading every stored ban on a thread with its own connection,
    /// and building the book's structures of them there, so that at start
    /// all of it overlaps the XDP load; the next
    /// [`read_book`](Self::read_book) takes the result. It is the database
    /// as the thread's read began: call it before any ban is written
    /// (start-up writes none before the restore).
    /// With `snapshot` (a clean stop's copy of these rows, see
    /// `store::snapshot`), the rows come from it, or from the database
    /// when it turns out torn or damaged.
    pub(crate) fn read_bans_ahead(&mut self, snapshot: Option<super::snapshot::Snapshot>) {
        if self.path.as_os_str() == ":memory:" {
            return;
        }
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("xban-read-bans".into())
            .spawn(move || {
                if let Some(snapshot) = snapshot {
                    let mut rows = BookRows::default();
                    match snapshot.read_into(&mut rows) {
                        Ok(()) => {
                            tracing::info!("bans read from the snapshot of the last clean stop");
                            return Ok(rows.build());
                        }
                        Err(why) => tracing::warn!(
                            "bans snapshot not used: {why}; the ban database is read instead"
                        ),
                    }
                }
                let conn = Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|source| StoreError::Sqlite {
                    path: path.clone(),
                    source,
                })?;
                read_book(&conn, &path)
            });
        if let Ok(thread) = spawned {
            self.ahead = Some(Ahead { thread });
        }
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
                    "SELECT COUNT(*) FROM ban_history WHERE target = ?1 AND jail = ?2 AND banned_at >= ?3 AND NOT (jail = ?4 AND banned_at = ?5 AND offence IN ('', '*', ?6))",
                )
                .and_then(|mut s| {
                    s.query_row(params![t, j, since, jail, event_at, offence], |r| r.get(0))
                }),
            None => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM ban_history WHERE target = ?1 AND banned_at >= ?2 AND NOT (jail = ?3 AND banned_at = ?4 AND offence IN ('', '*', ?5))",
                )
                .and_then(|mut s| {
                    s.query_row(params![t, since, jail, event_at, offence], |r| r.get(0))
                }),
        }
        .map_err(self.wrap())
    }

    /// Opens the armed batch's transaction now, so that the reads before
    /// its writes share it (one read transaction instead of one each).
    pub fn open_batch(&mut self) -> Result<(), StoreError> {
        if self.batch == Batch::Armed {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(self.wrap())?;
            self.batch = Batch::Open;
        }
        Ok(())
    }

    /// The history times behind [`earlier_ban_count`](Self::earlier_ban_count),
    /// in one query: escalation counts them per window itself.
    pub fn earlier_ban_times(
        &self,
        target: &Target,
        only_jail: Option<&str>,
        jail: &str,
        event_at: UnixSecs,
        offence: &str,
    ) -> Result<Vec<UnixSecs>, StoreError> {
        let t = target.to_string();
        let mut out = Vec::new();
        let mut collect = |mut rows: rusqlite::Rows<'_>| -> rusqlite::Result<()> {
            while let Some(r) = rows.next()? {
                out.push(r.get(0)?);
            }
            Ok(())
        };
        match only_jail {
            Some(j) => self
                .conn
                .prepare_cached(
                    "SELECT banned_at FROM ban_history WHERE target = ?1 AND jail = ?2 AND NOT (jail = ?3 AND banned_at = ?4 AND offence IN ('', '*', ?5))",
                )
                .and_then(|mut s| collect(s.query(params![t, j, jail, event_at, offence])?)),
            None => self
                .conn
                .prepare_cached(
                    "SELECT banned_at FROM ban_history WHERE target = ?1 AND NOT (jail = ?2 AND banned_at = ?3 AND offence IN ('', '*', ?4))",
                )
                .and_then(|mut s| collect(s.query(params![t, jail, event_at, offence])?)),
        }
        .map_err(self.wrap())?;
        Ok(out)
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
}
