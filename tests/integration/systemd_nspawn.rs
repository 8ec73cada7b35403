//! The unit under a real systemd: a Debian tree (debootstrap, cached) booted
//! with systemd-nspawn, the agent binary and deploy/xban.service bound in,
//! the server's end of a veth pair moved into the container. Checked there:
//! `systemctl start` returns once XDP is attached, a log line bans, a broken
//! config makes `systemctl reload` fail (ExecReload runs `xban reload`),
//! `systemctl stop` leaves the ban dropping, a start adopts it, and `xban
//! teardown` works in a tree without iptables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xban_tests::*;

fn config(ifname: &str, pin_dir: &Path, bantime: &str) -> String {
    format!(
        "[agent]\ninterfaces = [\"{ifname}\"]\nxdp_mode = \"native\"\nbpf_pin_dir = \"{}\"\n\n[defaults]\nmaxretry = 2\nbantime = \"{bantime}\"\nignoreip = []\n\n[tarpit]\nenabled = false\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"/var/log/xbt/auth.log\"]\n",
        pin_dir.display()
    )
}

#[test]
fn the_unit_under_a_booted_systemd_starts_bans_reloads_stops_and_adopts() {
    require_root();
    let tree = debian_tree().unwrap();
    let dir = AgentDir::new().unwrap();
    // A lab whose server namespace is the container's: the veth's server
    // end goes into the container, the attacker's into a namespace of ours.
    let lab = Lab::new().unwrap();
    let srv_if = lab.srv_if.clone();
    // Once the container runs, the server's end of the veth moves into it.
    let etc = dir.path("etc-xban");
    let logs = dir.path("log");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("auth.log"), "").unwrap();
    let cfg = etc.join("xban.toml");
    std::fs::write(&cfg, config(&srv_if, &dir.pin_dir, "1h")).unwrap();
    let unit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/xban.service");
    let binds = vec![
        format!("--bind-ro={}:/usr/local/sbin/xban", xban_bin().display()),
        format!(
            "--bind-ro={}:/etc/systemd/system/xban.service",
            unit.display()
        ),
        format!("--bind={}:/etc/xban", etc.display()),
        format!("--bind={}:/var/log/xbt", logs.display()),
    ];
    let c = Container::boot(&tree, &binds, dir.path("console.log")).unwrap();
    c.take_server_end(&lab).unwrap();
    assert!(!lab.xdp_attached());

    // Ready only after attach: `systemctl start` of a Type=notify unit
    // returns at READY=1.
    c.ok("systemctl", &["start", "xban"]);
    assert!(
        lab.xdp_attached(),
        "attached when start returned:\n{}",
        c.journal()
    );
    assert_eq!(c.active(), "active");

    // A ban from a log line.
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
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4));

    // A refused reload is a failed `systemctl reload`; the agent runs on.
    std::fs::write(&cfg, config(&srv_if, &dir.pin_dir, "10 parsecs")).unwrap();
    let out = c.exec("systemctl", &["reload", "xban"]).unwrap();
    assert!(
        !out.status.success(),
        "systemctl reload reported success for a refused reload:\n{}",
        c.journal()
    );
    assert_eq!(c.active(), "active");
    assert!(c.journal().contains("reload refused"), "{}", c.journal());
    std::fs::write(&cfg, config(&srv_if, &dir.pin_dir, "1h")).unwrap();
    c.ok("systemctl", &["reload", "xban"]);
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));

    // Stop: the ban keeps dropping.
    c.ok("systemctl", &["stop", "xban"]);
    assert_eq!(c.active(), "inactive");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "dropped while stopped");

    // Start again: the pinned maps and link are adopted.
    c.ok("systemctl", &["start", "xban"]);
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "dropped after restart");
    let banned = c.ok("/usr/local/sbin/xban", &["banned", "--json"]);
    assert!(banned.contains(ATK_V4), "{banned}");
    assert!(
        c.journal().contains("adopted pinned XDP link"),
        "{}",
        c.journal()
    );

    // Teardown in a tree without iptables, tarpit disabled: no failure.
    assert!(c
        .exec("sh", &["-c", "command -v iptables"])
        .unwrap()
        .stdout
        .is_empty());
    c.ok("/usr/local/sbin/xban", &["teardown"]);
    assert!(!dir.pin_dir.exists());
    assert!(lab.udp_reaches(ATK_V4, SRV_V4), "torn down: passes");
    drop(c);
}
