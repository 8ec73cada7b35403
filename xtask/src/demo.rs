//! `cargo xtask demo`: xban at work in a throwaway lab, narrated step by
//! step. Two network namespaces joined by a veth pair (documentation
//! addresses only, nothing on the machine's own interfaces); the agent runs
//! in the server's, an attacker fails logins from the other, gets banned,
//! comes back and is escalated to a longer ban and then to the tarpit class.
//! Every step checks what it shows, so a demo that ends well is a demo that
//! worked. Everything it creates goes away at the end, on error and on
//! Ctrl-C.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

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
pub fn demo(ws: &Workspace, binary: Option<PathBuf>) -> Result<()> {
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
    let id = std::process::id();
    let lab = Lab::create(id)?;
    let dir = tempfile::Builder::new()
        .prefix("xban-demo-")
        .tempdir()
        .context("create a temporary directory")?;
    let paths = Paths::new(dir.path(), id);
    fs::create_dir_all(paths.dir.join("filters"))?;
    File::create(&paths.log)?;
    fs::write(&paths.config, config_text(&lab, &paths))?;

    say("xban demo: a throwaway lab, removed at the end (also on Ctrl-C).");
    say(&format!(
        "  server    netns {}  {SERVER}  (xban runs here, XDP on {})",
        lab.srv, lab.srv_if
    ));
    say(&format!(
        "  attacker  netns {}  {ATTACKER}, and {BYSTANDER} (a bystander)",
        lab.atk
    ));
    say(&format!("  files     {}", paths.dir.display()));
    say(&format!("  pins      {}", paths.pins.display()));
    say(&format!(
        "The agent's config, {} (production values are minutes and hours, not seconds):",
        paths.config.display()
    ));
    show("", &fs::read_to_string(&paths.config)?);
    say(&format!(
        "xban commands below run as `nsenter --net=/run/netns/{} xban -c {} ...`.",
        lab.srv,
        paths.config.display()
    ));

    let xban = Xban {
        bin: binary.to_path_buf(),
        config: paths.config.clone(),
        netns: lab.srv.clone(),
    };
    let ssh = lab.listen_ssh()?;
    let mut agent = Agent::start(&xban, &paths)?;

    step(1, "The agent starts");
    show("agent | ", &agent.news());
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
    let got = lab.udp_burst(ATTACKER, 10)?;
    ensure!(
        got == 10,
        "before any ban, 10 UDP datagrams should arrive ({got} did)"
    );
    say(&format!(
        "UDP: 10 datagrams sent from {ATTACKER}, {got} arrived."
    ));
    let tcp = lab.tcp_probe(&ssh, ATTACKER)?;
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
    let first = offend(&xban, &paths, &mut agent, 0)?;
    ensure!(
        first["class"] == "drop" && ban_secs(&first) == BANTIME_SECS,
        "the first ban should be the jail's own ({BANTIME_SECS} s, drop): {first}"
    );
    say(&format!(
        "Banned for {BANTIME_SECS} s, class drop: its packets now die in the XDP program."
    ));

    step(4, "Its packets are dropped at XDP");
    let before = stats(&xban)?;
    let got = lab.udp_burst(ATTACKER, 20)?;
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
    let tcp = lab.tcp_probe(&ssh, ATTACKER)?;
    ensure!(
        !tcp.accepted,
        "the banned attacker's SSH connection was accepted"
    );
    say(&format!("TCP to port {SSH_PORT} from {ATTACKER}: {tcp}."));
    let tcp = lab.tcp_probe(&ssh, BYSTANDER)?;
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
    show("agent | ", &agent.news());
    let got = lab.udp_burst(ATTACKER, 5)?;
    ensure!(
        got == 5,
        "after the expiry the attacker should get through ({got} of 5)"
    );
    say(&format!("Unbanned: {got} of 5 UDP datagrams arrive again."));

    step(6, "It comes back: the second ban is longer (escalation)");
    let second = offend(&xban, &paths, &mut agent, 10)?;
    ensure!(
        second["class"] == "drop" && ban_secs(&second) == SECOND_BAN_SECS,
        "the second ban within 1 h should be {SECOND_BAN_SECS} s: {second}"
    );
    ensure!(
        agent.log().contains("escalated: repeat offender"),
        "the agent should log the escalation"
    );
    say(&format!(
        "Second ban within the hour: {SECOND_BAN_SECS} s instead of {BANTIME_SECS} s ([escalation] steps[0])."
    ));

    step(7, "An operator lifts the ban by hand");
    say(&format!("$ xban unban {ATTACKER}"));
    show("", &xban.ok(&["unban", ATTACKER])?);
    show("agent | ", &agent.news());
    ensure!(
        xban.banned()?.is_empty(),
        "the ban should be gone after `xban unban`"
    );
    let got = lab.udp_burst(ATTACKER, 5)?;
    ensure!(
        got == 5,
        "after the unban the attacker should get through ({got} of 5)"
    );
    say(&format!("{got} of 5 UDP datagrams arrive."));

    step(8, "Third offence: the tarpit class");
    let third = offend(&xban, &paths, &mut agent, 20)?;
    ensure!(
        third["class"] == "tarpit" && ban_secs(&third) == THIRD_BAN_SECS,
        "the third ban within 1 h should be {THIRD_BAN_SECS} s of tarpit: {third}"
    );
    say("Class tarpit: XDP passes its packets on to iptables, which steers its TCP");
    say("through an ipset to the tarpit target instead of dropping it silently.");
    let before = stats(&xban)?;
    let tcp = lab.tcp_probe(&ssh, ATTACKER)?;
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
    show("", &agent.teardown()?);
    drop(ssh);
    drop(dir);
    say(&format!("removed {}", paths.dir.display()));
    let (srv, atk) = (lab.srv.clone(), lab.atk.clone());
    drop(lab);
    say(&format!(
        "deleted the namespaces {srv} and {atk} (and the veth pair with them)"
    ));
    Ok(())
}

/// One offence: MAXRETRY failed logins in the log, then the ban they earn.
fn offend(xban: &Xban, paths: &Paths, agent: &mut Agent, first: usize) -> Result<Value> {
    let lines: Vec<String> = (first..first + MAXRETRY)
        .map(|n| sshd_failure(ATTACKER, n))
        .collect();
    say(&format!("sshd writes to {}:", paths.log.display()));
    show("", &lines.join("\n"));
    let mut log = OpenOptions::new().append(true).open(&paths.log)?;
    for l in &lines {
        writeln!(log, "{l}")?;
    }
    log.flush()?;
    let ban = wait_for(SETTLE, "the ban", || {
        Ok(xban
            .banned()?
            .into_iter()
            .find(|b| b["address"] == ATTACKER))
    })?;
    show("agent | ", &agent.news());
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

/// An OpenSSH failure line as rsyslog writes it to auth.log.
fn sshd_failure(addr: &str, n: usize) -> String {
    format!(
        "{} demo sshd[{}]: Failed password for invalid user admin{n} from {addr} port {} ssh2",
        syslog_time(),
        4000 + n,
        40000 + n
    )
}

/// `Nov 21 05:28:31`, local time, as the agent reads it.
fn syslog_time() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) has no preconditions; localtime_r writes only into
    // the zeroed tm it is given.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

struct Paths {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    agent_log: PathBuf,
    pins: PathBuf,
}

impl Paths {
    fn new(dir: &Path, id: u32) -> Paths {
        Paths {
            dir: dir.to_path_buf(),
            config: dir.join("xban.toml"),
            log: dir.join("auth.log"),
            agent_log: dir.join("agent.log"),
            pins: PathBuf::from(format!("/sys/fs/bpf/xban-demo-{id}")),
        }
    }
}

fn config_text(lab: &Lab, p: &Paths) -> String {
    format!(
        r#"[agent]
interfaces = ["{srv_if}"]
xdp_mode = "native"
bpf_pin_dir = "{pins}"
state_dir = "{dir}/state"
socket = "{dir}/xban.sock"
filters_dir = "{dir}/filters"

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
logpath = ["{log}"]
"#,
        srv_if = lab.srv_if,
        pins = p.pins.display(),
        dir = p.dir.display(),
        log = p.log.display(),
    )
}

// ---- commands -------------------------------------------------------------

/// Runs `program args` and returns its stdout; fails with its stderr.
fn run_quiet(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// For clean-up: in its own process group, so that a second Ctrl-C does not
/// cut it short; failures are reported, not fatal.
fn cleanup_command(cmd: &mut Command) -> Option<String> {
    cmd.stdin(Stdio::null()).process_group(0);
    match cmd.output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            eprintln!(
                "xtask demo: clean-up step {:?} failed: {}",
                cmd.get_program(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!(
                "xtask demo: clean-up step {:?} failed: {e}",
                cmd.get_program()
            );
            None
        }
    }
}

/// The `xban` command line, run in the server's namespace (teardown's
/// firewall clean-up must happen there).
struct Xban {
    bin: PathBuf,
    config: PathBuf,
    netns: String,
}

impl Xban {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1");
        cmd
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        check_interrupt()?;
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .context("could not run xban")?;
        check_interrupt()?;
        ensure!(
            out.status.success(),
            "`xban {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args)?;
        serde_json::from_str(&text).with_context(|| format!("xban printed invalid JSON: {text}"))
    }

    fn banned(&self) -> Result<Vec<Value>> {
        match self.json(&["banned"])? {
            Value::Array(bans) => Ok(bans),
            other => bail!("`xban banned --json` printed {other}"),
        }
    }
}

/// The agent, running in the server's namespace. Dropping it tears down
/// what it put in the kernel.
struct Agent<'a> {
    xban: &'a Xban,
    child: Option<Child>,
    log_path: PathBuf,
    pins: PathBuf,
    /// How much of the agent's log [`Agent::news`] has shown.
    shown: usize,
}

impl<'a> Agent<'a> {
    fn start(xban: &'a Xban, paths: &Paths) -> Result<Agent<'a>> {
        let stderr = File::create(&paths.agent_log)?;
        let child = xban
            .command(&["run"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Ctrl-C reaches the demo only; it stops the agent in order.
            .process_group(0)
            .spawn()
            .context("could not start the agent")?;
        let mut agent = Agent {
            xban,
            child: Some(child),
            log_path: paths.agent_log.clone(),
            pins: paths.pins.clone(),
            shown: 0,
        };
        wait_for(
            Duration::from_secs(30),
            "the agent's control socket",
            || {
                if let Some(status) = agent.child.as_mut().expect("running").try_wait()? {
                    bail!("the agent exited ({status}):\n{}", agent.log());
                }
                Ok(xban
                    .command(&["status", "--json"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?
                    .success()
                    .then_some(()))
            },
        )?;
        Ok(agent)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The agent's log lines about bans and set-up written since the last
    /// call, without the timestamps.
    fn news(&mut self) -> String {
        let log = self.log();
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

    /// `xban teardown`, then waits for the agent to exit.
    fn teardown(&mut self) -> Result<String> {
        let out = self.xban.ok(&["teardown"])?;
        let mut child = self.child.take().expect("running");
        let end = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit after the teardown:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ensure!(
            !self.pins.exists(),
            "{} is still there after the teardown",
            self.pins.display()
        );
        Ok(out)
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        eprintln!("xtask demo: tearing down the agent");
        // Asks the running agent to remove XDP, pins, chain and sets.
        cleanup_command(&mut self.xban.command(&["teardown"]));
        let end = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        if self.pins.exists() {
            // The agent died before it could answer: tear down offline.
            cleanup_command(&mut self.xban.command(&["teardown"]));
            let _ = fs::remove_dir_all(&self.pins);
        }
    }
}

// ---- the lab --------------------------------------------------------------

/// Two namespaces and a veth pair; deleted on drop (with the veth, the
/// iptables rules and the ipsets inside them).
struct Lab {
    srv: String,
    atk: String,
    srv_if: String,
    atk_if: String,
}

impl Lab {
    fn create(id: u32) -> Result<Lab> {
        // The guard exists before the first command, so a half-built lab is
        // removed too.
        let lab = Lab {
            srv: format!("xban-demo-{id}-srv"),
            atk: format!("xban-demo-{id}-atk"),
            // IFNAMSIZ: at most 15 characters.
            srv_if: format!("xd{id}s"),
            atk_if: format!("xd{id}a"),
        };
        run_quiet("ip", &["netns", "add", &lab.srv])?;
        run_quiet("ip", &["netns", "add", &lab.atk])?;
        run_quiet(
            "ip",
            &[
                "link",
                "add",
                &lab.srv_if,
                "netns",
                &lab.srv,
                "type",
                "veth",
                "peer",
                "name",
                &lab.atk_if,
                "netns",
                &lab.atk,
            ],
        )?;
        for (ns, ifname, addrs) in [
            (&lab.srv, &lab.srv_if, &[SERVER][..]),
            (&lab.atk, &lab.atk_if, &[ATTACKER, BYSTANDER][..]),
        ] {
            for addr in addrs {
                let cidr = format!("{addr}/24");
                run_quiet("ip", &["-n", ns, "addr", "add", &cidr, "dev", ifname])?;
            }
            run_quiet("ip", &["-n", ns, "link", "set", ifname, "up"])?;
            run_quiet("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it creates stay
    /// in that namespace.
    fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<T> {
                    let file = File::open(&path).with_context(|| format!("open {path}"))?;
                    // SAFETY: a valid namespace fd; only this thread moves.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error()).context("setns");
                    }
                    Ok(f()?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        })
    }

    /// The server's "sshd": a listener that accepts nothing by itself, so
    /// each probe can tell whether its connection arrived.
    fn listen_ssh(&self) -> Result<TcpListener> {
        let l = Self::in_ns(&self.srv, || TcpListener::bind((SERVER, SSH_PORT)))?;
        l.set_nonblocking(true)?;
        Ok(l)
    }

    /// Sends `n` UDP datagrams from `src` to the server; returns how many
    /// arrived.
    fn udp_burst(&self, src: &str, n: usize) -> Result<usize> {
        check_interrupt()?;
        let server = Self::in_ns(&self.srv, || UdpSocket::bind((SERVER, 0)))?;
        server.set_read_timeout(Some(Duration::from_millis(300)))?;
        let to = server.local_addr()?;
        let src_ip: IpAddr = src.parse()?;
        let client = Self::in_ns(&self.atk, || UdpSocket::bind((src_ip, 0)))?;
        for i in 0..n {
            client.send_to(format!("probe {i}").as_bytes(), to)?;
        }
        let mut buf = [0u8; 64];
        let mut got = 0;
        while let Ok((_, from)) = server.recv_from(&mut buf) {
            if from.ip() == src_ip {
                got += 1;
            }
        }
        Ok(got)
    }

    /// Connects from `src` to the "sshd" and reports what both sides saw.
    fn tcp_probe(&self, listener: &TcpListener, src: &str) -> Result<TcpOutcome> {
        check_interrupt()?;
        let src_ip: IpAddr = src.parse()?;
        let sock = Self::in_ns(&self.atk, || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.bind(&SocketAddr::new(src_ip, 0).into())?;
            Ok(s)
        })?;
        let to = SocketAddr::new(SERVER.parse()?, SSH_PORT);
        let client = match sock.connect_timeout(&to.into(), Duration::from_millis(1500)) {
            Ok(()) => TcpClient::Connected,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => TcpClient::Reset,
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
            {
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
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.srv, &self.atk] {
            if Path::new("/run/netns").join(ns).exists() {
                cleanup_command(Command::new("ip").args(["netns", "del", ns]));
            }
        }
    }
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
    fn syslog_time_has_the_sshd_filter_shape() {
        let t = syslog_time();
        let (month, rest) = t.split_at(3);
        assert!(month.chars().all(|c| c.is_ascii_alphabetic()), "{t}");
        assert_eq!(rest.len(), " dd hh:mm:ss".len(), "{t}");
        assert_eq!(rest.matches(':').count(), 2, "{t}");
    }

    #[test]
    fn demo_config_stays_in_the_lab() {
        let lab = Lab {
            srv: "xban-demo-unit-test-srv".into(),
            atk: "xban-demo-unit-test-atk".into(),
            srv_if: "xd1s".into(),
            atk_if: "xd1a".into(),
        };
        let text = config_text(&lab, &Paths::new(Path::new("/tmp/d"), 1));
        // Dropping it would delete namespaces that were never created.
        std::mem::forget(lab);
        assert!(text.contains("interfaces = [\"xd1s\"]"), "{text}");
        assert!(
            text.contains("bpf_pin_dir = \"/sys/fs/bpf/xban-demo-1\""),
            "{text}"
        );
        assert!(text.contains("socket = \"/tmp/d/xban.sock\""), "{text}");
        assert!(text.contains("logpath = [\"/tmp/d/auth.log\"]"), "{text}");
    }
}
