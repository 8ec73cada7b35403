//! Calendar arithmetic: Unix seconds from dates and local wall-clock times,
//! and the year of a date that has none (cheaper than chrono's constructors
//! on the per-line path; checked against chrono in the tests).

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{Datelike, LocalResult, NaiveDate, Offset, TimeZone};

pub(super) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

pub(super) fn to_system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos.into()))
    }
}

/// The latest year that puts the time at most one day after `now`. Tries a
/// few years back so that Feb 29 finds a leap year. The per-line path
/// reaches the same answer through its day plan (`DayPlan` in `time.rs`);
/// this is the reference its tests compare with.
#[cfg(test)]
pub(super) fn infer_year(
    now: SystemTime,
    month: u32,
    day: u32,
    to_secs: impl Fn(i32) -> Option<i64>,
) -> Option<i64> {
    let now_s = unix_secs(now);
    let limit = now_s + 86_400;
    let year = civil_year(now_s.div_euclid(86_400));
    (year - 8..=year + 1).rev().find_map(|y| {
        // No zone is more than 14 h ahead of UTC: a date whose midnight is
        // further past the limit is skipped without a zone lookup.
        let midnight = days_from_civil(y, month, day)? * 86_400;
        if midnight - 14 * 3600 > limit {
            return None;
        }
        to_secs(y).filter(|&t| t <= limit)
    })
}

/// Slots of [`LOCAL_CACHE`]: lines of a few files (or a log and its
/// rotated predecessor) interleaved keep their hours each.
pub(super) const LOCAL_SLOTS: usize = 64;

thread_local! {
    /// (local hour index, UTC offset in seconds) of recent conversions, in
    /// the slot `hour % LOCAL_SLOTS`: log lines arrive in time order, so
    /// nearly every line hits.
    static LOCAL_CACHE: [Cell<Option<(i64, i32)>>; LOCAL_SLOTS] =
        const { [const { Cell::new(None) }; LOCAL_SLOTS] };
}

/// Converts a local wall-clock time, `naive` seconds after 1970-01-01
/// 00:00 local, to Unix seconds. Ambiguous times (the
/// repeated hour when DST ends) take the earlier instant; times in the DST
/// gap use the offset in force just before it.
pub(super) fn local_secs_to_utc(naive: i64) -> Option<i64> {
    let hour = naive.div_euclid(3600);
    let slot = hour.rem_euclid(LOCAL_SLOTS as i64) as usize;
    if let Some((h, off)) = LOCAL_CACHE.with(|c| c[slot].get()) {
        if h == hour {
            return Some(naive - i64::from(off));
        }
    }
    let ndt = chrono::DateTime::from_timestamp(naive, 0)?.naive_utc();
    let (off, cacheable) = match chrono::Local.from_local_datetime(&ndt) {
        LocalResult::Single(dt) => (dt.offset().fix().local_minus_utc(), true),
        LocalResult::Ambiguous(a, _) => (a.offset().fix().local_minus_utc(), false),
        LocalResult::None => {
            let before = ndt - chrono::Duration::hours(3);
            (
                chrono::Local
                    .from_utc_datetime(&before)
                    .offset()
                    .fix()
                    .local_minus_utc(),
                false,
            )
        }
    };
    // A local hour shares one offset when its first and last seconds are
    // each unambiguous with that offset: a transition inside it (a
    // half-hour zone's, Lord Howe's) changes the offset or makes one of
    // them ambiguous or skipped.
    let single = |secs: i64| {
        let ndt = chrono::DateTime::from_timestamp(secs, 0)?.naive_utc();
        match chrono::Local.from_local_datetime(&ndt) {
            LocalResult::Single(dt) => Some(dt.offset().fix().local_minus_utc()),
            _ => None,
        }
    };
    if cacheable && single(hour * 3600) == Some(off) && single(hour * 3600 + 3599) == Some(off) {
        LOCAL_CACHE.with(|c| c[slot].set(Some((hour, off))));
    }
    Some(naive - i64::from(off))
}

/// Days from 1970-01-01 to `y-m-d` in the proleptic Gregorian calendar, or
/// `None` if there is no such date (or chrono could not represent it:
/// exactly when `NaiveDate::from_ymd_opt` gives `None`). Integer
/// arithmetic (H. Hinnant's `days_from_civil`): chrono's constructor
/// costs more than the rest of a line's time parsing.
pub(super) fn days_from_civil(y: i32, m: u32, d: u32) -> Option<i64> {
    if !(NaiveDate::MIN.year()..=NaiveDate::MAX.year()).contains(&y)
        || !(1..=12).contains(&m)
        || d == 0
    {
        return None;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let dim = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d > dim {
        return None;
    }
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The year of the day `days` after 1970-01-01 (inverse of
/// [`days_from_civil`]).
pub(super) fn civil_year(days: i64) -> i32 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let y = yoe + era * 400 + i64::from(mp >= 10);
    y as i32
}
