//! `xban import` end to end: a fail2ban configuration (the installed stock
//! files plus a jail.local and a filter of our own) imported by the binary,
//! checked by `xban check`, run in the lab, and banning from log lines.

use std::path::Path;
use std::time::Duration;

use xban_tests::*;

const STOCK: &str = "/etc/fail2ban";

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&e.path(), &target);
        } else if ft.is_file() {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The stock files without the operator's jails, plus ours.
fn fail2ban_tree(log: &Path) -> tempfile::TempDir {
    assert!(
        Path::new(STOCK).join("jail.conf").exists(),
        "fail2ban is not installed ({STOCK}/jail.conf missing): apt-get install fail2ban"
    );
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new(STOCK), dir.path());
    let _ = std::fs::remove_dir_all(dir.path().join("jail.d"));
    std::fs::create_dir(dir.path().join("jail.d")).unwrap();
    let _ = std::fs::remove_file(dir.path().join("jail.local"));
    std::fs::write(
        dir.path().join("filter.d/labapp.conf"),
        "[INCLUDES]\nbefore = common.conf\n\n[Definition]\n_daemon = labapp\n\
         failregex = ^%(__prefix_line)slogin refused for <F-USER>\\S+</F-USER> from <HOST>$\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("jail.local"),
        format!(
            "[DEFAULT]\nbanaction = iptables-multiport\nmaxretry = 3\nfindtime = 1m\nbantime = 1h\n\n\
             [sshd]\nenabled = true\nport = 2222\nlogpath = {log}\n\n\
             [labapp]\nenabled = true\nfilter = labapp\nport = 8080\nlogpath = {log}\nmaxretry = 2\n",
            log = log.display()
        ),
    )
    .unwrap();
    dir
}

/// The imported config without its `[agent]` table (the lab supplies one).
fn without_agent_section(config: &str) -> String {
    let mut out = String::new();
    let mut in_agent = false;
    for line in config.lines() {
        if line.starts_with('[') {
            in_agent = line.trim() == "[agent]";
        }
        if !in_agent {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn an_imported_fail2ban_config_checks_and_bans_from_log_lines() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let tree = fail2ban_tree(&dir.log_path());

    // Import into the agent's directory: xban.toml and filters/.
    let out = std::process::Command::new(xban_bin())
        .arg("import")
        .arg(tree.path())
        .arg("--out")
        .arg(dir.dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xban import: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("port") && report.contains("meaningless at XDP"),
        "{report}"
    );
    assert!(dir.path("filters/f2b-labapp.toml").exists(), "{report}");
    let imported = std::fs::read_to_string(dir.config_path()).unwrap();
    assert!(
        imported.contains("[jails.sshd]") && imported.contains("[jails.labapp]"),
        "{imported}"
    );

    dir.write_config(&lab, &without_agent_section(&imported))
        .unwrap();
    let check = dir.xban_ok(&["check", "--config-only"]).unwrap();
    assert!(check.contains("ok (2 jails"), "{check}");

    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(lab.udp_reaches(ATK_V4, SRV_V4) && lab.udp_reaches(ATK3_V4, SRV_V4));

    // sshd: fail2ban's filter needs prefregex, so xban's own sshd filter
    // stands in for it (reported as approximated).
    let lines: Vec<String> = (0..3).map(|n| sshd_failure(ATK_V4, n)).collect();
    dir.append_log(&lines).unwrap();
    // labapp: the imported filter, translated from our fail2ban filter.
    let now = chrono::Local::now().format("%b %e %H:%M:%S");
    let lines: Vec<String> = (0..2)
        .map(|n| {
            format!(
                "{now} lab labapp[{}]: login refused for bob{n} from {ATK3_V4}",
                70 + n
            )
        })
        .collect();
    dir.append_log(&lines).unwrap();

    let banned = |addr: &str| {
        wait_for(Duration::from_secs(10), || {
            dir.banned_addresses()
                .map(|a| a.iter().any(|x| x == addr))
                .unwrap_or(false)
        })
    };
    assert!(banned(ATK_V4), "sshd failures ban:\n{}", agent.log());
    assert!(banned(ATK3_V4), "labapp failures ban:\n{}", agent.log());
    let bans = dir.banned().unwrap();
    let jail_of = |addr: &str| {
        bans.iter()
            .find(|b| b["address"] == addr)
            .map(|b| b["jail"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(jail_of(ATK3_V4).as_deref(), Some("labapp"), "{bans:?}");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "banned: dropped at XDP");
    assert!(!lab.udp_reaches(ATK3_V4, SRV_V4), "banned: dropped at XDP");
    agent.stop().unwrap();
}

/// The binary: `--dry-run` prints and writes nothing; a broken jail.local
/// fails naming file, section and key, and writes nothing either.
#[test]
fn import_dry_run_and_bad_input_write_nothing() {
    let out = tempfile::tempdir().unwrap();
    let tree = fail2ban_tree(&out.path().join("app.log"));
    let run = |extra: &[&str]| {
        std::process::Command::new(xban_bin())
            .arg("import")
            .arg(tree.path())
            .arg("--out")
            .arg(out.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let dry = run(&["--dry-run"]);
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        stdout.contains("[jails.labapp]") && stdout.contains("f2b-labapp.toml"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "dry run wrote nothing"
    );

    let local = tree.path().join("jail.local");
    let text = std::fs::read_to_string(&local).unwrap();
    std::fs::write(
        &local,
        text.replace("maxretry = 2", "maxretry = 2\nmaxretry = 4"),
    )
    .unwrap();
    let bad = run(&[]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("jail.local") && stderr.contains("[labapp]") && stderr.contains("maxretry"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "an error writes nothing"
    );
}
