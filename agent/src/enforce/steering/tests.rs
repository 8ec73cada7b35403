//! Steering without root: config and parsing, operator messages, and the
//! state machine driven through a recording fake runner that models the
//! iptables and ipset a real machine would answer with.

use std::sync::Arc;

use super::config::validate_limit;
use super::diagnostics::{fix_for, unavailable_message};
use super::parse::Rule;
use super::runner::{Call, RecordingRunner, Reply};
use super::*;
use crate::addr::Target;

// ---- pure logic: config, parsing, messages ----

#[test]
fn defaults_are_the_documented_values() {
    let c = TarpitConfig::default();
    assert!(c.enabled && c.notrack);
    assert_eq!(c.target, "TARPIT");
    assert_eq!((c.limit.as_str(), c.burst), ("10/sec", 20));
    assert_eq!(c.fallback, "drop");
    assert_eq!(c.chain, "XBAN-TARPIT");
    assert_eq!(
        (c.set_v4.as_str(), c.set_v6.as_str()),
        ("xban-tarpit-v4", "xban-tarpit-v6")
    );
    assert_eq!(
        (c.iptables.as_str(), c.ip6tables.as_str()),
        ("iptables", "ip6tables")
    );
    assert_eq!(c.ipset, "ipset");
    c.validate().unwrap();
    // An empty [tarpit] section is the defaults; unknown keys are refused.
    let parsed: TarpitConfig = toml::from_str("").unwrap();
    assert_eq!(parsed, c);
    let parsed: TarpitConfig =
        toml::from_str("fallback = \"REJECT --reject-with tcp-reset\"\nlimit = \"5/minute\"")
            .unwrap();
    assert_eq!(parsed.fallback, "REJECT --reject-with tcp-reset");
    parsed.validate().unwrap();
    assert!(toml::from_str::<TarpitConfig>("limt = \"1/sec\"").is_err());
}

#[test]
fn validation_names_the_key() {
    let err = |f: fn(&mut TarpitConfig)| {
        let mut c = TarpitConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    for ok in [
        "1/s",
        "10/sec",
        "10/second",
        "3/minute",
        "3/min",
        "1/hour",
        "1/day",
        "10000/sec",
    ] {
        validate_limit(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert!(err(|c| c.limit = "10/fortnight".into()).starts_with("tarpit.limit: "));
    assert!(err(|c| c.limit = "ten/sec".into()).starts_with("tarpit.limit: "));
    assert!(err(|c| c.limit = "0/sec".into()).starts_with("tarpit.limit: "));
    assert!(err(|c| c.limit = "10001/sec".into()).starts_with("tarpit.limit: "));
    assert!(err(|c| c.limit = "10seconds".into()).starts_with("tarpit.limit: "));
    assert!(err(|c| c.burst = 0).starts_with("tarpit.burst: "));
    assert!(err(|c| c.fallback = "ACCEPT".into()).starts_with("tarpit.fallback: "));
    assert!(err(|c| c.fallback = "".into()).starts_with("tarpit.fallback: "));
    assert!(err(|c| c.fallback = "REJECT -j DROP".into()).starts_with("tarpit.fallback: "));
    assert!(err(|c| c.target = "--tarpit".into()).starts_with("tarpit.target: "));
    assert!(err(|c| c.chain = "INPUT".into()).starts_with("tarpit.chain: "));
    assert!(err(|c| c.chain = "X".repeat(29)).starts_with("tarpit.chain: "));
    assert!(err(|c| c.set_v4 = "a b".into()).starts_with("tarpit.set_v4: "));
    assert!(err(|c| c.set_v6 = c.set_v4.clone()).starts_with("tarpit.set_v6: "));
    assert!(err(|c| c.ipset = "".into()).starts_with("tarpit.ipset: "));
    let c = TarpitConfig {
        fallback: "DROP".into(),
        ..TarpitConfig::default()
    };
    c.validate().unwrap();
}

#[test]
fn saved_rules_parse_with_counters_and_quotes() {
    let r = Rule::parse(
        1,
        "INPUT",
        "-A INPUT -p tcp -m set --match-set xban-tarpit-v4 src -c 12 720 -j XBAN-TARPIT",
    )
    .unwrap();
    assert_eq!(r.packets, 12);
    assert!(r.jumps_to("XBAN-TARPIT") && r.has_seq(&["--match-set", "xban-tarpit-v4", "src"]));
    assert_eq!(
        r.spec.join(" "),
        "-p tcp -m set --match-set xban-tarpit-v4 src -j XBAN-TARPIT"
    );
    let r = Rule::parse(
        2,
        "INPUT",
        r#"-A INPUT -m comment --comment "say \"hi\" there" -j XBAN-TARPIT"#,
    )
    .unwrap();
    assert_eq!(r.spec[3], "say \"hi\" there");
    assert!(Rule::parse(1, "INPUT", "-P INPUT ACCEPT").is_none());
    assert!(Rule::parse(1, "INPUT", "-A INPUTX -j DROP").is_none());
}

/// The texts are what iptables 1.8.9 printed on this machine (see the
/// module docs for how each case was produced).
#[test]
fn unavailability_is_explained() {
    let want = "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms";
    for stderr in [
        "iptables v1.8.9 (nf_tables): Chain 'TARPIT' does not exist\nTry `iptables -h' or 'iptables --help' for more information.",
        "iptables v1.8.9 (legacy): Couldn't load target `TARPIT':No such file or directory",
        "Warning: Extension TARPIT revision 0 not supported, missing kernel module?\niptables v1.8.9 (nf_tables):  RULE_APPEND failed (No such file or directory): rule in chain SCR2",
        "Warning: Extension TARPIT revision 0 not supported, missing kernel module?\niptables: No chain/target/match by that name.",
    ] {
        let m = unavailable_message("TARPIT", "IPv4", stderr);
        assert!(m.starts_with(want), "{m}");
        assert!(!m.contains("Try `"), "{m}");
    }
    let m = unavailable_message(
        "TARPIT",
        "IPv4",
        "iptables v1.8.9 (legacy): Couldn't load target `TARPIT'",
    );
    assert!(m.contains("libxt_TARPIT.so"), "{m}");
    let m = unavailable_message("FOO --x", "IPv6", "iptables v1.8.9: unknown option \"--x\"");
    assert_eq!(m, "the FOO target is not available; IPv6 iptables said: iptables v1.8.9: unknown option \"--x\"");
}

// ---- the config keys the netns tests also parsed ----

#[test]
fn engine_key_is_lowercase_words() {
    let parsed: TarpitConfig = toml::from_str("engine = \"xdp\"").unwrap();
    assert_eq!(parsed.engine, TarpitEngine::Xdp);
    assert!(toml::from_str::<TarpitConfig>("engine = \"XDP\"").is_err());
    assert!(toml::from_str::<TarpitConfig>("engine = \"nft\"").is_err());
    assert_eq!(TarpitConfig::default().engine, TarpitEngine::Auto);
}

// ---- the state machine against a model of iptables and ipset ----

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

type ChainKey = (String, String, String);

/// iptables (per binary) and ipset, as far as steering uses them: enough
/// to answer every command setup, sync, counters and teardown issue with
/// what the real tools print (iptables 1.8.9, ipset 7.19).
#[derive(Debug, Default, Clone, PartialEq)]
struct Netfilter {
    /// (binary, table, chain) → rules: spec words and packet counter.
    /// Built-in chains are there once touched.
    chains: BTreeMap<ChainKey, Vec<(Vec<String>, u64)>>,
    /// name → (type, header, members).
    sets: BTreeMap<String, (String, String, BTreeSet<String>)>,
    /// Does the TARPIT target work (module and extension)?
    tarpit: bool,
    /// Programs that are not installed.
    missing: Vec<String>,
    /// Answer every iptables command with this failure.
    iptables_fails: Option<String>,
}

const BUILTIN: &[&str] = &["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];
const NO_CHAIN: &str = "iptables: No chain/target/match by that name.";
const NO_SET: &str = "ipset v7.19: The set with the given name does not exist";

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

impl Netfilter {
    fn answer(&mut self, call: &Call) -> Reply {
        let program = call.argv[0].as_str();
        if self.missing.iter().any(|m| m == program) {
            return Reply::NotInstalled;
        }
        let args: Vec<&str> = call.argv[1..].iter().map(String::as_str).collect();
        if program.contains("ipset") {
            self.ipset(&args, call.stdin.as_deref())
        } else {
            if let Some(e) = &self.iptables_fails {
                return Reply::Fail(e.clone());
            }
            self.iptables(program, &args)
        }
    }

    fn chain(
        &mut self,
        bin: &str,
        table: &str,
        chain: &str,
    ) -> Option<&mut Vec<(Vec<String>, u64)>> {
        let key = (bin.to_string(), table.to_string(), chain.to_string());
        if BUILTIN.contains(&chain) {
            return Some(self.chains.entry(key).or_default());
        }
        self.chains.get_mut(&key)
    }

    /// A rule's spec as iptables prints it back (`3/minute` reads `3/min`).
    fn normalised(spec: &[&str]) -> Vec<String> {
        spec.iter()
            .map(|w| match w.split_once('/') {
                Some((n, unit)) if n.parse::<u64>().is_ok() => {
                    let unit = ["sec", "min", "hour", "day"]
                        .into_iter()
                        .find(|u| u.starts_with(&unit[..1]))
                        .unwrap_or(unit);
                    format!("{n}/{unit}")
                }
                _ => w.to_string(),
            })
            .collect()
    }

    fn iptables(&mut self, bin: &str, args: &[&str]) -> Reply {
        let mut args = args;
        if args.first() == Some(&"-w") {
            args = &args[2..];
        }
        let mut table = "filter";
        if args.first() == Some(&"-t") {
            table = args[1];
            args = &args[2..];
        }
        let (op, chain, rest) = (args[0], args[1], &args[2..]);
        let user_chain = !BUILTIN.contains(&chain);
        match op {
            "-S" => {
                let Some(rules) = self.chain(bin, table, chain) else {
                    return Reply::Fail(NO_CHAIN.into());
                };
                let mut out = if user_chain {
                    format!("-N {chain}\n")
                } else {
                    format!("-P {chain} ACCEPT\n")
                };
                for (spec, packets) in rules.iter() {
                    let spec = spec.join(" ");
                    if rest.contains(&"-v") {
                        out += &format!("-A {chain} {spec} -c {packets} {}\n", packets * 60);
                    } else {
                        out += &format!("-A {chain} {spec}\n");
                    }
                }
                Reply::Ok(out)
            }
            "-N" => {
                if self.chain(bin, table, chain).is_some() {
                    return Reply::Fail("iptables: Chain already exists.".into());
                }
                self.chains
                    .insert((bin.into(), table.into(), chain.into()), Vec::new());
                Reply::Ok(String::new())
            }
            "-A" | "-I" => {
                let (at, spec) = match op {
                    "-I" => (rest[0].parse::<usize>().unwrap() - 1, &rest[1..]),
                    _ => (usize::MAX, rest),
                };
                let target = spec
                    .windows(2)
                    .find(|w| w[0] == "-j")
                    .map(|w| w[1])
                    .unwrap_or("");
                let known = ["ACCEPT", "DROP", "REJECT", "RETURN", "CT"].contains(&target)
                    || (target == "TARPIT" && self.tarpit)
                    || self.chain(bin, table, target).is_some();
                if !known {
                    return Reply::Fail(format!(
                        "iptables v1.8.9 (nf_tables): Chain '{target}' does not exist\nTry `iptables -h' or 'iptables --help' for more information."
                    ));
                }
                if let Some(set) = spec
                    .windows(2)
                    .find(|w| w[0] == "--match-set")
                    .map(|w| w[1])
                {
                    if !self.sets.contains_key(set) {
                        return Reply::Fail(format!(
                            "iptables v1.8.9 (nf_tables): Set {set} doesn't exist."
                        ));
                    }
                }
                let Some(rules) = self.chain(bin, table, chain) else {
                    return Reply::Fail(NO_CHAIN.into());
                };
                let rule = (Self::normalised(spec), 0);
                rules.insert(at.min(rules.len()), rule);
                Reply::Ok(String::new())
            }
            "-D" => {
                let n: usize = rest[0].parse().unwrap();
                match self.chain(bin, table, chain) {
                    Some(rules) if (1..=rules.len()).contains(&n) => {
                        rules.remove(n - 1);
                        Reply::Ok(String::new())
                    }
                    Some(_) => Reply::Fail("iptables: Index of deletion too big.".into()),
                    None => Reply::Fail(NO_CHAIN.into()),
                }
            }
            "-F" => match self.chain(bin, table, chain) {
                Some(rules) => {
                    rules.clear();
                    Reply::Ok(String::new())
                }
                None => Reply::Fail(NO_CHAIN.into()),
            },
            "-X" => {
                let referenced = self.chains.iter().any(|((b, t, _), rules)| {
                    b == bin
                        && t == table
                        && rules
                            .iter()
                            .any(|(s, _)| s.last().map(String::as_str) == Some(chain))
                });
                let key = (bin.to_string(), table.to_string(), chain.to_string());
                match self.chains.get(&key) {
                    None => Reply::Fail(NO_CHAIN.into()),
                    Some(rules) if !rules.is_empty() || referenced => {
                        Reply::Fail("iptables v1.8.9 (nf_tables):  CHAIN_USER_DEL failed (Device or resource busy)".into())
                    }
                    Some(_) => {
                        self.chains.remove(&key);
                        Reply::Ok(String::new())
                    }
                }
            }
            other => panic!("the model has no iptables {other}"),
        }
    }

    fn ipset(&mut self, args: &[&str], stdin: Option<&str>) -> Reply {
        match args {
            ["list", "-t", set] => match self.sets.get(*set) {
                Some((kind, header, members)) => Reply::Ok(format!(
                    "Name: {set}\nType: {kind}\nRevision: 7\nHeader: {header}\nSize in memory: 1000\nReferences: 0\nNumber of entries: {}\n",
                    members.len()
                )),
                None => Reply::Fail(NO_SET.into()),
            },
            ["list", "-n", set] => match self.sets.contains_key(*set) {
                true => Reply::Ok(format!("{set}\n")),
                false => Reply::Fail(NO_SET.into()),
            },
            ["create", set, kind, rest @ ..] => {
                if self.sets.contains_key(*set) {
                    return Reply::Fail(
                        "ipset v7.19: Set cannot be created: set with the same name already exists".into(),
                    );
                }
                let header = format!("{} hashsize 1024 bucketsize 12 initval 0x1", rest.join(" "));
                self.sets
                    .insert(set.to_string(), (kind.to_string(), header, BTreeSet::new()));
                Reply::Ok(String::new())
            }
            ["save", set] => match self.sets.get(*set) {
                Some((kind, header, members)) => {
                    let mut out = format!("create {set} {kind} {header}\n");
                    for m in members {
                        out += &format!("add {set} {m}\n");
                    }
                    Reply::Ok(out)
                }
                None => Reply::Fail(NO_SET.into()),
            },
            [op @ ("add" | "del"), set, member, "-exist"] => self.member(op, set, member),
            ["-exist", "restore"] => {
                for line in stdin.unwrap_or("").lines() {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    if let Reply::Fail(e) = self.member(w[0], w[1], w[2]) {
                        return Reply::Fail(e);
                    }
                }
                Reply::Ok(String::new())
            }
            ["destroy", set] => {
                let used = self
                    .chains
                    .values()
                    .flatten()
                    .any(|(spec, _)| spec.iter().any(|w| w == set));
                if used {
                    Reply::Fail("ipset v7.19: Set cannot be destroyed: it is in use by a kernel component".into())
                } else if self.sets.remove(*set).is_some() {
                    Reply::Ok(String::new())
                } else {
                    Reply::Fail(NO_SET.into())
                }
            }
            other => panic!("the model has no ipset {other:?}"),
        }
    }

    fn member(&mut self, op: &str, set: &str, member: &str) -> Reply {
        let Some((_, _, members)) = self.sets.get_mut(set) else {
            return Reply::Fail(NO_SET.into());
        };
        if op == "add" {
            members.insert(member.to_string());
        } else {
            members.remove(member);
        }
        Reply::Ok(String::new())
    }

    /// Rules of a chain as `-A CHAIN spec` lines.
    fn rules(&self, bin: &str, table: &str, chain: &str) -> Vec<String> {
        self.chains
            .get(&(bin.into(), table.into(), chain.into()))
            .map(|rules| rules.iter().map(|(s, _)| s.join(" ")).collect())
            .unwrap_or_default()
    }

    /// Nothing steering made is left (empty built-in chains do not count).
    fn is_clean(&self) -> bool {
        self.sets.keys().all(|s| s.starts_with("foreign"))
            && self.chains.iter().all(|((_, _, chain), rules)| {
                BUILTIN.contains(&chain.as_str())
                    && rules
                        .iter()
                        .all(|(s, _)| !s.iter().any(|w| w.contains("xban") || w.contains("XBAN")))
            })
    }
}

/// A model and a recording runner answering from it.
fn fake(nf: Netfilter) -> (Arc<Mutex<Netfilter>>, Arc<RecordingRunner>) {
    let model = Arc::new(Mutex::new(nf));
    let shared = model.clone();
    let runner = RecordingRunner::new(move |call| shared.lock().unwrap().answer(call));
    (model, Arc::new(runner))
}

fn test_cfg() -> TarpitConfig {
    TarpitConfig {
        engine: TarpitEngine::Iptables,
        ..TarpitConfig::default()
    }
}

fn substitute_cfg() -> TarpitConfig {
    TarpitConfig {
        fallback: "REJECT --reject-with tcp-reset".into(),
        engine: TarpitEngine::Iptables,
        ..TarpitConfig::default()
    }
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

/// Calls that change something (everything but listing).
fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(Call::line)
        .filter(|l| !(l.contains(" -S ") || l.contains(" list ") || l.contains(" save ")))
        .collect()
}

const HOOK4: &str = "-p tcp -m set --match-set xban-tarpit-v4 src -j XBAN-TARPIT";
const HOOK6: &str = "-p tcp -m set --match-set xban-tarpit-v6 src -j XBAN-TARPIT";

#[test]
fn setup_creates_adopts_rewrites_and_tears_down() {
    let cfg = substitute_cfg();
    let mut nf = Netfilter::default();
    // A set left by an earlier run, with a member, to be adopted.
    nf.sets.insert(
        cfg.set_v4.clone(),
        (
            "hash:net".into(),
            "family inet hashsize 1024 maxelem 1048576".into(),
            BTreeSet::from(["198.51.100.99".to_string()]),
        ),
    );
    let (model, runner) = fake(nf);
    let mut st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Substitute(cfg.fallback.clone()));
    assert_eq!(
        st.members().unwrap(),
        vec![t("198.51.100.99")],
        "adopted set lost its member"
    );
    st.add(&t("198.51.100.0/25")).unwrap();
    st.add(&t("2001:db8:5::/48")).unwrap();
    st.add(&t("2001:db8:5::/48")).unwrap(); // -exist: adding twice is fine
    {
        let m = model.lock().unwrap();
        for (bin, hook, set) in [
            ("iptables", HOOK4, "xban-tarpit-v4"),
            ("ip6tables", HOOK6, "xban-tarpit-v6"),
        ] {
            assert_eq!(m.rules(bin, "filter", "INPUT"), vec![hook]);
            assert_eq!(
                m.rules(bin, "filter", "XBAN-TARPIT"),
                vec![
                    "-p tcp -m limit --limit 10/sec --limit-burst 20 -j REJECT --reject-with tcp-reset",
                    "-p tcp -j DROP"
                ]
            );
            assert_eq!(
                m.rules(bin, "raw", "PREROUTING"),
                vec![format!(
                    "-p tcp -m set --match-set {set} src -j CT --notrack"
                )]
            );
        }
        let (kind, header, _) = &m.sets["xban-tarpit-v6"];
        assert_eq!(kind, "hash:net");
        assert!(
            header.contains("family inet6") && header.contains("maxelem 1048576"),
            "{header}"
        );
        assert!(!header.contains("timeout"));
        // The probe's scratch chains are gone.
        assert!(!m.chains.keys().any(|(_, _, c)| c.starts_with("XBAN-PROBE")));
    }

    // Setup again (a restart): nothing changes, members stay, and no
    // command outside the scratch chain writes anything.
    let before = model.lock().unwrap().clone();
    drop(st);
    runner.clear();
    let st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    assert_eq!(
        *model.lock().unwrap(),
        before,
        "second setup changed something"
    );
    let outside_scratch: Vec<String> = writes(&runner.calls())
        .into_iter()
        .filter(|l| !l.contains("XBAN-PROBE"))
        .collect();
    assert!(outside_scratch.is_empty(), "{outside_scratch:#?}");
    assert_eq!(
        st.members().unwrap(),
        vec![
            t("198.51.100.0/25"),
            t("198.51.100.99"),
            t("2001:db8:5::/48")
        ]
    );

    // Duplicate hook and notrack rules (another tool, an older version)
    // and a foreign look-alike rule on another set, placed first.
    {
        let mut m = model.lock().unwrap();
        for (bin, fam, set, foreign) in [
            ("iptables", "inet", "xban-tarpit-v4", "foreign-v4"),
            ("ip6tables", "inet6", "xban-tarpit-v6", "foreign-v6"),
        ] {
            m.sets.insert(
                foreign.into(),
                ("hash:net".into(), format!("family {fam}"), BTreeSet::new()),
            );
            let hook = format!("-p tcp -m set --match-set {set} src -j XBAN-TARPIT");
            m.chain(bin, "filter", "INPUT")
                .unwrap()
                .push((words(&hook), 0));
            let notrack = format!("-p tcp -m set --match-set {set} src -j CT --notrack");
            m.chain(bin, "raw", "PREROUTING")
                .unwrap()
                .push((words(&notrack), 0));
            let look_alike = format!("-p tcp -m set --match-set {foreign} src -j CT --notrack");
            m.chain(bin, "raw", "PREROUTING")
                .unwrap()
                .insert(0, (words(&look_alike), 0));
        }
    }

    // A changed limit and notrack = false are applied in place, without a
    // gap: the new rules are appended before the old ones are deleted.
    let changed = TarpitConfig {
        limit: "3/minute".into(),
        burst: 4,
        notrack: false,
        ..cfg.clone()
    };
    runner.clear();
    let st = TarpitSteering::setup_with(&changed, runner.clone()).unwrap();
    {
        let m = model.lock().unwrap();
        for bin in ["iptables", "ip6tables"] {
            let rules = m.rules(bin, "filter", "XBAN-TARPIT");
            assert_eq!(rules.len(), 2, "{rules:?}");
            assert!(
                rules[0].contains("--limit 3/min --limit-burst 4 -j REJECT"),
                "{rules:?}"
            );
            assert!(rules[1].ends_with("-j DROP"), "{rules:?}");
            let raw = m.rules(bin, "raw", "PREROUTING");
            assert_eq!(raw.len(), 1, "{raw:?}");
            assert!(raw[0].contains("--match-set foreign-v"), "{raw:?}");
            assert_eq!(m.rules(bin, "filter", "INPUT").len(), 1);
        }
    }
    let chain_writes: Vec<String> = writes(&runner.calls())
        .into_iter()
        .filter(|l| {
            l.starts_with("iptables ")
                && l.contains(" XBAN-TARPIT")
                && !l.contains("-j XBAN-TARPIT")
        })
        .collect();
    assert_eq!(
        chain_writes,
        vec![
            "iptables -w 10 -t filter -A XBAN-TARPIT -p tcp -m limit --limit 3/minute --limit-burst 4 -j REJECT --reject-with tcp-reset",
            "iptables -w 10 -t filter -A XBAN-TARPIT -p tcp -j DROP",
            "iptables -w 10 -t filter -D XBAN-TARPIT 1",
            "iptables -w 10 -t filter -D XBAN-TARPIT 1",
        ]
    );
    // Duplicates are deleted by number, never by spec.
    assert!(writes(&runner.calls())
        .iter()
        .filter(|l| l.contains(" -D "))
        .all(|l| l
            .split_whitespace()
            .last()
            .unwrap()
            .parse::<usize>()
            .is_ok()));
    assert_eq!(st.members().unwrap().len(), 3);

    TarpitSteering::teardown_with(&cfg, runner.clone()).unwrap();
    assert!(
        model.lock().unwrap().is_clean(),
        "{:#?}",
        model.lock().unwrap()
    );
    // Teardown of nothing is fine too.
    TarpitSteering::teardown_with(&cfg, runner).unwrap();
}

/// What another tool (or an operator) removed or changed while the agent
/// was away is put back by the next setup; the members are synced back.
#[test]
fn setup_again_repairs_drift() {
    let cfg = substitute_cfg();
    let (model, runner) = fake(Netfilter::default());
    let mut st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    st.sync(&[t("198.51.100.7"), t("2001:db8:7::/64")]).unwrap();
    let good = model.lock().unwrap().clone();
    {
        let mut m = model.lock().unwrap();
        m.chain("iptables", "filter", "INPUT").unwrap().clear();
        m.chain("ip6tables", "raw", "PREROUTING").unwrap().clear();
        // The chain's limited rule edited by hand.
        let chain = m.chain("iptables", "filter", "XBAN-TARPIT").unwrap();
        chain[0] = (words("-p tcp -j ACCEPT"), 0);
        // A member lost, a stranger added.
        let (_, _, members) = m.sets.get_mut("xban-tarpit-v4").unwrap();
        members.clear();
        members.insert("203.0.113.9".into());
    }
    drop(st);
    let mut st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    runner.clear();
    st.sync(&[t("198.51.100.7"), t("2001:db8:7::/64")]).unwrap();
    // One restore for both changes, nothing for the set that was right.
    let restores: Vec<Call> = runner
        .calls()
        .into_iter()
        .filter(|c| c.line() == "ipset -exist restore")
        .collect();
    assert_eq!(restores.len(), 1);
    assert_eq!(
        restores[0].stdin.as_deref(),
        Some("add xban-tarpit-v4 198.51.100.7\ndel xban-tarpit-v4 203.0.113.9\n")
    );
    assert_eq!(*model.lock().unwrap(), good);
    // In step: a sync changes nothing and runs no restore.
    runner.clear();
    st.sync(&[t("2001:db8:7::/64"), t("198.51.100.7")]).unwrap();
    assert!(writes(&runner.calls()).is_empty(), "{:?}", runner.calls());
}

#[test]
fn tarpit_target_in_use_when_it_works() {
    let cfg = test_cfg();
    let (model, runner) = fake(Netfilter {
        tarpit: true,
        ..Netfilter::default()
    });
    let st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Tarpit);
    assert!(st.mode().is_active());
    assert_eq!(st.notice(), None);
    assert_eq!(
        st.reason(),
        "engine = \"iptables\" and the TARPIT target works"
    );
    let m = model.lock().unwrap();
    assert_eq!(
        m.rules("ip6tables", "filter", "XBAN-TARPIT")[0],
        "-p tcp -m limit --limit 10/sec --limit-burst 20 -j TARPIT"
    );
    // The probe ran in a scratch chain of each family and removed it.
    let calls: Vec<String> = runner.calls().iter().map(Call::line).collect();
    let scratch = format!("XBAN-PROBE-{}", std::process::id());
    for bin in ["iptables", "ip6tables"] {
        assert!(
            calls.contains(&format!(
                "{bin} -w 10 -t filter -A {scratch} -p tcp -j TARPIT"
            )),
            "{calls:#?}"
        );
        assert!(
            calls.contains(&format!("{bin} -w 10 -t filter -X {scratch}")),
            "{calls:#?}"
        );
    }
    assert!(!m.chains.keys().any(|(_, _, c)| c == &scratch));
    // The auto engine takes it too.
    drop(m);
    let auto = TarpitSteering::setup_with(&TarpitConfig::default(), runner).unwrap();
    assert_eq!(auto.mode(), &SteeringMode::Tarpit);
}

#[test]
fn a_user_chain_named_like_the_target_is_not_jumped_to() {
    let mut nf = Netfilter {
        tarpit: true,
        ..Netfilter::default()
    };
    nf.chains.insert(
        ("iptables".into(), "filter".into(), "TARPIT".into()),
        Vec::new(),
    );
    let (_, runner) = fake(nf);
    let st = TarpitSteering::setup_with(&test_cfg(), runner).unwrap();
    assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
    assert!(
        st.notice().unwrap().contains("has a chain named TARPIT"),
        "{:?}",
        st.notice()
    );
}

#[test]
fn unavailable_tarpit_with_drop_fallback_creates_nothing() {
    let cfg = test_cfg();
    let (model, runner) = fake(Netfilter::default());
    let mut st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
    let notice = st.notice().unwrap();
    assert!(
        notice.starts_with(
            "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms"
        ),
        "{notice}"
    );
    assert!(!st.leftovers());
    assert!(model.lock().unwrap().is_clean());
    // Inactive steering accepts calls and runs nothing.
    runner.clear();
    st.add(&t("198.51.100.7")).unwrap();
    st.remove(&t("198.51.100.7")).unwrap();
    st.sync(&[t("198.51.100.8")]).unwrap();
    assert!(st.members().unwrap().is_empty());
    assert_eq!(st.counters().unwrap(), SteeringCounters::default());
    assert_eq!(
        st.counters_snapshot().unwrap().counters,
        Ok(SteeringCounters::default())
    );
    assert!(runner.calls().is_empty(), "{:?}", runner.calls());

    // Steering left by an earlier run with a substitute is reported and
    // kept (its members stay held until the caller drops them in XDP and
    // tears it down); the same when disabled.
    let earlier = substitute_cfg();
    let mut old = TarpitSteering::setup_with(&earlier, runner.clone()).unwrap();
    old.add(&t("198.51.100.9")).unwrap();
    let before = model.lock().unwrap().clone();
    let st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
    assert!(st.leftovers());
    let disabled = TarpitConfig {
        enabled: false,
        ..cfg.clone()
    };
    let st = TarpitSteering::setup_with(&disabled, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Disabled);
    assert!(st.leftovers());
    assert_eq!(*model.lock().unwrap(), before);
    TarpitSteering::teardown_with(&cfg, runner.clone()).unwrap();
    assert!(model.lock().unwrap().is_clean());
    let st = TarpitSteering::setup_with(&disabled, runner).unwrap();
    assert!(!st.leftovers());
}

#[test]
fn unavailable_tarpit_with_substitute_uses_it() {
    let cfg = substitute_cfg();
    let (model, runner) = fake(Netfilter::default());
    let st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    assert_eq!(
        st.mode(),
        &SteeringMode::Substitute("REJECT --reject-with tcp-reset".into())
    );
    assert!(st
        .notice()
        .unwrap()
        .contains("fallback target `REJECT --reject-with tcp-reset`"));
    for bin in ["iptables", "ip6tables"] {
        let chain = model
            .lock()
            .unwrap()
            .rules(bin, "filter", "XBAN-TARPIT")
            .join("\n");
        assert!(
            chain.contains("-j REJECT --reject-with tcp-reset"),
            "{chain}"
        );
        assert!(!chain.contains("-j TARPIT"), "{chain}");
    }
    TarpitSteering::teardown_with(&cfg, runner).unwrap();
    assert!(model.lock().unwrap().is_clean());
}

#[test]
fn auto_and_xdp_engines_create_nothing_and_say_why() {
    // Default engine: auto. TARPIT missing: the XDP tarpit, not drop, and
    // `fallback` is not used.
    let auto = TarpitConfig {
        fallback: "REJECT --reject-with tcp-reset".into(),
        ..TarpitConfig::default()
    };
    let (model, runner) = fake(Netfilter::default());
    let st = TarpitSteering::setup_with(&auto, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert!(!st.mode().is_active());
    assert!(
        st.reason()
            .starts_with("engine = \"auto\" and the TARPIT target is not available"),
        "{}",
        st.reason()
    );
    assert!(model.lock().unwrap().is_clean());
    // Missing iptables entirely: auto still holds the class in XDP.
    let no_tools = TarpitConfig {
        iptables: "/nonexistent/iptables".into(),
        ..TarpitConfig::default()
    };
    model
        .lock()
        .unwrap()
        .missing
        .push(no_tools.iptables.clone());
    let st = TarpitSteering::setup_with(&no_tools, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert!(st.reason().contains("cannot be used"), "{}", st.reason());
    // engine = "xdp": no probe, nothing created; an earlier chain is
    // reported as leftovers (the caller removes it).
    let xdp = TarpitConfig {
        engine: TarpitEngine::Xdp,
        ..TarpitConfig::default()
    };
    runner.clear();
    let st = TarpitSteering::setup_with(&xdp, runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert_eq!(st.reason(), "[tarpit] engine = \"xdp\"");
    assert!(!st.leftovers());
    assert!(writes(&runner.calls()).is_empty(), "{:?}", runner.calls());
    let earlier = substitute_cfg();
    TarpitSteering::setup_with(&earlier, runner.clone()).unwrap();
    let st = TarpitSteering::setup_with(&xdp, runner.clone()).unwrap();
    assert!(st.leftovers());
    TarpitSteering::teardown_with(&earlier, runner).unwrap();
    assert!(model.lock().unwrap().is_clean());
}

#[test]
fn broken_substitute_and_missing_tools_are_errors_with_fixes() {
    let (model, runner) = fake(Netfilter::default());
    let cfg = TarpitConfig {
        fallback: "NOSUCHTARGET".into(),
        engine: TarpitEngine::Iptables,
        ..TarpitConfig::default()
    };
    let e = TarpitSteering::setup_with(&cfg, runner.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fallback target `NOSUCHTARGET` does not work"),
        "{e}"
    );
    assert!(e.contains("set it to \"drop\""), "{e}");

    let cfg = TarpitConfig {
        ipset: "ipset-not-here".into(),
        ..substitute_cfg()
    };
    model.lock().unwrap().missing = vec!["ipset-not-here".into()];
    let e = TarpitSteering::setup_with(&cfg, runner.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipset-not-here not installed") && e.contains("apt-get install ipset"),
        "{e}"
    );
    // Teardown cleans what exists: a tool that is not installed has nothing
    // of its own to remove, and the others' parts still go.
    TarpitSteering::setup_with(&substitute_cfg(), runner.clone()).unwrap();
    let cfg = TarpitConfig {
        ip6tables: "ip6tables-not-here".into(),
        ..substitute_cfg()
    };
    model.lock().unwrap().missing = vec!["ip6tables-not-here".into()];
    TarpitSteering::teardown_with(&cfg, runner.clone()).unwrap();
    {
        let m = model.lock().unwrap();
        assert!(m.rules("iptables", "filter", "XBAN-TARPIT").is_empty());
        assert!(
            m.rules("iptables", "filter", "INPUT").is_empty(),
            "the IPv4 chain is removed"
        );
        // The IPv6 set is kept: ip6tables rules may still use it.
        assert!(m.sets.contains_key("xban-tarpit-v6") && !m.sets.contains_key("xban-tarpit-v4"));
    }
    TarpitSteering::teardown_with(&substitute_cfg(), runner.clone()).unwrap();
    let cfg = TarpitConfig {
        iptables: "iptables-not-here".into(),
        ip6tables: "ip6tables-not-here".into(),
        ipset: "ipset-not-here".into(),
        ..TarpitConfig::default()
    };
    model.lock().unwrap().missing = vec![
        cfg.iptables.clone(),
        cfg.ip6tables.clone(),
        cfg.ipset.clone(),
    ];
    TarpitSteering::teardown_with(&cfg, runner.clone()).unwrap();

    // An existing set of the wrong kind is not silently adopted.
    model.lock().unwrap().sets.insert(
        "xban-tarpit-v4".into(),
        (
            "hash:ip".into(),
            "family inet hashsize 1024 maxelem 65536 timeout 60".into(),
            BTreeSet::new(),
        ),
    );
    let e = TarpitSteering::setup_with(&substitute_cfg(), runner.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipset `xban-tarpit-v4` exists as `hash:ip"),
        "{e}"
    );
    TarpitSteering::teardown_with(&substitute_cfg(), runner).unwrap();
    assert!(model.lock().unwrap().is_clean());
}

/// A failing command is reported with the command, what it said and the fix.
#[test]
fn command_failures_name_the_command_and_the_fix() {
    let (model, runner) = fake(Netfilter::default());
    model.lock().unwrap().iptables_fails =
        Some("iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)".into());
    let e = TarpitSteering::setup_with(&substitute_cfg(), runner.clone()).unwrap_err();
    assert!(matches!(e, SteeringError::Command { .. }), "{e:?}");
    let e = e.to_string();
    let scratch = format!("XBAN-PROBE-{}", std::process::id());
    assert!(
        e.starts_with(&format!("`iptables -w 10 -t filter -N {scratch}` failed: ")),
        "{e}"
    );
    assert!(
        e.contains("fix: run xban as root (it needs CAP_NET_ADMIN)"),
        "{e}"
    );
    // The same failure under auto sends the class to the XDP tarpit.
    let st = TarpitSteering::setup_with(&TarpitConfig::default(), runner.clone()).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert!(st.reason().contains("Permission denied"), "{}", st.reason());
    // ipset failing on a member is reported the same way.
    model.lock().unwrap().iptables_fails = None;
    let mut st = TarpitSteering::setup_with(&substitute_cfg(), runner.clone()).unwrap();
    model.lock().unwrap().sets.clear();
    let e = st.add(&t("198.51.100.7")).unwrap_err().to_string();
    assert!(
        e.contains("`ipset add xban-tarpit-v4 198.51.100.7 -exist` failed")
            && e.contains("check the ipset error above"),
        "{e}"
    );
    // Output that is not a member is a parse error naming the command.
    let runner = Arc::new(RecordingRunner::new(|c| match c.line().as_str() {
        "ipset save xban-tarpit-v4" => Reply::Ok("add xban-tarpit-v4 not-an-address\n".into()),
        _ => Reply::Ok(String::new()),
    }));
    let plumbing = super::plumbing::Plumbing {
        cfg: substitute_cfg(),
        runner,
    };
    let e = plumbing
        .set_members(super::config::Family::V4)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "`ipset save xban-tarpit-v4` printed `add xban-tarpit-v4 not-an-address`, which is not an address");
}

#[test]
fn zero_prefix_is_refused() {
    let (_, runner) = fake(Netfilter::default());
    let mut st = TarpitSteering::setup_with(&substitute_cfg(), runner.clone()).unwrap();
    runner.clear();
    let e = st.add(&t("0.0.0.0/0")).unwrap_err().to_string();
    assert!(e.contains("/0"), "{e}");
    assert!(st.sync(&[t("::/0")]).is_err());
    assert!(runner.calls().is_empty(), "{:?}", runner.calls());
}

#[test]
fn members_go_to_their_family_set() {
    let (model, runner) = fake(Netfilter::default());
    let mut st = TarpitSteering::setup_with(&substitute_cfg(), runner.clone()).unwrap();
    runner.clear();
    st.add(&t("198.51.100.7")).unwrap();
    st.add(&t("2001:db8::/48")).unwrap();
    st.remove(&t("198.51.100.7")).unwrap();
    let lines: Vec<String> = runner.calls().iter().map(Call::line).collect();
    assert_eq!(
        lines,
        vec![
            "ipset add xban-tarpit-v4 198.51.100.7 -exist",
            "ipset add xban-tarpit-v6 2001:db8::/48 -exist",
            "ipset del xban-tarpit-v4 198.51.100.7 -exist",
        ]
    );
    let m = model.lock().unwrap();
    assert!(m.sets["xban-tarpit-v4"].2.is_empty());
    assert_eq!(
        m.sets["xban-tarpit-v6"].2,
        BTreeSet::from(["2001:db8::/48".to_string()])
    );
}

#[test]
fn counters_come_from_the_hook_and_the_chain() {
    let (model, runner) = fake(Netfilter::default());
    let st = TarpitSteering::setup_with(&substitute_cfg(), runner.clone()).unwrap();
    {
        let mut m = model.lock().unwrap();
        m.chain("iptables", "filter", "INPUT").unwrap()[0].1 = 12;
        let chain = m.chain("iptables", "filter", "XBAN-TARPIT").unwrap();
        chain[0].1 = 9;
        chain[1].1 = 3;
        m.chain("ip6tables", "filter", "INPUT").unwrap()[0].1 = 2;
        m.chain("ip6tables", "filter", "XBAN-TARPIT").unwrap()[0].1 = 2;
        // Another tool's rule in INPUT is not counted.
        m.chain("iptables", "filter", "INPUT")
            .unwrap()
            .push((words("-p tcp --dport 22 -j ACCEPT"), 1000));
    }
    let want = SteeringCounters {
        v4: FamilyCounters {
            steered_packets: 12,
            limited_packets: 9,
            dropped_over_limit: 3,
        },
        v6: FamilyCounters {
            steered_packets: 2,
            limited_packets: 2,
            dropped_over_limit: 0,
        },
    };
    assert_eq!(st.counters().unwrap(), want);
    // What status serves is read by a background thread, off the loop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let seen = loop {
        if let Some(r) = st.counters_snapshot() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no reading");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(seen.counters, Ok(want));
    // A failed read is served as its error.
    let (model, runner) = fake(Netfilter::default());
    let st = TarpitSteering::setup_with(&substitute_cfg(), runner).unwrap();
    model.lock().unwrap().iptables_fails = Some("iptables: Permission denied".into());
    let e = st.counters().unwrap_err().to_string();
    assert!(e.contains("run xban as root"), "{e}");
}

#[test]
fn an_invalid_config_runs_nothing() {
    let (_, runner) = fake(Netfilter::default());
    let bad = TarpitConfig {
        limit: "10/fortnight".into(),
        ..substitute_cfg()
    };
    let e = TarpitSteering::setup_with(&bad, runner.clone()).unwrap_err();
    assert!(
        matches!(e, SteeringError::Config(ref m) if m.starts_with("tarpit.limit: ")),
        "{e:?}"
    );
    // Teardown needs only the names, so a bad limit does not stop it.
    TarpitSteering::teardown_with(&bad, runner.clone()).unwrap();
    let bad_names = TarpitConfig {
        chain: "INPUT".into(),
        ..substitute_cfg()
    };
    runner.clear();
    assert!(TarpitSteering::teardown_with(&bad_names, runner.clone()).is_err());
    assert!(runner.calls().is_empty());
}

#[test]
fn failures_suggest_fixes() {
    for (program, stderr, fix) in [
        ("iptables", "iptables: Permission denied (you must be root)", "run xban as root"),
        ("iptables", "Another app is currently holding the xtables lock.", "xtables lock"),
        ("ipset", "ipset v7.19: Hash is full, cannot add more elements", "maxelem 1048576"),
        ("ipset", "ipset v7.19: Set cannot be created: set with the same name already exists", "destroy it"),
        ("ipset", "ipset v7.19: Set cannot be destroyed: it is in use by a kernel component", "delete that rule first"),
        ("iptables", "iptables v1.8.9 (legacy): Couldn't load match `set':No such file or directory", "xt_set"),
        ("ipset", "ipset v7.19: Kernel error received: Operation not supported", "ip_set"),
        ("iptables-legacy", "iptables v1.8.9 (legacy): can't initialize iptables table `filter': Table does not exist (do you need to insmod?)", "other backend"),
        ("iptables", "iptables v1.8.9 (nf_tables): table `filter' is incompatible, use 'nft' tool.", "nft"),
        ("ip", "Cannot open network namespace \"x\": No such file or directory", "namespace does not exist"),
        ("ipset", "something else", "check the ipset error above"),
        ("iptables", "something else", "check the iptables error above"),
    ] {
        let got = fix_for(program, stderr);
        assert!(got.contains(fix), "{stderr}: {got}");
    }
    for (program, hint) in [
        ("/usr/sbin/ip6tables-legacy", "apt-get install iptables"),
        ("ipset", "apt-get install ipset"),
        ("ip", "apt-get install iproute2"),
        ("nft", "install nft or fix its name in [tarpit]"),
    ] {
        let e = super::diagnostics::not_installed(program).to_string();
        assert!(
            e.contains(hint) && e.starts_with(&format!("{program} not installed")),
            "{e}"
        );
    }
}

/// The real runner, without root: a program that is not there, and one
/// that reads its input and fails.
#[test]
fn command_runner_reports_exit_output_and_missing_programs() {
    let runner = CommandRunner::new(None);
    let e = runner
        .run("/nonexistent/xban-no-such-program", &[], None)
        .unwrap_err();
    assert!(matches!(e, SteeringError::NotInstalled { .. }), "{e:?}");
    let ran = runner
        .run("sh", &["-c", "cat; echo said >&2; exit 3"], Some("in\n"))
        .unwrap();
    assert_eq!(
        ran,
        Ran {
            command: "sh -c cat; echo said >&2; exit 3".into(),
            program: "sh".into(),
            success: false,
            stdout: "in\n".into(),
            stderr: "said".into(),
        }
    );
    let e = ran.ok().unwrap_err().to_string();
    assert!(
        e.starts_with("`sh -c cat; echo said >&2; exit 3` failed: said; fix: "),
        "{e}"
    );
    // The untranslated messages, whatever the caller's locale.
    let ran = runner.run("sh", &["-c", "echo $LC_ALL"], None).unwrap();
    assert_eq!(ran.ok().unwrap(), "C\n");
}

/// A batch of tarpit-class bans joins the sets in one `ipset restore`,
/// both families at once; an inactive steering runs nothing.
#[test]
fn add_all_steers_a_batch_with_one_restore() {
    let cfg = substitute_cfg();
    let (model, runner) = fake(Netfilter::default());
    let mut st = TarpitSteering::setup_with(&cfg, runner.clone()).unwrap();
    runner.clear();
    st.add_all(&[t("198.51.100.7"), t("2001:db8:7::/64"), t("198.51.100.8")])
        .unwrap();
    let calls = runner.calls();
    assert_eq!(writes(&calls), ["ipset -exist restore"], "{calls:?}");
    assert_eq!(
        calls[0].stdin.as_deref(),
        Some(
            "add xban-tarpit-v4 198.51.100.7\nadd xban-tarpit-v6 2001:db8:7::/64\nadd xban-tarpit-v4 198.51.100.8\n"
        )
    );
    let m = model.lock().unwrap();
    assert_eq!(m.sets["xban-tarpit-v4"].2.len(), 2);
    assert_eq!(m.sets["xban-tarpit-v6"].2.len(), 1);
    drop(m);
    runner.clear();
    st.add_all(&[]).unwrap();
    assert!(writes(&runner.calls()).is_empty());
}
