//! The spans found by DFA passes ([`split`](super::split)) are the
//! backtracker's, group for group, or the plan declines and the backtracker
//! runs.

use super::tests::{general, hostile_variants, now};
use super::*;

/// The text a failregex sees: the line with its leading timestamp cut.
fn cut<'a>(fs: &FilterSet, line: &'a str) -> &'a str {
    let line = line.trim_end_matches(['\n', '\r']);
    match time::parse_time(line, now(), fs.datepattern.as_ref()) {
        Some((_, r)) => time::leading_stamp_end(line, &r).map_or(line, |e| &line[e..]),
        None => line,
    }
}

/// How a line went through the split plan.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// No failregex matched, or the regex has no plan.
    NotPlanned,
    /// The plan declined: the backtracker decides.
    Declined,
    /// The plan gave the spans, and they are the backtracker's.
    Agreed,
}

/// Runs the set's DFA over `text`, then both the plan and the backtracker
/// for the failregex it names, and checks that every host and user span and
/// the whole match agree when the plan answers.
fn compare(fs: &FilterSet, text: &str, what: &str) -> Walk {
    let Some(m) = fs
        .first
        .as_ref()
        .and_then(|f| f.find(text, 0, false).unwrap())
    else {
        return Walk::NotPlanned;
    };
    let fr = &fs.fails[m.pattern().as_usize()];
    let Some(plan) = fr.split_plan() else {
        return Walk::NotPlanned;
    };
    let mut back = vec![None; fr.slots];
    let input = Input::new(text).span(0..m.offset()).anchored(Anchored::Yes);
    fr.regex
        .search_slots(&input, &mut back)
        .expect("the set's match is the failregex's");
    let mut split = vec![None; fr.slots];
    if !plan.spans(text, m.offset(), &mut split) {
        if std::env::var_os("XBAN_SPLIT_DEBUG").is_some() {
            eprintln!("DECLINED {what}: {text}");
        }
        return Walk::Declined;
    }
    let groups = fr
        .hosts
        .iter()
        .map(|h| h.0)
        .chain(fr.fields.all())
        .chain([0]);
    for g in groups {
        assert_eq!(
            split[2 * g..2 * g + 2],
            back[2 * g..2 * g + 2],
            "group {g} of failregex {} ({what}) on {text:?}",
            m.pattern().as_usize()
        );
    }
    Walk::Agreed
}

/// Every built-in filter and mode, on its samples and their hostile
/// variants: the plan agrees with the backtracker wherever it answers, and
/// it answers for most failures (else the speed-up is gone). It declines
/// on greedy `.*` users (dovecot), lazy users of a narrower class (nginx)
/// and on many hostile variants: decoys and glued addresses.
#[test]
fn split_spans_are_the_backtrackers_on_every_builtin() {
    let (mut agreed, mut declined) = (0, 0);
    for name in builtin::builtin_names() {
        let def = builtin::builtin(name).unwrap();
        let mut modes: Vec<Option<&str>> = def.modes.keys().map(|m| Some(m.as_str())).collect();
        modes.push(None);
        for mode in modes {
            let fs = FilterSet::from_def(&def, mode).unwrap();
            let what = format!("{name} {mode:?}");
            for line in builtin::tests::sample(name)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            {
                for v in hostile_variants(line) {
                    match compare(&fs, cut(&fs, &v), &what) {
                        Walk::Agreed => agreed += 1,
                        Walk::Declined => declined += 1,
                        Walk::NotPlanned => {}
                    }
                    assert_eq!(fs.match_line(&v, now()), general(&fs, &v), "{what}: {v:?}");
                }
            }
        }
    }
    assert!(agreed > 1000, "the plan answered only {agreed} times");
    assert!(
        declined < agreed / 2,
        "the plan declined {declined} times against {agreed} answers"
    );
}

/// Shapes the built-ins do not have: greedy and lazy groups that must give
/// back text, optional and alternative pieces whose first path is not the
/// one that completes, two hosts, a user after the host, word boundaries,
/// case-insensitive text, `(?s)`, a lazy group at the end.
#[test]
fn split_spans_agree_on_tricky_shapes() {
    let patterns = [
        r"^a (?:b )?<F-USER>.*?</F-USER> from <HOST>(?: port \d+)?$",
        r"^a <F-USER>.*</F-USER> from <HOST>(?: port \d+)?",
        r"^(?:a|a b) <HOST> (?:x|x y)$",
        r"^a (?:\S+ )?<HOST>(?: \S+)?$",
        r"^a <HOST> <ADDR>$",
        r"^a <HOST>(?:\.\d+)? user <F-USER>$",
        r"^(?i)A from\b <HOST>\b",
        r"^a <F-USER>\S+?</F-USER> <HOST>$",
        r"^a (?s:<F-USER>.*?</F-USER>) <HOST>$",
        r"^a <HOST> <F-USER>.*?</F-USER>",
        r"^a <HOST>:?\d*$",
        r"^a <F-USER>(?:x|xy)</F-USER>y? <HOST>$",
        // The text before the first group (`x `) occurs more than once.
        r"^(?:a|b) x (?:y )?<F-USER>.*?</F-USER> from <HOST>$",
        r"^(?:a|b)(?: x)+ <F-USER>\S+</F-USER> from <HOST>$",
    ];
    let lines = [
        "a bob from 192.0.2.1",
        "a b bob from 192.0.2.1 port 22",
        "a b from 192.0.2.1 from 192.0.2.2 port 22",
        "a x from 192.0.2.1 port 22 from 192.0.2.2",
        "a b 192.0.2.3 x y",
        "a 192.0.2.3 x",
        "a b 192.0.2.4",
        "a b 192.0.2.4 c",
        "a 192.0.2.4 c",
        "a host.example 2001:db8::1",
        "a 192.0.2.5.7 user eve",
        "a 192.0.2.5 user eve",
        "A FROM 192.0.2.6",
        "a from 192.0.2.6x",
        "a bob 2001:db8::2",
        "a b\nc 192.0.2.8",
        "a 192.0.2.9 trailing user text",
        "a 2001:db8::3:44",
        "a 192.0.2.10:8080",
        "a xy 192.0.2.11",
        "a xyy 192.0.2.11",
        "a ::ffff:192.0.2.12 fe80::1%eth0",
        "a é from 192.0.2.13",
        "a x y x from 192.0.2.20",
        "b x a x y from 192.0.2.21",
        "a x x x bob from 192.0.2.22",
        "a x y bob from 192.0.2.23",
    ];
    let mut agreed = 0;
    for (i, p) in patterns.iter().enumerate() {
        let fs = FilterSet::compile(&[p.to_string()], &[], None).unwrap();
        assert!(fs.first.is_some(), "{p}");
        for line in lines {
            for v in hostile_variants(line) {
                agreed += usize::from(compare(&fs, &v, p) == Walk::Agreed);
                assert_eq!(fs.match_line(&v, now()), general(&fs, &v), "{i} {p}: {v:?}");
            }
        }
    }
    assert!(agreed > 50, "the plan answered only {agreed} times");
}

/// Which regexes get a plan: host and user groups must be items of the
/// top-level concatenation.
#[test]
fn split_is_planned_only_for_top_level_groups() {
    let planned = |p: &str| {
        let fs = FilterSet::compile(&[p.to_string()], &[], None).unwrap();
        fs.fails[0].split_plan().is_some()
    };
    assert!(planned(r"^a <F-USER>.*?</F-USER> from <HOST>$"));
    assert!(planned(r"^<HOST>"));
    assert!(!planned(r"^a (?:<HOST>|b <HOST>)$"));
    assert!(!planned(r"^a (?:x <HOST>)?$ <HOST>"));
    assert!(!planned(r"^a (?:<F-USER>\S+</F-USER> )?<HOST>$"));
}

/// A line two failregexes match: the first in list order wins, with its
/// own spans, and an address that does not validate hands over to the next.
#[test]
fn a_line_two_failregexes_match_takes_the_first() {
    let fs = FilterSet::compile(
        &[
            r"^login <F-USER>\S+</F-USER> from <ADDR>".to_string(),
            r"^login \S+ from \S+ via <HOST>$".to_string(),
        ],
        &[],
        None,
    )
    .unwrap();
    let LineMatch::Failure(f) = fs.match_line("login bob from 192.0.2.1 via 192.0.2.2", now())
    else {
        panic!()
    };
    assert_eq!(
        (f.regex, f.user.as_deref(), f.host),
        (0, Some("bob"), Host::Addr("192.0.2.1".parse().unwrap()))
    );
    let LineMatch::Failure(f) = fs.match_line("login bob from 999.1.1.1 via 192.0.2.2", now())
    else {
        panic!()
    };
    assert_eq!(
        (f.regex, f.host),
        (1, Host::Addr("192.0.2.2".parse().unwrap()))
    );
    for line in [
        "login bob from 192.0.2.1 via 192.0.2.2",
        "login bob from 999.1.1.1 via 192.0.2.2",
    ] {
        assert_eq!(compare(&fs, line, "two"), Walk::Agreed);
    }
}
