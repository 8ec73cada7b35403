//! Tests of the compiled matcher (tag expansion, validation, modes,
//! ignoreregex, prefilter equivalence).

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, UNIX_EPOCH};

pub(super) fn now() -> SystemTime {
    // 2026-11-22T00:00:00Z
    UNIX_EPOCH + Duration::from_secs(1_795_305_600)
}

fn set(fail: &[&str], ignore: &[&str]) -> FilterSet {
    let f: Vec<String> = fail.iter().map(|s| s.to_string()).collect();
    let i: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
    FilterSet::compile(&f, &i, None).unwrap()
}

fn host_of(fs: &FilterSet, line: &str) -> Option<Host> {
    match fs.match_line(line, now()) {
        LineMatch::Failure(f) => Some(f.host),
        _ => None,
    }
}

fn v4(s: &str) -> Option<Host> {
    Some(Host::Addr(IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())))
}

fn v6(s: &str) -> Option<Host> {
    Some(Host::Addr(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())))
}

#[test]
fn error_messages_name_place_and_fix() {
    let e = FilterSet::compile(
        &["x <HOST>".into(), "y <HOST>".into(), "no tag".into()],
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "failregex[2] has no <HOST> or <ADDR> tag: add one so xban knows whom to ban"
    );
    let e = FilterSet::compile(&["(unclosed <HOST>".into()], &[], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("failregex[0] is not a valid regex") && e.contains("fix the pattern"),
        "{e}"
    );
    let e = FilterSet::compile(&["<HOST>".into()], &["[".into()], None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("ignoreregex[0] is not a valid regex"), "{e}");
    let e = FilterSet::compile(&[], &[], None).unwrap_err().to_string();
    assert!(e.contains("add at least one"), "{e}");
    let e = FilterSet::compile(&["<HOST>".into()], &[], Some("%Q"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("%Q"), "{e}");
}

#[test]
fn unknown_mode_lists_known_modes() {
    let def = builtin::builtin("sshd").unwrap();
    let e = FilterSet::from_def(&def, Some("paranoid"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "unknown mode \"paranoid\": use one of aggressive, ddos, normal or leave mode unset"
    );
    let plain = FilterDef {
        failregex: vec!["from <HOST>".into()],
        ..Default::default()
    };
    let e = FilterSet::from_def(&plain, Some("normal"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no modes"), "{e}");
}

#[test]
fn modes_add_to_the_base_list() {
    let mut def = FilterDef {
        failregex: vec!["^base <HOST>$".into()],
        ..Default::default()
    };
    def.modes.insert(
        "extra".into(),
        FilterMode {
            failregex: vec!["^more <HOST>$".into()],
            ignoreregex: vec![],
        },
    );
    def.modes.insert("plain".into(), FilterMode::default());
    def.default_mode = Some("plain".into());
    let base = FilterSet::from_def(&def, None).unwrap();
    assert_eq!(base.failregex_count(), 1);
    assert_eq!(host_of(&base, "more 192.0.2.1"), None);
    let extra = FilterSet::from_def(&def, Some("extra")).unwrap();
    assert_eq!(extra.failregex_count(), 2);
    assert_eq!(host_of(&extra, "base 192.0.2.1"), v4("192.0.2.1"));
    match extra.match_line("more 192.0.2.2", now()) {
        LineMatch::Failure(f) => assert_eq!(f.regex, 1),
        other => panic!("{other:?}"),
    }
    // Errors inside a mode say which mode.
    def.modes.insert(
        "broken".into(),
        FilterMode {
            failregex: vec!["no tag".into()],
            ignoreregex: vec![],
        },
    );
    let e = def.validate().unwrap_err().to_string();
    assert!(
        e.contains("mode \"broken\"") && e.contains("failregex[1] has no <HOST>"),
        "{e}"
    );
}

#[test]
fn syslog_and_journal_lines_give_the_same_failure() {
    let def = builtin::builtin("sshd").unwrap();
    let fs = FilterSet::from_def(&def, None).unwrap();
    let msg = "sshd[4242]: Failed password for invalid user admin from 203.0.113.7 port 50022 ssh2";
    let syslog = format!("Nov 21 05:28:31 bastion {msg}");
    let (LineMatch::Failure(a), LineMatch::Failure(b)) = (
        fs.match_line(&syslog, now()).alone(now()),
        fs.match_line(msg, now()).alone(now()),
    ) else {
        panic!("both must match");
    };
    assert_eq!(a.host, b.host);
    assert_eq!(a.host, v4("203.0.113.7").unwrap());
    assert_eq!(a.user.as_deref(), Some("admin"));
    assert_eq!(a.regex, b.regex);
    let TimeFound::Parsed(t) = a.time else {
        panic!("time")
    };
    let (expect, _) = time::parse_time("Nov 21 05:28:31", now(), None).unwrap();
    assert_eq!(t, expect);
    assert_eq!(b.time, TimeFound::Missing);
}

#[test]
fn ipv6_in_every_textual_form() {
    let fs = set(&[r"^fail from <HOST> end$", r"^addr <ADDR>:\d+$"], &[]);
    assert_eq!(
        host_of(&fs, "fail from 2001:db8:0:0:1:0:0:1 end"),
        v6("2001:db8::1:0:0:1")
    );
    assert_eq!(host_of(&fs, "fail from 2001:db8::1 end"), v6("2001:db8::1"));
    assert_eq!(host_of(&fs, "fail from ::1 end"), v6("::1"));
    assert_eq!(
        host_of(&fs, "fail from [2001:db8::7] end"),
        v6("2001:db8::7")
    );
    assert_eq!(host_of(&fs, "fail from fe80::1%eth0 end"), v6("fe80::1"));
    assert_eq!(
        host_of(&fs, "fail from 64:ff9b::192.0.2.33 end"),
        v6("64:ff9b::c000:221")
    );
    assert_eq!(
        host_of(&fs, "fail from ::ffff:198.51.100.9 end"),
        v4("198.51.100.9")
    );
    assert_eq!(
        host_of(&fs, "fail from AAAA:bbbb:cccc:1234::1:1 end"),
        v6("aaaa:bbbb:cccc:1234::1:1")
    );
    assert_eq!(host_of(&fs, "addr [2001:db8::9]:443"), v6("2001:db8::9"));
    assert_eq!(host_of(&fs, "addr 2001:db8::9:51548"), v6("2001:db8::9"));
    assert_eq!(host_of(&fs, "addr 192.0.2.5:22"), v4("192.0.2.5"));
}

#[test]
fn bracketed_ipv4() {
    let fs = set(
        &[
            r"^call \(TCP:<HOST>:\d+\)$",
            r"^client <ADDR> denied$",
            r"^ip4 <IP4>$",
        ],
        &[],
    );
    assert_eq!(
        host_of(&fs, "call (TCP:[198.51.100.4]:61470)"),
        v4("198.51.100.4")
    );
    assert_eq!(
        host_of(&fs, "call (TCP:198.51.100.4:61470)"),
        v4("198.51.100.4")
    );
    assert_eq!(
        host_of(&fs, "client [203.0.113.8] denied"),
        v4("203.0.113.8")
    );
    assert_eq!(host_of(&fs, "ip4 [203.0.113.9]"), v4("203.0.113.9"));
    // The opening bracket alone too, as in fail2ban (a `\b` after the
    // address leaves the `]` out) ...
    assert_eq!(
        host_of(&fs, "client [203.0.113.8 denied"),
        v4("203.0.113.8")
    );
    assert_eq!(host_of(&fs, "client 203.0.113.8] denied"), None);
    let fs = set(&[r"^- <ADDR>\b"], &[]);
    assert_eq!(
        host_of(&fs, "- [127.0.0.1] File does not exist"),
        v4("127.0.0.1")
    );
    let fs = set(&[r"^from <HOST>\] x$"], &[]);
    assert_eq!(host_of(&fs, "from 198.51.100.5] x"), v4("198.51.100.5"));
    // ... but not around IPv6, where a lone bracket is a cut address.
    let fs = set(&[r"^client <ADDR> denied$"], &[]);
    assert_eq!(host_of(&fs, "client [2001:db8::1 denied"), None);
}

#[test]
fn hostnames_only_through_host() {
    let fs = set(&[r"^a <HOST>$", r"^b <ADDR>$"], &[]);
    assert_eq!(
        host_of(&fs, "a Mail.Example.com"),
        Some(Host::Name("mail.example.com".into()))
    );
    assert_eq!(host_of(&fs, "b mail.example.com"), None);
    assert_eq!(host_of(&fs, "b 192.0.2.1"), v4("192.0.2.1"));
}

#[test]
fn address_boundaries_are_strict() {
    let fs = set(&[r"<ADDR>"], &[]);
    assert_eq!(host_of(&fs, "x 1.2.3.4.5 y"), None);
    assert_eq!(host_of(&fs, "x 1.2.3.4x y"), None);
    assert_eq!(host_of(&fs, "x 11.2.3.4"), v4("11.2.3.4"));
    assert_eq!(host_of(&fs, "x a1.2.3.4"), None);
    assert_eq!(host_of(&fs, "x 999.2.3.4"), None);
    let fs = set(&[r"from <HOST>"], &[]);
    assert_eq!(host_of(&fs, "from 1.2.3.4.5"), None);
    assert_eq!(host_of(&fs, "from 1.2.3.4x"), None);
    assert_eq!(host_of(&fs, "from 1.2.3.4."), v4("1.2.3.4"));
    // A pattern that spells out the mapped prefix captures the IPv4
    // address it maps (ejabberd's `from ::FFFF:192.0.2.3`); a prefix of
    // other hex groups is still a cut IPv6 address.
    let fs = set(&[r"from (?:::FFFF:)?<HOST>:"], &[]);
    assert_eq!(host_of(&fs, "from ::FFFF:1.2.3.4: x"), v4("1.2.3.4"));
    let fs = set(&[r"from \S*:<ADDR>$"], &[]);
    assert_eq!(host_of(&fs, "from 2001:db8::ffff:1.2.3.4"), None);
}

#[test]
fn invalid_capture_retries_later_in_the_line() {
    // An unanchored pattern: the first candidate is a time, not an address.
    let fs = set(&[r"<ADDR>"], &[]);
    assert_eq!(
        host_of(&fs, "at 05:28:31 from 192.0.2.44"),
        v4("192.0.2.44")
    );
    let fs = set(&[r"client <ADDR>\b"], &[]);
    assert_eq!(
        host_of(&fs, "client 300.1.1.1 then client 192.0.2.45"),
        v4("192.0.2.45")
    );
}

#[test]
fn user_capture_forms() {
    let fs = set(
        &[
            r"^for <F-USER> from <HOST>$",
            r"^user <F-USER>.*</F-USER> at <HOST>$",
        ],
        &[],
    );
    let LineMatch::Failure(f) = fs.match_line("for root from 192.0.2.1", now()) else {
        panic!()
    };
    assert_eq!(f.user.as_deref(), Some("root"));
    let LineMatch::Failure(f) = fs.match_line("user a b c at 192.0.2.2", now()) else {
        panic!()
    };
    assert_eq!((f.regex, f.user.as_deref()), (1, Some("a b c")));
}

#[test]
fn ignoreregex_vetoes_failures_only() {
    let fs = set(
        &[r"^miss <HOST> (\S+)$"],
        &[r"robots\.txt$", r"favicon\.ico$"],
    );
    assert_eq!(
        fs.match_line("miss 192.0.2.1 /favicon.ico", now()),
        LineMatch::Ignored {
            regex: 1,
            time: TimeFound::Missing
        }
    );
    assert_eq!(
        host_of(&fs, "miss 192.0.2.1 /wp-login.php"),
        v4("192.0.2.1")
    );
    // Matching only an ignoreregex is not "ignored": nothing failed.
    assert_eq!(
        fs.match_line("GET /robots.txt", now()),
        LineMatch::NoMatch {
            time: TimeFound::Missing
        }
    );
}

#[test]
fn first_failregex_in_order_wins() {
    let fs = set(&[r"^x (\S+) <HOST>$", r"^x <HOST> (\S+)$"], &[]);
    let LineMatch::Failure(f) = fs.match_line("x 192.0.2.1 192.0.2.2", now()) else {
        panic!()
    };
    assert_eq!((f.regex, f.host), (0, v4("192.0.2.2").unwrap()));
}

#[test]
fn leading_timestamp_is_cut_before_matching() {
    let fs = set(&[r"^sshd\[\d+\]: bad <HOST>$"], &[]);
    assert_eq!(
        host_of(&fs, "2026-11-21T05:28:31.5+01:00 sshd[1]: bad 192.0.2.3"),
        v4("192.0.2.3")
    );
    assert_eq!(
        host_of(&fs, "[1700000000] sshd[1]: bad 192.0.2.3"),
        v4("192.0.2.3")
    );
    // A date that is not the leading field stays in the text.
    let fs = set(&[r#"^<HOST> - \S+ \[[^\]]+\] "GET "#], &[]);
    assert_eq!(
        host_of(
            &fs,
            r#"192.0.2.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 404"#
        ),
        v4("192.0.2.4")
    );
}

#[test]
fn datepattern_overrides_detection() {
    let fs = FilterSet::compile(&["bad <HOST>".into()], &[], Some("%d.%m.%Y %H:%M:%S%z")).unwrap();
    let LineMatch::Failure(f) = fs.match_line(
        "Nov 21 05:28:31 x 31.01.2024 10:00:00+0000 bad 192.0.2.8",
        now(),
    ) else {
        panic!()
    };
    assert_eq!(
        f.time,
        TimeFound::Parsed(UNIX_EPOCH + Duration::from_secs(1_706_695_200))
    );
}

#[test]
fn crlf_is_trimmed() {
    let fs = set(&[r"^bad <HOST>$"], &[]);
    assert_eq!(host_of(&fs, "bad 192.0.2.9\r\n"), v4("192.0.2.9"));
}

/// The prefilter and the set must not change results: compare with running
/// every failregex alone on lines that exercise each of them.
#[test]
fn prefilter_and_set_agree_with_plain_regexes() {
    for name in builtin::builtin_names() {
        let def = builtin::builtin(name).unwrap();
        let modes: Vec<Option<&str>> = if def.modes.is_empty() {
            vec![None]
        } else {
            def.modes.keys().map(|m| Some(m.as_str())).collect()
        };
        let sample = builtin::tests::sample(name);
        for mode in modes {
            let (fail, _) = def.lists(mode).unwrap();
            let fs = FilterSet::compile(&fail, &[], def.datepattern.as_deref()).unwrap();
            let singles: Vec<FilterSet> = fail
                .iter()
                .map(|r| FilterSet::compile(std::slice::from_ref(r), &[], None).unwrap())
                .collect();
            for line in sample
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            {
                let combined = match fs.match_line(line, now()) {
                    LineMatch::Failure(f) => Some((f.regex, f.host)),
                    _ => None,
                };
                let brute =
                    singles
                        .iter()
                        .enumerate()
                        .find_map(|(i, s)| match s.match_line(line, now()) {
                            LineMatch::Failure(f) => Some((i, f.host)),
                            _ => None,
                        });
                assert_eq!(combined, brute, "{name} {mode:?}: {line}");
            }
        }
    }
}

/// Soundness of the literal prefilter: whenever a failregex matches the
/// text `match_line` hands it, the prefilter must have let the text through.
#[test]
fn prefilter_never_rejects_a_matching_line() {
    let mut matched = 0;
    for name in builtin::builtin_names() {
        let def = builtin::builtin(name).unwrap();
        let sample = builtin::tests::sample(name);
        let mut lists = vec![def.failregex.clone()];
        lists.extend(def.modes.values().map(|m| m.failregex.clone()));
        for list in lists.into_iter().filter(|l| !l.is_empty()) {
            let fs = FilterSet::compile(&list, &[], None).unwrap();
            for line in sample
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            {
                let text = match time::parse_time(line, now(), None) {
                    Some((_, r)) => time::leading_stamp_end(line, &r).map_or(line, |e| &line[e..]),
                    None => line,
                };
                for (fr, src) in fs.fails.iter().zip(&list) {
                    if fr.regex.is_match(text) {
                        matched += 1;
                        assert!(
                            fs.prefilter.may_match(text),
                            "{name}: prefilter rejected {text:?} for {src}"
                        );
                    }
                }
            }
        }
    }
    assert!(matched > 150, "only {matched} matches exercised");
}

#[test]
fn prefilter_is_active_for_builtins() {
    for name in builtin::builtin_names() {
        let fs = FilterSet::from_def(&builtin::builtin(name).unwrap(), None).unwrap();
        assert!(
            fs.prefilter.is_active(),
            "{name}: every failregex should have a required literal"
        );
    }
}

#[test]
fn usedns_serde() {
    #[derive(Deserialize)]
    struct T {
        usedns: UseDns,
    }
    let t: T = toml::from_str("usedns = \"no\"").unwrap();
    assert_eq!(t.usedns, UseDns::No);
    assert_eq!(UseDns::default(), UseDns::Warn);
    assert!(toml::from_str::<T>("usedns = \"maybe\"").is_err());
}

#[test]
fn filterdef_rejects_unknown_keys() {
    let e = toml::from_str::<FilterDef>("failregex = [\"<HOST>\"]\nfailregexp = []\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("failregexp"), "{e}");
}

#[test]
fn filterset_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<FilterSet>();
    let fs =
        std::sync::Arc::new(FilterSet::from_def(&builtin::builtin("sshd").unwrap(), None).unwrap());
    let handles: Vec<_> = (0..4u8)
        .map(|i| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let line = format!("sshd[1]: Invalid user u{i} from 192.0.2.{i} port 22");
                (0..200)
                    .filter(|_| {
                        matches!(
                            fs.match_line(&line, now()).alone(now()),
                            LineMatch::Failure(_)
                        )
                    })
                    .count()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
}

/// Issue 10 item 3 at the matcher: a date written by the client into a
/// stamp-less line (journal MESSAGE, a log without timestamps) is not the
/// failure's time; the line reports none, so the jail uses the read time.
#[test]
fn a_client_written_date_is_not_the_failure_time() {
    let def = builtin::builtin("sshd").unwrap();
    let fs = FilterSet::from_def(&def, None).unwrap();
    for line in [
        "sshd[1]: Invalid user Jan  1 00:00:00 from 203.0.113.7 port 22",
        "sshd[1]: Invalid user 2001-01-01T00:00:00Z from 203.0.113.7 port 22",
        "sshd[1]: Failed password for [01/Jan/2001:00:00:00 +0000] \"x from 203.0.113.7 port 22 ssh2",
        "sshd[1]: Invalid user [1000000000] from 203.0.113.7 port 22",
    ] {
        let LineMatch::Failure(f) = fs.match_line(line, now()).alone(now()) else {
            panic!("no failure: {line}")
        };
        assert_eq!(Some(f.host), v4("203.0.113.7"), "{line}");
        assert_eq!(f.time, TimeFound::Missing, "{line}");
    }
}

/// What `match_line` does without the fast path: timestamp cut, then every
/// matching failregex in list order (no prefilter, which only skips lines
/// that cannot match).
pub(super) fn general(fs: &FilterSet, line: &str) -> LineMatch {
    let line = line.trim_end_matches(['\n', '\r']);
    let (time, text) = match time::parse_time(line, now(), fs.datepattern.as_ref()) {
        Some((t, r)) => (
            TimeFound::Parsed(t),
            time::leading_stamp_end(line, &r).map_or(line, |e| &line[e..]),
        ),
        None => (TimeFound::Missing, line),
    };
    fs.match_all(text, time, true, None)
}

/// Variants of a log line an attacker could produce: decoy addresses before
/// and after, an invalid address in place of the real one, glued text,
/// many addresses, a very long line, lossily decoded bytes.
pub(super) fn hostile_variants(line: &str) -> Vec<String> {
    let mut out = vec![line.to_string()];
    let swap = |from: &str, to: &str| line.replacen(from, to, 1);
    for (from, to) in [
        (" from ", " from 999.1.1.1 from "),
        (" from ", " from 10.0.0.1 port 1 from "),
        (" from ", " from [2001:db8::1] "),
        ("user ", "user 192.0.2.9 from 192.0.2.10 port 22 ssh2 "),
        (" port ", "x port "),
        (" port ", ".5 port "),
        (" port ", " port 22 ssh2 from 192.0.2.77 port "),
    ] {
        out.push(swap(from, to));
    }
    // The line's address in other forms: IPv4-mapped and scoped IPv6,
    // bracketed, glued to more digits or letters.
    if let Some(addr) = line
        .split([' ', '(', ')', '[', ']', ','])
        .find(|w| w.parse::<IpAddr>().is_ok())
    {
        for to in [
            format!("::ffff:{addr}"),
            format!("::FFFF:{addr}"),
            "fe80::1%eth0".to_string(),
            "fe80::1%eth0.100".to_string(),
            "[2001:db8::7]".to_string(),
            format!("{addr}.5"),
            format!("{addr}x"),
            format!("1{addr}"),
            "mail.example.com".to_string(),
        ] {
            out.push(line.replacen(addr, &to, 1));
        }
    }
    let addrs = (0..200).map(|i| format!("198.51.100.{} ", i % 250));
    out.push(format!("{line} {}", addrs.collect::<String>()));
    out.push(format!("{}{line}", "x".repeat(20_000)));
    out.push(format!("{line}{}", " 1.2.3.4".repeat(3000)));
    out.push(
        String::from_utf8_lossy(&[line.as_bytes(), b"\xff\xfe", line.as_bytes()].concat())
            .into_owned(),
    );
    out.push(line.replace(' ', "\u{00a0}"));
    out
}

/// The DFA-then-captures-on-the-span path gives exactly what the general
/// path gives, for every built-in filter and mode, on its samples and on
/// hostile variants of them.
#[test]
fn fast_path_agrees_with_general_path() {
    let mut fast_filters = 0;
    let mut failures = 0;
    for name in builtin::builtin_names() {
        let def = builtin::builtin(name).unwrap();
        let mut modes: Vec<Option<&str>> = def.modes.keys().map(|m| Some(m.as_str())).collect();
        modes.push(None);
        let sample = builtin::tests::sample(name);
        for mode in modes {
            let fs = FilterSet::from_def(&def, mode).unwrap();
            fast_filters += usize::from(fs.first.is_some());
            for line in sample
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            {
                for v in hostile_variants(line) {
                    let got = fs.match_line(&v, now());
                    failures += usize::from(matches!(got, LineMatch::Failure(_)));
                    assert_eq!(got, general(&fs, &v), "{name} {mode:?}: {v:?}");
                    // The counting entry differs only in leaving the user out.
                    let mut counted = got.clone();
                    if let LineMatch::Failure(f) = &mut counted {
                        f.user = None;
                    }
                    assert_eq!(fs.match_line_uncopied_user(&v, now()), counted);
                }
            }
        }
    }
    assert!(
        fast_filters > 10,
        "only {fast_filters} filters take the fast path"
    );
    assert!(failures > 300, "only {failures} failures exercised");
}

/// Skipping the literal scan (when the gauge finds it costs more than it
/// spares) never changes an answer: every built-in filter and mode, on its
/// samples, hostile variants, and lines of other services, with the scan
/// kept and skipped; sampled lines (every 64th) take the timing path and
/// answer the same too.
#[test]
fn skipping_the_literal_scan_never_changes_an_answer() {
    let mut others: Vec<String> = Vec::new();
    for name in builtin::builtin_names() {
        others.extend(builtin::tests::sample(name).lines().map(str::to_string));
    }
    let mut gauged = 0;
    for name in builtin::builtin_names() {
        let def = builtin::builtin(name).unwrap();
        let mut modes: Vec<Option<&str>> = def.modes.keys().map(|m| Some(m.as_str())).collect();
        modes.push(None);
        for mode in modes {
            let scan = FilterSet::from_def(&def, mode).unwrap();
            let skip = FilterSet::from_def(&def, mode).unwrap();
            gauged += usize::from(skip.first.is_some() && skip.prefilter.literals().is_some());
            let lines = others
                .iter()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .flat_map(|l| hostile_variants(l));
            for v in lines {
                // Held against the gauge's own decisions (every 64 samples).
                scan.gauge().force(false);
                skip.gauge().force(true);
                let want = scan.match_line(&v, now());
                assert_eq!(skip.match_line(&v, now()), want, "{name} {mode:?}: {v:?}");
                if !scan.prefilter.may_match(strip_stamp(&v)) {
                    assert!(
                        matches!(want, LineMatch::NoMatch { .. }),
                        "{name}: the scan turned away a match: {v:?}"
                    );
                }
            }
        }
    }
    assert!(gauged > 10, "only {gauged} filters have a gauge");
}

/// The line after a leading timestamp, as the matcher sees it.
fn strip_stamp(line: &str) -> &str {
    match time::parse_time(line, now(), None) {
        Some((_, range)) => match time::leading_stamp_end(line, &range) {
            Some(end) => &line[end..],
            None => line,
        },
        None => line,
    }
}

#[test]
fn fast_path_is_taken_only_for_start_anchored_lists() {
    assert!(set(&[r"^a <HOST>$", r"^(?:b|c) <HOST>"], &[])
        .first
        .is_some());
    // One unanchored failregex, or a multi-line `^`, or an alternative
    // without `^`: the general path.
    assert!(set(&[r"^a <HOST>$", r"b <HOST>"], &[]).first.is_none());
    assert!(set(&[r"(?m)^a <HOST>$"], &[]).first.is_none());
    assert!(set(&[r"^a <HOST>|b <HOST>"], &[]).first.is_none());
}

/// Several failregexes match; the first one's address does not validate,
/// so the next one's counts, as on the general path.
#[test]
fn fast_path_falls_back_when_the_first_match_has_no_valid_address() {
    let fs = set(
        &[
            r"^x \S+ <ADDR>$",
            r"^x <ADDR> \S+$",
            r"^x (\S+) (\S+)<HOST>$",
        ],
        &[],
    );
    assert!(fs.first.is_some());
    for line in [
        "x 192.0.2.1 999.1.1.1",
        "x 192.0.2.1 192.0.2.2",
        "x 999.1.1.1 192.0.2.3",
        "x 999.1.1.1 999.1.1.2",
        "x 999.1.1.1 a.b",
    ] {
        assert_eq!(fs.match_line(line, now()), general(&fs, line), "{line}");
    }
    let LineMatch::Failure(f) = fs.match_line("x 192.0.2.1 999.1.1.1", now()) else {
        panic!()
    };
    assert_eq!((f.regex, f.host), (1, v4("192.0.2.1").unwrap()));
    let LineMatch::Failure(f) = fs.match_line("x 192.0.2.1 192.0.2.2", now()) else {
        panic!()
    };
    assert_eq!((f.regex, f.host), (0, v4("192.0.2.2").unwrap()));
}

#[test]
fn fast_path_applies_ignoreregex_and_users() {
    let fs = set(
        &[
            r"^login <F-USER>.*?</F-USER> from <HOST>$",
            r"^auth <F-USER> <HOST>$",
        ],
        &[r"trusted", r"from 192\.0\.2\.99$"],
    );
    assert!(fs.first.is_some());
    assert_eq!(
        fs.match_line("login trusted from 192.0.2.1", now()),
        LineMatch::Ignored {
            regex: 0,
            time: TimeFound::Missing
        }
    );
    assert_eq!(
        fs.match_line("login bob from 192.0.2.99", now()),
        LineMatch::Ignored {
            regex: 1,
            time: TimeFound::Missing
        }
    );
    let LineMatch::Failure(f) = fs.match_line("login a b from c from 192.0.2.5", now()) else {
        panic!()
    };
    assert_eq!(
        (f.regex, f.user.as_deref(), f.host),
        (0, Some("a b from c"), v4("192.0.2.5").unwrap())
    );
    let LineMatch::Failure(f) = fs.match_line("auth eve 2001:db8::5", now()) else {
        panic!()
    };
    assert_eq!((f.regex, f.user.as_deref()), (1, Some("eve")));
}

/// A failregex whose tags sit behind many groups needs more capture slots
/// than the stack buffer holds.
#[test]
fn many_groups_use_the_heap_slots() {
    let groups = "(a)".repeat(STACK_SLOTS);
    let fs = set(&[&format!(r"^{groups} <F-USER> <HOST>$")], &[]);
    assert!(fs.fails[0].slots > STACK_SLOTS);
    let line = format!("{} bob 192.0.2.7", "a".repeat(STACK_SLOTS));
    let LineMatch::Failure(f) = fs.match_line(&line, now()) else {
        panic!()
    };
    assert_eq!(
        (f.user.as_deref(), f.host),
        (Some("bob"), v4("192.0.2.7").unwrap())
    );
    assert_eq!(fs.match_line(&line, now()), general(&fs, &line));
}
