use super::*;
use crate::units::{parse_duration, MAX_DURATION};

fn no_user_filters() -> String {
    // Point filters_dir somewhere empty so tests never read /etc/xban.
    let dir = tempfile::tempdir().unwrap().keep();
    format!("[agent]\nfilters_dir = \"{}\"\n", dir.display())
}

#[test]
fn defaults_are_documented_values() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.defaults.maxretry, 5);
    assert_eq!(c.defaults.findtime.0, Duration::from_secs(600));
    assert_eq!(
        c.defaults.bantime,
        BanTime::Finite(Duration::from_secs(600))
    );
    assert_eq!(c.agent.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/xban"));
    assert_eq!(c.agent.xdp_mode, XdpModeSetting::Auto);
    assert!(c.agent.keep_on_exit);
}

#[test]
fn jail_inherits_defaults_and_overrides() {
    let text = format!(
        r#"{}
[defaults]
maxretry = 3
findtime = "1h"
bantime = 90
ignoreip = ["198.51.100.0/24", "2001:db8::/32"]

[jails.sshd]
logpath = ["/var/log/auth.log"]
failregex = ['Failed password for \S+ from <HOST>']
bantime = "1d"

[jails.web]
logpath = ["/var/log/web.log"]
failregex = ['auth failed for <HOST>']
maxretry = 10
ignoreip = []
"#,
        no_user_filters()
    );
    let r = Config::parse(&text).unwrap().validate().unwrap();
    assert_eq!(r.allowlist.len(), 2);
    let sshd = r.jails.iter().find(|j| j.name == "sshd").unwrap();
    assert_eq!(sshd.maxretry, 3);
    assert_eq!(sshd.findtime, Duration::from_secs(3600));
    assert_eq!(sshd.bantime, BanTime::Finite(Duration::from_secs(86_400)));
    assert_eq!(sshd.ignoreip.len(), 2);
    assert_eq!(
        sshd.source,
        SourceSpec::Files(vec!["/var/log/auth.log".into()])
    );
    let web = r.jails.iter().find(|j| j.name == "web").unwrap();
    assert_eq!(web.maxretry, 10);
    assert_eq!(web.bantime, BanTime::Finite(Duration::from_secs(90)));
    assert!(web.ignoreip.is_empty());
}

fn error_of(text: &str) -> String {
    let full = format!("{}\n{text}", no_user_filters());
    match Config::parse(&full) {
        Err(e) => e.to_string(),
        Ok(c) => c.validate().unwrap_err().to_string(),
    }
}

#[test]
fn errors_name_the_jail_and_key() {
    let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['(unclosed <HOST>']\n");
    assert!(e.starts_with("jails.sshd.failregex:"), "{e}");

    let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['Failed password']\n");
    assert!(
        e.starts_with("jails.sshd.failregex:") && e.contains("<HOST>"),
        "{e}"
    );

    let e = error_of(
        "[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nbantime = \"10 parsecs\"\n",
    );
    assert!(
        e.contains("is not a duration") && e.contains("bantime"),
        "{e}"
    );

    let e = error_of(
        "[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nignoreip = [\"10.0.0.300\"]\n",
    );
    assert!(
        e.starts_with("jails.sshd.ignoreip[0]:") && e.contains("10.0.0.300"),
        "{e}"
    );

    let e =
        error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nmaxretries = 3\n");
    assert!(
        e.contains("unknown field `maxretries`") && e.contains("line"),
        "{e}"
    );

    let e = error_of("[jails.sshd]\nlogpath = [\"relative.log\"]\nfailregex = ['x <HOST>']\n");
    assert!(e.starts_with("jails.sshd.logpath[0]:"), "{e}");

    let e = error_of("[jails.sshd]\nfailregex = ['x <HOST>']\n");
    assert!(e.starts_with("jails.sshd.logpath:"), "{e}");

    let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfilter = \"nope\"\n");
    assert!(
        e.starts_with("jails.sshd.filter:") && e.contains("no filter named `nope`"),
        "{e}"
    );

    let e = error_of("[defaults]\nignoreip = [\"1.2.3.4/40\"]\n");
    assert!(e.starts_with("defaults.ignoreip[0]:"), "{e}");

    let e = Config::parse("[agent]\nxdp_mode = \"turbo\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("turbo") && e.contains("line 2"), "{e}");

    let e = error_of("[defaults]\nclass = \"gentle\"\n");
    assert!(e.contains("gentle") && e.contains("line"), "{e}");
}

#[test]
fn disabled_jails_are_not_resolved() {
    let text = format!(
        "{}\n[jails.off]\nenabled = false\nfailregex = ['no tag']\n",
        no_user_filters()
    );
    let r = Config::parse(&text).unwrap().validate().unwrap();
    assert!(r.jails.is_empty());
}

fn jail(extra: &str) -> String {
    format!("[jails.sshd]\nlogpath = [\"/var/log/xban-test-none.log\"]\nfailregex = ['x <HOST>']\n{extra}")
}

#[test]
fn durations_above_the_maximum_are_refused_naming_the_key() {
    for (text, key) in [
        ("[defaults]\nbantime = 9223372036854775807\n", "bantime"),
        (
            "[defaults]\nbantime = \"18446744073709551615\"\n",
            "bantime",
        ),
        ("[defaults]\nfindtime = 9223372036854775807\n", "findtime"),
        ("[defaults]\nbantime = \"3651d\"\n", "bantime"),
        ("[escalation.increment]\nmaxtime = \"600w\"\n", "maxtime"),
    ] {
        let e = error_of(text);
        assert!(
            e.contains(key) && e.contains("longer than the maximum") && e.contains("3650d"),
            "{text}: {e}"
        );
    }
    let e = error_of("[defaults]\nbantime = \"999999999999w\"\n");
    assert!(e.contains("bantime"), "{e}");
    // The maximum itself, and permanent, are fine.
    let ok = format!("{}\n[defaults]\nbantime = \"3650d\"\n", no_user_filters());
    Config::parse(&ok).unwrap().validate().unwrap();
    assert!("18446744073709551615"
        .parse::<BanTime>()
        .unwrap_err()
        .contains("maximum"));
    assert_eq!(parse_duration("3650d").unwrap(), MAX_DURATION);
}

#[test]
fn zero_bantime_and_findtime_are_refused() {
    let e = error_of("[defaults]\nbantime = 0\n");
    assert!(
        e.starts_with("defaults.bantime:") && e.contains("permanent"),
        "{e}"
    );
    let e = error_of("[defaults]\nfindtime = \"0s\"\n");
    assert!(
        e.starts_with("defaults.findtime:") && e.contains("10m"),
        "{e}"
    );
    let e = error_of(&jail("bantime = \"0m\"\n"));
    assert!(e.starts_with("jails.sshd.bantime:"), "{e}");
    let e = error_of(&jail("findtime = 0\n"));
    assert!(e.starts_with("jails.sshd.findtime:"), "{e}");
    let e = error_of("[escalation]\nsteps = [{ bans = 2, within = \"1h\", bantime = 0 }]\n");
    assert!(e.starts_with("escalation.steps[0].bantime:"), "{e}");
    let e = error_of("[escalation.subnet]\nbantime = 0\n");
    assert!(e.starts_with("escalation.subnet.bantime:"), "{e}");
    let e = error_of("[defaults]\nmax_tracked = 0\n");
    assert!(
        e.starts_with("defaults.max_tracked:") && e.contains("100000"),
        "{e}"
    );
    let e = error_of(&jail("max_tracked = 0\n"));
    assert!(e.starts_with("jails.sshd.max_tracked:"), "{e}");
}

#[test]
fn max_tracked_defaults_and_overrides() {
    let text = format!(
            "{}\n[defaults]\nmax_tracked = 500\n{}\n[jails.web]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nmax_tracked = 7\n",
            no_user_filters(),
            jail("")
        );
    let r = Config::parse(&text).unwrap().validate().unwrap();
    let get = |n: &str| r.jails.iter().find(|j| j.name == n).unwrap().max_tracked;
    assert_eq!((get("sshd"), get("web")), (500, 7));
    assert_eq!(JailDefaults::default().max_tracked, 100_000);
}

#[test]
fn allowing_everyone_is_warned_about() {
    let text = format!(
            "{}\n[defaults]\nignoreip = [\"0.0.0.0/0\", \"::/0\", \"203.0.113.9/0\", \"128.0.0.0/1\", \"10.0.0.0/8\"]\n{}",
            no_user_filters(),
            jail("ignoreip = [\"2001:db8::/16\"]\n")
        );
    let r = Config::parse(&text).unwrap().validate().unwrap();
    let w = r.warnings.join("\n");
    assert!(
        w.contains("defaults.ignoreip[0]: `0.0.0.0/0` allowlists every IPv4 address"),
        "{w}"
    );
    assert!(
        w.contains("defaults.ignoreip[1]: `::/0` allowlists every IPv6 address"),
        "{w}"
    );
    assert!(w.contains("defaults.ignoreip[2]: `0.0.0.0/0`"), "{w}");
    assert!(
        w.contains("defaults.ignoreip[3]: `128.0.0.0/1` allowlists a /1"),
        "{w}"
    );
    assert!(w.contains("jails.sshd.ignoreip[0]"), "{w}");
    assert!(!w.contains("ignoreip[4]"), "a /8 is fine: {w}");
}

#[test]
fn reserved_and_unsafe_jail_names_are_refused() {
    for name in ["blocklist", "manual", "subnet", "fleet", "geo"] {
        let e = error_of(&format!(
            "[jails.{name}]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\n"
        ));
        assert!(
            e.starts_with(&format!("jails.{name}:")) && e.contains("reserved"),
            "{e}"
        );
    }
    for name in ["\"ss\\\"hd\"", "\"a b\"", "\"x:y\"", "\"it's\""] {
        let e = error_of(&format!(
            "[jails.{name}]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\n"
        ));
        assert!(e.contains("letters, digits"), "{name}: {e}");
    }
    // Even a disabled jail may not take a reserved name.
    let e = error_of("[jails.manual]\nenabled = false\n");
    assert!(e.contains("reserved"), "{e}");
}

#[test]
fn logpaths_that_are_not_files_and_bad_agent_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = error_of(&format!(
        "[jails.sshd]\nlogpath = [\"/l\", \"{}\"]\nfailregex = ['x <HOST>']\n",
        dir.path().display()
    ));
    assert!(
        e.starts_with("jails.sshd.logpath[1]:") && e.contains("is a directory"),
        "{e}"
    );
    let e = error_of("[jails.sshd]\nlogpath = [\"/dev/zero\"]\nfailregex = ['x <HOST>']\n");
    assert!(e.contains("character device"), "{e}");
    let e = error_of("[jails.sshd]\nlogpath = [\"/var/log/[x.log\"]\nfailregex = ['x <HOST>']\n");
    assert!(
        e.starts_with("jails.sshd.logpath[0]:") && e.contains("glob"),
        "{e}"
    );
    // [agent] keys: checked in validate, named in the error.
    for (text, key) in [
        ("state_dir = \"\"", "agent.state_dir:"),
        ("socket = \"relative.sock\"", "agent.socket:"),
        ("bpf_pin_dir = \"/sys/fs/bpf\"", "agent.bpf_pin_dir:"),
        ("bpf_pin_dir = \"pins\"", "agent.bpf_pin_dir:"),
        ("interfaces = [\"\"]", "agent.interfaces[0]:"),
    ] {
        let full = format!("[agent]\nfilters_dir = \"/nonexistent-xban\"\n{text}\n");
        let e = Config::parse(&full)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(key), "{text}: {e}");
    }
    for bad in ["fast_path_capacity = 999", "fast_path_capacity = 2000001"] {
        let full = format!("[agent]\nfilters_dir = \"/nonexistent-xban\"\n{bad}\n");
        let e = Config::parse(&full)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("agent.fast_path_capacity:") && e.contains("from 1000 to 2000000"),
            "{e}"
        );
    }
    let ok = "[agent]\nfilters_dir = \"/nonexistent-xban\"\nfast_path_capacity = 1000\n";
    let r = Config::parse(ok).unwrap().validate().unwrap();
    assert_eq!(r.agent.fast_path_capacity, 1000);
    assert_eq!(
        crate::config::AgentConfig::default().fast_path_capacity,
        1_200_000,
        "the documented default"
    );
    let full = "[agent]\nfilters_dir = \"/nonexistent-xban\"\nmin_prefix_v4 = 16\n[escalation.subnet]\nenabled = true\nv4_prefix = 12\n";
    let e = Config::parse(full)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("escalation.subnet.v4_prefix:") && e.contains("min_prefix_v4"),
        "{e}"
    );
}
