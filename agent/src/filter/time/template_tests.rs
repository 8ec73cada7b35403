use super::*;
use crate::filter::Failure;
use std::time::{Duration, UNIX_EPOCH};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_000_000) // 2026-11-29
}

fn cut<'a>(t: &Templates, line: &'a str) -> Option<(Option<SystemTime>, &'a str, String)> {
    let (time, r) = t.find(line, now())?;
    let joined = format!("{}{}", &line[..r.start], &line[r.end..]);
    Some((time, &line[r], joined))
}

#[test]
fn a_date_in_the_middle_is_cut_and_the_rest_joined() {
    let t = Templates::defaults();
    let (time, date, rest) = cut(
        &t,
        r#"192.0.2.1 - - [07/Dec/2026:10:11:12 +0000] "GET / HTTP/1.1" 401"#,
    )
    .unwrap();
    assert_eq!(date, "07/Dec/2026:10:11:12 +0000");
    assert_eq!(rest, r#"192.0.2.1 - - [] "GET / HTTP/1.1" 401"#);
    assert_eq!(time, Some(UNIX_EPOCH + Duration::from_secs(1_796_638_272)));
}

#[test]
fn a_date_at_the_end_is_cut() {
    let t = Templates::defaults();
    let (time, date, rest) = cut(&t, "login failed from 10.0.0.1 at 2026-12-07 10:11:12Z").unwrap();
    assert_eq!(date, "2026-12-07 10:11:12Z");
    assert_eq!(rest, "login failed from 10.0.0.1 at ");
    assert_eq!(time, Some(UNIX_EPOCH + Duration::from_secs(1_796_638_272)));
}

#[test]
fn a_leading_date_keeps_what_stands_around_it() {
    let t = Templates::defaults();
    let (_, date, rest) = cut(&t, "[Sun Jun 09 07:57:47.123 2013] [error] x").unwrap();
    assert_eq!(date, "Sun Jun 09 07:57:47.123 2013");
    assert_eq!(rest, "[] [error] x");
    let (_, _, rest) = cut(&t, "Nov 21 05:28:31 host sshd[1]: x").unwrap();
    assert_eq!(rest, " host sshd[1]: x");
}

#[test]
fn of_two_dates_the_leading_one_wins() {
    let t = Templates::defaults();
    // The leading date (a line-start form) wins over an earlier-listed
    // form found later in the line.
    let (_, date, rest) = cut(
        &t,
        "Nov 21 05:28:31 host app: user 2026-01-01 00:00:00 failed",
    )
    .unwrap();
    assert_eq!(date, "Nov 21 05:28:31");
    assert_eq!(rest, " host app: user 2026-01-01 00:00:00 failed");
    // With no date at the start, the leftmost one.
    let (_, date, _) = cut(&t, "app: 2026-01-01 00:00:00 then Nov 21 05:28:31").unwrap();
    assert_eq!(date, "2026-01-01 00:00:00");
}

#[test]
fn no_date_and_date_like_numbers_cut_nothing() {
    let t = Templates::defaults();
    assert!(t
        .find("sshd[1]: Failed password for root from 10.0.0.1", now())
        .is_none());
    assert!(t.find("", now()).is_none());
    // Digits inside a longer number are no date (word boundaries), nor is
    // a 12-digit number an epoch.
    assert!(t.find("id=912026-12-07 10:11:12 x", now()).is_none());
    assert!(t.find("token 179600000012345 x", now()).is_none());
    // A version number with colons is no time of day.
    assert!(t.find("v 123:45:67 x", now()).is_none());
}

#[test]
fn strict_directives_refuse_out_of_range_values() {
    let t = Templates::parse("{^LN-BEG}%ExY-%Exm-%Exd %ExH:%ExM:%ExS").unwrap();
    assert!(t.find("2026-12-07 10:11:12 x", now()).is_some());
    assert!(t.find("2026-13-07 10:11:12 x", now()).is_none(), "month 13");
    assert!(t.find("2026-12-07 24:11:12 x", now()).is_none(), "hour 24");
    assert!(
        t.find("2026-12-7 10:11:12 x", now()).is_none(),
        "one-digit day"
    );
    assert!(
        t.find("1999-12-07 10:11:12 x", now()).is_none(),
        "a year before 2000"
    );
    // The plain directives take what the strict ones refuse.
    let t = Templates::parse("{^LN-BEG}%Y-%m-%d %H:%M:%S").unwrap();
    assert!(t.find("2026-12-7 10:11:12 x", now()).is_some());
}

#[test]
fn ln_beg_allows_two_non_word_bytes_before_the_date() {
    let t = Templates::parse("{^LN-BEG}").unwrap();
    let (_, date, rest) = cut(&t, "[2026-12-07 10:11:12] x").unwrap();
    assert_eq!((date, rest.as_str()), ("2026-12-07 10:11:12", "[] x"));
    assert!(t.find("<<<2026-12-07 10:11:12 x", now()).is_none());
    assert!(t.find("host 2026-12-07 10:11:12 x", now()).is_none());
}

#[test]
fn date_inside_a_template_tries_each_default_form_there() {
    let t = Templates::parse(r"^<\d+>\d+\s+{DATE}").unwrap();
    let (_, date, rest) = cut(&t, "<13>1 2026-12-07T10:11:12.5+01:00 host app: x").unwrap();
    // No group of its own: the whole match, prefix included, is cut.
    assert_eq!(date, "<13>1 2026-12-07T10:11:12.5+01:00");
    assert_eq!(rest, " host app: x");
    let t = Templates::parse(r"^[^\[]*\[({DATE})").unwrap();
    let (_, date, rest) = cut(&t, "srv [07/Dec/2026:10:11:12 +0000] x").unwrap();
    assert_eq!(date, "07/Dec/2026:10:11:12 +0000");
    assert_eq!(rest, "srv [] x");
}

#[test]
fn epoch_forms() {
    let t = Templates::parse("EPOCH").unwrap();
    let (time, date, _) = cut(&t, "1796638272.250 x").unwrap();
    assert_eq!(date, "1796638272.250");
    assert_eq!(
        time,
        Some(UNIX_EPOCH + Duration::from_millis(1_796_638_272_250))
    );
    let (_, date, _) = cut(&t, "type=USER_AUTH msg=audit(1796638272.250:42): x").unwrap();
    assert_eq!(date, "1796638272.250");
    let t = Templates::parse("LEPOCH").unwrap();
    let (time, _, _) = cut(&t, "1796638272250 x").unwrap();
    assert_eq!(
        time,
        Some(UNIX_EPOCH + Duration::from_millis(1_796_638_272_250))
    );
    let t = Templates::parse(r"^\[{EPOCH}\]").unwrap();
    let (_, date, rest) = cut(&t, "[1796638272] x").unwrap();
    assert_eq!((date, rest.as_str()), ("[1796638272]", " x"));
    let t = Templates::parse("{^LN-BEG}TAI64N").unwrap();
    assert!(t.find("@400000006a5b0d9000000000 x", now()).is_some());
}

#[test]
fn several_patterns_are_tried_in_turn() {
    let t = Templates::parse("^(?:%Y-)?%m-%d[ T]%H:%M:%S(?:\\.%f)?\n{^LN-BEG}").unwrap();
    let (_, date, _) = cut(&t, "12-07 10:11:12 x").unwrap();
    assert_eq!(date, "12-07 10:11:12");
    let (_, date, _) = cut(&t, "Dec  7 10:11:12 x").unwrap();
    assert_eq!(date, "Dec  7 10:11:12");
    assert!(Templates::parse("{NONE}")
        .unwrap()
        .find("2026-12-07 10:11:12", now())
        .is_none());
}

#[test]
fn a_repeated_separator_is_spelled_out() {
    let t = Templates::parse(r"{^LN-BEG}%ExY(?P<_sep>[-/.])%m(?P=_sep)%d[T ]%H:%M:%S").unwrap();
    assert!(t.find("2026-12-07 10:11:12 x", now()).is_some());
    assert!(t.find("2026/12/07 10:11:12 x", now()).is_some());
    assert!(t.find("2026.12.07 10:11:12 x", now()).is_some());
    assert!(t.find("2026-12/07 10:11:12 x", now()).is_none());
}

#[test]
fn twelve_hour_clock_and_names() {
    let t = Templates::parse("%b %d, %ExY %I:%M:%S %p").unwrap();
    let (time, _, _) = cut(&t, "Dec 07, 2026 10:11:12 PM x").unwrap();
    let (t2, _, _) = cut(
        &Templates::parse("%ExY-%m-%d %H:%M:%S").unwrap(),
        "2026-12-07 22:11:12 x",
    )
    .unwrap();
    assert_eq!(time, t2);
}

#[test]
fn bad_patterns_say_what_to_fix() {
    let e = Templates::parse("%ExQ").unwrap_err();
    assert!(e.contains("%ExQ") && e.contains("%ExY"), "{e}");
    let e = Templates::parse("%Y-%m-%d %q").unwrap_err();
    assert!(e.contains("%q"), "{e}");
    let e = Templates::parse(r"(?P<s>\d)%m(?P=s)%d").unwrap_err();
    assert!(e.contains("back-references"), "{e}");
    assert!(Templates::parse("  \n ").is_err());
}

/// The filter engine under `date_cut = "anywhere"`: the failregexes see
/// the line with the date's own text cut, wherever it stood.
#[test]
fn a_filter_with_the_anywhere_cut_matches_what_fail2ban_leaves() {
    use crate::filter::time::DateCut;
    use crate::filter::{FilterDef, FilterSet, LineMatch, TimeFound};
    let def = |fail: &str, date: Option<&str>| FilterDef {
        failregex: vec![fail.into()],
        datepattern: date.map(String::from),
        date_cut: DateCut::Anywhere,
        ..FilterDef::default()
    };
    let set = FilterSet::from_def(&def(r#"^<HOST> - \S+ \[\] "GET /admin"#, None), None).unwrap();
    match set.match_line(
        r#"198.51.100.7 - bob [07/Dec/2026:10:11:12 +0000] "GET /admin HTTP/1.1""#,
        now(),
    ) {
        LineMatch::Failure(f) => {
            assert_eq!(f.host.to_string(), "198.51.100.7");
            assert_eq!(
                f.time,
                TimeFound::Parsed(UNIX_EPOCH + Duration::from_secs(1_796_638_272))
            );
        }
        other => panic!("{other:?}"),
    }
    // A date at the end; and a line without a date is matched whole.
    let set = FilterSet::from_def(&def(r"^fail from <HOST> at $", None), None).unwrap();
    assert!(matches!(
        set.match_line("fail from 198.51.100.7 at 2026-12-07 10:11:12", now()),
        LineMatch::Failure(_)
    ));
    assert!(matches!(
        set.match_line("fail from 198.51.100.7 at ", now()),
        LineMatch::Failure(Failure {
            time: TimeFound::Missing,
            ..
        })
    ));
    // A client-written date after the line's own leading one is text.
    let set = FilterSet::from_def(
        &def(
            r"^ host app: user (?P<u>.+) from <HOST>$",
            Some("{^LN-BEG}"),
        ),
        None,
    )
    .unwrap();
    match set.match_line(
        "2026-12-07 10:11:12 host app: user 2001-01-01 00:00:00 from 198.51.100.7",
        now(),
    ) {
        LineMatch::Failure(f) => match f.time {
            // 2026-12-07 local, not 2001.
            TimeFound::Parsed(t) => {
                assert!(t > UNIX_EPOCH + Duration::from_secs(1_796_500_000), "{t:?}")
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // A journal entry has its own time: no date is cut from its text.
    let set = FilterSet::from_def(&def(r"^fail at  from <HOST>$", None), None).unwrap();
    let entry = "fail at 2026-12-07 10:11:12 from 198.51.100.7";
    assert!(matches!(
        set.match_line(entry, now()),
        LineMatch::Failure(_)
    ));
    assert!(matches!(
        set.match_entry(entry, now(), false, Some(now())),
        LineMatch::NoMatch { .. }
    ));
    // A bad datepattern names the key and what to write.
    let e = FilterSet::from_def(&def("^x <HOST>", Some("%ExQ")), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("datepattern") && e.contains("%ExY"), "{e}");
}

#[test]
fn word_edges_can_be_lifted() {
    // By default a date glued to a word is no date ...
    let t = Templates::parse("%Y-%m-%d %H:%M:%S").unwrap();
    assert!(t.find("id2026-12-07 10:11:12", now()).is_none());
    // ... `**` lifts the check on its side, `{UNB}` on both.
    let t = Templates::parse("**%Y-%m-%d %H:%M:%S").unwrap();
    assert!(t.find("id2026-12-07 10:11:12", now()).is_some());
    let t = Templates::parse("{UNB}%Y-%m-%d %H:%M:%S").unwrap();
    let (_, date, rest) = cut(&t, "id2026-12-07 10:11:12x").unwrap();
    assert_eq!((date, rest.as_str()), ("2026-12-07 10:11:12", "idx"));
}
