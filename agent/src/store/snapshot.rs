//! The bans snapshot: at a clean stop, once the store is closed, the
//! `bans` rows (without their matched lines) are written beside the
//! database as fixed-size binary records, so that the next start reads them
//! in one pass instead of a million SQLite rows and address texts.
//!
//! Only a faithful copy is ever used, else the rows are read as always:
//!
//! - it is removed when taken at start (only a clean stop writes one), so a
//!   crash or `kill -9` after that start leaves none;
//! - it names the database file as it was when written (the restore
//!   marker's [`DbFingerprint`]: identity, size, times, an empty
//!   write-ahead log), taken before and after the rows were read: any
//!   write since, by any process, refuses it;
//! - its length must be exactly its header's row count, and a checksum
//!   covers every record: a torn or damaged file is refused (the checksum
//!   is checked while reading, and a mismatch drops what was read).
//!
//! Layout: `MAGIC`, the rows ([`ROW`] bytes each), then the trailer: the
//! header (JSON: the database fingerprint, the schema version, the row
//! count, the jail names), the header's length (u32 LE) and a checksum of
//! the rows (u64 LE).

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rusqlite::Connection;

use super::marker::DbFingerprint;
use super::StoreError;
use crate::addr::Target;
use crate::ban::{BanClass, BookRows, UnixSecs};

/// Name of the snapshot file inside the state directory.
pub(crate) const SNAPSHOT_FILE: &str = "bans-snapshot.bin";

const MAGIC: &[u8; 8] = b"XBANSNP1";

/// Bytes per row: family, prefix, class, has-expiry, jail index (u32),
/// address (16), banned_at (i64), expires_at (i64), failures (u32), zeros.
const ROW: usize = 48;

/// Rows read or written per buffer.
const ROWS_PER_BUF: usize = 4096;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Header {
    db: DbFingerprint,
    /// The writer's schema version: a start that would migrate the
    /// database does not take rows from before the migration.
    schema: u64,
    rows: u64,
    jails: Vec<String>,
}

/// A snapshot that matched the database at start; its rows are read by
/// [`Snapshot::read_into`] (on the store's reading thread).
pub(crate) struct Snapshot {
    file: BufReader<std::fs::File>,
    rows: u64,
    jails: Vec<String>,
    sum: u64,
}

/// Why a snapshot was not used (for the log).
pub(crate) type Refusal = &'static str;

/// Word-wise mixing checksum of the rows (a torn or damaged file, not an
/// adversary: the state directory is the agent's own).
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Checksum {
        Checksum(0x9e37_79b9_7f4a_7c15)
    }

    fn add(&mut self, bytes: &[u8]) {
        for w in bytes.chunks_exact(8) {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            self.0 = (self.0 ^ w)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(29);
        }
    }
}

fn encode(
    target: &Target,
    jail: u32,
    class: BanClass,
    banned_at: UnixSecs,
    expires_at: Option<UnixSecs>,
    failures: u32,
) -> [u8; ROW] {
    let mut r = [0u8; ROW];
    match target.addr() {
        IpAddr::V4(a) => {
            r[0] = 4;
            r[8..12].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            r[0] = 6;
            r[8..24].copy_from_slice(&a.octets());
        }
    }
    r[1] = target.prefix();
    r[2] = (class == BanClass::Tarpit) as u8;
    r[3] = expires_at.is_some() as u8;
    r[4..8].copy_from_slice(&jail.to_le_bytes());
    r[24..32].copy_from_slice(&banned_at.to_le_bytes());
    r[32..40].copy_from_slice(&expires_at.unwrap_or(0).to_le_bytes());
    r[40..44].copy_from_slice(&failures.to_le_bytes());
    r
}

/// One row into `rows`; `None` for a row no writer makes.
fn decode(r: &[u8], jails: &[String], rows: &mut BookRows) -> Option<()> {
    let word = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| i64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
    let ip = match r[0] {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&r[8..12]).ok()?)),
        6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&r[8..24]).ok()?)),
        _ => return None,
    };
    let target = Target::new(ip, r[1]).ok()?;
    let class = match r[2] {
        0 => BanClass::Drop,
        1 => BanClass::Tarpit,
        _ => return None,
    };
    let expires_at = match r[3] {
        0 => None,
        1 => Some(long(32)),
        _ => return None,
    };
    let jail = jails.get(word(4) as usize)?;
    rows.push(target, jail, class, long(24), expires_at, word(40));
    Some(())
}

/// Writes the snapshot of the (closed) database of `state_dir`: after a
/// clean stop, once the agent's connection is closed. Nothing is written
/// when the database changed while its rows were read.
pub(crate) fn write(state_dir: &Path) -> Result<(), StoreError> {
    let db_path = state_dir.join(crate::sys::paths::STATE_DB);
    let Some(before) = DbFingerprint::of(state_dir) else {
        return Ok(());
    };
    let path = state_dir.join(SNAPSHOT_FILE);
    let tmp = state_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let io = |source: std::io::Error| StoreError::Snapshot {
        path: tmp.clone(),
        source,
    };
    let mut jails: Vec<String> = Vec::new();
    let mut rows = 0u64;
    let mut sum = Checksum::new();
    let mut out =
        BufWriter::with_capacity(ROW * ROWS_PER_BUF, std::fs::File::create(&tmp).map_err(io)?);
    out.write_all(MAGIC).map_err(io)?;
    let conn = Connection::open_with_flags(
        &db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Sqlite {
        path: db_path.clone(),
        source,
    })?;
    let schema: u64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Sqlite {
            path: db_path.clone(),
            source,
        })?;
    let mut failed = None;
    super::rows::for_each_row(&conn, &db_path, |target, jail, class, at, exp, failures| {
        let id = match jails.iter().position(|j| j == jail) {
            Some(i) => i,
            None => {
                jails.push(jail.to_string());
                jails.len() - 1
            }
        };
        let r = encode(&target, id as u32, class, at, exp, failures);
        sum.add(&r);
        rows += 1;
        match out.write_all(&r) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    drop(conn);
    if let Some(e) = failed {
        return Err(io(e));
    }
    if DbFingerprint::of(state_dir).as_ref() != Some(&before) {
        // Written meanwhile: these rows may not be the database's.
        let _ = std::fs::remove_file(&tmp);
        return Ok(());
    }
    let header = serde_json::to_vec(&Header {
        db: before,
        schema,
        rows,
        jails,
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    out.write_all(&header).map_err(io)?;
    out.write_all(&(header.len() as u32).to_le_bytes())
        .map_err(io)?;
    out.write_all(&sum.0.to_le_bytes()).map_err(io)?;
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Takes (reads the trailer of, and removes) the snapshot of `state_dir`:
/// `Ok` when it matches the database as it is now and this build's schema,
/// its length its row count. Call before opening the store. The rows'
/// checksum is checked by [`Snapshot::read_into`].
pub(crate) fn take(state_dir: &Path) -> Result<Snapshot, Refusal> {
    let path = state_dir.join(SNAPSHOT_FILE);
    let file = std::fs::File::open(&path);
    // Removed before anything else: from here on, only a clean stop
    // writes one again. The open file stays readable.
    let _ = std::fs::remove_file(&path);
    let file = file.map_err(|_| "no snapshot (first start, or the last stop was not clean)")?;
    let len = file.metadata().map_err(|_| "unreadable snapshot")?.len();
    let mut file = BufReader::with_capacity(ROW * ROWS_PER_BUF, file);
    let torn = |_| "torn snapshot";
    let trailer = (MAGIC.len() + 4 + 8) as u64;
    if len < trailer {
        return Err("torn snapshot");
    }
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).map_err(torn)?;
    if &magic != MAGIC {
        return Err("not a snapshot of this xban");
    }
    let mut tail = [0u8; 12];
    file.seek(SeekFrom::Start(len - 12)).map_err(torn)?;
    file.read_exact(&mut tail).map_err(torn)?;
    let hlen = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
    let sum = u64::from_le_bytes(tail[4..].try_into().expect("8 bytes"));
    let start = (len - 12).checked_sub(hlen).ok_or("torn snapshot")?;
    let mut header = vec![0u8; hlen as usize];
    file.seek(SeekFrom::Start(start)).map_err(torn)?;
    file.read_exact(&mut header).map_err(torn)?;
    let h: Header = serde_json::from_slice(&header).map_err(|_| "torn snapshot")?;
    let expected = h
        .rows
        .checked_mul(ROW as u64)
        .and_then(|n| n.checked_add(trailer + hlen));
    if expected != Some(len) {
        return Err("torn snapshot");
    }
    if h.schema != super::schema::MIGRATIONS.len() as u64 {
        return Err("written by another schema version");
    }
    if Some(&h.db) != DbFingerprint::of(state_dir).as_ref() {
        return Err("the ban database changed since the snapshot was written");
    }
    file.seek(SeekFrom::Start(MAGIC.len() as u64))
        .map_err(torn)?;
    Ok(Snapshot {
        file,
        rows: h.rows,
        jails: h.jails,
        sum,
    })
}

impl Snapshot {
    /// Every row into `rows`; an error (and `rows` to be dropped) when the
    /// file does not hold what its trailer says.
    pub(crate) fn read_into(mut self, rows: &mut BookRows) -> Result<(), Refusal> {
        let mut sum = Checksum::new();
        let mut buf = vec![0u8; ROW * ROWS_PER_BUF];
        let mut left = self.rows;
        while left > 0 {
            let n = left.min(ROWS_PER_BUF as u64) as usize;
            let chunk = &mut buf[..n * ROW];
            self.file.read_exact(chunk).map_err(|_| "torn snapshot")?;
            sum.add(chunk);
            for r in chunk.chunks_exact(ROW) {
                decode(r, &self.jails, rows).ok_or("damaged snapshot")?;
            }
            left -= n as u64;
        }
        if sum.0 != self.sum {
            return Err("damaged snapshot (checksum)");
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
