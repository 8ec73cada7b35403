use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::prefixes::{prefixes_of, Span};
use super::*;
use crate::addr::Target;

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn rule(countries: &[&str], action: GeoAction) -> GeoRule {
    GeoRule {
        countries: countries.iter().map(|c| c.to_string()).collect(),
        action,
        ..Default::default()
    }
}

#[test]
fn adjacent_networks_merge_into_fewest_prefixes() {
    let rules = vec![rule(&["XA"], GeoAction::Ban)];
    let xa: Arc<str> = Arc::from("XA");
    let nets = [
        "203.0.113.0/26",
        "203.0.113.64/26",
        "203.0.113.128/25",
        "198.51.100.0/25",
        "198.51.100.192/26",
        "2001:db8:1::/49",
        "2001:db8:1:8000::/49",
        "::ffff:192.0.0.0/120",
    ];
    let set = compile_networks(&rules, nets.iter().map(|n| (0, xa.clone(), net(n))));
    let got: Vec<String> = set.bans.keys().map(|t| t.to_string()).collect();
    assert_eq!(
        got,
        [
            "192.0.0.0/24",
            "198.51.100.0/25",
            "198.51.100.192/26",
            "203.0.113.0/24",
            "2001:db8:1::/48"
        ]
    );
    assert_eq!(set.counts(), (4, 1));
}

#[test]
fn ranges_that_do_not_align_split_exactly() {
    // .1 to .6: /32, /31, /31, /32
    let s = Span {
        v6: false,
        start: u128::from(u32::from(Ipv4Addr::new(203, 0, 113, 1))),
        end: u128::from(u32::from(Ipv4Addr::new(203, 0, 113, 6))),
    };
    let got: Vec<String> = prefixes_of(s).iter().map(|t| t.to_string()).collect();
    assert_eq!(
        got,
        [
            "203.0.113.1",
            "203.0.113.2/31",
            "203.0.113.4/31",
            "203.0.113.6"
        ]
    );
    let all = Span {
        v6: true,
        start: 0,
        end: u128::MAX,
    };
    assert_eq!(prefixes_of(all), vec![t("::/0")]);
    let all4 = Span {
        v6: false,
        start: 0,
        end: u128::from(u32::MAX),
    };
    assert_eq!(prefixes_of(all4), vec![t("0.0.0.0/0")]);
}

#[test]
fn first_rule_wins_and_labels_stay_apart() {
    let rules = vec![
        rule(&["XA"], GeoAction::Ban),
        GeoRule {
            countries: vec!["XA".into(), "XB".into()],
            class: Some(BanClass::Tarpit),
            ..Default::default()
        },
        rule(&["XC"], GeoAction::Allow),
    ];
    let (xa, xb, xc): (Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from("XA"), Arc::from("XB"), Arc::from("XC"));
    let set = compile_networks(
        &rules,
        [
            (0, xa.clone(), net("203.0.113.0/25")),
            (1, xa.clone(), net("203.0.113.0/25")),
            // Adjacent but another country: not merged.
            (1, xb.clone(), net("203.0.113.128/25")),
            (2, xc.clone(), net("198.51.100.0/24")),
        ],
    );
    assert_eq!(set.bans[&t("203.0.113.0/25")].class, BanClass::Drop);
    assert_eq!(set.bans[&t("203.0.113.0/25")].rule, 0);
    assert_eq!(&*set.bans[&t("203.0.113.128/25")].label, "XB");
    assert_eq!(set.bans[&t("203.0.113.128/25")].class, BanClass::Tarpit);
    assert_eq!(set.allow.get(&t("198.51.100.0/24")), Some(&2));
    assert_eq!(
        set.ban_covering("203.0.113.200".parse().unwrap())
            .unwrap()
            .0,
        &t("203.0.113.128/25")
    );
}

#[test]
fn own_addresses_are_cut_out() {
    let parts = split_around(&t("203.0.113.0/24"), &t("203.0.113.77"));
    assert_eq!(parts.len(), 8);
    assert!(parts
        .iter()
        .all(|p| !p.contains("203.0.113.77".parse().unwrap())));
    for probe in [
        "203.0.113.0",
        "203.0.113.76",
        "203.0.113.78",
        "203.0.113.255",
    ] {
        assert!(
            parts.iter().any(|p| p.contains(probe.parse().unwrap())),
            "{probe}"
        );
    }
    let rules = vec![rule(&["XA"], GeoAction::Ban)];
    let mut set = compile_networks(&rules, [(0, Arc::from("XA"), net("2001:db8::/32"))]);
    set.punch(&[t("2001:db8::1"), t("203.0.113.1")]);
    assert_eq!(set.bans.len(), 96);
    assert!(set.ban_covering("2001:db8::1".parse().unwrap()).is_none());
    assert!(set.ban_covering("2001:db8::2".parse().unwrap()).is_some());
}

#[test]
fn a_new_version_adds_before_it_removes() {
    let rules = vec![rule(&["XA"], GeoAction::Ban)];
    let xa: Arc<str> = Arc::from("XA");
    let old = compile_networks(&rules, [(0, xa.clone(), net("203.0.113.0/24"))]);
    let new = compile_networks(
        &rules,
        [
            (0, xa.clone(), net("203.0.113.0/25")),
            (0, xa.clone(), net("198.51.100.0/24")),
        ],
    );
    let d = diff(&old, &new);
    assert_eq!(d.remove, vec![t("203.0.113.0/24")]);
    let added: Vec<Target> = d.add.iter().map(|(t, _)| *t).collect();
    assert_eq!(added, vec![t("198.51.100.0/24"), t("203.0.113.0/25")]);
    assert_eq!(diff(&new, &new), GeoDiff::default());
}

#[test]
fn config_errors_name_the_rule() {
    let mut c = GeoConfig {
        database: Some("/x.mmdb".into()),
        rules: vec![GeoRule {
            countries: vec!["nl".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    c.validate().unwrap();
    assert_eq!(c.rules[0].countries, ["NL"]);
    c.rules[0].asns = vec![64500];
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("geo.rules[0].asns:") && e.contains("asn_database"),
        "{e}"
    );
    c.rules[0].asns.clear();
    c.rules[0].countries = vec!["Netherlands".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("geo.rules[0].countries[0]:"), "{e}");
    c.rules[0] = GeoRule::default();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("covers nothing"), "{e}");
    c.database = Some("rel.mmdb".into());
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("geo.database:"));
}

#[test]
fn settings_around_geo_and_names_are_checked_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "[agent]\nfilters_dir = \"{}\"\n",
        dir.path().join("none").display()
    );
    let err = |text: &str| {
        let full = format!("{head}{text}");
        match crate::config::Config::parse(&full) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().unwrap_err().to_string(),
        }
    };
    let jail = "[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\n";
    let e = err(&format!("{jail}bantime_by_country = {{ XA = \"1w\" }}\n"));
    assert!(
        e.starts_with("jails.sshd.bantime_by_country:") && e.contains("[geo] database"),
        "{e}"
    );
    let e = err(&format!(
        "{jail}bantime_by_country = {{ Xanadu = \"1w\" }}\n"
    ));
    assert!(e.contains("`Xanadu` is not a country code"), "{e}");
    let e = err(&format!("{jail}bantime_by_country = {{ XA = \"soon\" }}\n"));
    assert!(e.contains("soon"), "{e}");
    let e = err("[defaults]\nignoreip = [\"bad name!\"]\n");
    assert!(
        e.starts_with("defaults.ignoreip[0]:") && e.contains("DNS host name"),
        "{e}"
    );
    let e = err("[geo]\ndatabase = \"/nonexistent/x.mmdb\"\n[[geo.rules]]\ncountries = [\"XA\"]\n");
    assert!(
        e.starts_with("geo.database: cannot read /nonexistent/x.mmdb"),
        "{e}"
    );
    let e = err("[geo]\ndatabase = \"/x.mmdb\"\n[[geo.rules]]\ncountries = [\"XA\"]\naction = \"allow\"\nclass = \"drop\"\n");
    assert!(e.starts_with("geo.rules[0].class:"), "{e}");
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.mmdb");
    let e = GeoFile::open("geo.database", &missing)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("geo.database: cannot read") && e.contains("none.mmdb"),
        "{e}"
    );
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"\xab\xcd\xefMaxMind.com truncated").unwrap();
    let e = GeoFile::open("geo.database", &junk)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a readable MaxMind DB") && e.contains("junk.mmdb"),
        "{e}"
    );
}
