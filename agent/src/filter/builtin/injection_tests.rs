//! Issue 10 item 2: log injection. For every built-in filter and every
//! field of its lines that a client controls (user names, URLs, referrers,
//! HELO names, mail addresses, ...), text shaped like the filter's own
//! address context is written into the field, and the address taken from
//! the line must stay the one the service wrote (or the line must stop
//! matching).
//!
//! The injected strings are generated from the filter itself: each
//! failregex (every mode) is parsed, and the sub-patterns around each host
//! tag are turned into example text at several widths (just the literal
//! next to the tag, up to the whole pattern on each side) with a decoy
//! address in the tag's place. The lines and their client fields come from
//! `agent/filters/injection/NAME.toml`; a built-in without one fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use regex_syntax::hir::{Class, Hir, HirKind};
use serde::Deserialize;

use super::{builtin, NAMES};
use crate::filter::host::expand;
use crate::filter::{FilterSet, Host, LineMatch};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    /// Client-controlled fields: `{NAME}` in a line.
    #[serde(default)]
    fields: BTreeMap<String, Field>,
    #[serde(default)]
    lines: Vec<String>,
    /// Why a filter has no client-controlled fields (then `fields` is empty).
    none: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    /// An ordinary value (the line must be a failure with it).
    benign: String,
    /// Characters the service never writes into this field (escaped,
    /// refused or impossible in the protocol): injections containing them
    /// cannot occur and are counted apart.
    #[serde(default)]
    deny: String,
    /// Why the field's text is restricted, when `deny` is set.
    #[serde(default)]
    why: String,
}

fn table_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("filters/injection")
}

fn load_table(name: &str) -> Result<Table, String> {
    let path = table_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{name}: no injection table at {} ({e}): every built-in filter needs one",
            path.display()
        )
    })?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Decoys: what an attacker would like banned instead.
const DECOYS: &[&str] = &["198.51.100.66", "2001:db8:bad::66", "victim.example.net"];

/// How to turn a sub-pattern into text: optional parts present or absent,
/// which alternative.
#[derive(Clone, Copy)]
struct Choice {
    optional: bool,
    branch: usize,
}

fn class_char(c: &Class) -> Option<char> {
    let contains = |ch: char| match c {
        Class::Unicode(u) => u.ranges().iter().any(|r| r.start() <= ch && ch <= r.end()),
        Class::Bytes(b) => b
            .ranges()
            .iter()
            .any(|r| (r.start() as char) <= ch && ch <= (r.end() as char)),
    };
    "x1 .-_:/@=,()[]<>'\"+".chars().find(|&ch| contains(ch))
}

/// One example text for `h`.
fn gen(h: &Hir, ch: Choice) -> String {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => String::new(),
        HirKind::Literal(l) => String::from_utf8_lossy(&l.0).into_owned(),
        HirKind::Class(c) => class_char(c).map(String::from).unwrap_or_default(),
        HirKind::Repetition(r) => {
            let n = if r.min == 0 && ch.optional {
                1
            } else {
                r.min.max(1).min(r.max.unwrap_or(u32::MAX))
            };
            let n = if r.min == 0 && !ch.optional { 0 } else { n };
            (0..n.min(4)).map(|_| gen(&r.sub, ch)).collect()
        }
        HirKind::Capture(c) => gen(&c.sub, ch),
        HirKind::Concat(items) => items.iter().map(|i| gen(i, ch)).collect(),
        HirKind::Alternation(alts) => gen(&alts[ch.branch % alts.len()], ch),
    }
}

fn is_host_capture(h: &Hir) -> bool {
    matches!(h.kind(), HirKind::Capture(c) if c.name.as_deref().is_some_and(|n| n.starts_with("xban_host")))
}

fn contains_host(h: &Hir) -> bool {
    if is_host_capture(h) {
        return true;
    }
    match h.kind() {
        HirKind::Repetition(r) => contains_host(&r.sub),
        HirKind::Capture(c) => contains_host(&c.sub),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().any(contains_host),
        _ => false,
    }
}

/// For each host tag in `h`: the sequences of sub-patterns before it and
/// after it, innermost first on both sides.
fn host_contexts(h: &Hir) -> Vec<(Vec<Hir>, Vec<Hir>)> {
    if is_host_capture(h) {
        return vec![(Vec::new(), Vec::new())];
    }
    match h.kind() {
        HirKind::Capture(c) => host_contexts(&c.sub),
        HirKind::Repetition(r) => host_contexts(&r.sub),
        HirKind::Alternation(alts) => alts.iter().flat_map(host_contexts).collect(),
        HirKind::Concat(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if !contains_host(item) {
                    continue;
                }
                for (mut before, mut after) in host_contexts(item) {
                    before.extend(items[..i].iter().rev().cloned());
                    after.extend(items[i + 1..].iter().cloned());
                    out.push((before, after));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Every injection string for a filter: every failregex of every mode,
/// every host tag, several context widths and choices, every decoy.
fn injections(def: &crate::filter::FilterDef) -> Vec<String> {
    let mut regexes: BTreeSet<String> = def.failregex.iter().cloned().collect();
    for m in def.modes.values() {
        regexes.extend(m.failregex.iter().cloned());
    }
    let mut out = BTreeSet::new();
    for src in &regexes {
        let exp = expand(src, "injection").expect("built-in expands");
        let hir = regex_syntax::parse(&exp.pattern).expect("built-in parses");
        for (before, after) in host_contexts(&hir) {
            let widths = |n: usize| -> Vec<usize> {
                let mut w: Vec<usize> = (0..=n.min(3)).collect();
                w.push(n);
                w.dedup();
                w
            };
            for choice in [
                Choice {
                    optional: true,
                    branch: 0,
                },
                Choice {
                    optional: false,
                    branch: 0,
                },
                Choice {
                    optional: true,
                    branch: 1,
                },
            ] {
                let b: Vec<String> = before.iter().map(|h| gen(h, choice)).collect();
                let a: Vec<String> = after.iter().map(|h| gen(h, choice)).collect();
                for wb in widths(b.len()) {
                    // `before` is innermost first: the text reads outermost first.
                    let head: String = b[..wb].iter().rev().cloned().collect();
                    for wa in widths(a.len()) {
                        let tail: String = a[..wa].concat();
                        for decoy in DECOYS {
                            out.insert(format!("{head}{decoy}{tail}"));
                        }
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

fn mode_sets(def: &crate::filter::FilterDef) -> Vec<(String, FilterSet)> {
    if def.modes.is_empty() {
        return vec![("(none)".into(), FilterSet::from_def(def, None).unwrap())];
    }
    def.modes
        .keys()
        .map(|m| (m.clone(), FilterSet::from_def(def, Some(m)).unwrap()))
        .collect()
}

fn fill(line: &str, fields: &BTreeMap<String, Field>, target: &str, value: &str) -> String {
    let mut out = line.to_string();
    for (name, f) in fields {
        let v = if name == target { value } else { &f.benign };
        out = out.replace(&format!("{{{name}}}"), v);
    }
    out
}

fn now() -> std::time::SystemTime {
    super::tests::now()
}

fn host_text(m: &LineMatch) -> Option<String> {
    match m {
        LineMatch::Failure(f) => Some(match &f.host {
            Host::Addr(a) => a.to_string(),
            Host::Name(n) => n.clone(),
        }),
        _ => None,
    }
}

#[test]
fn every_builtin_has_an_injection_table_and_no_table_is_orphaned() {
    let mut problems = Vec::new();
    for name in NAMES {
        match load_table(name) {
            Err(e) => problems.push(e),
            Ok(t) => {
                if t.fields.is_empty() {
                    if t.none.as_deref().is_none_or(|r| r.trim().is_empty()) {
                        problems.push(format!("{name}: no fields and no `none` reason"));
                    }
                } else if t.lines.is_empty() {
                    problems.push(format!("{name}: fields but no lines"));
                }
                for (f, field) in &t.fields {
                    if !t.lines.iter().any(|l| l.contains(&format!("{{{f}}}"))) {
                        problems.push(format!("{name}: field {f} is in no line"));
                    }
                    if !field.deny.is_empty() && field.why.trim().is_empty() {
                        problems.push(format!("{name}: field {f} denies characters without `why`"));
                    }
                }
            }
        }
    }
    for entry in std::fs::read_dir(table_dir()).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !NAMES.contains(&stem.as_str()) {
            problems.push(format!(
                "{}: no built-in filter of that name",
                path.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What one filter's check found.
#[derive(Default)]
struct Outcome {
    shapes: usize,
    tried: usize,
    impossible: usize,
    /// Injections that changed the address (at most a few per field).
    wrong: Vec<String>,
}

/// Injects every shape of `def`'s address context into every field of
/// every table line, under every mode in which the line is a failure.
fn check_filter(name: &str, def: &crate::filter::FilterDef, table: &Table) -> Outcome {
    let shapes = injections(def);
    assert!(shapes.len() >= DECOYS.len(), "{name}: no injection shapes");
    let sets = mode_sets(def);
    let mut out = Outcome {
        shapes: shapes.len(),
        ..Outcome::default()
    };
    for (fname, field) in &table.fields {
        let mut tried_field = 0usize;
        let mut wrong_field = 0usize;
        for line in table
            .lines
            .iter()
            .filter(|l| l.contains(&format!("{{{fname}}}")))
        {
            let benign = fill(line, &table.fields, fname, &field.benign);
            let mut matched_somewhere = false;
            for (mode, set) in &sets {
                let Some(expect) = host_text(&set.match_line(&benign, now()).alone(now())) else {
                    continue;
                };
                matched_somewhere = true;
                assert!(
                    !DECOYS.contains(&expect.as_str()),
                    "{name}: a table line uses a decoy address: {benign}"
                );
                for shape in &shapes {
                    // Alone, and after an ordinary value (`bob from ...`).
                    for value in [shape.clone(), format!("{} {shape}", field.benign)] {
                        if value.contains(|c| field.deny.contains(c)) {
                            out.impossible += 1;
                            continue;
                        }
                        out.tried += 1;
                        tried_field += 1;
                        let hostile = fill(line, &table.fields, fname, &value);
                        let got = host_text(&set.match_line(&hostile, now()).alone(now()));
                        if got.as_ref().is_some_and(|g| *g != expect) {
                            wrong_field += 1;
                            if wrong_field <= 5 {
                                out.wrong.push(format!(
                                    "{name} mode {mode} field {fname}: took {} instead of {expect}\n    {hostile}",
                                    got.unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
            assert!(
                matched_somewhere,
                "{name}: table line is no failure in any mode with {fname}={:?}: {benign}",
                field.benign
            );
        }
        assert!(
            tried_field > 0,
            "{name}: field {fname}: every injection denied"
        );
    }
    out
}

#[test]
fn injected_address_context_never_changes_the_banned_address() {
    let mut wrong = Vec::new();
    let mut report = Vec::new();
    for name in NAMES {
        let table = load_table(name).unwrap();
        if table.fields.is_empty() {
            continue;
        }
        let o = check_filter(name, &builtin(name).unwrap(), &table);
        report.push(format!(
            "{name}: {} shapes, {} injections checked, {} impossible (denied characters)",
            o.shapes, o.tried, o.impossible
        ));
        wrong.extend(o.wrong);
    }
    eprintln!("{}", report.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The check catches an unanchored pattern: with a lazy user and no fixed
/// tail, a fake " from ADDR" in the user name is taken.
#[test]
fn the_check_finds_an_injectable_filter() {
    let def = crate::filter::FilterDef {
        failregex: vec!["^<SSHD>Failed password for <F-USER>.*?</F-USER> from <HOST>".into()],
        ..Default::default()
    };
    let table: Table = toml::from_str(
        "lines = ['Nov 21 05:28:31 h sshd[1]: Failed password for {user} from 203.0.113.7 port 22 ssh2']\n[fields.user]\nbenign = 'bob'\n",
    )
    .unwrap();
    let o = check_filter("unanchored", &def, &table);
    assert!(
        !o.wrong.is_empty(),
        "no injection found in {} tries",
        o.tried
    );
    assert!(
        o.wrong.iter().any(|w| w.contains("took 198.51.100.66")),
        "{:?}",
        o.wrong
    );
}

/// The generator itself: a known filter's own context shapes are produced.
#[test]
fn generated_shapes_include_the_literal_context_around_host() {
    let shapes = injections(&builtin("dovecot").unwrap());
    assert!(
        shapes.iter().any(|s| s.contains("rip=198.51.100.66,")),
        "rip=...,"
    );
    let shapes = injections(&builtin("postfix").unwrap());
    assert!(
        shapes.iter().any(|s| s.contains("[198.51.100.66]")),
        "[...]"
    );
    let shapes = injections(&builtin("sshd").unwrap());
    assert!(
        shapes
            .iter()
            .any(|s| s.contains(" from 2001:db8:bad::66 port 1")),
        " from ... port "
    );
    let shapes = injections(&builtin("apache-auth").unwrap());
    assert!(
        shapes
            .iter()
            .any(|s| s.contains("[client victim.example.net")),
        "[client"
    );
}
