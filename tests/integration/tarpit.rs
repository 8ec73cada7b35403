//! The tarpit class: passed by XDP, steered by iptables through an ipset to
//! a rate-limited target. TARPIT itself is missing on these machines, so the
//! steering is exercised for real with a substitute target (REJECT with a
//! TCP reset, which a client can tell apart from a drop), and the fallback
//! to XDP drop is checked too. All with `engine = "iptables"`; the XDP
//! tarpit (the default `auto` here) is in `xdp_tarpit.rs`.

use std::io::ErrorKind;
use std::time::Duration;

use xban_tests::*;

const SUBSTITUTE: &str = r#"
[tarpit]
engine = "iptables"
fallback = "REJECT --reject-with tcp-reset"

[jails.sshd]
filter = "sshd"
logpath = ["{LOG}"]
"#;

fn stats(dir: &AgentDir, name: &str) -> u64 {
    dir.stats().unwrap()[name].as_u64().unwrap()
}

fn status(dir: &AgentDir) -> serde_json::Value {
    serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap()
}

#[test]
fn tarpit_class_is_passed_by_xdp_and_steered_to_the_chain() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SUBSTITUTE).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(
        agent.log().contains("the TARPIT target is not available"),
        "the missing module is said clearly at start:\n{}",
        agent.log()
    );
    let st = status(&dir);
    assert_eq!(st["tarpit"]["active"], true, "{st}");
    assert!(st["tarpit"]["mode"].as_str().unwrap().contains("REJECT"));

    dir.xban_ok(&["ban", ATK_V4, "--class", "tarpit"]).unwrap();
    dir.xban_ok(&["ban", ATK_V6, "--class", "tarpit"]).unwrap();
    let members = lab.in_srv("ipset", &["list", "xban-tarpit-v4"]).unwrap();
    assert!(members.contains(ATK_V4), "{members}");

    let passed = stats(&dir, "passed_tarpit");
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::ConnectionRefused),
        "steered to the substitute (reset)"
    );
    assert_eq!(
        lab.tcp_connect_result(ATK_V6, SRV_V6),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(
        stats(&dir, "passed_tarpit") > passed,
        "XDP passed them as tarpit class"
    );
    // The counters are read off the event loop every few seconds, and
    // status says how old its reading is.
    let limited =
        |c: &serde_json::Value, fam: &str| c[fam]["limited_packets"].as_u64().unwrap_or(0);
    let mut last = serde_json::Value::Null;
    let counted = wait_for(Duration::from_secs(15), || {
        last = status(&dir)["tarpit"].clone();
        limited(&last["counters"], "v4") >= 1 && limited(&last["counters"], "v6") >= 1
    });
    assert!(counted, "{last}");
    let age = last["counters_age_secs"].as_f64().unwrap();
    assert!(age < 15.0, "{last}");
    // Steering is for TCP; other traffic from the address is not held.
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    // An unbanned neighbour is untouched.
    assert_eq!(lab.tcp_connect_result(ATK3_V4, SRV_V4), Ok(()));

    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Ok(()),
        "unbanned: left the set"
    );
    agent.stop().unwrap();
}

#[test]
fn longest_ban_decides_between_drop_and_tarpit() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SUBSTITUTE).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    // A 1 h tarpit ban, then a permanent drop ban by another jail: drop wins.
    dir.xban_ok(&["ban", ATK_V4, "--class", "tarpit", "--bantime", "1h"])
        .unwrap();
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::ConnectionRefused)
    );
    dir.xban_ok(&[
        "ban",
        ATK_V4,
        "--class",
        "drop",
        "--bantime",
        "permanent",
        "--jail",
        "sshd",
    ])
    .unwrap();
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::TimedOut),
        "dropped at XDP now"
    );
    let members = lab.in_srv("ipset", &["list", "xban-tarpit-v4"]).unwrap();
    assert!(
        !members.contains(ATK_V4),
        "left the steering set: {members}"
    );
    // Lifting the drop jail's ban leaves the tarpit ban: steered again.
    dir.xban_ok(&["unban", ATK_V4, "--jail", "sshd"]).unwrap();
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::ConnectionRefused)
    );
    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert_eq!(lab.tcp_connect_result(ATK_V4, SRV_V4), Ok(()));
    assert!(!lab
        .in_srv("ipset", &["list", "xban-tarpit-v4"])
        .unwrap()
        .contains(ATK_V4));
    agent.stop().unwrap();
}

#[test]
fn steering_survives_restart_and_teardown_removes_it() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SUBSTITUTE).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    dir.xban_ok(&["ban", ATK_V4, "--class", "tarpit"]).unwrap();
    agent.stop().unwrap();
    // Stopped: XDP passes it as tarpit, the chain still catches it.
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::ConnectionRefused)
    );
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::ConnectionRefused)
    );
    let rules = lab.in_srv("iptables", &["-S"]).unwrap();
    assert_eq!(
        rules.matches("-j XBAN-TARPIT").count(),
        1,
        "adopted, not duplicated: {rules}"
    );

    dir.xban_ok(&["teardown"]).unwrap();
    agent.wait_exit(Duration::from_secs(10)).unwrap();
    let rules = lab.in_srv("iptables", &["-S"]).unwrap();
    assert!(!rules.contains("XBAN-TARPIT"), "{rules}");
    let sets = lab.in_srv("ipset", &["list", "-n"]).unwrap();
    assert!(!sets.contains("xban-tarpit"), "{sets}");
    assert_eq!(lab.tcp_connect_result(ATK_V4, SRV_V4), Ok(()));
}

#[test]
fn without_tarpit_the_class_falls_back_to_xdp_drop() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(
        &lab,
        "[tarpit]\nengine = \"iptables\"\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(
        agent.log().contains("the TARPIT target is not available"),
        "{}",
        agent.log()
    );
    assert_eq!(status(&dir)["tarpit"]["active"], false);

    dir.xban_ok(&["ban", ATK_V4, "--class", "tarpit"]).unwrap();
    let banned = dir.banned().unwrap();
    assert_eq!(banned[0]["class"], "tarpit", "the ban keeps its class");
    let dropped = stats(&dir, "dropped");
    assert_eq!(
        lab.tcp_connect_result(ATK_V4, SRV_V4),
        Err(ErrorKind::TimedOut),
        "dropped at XDP"
    );
    assert!(stats(&dir, "dropped") > dropped);
    let rules = lab.in_srv("iptables", &["-S"]).unwrap();
    assert!(
        !rules.contains("XBAN-TARPIT"),
        "no chain in fallback mode: {rules}"
    );
    agent.stop().unwrap();
}
