//! What survives and what is read back: the SQLite state (readable with the
//! sqlite3 CLI), blocklist files (load, reload, append), and escalation of a
//! repeat offender by the running agent.

use std::time::Duration;

use xban_tests::*;

#[test]
fn blocklist_file_is_loaded_reloaded_and_appended() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let list = dir.path("blocklist.txt");
    std::fs::write(
        &list,
        format!("# kept by hand\n{ATK_V4}   # known scanner\n"),
    )
    .unwrap();
    dir.write_config_with_agent(
        &lab,
        &format!(
            "blocklist_files = [\"{}\"]\nblocklist_append = true\n",
            list.display()
        ),
        "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();

    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "blocklisted at start");
    let b = &dir.banned().unwrap()[0];
    assert_eq!(
        (b["jail"].as_str(), b["expires_at"].is_null()),
        (Some("blocklist"), true)
    );

    // The operator edits the file: the agent follows within seconds.
    std::fs::write(&list, format!("{ATK3_V4}\n{ATK_V6}\n")).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || lab.udp_reaches(ATK_V4, SRV_V4)),
        "removed from the file: unbanned"
    );
    assert!(!lab.udp_reaches(ATK3_V4, SRV_V4));
    assert!(!lab.udp_reaches(ATK_V6, SRV_V6));

    // A permanent ban is appended to the file, with a dated comment.
    dir.xban_ok(&["ban", "203.0.113.77", "--bantime", "permanent"])
        .unwrap();
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(
        text.contains("203.0.113.77  # ") && text.contains("jail=manual permanent"),
        "{text}"
    );
    agent.stop().unwrap();
}

#[test]
fn state_is_readable_with_sqlite3_and_escalation_lengthens_repeat_bans() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(
        &lab,
        "[defaults]\nmaxretry = 1\nbantime = \"2s\"\n\n[escalation]\nsteps = [{ bans = 3, within = \"1h\", bantime = \"1d\" }]\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let ban_once = |n: usize| {
        dir.append_log(&[sshd_failure(ATK_V4, n)]).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || !dir
                .banned()
                .unwrap()
                .is_empty()),
            "ban {n}:\n{}",
            agent.log()
        );
        dir.banned().unwrap()[0].clone()
    };
    for n in 0..2 {
        let b = ban_once(n);
        assert_eq!(
            b["expires_at"].as_i64().unwrap() - b["banned_at"].as_i64().unwrap(),
            2,
            "ban {n}: the jail's own"
        );
        assert!(
            wait_for(Duration::from_secs(10), || dir.banned().unwrap().is_empty()),
            "ban {n} expires"
        );
    }
    let third = ban_once(2);
    assert_eq!(
        third["expires_at"].as_i64().unwrap() - third["banned_at"].as_i64().unwrap(),
        86_400,
        "3rd ban within 1 h: 1 d"
    );
    assert!(
        agent.log().contains("escalated: repeat offender"),
        "{}",
        agent.log()
    );

    let db = dir.path("state").join("xban.sqlite3");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("select target, jail, class, expires_at - banned_at from bans; select count(*) from ban_history;")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{ATK_V4}|sshd|drop|86400\n3\n")
    );
    agent.stop().unwrap();
}
