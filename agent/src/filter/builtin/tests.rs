//! Every built-in filter against its sample log, plus loading rules.

use super::*;
use crate::filter::conn::Connections;
use crate::filter::{FilterSet, Host, LineMatch};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The embedded sample log of a built-in filter.
pub(crate) fn sample(name: &str) -> &'static str {
    let i = NAMES
        .iter()
        .position(|n| *n == name)
        .expect("built-in name");
    SAMPLES[i]
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Host(String, Option<String>),
    None,
    Ignored,
}

#[derive(Debug)]
struct Case {
    line_no: usize,
    modes: Vec<Option<String>>,
    expect: Expect,
    text: String,
}

/// Parses the sample format documented in `builtin.rs`. Every log line must
/// carry an expectation; a dangling one is an error too.
fn parse_sample(name: &str, text: &str) -> Vec<Case> {
    let mut modes: Vec<Option<String>> = vec![None];
    let mut pending: Option<Expect> = None;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if let Some(rest) = line.strip_prefix("# modes:") {
            modes = rest
                .split(',')
                .map(str::trim)
                .map(|m| {
                    if m == "default" {
                        None
                    } else {
                        Some(m.to_string())
                    }
                })
                .collect();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# expect:") {
            assert!(
                pending.is_none(),
                "{name}.log:{line_no}: two expectations in a row"
            );
            let rest = rest.trim();
            pending = Some(match rest {
                "none" => Expect::None,
                "ignored" => Expect::Ignored,
                _ => match rest.split_once(" user=") {
                    Some((h, u)) => Expect::Host(h.to_string(), Some(u.to_string())),
                    None => Expect::Host(rest.to_string(), None),
                },
            });
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let expect = pending
            .take()
            .unwrap_or_else(|| panic!("{name}.log:{line_no}: log line without '# expect:'"));
        cases.push(Case {
            line_no,
            modes: modes.clone(),
            expect,
            text: line.to_string(),
        });
    }
    assert!(
        pending.is_none(),
        "{name}.log: expectation at the end without a line"
    );
    cases
}

pub(crate) fn now() -> SystemTime {
    // 2026-11-22T00:00:00Z, after every sample timestamp.
    UNIX_EPOCH + Duration::from_secs(1_795_305_600)
}

#[test]
fn every_sample_line_meets_its_expectation() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for name in NAMES {
        let def = builtin(name).unwrap();
        let cases = parse_sample(name, sample(name));
        assert!(cases.len() >= 5, "{name}: sample too small");
        // Lines are read in order, per mode: a filter that follows
        // connections sees the lines before.
        let mut sets: BTreeMap<Option<String>, (FilterSet, Connections)> = BTreeMap::new();
        for case in &cases {
            for mode in &case.modes {
                let (set, conns) = sets.entry(mode.clone()).or_insert_with(|| {
                    let set = FilterSet::from_def(&def, mode.as_deref()).unwrap();
                    (set, Connections::new())
                });
                let found = conns.resolve(set.match_line(&case.text, now()), now());
                let got = match found {
                    LineMatch::Failure(f) => {
                        let host = match f.host {
                            Host::Addr(a) => a.to_string(),
                            Host::Name(n) => n,
                        };
                        Expect::Host(host, f.user)
                    }
                    LineMatch::Ignored { .. } => Expect::Ignored,
                    LineMatch::NoMatch { .. } | LineMatch::Connection(_) => Expect::None,
                };
                let ok = match (&case.expect, &got) {
                    // Without user= in the expectation the user is not checked.
                    (Expect::Host(h, None), Expect::Host(g, _)) => h == g,
                    (e, g) => e == g,
                };
                checked += 1;
                if !ok {
                    failures.push(format!(
                        "{name}.log:{} mode {:?}: expected {:?}, got {:?}\n    {}",
                        case.line_no, mode, case.expect, got, case.text
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} sample checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn samples_cover_ipv4_ipv6_and_negatives() {
    for name in NAMES {
        let cases = parse_sample(name, sample(name));
        let hosts: Vec<&str> = cases
            .iter()
            .filter_map(|c| match &c.expect {
                Expect::Host(h, _) => Some(h.as_str()),
                _ => None,
            })
            .collect();
        // recidive's input is xban's own log, IPv6 included; every filter
        // needs both families and lines that must not match.
        assert!(
            hosts
                .iter()
                .any(|h| h.parse::<std::net::Ipv4Addr>().is_ok()),
            "{name}: no IPv4 case"
        );
        assert!(
            hosts
                .iter()
                .any(|h| h.parse::<std::net::Ipv6Addr>().is_ok()),
            "{name}: no IPv6 case"
        );
        assert!(
            cases.iter().any(|c| c.expect == Expect::None),
            "{name}: no negative case"
        );
        let injections = sample(name)
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("injection"))
            .count();
        assert!(injections > 0, "{name}: no injection section");
    }
}

#[test]
fn builtins_parse_validate_and_describe_themselves() {
    assert_eq!(NAMES.len(), SOURCES.len());
    for name in builtin_names() {
        let def = builtin(name).unwrap_or_else(|| panic!("{name}"));
        def.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            def.description.as_deref().is_some_and(|d| !d.is_empty()),
            "{name}: description"
        );
        if let Some(m) = &def.default_mode {
            assert!(def.modes.contains_key(m), "{name}: default mode {m} exists");
        }
    }
    assert!(builtin("no-such-filter").is_none());
    let sshd = builtin("sshd").unwrap();
    assert_eq!(
        sshd.modes.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["aggressive", "ddos", "normal"]
    );
}

#[test]
fn load_dir_overrides_and_extends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sshd.toml"),
        "failregex = ['^mine <HOST>$']\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("myapp.toml"),
        "description = 'x'\nfailregex = ['^bad <ADDR>$']\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a filter").unwrap();
    let map = load_dir(dir.path()).unwrap();
    assert_eq!(map["sshd"].failregex, vec!["^mine <HOST>$".to_string()]);
    assert!(map.contains_key("myapp"));
    assert!(map.contains_key("dovecot"), "built-ins are kept");
    assert_eq!(map.len(), NAMES.len() + 1);
    // A missing directory is just "no user filters".
    let map = load_dir(&dir.path().join("absent")).unwrap();
    assert_eq!(map.len(), NAMES.len());
}

#[test]
fn load_dir_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.toml");
    std::fs::write(&bad, "failregex = ['^no tag here$']\n").unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("broken.toml") && e.contains("failregex[0] has no <HOST>"),
        "{e}"
    );

    std::fs::write(&bad, "failregex = 'not a list'\n").unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("broken.toml") && e.contains("invalid filter file"),
        "{e}"
    );

    std::fs::write(&bad, "failregex = ['<HOST>']\nfailregx = []\n").unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("broken.toml") && e.contains("failregx"), "{e}");

    std::fs::write(&bad, "failregex = ['<HOST>']\ndefault_mode = 'fast'\n").unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("broken.toml") && e.contains("\"fast\""), "{e}");
}
