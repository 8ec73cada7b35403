//! The unit under a real systemd: a Debian tree (debootstrap, cached) booted
//! with systemd-nspawn, the agent binary and deploy/xban.service bound in,
//! the server's end of a veth pair moved into the container. Checked there:
//! `systemctl start` returns once XDP is attached, a log line bans, a broken
//! config makes `systemctl reload` fail (ExecReload runs `xban reload`),
//! `systemctl stop` leaves the ban dropping, a start adopts it, and `xban
//! teardown` works in a tree without iptables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xban_tests::*;

/// The cached tree, built when missing (`debootstrap --variant=minbase`
/// with systemd and dbus only: about two minutes, 240 MB).
fn debian_tree() -> Result<PathBuf> {
    let base = std::env::var_os("XBAN_TEST_DEBIAN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/xban-test"));
    let tree = base.join("bookworm");
    if tree.join(".xban-complete").exists() {
        return Ok(tree);
    }
    std::fs::create_dir_all(&base)?;
    let partial = base.join("bookworm.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_dir_all(&tree);
    let mirror = std::env::var("XBAN_TEST_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    eprintln!(
        "building the Debian tree for the systemd test in {} (debootstrap, a few minutes, once)",
        tree.display()
    );
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
        ])
        .arg(&partial)
        .arg(&mirror)
        .output()
        .context("run debootstrap (cargo xtask test installs it)")?;
    if !out.status.success() {
        bail!(
            "debootstrap failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    std::fs::write(partial.join(".xban-complete"), "")?;
    std::fs::rename(&partial, &tree)?;
    Ok(tree)
}

/// A booted container; shut down (and everything around it removed) on drop.
struct Container {
    nspawn: Option<Child>,
    leader: u32,
    console: PathBuf,
}

impl Container {
    fn boot(tree: &Path, binds: &[String], console: PathBuf) -> Result<Container> {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--boot")
            .arg("--register=no")
            .arg("--keep-unit")
            .arg("--private-network")
            .arg("--capability=all")
            .arg("--system-call-filter=bpf perf_event_open")
            .arg("--bind=/sys/fs/bpf")
            // The cached tree stays pristine: writes go to a tmpfs overlay.
            .arg("--volatile=overlay")
            .arg("--console=passive")
            .arg("-D")
            .arg(tree);
        for b in binds {
            cmd.arg(b);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console)?)
            .stderr(std::fs::File::create(console.with_extension("err"))?)
            .spawn()
            .context("spawn systemd-nspawn (cargo xtask test installs systemd-container)")?;
        let mut c = Container {
            nspawn: Some(child),
            leader: 0,
            console,
        };
        // nspawn → its inner child → the container's systemd (PID 1 there).
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = c.nspawn.as_ref().unwrap().id();
        loop {
            if let Some(s) = c.nspawn.as_mut().unwrap().try_wait()? {
                bail!("systemd-nspawn exited with {s}:\n{}", c.output());
            }
            if let Some(l) = descendants(pid).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            }) {
                c.leader = l;
                let state = c.exec("systemctl", &["is-system-running"]).ok();
                let state = state.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
                if matches!(state.as_deref(), Some("running" | "degraded")) {
                    return Ok(c);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the container did not finish booting within 60 s:\n{}",
                    c.output()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.console).unwrap_or_default();
        s += &std::fs::read_to_string(self.console.with_extension("err")).unwrap_or_default();
        s
    }

    /// A command inside the container (its mounts, PID namespace, network).
    fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        Ok(Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "--"])
            .arg(cmd)
            .args(args)
            .output()?)
    }

    fn ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args).unwrap();
        assert!(
            out.status.success(),
            "{cmd} {} failed: {}{}\njournal:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn journal(&self) -> String {
        self.exec("journalctl", &["-u", "xban", "--no-pager", "-n", "60"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn active(&self) -> String {
        self.exec("systemctl", &["is-active", "xban"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // SIGTERM: nspawn asks the container's systemd to shut down.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

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
    // Once the container runs, the server's end of the veth moves into its
    // namespace, which takes over the lab's server namespace name (nspawn's
    // --network-interface= wants udev, which this machine may not run).
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
    let out = Command::new("ip")
        .args([
            "-n",
            &lab.srv_ns,
            "link",
            "set",
            &srv_if,
            "netns",
            &c.leader.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ip")
        .args(["netns", "del", &lab.srv_ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The container's network namespace, named for `ip -n` and the lab.
    let out = Command::new("ip")
        .args(["netns", "attach", &lab.srv_ns, &c.leader.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        vec!["addr", "add", &format!("{SRV_V4}/24"), "dev", &srv_if],
        vec!["link", "set", &srv_if, "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        lab.in_srv("ip", &args).unwrap();
    }
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
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join("auth.log"))
        .unwrap();
    for n in 0..2 {
        use std::io::Write;
        writeln!(f, "{}", sshd_failure(ATK_V4, n)).unwrap();
    }
    drop(f);
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
