//! Tarpit steering against real iptables and ipset, in the lab's server
//! namespace (moved from the agent's `enforce::iptables` unit tests, which
//! had a private netns lab): setup, adoption, rewrite in place, teardown,
//! and real TCP connections refused, rate-limited and counted. The same
//! logic is unit-tested without root against a recording fake
//! (`enforce::steering::tests`); these tests check it against the real tools.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xban::addr::Target;
use xban::enforce::steering::{
    FamilyCounters, SteeringCounters, SteeringMode, TarpitConfig, TarpitEngine, TarpitSteering,
    COUNTER_PROBE_EVERY,
};
use xban_tests::{Lab, ATK_V4, ATK_V6, SRV_V4, SRV_V6};

/// Steering runs its commands in the lab's server namespace.
fn server_ns(lab: &Lab) -> Option<&str> {
    Some(&lab.srv_ns)
}

/// Run a command in the server namespace; panic with its stderr on failure.
fn exec(lab: &Lab, program: &str, args: &[&str]) -> String {
    lab.in_srv(program, args).unwrap()
}

/// A listener in the server namespace.
fn listen(lab: &Lab, ip: &str) -> TcpListener {
    let ip: IpAddr = ip.parse().unwrap();
    Lab::in_ns(&lab.srv_ns, || {
        TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind listener")
    })
}

/// A TCP connection attempt from the attacker namespace.
fn connect(lab: &Lab, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    Lab::in_ns(&lab.atk_ns, || TcpStream::connect_timeout(&to, timeout))
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

/// Everything the module may have created in `ns`, as text.
fn snapshot(ns: &Lab, cfg: &TarpitConfig) -> String {
    let mut out = String::new();
    for bin in [&cfg.iptables, &cfg.ip6tables] {
        for table in ["filter", "raw"] {
            out += &exec(ns, bin, &["-w", "10", "-t", table, "-S"]);
        }
    }
    out += &exec(ns, &cfg.ipset, &["save"]);
    // Lines that vary between calls or come from the other backend.
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_nothing_left(ns: &Lab, cfg: &TarpitConfig) {
    let snap = snapshot(ns, cfg);
    // The set names also find any rule still matching on them.
    for needle in [&cfg.chain, &cfg.set_v4, &cfg.set_v6, "XBAN-PROBE"] {
        assert!(!snap.contains(needle), "{needle} left behind:\n{snap}");
    }
}

fn tarpit_in_kernel() -> bool {
    std::fs::read_to_string("/proc/net/ip_tables_targets")
        .map(|s| s.lines().any(|l| l == "TARPIT"))
        .unwrap_or(false)
}

/// Setup creates, setup again adopts without duplicates or member loss,
/// a changed config is applied in place, teardown removes everything.
fn setup_adopt_teardown(cfg: TarpitConfig) {
    let ns = Lab::new().unwrap();
    // A set left by an earlier run, with a member, to be adopted.
    exec(
        &ns,
        &cfg.ipset,
        &[
            "create",
            &cfg.set_v4,
            "hash:net",
            "family",
            "inet",
            "maxelem",
            "1048576",
        ],
    );
    exec(&ns, &cfg.ipset, &["add", &cfg.set_v4, "198.51.100.99"]);

    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Substitute(cfg.fallback.clone()));
    assert_eq!(
        st.members().unwrap(),
        vec![t("198.51.100.99")],
        "adopted set lost its member"
    );
    st.add(&t("198.51.100.0/25")).unwrap();
    st.add(&t("2001:db8:5::/48")).unwrap();
    st.add(&t("2001:db8:5::/48")).unwrap(); // -exist: adding twice is fine

    for bin in [&cfg.iptables, &cfg.ip6tables] {
        let set = if bin == &cfg.iptables {
            &cfg.set_v4
        } else {
            &cfg.set_v6
        };
        let filter = exec(&ns, bin, &["-w", "10", "-S"]);
        let hook = format!("-A INPUT -p tcp -m set --match-set {set} src -j XBAN-TARPIT");
        assert!(filter.contains(&hook), "{bin}: no hook in\n{filter}");
        assert!(filter.contains("-N XBAN-TARPIT"), "{filter}");
        assert!(
        filter.contains(
            "-A XBAN-TARPIT -p tcp -m limit --limit 10/sec --limit-burst 20 -j REJECT --reject-with tcp-reset"
        ),
        "{filter}"
    );
        assert!(filter.contains("-A XBAN-TARPIT -p tcp -j DROP"), "{filter}");
        let raw = exec(&ns, bin, &["-w", "10", "-t", "raw", "-S"]);
        assert!(
            raw.contains(&format!(
                "-A PREROUTING -p tcp -m set --match-set {set} src -j CT --notrack"
            )),
            "{raw}"
        );
    }
    let v6 = exec(&ns, &cfg.ipset, &["list", "-t", &cfg.set_v6]);
    assert!(
        v6.contains("Type: hash:net")
            && v6.contains("family inet6")
            && v6.contains("maxelem 1048576"),
        "{v6}"
    );
    assert!(!v6.contains("timeout"), "{v6}");

    // Setup again (a restart): nothing changes, members stay.
    let before = snapshot(&ns, &cfg);
    drop(st);
    let st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    assert_eq!(
        snapshot(&ns, &cfg),
        before,
        "second setup changed something"
    );
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
    for (bin, fam, set, foreign) in [
        (&cfg.iptables, "inet", &cfg.set_v4, "foreign-v4"),
        (&cfg.ip6tables, "inet6", &cfg.set_v6, "foreign-v6"),
    ] {
        exec(
            &ns,
            &cfg.ipset,
            &["create", foreign, "hash:net", "family", fam],
        );
        let w = ["-w", "10"];
        let hook = [
            "-p",
            "tcp",
            "-m",
            "set",
            "--match-set",
            set,
            "src",
            "-j",
            "XBAN-TARPIT",
        ];
        exec(&ns, bin, &[&w[..], &["-A", "INPUT"], &hook[..]].concat());
        let notrack = [
            "-p",
            "tcp",
            "-m",
            "set",
            "--match-set",
            set,
            "src",
            "-j",
            "CT",
            "--notrack",
        ];
        exec(
            &ns,
            bin,
            &[&w[..], &["-t", "raw", "-A", "PREROUTING"], &notrack[..]].concat(),
        );
        let look_alike = [
            "-p",
            "tcp",
            "-m",
            "set",
            "--match-set",
            foreign,
            "src",
            "-j",
            "CT",
            "--notrack",
        ];
        exec(
            &ns,
            bin,
            &[
                &w[..],
                &["-t", "raw", "-I", "PREROUTING", "1"],
                &look_alike[..],
            ]
            .concat(),
        );
    }

    // A changed limit and notrack = false are applied in place.

    let changed = TarpitConfig {
        limit: "3/minute".into(),
        burst: 4,
        notrack: false,
        ..cfg.clone()
    };
    let st = TarpitSteering::setup_in(&changed, server_ns(&ns)).unwrap();
    for bin in [&cfg.iptables, &cfg.ip6tables] {
        let chain = exec(&ns, bin, &["-w", "10", "-S", "XBAN-TARPIT"]);
        let rules: Vec<&str> = chain.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(rules.len(), 2, "{chain}");
        assert!(
            rules[0].contains("--limit 3/min --limit-burst 4 -j REJECT"),
            "{chain}"
        );
        assert!(rules[1].ends_with("-j DROP"), "{chain}");
        let raw = exec(&ns, bin, &["-w", "10", "-t", "raw", "-S"]);
        assert_eq!(raw.matches("--notrack").count(), 1, "{raw}");
        assert!(raw.contains("--match-set foreign-v"), "{raw}");
        let input = exec(&ns, bin, &["-w", "10", "-S", "INPUT"]);
        assert_eq!(input.matches("-j XBAN-TARPIT").count(), 1, "{input}");
    }
    assert_eq!(st.members().unwrap().len(), 3);

    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
    assert_nothing_left(&ns, &cfg);
    // Teardown of nothing is fine too.
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
}

#[test]
fn setup_is_idempotent_adopts_and_tears_down_nf_tables() {
    setup_adopt_teardown(substitute_cfg());
}

#[test]
fn setup_is_idempotent_adopts_and_tears_down_legacy() {
    let found = Command::new("sh")
        .args([
            "-c",
            "command -v iptables-legacy && command -v ip6tables-legacy",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
    found,
    "iptables-legacy / ip6tables-legacy not found: apt-get install iptables (Debian ships them in that package)"
);
    setup_adopt_teardown(TarpitConfig {
        iptables: "iptables-legacy".into(),
        ip6tables: "ip6tables-legacy".into(),
        ..substitute_cfg()
    });
}

#[test]
fn unavailable_tarpit_with_drop_fallback_creates_nothing() {
    let ns = Lab::new().unwrap();
    let cfg = test_cfg();
    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    assert!(
        !tarpit_in_kernel(),
        "this test expects a machine without xt_TARPIT"
    );
    assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
    let notice = st.notice().unwrap();
    assert!(
    notice.starts_with(
        "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms"
    ),
    "{notice}"
);
    assert!(!st.leftovers());
    assert_nothing_left(&ns, &cfg);
    // Inactive steering accepts calls and does nothing.
    st.add(&t("198.51.100.7")).unwrap();
    st.sync(&[t("198.51.100.8")]).unwrap();
    assert!(st.members().unwrap().is_empty());
    assert_eq!(st.counters().unwrap(), SteeringCounters::default());
    assert_nothing_left(&ns, &cfg);

    // Steering left by an earlier run with a substitute is reported and
    // kept (its members stay held until the caller drops them in XDP and
    // tears it down); the same when disabled.
    let earlier = substitute_cfg();
    let mut old = TarpitSteering::setup_in(&earlier, server_ns(&ns)).unwrap();
    old.add(&t("198.51.100.9")).unwrap();
    let before = snapshot(&ns, &cfg);
    let st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
    assert!(st.leftovers());
    let disabled = TarpitConfig {
        enabled: false,
        ..cfg.clone()
    };
    let st = TarpitSteering::setup_in(&disabled, server_ns(&ns)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Disabled);
    assert!(st.leftovers());
    assert_eq!(snapshot(&ns, &cfg), before);
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
    assert_nothing_left(&ns, &cfg);
    let st = TarpitSteering::setup_in(&disabled, server_ns(&ns)).unwrap();
    assert!(!st.leftovers());
}

#[test]
fn unavailable_tarpit_with_substitute_uses_it() {
    let ns = Lab::new().unwrap();
    let cfg = substitute_cfg();
    let st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    assert!(
        !tarpit_in_kernel(),
        "this test expects a machine without xt_TARPIT"
    );
    assert_eq!(
        st.mode(),
        &SteeringMode::Substitute("REJECT --reject-with tcp-reset".into())
    );
    assert!(st
        .notice()
        .unwrap()
        .contains("fallback target `REJECT --reject-with tcp-reset`"));
    for bin in ["iptables", "ip6tables"] {
        let chain = exec(&ns, bin, &["-w", "10", "-S", "XBAN-TARPIT"]);
        assert!(
            chain.contains("-j REJECT --reject-with tcp-reset"),
            "{chain}"
        );
        assert!(!chain.contains("-j TARPIT"), "{chain}");
    }
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
    assert_nothing_left(&ns, &cfg);
}

#[test]
fn auto_and_xdp_engines_create_nothing_and_say_why() {
    let ns = Lab::new().unwrap();
    assert!(
        !tarpit_in_kernel(),
        "this test expects a machine without xt_TARPIT"
    );
    // Default engine: auto. TARPIT missing: the XDP tarpit, not drop,
    // and `fallback` is not used.
    let auto = TarpitConfig {
        fallback: "REJECT --reject-with tcp-reset".into(),
        ..TarpitConfig::default()
    };
    assert_eq!(auto.engine, TarpitEngine::Auto);
    let st = TarpitSteering::setup_in(&auto, server_ns(&ns)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert!(!st.mode().is_active());
    assert!(
        st.reason()
            .starts_with("engine = \"auto\" and the TARPIT target is not available"),
        "{}",
        st.reason()
    );
    assert_nothing_left(&ns, &auto);
    // Missing iptables entirely: auto still holds the class in XDP.
    let no_tools = TarpitConfig {
        iptables: "/nonexistent/iptables".into(),
        ..TarpitConfig::default()
    };
    let st = TarpitSteering::setup_in(&no_tools, server_ns(&ns)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert!(st.reason().contains("cannot be used"), "{}", st.reason());
    // engine = "xdp": no probe, nothing created; an earlier chain is
    // reported as leftovers (the caller removes it).
    let xdp = TarpitConfig {
        engine: TarpitEngine::Xdp,
        ..TarpitConfig::default()
    };
    let st = TarpitSteering::setup_in(&xdp, server_ns(&ns)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Xdp);
    assert_eq!(st.reason(), "[tarpit] engine = \"xdp\"");
    assert!(!st.leftovers());
    let earlier = substitute_cfg();
    TarpitSteering::setup_in(&earlier, server_ns(&ns)).unwrap();
    let st = TarpitSteering::setup_in(&xdp, server_ns(&ns)).unwrap();
    assert!(st.leftovers());
    TarpitSteering::teardown_in(&earlier, server_ns(&ns)).unwrap();
    assert_nothing_left(&ns, &earlier);
    // The config key's parsing (lowercase words only) is checked without
    // root: `enforce::steering::tests::engine_key_is_lowercase_words`.
}

#[test]
fn broken_substitute_and_missing_tools_are_errors_with_fixes() {
    let ns = Lab::new().unwrap();
    let cfg = TarpitConfig {
        fallback: "NOSUCHTARGET".into(),
        engine: TarpitEngine::Iptables,
        ..TarpitConfig::default()
    };
    let e = TarpitSteering::setup_in(&cfg, server_ns(&ns))
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
    let e = TarpitSteering::setup_in(&cfg, server_ns(&ns))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipset-not-here not installed") && e.contains("apt-get install ipset"),
        "{e}"
    );
    // Teardown cleans what exists: a tool that is not installed has
    // nothing of its own to remove, and the others' parts still go.
    TarpitSteering::setup_in(&substitute_cfg(), server_ns(&ns)).unwrap();
    let cfg = TarpitConfig {
        ip6tables: "ip6tables-not-here".into(),
        ..substitute_cfg()
    };
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
    assert!(
        !exec(&ns, "iptables", &["-w", "10", "-S"]).contains("XBAN-TARPIT"),
        "the IPv4 chain is removed"
    );
    TarpitSteering::teardown_in(&substitute_cfg(), server_ns(&ns)).unwrap();
    let cfg = TarpitConfig {
        iptables: "iptables-not-here".into(),
        ip6tables: "ip6tables-not-here".into(),
        ipset: "ipset-not-here".into(),
        ..TarpitConfig::default()
    };
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();

    // An existing set of the wrong kind is not silently adopted.
    exec(
        &ns,
        "ipset",
        &[
            "create",
            "xban-tarpit-v4",
            "hash:ip",
            "family",
            "inet",
            "timeout",
            "60",
        ],
    );
    let e = TarpitSteering::setup_in(&substitute_cfg(), server_ns(&ns))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipset `xban-tarpit-v4` exists as `hash:ip"),
        "{e}"
    );
    TarpitSteering::teardown_in(&substitute_cfg(), server_ns(&ns)).unwrap();
    assert_nothing_left(&ns, &substitute_cfg());
}

/// Real packets: a set member is refused (REJECT with reset) and counted;
/// removed from the set, it connects again.
fn steering_for_real(srv: &str, cli: &str, family: fn(&SteeringCounters) -> FamilyCounters) {
    let lab = Lab::new().unwrap();
    let cfg = substitute_cfg();
    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&lab)).unwrap();
    assert_eq!(st.mode(), &SteeringMode::Substitute(cfg.fallback.clone()));
    let listener = listen(&lab, srv);
    let to = listener.local_addr().unwrap();
    let wait = Duration::from_secs(3);

    // Not a member: the connection is made.
    connect(&lab, to, wait).expect("connect before steering");
    assert_eq!(
        listener.accept().unwrap().1.ip(),
        cli.parse::<IpAddr>().unwrap()
    );

    st.add(&t(cli)).unwrap();
    let before = family(&st.counters().unwrap());
    let refused = connect(&lab, to, wait).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    let after = family(&st.counters().unwrap());
    assert!(
        after.steered_packets > before.steered_packets,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.limited_packets > before.limited_packets,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.dropped_over_limit, 0);

    st.remove(&t(cli)).unwrap();
    connect(&lab, to, wait).expect("connect after removal");
    assert_eq!(
        listener.accept().unwrap().1.ip(),
        cli.parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        family(&st.counters().unwrap()).steered_packets,
        after.steered_packets
    );

    TarpitSteering::teardown_in(&cfg, server_ns(&lab)).unwrap();
}

#[test]
fn steers_ipv4_for_real() {
    steering_for_real(SRV_V4, ATK_V4, |c| c.v4);
}

#[test]
fn steers_ipv6_for_real() {
    steering_for_real(SRV_V6, ATK_V6, |c| c.v6);
}

/// While a client keeps trying to connect, the agent restarts (setup
/// again) and the config changes (limit, substitute target, notrack):
/// the chain is rewritten in place and no attempt ever gets through.
#[test]
fn members_stay_held_through_restarts_and_reconfiguration() {
    let lab = Lab::new().unwrap();
    let cfg = substitute_cfg();
    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&lab)).unwrap();
    let listener = listen(&lab, SRV_V4);
    let to = listener.local_addr().unwrap();
    let stream = connect(&lab, to, Duration::from_secs(3)).expect("connect before steering");
    drop((stream, listener.accept().unwrap()));
    st.add(&t(ATK_V4)).unwrap();

    let configs = [
        cfg.clone(),
        TarpitConfig {
            limit: "5/sec".into(),
            burst: 5,
            ..cfg.clone()
        },
        TarpitConfig {
            fallback: "DROP".into(),
            notrack: false,
            ..cfg.clone()
        },
        cfg.clone(),
    ];
    let stop = AtomicBool::new(false);
    let (attempts, connected) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            Lab::in_ns(&lab.atk_ns, || {
                let (mut attempts, mut connected) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    attempts += 1;
                    if TcpStream::connect_timeout(&to, Duration::from_millis(50)).is_ok() {
                        connected += 1;
                    }
                }
                (attempts, connected)
            })
        });
        for c in &configs {
            drop(st);
            st = TarpitSteering::setup_in(c, server_ns(&lab)).unwrap();
            assert_eq!(st.members().unwrap(), vec![t(ATK_V4)]);
        }
        stop.store(true, Ordering::SeqCst);
        prober.join().unwrap()
    });
    assert!(attempts >= 4, "only {attempts} attempts");
    assert_eq!(
        connected, 0,
        "{connected} of {attempts} connections got through"
    );
    TarpitSteering::teardown_in(&cfg, server_ns(&lab)).unwrap();
}

/// Beyond the burst, SYNs are dropped by the chain's last rule (the
/// client's connect times out instead of being refused).
#[test]
fn over_the_limit_is_dropped() {
    let lab = Lab::new().unwrap();
    let cfg = TarpitConfig {
        limit: "1/minute".into(),
        burst: 2,
        ..substitute_cfg()
    };
    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&lab)).unwrap();
    let listener = listen(&lab, SRV_V4);
    let to = listener.local_addr().unwrap();
    // Resolve the neighbour first so every attempt below is one SYN; close
    // both ends and let the FIN exchange finish before steering starts.
    let stream = connect(&lab, to, Duration::from_secs(3)).expect("connect before steering");
    drop((stream, listener.accept().unwrap()));
    std::thread::sleep(Duration::from_millis(200));
    st.add(&t(ATK_V4)).unwrap();

    let attempts = 10;
    let (mut refused, mut timed_out) = (0, 0);
    for _ in 0..attempts {
        match connect(&lab, to, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => timed_out += 1,
            other => panic!("unexpected connect result {other:?}"),
        }
    }
    let c = st.counters().unwrap().v4;
    assert!(
        (2..=3).contains(&refused),
        "refused {refused}, timed out {timed_out}"
    );
    assert_eq!(refused + timed_out, attempts);
    assert_eq!(c.limited_packets, refused as u64, "{c:?}");
    assert!(c.dropped_over_limit >= timed_out as u64, "{c:?}");
    assert_eq!(
        c.steered_packets,
        c.limited_packets + c.dropped_over_limit,
        "{c:?}"
    );
    // What status serves, read by the background thread, catches
    // up with the direct read.
    let deadline = std::time::Instant::now() + COUNTER_PROBE_EVERY * 3;
    let seen = loop {
        let r = st.counters_snapshot();
        if let Some(Ok(s)) = r.as_ref().map(|r| r.counters.clone()) {
            if s.v4 == c {
                break r.unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot {r:?}, read {c:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(seen.at.elapsed() <= COUNTER_PROBE_EVERY * 2);
    TarpitSteering::teardown_in(&cfg, server_ns(&lab)).unwrap();
}

#[test]
fn sync_of_ten_thousand() {
    let ns = Lab::new().unwrap();
    let cfg = substitute_cfg();
    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    // 198.18.0.0/15 (benchmarking) and 2001:db8::/32: never routed here,
    // and only ever set members inside this namespace.
    let v4 = |i: u32| {
        Target::host(IpAddr::from([
            198,
            18 + (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ]))
    };
    let v6 = |i: u32| {
        Target::host(IpAddr::from([
            0x2001,
            0xdb8,
            0x55,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ]))
    };
    let mut first: Vec<Target> = (0..5_000).map(v4).chain((0..4_990).map(v6)).collect();
    first.extend((0..10).map(|i| t(&format!("2001:db8:{:x}::/48", 0x100 + i))));
    // A stale member the sync must remove.
    st.add(&t("198.51.100.250")).unwrap();

    let started = Instant::now();
    st.sync(&first).unwrap();
    let initial = started.elapsed();
    let mut have = st.members().unwrap();
    let mut want = first.clone();
    have.sort();
    want.sort();
    assert_eq!(have.len(), 10_000);
    assert_eq!(have, want);

    // Half replaced: 5,000 removed, 5,000 added.
    let second: Vec<Target> = (2_500..7_500)
        .map(v4)
        .chain((2_500..7_500).map(v6))
        .collect();
    let started = Instant::now();
    st.sync(&second).unwrap();
    let changed = started.elapsed();
    let mut have = st.members().unwrap();
    let mut want = second;
    have.sort();
    want.sort();
    assert_eq!(have, want);
    eprintln!("sync timing: 10,000 into an almost empty set {initial:?}; 5,000 added + 5,000 removed {changed:?}");
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
}

#[test]
fn zero_prefix_is_refused() {
    let ns = Lab::new().unwrap();
    let cfg = substitute_cfg();
    let mut st = TarpitSteering::setup_in(&cfg, server_ns(&ns)).unwrap();
    let e = st.add(&t("0.0.0.0/0")).unwrap_err().to_string();
    assert!(e.contains("/0"), "{e}");
    assert!(st.sync(&[t("::/0")]).is_err());
    TarpitSteering::teardown_in(&cfg, server_ns(&ns)).unwrap();
}
