//! What an operator touches every day: reload, unban --all, metrics, action
//! hooks, dry run, and refusal of unprivileged callers.

use std::io::{Read, Write};
use std::time::Duration;

use xban_tests::*;

const JAIL: &str = "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\nmaxretry = 2\n";

fn fail(dir: &AgentDir, addr: &str, n: usize) {
    let lines: Vec<String> = (0..n).map(|i| sshd_failure(addr, i)).collect();
    dir.append_log(&lines).unwrap();
}

fn wait_bans(dir: &AgentDir, n: usize) -> bool {
    wait_for(Duration::from_secs(10), || {
        dir.banned().map(|b| b.len() == n).unwrap_or(false)
    })
}

#[test]
fn reload_applies_a_good_config_and_refuses_a_broken_one() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, JAIL).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    fail(&dir, ATK_V4, 1);
    std::thread::sleep(Duration::from_millis(500));
    let good = std::fs::read_to_string(dir.config_path()).unwrap();

    // Broken: refused with the error, running config kept, counters kept.
    std::fs::write(
        dir.config_path(),
        good.replace("maxretry = 2", "maxretry = \"many\""),
    )
    .unwrap();
    let out = dir.xban(&["reload"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload refused, running config kept") && err.contains("maxretry"),
        "{err}"
    );
    fail(&dir, ATK_V4, 1);
    assert!(
        wait_bans(&dir, 1),
        "the old config (maxretry 2) still counts the first failure:\n{}",
        agent.log()
    );

    // Good: maxretry 1 and a new allowlist entry, applied without a restart
    // and without losing the ban or the counters.
    std::fs::write(
        dir.config_path(),
        good.replace("maxretry = 2", "maxretry = 1").replace(
            "[jails.sshd]",
            &format!("[defaults]\nignoreip = [\"{ATK3_V4}\"]\n\n[jails.sshd]"),
        ),
    )
    .unwrap();
    let out = dir.xban_ok(&["reload"]).unwrap();
    assert!(out.contains("bans kept"), "{out}");
    assert_eq!(
        dir.banned().unwrap().len(),
        1,
        "the ban survived the reload"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dir.xban_ok(&["status", "sshd", "--json"]).unwrap()).unwrap();
    assert_eq!(
        status["jails"][0]["counters"]["failures_total"], 2,
        "counters kept across reload"
    );
    fail(&dir, ATK_V6, 1);
    assert!(
        wait_bans(&dir, 2),
        "maxretry 1 applies now:\n{}",
        agent.log()
    );
    fail(&dir, ATK3_V4, 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dir.banned().unwrap().len(), 2, "the new ignoreip applies");
    assert!(lab.udp_reaches(ATK3_V4, SRV_V4));

    // SIGHUP does the same.
    std::fs::write(
        dir.config_path(),
        good.replace("maxretry = 2", "maxretry = 7"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || agent
            .log()
            .contains("reload: 1 jails")),
        "{}",
        agent.log()
    );

    // unban --all lifts every ban at once.
    let out = dir.xban_ok(&["unban", "--all"]).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("unbanned")).count(),
        2,
        "{out}"
    );
    assert!(dir.banned().unwrap().is_empty());
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    agent.stop().unwrap();
}

#[test]
fn metrics_are_served_and_actions_run_on_ban_and_unban() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let hook_out = dir.path("hook.log");
    dir.write_config_with_agent(
        &lab,
        "metrics_listen = \"127.0.0.1:9717\"\n",
        &format!(
            "{JAIL}\n[[jails.sshd.actions]]\non = [\"ban\", \"unban\"]\ncommand = [\"/bin/sh\", \"-c\", 'echo \"$XBAN_EVENT $1 $2 $3\" >> {}', \"sh\", \"<ip>\", \"<jail>\", \"<failures>\"]\n",
            hook_out.display()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    fail(&dir, ATK_V4, 2);
    assert!(wait_bans(&dir, 1), "{}", agent.log());
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(
            &hook_out
        )
        .map(|t| t.lines().count() == 2)
        .unwrap_or(false)),
        "hook ran on ban and unban:\n{}",
        agent.log()
    );
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap(),
        format!("ban {ATK_V4} sshd 2\nunban {ATK_V4} sshd 0\n").replace(
            "unban 198.51.100.2 sshd 0",
            &format!("unban {ATK_V4} sshd 2")
        )
    );

    // Scrape from inside the agent's namespace, where it listens.
    let text = Lab::in_ns(&lab.srv_ns, || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9717").unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for want in [
        "xban_lines_read_total{jail=\"sshd\"} 2",
        "xban_lines_matched_total{jail=\"sshd\"} 2",
        "xban_bans_total{jail=\"sshd\",class=\"drop\"} 1",
        "xban_unbans_total{jail=\"sshd\",class=\"drop\"} 1",
        "xban_bans_active{class=\"drop\"} 0",
        "xban_ban_latency_seconds_count 1",
        "xban_xdp_packets_total{verdict=\"dropped\"}",
        "xban_map_capacity 2000000",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    agent.stop().unwrap();
}

#[test]
fn dry_run_reports_bans_and_writes_nothing() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(
        &lab,
        &format!("[tarpit]\nengine = \"iptables\"\nfallback = \"DROP\"\n\n{JAIL}"),
    )
    .unwrap();
    let agent = AgentProcess::start_with(&lab, &dir, &["--dry-run"]).unwrap();
    fail(&dir, ATK_V4, 2);
    assert!(wait_bans(&dir, 1), "{}", agent.log());
    dir.xban_ok(&["ban", ATK_V6, "--class", "tarpit"]).unwrap();
    assert!(
        agent.log().contains(&format!(
            "dry run: would write {ATK_V4} into the XDP map as drop"
        )),
        "{}",
        agent.log()
    );
    assert!(!dir.pin_dir.exists(), "no pins");
    assert!(!lab.xdp_attached(), "no XDP");
    assert!(lab.udp_reaches(ATK_V4, SRV_V4), "nothing dropped");
    assert!(
        !lab.in_srv("iptables", &["-S"]).unwrap().contains("XBAN"),
        "no iptables"
    );
    assert!(
        !dir.path("state").join("xban.sqlite3").exists(),
        "no state written"
    );
    agent.stop().unwrap();
}

#[test]
fn unprivileged_callers_are_refused() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, JAIL).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(xban_bin())
            .arg("-c")
            .arg(dir.config_path())
            .args(args)
            .output()
            .unwrap()
    };
    // The socket is 0600 root: the kernel refuses the connection.
    let perms = std::fs::metadata(dir.path("xban.sock")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(perms.permissions().mode() & 0o777, 0o600);
    // Let nobody reach the config and socket so the check gets that far.
    for p in [dir.dir.path().to_path_buf(), dir.config_path()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = as_nobody(&["banned"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root may control xban"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with the socket opened up, peer credentials refuse the request.
    std::fs::set_permissions(
        dir.path("xban.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = as_nobody(&["ban", ATK_V4]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("permission denied: uid 65534 may not control xban"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.banned().unwrap().is_empty(), "nothing was banned");
    agent.stop().unwrap();
}
