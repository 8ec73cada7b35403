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
//! A filter with `date_cut = "anywhere"` ([`DateCut`]) follows fail2ban's
//! line model instead: its datepattern is read in fail2ban's syntax
//! ([`Templates`]), the date is looked for wherever fail2ban would, and
//! only its text is cut. A pattern in that syntax only (`{^LN-BEG}`,
//! `{DATE}`, `%Ex..`, regex parts) is accepted by the default cut too.
//!
//! Timestamps without a year take the latest year that puts them no more
//! than one day after `now`, so a `Dec 31` line read on Jan 1 is last year.
//! "Local" is the machine's time zone (`chrono::Local`).

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use super::FilterError;
#[cfg(test)]
use calendar::infer_year;
use calendar::{civil_year, days_from_civil, local_secs_to_utc, to_system_time, unix_secs};
use scan::{match_custom, scan_digit, scan_syslog, scan_tai64n};

mod calendar;
mod scan;
mod template;

pub use template::Templates;

const F_SYSLOG: u8 = 1;
const F_ISO: u8 = 2;
const F_CLF: u8 = 4;
const F_NGINX: u8 = 8;
const F_EPOCH: u8 = 16;
const F_TAI64N: u8 = 32;
const F_ALL: u8 = 63;

/// What the failregexes see of a line once its date is found (a filter's
/// `date_cut`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DateCut {
    /// xban's: a date counts where its format puts it (module docs), and a
    /// leading one is cut with the brackets and blanks around it; the
    /// failregexes start at the host name.
    #[default]
    Leading,
    /// fail2ban's: the date is found wherever it stands (fail2ban's
    /// datepattern syntax, or its default forms) and only its own text is
    /// cut; the failregexes see the text before and after it joined, as
    /// fail2ban's filters expect (`xban import` writes this).
    Anywhere,
}

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
    /// fail2ban's syntax ([`Templates`]).
    Fail2ban(Box<Templates>),
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
    /// A value in fail2ban's syntax only (`{^LN-BEG}`, `{DATE}`, `%Ex..`,
    /// regex parts, several lines) is read as fail2ban reads it.
    pub fn parse(s: &str) -> Result<DatePattern, FilterError> {
        let own = match DatePattern::parse_own(s) {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        if !looks_fail2ban(s) {
            return Err(own);
        }
        DatePattern::parse_fail2ban(s).map_err(|e| match e {
            FilterError::DatePattern { pattern, reason } => FilterError::DatePattern {
                pattern,
                reason: format!("{reason} (read in fail2ban's syntax)"),
            },
            other => other,
        })
    }

    /// Parses a `datepattern` in fail2ban's syntax (`date_cut = "anywhere"`).
    pub fn parse_fail2ban(s: &str) -> Result<DatePattern, FilterError> {
        let t = Templates::parse(s).map_err(|reason| FilterError::DatePattern {
            pattern: s.to_string(),
            reason,
        })?;
        Ok(DatePattern {
            kind: DpKind::Fail2ban(Box::new(t)),
            anchored: false,
        })
    }

    /// fail2ban's default date detection (no `datepattern`, `date_cut = "anywhere"`).
    pub fn fail2ban_default() -> DatePattern {
        DatePattern {
            kind: DpKind::Fail2ban(Box::new(Templates::defaults())),
            anchored: false,
        }
    }

    fn parse_own(s: &str) -> Result<DatePattern, FilterError> {
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

/// Whether a datepattern uses what only fail2ban's syntax has.
fn looks_fail2ban(s: &str) -> bool {
    s.contains(['{', '(', '[', '\\', '|', '?', '*', '+', '$', '\n'])
        || s.contains("%Ex")
        || s.trim().eq_ignore_ascii_case("lepoch")
}

/// The date fail2ban's line model cuts out of `line`, wherever it stands:
/// its time (`None` when the text is no valid date) and byte range.
pub fn find_date(
    line: &str,
    now: SystemTime,
    datepattern: &DatePattern,
) -> Option<(Option<SystemTime>, Range<usize>)> {
    match &datepattern.kind {
        DpKind::Fail2ban(t) => t.find(line, now),
        _ => parse_time(line, now, Some(datepattern)).map(|(t, r)| (Some(t), r)),
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
            kind: DpKind::Fail2ban(t),
            ..
        }) => return fail2ban_time(t, line, now),
        Some(DatePattern {
            kind: DpKind::Formats(m),
            anchored,
        }) => (*m, *anchored, None),
        Some(DatePattern {
            kind: DpKind::Custom(t),
            anchored,
        }) => (0, *anchored, Some(t.as_slice())),
    };
    // A syslog stamp at the very start (the one place the loop below
    // then looks): the last line's, if its bytes are the same.
    let syslog_at_start = custom.is_none() && mask & F_SYSLOG != 0 && b[0].is_ascii_uppercase();
    let now_s = if syslog_at_start {
        let now_s = now_secs(now);
        if let Some(hit) = SyslogStamp::lookup(b, now_s) {
            return Some(hit);
        }
        Some(now_s)
    } else {
        None
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
                if let (Some(now_s), 0) = (now_s, i) {
                    SyslogStamp::store(b, end, now_s, t);
                }
                return Some((t, i..end));
            }
        }
    }
    if custom.is_none() && !anchored && mask & F_CLF != 0 {
        return access_log_date(b, lead_end, now);
    }
    None
}

/// [`parse_time`] for a datepattern in fail2ban's syntax: out of line, so
/// that the byte scanners' path keeps its shape.
#[inline(never)]
fn fail2ban_time(t: &Templates, line: &str, now: SystemTime) -> Option<(SystemTime, Range<usize>)> {
    let (time, range) = t.find(line, now)?;
    Some((time?, range))
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
    /// The last `now` converted to Unix seconds: one caller passes the
    /// same `now` for many lines.
    static NOW: Cell<(SystemTime, i64)> = const { Cell::new((UNIX_EPOCH, 0)) };
    /// The candidate days of the last date resolved ([`DayPlan`]): log
    /// lines come in time order, so nearly every line has the day of the
    /// line before.
    static DAY: RefCell<DayPlan> = const { RefCell::new(DayPlan::EMPTY) };
    /// The last syslog stamp read at a line's start ([`SyslogStamp`]).
    static STAMP: RefCell<SyslogStamp> = const { RefCell::new(SyslogStamp::EMPTY) };
}

/// Unix seconds of `now`, converted once per distinct `now`.
fn now_secs(now: SystemTime) -> i64 {
    let (at, secs) = NOW.get();
    if at == now {
        return secs;
    }
    let secs = unix_secs(now);
    NOW.set((now, secs));
    secs
}

/// Most years a date without one is tried in ([`infer_year`]'s range).
const YEAR_CANDIDATES: usize = 10;

/// The part of resolving a date that depends on its day and on `now`
/// only, not on its time of day or zone: the days (since 1970-01-01) of
/// the years it may be in, in the order [`infer_year`] tries them, with
/// the invalid dates and the years whose midnight is past every zone's
/// limit already dropped. A line then costs one addition and a zone
/// conversion per remaining candidate (one, unless the date is within a
/// day of `now`), where [`Fields::resolve_uncached`] computes the calendar
/// for up to ten years.
#[derive(Clone, Copy)]
struct DayPlan {
    /// (year as written, month, day, `now` in whole seconds); `month` 0
    /// never occurs in a valid key, so [`DayPlan::EMPTY`] matches nothing.
    key: (Option<i32>, u32, u32, i64),
    /// Whether the year is inferred (each candidate must then be at most
    /// one day after `now`) or written (one candidate, no limit).
    inferred: bool,
    n: u8,
    days: [i64; YEAR_CANDIDATES],
}

impl DayPlan {
    const EMPTY: DayPlan = DayPlan {
        key: (None, 0, 0, 0),
        inferred: false,
        n: 0,
        days: [0; YEAR_CANDIDATES],
    };

    fn new(year: Option<i32>, month: u32, day: u32, now_s: i64) -> DayPlan {
        let mut plan = DayPlan {
            key: (year, month, day, now_s),
            inferred: year.is_none(),
            ..DayPlan::EMPTY
        };
        let mut push = |d: i64| {
            plan.days[usize::from(plan.n)] = d;
            plan.n += 1;
        };
        match year {
            Some(y) => {
                if let Some(d) = days_from_civil(y, month, day) {
                    push(d);
                }
            }
            None => {
                // As `infer_year`: the same years, in the same order, and
                // the same zone-independent skip.
                let limit = now_s + 86_400;
                let this = civil_year(now_s.div_euclid(86_400));
                for y in (this - 8..=this + 1).rev() {
                    let Some(d) = days_from_civil(y, month, day) else {
                        continue;
                    };
                    if d * 86_400 - 14 * 3600 > limit {
                        continue;
                    }
                    push(d);
                }
            }
        }
        plan
    }

    /// The Unix seconds of the time `tod` seconds into this plan's day, at
    /// `offset` (local time when `None`).
    fn secs(&self, tod: i64, offset: Option<i32>) -> Option<i64> {
        let to_secs = |days: i64| {
            let naive = days * 86_400 + tod;
            match offset {
                Some(off) => Some(naive - i64::from(off)),
                None => local_secs_to_utc(naive),
            }
        };
        let days = &self.days[..usize::from(self.n)];
        if !self.inferred {
            return to_secs(*days.first()?);
        }
        let limit = self.key.3 + 86_400;
        days.iter()
            .find_map(|&d| to_secs(d).filter(|&t| t <= limit))
    }
}

/// The bytes a syslog stamp at a line's start was read from, and the time
/// it resolved to. [`parse_time`] on such a line (no datepattern or a
/// named one with syslog) reads nothing but the stamp and the
/// [`SYSLOG_LOOKAHEAD`] bytes after it (a ctime year), and resolves it
/// with nothing but `now`'s second: a line whose first `len` bytes are
/// the same, read in the same second, has the same time. Busy logs
/// write many lines a second, each then a comparison of a few bytes.
struct SyslogStamp {
    now_s: i64,
    /// The stamp ends here; `len` bytes (stamp and lookahead) are kept.
    end: usize,
    len: usize,
    bytes: [u8; SYSLOG_STAMP_BYTES],
    time: SystemTime,
}

/// Bytes [`scan::scan_syslog`] may read after the stamp's end: a blank,
/// a 4-digit year and the byte after it.
const SYSLOG_LOOKAHEAD: usize = 6;
/// A longer stamp (a long fraction) is not cached.
const SYSLOG_STAMP_BYTES: usize = 48;

impl SyslogStamp {
    const EMPTY: SyslogStamp = SyslogStamp {
        now_s: 0,
        end: 0,
        len: 0,
        bytes: [0; SYSLOG_STAMP_BYTES],
        time: UNIX_EPOCH,
    };

    fn lookup(b: &[u8], now_s: i64) -> Option<(SystemTime, Range<usize>)> {
        STAMP.with_borrow(|s| {
            (s.len > 0 && s.now_s == now_s && b.get(..s.len) == Some(&s.bytes[..s.len]))
                .then_some((s.time, 0..s.end))
        })
    }

    /// Keeps a stamp read at `0..end` when the line holds all the bytes the
    /// scanner may have read (a shorter line is not cached).
    fn store(b: &[u8], end: usize, now_s: i64, time: SystemTime) {
        let len = end + SYSLOG_LOOKAHEAD;
        if len > SYSLOG_STAMP_BYTES || len > b.len() {
            return;
        }
        STAMP.with_borrow_mut(|s| {
            s.bytes[..len].copy_from_slice(&b[..len]);
            *s = SyslogStamp {
                now_s,
                end,
                len,
                time,
                ..*s
            };
        });
    }
}

impl Fields {
    fn resolve(&self, now: SystemTime) -> Option<SystemTime> {
        if let Some((s, n)) = self.epoch {
            return to_system_time(s, n);
        }
        if self.hour > 23 || self.min > 59 {
            return None;
        }
        let now_s = now_secs(now);
        let key = (self.year, self.month, self.day, now_s);
        let sec = self.sec.min(59); // a leap second is read as :59
        let tod = i64::from(self.hour * 3600 + self.min * 60 + sec);
        let secs = DAY.with_borrow_mut(|plan| {
            if plan.key != key {
                *plan = DayPlan::new(self.year, self.month, self.day, now_s);
            }
            plan.secs(tod, self.offset)
        })?;
        to_system_time(secs, self.nanos)
    }

    /// [`Fields::resolve`] without the day cache: the reference the cached
    /// path is checked against.
    #[cfg(test)]
    fn resolve_uncached(&self, now: SystemTime) -> Option<SystemTime> {
        if let Some((s, n)) = self.epoch {
            return to_system_time(s, n);
        }
        let sec = self.sec.min(59);
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

#[cfg(test)]
mod tests;
