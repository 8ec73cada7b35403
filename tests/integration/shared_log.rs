//! Several jails on one log file: one reader for all of them, each jail
//! banning at its own maxretry with its own filter, through reloads that
//! add and remove jails on that file, and across a restart.

use std::time::Duration;

use xban_tests::*;

/// Two sshd jails (the same filter, maxretry 2 and 4) and a web jail with a
/// filter of its own (maxretry 3), all on the one log.
const JAILS: &str = "\
[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\nmaxretry = 2\n\n\
[jails.sshd-slow]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\nmaxretry = 4\n\n\
[jails.web]\nfailregex = ['web login failed from <HOST>$']\nlogpath = [\"{LOG}\"]\nmaxretry = 3\n";

const WEB: &str =
    "[jails.web]\nfailregex = ['web login failed from <HOST>$']\nlogpath = [\"{LOG}\"]\nmaxretry = 3\n";

fn ssh(dir: &AgentDir, addr: &str, n: usize) {
    let lines: Vec<String> = (0..n).map(|i| sshd_failure(addr, i)).collect();
    dir.append_log(&lines).unwrap();
}

fn web(dir: &AgentDir, addr: &str, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|_| {
            format!(
                "{} lab webapp[7]: web login failed from {addr}",
                syslog_now()
            )
        })
        .collect();
    dir.append_log(&lines).unwrap();
}

/// (jail, address) of every ban.
fn bans(dir: &AgentDir) -> Vec<(String, String)> {
    let mut b: Vec<(String, String)> = dir
        .banned()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["jail"].as_str().unwrap_or_default().to_string(),
                b["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    b.sort();
    b
}

fn has_ban(dir: &AgentDir, jail: &str, addr: &str) -> bool {
    bans(dir).contains(&(jail.to_string(), addr.to_string()))
}

/// Each jail's `lines` counter.
fn lines(dir: &AgentDir) -> Vec<(String, u64)> {
    let status = dir.json(&["status"]).unwrap();
    let mut l: Vec<(String, u64)> = status["jails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["counters"]["lines"].as_u64().unwrap(),
            )
        })
        .collect();
    l.sort();
    l
}

fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(j, n)| (j.to_string(), *n)).collect()
}

fn wait_lines(dir: &AgentDir, want: &[(&str, u64)]) -> bool {
    wait_for(Duration::from_secs(10), || lines(dir) == counts(want))
}

#[test]
fn jails_sharing_a_log_ban_at_their_own_maxretry_through_reload_and_restart() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, JAILS).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();

    ssh(&dir, ATK_V4, 2);
    web(&dir, ATK2_V4, 3);
    assert!(
        wait_for(Duration::from_secs(10), || has_ban(&dir, "sshd", ATK_V4)
            && has_ban(&dir, "web", ATK2_V4)),
        "sshd bans at 2, web at 3: {:?}\n{}",
        bans(&dir),
        agent.log()
    );
    assert!(
        wait_lines(&dir, &[("sshd", 5), ("sshd-slow", 5), ("web", 5)]),
        "every jail saw every line once: {:?}",
        lines(&dir)
    );
    assert!(!has_ban(&dir, "sshd-slow", ATK_V4), "sshd-slow needs 4");
    let status = dir.json(&["status"]).unwrap();
    let log = dir.log_path().display().to_string();
    for j in status["jails"].as_array().unwrap() {
        assert_eq!(j["following"], serde_json::json!([log]), "{j}");
    }

    // Reload without web: the sshd jails go on reading, neither losing nor
    // reading again a line.
    let good = std::fs::read_to_string(dir.config_path()).unwrap();
    let without_web = good.replace(&WEB.replace("{LOG}", &log), "");
    assert_ne!(without_web, good);
    std::fs::write(dir.config_path(), &without_web).unwrap();
    let out = dir.xban_ok(&["reload"]).unwrap();
    assert!(
        out.contains("2 jails") && out.contains("1 removed"),
        "{out}"
    );
    assert!(out.contains("1 log readers"), "{out}");
    ssh(&dir, ATK_V4, 2);
    assert!(
        wait_for(Duration::from_secs(10), || has_ban(
            &dir,
            "sshd-slow",
            ATK_V4
        )),
        "sshd-slow bans at its 4th failure: {:?}\n{}",
        bans(&dir),
        agent.log()
    );
    assert!(
        wait_lines(&dir, &[("sshd", 7), ("sshd-slow", 7)]),
        "{:?}",
        lines(&dir)
    );

    // Reload with web again: a new jail (its counters start afresh) on the
    // running reader, from the next line on: the lines before are not read
    // for it.
    std::fs::write(dir.config_path(), &good).unwrap();
    let out = dir.xban_ok(&["reload"]).unwrap();
    assert!(
        out.contains("3 jails") && out.contains("1 log readers"),
        "{out}"
    );
    web(&dir, ATK3_V4, 3);
    assert!(
        wait_for(Duration::from_secs(10), || has_ban(&dir, "web", ATK3_V4)),
        "{:?}\n{}",
        bans(&dir),
        agent.log()
    );
    assert!(
        wait_lines(&dir, &[("sshd", 10), ("sshd-slow", 10), ("web", 3)]),
        "{:?}",
        lines(&dir)
    );
    agent.stop().unwrap();

    // A restart resumes every jail where it was: only lines written while
    // the agent was down are read.
    web(&dir, ATK_V6, 1);
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    web(&dir, ATK_V6, 1);
    assert!(
        wait_lines(&dir, &[("sshd", 2), ("sshd-slow", 2), ("web", 2)]),
        "{:?}\n{}",
        lines(&dir),
        agent.log()
    );
    agent.stop().unwrap();
}
