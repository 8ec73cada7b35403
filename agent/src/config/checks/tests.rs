//! Checks of single settings (moved here from the pre-flight with the checks).

use super::*;
use crate::config::Config;

fn agent_with(extra: &str) -> Result<(), ValidationError> {
    let mut cfg: Config = Config::parse(&format!("[agent]\n{extra}\n")).unwrap();
    cfg.agent.filters_dir = std::env::temp_dir();
    check_agent_section(&cfg.agent)
}

fn err(extra: &str) -> (String, String) {
    let e = agent_with(extra).expect_err(extra);
    (e.place, e.message)
}

#[test]
fn bad_agent_paths_name_the_key_and_the_fix() {
    let (k, m) = err("state_dir = \"\"");
    assert_eq!(k, "agent.state_dir");
    assert!(m.contains("is empty") && m.contains("/var/lib/xban"), "{m}");
    let (k, m) = err("bpf_pin_dir = \"xban\"");
    assert_eq!(k, "agent.bpf_pin_dir");
    assert!(
        m.contains("not an absolute path") && m.contains("/sys/fs/bpf/xban"),
        "{m}"
    );
    let (k, m) = err("bpf_pin_dir = \"/sys/fs/bpf\"");
    assert_eq!(k, "agent.bpf_pin_dir");
    assert!(m.contains("root of bpffs"), "{m}");
    let (k, m) = err("bpf_pin_dir = \"/sys/fs/bpf/\"");
    assert_eq!(k, "agent.bpf_pin_dir");
    assert!(m.contains("root of bpffs"), "{m}");
    let (k, m) = err("state_dir = \"/proc/xban\"");
    assert_eq!(k, "agent.state_dir");
    assert!(m.contains("under /proc"), "{m}");
    let (k, m) = err("socket = \"/proc/self/xban.sock\"");
    assert_eq!(k, "agent.socket");
    assert!(m.contains("under /proc"), "{m}");
    let (k, m) = err("state_dir = \"/var/lib/../xban\"");
    assert_eq!(k, "agent.state_dir");
    assert!(m.contains("`..`"), "{m}");

    // Under a regular file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let (k, m) = err(&format!("socket = \"{}/x.sock\"", file.display()));
    assert_eq!(k, "agent.socket");
    assert!(
        m.contains("lies under") && m.contains("regular file"),
        "{m}"
    );
    let (k, m) = err(&format!("state_dir = \"{}/a/b\"", file.display()));
    assert_eq!(k, "agent.state_dir");
    assert!(m.contains("not a directory"), "{m}");
    // A socket path that is a regular file is never deleted to make room.
    let (k, m) = err(&format!("socket = \"{}\"", file.display()));
    assert_eq!(k, "agent.socket");
    assert!(m.contains("exists and is a regular file"), "{m}");
    // Nested in another agent's pin directory.
    let pins = dir.path().join("pins");
    std::fs::create_dir_all(pins.join("links")).unwrap();
    let (k, m) = err(&format!("bpf_pin_dir = \"{}/inner\"", pins.display()));
    assert_eq!(k, "agent.bpf_pin_dir");
    assert!(m.contains("another xban pin directory"), "{m}");
    // State inside the pin directory.
    let (k, _) = err("state_dir = \"/sys/fs/bpf/xban/state\"");
    assert_eq!(k, "agent.state_dir", "under /sys: refused first");
}

#[test]
fn bad_interfaces_name_the_key() {
    let (k, m) = err("interfaces = [\"\"]");
    assert_eq!(k, "agent.interfaces[0]");
    assert!(m.contains("is empty") && m.contains("ip link"), "{m}");
    let (k, m) = err("interfaces = [\"eth0\", \"a/b\"]");
    assert_eq!(k, "agent.interfaces[1]");
    assert!(m.contains("not an interface name"), "{m}");
    let (k, _) = err("interfaces = [\"averyveryverylongname\"]");
    assert_eq!(k, "agent.interfaces[0]");
    let (k, m) = err("interfaces = [\"eth0\", \"eth0\"]");
    assert_eq!(k, "agent.interfaces[1]");
    assert!(m.contains("twice"), "{m}");
    let (k, _) = err("min_prefix_v4 = 33");
    assert_eq!(k, "agent.min_prefix_v4");
    agent_with("interfaces = [\"eth0\", \"veth-x.10\"]").unwrap();
}

#[test]
fn jail_names_are_checked() {
    for bad in ["blocklist", "manual", "subnet", "fleet", "geo", "Manual"] {
        let e = check_jail_name(bad).unwrap_err().message;
        assert!(e.contains("reserved"), "{bad}: {e}");
    }
    for bad in ["ss\"hd", "a b", "x:y", "", "-x", "ssh'd", "a\nb", "é"] {
        assert!(check_jail_name(bad).is_err(), "{bad:?}");
    }
    for good in ["sshd", "nginx-auth", "postfix_sasl", "web.v2", "2fa"] {
        check_jail_name(good).unwrap();
    }
}

#[test]
fn logpath_that_is_not_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = check_logpath_shape("logpath", &dir.path().display().to_string())
        .unwrap_err()
        .message;
    assert!(e.contains("is a directory, not a log file"), "{e}");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = check_logpath_shape("logpath", &fifo.display().to_string())
        .unwrap_err()
        .message;
    assert!(e.contains("FIFO"), "{e}");
    let e = check_logpath_shape("logpath", "/dev/null")
        .unwrap_err()
        .message;
    assert!(e.contains("character device"), "{e}");
    let e = check_logpath_shape("logpath", "/var/log/[unclosed.log")
        .unwrap_err()
        .message;
    assert!(e.contains("not a valid glob"), "{e}");
    check_logpath_shape(
        "logpath",
        &dir.path().join("later.log").display().to_string(),
    )
    .unwrap();
}
