//! Never the wrong address, never the wrong length: the ban guard on a real
//! agent (min prefix, this host's addresses as they change), a burst that
//! is one ban however it is re-read, control requests that get an answer,
//! and start-up checks that fail before the kernel is touched.

use std::io::{BufRead, Write};
use std::time::Duration;

use xban_tests::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A counter of jail sshd from `xban status sshd --json`.
fn sshd_counter(dir: &AgentDir, name: &str) -> u64 {
    dir.xban_ok(&["status", "sshd", "--json"])
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["jails"][0]["counters"][name].as_u64())
        .unwrap_or(0)
}

fn ban_refused(dir: &AgentDir, args: &[&str], rule_text: &str) {
    let mut full = vec!["ban"];
    full.extend_from_slice(args);
    let out = dir.xban(&full).unwrap();
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("ban refused") && e.contains(rule_text),
        "xban {}: {e}",
        full.join(" ")
    );
}

#[test]
fn the_guard_refuses_wide_bans_and_follows_the_hosts_addresses() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(
        &lab,
        "[defaults]\nmaxretry = 1\nignoreself = false\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();

    // No allowlist at all, and still the whole Internet cannot be banned.
    for wide in ["0.0.0.0/0", "::/0", "2000::/3", "8000::/1", "10.0.0.0/7"] {
        ban_refused(&dir, &[wide], "min_prefix_v");
    }
    // The server's own addresses, and prefixes holding them.
    for own in [
        SRV_V4,
        "198.51.100.0/24",
        SRV_V6,
        "2001:db8:100::/48",
        "127.0.0.1",
    ] {
        ban_refused(&dir, &[own], "own address");
    }
    // --force lifts the width rule, not the host rule.
    dir.xban_ok(&["ban", "10.0.0.0/7", "--force"]).unwrap();
    ban_refused(&dir, &["0.0.0.0/0", "--force"], "own address");

    // An address the server gains is protected at once, for manual bans
    // and for a jail's (ignoreself = false here: the guard still holds).
    let added = "203.0.113.77";
    lab.in_srv(
        "ip",
        &["addr", "add", &format!("{added}/32"), "dev", &lab.srv_if],
    )
    .unwrap();
    ban_refused(&dir, &[added], "own address");
    dir.append_log(&[sshd_failure(added, 1)]).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .log()
            .contains("203.0.113.77 covers this host's own address")),
        "{}",
        agent.log()
    );
    assert!(!dir.banned_addresses().unwrap().contains(&added.to_string()));
    // Gone again: bannable again.
    lab.in_srv(
        "ip",
        &["addr", "del", &format!("{added}/32"), "dev", &lab.srv_if],
    )
    .unwrap();
    dir.xban_ok(&["ban", added]).unwrap();

    // Counted, by rule and origin, in status and metrics.
    let status: serde_json::Value =
        serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
    let count = |rule: &str, origin: &str| {
        status["ban_refusals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule && r["origin"] == origin)
            .map(|r| r["count"].as_u64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(count("min_prefix", "manual"), 5, "{status}");
    assert_eq!(count("host_address", "manual"), 7, "{status}");
    assert_eq!(count("host_address", "jail"), 1, "{status}");
    let mut banned = dir.banned_addresses().unwrap();
    banned.sort();
    assert_eq!(banned, ["10.0.0.0/7", added]);
    agent.stop().unwrap();
}

#[test]
fn a_burst_is_one_ban_and_a_crash_replay_adds_no_history() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(
        &lab,
        "[defaults]\nmaxretry = 3\nbantime = \"1h\"\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    // A clean stop saves the log position, so the agent after the crash
    // below resumes from here and reads the burst a second time.
    AgentProcess::start(&lab, &dir).unwrap().stop().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    // 15 failures written at once (as a log flush does).
    let burst: Vec<String> = (0..15).map(|n| sshd_failure(ATK_V4, n)).collect();
    dir.append_log(&burst).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || sshd_counter(&dir, "lines")
            == 15),
        "{}",
        agent.log()
    );
    assert_eq!(sshd_counter(&dir, "failures_while_banned"), 12);
    assert_eq!(sshd_counter(&dir, "bans_total"), 1);
    let bans = dir.banned().unwrap();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(
        bans[0]["expires_at"].as_i64().unwrap() - bans[0]["banned_at"].as_i64().unwrap(),
        3600,
        "a first offence: the jail's own bantime, no escalation"
    );
    let history = || {
        let out = std::process::Command::new("sqlite3")
            .arg(dir.path("state").join("xban.sqlite3"))
            .arg("select count(*) from ban_history;")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(history(), "1");
    // kill -9 before the file position is saved (every 10 s): the next
    // agent reads the same 15 lines again.
    agent.kill9().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || sshd_counter(&dir, "lines")
            == 15),
        "the replay happened:\n{}",
        agent.log()
    );
    assert_eq!(
        sshd_counter(&dir, "failures_while_banned"),
        15,
        "all while banned"
    );
    assert_eq!(dir.banned().unwrap().len(), 1);
    assert_eq!(history(), "1", "the replay recorded nothing twice");
    agent.stop().unwrap();
}

#[test]
fn control_errors_get_replies() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(
        &lab,
        "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(dir.path("xban.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"cmd\":\"st\xffatus\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).expect("a JSON reply");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("not UTF-8"),
        "{reply}"
    );
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    let out = dir.xban(&["unban", "--all", "--jail", "nope"]).unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("no jail named `nope`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dir.banned().unwrap().len(), 1, "nothing unbanned");
    agent.stop().unwrap();
}

#[test]
fn start_up_checks_fail_before_the_kernel_is_touched() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    // Taken inside the server's namespace, where the agent runs.
    let taken = Lab::in_ns(&lab.srv_ns, || {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    });
    let port = taken.local_addr().unwrap().port();
    dir.write_config_with_agent(
        &lab,
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        &format!(
            "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{{LOG}}\", \"{}/no-such-dir/auth.log\"]\n",
            dir.dir.path().display()
        ),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        AgentProcess::start(&lab, &dir).err().expect("refused")
    );
    assert!(
        err.contains("start-up checks failed, nothing was changed")
            && err.contains("jails.sshd.logpath[1]: directory")
            && err.contains("agent.metrics_listen: cannot listen"),
        "{err}"
    );
    assert!(!lab.xdp_attached(), "XDP was attached");
    assert!(!path_exists(&dir.pin_dir), "pins were created");
    // `xban check` (from the same namespace) says the same.
    let out = dir.xban(&["check"]).unwrap();
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("jails.sshd.logpath[1]"),
        "{e}"
    );
    drop(taken);
}
