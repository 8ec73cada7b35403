//! The byte scanners behind [`super::parse_time`] and [`super::DatePattern`]:
//! each recognises one format at a position and fills [`Fields`], without
//! allocating (this runs on every log line).

use super::{Fields, Tok, F_CLF, F_EPOCH, F_ISO, F_NGINX};

/// `n` ASCII digits at `i`, as a `u32`.
#[inline]
pub(super) fn digits(b: &[u8], i: usize, n: usize) -> Option<u32> {
    if n > 9 {
        return u32::try_from(digits_u64(b, i, n)?).ok();
    }
    // Nine digits fit a u32: no overflow checks on this per-line path.
    let s = b.get(i..i.checked_add(n)?)?;
    let mut v = 0u32;
    for &c in s {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    Some(v)
}

/// Two ASCII digits at the start of `s`.
#[inline]
fn two(s: &[u8]) -> Option<u32> {
    let (a, b) = (s[0].wrapping_sub(b'0'), s[1].wrapping_sub(b'0'));
    (a <= 9 && b <= 9).then(|| u32::from(a) * 10 + u32::from(b))
}

/// `n` (at most 19) ASCII digits at `i`.
#[inline]
pub(super) fn digits_u64(b: &[u8], i: usize, n: usize) -> Option<u64> {
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
#[inline]
pub(super) fn digits12(b: &[u8], i: usize) -> Option<(u32, usize)> {
    let d1 = digits(b, i, 1)?;
    match digits(b, i + 1, 1) {
        Some(d2) => Some((d1 * 10 + d2, 2)),
        None => Some((d1, 1)),
    }
}

#[inline]
pub(super) fn not_digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_none_or(|c| !c.is_ascii_digit())
}

#[inline]
pub(super) fn month_name(b: &[u8], i: usize) -> Option<u32> {
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

#[inline]
pub(super) fn is_weekday(b: &[u8], i: usize) -> bool {
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
#[inline]
pub(super) fn hms(b: &[u8], i: usize, f: &mut Fields) -> Option<usize> {
    let s = b.get(i..i.checked_add(8)?)?;
    if s[2] != b':' || s[5] != b':' {
        return None;
    }
    f.hour = two(s)?;
    f.min = two(&s[3..])?;
    f.sec = two(&s[6..])?;
    if f.hour > 23 || f.min > 59 || f.sec > 60 {
        return None;
    }
    Some(fraction(b, i + 8, f))
}

#[inline]
pub(super) fn fraction(b: &[u8], i: usize, f: &mut Fields) -> usize {
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
pub(super) fn zone(b: &[u8], i: usize) -> Option<(i32, usize)> {
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
pub(super) fn scan_digit(
    b: &[u8],
    i: usize,
    prev: u8,
    mask: u8,
    at_start: bool,
) -> Option<(Fields, usize)> {
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

/// Reads nothing past [`super::SYSLOG_LOOKAHEAD`] bytes after the end it
/// returns (the ctime year check): the stamp cache relies on it.
#[inline]
pub(super) fn scan_syslog(b: &[u8], i: usize) -> Option<(Fields, usize)> {
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

pub(super) fn scan_tai64n(b: &[u8]) -> Option<(Fields, usize)> {
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

pub(super) fn match_custom(b: &[u8], start: usize, toks: &[Tok]) -> Option<(Fields, usize)> {
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
