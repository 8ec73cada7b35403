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
        ("<F-ALT_USER>x</F-ALT_USER>", "(?:x)"),
        ("<F-ERROR>x</F-ERROR> <F-IP4/>", "(?:x) <IP4>"),
        ("from=<> <PREFIX>", "from=<> \\x3CPREFIX\\x3E"),
        ("a*? b+?", "a*? b+?"),
        // What the engine's backtracker runs passes as written.
        (r"(?!x)<HOST>", r"(?!x)<HOST>"),
        (r"(?<=x)<HOST>(?<!y)", r"(?<=x)<HOST>(?<!y)"),
        (r"(a)\1 <HOST>", r"(a)\1 <HOST>"),
        (r"(?P<a>x)(?P=a)+ <HOST>", r"(?P<a>x)(?P=a)+ <HOST>"),
        (r"(a)?(?(1)b|c) <HOST>", r"(a)?(?(1)b|c) <HOST>"),
        (r"(?>a) a*+ b{2}+ <HOST>", r"(?>a) a*+ b{2}+ <HOST>"),
    ] {
        assert_eq!(translate_regex(py).unwrap(), rust, "{py}");
    }
}

#[test]
fn refusals_name_the_feature() {
    for (py, missing) in [
        ("<F-NOFAIL>x</F-NOFAIL> <HOST>", Missing::NoFail),
        ("<F-MLFID>x</F-MLFID> <HOST>", Missing::MultiLineState),
        ("<SKIPLINES> <HOST>", Missing::Tag),
        ("<F-ID>x</F-ID>", Missing::Tag),
        ("<F-ID/>", Missing::Tag),
        ("<F-IP4>\\S+</F-IP4>", Missing::Tag),
    ] {
        assert_eq!(translate_regex(py).unwrap_err().missing, missing, "{py}");
    }
}

#[test]
fn regexes_that_need_the_date_cut_are_found() {
    for r in [
        r"^ SMTP from <HOST>",
        r"^\s+\d <HOST>",
        r"^(?: \[\d+\]| \w+ x:)? \S+ F=<HOST>",
    ] {
        assert_eq!(
            needs_leading_blank(&translate_regex(r).unwrap(), false),
            Some(true),
            "{r}"
        );
    }
    for r in [
        r"^\s*x <HOST>",
        r"^x <HOST>",
        r"^(?:\[\])?\s*x <HOST>",
        r"<HOST> x",
    ] {
        assert_eq!(
            needs_leading_blank(&translate_regex(r).unwrap(), false),
            Some(false),
            "{r}"
        );
    }
    assert!(needs_emptied_brackets(r"^\[\]\s\[error\] <HOST>"));
    assert!(needs_emptied_brackets(r"^<HOST> - \S+ \[\] x"));
    assert!(!needs_emptied_brackets(r"^(?:\[\])?\s*x <HOST>"));
    assert!(!needs_emptied_brackets(r"^(?:\[\]\s+)?\[[^]]+\] x <HOST>"));
    assert!(!needs_emptied_brackets(r"^[\[\]] <HOST>"));
}

#[test]
fn datepatterns() {
    let mut notes = Vec::new();
    let mut t = |p: &str| translate_datepattern(p, &mut notes);
    assert_eq!(t("{^LN-BEG}").unwrap(), None);
    assert_eq!(
        t("^%Y-%m-%d %H:%M:%S").unwrap().as_deref(),
        Some("^%Y-%m-%d %H:%M:%S")
    );
    assert_eq!(
        t("{^LN-BEG}%ExY-%Exm-%Exd").unwrap().as_deref(),
        Some("^%Y-%m-%d")
    );
    assert_eq!(t("{^LN-BEG}EPOCH").unwrap().as_deref(), Some("^epoch"));
    assert_eq!(
        t("^\\[%d/%b/%Y %H:%M:%S\\]").unwrap().as_deref(),
        Some("^[%d/%b/%Y %H:%M:%S]")
    );
    assert_eq!(t("^(?:x)%Y").unwrap_err().missing, Missing::DatePattern);
    assert_eq!(t("%Y\n%d").unwrap_err().missing, Missing::DatePattern);
    assert_eq!(t("{^LN-BEG}EPOCH\n{^LN-BEG}").unwrap(), None);
    assert_eq!(
        t("^<\\d+>\\d+\\s+{DATE}").unwrap_err().missing,
        Missing::DatePattern
    );
    assert_eq!(t("%B %d").unwrap_err().missing, Missing::DatePattern);
}
