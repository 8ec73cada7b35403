//! The snapshot is used only when it is the database's rows, whole: a
//! stale, torn, damaged or missing one falls back to the rows and loses
//! nothing.

use super::*;
use crate::ban::{BanBook, BanRecord};
use crate::store::BanStore;

fn rec(target: &str, jail: &str, class: BanClass, expires: Option<i64>) -> BanRecord {
    BanRecord {
        target: target.parse().unwrap(),
        jail: jail.into(),
        class,
        banned_at: 100,
        expires_at: expires,
        failures: 3,
        matches: vec!["a matched line".into()],
    }
}

fn sample() -> Vec<BanRecord> {
    vec![
        rec("198.51.100.7", "sshd", BanClass::Drop, Some(5000)),
        rec("198.51.100.7", "web", BanClass::Tarpit, None),
        rec("203.0.113.0/24", "manual", BanClass::Drop, Some(7000)),
        rec("2001:db8::1", "sshd", BanClass::Tarpit, Some(6000)),
        rec("2001:db8:1::/48", "fleet@b", BanClass::Drop, None),
    ]
}

/// A state directory whose (closed) database holds `recs`.
fn stored(recs: &[BanRecord]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut s = BanStore::open(dir.path()).unwrap();
    s.put_bans(recs, Some(100)).unwrap();
    drop(s);
    dir
}

/// The book as the restore builds it: from the snapshot when one is
/// given and whole, else from the database.
fn book(dir: &Path, snapshot: Option<Snapshot>) -> Vec<BanRecord> {
    let mut s = BanStore::open(dir).unwrap();
    s.read_bans_ahead(snapshot);
    let mut b = BanBook::default();
    b.install(s.read_book().unwrap(), 0);
    b.iter().collect()
}

fn without_matches(recs: &[BanRecord]) -> Vec<BanRecord> {
    let mut b = BanBook::default();
    b.add_all(recs.iter().cloned());
    b.iter().collect()
}

fn snapshot_rows(snapshot: Snapshot) -> Result<Vec<BanRecord>, Refusal> {
    let mut rows = BookRows::default();
    snapshot.read_into(&mut rows)?;
    let mut b = BanBook::default();
    b.install(rows.build(), 0);
    Ok(b.iter().collect())
}

#[test]
fn a_clean_stops_snapshot_is_the_stored_bans_taken_once() {
    let recs = sample();
    let dir = stored(&recs);
    write(dir.path()).unwrap();
    // Reading the closed database for the snapshot changes nothing the
    // restore marker checks.
    let fp = DbFingerprint::of(dir.path()).unwrap();
    let snap = take(dir.path()).expect("written after the last write");
    assert_eq!(snap.rows, recs.len() as u64);
    assert_eq!(snapshot_rows(snap).unwrap(), without_matches(&recs));
    assert_eq!(DbFingerprint::of(dir.path()), Some(fp));
    // Taken once: a second start (as after a crash) finds none.
    assert_eq!(
        take(dir.path()).err(),
        Some("no snapshot (first start, or the last stop was not clean)")
    );
    // Through the store's reading thread: the same book as from the rows.
    write(dir.path()).unwrap();
    let snap = take(dir.path()).unwrap();
    assert_eq!(book(dir.path(), Some(snap)), book(dir.path(), None));
    assert_eq!(book(dir.path(), None), without_matches(&recs));
}

#[test]
fn an_empty_database_has_an_empty_snapshot() {
    let dir = stored(&[]);
    write(dir.path()).unwrap();
    assert_eq!(snapshot_rows(take(dir.path()).unwrap()).unwrap(), vec![]);
}

#[test]
fn a_stale_snapshot_is_refused_and_the_rows_are_read() {
    let recs = sample();
    let dir = stored(&recs);
    write(dir.path()).unwrap();
    // A ban written after the stop (another start that crashed, `xban`
    // offline, sqlite3): the snapshot no longer names this database.
    let late = rec("192.0.2.1", "sshd", BanClass::Drop, None);
    {
        let mut s = BanStore::open(dir.path()).unwrap();
        s.put_ban(&late, 200).unwrap();
    }
    assert_eq!(
        take(dir.path()).err(),
        Some("the ban database changed since the snapshot was written")
    );
    let mut all = recs.clone();
    all.push(late);
    assert_eq!(book(dir.path(), None), without_matches(&all));
}

#[test]
fn a_snapshot_of_another_schema_is_refused() {
    let dir = stored(&sample());
    write(dir.path()).unwrap();
    let path = dir.path().join(SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    let hlen = u32::from_le_bytes(bytes[len - 12..len - 8].try_into().unwrap()) as usize;
    let start = len - 12 - hlen;
    let mut h: Header = serde_json::from_slice(&bytes[start..len - 12]).unwrap();
    h.schema += 1;
    let header = serde_json::to_vec(&h).unwrap();
    let tail = bytes[len - 8..].to_vec();
    bytes.truncate(start);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&tail);
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(
        take(dir.path()).err(),
        Some("written by another schema version")
    );
}

#[test]
fn a_torn_or_damaged_snapshot_falls_back_to_the_rows() {
    let recs = sample();
    let dir = stored(&recs);
    let path = dir.path().join(SNAPSHOT_FILE);
    write(dir.path()).unwrap();
    let whole = std::fs::read(&path).unwrap();

    // Cut anywhere: refused at take.
    for cut in [0, 5, 8, 8 + ROW, whole.len() - 13, whole.len() - 1] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        assert!(take(dir.path()).is_err(), "cut at {cut}");
        assert!(!path.exists(), "removed when taken");
    }

    // A flipped bit in a row: taken (the trailer is whole), then refused
    // by the checksum; the restore reads the database instead.
    let mut bad = whole.clone();
    bad[8 + ROW + 30] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(
        snapshot_rows(take(dir.path()).unwrap()).err(),
        Some("damaged snapshot (checksum)")
    );
    std::fs::write(&path, &bad).unwrap();
    let snap = take(dir.path()).unwrap();
    assert_eq!(book(dir.path(), Some(snap)), without_matches(&recs));

    // A row no writer makes (its family byte), with a checksum to match.
    let mut odd = whole.clone();
    odd[8] = 5;
    let rows = &odd[8..8 + recs.len() * ROW];
    let mut sum = Checksum::new();
    sum.add(rows);
    let n = odd.len();
    odd[n - 8..].copy_from_slice(&sum.0.to_le_bytes());
    std::fs::write(&path, &odd).unwrap();
    assert_eq!(
        snapshot_rows(take(dir.path()).unwrap()).err(),
        Some("damaged snapshot")
    );
    std::fs::write(&path, &odd).unwrap();
    let snap = take(dir.path()).unwrap();
    assert_eq!(book(dir.path(), Some(snap)), without_matches(&recs));

    // Not ours at all.
    std::fs::write(&path, b"something else entirely, long enough").unwrap();
    assert_eq!(take(dir.path()).err(), Some("not a snapshot of this xban"));
}
