//! Log timestamp detection.
//!
//! This runs on every log line, so the common formats are recognised by a
//! hand-written byte scanner, not by regexes. Detected automatically (the
//! leftmost timestamp in the line wins):
//!
//! | format | example | zone |
//! |---|---|---|
//! | syslog / ctime | `Nov 21 05:28:31`, `Sun Jun 09 07:57:47.123 2013` | local |
//! | ISO 8601 / RFC 3339 | `2026-11-21T05:28:31.123+01:00`, `2006-02-13 15:52:30,388` | offset, `Z`, else local |
//! | Apache/nginx access | `10/Oct/2000:13:55:36 -0700` | offset, else local |
//! | nginx error | `2024/01/31 12:34:56` | local |
//! | epoch | `1700000000.123` at line start or in `[...]` | UTC |
//! | TAI64N (multilog) | `@400000004c91b044077a9e94` at line start | UTC |
//!
//! Only a timestamp where its format puts it counts: text after the start
//! of a line may be written by a client (a user name, a URL), and a date
//! taken from there would let an attacker age his own failures out of the
//! window. So, when guessing and for a named `datepattern`:
//!
//! * a timestamp counts at the line's start (after blanks and one `[`);
//! * an access-log date also in its `[date] "` position after the client
//!   fields: the servers escape `"` inside logged fields, so a fake date in
//!   the user name cannot be followed by it, and the first such date is the
//!   server's;
//! * anywhere else it is message text, and the line has no time of its own
//!   (the caller uses the read time, or the journal entry's time).
//!
//! A `%`-pattern `datepattern` is the operator's own description of the
//! position: anchored with `^`, at the start; otherwise its leftmost match
//! (give it literal context, e.g. `] %d/%b/%Y`, to pin it down).
//!
//! Timestamps without a year take the latest year that puts them no more
//! than one day after `now`, so a `Dec 31` line read on Jan 1 is last year.
//! "Local" is the machine's time zone (`chrono::Local`).

use std::cell::Cell;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{Datelike, LocalResult, NaiveDate, Offset, TimeZone};

use super::FilterError;

const F_SYSLOG: u8 = 1;
const F_ISO: u8 = 2;
const F_CLF: u8 = 4;
const F_NGINX: u8 = 8;
const F_EPOCH: u8 = 16;
const F_TAI64N: u8 = 32;
const F_ALL: u8 = 63;

/// How to find a line's timestamp: a named format family or a
/// strftime-like pattern.
///
/// Named values: `epoch`, `iso8601`, `syslog` (includes the ctime form used
/// by Apache error logs and vsftpd), `apache` (access-log
/// `10/Oct/2000:13:55:36 -0700`), `nginx` (`2024/01/31 12:34:56`), `tai64n`.
///
/// Pattern directives: `%Y` (4-digit year), `%y` (2-digit year, 20xx), `%m`,
/// `%d`, `%e`, `%H`, `%M`, `%S` (1–2 digits), `%b` (English month name),
/// `%a` (English weekday name, skipped), `%z` (`Z`, `+hh`, `+hhmm`,
/// `+hh:mm`), `%f` (fraction digits), `%s` (epoch seconds), `%%`. A space
/// matches one or more blanks. A leading `^` anchors the pattern at the start
/// of the line (or just after a leading `[`). Without `%Y`/`%y` the year is
/// inferred as for syslog; without `%z` the time is local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatePattern {
    kind: DpKind,
    anchored: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DpKind {
    Formats(u8),
    Custom(Vec<Tok>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    Blank,
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Min,
    Sec,
    MonName,
    DayName,
    Zone,
    Frac,
    Epoch,
}

impl DatePattern {
    /// Parses a `datepattern` value; errors say which directive is wrong.
    pub fn parse(s: &str) -> Result<DatePattern, FilterError> {
        let err = |reason: String| FilterError::DatePattern {
            pattern: s.to_string(),
            reason,
        };
        let (anchored, body) = match s.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let named = match body.to_ascii_lowercase().as_str() {
            "epoch" => Some(F_EPOCH),
            "iso8601" => Some(F_ISO),
            "syslog" => Some(F_SYSLOG),
            "apache" => Some(F_CLF),
            "nginx" => Some(F_NGINX),
            "tai64n" => Some(F_TAI64N),
            _ => None,
        };
        if let Some(mask) = named {
            return Ok(DatePattern {
                kind: DpKind::Formats(mask),
                anchored,
            });
        }
        if body.is_empty() {
            return Err(err("it is empty; use a format name (syslog, iso8601, apache, nginx, epoch) or a %-pattern".into()));
        }
        let mut toks = Vec::new();
        let mut it = body.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let d = it.next().ok_or_else(|| {
                    err("it ends with a lone %; write %% for a literal percent sign".into())
                })?;
                toks.push(match d {
                    b'Y' => Tok::Year4,
                    b'y' => Tok::Year2,
                    b'm' => Tok::Month,
                    b'd' | b'e' => Tok::Day,
                    b'H' => Tok::Hour,
                    b'M' => Tok::Min,
                    b'S' => Tok::Sec,
                    b'b' => Tok::MonName,
                    b'a' => Tok::DayName,
                    b'z' => Tok::Zone,
                    b'f' => Tok::Frac,
                    b's' => Tok::Epoch,
                    b'%' => Tok::Lit(b'%'),
                    other => {
                        return Err(err(format!(
                            "unsupported directive %{}; use %Y %y %m %d %e %H %M %S %b %a %z %f %s or %%",
                            other as char
                        )))
                    }
                });
            } else if b == b' ' {
                if toks.last() != Some(&Tok::Blank) {
                    toks.push(Tok::Blank);
                }
            } else {
                toks.push(Tok::Lit(b));
            }
        }
        let has = |t: Tok| toks.contains(&t);
        if !has(Tok::Epoch) && !(has(Tok::Day) && (has(Tok::Month) || has(Tok::MonName))) {
            return Err(err(
                "it needs %s, or %d together with %m or %b, to name a day".into(),
            ));
        }
        Ok(DatePattern {
            kind: DpKind::Custom(toks),
            anchored,
        })
    }
}

/// Finds the first timestamp in `line` and returns it with its byte range.
/// `now` is the reference for year inference.
pub fn parse_time(
    line: &str,
    now: SystemTime,
    datepattern: Option<&DatePattern>,
) -> Option<(SystemTime, Range<usize>)> {
    let b = line.as_bytes();
    if b.is_empty() {
        return None;
    }
    let (mask, anchored, custom) = match datepattern {
        None => (F_ALL, false, None),
        Some(DatePattern {
            kind: DpKind::Formats(m),
            anchored,
        }) => (*m, *anchored, None),
        Some(DatePattern {
            kind: DpKind::Custom(t),
            anchored,
        }) => (0, *anchored, Some(t.as_slice())),
    };
    // The line's start: its first non-blank byte, or the one after a
    // leading `[`.
    let lead = b.iter().position(|c| !c.is_ascii_whitespace())?;
    let lead_end = if b[lead] == b'[' { lead + 1 } else { lead };
    let last = match (custom.is_some(), anchored) {
        // A %-pattern: the first byte (or the second after `[`), or anywhere.
        (true, true) => usize::from(b[0] == b'['),
        (true, false) => b.len(),
        // Named formats and guessing: the start only; an access-log date
        // later in the line is checked after the loop.
        (false, _) => lead_end,
    };
    for i in 0..=last.min(b.len().saturating_sub(1)) {
        let c = b[i];
        let prev = if i == 0 { b' ' } else { b[i - 1] };
        if custom.is_none() && i < lead {
            continue;
        }
        let found = if let Some(toks) = custom {
            let first_num = !matches!(
                toks.first(),
                Some(Tok::MonName | Tok::DayName | Tok::Lit(_) | Tok::Blank)
            );
            if (first_num && prev.is_ascii_digit()) || (!first_num && prev.is_ascii_alphabetic()) {
                None
            } else {
                match_custom(b, i, toks)
            }
        } else if c.is_ascii_digit() {
            if prev.is_ascii_digit() {
                continue;
            }
            scan_digit(b, i, prev, mask, true)
        } else if c.is_ascii_uppercase() {
            if prev.is_ascii_alphabetic() || mask & F_SYSLOG == 0 {
                continue;
            }
            scan_syslog(b, i)
        } else if c == b'@' && i == 0 && mask & F_TAI64N != 0 {
            scan_tai64n(b)
        } else {
            continue;
        };
        if let Some((fields, end)) = found {
            if let Some(t) = fields.resolve(now) {
                return Some((t, i..end));
            }
        }
    }
    if custom.is_none() && !anchored && mask & F_CLF != 0 {
        return access_log_date(b, lead_end, now);
    }
    None
}

/// The date of an access-log line, `HOST IDENT USER [dd/Mon/yyyy:...] "`:
/// the first `[` of the line, after a first field that is an address or a
/// host name (`vhost:port` too), and followed by `] "`. Apache and nginx
/// escape `"` in logged fields, so a client cannot write that shape into
/// its user name; the first-field and first-`[` rules keep the shape from
/// counting in other logs (`sshd[1]: ... user [date] "x`), where a client
/// can write quotes. A `[` in the user field makes the line's date not
/// count at all: it then has the read time, which an attacker gains
/// nothing from.
fn access_log_date(b: &[u8], after: usize, now: SystemTime) -> Option<(SystemTime, Range<usize>)> {
    let open = memchr::memchr(b'[', b)?;
    let i = open + 1;
    if i <= after || !b.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let first = b[..open]
        .split(|c| c.is_ascii_whitespace())
        .find(|f| !f.is_empty())?;
    let host_like = first
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b':' | b'-' | b'_' | b'%'))
        && first.last() != Some(&b':');
    if !host_like {
        return None;
    }
    let (fields, end) = scan_digit(b, i, b'[', F_CLF, false)?;
    Some((fields.resolve(now)?, i..end))
}

/// If the timestamp at `range` is the line's leading field (only blanks or
/// one `[` before it), returns where the rest of the line starts: the
/// matcher then sees `host sshd[1]: ...` without the date.
#[doc(hidden)]
pub fn leading_stamp_end(line: &str, range: &Range<usize>) -> Option<usize> {
    let b = line.as_bytes();
    let head = &b[..range.start];
    let bracket = match head.iter().rposition(|&c| !c.is_ascii_whitespace()) {
        None => false,
        Some(p) if head[p] == b'[' && head[..p].iter().all(u8::is_ascii_whitespace) => true,
        Some(_) => return None,
    };
    let mut end = range.end;
    if bracket {
        if b.get(end) != Some(&b']') {
            return None;
        }
        end += 1;
    }
    while end < b.len() && b[end].is_ascii_whitespace() {
        end += 1;
    }
    Some(end)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fields {
    year: Option<i32>,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
    /// Seconds east of UTC; `None` = local time.
    offset: Option<i32>,
    /// Absolute time (epoch, TAI64N): everything else is ignored.
    epoch: Option<(i64, u32)>,
}

thread_local! {
    /// The last stamp resolved: (fields, `now` in whole seconds, result).
    /// Busy logs carry the same second on many consecutive lines, and the
    /// result depends on nothing else (year inference reads `now` to the
    /// second; the zone offset is cached per hour in [`local_secs_to_utc`]).
    static RESOLVED: Cell<Option<(Fields, i64, Option<SystemTime>)>> = const { Cell::new(None) };
}

impl Fields {
    fn resolve(&self, now: SystemTime) -> Option<SystemTime> {
        if let Some((s, n)) = self.epoch {
            return to_system_time(s, n);
        }
        let now_s = unix_secs(now);
        if let Some((f, at, t)) = RESOLVED.get() {
            if f == *self && at == now_s {
                return t;
            }
        }
        let t = self.resolve_uncached(now);
        RESOLVED.set(Some((*self, now_s, t)));
        t
    }

    fn resolve_uncached(&self, now: SystemTime) -> Option<SystemTime> {
        let sec = self.sec.min(59); // a leap second is read as :59
        let to_secs = |year: i32| -> Option<i64> {
            if self.hour > 23 || self.min > 59 {
                return None;
            }
            let naive = days_from_civil(year, self.month, self.day)? * 86_400
                + i64::from(self.hour * 3600 + self.min * 60 + sec);
            match self.offset {
                Some(off) => Some(naive - i64::from(off)),
                None => local_secs_to_utc(naive),
            }
        };
        let secs = match self.year {
            Some(y) => to_secs(y)?,
            None => infer_year(now, self.month, self.day, to_secs)?,
        };
        to_system_time(secs, self.nanos)
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn to_system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos.into()))
    }
}

/// The latest year that puts the time at most one day after `now`. Tries a
/// few years back so that Feb 29 finds a leap year.
fn infer_year(
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
const LOCAL_SLOTS: usize = 64;

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
fn local_secs_to_utc(naive: i64) -> Option<i64> {
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
    // Zone transitions fall on whole hours in practice, so a whole local
    // hour shares one offset unless it is ambiguous or skipped.
    if cacheable {
        LOCAL_CACHE.with(|c| c[slot].set(Some((hour, off))));
    }
    Some(naive - i64::from(off))
}

/// Days from 1970-01-01 to `y-m-d` in the proleptic Gregorian calendar, or
/// `None` if there is no such date (or chrono could not represent it:
/// exactly when `NaiveDate::from_ymd_opt` gives `None`). Integer
/// arithmetic (H. Hinnant's `days_from_civil`): chrono's constructor
/// costs more than the rest of a line's time parsing.
fn days_from_civil(y: i32, m: u32, d: u32) -> Option<i64> {
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
fn civil_year(days: i64) -> i32 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let y = yoe + era * 400 + i64::from(mp >= 10);
    y as i32
}

// ---------------------------------------------------------------- scanners

fn digits(b: &[u8], i: usize, n: usize) -> Option<u32> {
    u32::try_from(digits_u64(b, i, n)?).ok()
}

/// `n` (at most 19) ASCII digits at `i`.
fn digits_u64(b: &[u8], i: usize, n: usize) -> Option<u64> {
    let s = b.get(i..i.checked_add(n)?)?;
    let mut v = 0u64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// 1 or 2 digits; returns (value, bytes used).
fn digits12(b: &[u8], i: usize) -> Option<(u32, usize)> {
    let d1 = digits(b, i, 1)?;
    match digits(b, i + 1, 1) {
        Some(d2) => Some((d1 * 10 + d2, 2)),
        None => Some((d1, 1)),
    }
}

fn not_digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_none_or(|c| !c.is_ascii_digit())
}

fn month_name(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 3)?;
    let m = match [s[0], s[1].to_ascii_lowercase(), s[2].to_ascii_lowercase()] {
        [b'J', b'a', b'n'] => 1,
        [b'F', b'e', b'b'] => 2,
        [b'M', b'a', b'r'] => 3,
        [b'A', b'p', b'r'] => 4,
        [b'M', b'a', b'y'] => 5,
        [b'J', b'u', b'n'] => 6,
        [b'J', b'u', b'l'] => 7,
        [b'A', b'u', b'g'] => 8,
        [b'S', b'e', b'p'] => 9,
        [b'O', b'c', b't'] => 10,
        [b'N', b'o', b'v'] => 11,
        [b'D', b'e', b'c'] => 12,
        _ => return None,
    };
    Some(m)
}

fn is_weekday(b: &[u8], i: usize) -> bool {
    let Some(s) = b.get(i..i + 3) else {
        return false;
    };
    matches!(
        [s[0], s[1].to_ascii_lowercase(), s[2].to_ascii_lowercase()],
        [b'M', b'o', b'n']
            | [b'T', b'u', b'e']
            | [b'W', b'e', b'd']
            | [b'T', b'h', b'u']
            | [b'F', b'r', b'i']
            | [b'S', b'a', b't']
            | [b'S', b'u', b'n']
    )
}

/// `HH:MM:SS` at `i` with an optional `.fff`/`,fff`; returns the end.
fn hms(b: &[u8], i: usize, f: &mut Fields) -> Option<usize> {
    f.hour = digits(b, i, 2)?;
    (b.get(i + 2) == Some(&b':')).then_some(())?;
    f.min = digits(b, i + 3, 2)?;
    (b.get(i + 5) == Some(&b':')).then_some(())?;
    f.sec = digits(b, i + 6, 2)?;
    if f.hour > 23 || f.min > 59 || f.sec > 60 {
        return None;
    }
    Some(fraction(b, i + 8, f))
}

fn fraction(b: &[u8], i: usize, f: &mut Fields) -> usize {
    if matches!(b.get(i), Some(b'.' | b',')) && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        let mut j = i + 1;
        let mut nanos = 0u32;
        let mut n = 0;
        while let Some(&c) = b.get(j) {
            if !c.is_ascii_digit() {
                break;
            }
            if n < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
                n += 1;
            }
            j += 1;
        }
        f.nanos = nanos * 10u32.pow(9 - n);
        return j;
    }
    i
}

/// `Z`, `+hh`, `+hhmm`, `+hh:mm` at `i`; returns (offset seconds, end).
fn zone(b: &[u8], i: usize) -> Option<(i32, usize)> {
    match b.get(i)? {
        b'Z' | b'z' => Some((0, i + 1)),
        s @ (b'+' | b'-') => {
            let sign = if *s == b'-' { -1 } else { 1 };
            let h = digits(b, i + 1, 2)?;
            let (m, end) = if b.get(i + 3) == Some(&b':') {
                (digits(b, i + 4, 2)?, i + 6)
            } else if let Some(m) = digits(b, i + 3, 2) {
                (m, i + 5)
            } else {
                (0, i + 3)
            };
            if h > 14 || m > 59 || !not_digit_at(b, end) {
                return None;
            }
            Some((sign * (h as i32 * 3600 + m as i32 * 60), end))
        }
        _ => None,
    }
}

/// `at_start`: the candidate is the line's leading field; elsewhere an
/// access-log date must sit in its `[date] "` position.
fn scan_digit(b: &[u8], i: usize, prev: u8, mask: u8, at_start: bool) -> Option<(Fields, usize)> {
    let mut f = Fields::default();
    // YYYY-MM-DD[T ]HH:MM:SS or YYYY/MM/DD HH:MM:SS
    if let Some(year) = digits(b, i, 4) {
        let sep = b.get(i + 4).copied();
        if (sep == Some(b'-') && mask & F_ISO != 0) || (sep == Some(b'/') && mask & F_NGINX != 0) {
            let sep = sep.unwrap();
            f.year = Some(year as i32);
            f.month = digits(b, i + 5, 2)?;
            (b.get(i + 7) == Some(&sep)).then_some(())?;
            f.day = digits(b, i + 8, 2)?;
            let t = b.get(i + 10)?;
            if !(*t == b' ' || (sep == b'-' && (*t == b'T' || *t == b't'))) {
                return None;
            }
            let mut end = hms(b, i + 11, &mut f)?;
            if sep == b'-' {
                if let Some((off, e)) = zone(b, end) {
                    f.offset = Some(off);
                    end = e;
                } else if b.get(end) == Some(&b' ') && matches!(b.get(end + 1), Some(b'+' | b'-')) {
                    // `2024-01-31 12:34:56 +0100`: only a full 4-digit
                    // offset counts after a blank.
                    if let (Some(_), Some((off, e))) = (digits(b, end + 2, 4), zone(b, end + 1)) {
                        if e == end + 6 {
                            f.offset = Some(off);
                            end = e;
                        }
                    }
                }
            }
            return Some((f, end));
        }
    }
    // DD/Mon/YYYY:HH:MM:SS [+-]zzzz
    if mask & F_CLF != 0 && b.get(i + 2) == Some(&b'/') {
        f.day = digits(b, i, 2)?;
        f.month = month_name(b, i + 3)?;
        (b.get(i + 6) == Some(&b'/')).then_some(())?;
        f.year = Some(digits(b, i + 7, 4)? as i32);
        (b.get(i + 11) == Some(&b':')).then_some(())?;
        let mut end = hms(b, i + 12, &mut f)?;
        if b.get(end) == Some(&b' ') {
            if let Some((off, e)) = zone(b, end + 1) {
                f.offset = Some(off);
                end = e;
            }
        }
        // Access-log dates follow the client-chosen user field: only
        // `[date] "` counts there (module docs).
        let in_place = prev == b'[' && b.get(end..end + 3) == Some(b"] \"");
        if !at_start && !in_place {
            return None;
        }
        return Some((f, end));
    }
    // Epoch seconds: at the start of the line or right after `[`.
    if mask & F_EPOCH != 0 && (i == 0 || prev == b'[') {
        // Ten digits can exceed u32 (after 2106): read them as u64.
        let secs = digits_u64(b, i, 10)?;
        let mut end = i + 10;
        if !not_digit_at(b, end) {
            return None;
        }
        end = fraction(b, end, &mut f);
        if b.get(end).is_some_and(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        if prev == b'[' && b.get(end) != Some(&b']') {
            return None;
        }
        f.epoch = Some((secs as i64, f.nanos));
        return Some((f, end));
    }
    None
}

fn scan_syslog(b: &[u8], i: usize) -> Option<(Fields, usize)> {
    let mut f = Fields::default();
    let mut j = i;
    if is_weekday(b, j) && b.get(j + 3) == Some(&b' ') {
        j += 4;
    }
    f.month = month_name(b, j)?;
    j += 3;
    (b.get(j) == Some(&b' ')).then_some(())?;
    j += 1;
    if b.get(j) == Some(&b' ') {
        j += 1; // `Jan  5`
    }
    let (day, n) = digits12(b, j)?;
    f.day = day;
    j += n;
    (b.get(j) == Some(&b' ')).then_some(())?;
    j += 1;
    // `Jan 31 2024 12:34:56` (year before the time)
    if let Some(y) = digits(b, j, 4) {
        if b.get(j + 4) == Some(&b' ') {
            f.year = Some(y as i32);
            j += 5;
        }
    }
    let mut end = hms(b, j, &mut f)?;
    // ctime: `... 07:57:47 2013`
    if f.year.is_none() && b.get(end) == Some(&b' ') {
        if let Some(y) = digits(b, end + 1, 4) {
            if not_digit_at(b, end + 5) {
                f.year = Some(y as i32);
                end += 5;
            }
        }
    }
    Some((f, end))
}

fn scan_tai64n(b: &[u8]) -> Option<(Fields, usize)> {
    let hex = b.get(1..25)?;
    // Only hex digits: `from_str_radix` would take a sign, and slicing a
    // non-ASCII text at 16 could split a character.
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let s = std::str::from_utf8(hex).ok()?;
    let label = u64::from_str_radix(&s[..16], 16).ok()?;
    let nanos = u32::from_str_radix(&s[16..], 16).ok()?;
    // TAI64 label of the Unix epoch is 2^62 + 10 (daemontools convention).
    let secs = label.checked_sub((1u64 << 62) + 10)?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    let f = Fields {
        epoch: Some((secs as i64, nanos)),
        ..Fields::default()
    };
    Some((f, 25))
}

fn match_custom(b: &[u8], start: usize, toks: &[Tok]) -> Option<(Fields, usize)> {
    let mut f = Fields::default();
    let mut j = start;
    let mut have_year = false;
    for tok in toks {
        match *tok {
            Tok::Lit(c) => {
                (b.get(j) == Some(&c)).then_some(())?;
                j += 1;
            }
            Tok::Blank => {
                let s = j;
                while matches!(b.get(j), Some(b' ' | b'\t')) {
                    j += 1;
                }
                (j > s).then_some(())?;
            }
            Tok::Year4 => {
                f.year = Some(digits(b, j, 4)? as i32);
                have_year = true;
                j += 4;
            }
            Tok::Year2 => {
                f.year = Some(2000 + digits(b, j, 2)? as i32);
                have_year = true;
                j += 2;
            }
            Tok::Month | Tok::Day | Tok::Hour | Tok::Min | Tok::Sec => {
                let (v, n) = digits12(b, j)?;
                match tok {
                    Tok::Month => f.month = v,
                    Tok::Day => f.day = v,
                    Tok::Hour => f.hour = v,
                    Tok::Min => f.min = v,
                    _ => f.sec = v,
                }
                j += n;
            }
            Tok::MonName => {
                f.month = month_name(b, j)?;
                j += 3;
                while b.get(j).is_some_and(u8::is_ascii_alphabetic) {
                    j += 1; // full month names
                }
            }
            Tok::DayName => {
                is_weekday(b, j).then_some(())?;
                j += 3;
                while b.get(j).is_some_and(u8::is_ascii_alphabetic) {
                    j += 1;
                }
            }
            Tok::Zone => {
                let (off, e) = zone(b, j)?;
                f.offset = Some(off);
                j = e;
            }
            Tok::Frac => {
                let s = j;
                let mut nanos = 0u32;
                let mut n = 0;
                while let Some(&c) = b.get(j) {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    if n < 9 {
                        nanos = nanos * 10 + u32::from(c - b'0');
                        n += 1;
                    }
                    j += 1;
                }
                (j > s).then_some(())?;
                f.nanos = nanos * 10u32.pow(9 - n);
            }
            Tok::Epoch => {
                let s = j;
                let mut v: i64 = 0;
                while let Some(&c) = b.get(j) {
                    if !c.is_ascii_digit() || j - s >= 12 {
                        break;
                    }
                    v = v * 10 + i64::from(c - b'0');
                    j += 1;
                }
                (j - s >= 9).then_some(())?;
                f.epoch = Some((v, 0));
            }
        }
    }
    if let Some((s, _)) = f.epoch {
        f.epoch = Some((s, f.nanos));
    }
    if f.hour > 23 || f.min > 59 || f.sec > 60 {
        return None;
    }
    if !have_year {
        f.year = None;
    }
    Some((f, j))
}

#[cfg(test)]
mod tests;
