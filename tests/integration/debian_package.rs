//! The Debian package (`cargo xtask deb`), installed for real into a booted
//! Debian container (systemd-nspawn, see the lab's `container`): files and
//! modes, the conffile, nothing enabled, `xban check`, the man pages; then
//! run as a service, upgraded in place while it holds a ban (no gap),
//! removed (stops the agent and takes XDP and the maps out of the kernel,
//! keeps the config) and purged (config and ban database gone).

use std::path::PathBuf;
use std::time::Duration;

use xban_tests::*;

/// The package under test: `cargo xtask test` builds it and names it in
/// XBAN_DEB.
fn package() -> PathBuf {
    let p = std::env::var_os("XBAN_DEB").map(PathBuf::from).unwrap_or_else(|| {
        panic!("XBAN_DEB is not set: run the tests with `cargo xtask test` (it builds the package), or set it to a package built by `cargo xtask deb`")
    });
    assert!(p.is_file(), "XBAN_DEB={}: no such file", p.display());
    p
}

/// A config for the lab: the container's veth, pins under the test's own
/// directory, one sshd jail on a bound log.
fn lab_config(ifname: &str, pin_dir: &std::path::Path) -> String {
    format!(
        "[agent]\ninterfaces = [\"{ifname}\"]\nxdp_mode = \"native\"\nbpf_pin_dir = \"{}\"\n\n[defaults]\nmaxretry = 2\nbantime = \"1h\"\nignoreip = []\n\n[tarpit]\nenabled = false\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"/var/log/xbt/auth.log\"]\n",
        pin_dir.display()
    )
}

#[test]
fn the_package_installs_enables_nothing_upgrades_without_a_gap_removes_and_purges() {
    require_root();
    let deb = package();
    let tree = debian_tree().unwrap();
    let dir = AgentDir::new().unwrap();
    let lab = Lab::new().unwrap();
    let logs = dir.path("log");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("auth.log"), "").unwrap();
    let binds = vec![
        format!("--bind-ro={}:/root/xban.deb", deb.display()),
        format!("--bind={}:/var/log/xbt", logs.display()),
    ];
    let c = Container::boot(&tree, &binds, dir.path("console.log")).unwrap();
    c.take_server_end(&lab).unwrap();
    // The default config attaches to the default route's interface.
    lab.in_srv("ip", &["route", "add", "default", "dev", &lab.srv_if])
        .unwrap();
    let sh = |script: &str| c.ok("sh", &["-c", script]);
    let fails = |script: &str| !c.exec("sh", &["-c", script]).unwrap().status.success();

    // Install: it says how to go on, and enables and starts nothing.
    assert!(fails("dpkg -s xban"), "not installed before the test");
    let said = sh("dpkg -i /root/xban.deb 2>&1");
    for hint in ["xban import", "systemctl enable --now xban", "fail2ban"] {
        assert!(said.contains(hint), "postinst names `{hint}`:\n{said}");
    }
    assert!(sh("dpkg-query -W -f='${Status}' xban").contains("install ok installed"));
    let enabled = c.exec("systemctl", &["is-enabled", "xban"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout).trim(),
        "disabled",
        "installed, known to systemd, not enabled"
    );
    assert_eq!(c.active(), "inactive");
    assert!(!lab.xdp_attached(), "nothing attached by installing");

    // Files, owners and modes.
    for (path, mode) in [
        ("/usr/sbin/xban", "755"),
        ("/lib/systemd/system/xban.service", "644"),
        ("/etc/xban/xban.toml", "600"),
        ("/etc/xban/filters", "755"),
        ("/usr/share/man/man8/xban.8.gz", "644"),
        ("/usr/share/man/man8/xban-import.8.gz", "644"),
        ("/usr/share/doc/xban/copyright", "644"),
    ] {
        let st = sh(&format!("stat -c '%a %U:%G' {path}"));
        assert_eq!(st.trim(), format!("{mode} root:root"), "{path}");
    }
    assert_eq!(
        sh("dpkg-query -W -f='${Conffiles}' xban")
            .split_whitespace()
            .next(),
        Some("/etc/xban/xban.toml"),
        "the config is a conffile"
    );
    let unit = sh("systemctl cat xban");
    assert!(
        unit.contains("ExecStart=/usr/sbin/xban -c /etc/xban/xban.toml run"),
        "{unit}"
    );
    let page = sh("zcat /usr/share/man/man8/xban.8.gz");
    assert!(
        page.contains(".TH xban 8") && page.contains("xban\\-import(8)"),
        "{page}"
    );
    sh("dpkg --verify xban");
    assert!(sh("/usr/sbin/xban --version").starts_with("xban "));

    // `xban check` on the packaged default config, on this machine.
    let check = c.exec("/usr/sbin/xban", &["check"]).unwrap();
    assert!(
        check.status.success(),
        "xban check on the default config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Run it as the operator would, on a config for this lab.
    sh(&format!(
        "cat > /etc/xban/xban.toml <<'EOF'\n{}EOF",
        lab_config(&lab.srv_if, &dir.pin_dir)
    ));
    c.ok("systemctl", &["start", "xban"]);
    assert!(lab.xdp_attached(), "started:\n{}", c.journal());
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    append_lines(
        &logs.join("auth.log"),
        &[sshd_failure(ATK_V4, 0), sshd_failure(ATK_V4, 1)],
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !lab.udp_reaches(ATK_V4, SRV_V4)),
        "banned from the log:\n{}",
        c.journal()
    );

    // Upgrade in place (the same package again): the agent is restarted
    // into the new binary, the ban never stops dropping, the edited
    // conffile stays.
    let before = sh("systemctl show -p MainPID --value xban");
    sh("dpkg -i --force-confold /root/xban.deb");
    assert_eq!(c.active(), "active", "{}", c.journal());
    let after = sh("systemctl show -p MainPID --value xban");
    assert_ne!(before.trim(), after.trim(), "restarted by the upgrade");
    assert!(
        !lab.udp_reaches(ATK_V4, SRV_V4),
        "still dropped after the upgrade"
    );
    assert!(sh("cat /etc/xban/xban.toml").contains(&dir.pin_dir.display().to_string()));
    assert!(
        c.journal().contains("adopted pinned XDP link"),
        "{}",
        c.journal()
    );

    // Remove: the agent stops, XDP and the maps leave the kernel (nothing
    // would expire those bans any more); config and database stay.
    sh("dpkg --remove xban");
    assert!(fails("test -e /usr/sbin/xban"));
    assert!(fails("test -e /lib/systemd/system/xban.service"));
    assert!(fails("test -e /usr/share/man/man8/xban.8.gz"));
    assert!(!lab.xdp_attached(), "torn down on remove");
    assert!(!dir.pin_dir.exists(), "pins removed");
    assert!(lab.udp_reaches(ATK_V4, SRV_V4), "no longer dropped");
    sh("test -f /etc/xban/xban.toml && test -f /var/lib/xban/xban.sqlite3");
    assert!(sh("dpkg-query -W -f='${Status}' xban").contains("config-files"));

    // Purge: config and ban database gone too.
    sh("dpkg --purge xban");
    assert!(fails("test -e /etc/xban"));
    assert!(fails("test -e /var/lib/xban"));
    assert!(fails("dpkg -s xban"));
    drop(c);
}
