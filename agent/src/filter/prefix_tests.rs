//! `prefregex`: the prefix matched first, the failregexes on its content.

use super::tests::now;
use super::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn prefixed(prefix: &str, fail: &[&str], ignore: &[&str]) -> FilterSet {
    FilterSet::compile_prefixed(Some(prefix), &strings(fail), &strings(ignore), None).unwrap()
}

fn failure(fs: &FilterSet, line: &str) -> Option<(String, usize, Option<String>)> {
    match fs.match_line(line, now()) {
        LineMatch::Failure(f) => Some((f.host.to_string(), f.regex, f.user)),
        _ => None,
    }
}

const PREFIX: &str = r"^<PREFIX>myapp\[\d+\]: (?:auth: )?<F-CONTENT>.+</F-CONTENT>$";

#[test]
fn failregexes_see_only_the_content_and_anchor_at_its_start() {
    let fs = prefixed(
        PREFIX,
        &[
            r"^login failed for <F-USER>\S+</F-USER> from <HOST>$",
            r"^bad token from <HOST>",
        ],
        &[],
    );
    let line = "Nov 21 10:00:00 web myapp[12]: auth: login failed for bob from 203.0.113.7";
    assert_eq!(
        failure(&fs, line),
        Some(("203.0.113.7".into(), 0, Some("bob".into())))
    );
    assert_eq!(
        failure(&fs, "web myapp[9]: bad token from 2001:db8::5 (retry)"),
        Some(("2001:db8::5".into(), 1, None))
    );
    // The failregex alone would match this line, but the prefregex does
    // not: another program wrote it.
    assert_eq!(
        failure(&fs, "web other[12]: login failed for bob from 203.0.113.7"),
        None
    );
    // `^` is the content's start, not the line's: the same words after
    // some other text of the content do not match.
    assert_eq!(
        failure(
            &fs,
            "web myapp[12]: note: login failed for bob from 203.0.113.7"
        ),
        None
    );
}

#[test]
fn a_host_in_the_prefix_serves_failregexes_without_one_and_theirs_wins() {
    let fs = prefixed(
        r"^<PREFIX>gate\[\d+\]: client <HOST>: <F-CONTENT>.+</F-CONTENT>$",
        &[r"^denied$", r"^forwarded for <HOST>$"],
        &[],
    );
    assert_eq!(
        failure(&fs, "h gate[1]: client 198.51.100.4: denied"),
        Some(("198.51.100.4".into(), 0, None))
    );
    // An address written in the content is not whom a host-less
    // failregex bans.
    assert_eq!(
        failure(&fs, "h gate[1]: client 198.51.100.4: denied 203.0.113.9"),
        None
    );
    assert_eq!(
        failure(
            &fs,
            "h gate[1]: client 198.51.100.4: forwarded for 203.0.113.9"
        ),
        Some(("203.0.113.9".into(), 1, None))
    );
    // A prefix host that is not an address (glued) gives no failure to a
    // failregex that relies on it.
    assert_eq!(
        failure(&fs, "h gate[1]: client 198.51.100.4x: denied"),
        None
    );
}

#[test]
fn a_prefregex_without_content_filters_lines_and_leaves_them_whole() {
    let fs = prefixed(r"myapp\[", &[r"^\S+ myapp\[\d+\]: fail from <HOST>$"], &[]);
    assert_eq!(
        failure(&fs, "web myapp[3]: fail from 198.51.100.8"),
        Some(("198.51.100.8".into(), 0, None))
    );
    let fs = prefixed(r"^nomatch", &[r"fail from <HOST>$"], &[]);
    assert_eq!(failure(&fs, "web myapp[3]: fail from 198.51.100.8"), None);
}

#[test]
fn ignoreregexes_see_the_content_and_with_many_failregexes_the_whole_line_first() {
    let fs = prefixed(
        PREFIX,
        &[r"^fail from <HOST>$"],
        &[r"^fail from 198\.51\.100\."],
    );
    assert!(matches!(
        fs.match_line("h myapp[1]: fail from 198.51.100.8", now()),
        LineMatch::Ignored { regex: 0, .. }
    ));
    assert_eq!(
        failure(&fs, "h myapp[1]: fail from 203.0.113.8"),
        Some(("203.0.113.8".into(), 0, None))
    );
    // Few failregexes: an ignoreregex on the prefix part does not apply.
    let few = prefixed(PREFIX, &[r"^fail from <HOST>$"], &[r"^h myapp"]);
    assert!(failure(&few, "h myapp[1]: fail from 203.0.113.8").is_some());
    // Four failregexes for one ignoreregex: fail2ban tries it on the whole
    // line before anything else, and so does xban.
    let many = prefixed(
        PREFIX,
        &[
            r"^a <HOST>$",
            r"^b <HOST>$",
            r"^c <HOST>$",
            r"^fail from <HOST>$",
        ],
        &[r"^h myapp"],
    );
    assert!(matches!(
        many.match_line("h myapp[1]: fail from 203.0.113.8", now()),
        LineMatch::Ignored { regex: 0, .. }
    ));
    assert!(failure(&many, "g myapp[1]: fail from 203.0.113.8").is_some());
}

#[test]
fn the_content_tag_is_checked_and_belongs_to_prefregexes() {
    let err = |p: &str, f: &str| {
        FilterSet::compile_prefixed(Some(p), &strings(&[f]), &[], None)
            .unwrap_err()
            .to_string()
    };
    let e = err(r"^x <F-CONTENT>.+", r"^<HOST>$");
    assert!(e.contains("prefregex") && e.contains("</F-CONTENT>"), "{e}");
    let e = err(
        r"^<F-CONTENT>a</F-CONTENT><F-CONTENT>b</F-CONTENT>",
        r"^<HOST>$",
    );
    assert!(e.contains("one <F-CONTENT>"), "{e}");
    let e = err(r"^x </F-CONTENT>", r"^<HOST>$");
    assert!(e.contains("opening <F-CONTENT>"), "{e}");
    let e = err(r"^x (<F-CONTENT>.+</F-CONTENT>$", r"^<HOST>$");
    assert!(e.starts_with("prefregex is not a valid regex"), "{e}");
    // Without a host in the prefregex, each failregex needs its own.
    let e = err(r"^x <F-CONTENT>.+</F-CONTENT>$", r"^denied$");
    assert!(e.contains("failregex[0] has no <HOST>"), "{e}");
    let e = FilterSet::compile(
        &strings(&[r"^<F-CONTENT>.+</F-CONTENT> <HOST>$"]),
        &[],
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("belongs in a prefregex"), "{e}");
}

#[test]
fn a_filter_file_carries_its_prefregex_through_modes() {
    let def: FilterDef = toml::from_str(
        r#"
prefregex = '^<PREFIX>svc: <F-CONTENT>.+</F-CONTENT>$'
failregex = ['^bad password from <HOST>$']
default_mode = "normal"
[modes.normal]
[modes.aggressive]
failregex = ['^probe from <HOST>$']
"#,
    )
    .unwrap();
    def.validate().unwrap();
    let normal = FilterSet::from_def(&def, None).unwrap();
    let aggressive = FilterSet::from_def(&def, Some("aggressive")).unwrap();
    assert!(failure(&normal, "h svc: bad password from 198.51.100.1").is_some());
    assert!(failure(&normal, "h svc: probe from 198.51.100.1").is_none());
    assert!(failure(&aggressive, "h svc: probe from 198.51.100.1").is_some());
    assert!(failure(&aggressive, "h other: probe from 198.51.100.1").is_none());
}
