use super::calendar::civil_year;
use super::*;
use chrono::{Datelike, Local, LocalResult, NaiveDate, TimeZone};
use std::time::{Duration, UNIX_EPOCH};

fn local_to_utc(ndt: chrono::NaiveDateTime) -> Option<i64> {
    local_secs_to_utc(ndt.and_utc().timestamp())
}

fn utc(s: &str) -> SystemTime {
    let dt = chrono::DateTime::parse_from_rfc3339(s).unwrap();
    to_system_time(dt.timestamp(), dt.timestamp_subsec_nanos()).unwrap()
}

/// Local wall-clock time as chrono converts it (earliest if ambiguous).
fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> SystemTime {
    let dt = Local
        .with_ymd_and_hms(y, mo, d, h, mi, s)
        .earliest()
        .unwrap();
    to_system_time(dt.timestamp(), 0).unwrap()
}

fn at(line: &str, now: SystemTime) -> (SystemTime, Range<usize>) {
    parse_time(line, now, None).unwrap_or_else(|| panic!("no time in {line:?}"))
}

#[test]
fn syslog_current_year() {
    let now = utc("2026-11-21T12:00:00Z");
    let (t, r) = at("Nov 21 05:28:31 host sshd[1]: x", now);
    assert_eq!(t, local(2026, 11, 21, 5, 28, 31));
    assert_eq!(r, 0..15);
    let (t, r) = at(
        "Jan  5 01:31:41 www sshd[1643]: x",
        utc("2026-03-01T00:00:00Z"),
    );
    assert_eq!(t, local(2026, 1, 5, 1, 31, 41));
    assert_eq!(r, 0..15);
    let (t, _) = at(
        "Feb 7 16:01:07 linux sshd[5106]: x",
        utc("2026-03-01T00:00:00Z"),
    );
    assert_eq!(t, local(2026, 2, 7, 16, 1, 7));
}

#[test]
fn syslog_across_new_year() {
    // Read on Jan 1: a Dec 31 line is from last year ...
    let now = utc("2027-01-01T00:30:00Z");
    let (t, _) = at("Dec 31 23:59:58 h sshd[1]: x", now);
    assert_eq!(t, local(2026, 12, 31, 23, 59, 58));
    // ... and a Jan 1 line is from this year.
    let (t, _) = at("Jan  1 00:10:00 h sshd[1]: x", now);
    assert_eq!(t, local(2027, 1, 1, 0, 10, 0));
    // Read on Dec 31 with a clock a little ahead: Jan 1 is next year.
    let now = utc("2026-12-31T23:50:00Z");
    let (t, _) = at("Jan  1 00:05:00 h sshd[1]: x", now);
    assert_eq!(t, local(2027, 1, 1, 0, 5, 0));
    // A line more than a day in the future is last year's.
    let now = utc("2026-06-01T00:00:00Z");
    let (t, _) = at("Jun 20 10:00:00 h x", now);
    assert_eq!(t, local(2025, 6, 20, 10, 0, 0));
}

/// The integer calendar agrees with chrono on every day of 1900-2200,
/// on invalid dates and at chrono's limits.
#[test]
fn civil_days_agree_with_chrono() {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    for y in (1890..2210).chain([-1, 0, 1, NaiveDate::MIN.year(), NaiveDate::MAX.year()]) {
        for m in 0..=13 {
            for d in 0..=32 {
                let want = NaiveDate::from_ymd_opt(y, m, d)
                    .map(|nd| nd.signed_duration_since(epoch).num_days());
                assert_eq!(days_from_civil(y, m, d), want, "{y}-{m}-{d}");
                if let Some(days) = want {
                    assert_eq!(civil_year(days), y, "{y}-{m}-{d}");
                }
            }
        }
    }
    for y in [NaiveDate::MIN.year() - 1, NaiveDate::MAX.year() + 1] {
        assert_eq!(days_from_civil(y, 1, 1), None);
    }
}

/// The day cache is keyed by the reading time too: the same
/// stamp read a year apart, or either side of a year's end, resolves
/// to different years, in any order.
#[test]
fn same_stamp_with_another_now_is_resolved_again() {
    let line = "Dec 31 23:59:58 h sshd[1]: x";
    let jan = utc("2027-01-01T00:30:00Z");
    let june = utc("2026-06-01T00:00:00Z");
    for _ in 0..2 {
        assert_eq!(at(line, jan).0, local(2026, 12, 31, 23, 59, 58));
        assert_eq!(at(line, jan).0, local(2026, 12, 31, 23, 59, 58));
        assert_eq!(at(line, june).0, local(2025, 12, 31, 23, 59, 58));
    }
    // Same second of `now`, another stamp: not the cached one.
    assert_eq!(
        at("Dec 31 23:59:59 h sshd[1]: x", june).0,
        local(2025, 12, 31, 23, 59, 59)
    );
    // Fractions are part of the key.
    let a = at("2026-05-01T10:00:00.25Z x", june).0;
    let b = at("2026-05-01T10:00:00.75Z x", june).0;
    assert_eq!(b.duration_since(a).unwrap(), Duration::from_millis(500));
}

#[test]
fn syslog_feb_29_finds_a_leap_year() {
    let now = utc("2026-03-10T00:00:00Z");
    let (t, _) = at("Feb 29 12:00:00 h x", now);
    assert_eq!(t, local(2024, 2, 29, 12, 0, 0));
}

#[test]
fn ctime_forms() {
    let now = utc("2026-01-01T00:00:00Z");
    let (t, r) = at(
        "[Sun Jun 09 07:57:47 2013] [error] [client 192.0.2.1] x",
        now,
    );
    assert_eq!(t, local(2013, 6, 9, 7, 57, 47));
    assert_eq!(r, 1..25);
    let line = "[Mon Dec 23 07:49:01.981912 2013] [:error] x";
    let (t, r) = at(line, now);
    assert_eq!(
        t,
        local(2013, 12, 23, 7, 49, 1) + Duration::from_nanos(981_912_000)
    );
    assert_eq!(leading_stamp_end(line, &r), Some(34));
    let (t, _) = at(
        "Thu Sep  8 00:39:49 2016 [pid 15019] [guest] FAIL LOGIN",
        now,
    );
    assert_eq!(t, local(2016, 9, 8, 0, 39, 49));
    let (t, _) = at("Jan 31 2024 12:34:56 host x", now);
    assert_eq!(t, local(2024, 1, 31, 12, 34, 56));
}

#[test]
fn iso8601_forms() {
    let now = utc("2026-01-01T00:00:00Z");
    let (t, r) = at("2026-11-21T05:28:31.123456Z  INFO xban::agent: ban", now);
    assert_eq!(t, utc("2026-11-21T05:28:31.123456Z"));
    assert_eq!(r, 0..27);
    let (t, _) = at("2015-04-16T18:02:50.321974+00:00 host sshd[2716]: x", now);
    assert_eq!(t, utc("2015-04-16T18:02:50.321974Z"));
    let (t, _) = at("2019-07-08T17:40:16-04:00 h x", now);
    assert_eq!(t, utc("2019-07-08T21:40:16Z"));
    let (t, _) = at("2019-07-08T17:40:16+0530 h x", now);
    assert_eq!(t, utc("2019-07-08T12:10:16Z"));
    let (t, _) = at("2024-01-31 12:34:56 +0100 x", now);
    assert_eq!(t, utc("2024-01-31T11:34:56Z"));
    // No offset: local time; comma fraction (Python logging).
    let (t, r) = at("2006-02-13 15:52:30,388 fail2ban.actions: x", now);
    assert_eq!(
        t,
        local(2006, 2, 13, 15, 52, 30) + Duration::from_millis(388)
    );
    assert_eq!(r, 0..23);
}

#[test]
fn apache_and_nginx_forms() {
    let now = utc("2026-01-01T00:00:00Z");
    let line = r#"192.0.2.7 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 404 0"#;
    let (t, r) = at(line, now);
    assert_eq!(t, utc("2000-10-10T20:55:36Z"));
    assert_eq!(&line[r.clone()], "10/Oct/2000:13:55:36 -0700");
    assert_eq!(leading_stamp_end(line, &r), None, "not a leading stamp");
    let (t, r) = at("2024/01/31 12:34:56 [error] 1#0: *5 x", now);
    assert_eq!(t, local(2024, 1, 31, 12, 34, 56));
    assert_eq!(r, 0..19);
}

#[test]
fn access_log_date_is_not_taken_from_the_user_field() {
    let now = utc("2026-01-01T00:00:00Z");
    let line = r#"192.0.2.7 - x [01/Jan/2020:00:00:00 +0000] y [21/Nov/2025:05:28:31 +0000] "GET / HTTP/1.1" 404 1"#;
    // A `[` in the user field: the line has no time (the read time is
    // used), never the client's date.
    assert_eq!(parse_time(line, now, None), None);
    // Named explicitly, the format keeps its position rule.
    let dp = DatePattern::parse("apache").unwrap();
    assert_eq!(parse_time(line, now, Some(&dp)), None);
    let line = r#"192.0.2.7 - x y [21/Nov/2025:05:28:31 +0000] "GET /[01/Jan/2020:00:00:00 +0000] HTTP/1.1" 404 1"#;
    assert_eq!(at(line, now).0, utc("2025-11-21T05:28:31Z"));
    let (t, _) = parse_time(line, now, Some(&dp)).unwrap();
    assert_eq!(t, utc("2025-11-21T05:28:31Z"));
    // Not an access log: a service's own line cannot lend the shape.
    for line in [
        r#"sshd[1]: Invalid user [01/Jan/2020:00:00:00 +0000] "x from 192.0.2.7"#,
        r#"myapp: Invalid user [01/Jan/2020:00:00:00 +0000] "x from 192.0.2.7"#,
    ] {
        assert_eq!(parse_time(line, now, None), None, "{line}");
    }
}

#[test]
fn epoch_and_tai64n() {
    let now = utc("2026-01-01T00:00:00Z");
    let (t, r) = at("1700000000.250 host x", now);
    assert_eq!(t, UNIX_EPOCH + Duration::from_millis(1_700_000_000_250));
    assert_eq!(r, 0..14);
    let (t, r) = at("[1700000000] x", now);
    assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    assert_eq!(r, 1..11);
    assert_eq!(leading_stamp_end("[1700000000] x", &r), Some(13));
    // Not at line start, not in brackets: just a number.
    assert!(parse_time("pid 1700000000 x", now, None).is_none());
    let (t, _) = at("@400000004c91b044077a9e94 imap-login: x", now);
    assert_eq!(t, UNIX_EPOCH + Duration::new(0x4c91b044 - 10, 0x077a9e94));
}

#[test]
fn leftmost_wins_and_rejects() {
    let now = utc("2026-01-01T00:00:00Z");
    // Leading blanks do not hide the leading stamp.
    let (t, r) = at("  2024-01-02T03:04:05Z sshd[1]: x", now);
    assert_eq!((t, r), (utc("2024-01-02T03:04:05Z"), 2..22));
    for bad in [
        // A journal line without its own stamp has none: the dates
        // inside are message text.
        "sshd[1]: at 2024-01-02T03:04:05Z and Nov 21 05:28:31",
        "no date here",
        "Nov 32 05:28:31 x",
        "2024-13-01T00:00:00Z",
        "Nov 21 25:00:00",
        "12024-01-01",
    ] {
        assert!(parse_time(bad, now, None).is_none(), "{bad}");
    }
}

#[test]
fn datepattern_named_and_custom() {
    let now = utc("2026-06-01T00:00:00Z");
    // A named format is looked for at the line start only.
    let line = "Nov 21 05:28:31 h 2024-01-02T03:04:05Z";
    let iso = DatePattern::parse("iso8601").unwrap();
    assert!(parse_time(line, now, Some(&iso)).is_none());
    let (t, _) = parse_time("2024-01-02T03:04:05Z h x", now, Some(&iso)).unwrap();
    assert_eq!(t, utc("2024-01-02T03:04:05Z"));
    let anchored = DatePattern::parse("^iso8601").unwrap();
    assert!(parse_time(line, now, Some(&anchored)).is_none());
    let syslog = DatePattern::parse("syslog").unwrap();
    let (t, _) = parse_time(line, now, Some(&syslog)).unwrap();
    assert_eq!(t, local(2025, 11, 21, 5, 28, 31));
    let anchored = DatePattern::parse("^syslog").unwrap();
    let (t, r) = parse_time("[Sun Jun 09 07:57:47 2013] x", now, Some(&anchored)).unwrap();
    assert_eq!((t, r), (local(2013, 6, 9, 7, 57, 47), 1..25));

    let dp = DatePattern::parse("%d.%m.%Y %H:%M:%S%z").unwrap();
    let (t, r) = parse_time("x 31.01.2024 12:34:56+0200 y", now, Some(&dp)).unwrap();
    assert_eq!(t, utc("2024-01-31T10:34:56Z"));
    assert_eq!(r, 2..26);
    let dp = DatePattern::parse("%a %b %d %H:%M:%S.%f %Y").unwrap();
    let (t, _) = parse_time("Tue Jul 22 06:48:30.5 2008 x", now, Some(&dp)).unwrap();
    assert_eq!(
        t,
        local(2008, 7, 22, 6, 48, 30) + Duration::from_millis(500)
    );
    let dp = DatePattern::parse("%b %e %H:%M:%S").unwrap();
    let (t, _) = parse_time("Jan  5 01:02:03 x", now, Some(&dp)).unwrap();
    assert_eq!(t, local(2026, 1, 5, 1, 2, 3));
    let dp = DatePattern::parse("^[%s]").unwrap();
    let (t, _) = parse_time("[1700000000] x", now, Some(&dp)).unwrap();
    assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    assert!(parse_time(" [1700000000] x", now, Some(&dp)).is_none());
}

/// Issue 10 item 3: a client writes a date into a field (user name,
/// URL, HELO) of a line whose real stamp is elsewhere or missing. For
/// every format, the hostile date must never be the line's time.
#[test]
fn client_written_dates_are_not_the_lines_time() {
    let now = utc("2026-11-22T00:00:00Z");
    // Every shape the scanner knows, as a client would write it.
    let fakes = [
        "Jan  1 00:00:00",
        "Sun Jan 01 00:00:00 2017",
        "2017-01-01T00:00:00Z",
        "2017-01-01 00:00:00,000",
        "2017/01/01 00:00:00",
        "01/Jan/2017:00:00:00 +0000",
        "[01/Jan/2017:00:00:00 +0000]",
        "[01/Jan/2017:00:00:00 +0000] \"GET",
        "1483228800",
        "[1483228800]",
        "@4000000058684c000000000",
    ];
    for fake in fakes {
        // No stamp of its own (journal MESSAGE, a stamp-less file): none.
        for line in [
                format!("sshd[1]: Invalid user {fake} from 203.0.113.7 port 22"),
                format!("sshd[1]: Failed password for {fake} from 203.0.113.7 port 22 ssh2"),
                format!("dovecot: imap-login: Disconnected (auth failed, 1 attempts): user=<{fake}>, rip=203.0.113.7"),
                format!("postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[203.0.113.7]: 554 5.7.1 <a@b>: Relay access denied; from=<{fake}> helo=<{fake}>"),
                format!("[error] 1#1: *1 user \"{fake}\": password mismatch, client: 203.0.113.7, server: x"),
            ] {
                for dp in [None, Some("syslog"), Some("iso8601"), Some("apache"), Some("nginx"), Some("epoch")] {
                    let dp = dp.map(|d| DatePattern::parse(d).unwrap());
                    assert_eq!(parse_time(&line, now, dp.as_ref()), None, "{dp:?}: {line}");
                }
            }
        // With a leading stamp, that stamp is the time.
        for (line, expect) in [
                (format!("Nov 21 05:28:31 h sshd[1]: Invalid user {fake} from 203.0.113.7"), local(2026, 11, 21, 5, 28, 31)),
                (format!("2026-11-21T05:28:31Z h sshd[1]: Invalid user {fake} from 203.0.113.7"), utc("2026-11-21T05:28:31Z")),
                (format!("[Sat Nov 21 05:28:31 2026] [error] [client 203.0.113.7] user {fake} not found: /"), local(2026, 11, 21, 5, 28, 31)),
                (format!("2026/11/21 05:28:31 [error] 1#1: *1 user \"{fake}\": password mismatch, client: 203.0.113.7"), local(2026, 11, 21, 5, 28, 31)),
            ] {
                assert_eq!(at(&line, now).0, expect, "{line}");
            }
        // Access log: the date is in its place after the client fields.
        // Apache and nginx escape `"` inside fields, as here.
        let escaped = fake.replace('"', "\\\"");
        let line = format!(
                "203.0.113.7 - {escaped} [21/Nov/2026:05:28:31 +0000] \"GET /{escaped} HTTP/1.1\" 401 5 \"{escaped}\" \"{escaped}\""
            );
        let plain_user = format!(
                "203.0.113.7 - bob [21/Nov/2026:05:28:31 +0000] \"GET /{escaped} HTTP/1.1\" 401 5 \"{escaped}\" \"{escaped}\""
            );
        for dp in [None, Some("apache")] {
            let dp = dp.map(|d| DatePattern::parse(d).unwrap());
            let (t, _) = parse_time(&plain_user, now, dp.as_ref()).unwrap();
            assert_eq!(t, utc("2026-11-21T05:28:31Z"), "{plain_user}");
            // In the user field: the real date, or none at all.
            let got = parse_time(&line, now, dp.as_ref()).map(|(t, _)| t);
            assert!(
                got.is_none() || got == Some(utc("2026-11-21T05:28:31Z")),
                "{got:?}: {line}"
            );
        }
    }
}

/// Found by the time_scan fuzz target: a ten-digit epoch above
/// u32::MAX overflowed (a panic in debug builds, a wrong time in
/// release ones).
#[test]
fn ten_digit_epoch_above_u32_does_not_overflow() {
    let now = utc("2026-01-01T00:00:00Z");
    let crash = b"[8888888817200063 1\x1f\0\0\x07\0\0\0\0]2 x9";
    let line = std::str::from_utf8(crash).unwrap();
    let _ = parse_time(line, now, None);
    let (t, r) = at("[8888888817] x", now);
    assert_eq!(t, UNIX_EPOCH + Duration::from_secs(8_888_888_817));
    assert_eq!(r, 1..11);
    let (t, _) = at("9999999999.5 x", now);
    assert_eq!(t, UNIX_EPOCH + Duration::from_millis(9_999_999_999_500));
}

/// Found by the time_scan fuzz target: non-ASCII text after `@` was
/// sliced inside a character.
#[test]
fn tai64n_with_non_hex_text_is_no_time() {
    let now = utc("2026-01-01T00:00:00Z");
    let crash: &[u8] =
        b"@\xd0\xb2:\x00\x020\x00\x00\x00\x00\x01\x00:\x020\xd0\xb2\x00\x00\x00\x00jjjjjjjjjj";
    let line = std::str::from_utf8(crash).unwrap();
    assert!(parse_time(line, now, None).is_none());
    assert!(parse_time("@+00000004c91b044077a9e94 x", now, None).is_none());
    assert!(parse_time("@40000000\u{e9}c91b044077a9e9 x", now, None).is_none());
}

#[test]
fn datepattern_errors_name_the_fix() {
    let e = DatePattern::parse("%Y-%m-%d %Q").unwrap_err().to_string();
    assert!(e.contains("%Q") && e.contains("%Y"), "{e}");
    let e = DatePattern::parse("%H:%M").unwrap_err().to_string();
    assert!(e.contains("%d together with %m or %b"), "{e}");
    let e = DatePattern::parse("%Y%").unwrap_err().to_string();
    assert!(e.contains("%%"), "{e}");
}

#[test]
fn local_cache_agrees_with_chrono_over_a_year() {
    // Walk a year hour by hour (crossing any DST changes of this
    // machine's zone) and compare the cached conversion with chrono's.
    // The first minute of each hour fills the cache, the others hit it.
    let start = NaiveDate::from_ymd_opt(2025, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    for h in 0..(366 * 24) {
        for m in [0, 30, 59] {
            let ndt = start + chrono::Duration::hours(h) + chrono::Duration::minutes(m);
            let expect = match Local.from_local_datetime(&ndt) {
                LocalResult::Single(d) => d.timestamp(),
                LocalResult::Ambiguous(a, _) => a.timestamp(),
                LocalResult::None => continue,
            };
            assert_eq!(local_to_utc(ndt), Some(expect), "{ndt}");
        }
    }
}

fn fields(
    year: Option<i32>,
    month: u32,
    day: u32,
    hms: (u32, u32, u32),
    offset: Option<i32>,
) -> Fields {
    Fields {
        year,
        month,
        day,
        hour: hms.0,
        min: hms.1,
        sec: hms.2,
        nanos: 5,
        offset,
        epoch: None,
    }
}

/// The day cache gives the uncached path's answer on a log read in
/// order, across a day change, a year change and dates that go back,
/// for written and inferred years, fixed offsets and local time, near
/// `now` (where the time of day decides the year) and invalid dates.
#[test]
fn day_cache_agrees_with_the_uncached_path() {
    let nows = [
        utc("2027-01-01T00:30:00Z"),
        utc("2026-12-31T23:50:00Z"),
        utc("2026-06-01T00:00:00Z"),
        utc("2028-03-01T12:00:00Z"),
        utc("2026-03-29T01:30:00Z"),
    ];
    let days = [
        (12, 30),
        (12, 31),
        (1, 1),
        (1, 2),
        (12, 31),
        (5, 31),
        (6, 1),
        (6, 2),
        (6, 3),
        (6, 1),
        (2, 28),
        (2, 29),
        (3, 1),
        (2, 30),
        (3, 29),
        (10, 25),
        (13, 1),
    ];
    let times = [
        (0, 0, 0),
        (0, 30, 0),
        (1, 59, 59),
        (2, 30, 0),
        (12, 0, 0),
        (23, 59, 60),
        (24, 0, 0),
        (10, 60, 0),
    ];
    let zones = [None, Some(0), Some(3600), Some(-5 * 3600), Some(14 * 3600)];
    let mut checked = 0;
    for now in nows {
        for year in [None, Some(2026), Some(2027)] {
            for zone in zones {
                for (month, day) in days {
                    for hms in times {
                        let f = fields(year, month, day, hms, zone);
                        assert_eq!(
                            f.resolve(now),
                            f.resolve_uncached(now),
                            "{f:?} read at {now:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 3 * 5 * 17 * 8);
}

/// One day plan, two years: near `now` the time of day decides whether
/// a date without a year is this year's (at most a day ahead) or last
/// year's, and lines of the same day on either side of that limit get
/// each its own year, in either order.
#[test]
fn same_day_either_side_of_the_limit() {
    let dp = DatePattern::parse("%b %d %H:%M:%S %z").unwrap();
    let now = utc("2026-06-01T00:00:00Z");
    let at_dp = |line: &str| parse_time(line, now, Some(&dp)).unwrap().0;
    for _ in 0..2 {
        assert_eq!(
            at_dp("Jun 02 00:00:00 +0000 x"),
            utc("2026-06-02T00:00:00Z")
        );
        assert_eq!(
            at_dp("Jun 02 00:00:01 +0000 x"),
            utc("2025-06-02T00:00:01Z")
        );
        assert_eq!(
            at_dp("Jun 02 01:00:01 +0100 x"),
            utc("2025-06-02T00:00:01Z")
        );
        assert_eq!(
            at_dp("Jun 02 00:59:59 +0100 x"),
            utc("2026-06-01T23:59:59Z")
        );
        assert_eq!(
            at_dp("Jun 01 23:00:00 +0000 x"),
            utc("2026-06-01T23:00:00Z")
        );
    }
}

/// A log read in order across the new year, then a line from the day
/// before: each resolves as if read alone.
#[test]
fn a_log_across_new_year_and_back() {
    let now = utc("2027-01-01T06:00:00Z");
    let lines = [
        ("Dec 31 23:59:58 h x", (2026, 12, 31, 23, 59, 58)),
        ("Dec 31 23:59:59 h x", (2026, 12, 31, 23, 59, 59)),
        ("Jan  1 00:00:00 h x", (2027, 1, 1, 0, 0, 0)),
        ("Jan  1 00:00:01 h x", (2027, 1, 1, 0, 0, 1)),
        ("Dec 31 23:59:59 h x", (2026, 12, 31, 23, 59, 59)),
        ("Jan  1 05:00:00 h x", (2027, 1, 1, 5, 0, 0)),
        ("Dec 30 12:00:00 h x", (2026, 12, 30, 12, 0, 0)),
    ];
    for (line, (y, mo, d, h, mi, s)) in lines {
        assert_eq!(at(line, now).0, local(y, mo, d, h, mi, s), "{line}");
    }
    // The same lines read a year later: the cache is keyed by `now`.
    let later = utc("2028-01-01T06:00:00Z");
    assert_eq!(
        at("Dec 31 23:59:59 h x", later).0,
        local(2027, 12, 31, 23, 59, 59)
    );
    assert_eq!(
        at("Jan  1 00:00:00 h x", later).0,
        local(2028, 1, 1, 0, 0, 0)
    );
}

/// `parse_time` in a thread of its own: no cache holds anything yet.
fn fresh(
    line: &str,
    now: SystemTime,
    dp: Option<&DatePattern>,
) -> Option<(SystemTime, Range<usize>)> {
    let (line, dp) = (line.to_string(), dp.cloned());
    std::thread::spawn(move || parse_time(&line, now, dp.as_ref()))
        .join()
        .unwrap()
}

/// The syslog stamp cache answers only for a line with the same bytes as
/// far as the scanner reads (a ctime year, a fraction, the line's end),
/// read in the same second: lines that differ just past the stamp, a
/// shorter line, another `now` and another datepattern all get what a
/// fresh read gives.
#[test]
fn syslog_stamp_cache_reads_what_the_scanner_reads() {
    let now = utc("2026-11-21T12:00:00Z");
    let syslog = DatePattern::parse("syslog").unwrap();
    let iso = DatePattern::parse("iso8601").unwrap();
    let lines = [
        "Jun  9 07:57:47 host sshd[1]: x",
        "Jun  9 07:57:47 host sshd[2]: y",
        "Jun  9 07:57:47 2013 host x",
        "Jun  9 07:57:47 host sshd[1]: x",
        "Jun  9 07:57:47 20134 x",
        "Jun  9 07:57:47.5 host x",
        "Jun  9 07:57:47.25 host x",
        "Jun  9 07:57:47. host x",
        "Jun  9 07:57:47",
        "Jun  9 07:57:47 h",
        "Jun  9 07:57:47 host sshd[1]: x",
        "Jun  9 07:57:4",
        "Jun  9 07:57:48 host x",
        "Sun Jun  9 07:57:47 2013 x",
        "Sun Jun  9 07:57:47 host x",
        "Jun 31 07:57:47 host x",
        "Jun  9 25:57:47 host x",
        "Jun  9 07:57:47 host sshd[1]: x",
        "Jun  9 07:57:47 host sshd[1]: x",
    ];
    let nows = [
        now,
        now + Duration::from_millis(300),
        now + Duration::from_secs(1),
        utc("2013-06-09T00:00:00Z"),
        now,
    ];
    let mut cached = 0;
    for n in nows {
        for dp in [None, Some(&syslog), Some(&iso)] {
            for line in lines {
                let got = parse_time(line, n, dp);
                assert_eq!(got, fresh(line, n, dp), "{line:?} at {n:?} with {dp:?}");
                cached += usize::from(got.is_some());
            }
        }
    }
    assert!(cached > 0);
    // The ctime year after a cached stamp of the same bytes is read.
    assert_eq!(
        at("Jun  9 07:57:47 host x", now).0,
        local(2026, 6, 9, 7, 57, 47)
    );
    let (t, r) = at("Jun  9 07:57:47 2013 x", now);
    assert_eq!((t, r), (local(2013, 6, 9, 7, 57, 47), 0..20));
}
