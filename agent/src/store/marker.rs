//! The restore marker: written at a clean stop, it says "the pinned ban
//! maps held exactly the stored bans (plus `extra`) when this agent
//! stopped", so that the next agent can skip reading a million kernel
//! entries back. It is only believed when nothing changed meanwhile:
//!
//! - it is removed when read at start (and written only at a clean stop),
//!   so a crash or `kill -9` leaves none;
//! - the database file's identity, size, mtime and ctime, and an empty
//!   write-ahead log, taken after the store closed: any write by any
//!   process (`xban` offline, `sqlite3`) changes them;
//! - the boot (`boot_id`): map ids start again after a reboot;
//! - `maps`: the enforcer's fingerprint of its maps (ids, entry counts,
//!   checksums of the fast tables), compared by the enforcer at load;
//! - `program`: the enforcer's mark of its loaded XDP program, which the
//!   next load adopts instead of having the kernel verify it again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::addr::Target;

/// Name of the marker file inside the state directory.
pub(crate) const MARKER_FILE: &str = "restore-marker.json";

/// The database file as the stopping agent left it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DbFingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    /// Bytes in the write-ahead log (0: none, as a closed store leaves it).
    wal: u64,
}

impl DbFingerprint {
    /// The database of `state_dir` now (`None`: no database file).
    pub(crate) fn of(state_dir: &Path) -> Option<DbFingerprint> {
        let db = state_dir.join(crate::sys::paths::STATE_DB);
        let m = std::fs::metadata(&db).ok()?;
        let wal = std::fs::metadata(wal_path(&db)).map_or(0, |w| w.len());
        Some(DbFingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            wal,
        })
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// This boot's id: pinned maps and their ids do not outlive it.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What a clean stop records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RestoreMarker {
    pub(crate) boot_id: String,
    pub(crate) db: DbFingerprint,
    /// The enforcer's fingerprint of its maps at stop.
    pub(crate) maps: Vec<u64>,
    /// Kernel entries no stored ban accounts for (geo bans, which live in
    /// the book only), as text.
    pub(crate) extra: Vec<String>,
    /// The enforcer's mark of its program (empty: none; a marker written
    /// before this field existed has none).
    #[serde(default)]
    pub(crate) program: Vec<u64>,
}

/// A marker that held at start: the maps' part is still to be checked
/// by the enforcer against the maps themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WarmStart {
    pub(crate) maps: Vec<u64>,
    pub(crate) extra: Vec<Target>,
    pub(crate) program: Vec<u64>,
}

/// Why a marker was not believed (for the log).
pub(crate) type Refusal = &'static str;

/// Reads and removes the marker of `state_dir`; `Ok` when it matches this
/// boot and the database as it is now (call before opening the store).
pub(crate) fn take(state_dir: &Path) -> Result<WarmStart, Refusal> {
    let path = state_dir.join(MARKER_FILE);
    let text = std::fs::read(&path);
    // Removed before anything else: from here on, only a clean stop
    // writes one again.
    let _ = std::fs::remove_file(&path);
    let text = text.map_err(|_| "no marker (first start, or the last stop was not clean)")?;
    let m: RestoreMarker = serde_json::from_slice(&text).map_err(|_| "unreadable marker")?;
    if m.boot_id.is_empty() || m.boot_id != boot_id() {
        return Err("the machine rebooted since");
    }
    if Some(&m.db) != DbFingerprint::of(state_dir).as_ref() {
        return Err("the ban database changed since the last stop");
    }
    let extra = m
        .extra
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<Target>, _>>()
        .map_err(|_| "unreadable marker")?;
    Ok(WarmStart {
        maps: m.maps,
        extra,
        program: m.program,
    })
}

/// Writes the marker after a clean stop, once the store is closed.
pub(crate) fn write(
    state_dir: &Path,
    maps: Vec<u64>,
    extra: &[Target],
    program: Vec<u64>,
) -> std::io::Result<()> {
    let Some(db) = DbFingerprint::of(state_dir) else {
        return Ok(());
    };
    let m = RestoreMarker {
        boot_id: boot_id(),
        db,
        maps,
        extra: extra.iter().map(|t| t.to_string()).collect(),
        program,
    };
    let path = state_dir.join(MARKER_FILE);
    let tmp = state_dir.join(format!("{MARKER_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&m).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, bytes: &[u8]) {
        std::fs::write(dir.join(crate::sys::paths::STATE_DB), bytes).unwrap();
    }

    #[test]
    fn a_marker_holds_once_and_only_for_the_database_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take(dir.path()).is_err(), "none yet");
        db(dir.path(), b"one");
        let extra: Vec<Target> = vec!["198.51.100.0/24".parse().unwrap()];
        write(dir.path(), vec![1, 2, 3], &extra, vec![7, 8]).unwrap();
        let w = take(dir.path()).expect("unchanged database");
        assert_eq!(w.maps, vec![1, 2, 3]);
        assert_eq!(w.extra, extra);
        assert_eq!(w.program, vec![7, 8]);
        // Read once: a second start (as after a crash) finds none.
        assert_eq!(
            take(dir.path()),
            Err("no marker (first start, or the last stop was not clean)")
        );

        // Any write to the database while stopped refuses it.
        write(dir.path(), vec![1], &[], Vec::new()).unwrap();
        db(dir.path(), b"two!");
        assert_eq!(
            take(dir.path()),
            Err("the ban database changed since the last stop")
        );
        // So does a write-ahead log left with frames in it.
        write(dir.path(), vec![1], &[], Vec::new()).unwrap();
        std::fs::write(dir.path().join("xban.sqlite3-wal"), b"frames").unwrap();
        assert!(take(dir.path()).is_err());
        std::fs::remove_file(dir.path().join("xban.sqlite3-wal")).unwrap();
        // And another boot.
        write(dir.path(), vec![1], &[], Vec::new()).unwrap();
        let path = dir.path().join(MARKER_FILE);
        let mut m: RestoreMarker = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m.boot_id = "another-boot".into();
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(take(dir.path()), Err("the machine rebooted since"));
    }
}
