//! Where each log source got to: file offsets (with the file's identity)
//! and journal cursors, so a restart resumes where it stopped.

use rusqlite::{params, OptionalExtension};

use super::{BanStore, StoreError};

impl BanStore {
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
