//! `cargo xtask demo`: xban at work in a throwaway lab, narrated step by
//! step. Two network namespaces joined by a veth pair (documentation
//! addresses only, nothing on the machine's own interfaces); the agent runs
//! in the server's, an attacker fails logins from the other, gets banned,
//! comes back and is escalated to a longer ban and then to the tarpit class.
//! Every step checks what it shows, so a demo that ends well is a demo that
//! worked. Everything it creates goes away at the end, on error and on
//! Ctrl-C.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use xban_lab::{in_ns, sshd_failure, AgentDir, Lab, LabSpec, Rig, Start};

use crate::prereq::is_root;
use crate::tasks::{self, Profile};
use crate::workspace::Workspace;

const SERVER: &str = "198.51.100.1";
const ATTACKER: &str = "198.51.100.2";
/// Another host on the attacker's side that never misbehaves.
const BYSTANDER: &str = "198.51.100.3";
const SSH_PORT: u16 = 22;
const MAXRETRY: usize = 3;
/// Long enough for the drop checks to finish before it expires.
const BANTIME_SECS: i64 = 8;
const SECOND_BAN_SECS: i64 = 30;
const THIRD_BAN_SECS: i64 = 60;
/// A banned or unbanned state shows up within this (the agent follows the
/// log with inotify and expires bans every second).
const SETTLE: Duration = Duration::from_secs(10);
/// The demo's lab: its own names, the server and two hosts on the
/// attacker's side.
const LAB: LabSpec<'static> = LabSpec {
    ns_prefix: "xban-demo-",
    if_prefix: "xd",
    srv_addrs: &[SERVER],
    atk_addrs: &[ATTACKER, BYSTANDER],
};
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("iptables", "iptables"),
    ("ipset", "ipset"),
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set when SIGINT/SIGTERM/SIGHUP arrives; every wait in the demo polls it
/// and returns [`Interrupted`], so the guards clean up on the way out.
extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the struct is fully initialised before use.
        let ok = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0
        };
        ensure!(ok, "could not install a handler for signal {sig}");
    }
    Ok(())
}

#[derive(Debug)]
struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Polls `f` until it gives a value or `timeout` passes.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let end = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("{what}: nothing after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the demo; exits with 130 after cleaning up when interrupted.
pub(crate) fn demo(ws: &Workspace, binary: Option<PathBuf>) -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root, e.g.\n  \
             sudo -E env \"PATH=$PATH\" cargo xtask demo"
        );
    }
    // Presence only: whether the program can be started at all.
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|(_, package)| *package)
        .collect();
    ensure!(
        missing.is_empty(),
        "the demo needs these packages: apt-get install {}",
        missing.join(" ")
    );
    let binary = match binary {
        Some(b) => {
            ensure!(b.is_file(), "--binary {}: no such file", b.display());
            b
        }
        None => tasks::build(ws, Profile::Release)?,
    };
    catch_signals()?;
    let started = Instant::now();
    let result = run(&binary);
    // Every guard has been dropped here: the lab is gone.
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("xtask demo: interrupted; the lab, the agent's pins and the temporary files are removed");
        std::process::exit(130);
    }
    result?;
    say(&format!(
        "\nThe demo took {:.0} s. Run it for real: cargo xtask install, then see README.md.",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn say(text: &str) {
    println!("{text}");
}

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

/// Indented, for output of commands and the agent's log.
fn show(prefix: &str, text: &str) {
    for line in text.lines() {
        println!("    {prefix}{line}");
    }
}

fn run(binary: &Path) -> Result<()> {
    let dir = AgentDir::with(binary, "demo", None).context("create a temporary directory")?;
    let mut rig = Rig::new(&LAB, dir, "", &jail_config())?;
    let (lab, paths) = (&rig.lab, &rig.dir);

    say("xban demo: a throwaway lab, removed at the end (also on Ctrl-C).");
    say(&format!(
        "  server    netns {}  {SERVER}  (xban runs here, XDP on {})",
        lab.srv_ns, lab.srv_if
    ));
    say(&format!(
        "  attacker  netns {}  {ATTACKER}, and {BYSTANDER} (a bystander)",
        lab.atk_ns
    ));
    say(&format!("  files     {}", paths.dir.path().display()));
    say(&format!("  pins      {}", paths.pin_dir.display()));
    say(&format!(
        "The agent's config, {} (production values are minutes and hours, not seconds):",
        paths.config_path().display()
    ));
    show("", &fs::read_to_string(paths.config_path())?);
    say(&format!(
        "xban commands below run as `nsenter --net=/run/netns/{} xban -c {} ...`.",
        lab.srv_ns,
        paths.config_path().display()
    ));

    let ssh = listen_ssh(lab)?;
    rig.spawn(&Start {
        run_args: &[],
        rust_log: "info",
        // Ctrl-C reaches the demo only; it stops the agent in order.
        own_group: true,
    })?;
    rig.wait_ready(Duration::from_secs(30))
        .context("the agent's control socket")?;
    let lab = &rig.lab;
    let mut news = News::default();

    let xban = Xban(&rig.dir);
    step(1, "The agent starts");
    show("agent | ", &news.take(&rig.agent_log()));
    let status = xban.json(&["status"])?;
    let mode = status["tarpit"]["mode"].as_str().unwrap_or("?").to_string();
    ensure!(
        status["tarpit"]["active"] == true,
        "tarpit steering is not active ({mode}); see the agent's log above"
    );
    if mode.contains("REJECT") {
        say("TARPIT (xtables-addons-dkms) is not installed here, so the tarpit class uses the");
        say("configured fallback: iptables answers those connections with a TCP reset.");
    } else {
        say(&format!("Tarpit steering: {mode}."));
    }

    step(2, "The attacker reaches the server like anyone else");
    let got = udp_burst(lab, ATTACKER, 10)?;
    ensure!(
        got == 10,
        "before any ban, 10 UDP datagrams should arrive ({got} did)"
    );
    say(&format!(
        "UDP: 10 datagrams sent from {ATTACKER}, {got} arrived."
    ));
    let tcp = tcp_probe(lab, &ssh, ATTACKER)?;
    ensure!(
        tcp.accepted,
        "before any ban the SSH connection should be accepted ({tcp})"
    );
    say(&format!("TCP to port {SSH_PORT}: {tcp}."));
    let now = stats(&xban)?;
    say(&format!(
        "XDP counters (`xban stats`): {} packets seen, {} passed clean, {} dropped.",
        now["seen"], now["passed_clean"], now["dropped"]
    ));

    step(3, &format!("The attacker fails to log in {MAXRETRY} times"));
    let first = offend(&xban, &rig, &mut news, 0)?;
    ensure!(
        first["class"] == "drop" && ban_secs(&first) == BANTIME_SECS,
        "the first ban should be the jail's own ({BANTIME_SECS} s, drop): {first}"
    );
    say(&format!(
        "Banned for {BANTIME_SECS} s, class drop: its packets now die in the XDP program."
    ));

    step(4, "Its packets are dropped at XDP");
    let before = stats(&xban)?;
    let got = udp_burst(lab, ATTACKER, 20)?;
    let after = stats(&xban)?;
    let dropped = counter(&after, "dropped") - counter(&before, "dropped");
    say("$ xban stats   (before and after 20 UDP datagrams from the attacker)");
    say(&format!(
        "    dropped {} -> {} (+{dropped}); {got} of 20 arrived",
        before["dropped"], after["dropped"]
    ));
    ensure!(
        got == 0 && dropped >= 20,
        "a banned address's packets should be dropped ({got} arrived, dropped +{dropped})"
    );
    let tcp = tcp_probe(lab, &ssh, ATTACKER)?;
    ensure!(
        !tcp.accepted,
        "the banned attacker's SSH connection was accepted"
    );
    say(&format!("TCP to port {SSH_PORT} from {ATTACKER}: {tcp}."));
    let tcp = tcp_probe(lab, &ssh, BYSTANDER)?;
    ensure!(tcp.accepted, "the bystander should not be affected ({tcp})");
    say(&format!(
        "TCP to port {SSH_PORT} from {BYSTANDER}: {tcp} (not banned)."
    ));

    step(5, "The ban expires");
    say(&format!(
        "Waiting for the {BANTIME_SECS} s ban to run out ..."
    ));
    wait_for(
        Duration::from_secs(BANTIME_SECS as u64) + SETTLE,
        "the ban's expiry",
        || Ok(xban.banned()?.is_empty().then_some(())),
    )?;
    show("agent | ", &news.take(&rig.agent_log()));
    let got = udp_burst(lab, ATTACKER, 5)?;
    ensure!(
        got == 5,
        "after the expiry the attacker should get through ({got} of 5)"
    );
    say(&format!("Unbanned: {got} of 5 UDP datagrams arrive again."));

    step(6, "It comes back: the second ban is longer (escalation)");
    let second = offend(&xban, &rig, &mut news, 10)?;
    ensure!(
        second["class"] == "drop" && ban_secs(&second) == SECOND_BAN_SECS,
        "the second ban within 1 h should be {SECOND_BAN_SECS} s: {second}"
    );
    ensure!(
        rig.agent_log().contains("escalated: repeat offender"),
        "the agent should log the escalation"
    );
    say(&format!(
        "Second ban within the hour: {SECOND_BAN_SECS} s instead of {BANTIME_SECS} s ([escalation] steps[0])."
    ));

    step(7, "An operator lifts the ban by hand");
    say(&format!("$ xban unban {ATTACKER}"));
    show("", &xban.ok(&["unban", ATTACKER])?);
    show("agent | ", &news.take(&rig.agent_log()));
    ensure!(
        xban.banned()?.is_empty(),
        "the ban should be gone after `xban unban`"
    );
    let got = udp_burst(lab, ATTACKER, 5)?;
    ensure!(
        got == 5,
        "after the unban the attacker should get through ({got} of 5)"
    );
    say(&format!("{got} of 5 UDP datagrams arrive."));

    step(8, "Third offence: the tarpit class");
    let third = offend(&xban, &rig, &mut news, 20)?;
    ensure!(
        third["class"] == "tarpit" && ban_secs(&third) == THIRD_BAN_SECS,
        "the third ban within 1 h should be {THIRD_BAN_SECS} s of tarpit: {third}"
    );
    say("Class tarpit: XDP passes its packets on to iptables, which steers its TCP");
    say("through an ipset to the tarpit target instead of dropping it silently.");
    let before = stats(&xban)?;
    let tcp = tcp_probe(lab, &ssh, ATTACKER)?;
    let after = stats(&xban)?;
    let passed = counter(&after, "passed_tarpit") - counter(&before, "passed_tarpit");
    say(&format!("TCP to port {SSH_PORT} from {ATTACKER}: {tcp}."));
    say(&format!(
        "XDP counter passed_tarpit {} -> {} (+{passed}).",
        before["passed_tarpit"], after["passed_tarpit"]
    ));
    ensure!(
        !tcp.accepted && passed >= 1,
        "a tarpit-class connection should be passed by XDP and caught by iptables ({tcp}, passed_tarpit +{passed})"
    );
    if mode.contains("REJECT") {
        ensure!(
            tcp.client == TcpClient::Reset,
            "with the REJECT fallback the client should see a reset ({tcp})"
        );
    }
    say("$ xban status");
    show("", &xban.ok(&["status"])?);

    step(9, "Clean up");
    say("$ xban teardown   (stops the agent, detaches XDP, removes the pins, the chain and the sets)");
    show("", &rig.teardown(Duration::from_secs(10))?);
    drop(ssh);
    let files = rig.dir.dir.path().display().to_string();
    let (srv, atk) = (rig.lab.srv_ns.clone(), rig.lab.atk_ns.clone());
    drop(rig);
    say(&format!("removed {files}"));
    say(&format!(
        "deleted the namespaces {srv} and {atk} (and the veth pair with them)"
    ));
    Ok(())
}

/// One offence: MAXRETRY failed logins in the log, then the ban they earn.
fn offend(xban: &Xban, rig: &Rig, news: &mut News, first: usize) -> Result<Value> {
    let lines: Vec<String> = (first..first + MAXRETRY)
        .map(|n| sshd_failure(ATTACKER, n))
        .collect();
    say(&format!("sshd writes to {}:", rig.dir.log_path().display()));
    show("", &lines.join("\n"));
    rig.dir.append_log(&lines)?;
    let ban = wait_for(SETTLE, "the ban", || {
        Ok(xban
            .banned()?
            .into_iter()
            .find(|b| b["address"] == ATTACKER))
    })?;
    show("agent | ", &news.take(&rig.agent_log()));
    say("$ xban banned");
    show("", &xban.ok(&["banned"])?);
    Ok(ban)
}

fn ban_secs(ban: &Value) -> i64 {
    ban["expires_at"].as_i64().unwrap_or(-1) - ban["banned_at"].as_i64().unwrap_or(0)
}

fn stats(xban: &Xban) -> Result<Value> {
    xban.json(&["stats"])
}

fn counter(stats: &Value, name: &str) -> i64 {
    stats[name].as_i64().unwrap_or(0)
}

/// The jails, escalation and tarpit of the demo (after `[agent]`, which
/// the lab writes); `{LOG}` stands for the followed log.
fn jail_config() -> String {
    format!(
        r#"
[defaults]
maxretry = {MAXRETRY}
findtime = "1m"
bantime = "{BANTIME_SECS}s"
ignoreip = ["127.0.0.0/8", "::1"]

# Counted over the address's earlier bans: the 2nd within an hour earns
# {SECOND_BAN_SECS} s, the 3rd a minute of tarpit.
[escalation]
steps = [
  {{ bans = 2, within = "1h", bantime = "{SECOND_BAN_SECS}s", class = "drop" }},
  {{ bans = 3, within = "1h", bantime = "{THIRD_BAN_SECS}s", class = "tarpit" }},
]

# TARPIT (xtables-addons) is rarely installed: then a TCP reset stands in.
[tarpit]
# The demo shows the iptables path; `engine = "auto"` (the default)
# would hold the class in the XDP tarpit here.
engine = "iptables"
fallback = "REJECT --reject-with tcp-reset"

[jails.sshd]
filter = "sshd"
logpath = ["{{LOG}}"]
"#
    )
}

/// The `xban` command line in the server's namespace, stopping at an
/// interrupt.
struct Xban<'a>(&'a AgentDir);

impl Xban<'_> {
    fn ok(&self, args: &[&str]) -> Result<String> {
        check_interrupt()?;
        let out = self.0.xban_ok(args);
        check_interrupt()?;
        out
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        check_interrupt()?;
        let out = self.0.json(args);
        check_interrupt()?;
        out
    }

    fn banned(&self) -> Result<Vec<Value>> {
        check_interrupt()?;
        self.0.banned()
    }
}

/// The agent's log lines about bans and set-up, shown as they come.
#[derive(Default)]
struct News {
    /// How much of the agent's log has been shown.
    shown: usize,
}

impl News {
    /// The lines about bans and set-up written since the last call,
    /// without the timestamps.
    fn take(&mut self, log: &str) -> String {
        let new = log.get(self.shown..).unwrap_or_default();
        let complete = new.rfind('\n').map_or(0, |i| i + 1);
        self.shown += complete;
        let mut seen = std::collections::HashSet::new();
        new[..complete]
            .lines()
            .filter(|l| {
                [
                    " ban ",
                    " unban ",
                    "escalated",
                    "TARPIT",
                    "tarpit steering",
                    "xban ready",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest.trim_start()))
            // Some notices are logged by two modules: show each once.
            .filter(|l| {
                let message = l.split_once(": ").map_or(*l, |(_, m)| m);
                seen.insert(message.to_string())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---- probes ---------------------------------------------------------------

/// The server's "sshd": a listener that accepts nothing by itself, so
/// each probe can tell whether its connection arrived.
fn listen_ssh(lab: &Lab) -> Result<TcpListener> {
    let l = in_ns(&lab.srv_ns, || TcpListener::bind((SERVER, SSH_PORT)))??;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Sends `n` UDP datagrams from `src` to the server; how many arrived.
fn udp_burst(lab: &Lab, src: &str, n: usize) -> Result<usize> {
    check_interrupt()?;
    lab.udp_burst(src, SERVER, n)
}

/// Connects from `src` to the "sshd" and reports what both sides saw.
fn tcp_probe(lab: &Lab, listener: &TcpListener, src: &str) -> Result<TcpOutcome> {
    check_interrupt()?;
    let src_ip: IpAddr = src.parse()?;
    let sock = lab.atk_tcp_socket(src_ip)?;
    let to = SocketAddr::new(SERVER.parse()?, SSH_PORT);
    let client = match sock.connect_timeout(&to.into(), Duration::from_millis(1500)) {
        Ok(()) => TcpClient::Connected,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => TcpClient::Reset,
        Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            TcpClient::TimedOut
        }
        Err(e) => TcpClient::Failed(e.kind()),
    };
    // A connection the server's stack completed is in the accept queue
    // by the time the client sees it established.
    let mut accepted = false;
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        match listener.accept() {
            Ok((_, peer)) if peer.ip() == src_ip => accepted = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if client != TcpClient::Connected || accepted {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(TcpOutcome { client, accepted })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpClient {
    Connected,
    Reset,
    TimedOut,
    Failed(io::ErrorKind),
}

struct TcpOutcome {
    client: TcpClient,
    /// The server's listener got the connection.
    accepted: bool,
}

impl fmt::Display for TcpOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = match self.client {
            TcpClient::Connected => "connected".to_string(),
            TcpClient::Reset => "reset by the server (connection refused)".to_string(),
            TcpClient::TimedOut => "no answer (timed out)".to_string(),
            TcpClient::Failed(kind) => format!("failed ({kind})"),
        };
        let server = if self.accepted {
            "the server accepted it"
        } else {
            "it never reached the server's socket"
        };
        write!(f, "{client}, {server}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_stays_in_the_lab() {
        let dir = Path::new("/tmp/d");
        let text = xban_lab::agent_section("xd1s", Path::new("/sys/fs/bpf/xban-demo-1"), dir, "")
            + &jail_config().replace("{LOG}", "/tmp/d/auth.log");
        assert!(text.contains("interfaces = [\"xd1s\"]"), "{text}");
        assert!(
            text.contains("bpf_pin_dir = \"/sys/fs/bpf/xban-demo-1\""),
            "{text}"
        );
        assert!(text.contains("socket = \"/tmp/d/xban.sock\""), "{text}");
        assert!(text.contains("logpath = [\"/tmp/d/auth.log\"]"), "{text}");
        // The pins the demo's agents get are its own.
        assert!(xban_lab::pin_prefix("demo").starts_with("/sys/fs/bpf/xban-demo-"));
    }
}
