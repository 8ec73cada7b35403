//! The fleet's tables in the ban database: the outbox (messages not yet
//! acknowledged by the server, kept across restarts and outages) and the ids
//! of remote messages already applied (so a redelivery is never applied
//! twice). Created on first use; other tables are never touched.

use rusqlite::{params, OptionalExtension};

use crate::ban::UnixSecs;
use crate::store::{BanStore, StoreError};

/// A message waiting for the server's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: String,
    pub subject: String,
    pub payload: Vec<u8>,
}

pub fn ensure_tables(store: &mut BanStore) -> Result<(), StoreError> {
    store.write(|c| {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS fleet_outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                subject TEXT NOT NULL,
                payload BLOB NOT NULL,
                queued_at INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS fleet_applied (
                id TEXT PRIMARY KEY,
                keep_until INTEGER
            );
            CREATE INDEX IF NOT EXISTS fleet_applied_keep ON fleet_applied (keep_until);",
        )
    })
}

pub fn outbox_push(
    store: &mut BanStore,
    msgs: &[Outgoing],
    now: UnixSecs,
) -> Result<(), StoreError> {
    store.write(|c| {
        let mut put = c.prepare_cached(
            "INSERT OR IGNORE INTO fleet_outbox (id, subject, payload, queued_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for m in msgs {
            put.execute(params![m.id, m.subject, m.payload, now])?;
        }
        Ok(())
    })
}

/// Everything still unacknowledged, oldest first.
pub fn outbox_load(store: &BanStore) -> Result<Vec<Outgoing>, StoreError> {
    store.read(|c| {
        let mut stmt = c.prepare("SELECT id, subject, payload FROM fleet_outbox ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Outgoing {
                id: r.get(0)?,
                subject: r.get(1)?,
                payload: r.get(2)?,
            })
        })?;
        rows.collect()
    })
}

pub fn outbox_remove(store: &mut BanStore, ids: &[String]) -> Result<(), StoreError> {
    store.write(|c| {
        let mut del = c.prepare_cached("DELETE FROM fleet_outbox WHERE id = ?1")?;
        for id in ids {
            del.execute(params![id])?;
        }
        Ok(())
    })
}

pub fn outbox_len(store: &BanStore) -> Result<u64, StoreError> {
    store.read(|c| c.query_row("SELECT COUNT(*) FROM fleet_outbox", [], |r| r.get(0)))
}

pub fn was_applied(store: &BanStore, id: &str) -> Result<bool, StoreError> {
    store.read(|c| {
        c.prepare_cached("SELECT 1 FROM fleet_applied WHERE id = ?1")?
            .query_row(params![id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
    })
}

/// Remember an applied message until `keep_until` (`None`: for ever, as
/// long as the permanent ban it carried).
pub fn mark_applied(
    store: &mut BanStore,
    id: &str,
    keep_until: Option<UnixSecs>,
) -> Result<(), StoreError> {
    store.write(|c| {
        c.prepare_cached("INSERT OR REPLACE INTO fleet_applied (id, keep_until) VALUES (?1, ?2)")?
            .execute(params![id, keep_until])
            .map(drop)
    })
}

/// Forget ids whose messages the stream no longer holds.
pub fn purge_applied(store: &mut BanStore, now: UnixSecs) -> Result<usize, StoreError> {
    store.write(|c| {
        c.execute(
            "DELETE FROM fleet_applied WHERE keep_until IS NOT NULL AND keep_until < ?1",
            params![now],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_survives_reopen_in_order_and_applied_ids_expire() {
        let dir = tempfile::tempdir().unwrap();
        let msg = |i: u32| Outgoing {
            id: format!("a-{i}"),
            subject: "xban.bans.a".into(),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
        };
        {
            let mut s = BanStore::open(dir.path()).unwrap();
            ensure_tables(&mut s).unwrap();
            outbox_push(&mut s, &[msg(1), msg(2), msg(3)], 10).unwrap();
            // A retry of the same id is not queued twice.
            outbox_push(&mut s, &[msg(2)], 11).unwrap();
            outbox_remove(&mut s, &["a-1".to_string()]).unwrap();
            mark_applied(&mut s, "b-1", Some(100)).unwrap();
            mark_applied(&mut s, "b-2", None).unwrap();
        }
        let mut s = BanStore::open(dir.path()).unwrap();
        ensure_tables(&mut s).unwrap();
        assert_eq!(outbox_load(&s).unwrap(), vec![msg(2), msg(3)]);
        assert_eq!(outbox_len(&s).unwrap(), 2);
        assert!(was_applied(&s, "b-1").unwrap());
        assert!(!was_applied(&s, "b-3").unwrap());
        assert_eq!(purge_applied(&mut s, 101).unwrap(), 1);
        assert!(!was_applied(&s, "b-1").unwrap());
        assert!(was_applied(&s, "b-2").unwrap());
        // Inside a ban batch, the writes join it and vanish with it.
        s.arm_batch();
        outbox_push(&mut s, &[msg(9)], 12).unwrap();
        drop(s);
        let s = BanStore::open(dir.path()).unwrap();
        assert_eq!(outbox_len(&s).unwrap(), 2);
    }
}
