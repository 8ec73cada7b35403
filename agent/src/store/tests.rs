use super::checkpoint::CHECKPOINT_EVERY;
use super::schema::MIGRATIONS;
use super::*;
use crate::addr::Target;
use crate::ban::{BanClass, BanRecord};

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
    // The restore path reads the same rows, without the matched lines,
    // into the book's structures: here, or ahead on a thread of its own.
    let without_matches: Vec<BanRecord> = bans
        .iter()
        .map(|r| BanRecord {
            matches: Vec::new(),
            ..r.clone()
        })
        .collect();
    let book = |built: crate::ban::BuiltBook| {
        let mut b = crate::ban::BanBook::default();
        assert_eq!(b.install(built, 0), 3);
        b.iter().collect::<Vec<_>>()
    };
    assert_eq!(book(s.read_book().unwrap()), without_matches);
    s.read_bans_ahead(None);
    assert!(s.ahead.is_some());
    assert_eq!(book(s.read_book().unwrap()), without_matches);
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

/// Migration 5 marks rows without an offence key '*' (any offence of their
/// time); a history without such rows keeps a replay out through its
/// unique index alone, in one batch as across calls.
#[test]
fn a_fresh_history_counts_each_offence_once_without_legacy_rows() {
    let dir = tempfile::tempdir().unwrap();
    let t: Target = "203.0.113.6".parse().unwrap();
    let mut s = BanStore::open(dir.path()).unwrap();
    let legacy = |s: &BanStore| -> i64 {
        s.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM ban_history WHERE offence IN ('', '*')",
                [],
                |r| r.get(0),
            )
        })
        .unwrap()
    };
    let a = rec("203.0.113.6", "sshd", Some(700));
    let mut b = a.clone();
    b.matches = vec!["sshd[9]: another line from 203.0.113.6".into()];
    // A replay inside one batch, another offence in the same second,
    // another second.
    s.put_bans_at([(&a, 100), (&a, 100), (&b, 100), (&a, 101)])
        .unwrap();
    assert_eq!(legacy(&s), 0);
    assert_eq!(s.ban_count_since(&t, None, 0).unwrap(), 3);
    // Replayed again, in an armed batch and alone: nothing new.
    s.arm_batch();
    s.put_bans_at([(&b, 100), (&a, 101)]).unwrap();
    s.commit_batch().unwrap();
    s.put_ban(&a, 100).unwrap();
    assert_eq!(s.ban_count_since(&t, None, 0).unwrap(), 3);
    // The ban being decided leaves itself out, not the other offence.
    let key = offence_key(&b.matches);
    assert_eq!(
        s.earlier_ban_count(&t, Some("sshd"), 0, "sshd", 100, &key)
            .unwrap(),
        2
    );
}

/// A database from before migration 3 (history rows without an offence):
/// after the upgrade its rows are marked '*' and stand for any offence of
/// their time, in a batch too.
#[test]
fn legacy_history_rows_are_marked_and_stand_for_any_offence_of_their_time() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("xban.sqlite3")).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.execute_batch("PRAGMA user_version = 2").unwrap();
        conn.execute(
            "INSERT INTO ban_history (target, jail, banned_at) VALUES ('203.0.113.7', 'sshd', 100)",
            [],
        )
        .unwrap();
    }
    let t: Target = "203.0.113.7".parse().unwrap();
    let mut s = BanStore::open(dir.path()).unwrap();
    let marked: i64 = s
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM ban_history WHERE offence = '*'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(marked, 1);
    let a = rec("203.0.113.7", "sshd", Some(700));
    let mut b = a.clone();
    b.matches = vec!["sshd[9]: another line from 203.0.113.7".into()];
    // Both lines at the marked row's time are that one ban; another
    // second is another.
    s.put_bans_at([(&a, 100), (&b, 100), (&a, 101)]).unwrap();
    assert_eq!(s.ban_count_since(&t, None, 0).unwrap(), 2);
    let key = offence_key(&a.matches);
    assert_eq!(
        s.earlier_ban_count(&t, None, 0, "sshd", 100, &key).unwrap(),
        1,
        "the marked row is this very ban; the one at 101 is earlier-counted"
    );
}
