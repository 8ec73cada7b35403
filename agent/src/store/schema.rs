//! The schema: migrations in order, `PRAGMA user_version` counting those
//! that ran. A database from a newer xban is refused, never downgraded.

use super::{BanStore, StoreError};

/// Migrations, in order. `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 4: ban_history_once begins with the target too, so it serves every
    // lookup by target; the second index only cost each ban another
    // random page write.
    "DROP INDEX IF EXISTS ban_history_target;",
    // 5: rows without an offence key (from before migration 3) stand for
    // any offence of their time: marked '*', with a partial index, so a new
    // history row looks for one only while such rows are left (see
    // `write_bans`); other rows rely on the unique index alone.
    "UPDATE ban_history SET offence = '*' WHERE offence = '';
    CREATE INDEX ban_history_legacy ON ban_history (offence) WHERE offence = '*';",
];

impl BanStore {
    pub(super) fn migrate(&mut self) -> Result<(), StoreError> {
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
}
