use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::filter::conn::Connections;
use crate::filter::{FilterDef, FilterError, Host};

fn set(failregex: &[&str], maxlines: usize) -> FilterSet {
    let def = FilterDef {
        failregex: failregex.iter().map(|s| s.to_string()).collect(),
        maxlines: Some(maxlines),
        ..FilterDef::default()
    };
    FilterSet::from_def(&def, None).unwrap()
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn host(m: &LineMatch) -> Option<IpAddr> {
    match m {
        LineMatch::Failure(f) => match f.host {
            Host::Addr(a) => Some(a),
            Host::Name(_) => None,
        },
        _ => None,
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn a_failure_spanning_two_lines_is_found_on_the_second_and_its_lines_leave() {
    let f = set(&[r"^login from <HOST>\nFAILED$"], 2);
    let mut buf = LineBuffer::new();
    assert_eq!(
        host(&buf.match_entry(&f, "login from 198.51.100.7", now(), None)),
        None
    );
    let m = buf.match_entry(&f, "FAILED", now(), None);
    assert_eq!(host(&m), ip("198.51.100.7"));
    assert!(buf.is_empty(), "both matched lines leave the buffer");
    // The same "FAILED" again has nothing before it to pair with.
    assert_eq!(host(&buf.match_entry(&f, "FAILED", now(), None)), None);
}

#[test]
fn maxlines_bounds_how_far_back_a_failure_can_reach() {
    let f = set(&[r"^login from <HOST>\n(?:.*\n)*FAILED$"], 3);
    let mut buf = LineBuffer::new();
    for line in ["login from 198.51.100.7", "noise 1", "noise 2", "FAILED"] {
        assert_eq!(
            host(&buf.match_entry(&f, line, now(), None)),
            None,
            "{line}"
        );
        assert!(buf.len() <= 3);
    }
    let mut buf = LineBuffer::new();
    let mut last = None;
    for line in ["login from 198.51.100.7", "noise 1", "FAILED"] {
        last = host(&buf.match_entry(&f, line, now(), None));
    }
    assert_eq!(last, ip("198.51.100.7"));
}

#[test]
fn lines_a_skiplines_skipped_stay_for_a_later_match() {
    let f = set(
        &[r"^conn=(?P<c>\d+) from <HOST><SKIPLINES>conn=(?P=c) err=49$"],
        10,
    );
    let mut buf = LineBuffer::new();
    let lines = [
        "conn=1 from 198.51.100.1",
        "conn=2 from 203.0.113.2",
        "conn=1 err=49",
        "conn=2 err=49",
    ];
    let got: Vec<_> = lines
        .iter()
        .map(|l| host(&buf.match_entry(&f, l, now(), None)))
        .collect();
    assert_eq!(got, vec![None, None, ip("198.51.100.1"), ip("203.0.113.2")]);
    assert!(buf.is_empty());
}

#[test]
fn a_failure_takes_the_newest_lines_time_and_a_line_without_date_joins() {
    let f = set(&[r"^host app: start <HOST>\n(?:host )?app: denied$"], 2);
    let mut buf = LineBuffer::new();
    buf.match_entry(
        &f,
        "Dec  8 02:00:00 host app: start 198.51.100.9",
        now(),
        None,
    );
    // A line without a date joins whole, and takes the last date a line
    // had (the record's, as fail2ban dates it).
    let m = buf.match_entry(&f, "app: denied", now(), None);
    let LineMatch::Failure(fail) = &m else {
        panic!("{m:?}")
    };
    assert_eq!(
        fail.time,
        m_time(&f.match_line("Dec  8 02:00:00 host x", now()))
    );
    // With no date seen yet, none.
    let mut fresh = LineBuffer::new();
    fresh.match_entry(&f, "host app: start 198.51.100.9", now(), None);
    let m = fresh.match_entry(&f, "app: denied", now(), None);
    assert_eq!(m_time(&m), TimeFound::Missing);
    buf.match_entry(
        &f,
        "Dec  8 02:00:00 host app: start 198.51.100.9",
        now(),
        None,
    );
    let m = buf.match_entry(&f, "Dec  8 02:00:05 host app: denied", now(), None);
    assert_eq!(host(&m), ip("198.51.100.9"));
    let newest = m_time(&f.match_line("Dec  8 02:00:05 host x", now()));
    assert!(matches!(newest, TimeFound::Parsed(_)));
    assert_eq!(m_time(&m), newest);
    let (_, cut) = cut(&f, "Dec  8 02:00:05 host app: denied", now(), None);
    assert_eq!(cut, "host app: denied");
    let journal = now() - Duration::from_secs(30);
    buf.match_entry(&f, "host app: start 198.51.100.9", now(), Some(journal));
    assert!(matches!(
        buf.match_entry(&f, "host app: denied", now(), Some(journal)),
        LineMatch::Failure(_)
    ));
}

fn m_time(m: &LineMatch) -> TimeFound {
    match m {
        LineMatch::NoMatch { time } | LineMatch::Ignored { time, .. } => *time,
        LineMatch::Failure(f) => f.time,
        LineMatch::Connection(c) => c.time,
    }
}

#[test]
fn with_one_line_the_buffer_is_only_the_filter() {
    let f = set(&[r"^bad <HOST>$"], 1);
    let mut buf = LineBuffer::new();
    let line = "bad 198.51.100.3";
    assert_eq!(
        buf.match_entry(&f, line, now(), None),
        f.match_line(line, now())
    );
    assert!(buf.is_empty());
}

#[test]
fn an_ignored_match_also_leaves_the_buffer() {
    let def = FilterDef {
        failregex: vec![r"^try <HOST>\nfail$".into()],
        ignoreregex: vec![r"198\.51\.100\.1\b".into()],
        maxlines: Some(3),
        ..FilterDef::default()
    };
    let f = FilterSet::from_def(&def, None).unwrap();
    let mut buf = LineBuffer::new();
    buf.match_entry(&f, "try 198.51.100.1", now(), None);
    assert!(matches!(
        buf.match_entry(&f, "fail", now(), None),
        LineMatch::Ignored { .. }
    ));
    assert!(buf.is_empty());
}

#[test]
fn connection_state_reads_what_the_buffer_matched() {
    // Two-line failure whose second line names the connection only; the
    // connection's earlier line gave the host.
    let f = set(
        &[
            r"^<F-MLFID>app\[\d+\]: </F-MLFID><F-NOFAIL>hello from <HOST></F-NOFAIL>$",
            r"^<F-MLFID>app\[\d+\]: </F-MLFID>auth\napp: rejected$",
        ],
        2,
    );
    assert!(f.tracks_connections());
    let mut buf = LineBuffer::new();
    let mut conns = Connections::new();
    let mut feed = |line: &str| {
        let m = buf.match_entry(&f, line, now(), None);
        host(&conns.resolve(m, now()))
    };
    assert_eq!(feed("app[7]: hello from 198.51.100.4"), None);
    assert_eq!(feed("app[8]: hello from 203.0.113.5"), None);
    assert_eq!(feed("app[7]: auth"), None);
    assert_eq!(feed("app: rejected"), ip("198.51.100.4"));
}

#[test]
fn maxlines_out_of_range_is_an_error_naming_the_key() {
    for n in [0, MAX_LINES + 1] {
        let def = FilterDef {
            failregex: vec!["^x <HOST>$".into()],
            maxlines: Some(n),
            ..FilterDef::default()
        };
        let e = FilterSet::from_def(&def, None).unwrap_err();
        assert!(matches!(e, FilterError::MaxLines { .. }), "{e}");
        assert!(e.to_string().contains("maxlines"), "{e}");
    }
    let def = FilterDef {
        prefregex: Some("^<F-CONTENT>.+</F-CONTENT>$".into()),
        failregex: vec!["^x <HOST>$".into()],
        maxlines: Some(2),
        ..FilterDef::default()
    };
    let e = FilterSet::from_def(&def, None).unwrap_err();
    assert!(matches!(e, FilterError::MaxLinesPrefregex { .. }), "{e}");
}

#[test]
fn maxlines_reads_from_toml() {
    let def: FilterDef = toml::from_str("failregex = ['^x <HOST>$']\nmaxlines = 4\n").unwrap();
    assert_eq!(FilterSet::from_def(&def, None).unwrap().max_lines(), 4);
    let def: FilterDef = toml::from_str("failregex = ['^x <HOST>$']\n").unwrap();
    assert_eq!(FilterSet::from_def(&def, None).unwrap().max_lines(), 1);
}
