//! Network namespaces: a guard that deletes its namespace on drop (and so on
//! panic), running code inside one on a scoped thread, and removing what a
//! killed run left behind.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::cmd::{cleanup, run};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique in this process, for names of namespaces, interfaces,
/// pin directories and log files.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A network namespace made by the lab; deleted on drop (with every
/// interface, rule and set inside it).
#[derive(Debug)]
pub struct NetNsGuard {
    name: String,
}

impl NetNsGuard {
    /// `ip netns add NAME`.
    pub fn new(name: &str) -> Result<NetNsGuard> {
        run("ip", &["netns", "add", name])?;
        Ok(NetNsGuard {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if Path::new("/run/netns").join(&self.name).exists() {
            cleanup(Command::new("ip").args(["netns", "del", &self.name]));
        }
    }
}

/// Runs `f` on a thread that has joined namespace `ns`; sockets it makes
/// stay in that namespace. A panic in `f` becomes an error.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns {path}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// As [`in_ns`] on a detached thread, for work that runs beside the caller.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        Ok(f())
    })
}

/// The MAC address of `ifname` in namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> Result<[u8; 6]> {
    let text = run("ip", &["-n", ns, "link", "show", "dev", ifname])?;
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC for {ifname} in {ns}: {text}"))?;
    let mut mac = [0u8; 6];
    for (i, part) in word.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Does a name made by [`crate::Lab`] or [`crate::AgentDir`] after `prefix`
/// (`PID-N...`) belong to a process that is gone?
fn owner_dead(rest: &str) -> bool {
    rest.split('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !pid_alive(pid))
}

/// Namespaces named `NS_PREFIX<pid>-...` and pin directories
/// `PIN_PREFIX<pid>-...` of runs whose process is gone (killed with
/// SIGKILL, or the machine lost power mid-run).
pub fn reap_leftovers(ns_prefix: &str, pin_prefix: &str) {
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(ns_prefix).is_some_and(owner_dead) {
                eprintln!("lab: removing network namespace {name} left by an earlier run");
                let _ = run("ip", &["netns", "del", &name]);
            }
        }
    }
    let (dir, prefix) = pin_prefix.rsplit_once('/').expect("absolute prefix");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(prefix).is_some_and(owner_dead) {
                eprintln!(
                    "lab: removing {} left by an earlier run",
                    e.path().display()
                );
                // Unpinning the links detaches XDP; the veth went with its namespace.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_those_of_dead_processes() {
        assert!(!owner_dead(&format!("{}-3-srv", std::process::id())));
        assert!(owner_dead(&format!("{}-3-srv", u32::MAX - 1)));
        assert!(!owner_dead("notapid-3"));
    }
}
