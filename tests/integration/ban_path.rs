//! Log line → jail → LPM trie → XDP drop, for IPv4 and IPv6, with the
//! allowlist, expiry and manual unban.

use std::time::Duration;

use xban_tests::*;

/// Three failures in a minute ban for `bantime`; 198.51.100.3 is allowlisted.
fn config(bantime: &str) -> String {
    format!(
        r#"
[defaults]
maxretry = 3
findtime = "1m"
bantime = "{bantime}"
ignoreip = ["{ATK2_V4}/32"]

[jails.sshd]
filter = "sshd"
logpath = ["{{LOG}}"]
"#
    )
}

fn fail(dir: &AgentDir, addr: &str, times: usize) {
    let lines: Vec<String> = (0..times).map(|n| sshd_failure(addr, n)).collect();
    dir.append_log(&lines).unwrap();
}

fn wait_banned(dir: &AgentDir, addr: &str) -> bool {
    wait_for(Duration::from_secs(10), || {
        dir.banned_addresses()
            .map(|a| a.iter().any(|x| x == addr))
            .unwrap_or(false)
    })
}

fn counter(dir: &AgentDir, name: &str) -> u64 {
    dir.stats().unwrap()[name].as_u64().unwrap()
}

#[test]
fn ipv4_attacker_is_banned_and_dropped() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &config("1h")).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(lab.xdp_attached(), "XDP must be attached to {}", lab.srv_if);

    assert!(
        lab.udp_reaches(ATK_V4, SRV_V4),
        "before the ban UDP gets through"
    );
    assert!(
        lab.tcp_connects(ATK_V4, SRV_V4),
        "before the ban TCP gets through"
    );

    // Two failures: not yet.
    fail(&dir, ATK_V4, 2);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dir.banned_addresses().unwrap().is_empty(),
        "2 failures < maxretry 3"
    );
    fail(&dir, ATK_V4, 1);
    assert!(
        wait_banned(&dir, ATK_V4),
        "banned after maxretry failures:\n{}",
        agent.log()
    );

    let ban = &dir.banned().unwrap()[0];
    assert_eq!(ban["jail"], "sshd");
    assert_eq!(ban["class"], "drop");
    assert_eq!(ban["failures"], 3);
    let (at, exp) = (
        ban["banned_at"].as_i64().unwrap(),
        ban["expires_at"].as_i64().unwrap(),
    );
    assert_eq!(exp - at, 3600);

    let dropped_before = counter(&dir, "dropped");
    assert!(
        !lab.udp_reaches(ATK_V4, SRV_V4),
        "banned UDP must be dropped"
    );
    assert!(
        !lab.tcp_connects(ATK_V4, SRV_V4),
        "banned TCP must be dropped"
    );
    let dropped_after = counter(&dir, "dropped");
    assert!(
        dropped_after >= dropped_before + 4,
        "the pinned stats map counts the drops ({dropped_before} -> {dropped_after})"
    );
    // Another address of the attacker's host is not banned.
    assert!(
        lab.udp_reaches(ATK3_V4, SRV_V4),
        "an unbanned neighbour still gets through"
    );

    // The pinned trie is what bpftool shows.
    let dump = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(dir.pin_dir.join("bans_v4"))
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = String::from_utf8_lossy(&dump.stdout);
    // Key: prefix_len 32 (0x20) then 198.51.100.2 (0xc6 0x33 0x64 0x02).
    assert!(
        text.contains("\"0x20\",\"0x00\",\"0x00\",\"0x00\",\"0xc6\",\"0x33\",\"0x64\",\"0x02\""),
        "bpftool dump: {text}"
    );
    agent.stop().unwrap();
}

#[test]
fn ipv6_attacker_is_banned_and_dropped() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &config("1h")).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();

    assert!(lab.udp_reaches(ATK_V6, SRV_V6));
    assert!(lab.tcp_connects(ATK_V6, SRV_V6));
    // Logged in compressed-with-zeros form; the ban is the canonical address.
    fail(&dir, "2001:db8:100:0:0:0:0:2", 3);
    assert!(wait_banned(&dir, ATK_V6), "banned:\n{}", agent.log());
    let dropped_before = counter(&dir, "dropped");
    assert!(
        !lab.udp_reaches(ATK_V6, SRV_V6),
        "banned IPv6 UDP must be dropped"
    );
    assert!(
        !lab.tcp_connects(ATK_V6, SRV_V6),
        "banned IPv6 TCP must be dropped"
    );
    assert!(counter(&dir, "dropped") > dropped_before);
    // IPv4 from the same attacker host is a different address, still allowed.
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    agent.stop().unwrap();
}

#[test]
fn allowlisted_attacker_is_never_banned() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &config("1h")).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();

    // Also logged as an IPv4-mapped IPv6 address: the same host.
    fail(&dir, ATK2_V4, 3);
    fail(&dir, &format!("::ffff:{ATK2_V4}"), 3);
    // A non-allowlisted attacker in the same batch proves the lines were read.
    fail(&dir, ATK_V4, 3);
    assert!(wait_banned(&dir, ATK_V4), "{}", agent.log());
    assert_eq!(
        dir.banned_addresses().unwrap(),
        vec![ATK_V4.to_string()],
        "only the non-allowlisted attacker is banned"
    );

    let allowed_before = counter(&dir, "passed_allowlisted");
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4));
    assert!(lab.tcp_connects(ATK2_V4, SRV_V4));
    assert!(
        counter(&dir, "passed_allowlisted") > allowed_before,
        "XDP saw it in the allowlist trie"
    );

    // A manual ban of an allowlisted address is refused, naming the entry.
    let out = dir.xban(&["ban", ATK2_V4]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allowlist") && err.contains(ATK2_V4), "{err}");
    agent.stop().unwrap();
}

#[test]
fn ban_expires_and_traffic_flows_again() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &config("3s")).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();

    fail(&dir, ATK_V4, 3);
    assert!(wait_banned(&dir, ATK_V4), "{}", agent.log());
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    assert!(
        wait_for(Duration::from_secs(10), || dir
            .banned_addresses()
            .unwrap()
            .is_empty()),
        "the ban ends after bantime"
    );
    assert!(
        lab.udp_reaches(ATK_V4, SRV_V4),
        "after expiry UDP flows again"
    );
    assert!(
        lab.tcp_connects(ATK_V4, SRV_V4),
        "after expiry TCP flows again"
    );
    assert!(
        agent.log().contains(&format!(
            "unban {ATK_V4} jail=sshd class=drop reason=expired"
        )),
        "{}",
        agent.log()
    );
    agent.stop().unwrap();
}

#[test]
fn unban_lifts_at_once_and_manual_bans_take_cidrs() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &config("1d")).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();

    fail(&dir, ATK_V4, 3);
    assert!(wait_banned(&dir, ATK_V4), "{}", agent.log());
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    let out = dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert!(out.contains(&format!("unbanned {ATK_V4}")), "{out}");
    assert!(
        lab.udp_reaches(ATK_V4, SRV_V4),
        "unban takes effect at once"
    );
    assert!(dir.banned().unwrap().is_empty());

    // A prefix ban covers every host in it: .4/30 is .4 to .7, which leaves
    // out the allowlisted .3 (a prefix overlapping the allowlist is refused).
    let json = dir
        .xban_ok(&["ban", "198.51.100.4/30", "--bantime", "1h", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["address"], "198.51.100.4/30");
    assert_eq!(v["jail"], "manual");
    assert!(
        !lab.udp_reaches(ATK3_V4, SRV_V4),
        "198.51.100.4 lies in the banned /30"
    );
    assert!(lab.udp_reaches(ATK_V4, SRV_V4), "198.51.100.2 does not");
    // Unbanning a host inside the prefix says which prefix to lift.
    let out = dir.xban(&["unban", ATK3_V4]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("198.51.100.4/30"));
    dir.xban_ok(&["unban", "198.51.100.4/30"]).unwrap();
    assert!(lab.udp_reaches(ATK3_V4, SRV_V4));

    // Bad arguments get a clear error and change nothing.
    let out = dir.xban(&["ban", "198.51.100.300"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IP address or CIDR prefix"));
    let out = dir.xban(&["ban", ATK_V4, "--bantime", "soon"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bantime"));
    assert!(dir.banned().unwrap().is_empty());
    agent.stop().unwrap();
}
