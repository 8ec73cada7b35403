use super::*;

#[test]
fn equivalent_rewrites() {
    for (py, rust) in [
        (r"^a \Z", r"^a \z"),
        (r"x{2,}", r"x{2,}"),
        (r"x{,3}", r"x{0,3}"),
        (r"{a} b", r"\{a\} b"),
        (r"[^[]+", r"[^\[]+"),
        (r"[]a]", r"[\]a]"),
        (r"\<\>", r"\x3C\x3E"),
        (r"a\/b\'c", r"a/b'c"),
        (r"a(?#comment)b", r"ab"),
        (
            "<HOST> <F-USER>\\S+</F-USER>",
            "<HOST> <F-USER>\\S+</F-USER>",
        ),
        ("<F-ALT_USER>x</F-ALT_USER>", "<F-ALT_USER>x</F-ALT_USER>"),
        ("<F-ERROR>x</F-ERROR> <F-IP4/>", "(?:x) <IP4>"),
        ("from=<> <PREFIX>", "from=<> \\x3CPREFIX\\x3E"),
        ("a*? b+?", "a*? b+?"),
        // What the engine's backtracker runs passes as written.
        (r"(?!x)<HOST>", r"(?!x)<HOST>"),
        (r"(?<=x)<HOST>(?<!y)", r"(?<=x)<HOST>(?<!y)"),
        (r"(a)\1 <HOST>", r"(a)\1 <HOST>"),
        (r"(?P<a>x)(?P=a)+ <HOST>", r"(?P<a>x)(?P=a)+ <HOST>"),
        (r"(a)?(?(1)b|c) <HOST>", r"(a)?(?(1)b|c) <HOST>"),
        (r"(?P<v>a)?(?(v)b|c) <HOST>", r"(?P<v>a)?(?(<v>)b|c) <HOST>"),
        (r"(?>a) a*+ b{2}+ <HOST>", r"(?>a) a*+ b{2}+ <HOST>"),
    ] {
        assert_eq!(translate_regex(py).unwrap(), rust, "{py}");
    }
}

#[test]
fn refusals_name_the_feature() {
    for (py, missing) in [
        ("</SKIPLINES> <HOST>", Missing::Tag),
        ("<F-ID>x</F-ID>", Missing::Tag),
        ("<F-ID/>", Missing::Tag),
        ("<F-IP4>\\S+</F-IP4>", Missing::Tag),
    ] {
        assert_eq!(translate_regex(py).unwrap_err().missing, missing, "{py}");
    }
}

fn expanded(datepattern: Option<&str>, failregex: &str) -> ExpandedJail {
    ExpandedJail {
        name: "t".into(),
        file: "jail.local".into(),
        backend: "auto".into(),
        filter_spec: "t".into(),
        filter_name: "t".into(),
        filter_args: Vec::new(),
        filter_file: None,
        logtype: "file".into(),
        usedns: None,
        prefregex: None,
        maxlines: None,
        datepattern: datepattern.map(String::from),
        failregex: vec![failregex.into()],
        ignoreregex: Vec::new(),
        journalmatch: Vec::new(),
        logpath: Vec::new(),
        ignoreip: Vec::new(),
        settings: Default::default(),
        actions: Vec::new(),
        key_files: Default::default(),
        action_keys: Default::default(),
    }
}

/// fail2ban's datepatterns pass as written, under fail2ban's line model;
/// one xban cannot read is refused with the reason.
#[test]
fn datepatterns_pass_through_with_fail2ban_line_model() {
    for d in [
        "{^LN-BEG}",
        "^%Y-%m-%d %H:%M:%S",
        "{^LN-BEG}%ExY-%Exm-%Exd %ExH:%ExM:%ExS",
        "{^LN-BEG}EPOCH",
        r"^<\d+>\d+\s+{DATE}",
        "^(?:%Y-)?%m-%d[ T]%H:%M:%S(?:\\.%f)?\n{^LN-BEG}",
        "%B %d",
    ] {
        let t = translate(&expanded(Some(d), "^x <HOST>$")).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_eq!(t.def.datepattern.as_deref(), Some(d));
        assert_eq!(t.def.date_cut, DateCut::Anywhere);
    }
    let t = translate(&expanded(None, "^x <HOST>$")).unwrap();
    assert_eq!(
        (t.def.datepattern, t.def.date_cut),
        (None, DateCut::Anywhere)
    );
    let e = translate(&expanded(Some("^%Y(?P<s>-)%m(?P=s)%d"), "^x <HOST>$")).unwrap_err();
    assert_eq!(e.missing, Missing::DatePattern);
    assert!(e.detail.contains("back-references"), "{e}");
    // The regexes fail2ban writes for what its date cut leaves now import
    // and match as in fail2ban.
    let t = translate(&expanded(None, r"^\[\]\s\[error\] \[client <HOST>\] x$")).unwrap();
    let set = FilterSet::from_def(&t.def, None).unwrap();
    let now = std::time::SystemTime::now();
    assert!(matches!(
        set.match_line(
            "[Sun Jun 09 07:57:47.123 2013] [error] [client 198.51.100.7] x",
            now
        ),
        crate::filter::LineMatch::Failure(_)
    ));
    let t = translate(&expanded(None, r"^ SMTP from <HOST>$")).unwrap();
    let set = FilterSet::from_def(&t.def, None).unwrap();
    assert!(matches!(
        set.match_line("2026-12-07 10:11:12 SMTP from 198.51.100.7", now),
        crate::filter::LineMatch::Failure(_)
    ));
}
