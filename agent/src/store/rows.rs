//! Reading the `bans` table's rows without their matched lines: shared by
//! the restore ([`super::bans`]) and the clean stop's snapshot
//! ([`super::snapshot`]).

use rusqlite::Connection;

use super::StoreError;
use crate::addr::Target;
use crate::ban::{BanClass, UnixSecs};

/// Every ban of `conn` without its matched lines, parsed, to `f` until it
/// answers `false`; how many it was given.
pub(super) fn for_each_row(
    conn: &Connection,
    path: &std::path::Path,
    mut f: impl FnMut(Target, &str, BanClass, UnixSecs, Option<UnixSecs>, u32) -> bool,
) -> Result<usize, StoreError> {
    let wrap = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut stmt = conn
        .prepare("SELECT target, jail, class, banned_at, expires_at, failures FROM bans")
        .map_err(wrap)?;
    let mut found = stmt.query([]).map_err(wrap)?;
    let mut n = 0;
    while let Some(row) = found.next().map_err(wrap)? {
        let (target, jail, class, banned_at, expires_at, failures) =
            ban_fields(row).map_err(wrap)?;
        let bad = |message: String| StoreError::BadRow {
            path: path.to_path_buf(),
            target: target.to_string(),
            jail: jail.to_string(),
            message,
        };
        let class = match class {
            "drop" => BanClass::Drop,
            "tarpit" => BanClass::Tarpit,
            other => return Err(bad(other.parse::<BanClass>().unwrap_err())),
        };
        let target = target.parse::<Target>().map_err(|e| bad(e.to_string()))?;
        n += 1;
        if !f(target, jail, class, banned_at, expires_at, failures) {
            break;
        }
    }
    Ok(n)
}

/// A `bans` row's fields, the text borrowed (no allocation per row).
type BanFields<'r> = (&'r str, &'r str, &'r str, i64, Option<i64>, u32);

fn ban_fields<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<BanFields<'r>> {
    Ok((
        row.get_ref(0)?.as_str()?,
        row.get_ref(1)?.as_str()?,
        row.get_ref(2)?.as_str()?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}
