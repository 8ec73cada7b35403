//! A booted Debian container for the tests that need a real systemd (the
//! unit, the Debian package): a cached debootstrap tree started with
//! `systemd-nspawn --boot`, writes going to a tmpfs overlay so the cache
//! stays pristine, shut down on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::veth::{Lab, SRV_V4};

/// The cached tree, built when missing (`debootstrap --variant=minbase`
/// with systemd and dbus only: about two minutes, 240 MB).
pub fn debian_tree() -> Result<PathBuf> {
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
pub struct Container {
    nspawn: Option<Child>,
    /// The container's PID 1 (its systemd), as this machine sees it.
    pub leader: u32,
    console: PathBuf,
}

impl Container {
    pub fn boot(tree: &Path, binds: &[String], console: PathBuf) -> Result<Container> {
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

    /// Moves the lab's server end of the veth into the container, whose
    /// network namespace then takes the lab's server namespace name (for
    /// `ip -n` and the lab's probes), and brings it up with the server's
    /// address. (nspawn's --network-interface= wants udev, which this
    /// machine may not run.)
    pub fn take_server_end(&self, lab: &Lab) -> Result<()> {
        let leader = self.leader.to_string();
        crate::run(
            "ip",
            &[
                "-n",
                &lab.srv_ns,
                "link",
                "set",
                &lab.srv_if,
                "netns",
                &leader,
            ],
        )?;
        crate::run("ip", &["netns", "del", &lab.srv_ns])?;
        crate::run("ip", &["netns", "attach", &lab.srv_ns, &leader])?;
        for args in [
            vec!["addr", "add", &format!("{SRV_V4}/24"), "dev", &lab.srv_if],
            vec!["link", "set", &lab.srv_if, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            lab.in_srv("ip", &args)?;
        }
        Ok(())
    }

    pub fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.console).unwrap_or_default();
        s += &std::fs::read_to_string(self.console.with_extension("err")).unwrap_or_default();
        s
    }

    /// A command inside the container (its mounts, PID namespace, network).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        Ok(Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "--"])
            .arg(cmd)
            .args(args)
            .output()?)
    }

    pub fn ok(&self, cmd: &str, args: &[&str]) -> String {
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

    pub fn journal(&self) -> String {
        self.exec("journalctl", &["-u", "xban", "--no-pager", "-n", "60"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn active(&self) -> String {
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
