//! The import on fixture trees of our own (`testdata/`): expansion, the
//! generated config, refusals and errors. The comparison with fail2ban's
//! own reader on its stock files is in `fail2ban_tests.rs` (feature
//! `fail2ban-tests`, run by `cargo xtask test`).

use std::path::{Path, PathBuf};

use super::filters::Missing;
use super::report::Outcome;
use super::*;
use crate::config::Config;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/import/testdata/basic")
}

/// A copy of the fixture tree that a test may change.
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(), dir.path());
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn jail<'a>(jails: &'a [reader::ExpandedJail], name: &str) -> &'a reader::ExpandedJail {
    jails.iter().find(|j| j.name == name).unwrap()
}

/// The values below are what `fail2ban-client -d -c testdata/basic`
/// prints for this tree (fail2ban 1.0.2); the fail2ban-gated test checks
/// the same tree against the real reader.
#[test]
fn layering_includes_interpolation_and_tags_expand_as_fail2ban_does() {
    let jails = reader::read_jails(&fixture()).unwrap();
    assert_eq!(
        jails.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["myapp", "webapp"],
        "enabled jails only"
    );
    let myapp = jail(&jails, "myapp");
    // filter.d/myapp.local extends myapp.conf through %(known/failregex)s,
    // `<__prefix>` and `%(__prefix)s` come from an [INCLUDES] before file
    // and `<_daemon>` from the filter's [Definition].
    assert_eq!(
        myapp.failregex,
        [
            r"^(?:\S+ )?myapp(?:\[\d+\])?:\s+login failed for <F-USER>\S+</F-USER> from <HOST>$",
            r"^(?:\S+ )?myapp(?:\[\d+\])?:\s+bad token from <HOST> \{\d+\}$",
        ]
    );
    assert_eq!(myapp.ignoreregex, [r"from 198\.51\.100\."]);
    assert_eq!(myapp.datepattern.as_deref(), Some("{^LN-BEG}"));
    // jail.local over jail.conf over jail.d/*.conf, [DEFAULT] from an include.
    assert_eq!(myapp.settings["maxretry"], "3");
    assert_eq!(myapp.settings["bantime"], "1h");
    assert_eq!(myapp.settings["bantime.multipliers"], "1 2 4 8");
    assert_eq!(myapp.ignoreip, ["198.51.100.0/24", "2001:db8::/32"]);
    assert_eq!(
        myapp.logpath,
        [(
            "/var/log/xban-import-test/myapp.log".to_string(),
            "head".to_string()
        )]
    );
    // action_mwl: the ban action and the mail action with the jail's dest.
    let names: Vec<&str> = myapp.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["iptables-multiport", "sendmail-whois-lines"]);
    let mail = &myapp.actions[1].options;
    assert_eq!(mail["dest"], "ops@example.org");
    assert_eq!(mail["sender"], "root@<fq-hostname>");
    assert_eq!(mail["logpath"], "/var/log/xban-import-test/myapp.log");
    assert_eq!(myapp.actions[0].options["port"], "8080,8443");
    assert_eq!(myapp.action_keys["banaction"], "iptables-multiport");

    let webapp = jail(&jails, "webapp");
    // <re-<mode>> with the jail's [mode=strict], then the jail's own
    // failregex that extends the filter's through %(known/failregex)s.
    assert_eq!(
        webapp.failregex,
        [
            "^auth failed: <HOST>$",
            "^rate limited: <HOST>$",
            "^denied token for <HOST>$"
        ]
    );
    assert_eq!(webapp.datepattern.as_deref(), Some("^%Y-%m-%d %H:%M:%S"));
    assert_eq!(webapp.settings["findtime"], "1h30m");
    assert_eq!(webapp.ignoreip, ["127.0.0.1/8", "::1"]);
}

#[test]
fn imported_config_passes_check_and_says_what_it_did() {
    let out = tempfile::tempdir().unwrap();
    let import = import(&fixture(), out.path()).unwrap();
    import
        .write(out.path(), crate::config::DEFAULT_CONFIG)
        .unwrap();
    let config = Config::load(&out.path().join("xban.toml")).unwrap();
    let resolved = config.validate().unwrap();
    let names: Vec<&str> = resolved.jails.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["myapp", "webapp"]);
    let myapp = resolved.jails.iter().find(|j| j.name == "myapp").unwrap();
    assert_eq!(myapp.maxretry, 3);
    assert_eq!(
        myapp.bantime,
        crate::units::BanTime::Finite(std::time::Duration::from_secs(3600))
    );
    assert_eq!(myapp.actions.len(), 1);
    assert_eq!(myapp.actions[0].to.as_deref(), Some("ops@example.org"));
    let webapp = resolved.jails.iter().find(|j| j.name == "webapp").unwrap();
    assert_eq!(webapp.findtime, std::time::Duration::from_secs(5400));
    assert!(resolved.escalation.increment.enabled);
    assert_eq!(resolved.escalation.increment.multipliers, [1, 2, 4, 8]);
    assert!(resolved.escalation.steps.is_empty());

    // The imported filters match what the fail2ban ones match (checked
    // with fail2ban-regex): with fail2ban's line model, the blank left
    // where a leading date was cut stays, and this failregex does not
    // allow it.
    let now = std::time::SystemTime::now();
    let myapp_filter =
        crate::filter::FilterSet::from_def(&myapp.filter, myapp.mode.as_deref()).unwrap();
    let dated = "Nov 21 05:28:31 host myapp[12]: login failed for bob from 203.0.113.7";
    assert!(matches!(
        myapp_filter.match_line(dated, now),
        crate::filter::LineMatch::NoMatch { .. }
    ));
    let line = "host myapp[12]: login failed for bob from 203.0.113.7";
    match myapp_filter.match_line(line, now) {
        crate::filter::LineMatch::Failure(f) => {
            assert_eq!(f.host.to_string(), "203.0.113.7");
            assert_eq!(f.user.as_deref(), Some("bob"));
        }
        other => panic!("{other:?}"),
    }
    let ignored = "host myapp[12]: login failed for bob from 198.51.100.7";
    assert!(matches!(
        myapp_filter.match_line(ignored, now),
        crate::filter::LineMatch::Ignored { .. }
    ));

    let r = &import.report;
    for (jail, key, outcome) in [
        ("myapp", "filter", Outcome::Mapped),
        ("myapp", "banaction", Outcome::Dropped),
        ("myapp", "port", Outcome::Dropped),
        ("myapp", "protocol", Outcome::Dropped),
        ("myapp", "chain", Outcome::Dropped),
        ("myapp", "action sendmail-whois-lines", Outcome::Mapped),
        ("myapp", "bantime.increment", Outcome::Mapped),
        ("webapp", "mode", Outcome::Mapped),
    ] {
        let line = r
            .lines
            .iter()
            .find(|l| l.jail == jail && l.key == key && l.outcome == outcome);
        assert!(line.is_some(), "{jail} {key} {outcome}:\n{r}");
    }
    assert!(r.find("myapp", "port").unwrap().detail.contains("XDP"));

    // A second write into the same directory is refused whole.
    let e = import
        .write(out.path(), crate::config::DEFAULT_CONFIG)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
}

/// Runs the import of a changed fixture and expects an error that names
/// all of `want`; nothing may be written.
fn expect_error(change: impl FnOnce(&Path), want: &[&str]) {
    let dir = fixture_copy();
    change(dir.path());
    let out = tempfile::tempdir().unwrap();
    let e = match import(dir.path(), out.path()) {
        Ok(_) => panic!("import succeeded; wanted an error with {want:?}"),
        Err(e) => e.to_string(),
    };
    for w in want {
        assert!(e.contains(w), "{w:?} not in: {e}");
    }
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn bad_input_is_an_error_naming_file_section_and_key() {
    // A broken jail.local: a line that is not an option.
    expect_error(
        |d| {
            std::fs::write(
                d.join("jail.local"),
                "[myapp]\nenabled = true\nthis is not an option\n",
            )
            .unwrap()
        },
        &["jail.local", "line 3", "neither"],
    );
    // A key twice in one section.
    expect_error(
        |d| {
            std::fs::write(
                d.join("jail.local"),
                "[myapp]\nenabled = true\nmaxretry = 1\nmaxretry = 2\n",
            )
            .unwrap()
        },
        &["jail.local", "line 4", "maxretry", "[myapp]"],
    );
    // A missing include.
    expect_error(
        |d| {
            let text = std::fs::read_to_string(d.join("jail.conf")).unwrap();
            std::fs::write(
                d.join("jail.conf"),
                text.replace("paths.conf", "paths-missing.conf"),
            )
            .unwrap()
        },
        &[
            "jail.conf",
            "[INCLUDES] before",
            "paths-missing.conf",
            "does not exist",
        ],
    );
    // An unknown filter.
    expect_error(
        |d| {
            std::fs::write(
                d.join("jail.local"),
                "[myapp]\nenabled = true\nfilter = nosuchfilter\n",
            )
            .unwrap()
        },
        &["jail.local", "[myapp] filter", "nosuchfilter"],
    );
    // An undefined %(...)s reference.
    expect_error(
        |d| {
            std::fs::write(
                d.join("jail.local"),
                "[myapp]\nenabled = true\nlogpath = %(nowhere)s\n",
            )
            .unwrap()
        },
        &["jail.local", "[myapp] logpath", "nowhere"],
    );
    // A value fail2ban would take but xban cannot: maxretry not a number.
    expect_error(
        |d| {
            std::fs::write(
                d.join("jail.local"),
                "[myapp]\nenabled = true\nmaxretry = many\n",
            )
            .unwrap()
        },
        &["[myapp] maxretry", "many"],
    );
    // A time that is no fail2ban time.
    expect_error(
        |d| {
            std::fs::write(
                d.join("jail.local"),
                "[myapp]\nenabled = true\nbantime = 10 parsecs\n",
            )
            .unwrap()
        },
        &["[myapp] bantime", "parsecs"],
    );
    // Not a fail2ban directory at all.
    let empty = tempfile::tempdir().unwrap();
    let e = import(empty.path(), empty.path()).unwrap_err().to_string();
    assert!(e.contains("no jail.conf"), "{e}");
}

#[test]
fn refused_variants_name_the_feature_and_leave_the_jail_out() {
    let dir = fixture_copy();
    let filters = dir.path().join("filter.d");
    for (name, definition) in [
        ("withpref", "prefregex = ^<F-MLFID>\\S+</F-MLFID> <F-CONTENT>.+</F-CONTENT>$\nfailregex = ^x <HOST>$\n"),
        ("lookahead", "failregex = ^(?!ok)\\S+ from <HOST>$\n"),
        ("backref", "failregex = ^(\\w+) \\1 <HOST>$\n"),
        ("nofail", "failregex = ^<F-NOFAIL>hello</F-NOFAIL> <HOST>$\n"),
        ("multi", "failregex = ^x <HOST>$\nmaxlines = 5000\n"),
        ("conditional", "failregex = ^(a)?(?(1)b|c) <HOST>$\n"),
        ("dates", "failregex = ^x <HOST>$\ndatepattern = ^%%Y(?P<s>-)%%m(?P=s)%%d\n"),
    ] {
        std::fs::write(filters.join(format!("{name}.conf")), format!("[Definition]\n{definition}")).unwrap();
    }
    let mut local = String::new();
    for name in [
        "withpref",
        "lookahead",
        "backref",
        "nofail",
        "multi",
        "conditional",
        "dates",
    ] {
        local.push_str(&format!(
            "[{name}]\nenabled = true\nfilter = {name}\nlogpath = /var/log/{name}.log\n"
        ));
    }
    std::fs::write(dir.path().join("jail.d/refused.local"), local).unwrap();
    let out = tempfile::tempdir().unwrap();
    let import = import(dir.path(), out.path()).unwrap();
    let refused: Vec<(String, String)> = import
        .report
        .refused()
        .map(|l| (l.jail.clone(), l.detail.clone()))
        .collect();
    for (jail, missing) in [
        ("multi", Missing::MultiLine),
        ("dates", Missing::DatePattern),
    ] {
        let detail = &refused
            .iter()
            .find(|(j, _)| j == jail)
            .unwrap_or_else(|| panic!("{jail}: {refused:?}"))
            .1;
        assert!(detail.contains(&missing.to_string()), "{jail}: {detail}");
        assert!(
            !import.config.contains(&format!("[jails.{jail}]")),
            "{jail} left out"
        );
    }
    // Look-around, back-references and conditionals run in the engine's
    // backtracker, connection state in its own: imported.
    for jail in ["withpref", "nofail", "lookahead", "backref", "conditional"] {
        assert!(
            import.config.contains(&format!("[jails.{jail}]")),
            "{jail} imported: {refused:?}"
        );
    }
    // The other jails are imported all the same, and the result checks.
    import
        .write(out.path(), crate::config::DEFAULT_CONFIG)
        .unwrap();
    let resolved = Config::load(&out.path().join("xban.toml"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(resolved.jails.len(), 7);
}

#[test]
fn a_refused_filter_with_an_xban_built_in_uses_the_built_in() {
    let dir = fixture_copy();
    std::fs::write(
        dir.path().join("filter.d/sshd.conf"),
        "[Definition]\nfailregex = ^Failed for <HOST>$\nmaxlines = 2000\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("jail.d/sshd.local"),
        "[sshd]\nenabled = true\nfilter = sshd[mode=aggressive]\nlogpath = /var/log/auth.log\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let import = import(dir.path(), out.path()).unwrap();
    let line = import.report.find("sshd", "filter").unwrap();
    assert_eq!(line.outcome, Outcome::Approximated);
    assert!(
        line.detail.contains("maxlines") && line.detail.contains("built-in"),
        "{}",
        line.detail
    );
    assert!(
        import.config.contains("filter = \"sshd\"")
            && import.config.contains("mode = \"aggressive\"")
    );
}

#[test]
fn fail2ban_times() {
    for (text, secs) in [
        ("600", 600.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1d 12h", 129_600.0),
        ("1w", 604_800.0),
        ("2 days", 172_800.0),
        ("-1", -1.0),
        ("1mo", 2_629_800.0),
        ("1y", 31_557_600.0),
        ("30 sec", 30.0),
    ] {
        assert_eq!(jails::fail2ban_seconds(text).unwrap(), secs, "{text}");
    }
    assert!(jails::fail2ban_seconds("soon").is_err());
    assert!(jails::fail2ban_seconds("10 parsecs").is_err());
}

#[test]
fn an_untouched_default_config_is_replaced_an_edited_one_never() {
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("xban.toml");
    let default = crate::config::DEFAULT_CONFIG;
    let import = import(&fixture(), out.path()).unwrap();

    // Edited by one byte: the operator's, so refused, and left as it was.
    let edited = format!("{default}\n");
    std::fs::write(&config, &edited).unwrap();
    let e = import.write(out.path(), default).unwrap_err().to_string();
    assert!(
        e.contains("xban.toml") && e.contains("not the untouched default"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(!out.path().join("filters").exists(), "nothing written");

    // Exactly the default (as the package installs it): replaced.
    std::fs::write(&config, default).unwrap();
    let written = import.write(out.path(), default).unwrap();
    assert!(written.replaced_default);
    assert_eq!(written.files[0], config);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), import.config);
    assert_eq!(written.files.len(), 1 + import.filters.len());

    // Now it is the import, no longer the default: a second import is refused.
    let e = import.write(out.path(), default).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn a_write_that_fails_leaves_nothing_behind() {
    let out = tempfile::tempdir().unwrap();
    let import = import(&fixture(), out.path()).unwrap();
    // `filters` taken by a file: the filter files cannot go there.
    std::fs::write(out.path().join("filters"), "").unwrap();
    let e = import
        .write(out.path(), crate::config::DEFAULT_CONFIG)
        .unwrap_err()
        .to_string();
    assert!(e.contains("filters"), "{e}");
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["filters"], "only what was there before");
}
